//! Replacing a file atomically and durably.
//!
//! The one durability rule of the workspace: the bytes go to a temporary file in the same folder,
//! which is flushed to disk (`fsync`), renamed over the target, and then the folder itself is
//! flushed so that the rename survives a power cut. Readers see the old file or the new one. A
//! temporary name is unique per process and per call, so two writers of one file (the device's
//! portal and its sender both save the assignment) never mix their bytes; the last rename wins.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Who may read the file once written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// The owner only (mode 0600 on Unix): the file holds keys or connection strings.
    OwnerOnly,
    /// Whatever the process's umask allows.
    Default,
}

/// Replaces `path` with `bytes`, atomically and durably (see the module's documentation).
pub fn write(path: &Path, bytes: &[u8], access: Access) -> io::Result<()> {
    let temporary = temporary_path(path)?;
    let written =
        write_synced(&temporary, bytes, access).and_then(|()| fs::rename(&temporary, path));
    if let Err(error) = written {
        let _ = fs::remove_file(&temporary);
        return Err(error);
    }
    sync_folder(path)
}

/// Whether `name` is a temporary file of [`write`]: folder scans skip these (a crash may leave
/// one behind; it never holds the only copy of anything).
pub fn is_temporary(name: &str) -> bool {
    name.starts_with('.') && name.ends_with(".tmp")
}

/// `.{name}.{pid}.{n}.tmp` beside `path`: hidden, unique per process and call.
fn temporary_path(path: &Path) -> io::Result<PathBuf> {
    static WRITES: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .and_then(|name| name.to_str())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "the path names no file"))?;
    let write = WRITES.fetch_add(1, Ordering::Relaxed);
    Ok(path.with_file_name(format!(".{name}.{}.{write}.tmp", std::process::id())))
}

fn write_synced(temporary: &Path, bytes: &[u8], access: Access) -> io::Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    if access == Access::OwnerOnly {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = access;
    let mut file = options.open(temporary)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Flushes the folder holding `path`, so that the rename itself is on disk. Folders cannot be
/// opened for syncing on every platform; where they cannot, the rename is as durable as it gets.
fn sync_folder(path: &Path) -> io::Result<()> {
    let folder = match path.parent() {
        Some(folder) if !folder.as_os_str().is_empty() => folder,
        _ => Path::new("."),
    };
    match File::open(folder) {
        Ok(folder) => folder.sync_all().or_else(|error| {
            // Some file systems refuse fsync on a folder; the data itself is already synced.
            if error.kind() == io::ErrorKind::InvalidInput {
                Ok(())
            } else {
                Err(error)
            }
        }),
        Err(_) if cfg!(not(unix)) => Ok(()),
        Err(error) => Err(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_replaces_the_whole_file_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        write(&path, b"a longer first version", Access::Default).unwrap();
        write(&path, b"second", Access::Default).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"second");
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, ["state.json"]);
    }

    #[cfg(unix)]
    #[test]
    fn an_owner_only_file_is_readable_by_its_owner_alone() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.json");
        write(&path, b"{}", Access::OwnerOnly).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_failed_write_keeps_the_old_file_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        write(&path, b"old", Access::Default).unwrap();
        // A folder (not empty) where the file should be: the rename fails.
        let blocked = dir.path().join("blocked");
        fs::create_dir_all(blocked.join("inside")).unwrap();
        assert!(write(&blocked, b"new", Access::Default).is_err());
        assert_eq!(fs::read(&path).unwrap(), b"old");
        let temporaries = fs::read_dir(dir.path())
            .unwrap()
            .filter(|entry| is_temporary(entry.as_ref().unwrap().file_name().to_str().unwrap()))
            .count();
        assert_eq!(temporaries, 0);
    }

    #[test]
    fn writers_of_one_file_at_once_never_mix_their_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("assignment.json");
        let versions: Vec<Vec<u8>> = (0..8u8).map(|n| vec![b'a' + n; 64 * 1024]).collect();
        std::thread::scope(|scope| {
            for version in &versions {
                let path = &path;
                scope.spawn(move || {
                    for _ in 0..20 {
                        write(path, version, Access::Default).unwrap();
                    }
                });
            }
        });
        let last = fs::read(&path).unwrap();
        assert!(
            versions.contains(&last),
            "one writer's whole version, not a mix"
        );
    }

    #[test]
    fn temporary_names_are_recognised() {
        let name = temporary_path(Path::new("/x/state.json")).unwrap();
        assert!(is_temporary(name.file_name().unwrap().to_str().unwrap()));
        assert!(!is_temporary("state.json"));
        assert!(!is_temporary("00000000000000000001.json"));
    }
}
