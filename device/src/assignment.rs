//! What a provisioned device knows: its DPS credentials and where DPS put it, and a new key a key
//! rotation handed over until the device has re-provisioned with it. Kept in one file in the
//! device's state directory, written atomically (a new file renamed over the old) and readable by
//! the device's own user only, because it holds the device keys.

use iot_credentials::SharedAccessKey;
use serde::{Deserialize, Serialize};
use std::fs;
use std::path::{Path, PathBuf};

/// File name inside the state directory.
pub(crate) const FILE_NAME: &str = "assignment.json";

/// How the device reaches DPS and proves who it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The DPS ID scope.
    pub id_scope: String,
    /// The registration id.
    pub registration_id: String,
    /// The device key (never printed).
    pub key: SharedAccessKey,
    /// The DPS device endpoint (`host[:port]`).
    pub endpoint: String,
}

impl From<iot_credentials::ProvisioningCode> for Credentials {
    fn from(code: iot_credentials::ProvisioningCode) -> Self {
        Self {
            id_scope: code.id_scope,
            registration_id: code.registration_id,
            key: code.device_key,
            endpoint: code.endpoint,
        }
    }
}

/// A key a rotation handed to the device (the `RotateKey` method), kept until the device has
/// re-provisioned with it; until then the device goes on with the key it has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingKey {
    /// The rotation's id, reported back when it is done.
    pub rotation_id: String,
    /// The new key (never printed).
    pub key: SharedAccessKey,
}

/// The result of provisioning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    /// The credentials it was obtained with (kept for re-provisioning).
    pub credentials: Credentials,
    /// The IoT hub's host name.
    pub hub: String,
    /// The device id on that hub.
    pub device_id: String,
    /// DPS's substatus (`initialAssignment`, `deviceDataMigrated`, …).
    pub substatus: Option<String>,
    /// When the device was assigned (RFC 3339).
    pub assigned_at: String,
    /// A rotated key waiting for the device to re-provision with it.
    pub pending_key: Option<PendingKey>,
    /// The last key rotation this device finished (reported to its twin on every connection).
    pub last_rotation: Option<String>,
}

impl Assignment {
    /// The same device and key, newly assigned: what re-provisioning answered, keeping what the
    /// device knows about key rotations.
    pub(crate) fn reassigned(&self, next: Assignment) -> Assignment {
        Assignment {
            pending_key: self.pending_key.clone(),
            last_rotation: self.last_rotation.clone(),
            ..next
        }
    }
}

/// The file's shape.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Stored {
    id_scope: String,
    registration_id: String,
    device_key: String,
    dps_endpoint: String,
    hub: String,
    device_id: String,
    #[serde(default)]
    substatus: Option<String>,
    assigned_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pending_rotation: Option<StoredPendingKey>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_rotation: Option<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StoredPendingKey {
    id: String,
    key: String,
}

/// Why the state could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The file system refused.
    #[error("the device state in {path} cannot be used: {source}")]
    Io {
        /// Where.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not what this program writes.
    #[error("the device state in {0} is damaged; provision the device again")]
    Damaged(PathBuf),
}

