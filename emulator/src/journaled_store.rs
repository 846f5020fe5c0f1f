//! Durable state for the emulator: an in-memory model, a snapshot file and an append-only journal.
//!
//! Every mutation is a list of changes computed under the lock from the current model, applied to
//! the model and appended to the journal in the same critical section, so the journal's order is
//! the model's order. The caller's answer waits until its journal lines have been written, so a
//! client never sees a result that a crash of the emulator could take back. (The lines reach the
//! kernel, not necessarily the disk: a power cut can lose the last moments; a killed process
//! cannot.)
//!
//! At start the snapshot is loaded, the journal replayed and both folded into a fresh snapshot;
//! the same happens at a clean shutdown. A torn last journal line (the process died mid-write)
//! is dropped; any other unreadable line stops the start with a message naming the file.

use iot_io::atomic_file::{self, Access};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::thread;
use tokio::sync::oneshot;

const SNAPSHOT_FILE: &str = "state.json";
const JOURNAL_FILE: &str = "journal.jsonl";

/// A model whose every mutation is a replayable change.
pub trait Model: Default + Serialize + DeserializeOwned + Send + 'static {
    /// One recorded mutation.
    type Change: Serialize + DeserializeOwned + Send + 'static;
    /// Applies a change. Must be deterministic: replaying the journal rebuilds the same model.
    fn apply(&mut self, change: Self::Change);
}

/// Why state could not be loaded or saved.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// File access failed.
    #[error("state file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// A file holds something that is not a valid record.
    #[error(
        "state file {path} is corrupt at line {line}: {reason}; move the state directory away \
        to start afresh"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// 1-based line number (0 for the snapshot).
        line: usize,
        /// What was wrong.
        reason: String,
    },
    /// An earlier journal write failed, so nothing more can be recorded safely.
    #[error("the emulator can no longer save its state (an earlier write failed); restart it")]
    Unwritable,
}

enum Job {
    Append(Vec<u8>, oneshot::Sender<bool>),
    Stop,
}

struct Journal {
    jobs: mpsc::Sender<Job>,
    failed: Arc<AtomicBool>,
    writer: Mutex<Option<thread::JoinHandle<()>>>,
    dir: PathBuf,
}

/// The model plus, when durable, its journal.
pub struct Store<M: Model> {
    model: Mutex<M>,
    journal: Option<Journal>,
}

impl<M: Model> Store<M> {
    /// A store that forgets everything when dropped.
    pub fn in_memory() -> Self {
        Self {
            model: Mutex::new(M::default()),
            journal: None,
        }
    }

