//! Consumer checkpoints: per consumer and stream, the next sequence number to process in each
//! partition. Saved through `iot_io::atomic_file` (atomic and durable) so a restart resumes
//! exactly there.

use iot_io::atomic_file::{self, Access};
use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::PathBuf;
use std::sync::Mutex;

/// Where checkpoints live.
pub struct Checkpoints {
    dir: Option<PathBuf>,
    memory: Mutex<BTreeMap<String, Vec<u64>>>,
}

impl Checkpoints {
    /// Checkpoints that last as long as the process.
    pub fn in_memory() -> Self {
        Self {
            dir: None,
            memory: Mutex::new(BTreeMap::new()),
        }
    }

    /// Checkpoints kept as files in `dir`.
    pub fn durable(dir: PathBuf) -> io::Result<Self> {
        fs::create_dir_all(&dir)?;
        Ok(Self {
            dir: Some(dir),
            memory: Mutex::new(BTreeMap::new()),
        })
    }

    fn key(consumer: &str, stream: &str) -> String {
        format!("{stream}.{consumer}")
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    }

    /// The positions of `consumer` on `stream` (`partitions` entries, 0 when new).
    pub fn load(&self, consumer: &str, stream: &str, partitions: usize) -> Vec<u64> {
        let key = Self::key(consumer, stream);
        let mut memory = self.memory.lock().unwrap_or_else(|p| p.into_inner());
        let positions = memory.entry(key.clone()).or_insert_with(|| {
            self.dir
                .as_ref()
                .and_then(|dir| fs::read(dir.join(format!("{key}.json"))).ok())
                .and_then(|bytes| serde_json::from_slice(&bytes).ok())
                .unwrap_or_default()
        });
        positions.resize(partitions, 0);
        positions.clone()
    }

    /// Records that `consumer` will continue `partition` of `stream` at `next`.
    pub fn save(
        &self,
        consumer: &str,
        stream: &str,
        partition: usize,
        next: u64,
    ) -> io::Result<()> {
        let key = Self::key(consumer, stream);
        let snapshot = {
            let mut memory = self.memory.lock().unwrap_or_else(|p| p.into_inner());
            let positions = memory.entry(key.clone()).or_default();
            if positions.len() <= partition {
                positions.resize(partition + 1, 0);
            }
            positions[partition] = next;
            positions.clone()
        };
        if let Some(dir) = &self.dir {
            let bytes = serde_json::to_vec(&snapshot).map_err(io::Error::other)?;
            // Positions are no secret: the umask decides, as for the event log itself.
            atomic_file::write(&dir.join(format!("{key}.json")), &bytes, Access::Default)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durable_checkpoints_survive_a_new_instance() {
        let dir = tempfile::tempdir().unwrap();
        let first = Checkpoints::durable(dir.path().to_owned()).unwrap();
        assert_eq!(first.load("fn", "hub-1", 4), vec![0, 0, 0, 0]);
        first.save("fn", "hub-1", 2, 17).unwrap();
        let second = Checkpoints::durable(dir.path().to_owned()).unwrap();
        assert_eq!(second.load("fn", "hub-1", 4), vec![0, 0, 17, 0]);
        assert_eq!(second.load("other", "hub-1", 4), vec![0, 0, 0, 0]);
    }
}