/// The device's state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    /// The state in `dir` (created on first save).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    fn file(&self) -> PathBuf {
        self.dir.join(FILE_NAME)
    }

    fn io(&self, source: std::io::Error) -> StateError {
        StateError::Io {
            path: self.dir.clone(),
            source,
        }
    }

    /// The stored assignment, if the device is provisioned.
    pub fn load(&self) -> Result<Option<Assignment>, StateError> {
        let text = match fs::read_to_string(self.file()) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.io(e)),
        };
        let stored: Stored =
            serde_json::from_str(&text).map_err(|_| StateError::Damaged(self.file()))?;
        let key = SharedAccessKey::from_base64(&stored.device_key)
            .map_err(|_| StateError::Damaged(self.file()))?;
        let pending_key = match stored.pending_rotation {
            Some(pending) => Some(PendingKey {
                rotation_id: pending.id,
                key: SharedAccessKey::from_base64(&pending.key)
                    .map_err(|_| StateError::Damaged(self.file()))?,
            }),
            None => None,
        };
        Ok(Some(Assignment {
            credentials: Credentials {
                id_scope: stored.id_scope,
                registration_id: stored.registration_id,
                key,
                endpoint: stored.dps_endpoint,
            },
            hub: stored.hub,
            device_id: stored.device_id,
            substatus: stored.substatus,
            assigned_at: stored.assigned_at,
            pending_key,
            last_rotation: stored.last_rotation,
        }))
    }

    /// Stores an assignment, owner-only, atomically and durably (`iot_io::atomic_file`): a crash
    /// leaves either the old state or the new, never half of one.
    pub fn save(&self, assignment: &Assignment) -> Result<(), StateError> {
        fs::create_dir_all(&self.dir).map_err(|e| self.io(e))?;
        let stored = Stored {
            id_scope: assignment.credentials.id_scope.clone(),
            registration_id: assignment.credentials.registration_id.clone(),
            device_key: assignment.credentials.key.expose_base64().to_owned(),
            dps_endpoint: assignment.credentials.endpoint.clone(),
            hub: assignment.hub.clone(),
            device_id: assignment.device_id.clone(),
            substatus: assignment.substatus.clone(),
            assigned_at: assignment.assigned_at.clone(),
            pending_rotation: assignment.pending_key.as_ref().map(|p| StoredPendingKey {
                id: p.rotation_id.clone(),
                key: p.key.expose_base64().to_owned(),
            }),
            last_rotation: assignment.last_rotation.clone(),
        };
        let text =
            serde_json::to_vec_pretty(&stored).map_err(|e| self.io(std::io::Error::other(e)))?;
        // iot_io's temporary names are unique per process and call: the portal and the
        // telemetry sender (a Reprovision) may both save at once.
        iot_io::atomic_file::write(&self.file(), &text, iot_io::atomic_file::Access::OwnerOnly)
            .map_err(|e| self.io(e))
    }

    /// Forgets the assignment (the device is no longer provisioned).
    pub fn forget(&self) -> Result<(), StateError> {
        match fs::remove_file(self.file()) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.io(e)),
        }
    }

    /// A fingerprint of the stored file, to notice a new assignment without reading it each time.
    pub(crate) fn fingerprint(&self) -> Option<(std::time::SystemTime, u64)> {
        let meta = fs::metadata(self.file()).ok()?;
        Some((meta.modified().ok()?, meta.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Assignment {
        Assignment {
            credentials: Credentials {
                id_scope: "0ne00000001".into(),
                registration_id: "dev-1".into(),
                key: SharedAccessKey::generate(32),
                endpoint: "dps.example".into(),
            },
            hub: "hub-1.example".into(),
            device_id: "dev-1".into(),
            substatus: Some("initialAssignment".into()),
            assigned_at: "2026-11-26T10:00:00Z".into(),
            pending_key: None,
            last_rotation: None,
        }
    }

    #[test]
    fn an_assignment_survives_a_round_trip_and_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path().join("state"));
        assert_eq!(state.load().unwrap(), None);
        let assignment = sample();
        state.save(&assignment).unwrap();
        assert_eq!(state.load().unwrap(), Some(assignment));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.path().join("state").join(FILE_NAME))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        state.forget().unwrap();
        assert_eq!(state.load().unwrap(), None);
    }

    #[test]
    fn a_pending_rotated_key_survives_a_round_trip_and_re_provisioning_keeps_it() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path());
        let mut assignment = sample();
        assignment.pending_key = Some(PendingKey {
            rotation_id: "r-1".into(),
            key: SharedAccessKey::generate(64),
        });
        assignment.last_rotation = Some("r-0".into());
        state.save(&assignment).unwrap();
        assert_eq!(state.load().unwrap(), Some(assignment.clone()));
        let mut moved = sample();
        moved.hub = "hub-2.example".into();
        let next = assignment.reassigned(moved);
        assert_eq!(next.hub, "hub-2.example");
        assert_eq!(next.pending_key, assignment.pending_key);
        assert_eq!(next.last_rotation.as_deref(), Some("r-0"));
        // A key that is not base64 is damage, not a key.
        let text = fs::read_to_string(dir.path().join(FILE_NAME)).unwrap();
        let damaged = text.replace(
            assignment.pending_key.as_ref().unwrap().key.expose_base64(),
            "not base64!",
        );
        fs::write(dir.path().join(FILE_NAME), damaged).unwrap();
        assert!(matches!(state.load(), Err(StateError::Damaged(_))));
    }

    #[test]
    fn a_damaged_file_is_reported_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(FILE_NAME), "{not json").unwrap();
        assert!(matches!(
            StateDir::new(dir.path()).load(),
            Err(StateError::Damaged(_))
        ));
    }

    #[test]
    fn two_writers_saving_at_once_never_leave_a_mixed_file() {
        let dir = tempfile::tempdir().unwrap();
        let writers: Vec<_> = (0..2)
            .map(|n| {
                let path = dir.path().to_owned();
                std::thread::spawn(move || {
                    let state = StateDir::new(path);
                    let mut assignment = sample();
                    assignment.hub = format!("hub-{n}.example");
                    for _ in 0..200 {
                        state.save(&assignment).unwrap();
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.join().unwrap();
        }
        let saved = StateDir::new(dir.path()).load().unwrap().unwrap();
        assert!(saved.hub == "hub-0.example" || saved.hub == "hub-1.example");
        let leftovers: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "temporary files were left behind");
    }
}