    /// Opens (or creates) the durable store in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let io_err = |path: &Path| {
            let path = path.to_owned();
            move |source| StoreError::Io { path, source }
        };
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let snapshot_path = dir.join(SNAPSHOT_FILE);
        let mut model = match fs::read(&snapshot_path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
                path: snapshot_path.clone(),
                line: 0,
                reason: e.to_string(),
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => M::default(),
            Err(e) => return Err(io_err(&snapshot_path)(e)),
        };
        let journal_path = dir.join(JOURNAL_FILE);
        replay(&journal_path, &mut model)?;
        write_snapshot(dir, &model)?;
        let file = File::create(&journal_path).map_err(io_err(&journal_path))?;
        Ok(Self {
            model: Mutex::new(model),
            journal: Some(Journal::start(file, dir.to_owned())),
        })
    }

    /// Reads the model.
    pub fn read<R>(&self, f: impl FnOnce(&M) -> R) -> R {
        f(&self.lock())
    }

    /// Decides changes from the current model, applies them and records them, returning what the
    /// closure returned once the changes are recorded. A closure error changes nothing.
    pub async fn transact<R, E>(
        &self,
        decide: impl FnOnce(&M) -> Result<(R, Vec<M::Change>), E>,
    ) -> Result<R, E>
    where
        E: From<StoreError>,
    {
        let (result, ack) = {
            let mut model = self.lock();
            let (result, changes) = decide(&model)?;
            if changes.is_empty() {
                return Ok(result);
            }
            let lines = match &self.journal {
                Some(journal) => {
                    // Refuse before touching the model, so memory never runs ahead of a broken
                    // journal.
                    journal.check()?;
                    encode_lines(&changes)?
                }
                None => Vec::new(),
            };
            for change in changes {
                model.apply(change);
            }
            let ack = match &self.journal {
                Some(journal) => Some(journal.append(lines)?),
                None => None,
            };
            (result, ack)
        };
        if let Some(ack) = ack {
            if ack.await != Ok(true) {
                return Err(StoreError::Unwritable.into());
            }
        }
        Ok(result)
    }

    /// Writes a fresh snapshot and empties the journal (called at a clean shutdown).
    pub fn close(&self) -> Result<(), StoreError> {
        let Some(journal) = &self.journal else {
            return Ok(());
        };
        journal.stop();
        let model = self.lock();
        write_snapshot(&journal.dir, &*model)?;
        let path = journal.dir.join(JOURNAL_FILE);
        File::create(&path).map_err(|source| StoreError::Io { path, source })?;
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, M> {
        // A panic while holding the lock leaves a model that `apply` may have half-changed; the
        // journal still holds the truth, so carry on rather than take the emulator down.
        self.model
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Journal {
    fn start(file: File, dir: PathBuf) -> Self {
        let (jobs, receiver) = mpsc::channel();
        let failed = Arc::new(AtomicBool::new(false));
        let writer_failed = failed.clone();
        let writer = thread::Builder::new()
            .name("journal-writer".into())
            .spawn(move || write_loop(file, receiver, writer_failed))
            .ok();
        Self {
            jobs,
            failed,
            writer: Mutex::new(writer),
            dir,
        }
    }

    fn check(&self) -> Result<(), StoreError> {
        if self.failed.load(Ordering::Acquire) {
            return Err(StoreError::Unwritable);
        }
        Ok(())
    }

    fn append(&self, lines: Vec<u8>) -> Result<oneshot::Receiver<bool>, StoreError> {
        let (ack, done) = oneshot::channel();
        self.jobs
            .send(Job::Append(lines, ack))
            .map_err(|_| StoreError::Unwritable)?;
        Ok(done)
    }

    fn stop(&self) {
        let _ = self.jobs.send(Job::Stop);
        let handle = self
            .writer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(handle) = handle {
            let _ = handle.join();
        }
    }
}

/// Group commit: take everything queued, write it in one go, then answer every waiter.
fn write_loop(file: File, jobs: mpsc::Receiver<Job>, failed: Arc<AtomicBool>) {
    let mut out = io::BufWriter::with_capacity(1 << 16, file);
    let mut waiters = Vec::new();
    while let Ok(first) = jobs.recv() {
        let mut stop = false;
        let mut ok = !failed.load(Ordering::Acquire);
        let mut next = Some(first);
        while let Some(job) = next {
            match job {
                Job::Append(lines, ack) => {
                    ok = ok && out.write_all(&lines).is_ok();
                    waiters.push(ack);
                }
                Job::Stop => stop = true,
            }
            next = jobs.try_recv().ok();
        }
        ok = ok && out.flush().is_ok();
        if !ok {
            failed.store(true, Ordering::Release);
            tracing::error!(
                "writing the emulator journal failed; state changes can no longer be saved"
            );
        }
        for waiter in waiters.drain(..) {
            let _ = waiter.send(ok);
        }
        if stop {
            break;
        }
    }
}

fn encode_lines<C: Serialize>(changes: &[C]) -> Result<Vec<u8>, StoreError> {
    let mut lines = Vec::new();
    for change in changes {
        // Changes are plain data (strings, numbers, maps), so this only fails on a bug.
        serde_json::to_writer(&mut lines, change).map_err(|_| StoreError::Unwritable)?;
        lines.push(b'\n');
    }
    Ok(lines)
}

fn replay<M: Model>(path: &Path, model: &mut M) -> Result<(), StoreError> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(StoreError::Io {
                path: path.to_owned(),
                source,
            })
        }
    };
    let mut lines = BufReader::new(file).lines().enumerate().peekable();
    while let Some((index, line)) = lines.next() {
        let line = line.map_err(|source| StoreError::Io {
            path: path.to_owned(),
            source,
        })?;
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<M::Change>(&line) {
            Ok(change) => model.apply(change),
            // The process died in the middle of the last write: that change was never answered.
            Err(_) if lines.peek().is_none() => {
                tracing::warn!(
                    file = %path.display(),
                    line = index + 1,
                    "dropping a torn last journal line"
                );
            }
            Err(e) => {
                return Err(StoreError::Corrupt {
                    path: path.to_owned(),
                    line: index + 1,
                    reason: e.to_string(),
                })
            }
        }
    }
    Ok(())
}

fn write_snapshot<M: Serialize>(dir: &Path, model: &M) -> Result<(), StoreError> {
    let path = dir.join(SNAPSHOT_FILE);
    let bytes = serde_json::to_vec(model).map_err(|e| StoreError::Io {
        path: path.clone(),
        source: e.into(),
    })?;
    // The state holds device keys, as DPS's own storage does: owner-only.
    atomic_file::write(&path, &bytes, Access::OwnerOnly)
        .map_err(|source| StoreError::Io { path, source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use std::collections::BTreeMap;

    #[derive(Default, Serialize, Deserialize)]
    struct Counters(BTreeMap<String, i64>);

    #[derive(Serialize, Deserialize)]
    enum Add {
        Add(String, i64),
    }

    impl Model for Counters {
        type Change = Add;
        fn apply(&mut self, Add::Add(name, n): Add) {
            *self.0.entry(name).or_default() += n;
        }
    }

    #[derive(Debug)]
    struct Refused;
    impl From<StoreError> for Refused {
        fn from(_: StoreError) -> Self {
            Refused
        }
    }

    async fn add(store: &Store<Counters>, name: &str, n: i64) {
        store
            .transact(|_| Ok::<_, Refused>(((), vec![Add::Add(name.into(), n)])))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn changes_survive_a_restart_without_a_clean_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::<Counters>::open(dir.path()).unwrap();
            add(&store, "a", 2).await;
            add(&store, "a", 3).await;
            add(&store, "b", 1).await;
            // Dropped without close(): only the journal holds the changes.
        }
        let store = Store::<Counters>::open(dir.path()).unwrap();
        assert_eq!(
            store.read(|m| m.0.clone()),
            BTreeMap::from([("a".into(), 5), ("b".into(), 1)])
        );
    }

    #[tokio::test]
    async fn a_torn_last_line_is_dropped_but_earlier_lines_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::<Counters>::open(dir.path()).unwrap();
            add(&store, "a", 1).await;
        }
        let mut journal = fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join(JOURNAL_FILE))
            .unwrap();
        journal.write_all(b"{\"Add\":[\"a\",").unwrap();
        drop(journal);
        let store = Store::<Counters>::open(dir.path()).unwrap();
        assert_eq!(store.read(|m| m.0.get("a").copied()), Some(1));
    }

    #[tokio::test]
    async fn a_corrupt_line_in_the_middle_stops_the_start_with_the_file_named() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join(JOURNAL_FILE),
            "garbage\n{\"Add\":[\"a\",1]}\n",
        )
        .unwrap();
        let err = Store::<Counters>::open(dir.path()).err().unwrap();
        assert!(err.to_string().contains("journal.jsonl"), "{err}");
    }

    #[tokio::test]
    async fn a_refused_decision_changes_nothing() {
        let store = Store::<Counters>::in_memory();
        let result = store.transact(|_| Err::<((), Vec<Add>), _>(Refused)).await;
        assert!(result.is_err());
        assert!(store.read(|m| m.0.is_empty()));
    }

    #[tokio::test]
    async fn close_folds_the_journal_into_the_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::<Counters>::open(dir.path()).unwrap();
        add(&store, "a", 7).await;
        store.close().unwrap();
        assert_eq!(
            fs::metadata(dir.path().join(JOURNAL_FILE)).unwrap().len(),
            0
        );
        let reopened = Store::<Counters>::open(dir.path()).unwrap();
        assert_eq!(reopened.read(|m| m.0.get("a").copied()), Some(7));
    }
}
