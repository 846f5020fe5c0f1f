//! The device's side of a key rotation. The backend hands a new key over the authenticated hub
//! connection (the `RotateKey` direct method, payload `{rotationId, slot, key}`); the device
//!
//! 1. stores it beside its current key, atomically ([`StateDir::save`]), and only then answers;
//! 2. re-provisions through DPS with it (DPS then gives the hub identity the new key too);
//! 3. stores the new assignment with the new key as its key, and reconnects with it;
//! 4. reports `keyRotation: {id, status: "completed"}` on every connection from then on, which
//!    tells the backend that the old key can be retired.
//!
//! Until step 3 the device keeps using the key it had, which keeps working in DPS and the hub
//! until the backend retires it, so a device that cannot reach DPS for a while, or restarts in
//! the middle, loses nothing: a stored pending key is taken up again when the sender starts.

use crate::assignment::{Assignment, PendingKey, StateDir};
use crate::provision::{ProvisionError, Provisioner};
use iot_credentials::SharedAccessKey;
use serde_json::{json, Value};

/// The method name.
pub const METHOD: &str = "RotateKey";

/// Why a `RotateKey` call was refused.
#[derive(Debug, thiserror::Error)]
pub enum RotateKeyError {
    /// The payload is not a rotation.
    #[error("the payload needs rotationId and key (base64, 16 to 64 bytes)")]
    Malformed,
    /// The device is not provisioned.
    #[error("the device is not provisioned")]
    NotProvisioned,
    /// The key could not be stored.
    #[error("the new key could not be stored: {0}")]
    Storage(String),
}

impl RotateKeyError {
    /// The method status to answer with.
    pub fn status(&self) -> u16 {
        match self {
            RotateKeyError::Malformed => 400,
            RotateKeyError::NotProvisioned => 409,
            RotateKeyError::Storage(_) => 500,
        }
    }
}

/// What accepting a `RotateKey` call did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Accepted {
    /// The key is stored; re-provisioning with it comes next.
    Stored(String),
    /// This rotation was finished before (the backend asked again): nothing to do.
    AlreadyDone(String),
}

/// Reads a `RotateKey` payload and stores its key as pending. Answers once the key is on disk.
pub fn accept(state: &StateDir, payload: &Value) -> Result<Accepted, RotateKeyError> {
    let rotation_id = payload["rotationId"]
        .as_str()
        .filter(|id| !id.is_empty() && id.len() <= 128)
        .ok_or(RotateKeyError::Malformed)?
        .to_owned();
    let key = payload["key"]
        .as_str()
        .and_then(|k| SharedAccessKey::from_base64(k).ok())
        .filter(|k| (16..=64).contains(&k.len()))
        .ok_or(RotateKeyError::Malformed)?;
    let mut assignment = state
        .load()
        .map_err(|e| RotateKeyError::Storage(e.to_string()))?
        .ok_or(RotateKeyError::NotProvisioned)?;
    if assignment.last_rotation.as_deref() == Some(rotation_id.as_str()) {
        return Ok(Accepted::AlreadyDone(rotation_id));
    }
    assignment.pending_key = Some(PendingKey {
        rotation_id: rotation_id.clone(),
        key,
    });
    state
        .save(&assignment)
        .map_err(|e| RotateKeyError::Storage(e.to_string()))?;
    Ok(Accepted::Stored(rotation_id))
}

/// How finishing a pending rotation ended.
#[derive(Debug)]
pub enum Finished {
    /// Re-provisioned with the new key and stored it: the device moves to this assignment.
    Done(Box<Assignment>),
    /// DPS refused the new key (it was replaced or retired meanwhile): it is dropped, and the
    /// device goes on with its key. The rotation's id and why.
    Refused(String, String),
    /// Nothing pending.
    Nothing,
}

/// Re-provisions with the stored pending key and, if DPS takes it, makes it the device's key.
/// A failure that may pass (DPS unreachable or busy) leaves the pending key for the next try.
pub async fn finish(state: &StateDir, provisioner: &Provisioner) -> Result<Finished, String> {
    let Some(current) = state.load().ok().flatten() else {
        return Ok(Finished::Nothing);
    };
    let Some(pending) = current.pending_key.clone() else {
        return Ok(Finished::Nothing);
    };
    let mut credentials = current.credentials.clone();
    credentials.key = pending.key.clone();
    tracing::info!(rotation.id = %pending.rotation_id, "re-provisioning with the rotated key");
    match provisioner.provision(&credentials).await {
        Ok(next) => {
            let done = Assignment {
                pending_key: None,
                last_rotation: Some(pending.rotation_id.clone()),
                ..next
            };
            // Saved before anything else happens: from here the new key is the device's key.
            state.save(&done).map_err(|e| e.to_string())?;
            tracing::info!(
                rotation.id = %pending.rotation_id,
                hub = %done.hub,
                "the rotated key is the device's key now"
            );
            Ok(Finished::Done(Box::new(done)))
        }
        Err(error @ (ProvisionError::Unauthorized | ProvisionError::UnknownRegistration)) => {
            // Only the key is dropped; whatever else changed in the file meanwhile stays.
            if let Ok(Some(mut latest)) = state.load() {
                if latest.pending_key.as_ref() == Some(&pending) {
                    latest.pending_key = None;
                    let _ = state.save(&latest);
                }
            }
            tracing::warn!(
                rotation.id = %pending.rotation_id,
                %error,
                "DPS refused the rotated key; keeping the current one"
            );
            Ok(Finished::Refused(pending.rotation_id, error.to_string()))
        }
        Err(error) => Err(error.to_string()),
    }
}

/// The reported property of a finished rotation (sent on every connection).
pub fn completed_report(assignment: &Assignment) -> Option<Value> {
    assignment
        .last_rotation
        .as_ref()
        .map(|id| json!({ "id": id, "status": "completed", "at": assignment.assigned_at }))
}

/// The reported property of a rotation DPS refused.
pub fn refused_report(rotation_id: &str, error: &str, at: &str) -> Value {
    json!({ "id": rotation_id, "status": "failed", "error": error, "at": at })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::assignment::Credentials;

    fn provisioned(dir: &std::path::Path) -> StateDir {
        let state = StateDir::new(dir);
        state
            .save(&Assignment {
                credentials: Credentials {
                    id_scope: "0ne00000001".into(),
                    registration_id: "dev-1".into(),
                    key: SharedAccessKey::generate(32),
                    endpoint: "dps.example".into(),
                },
                hub: "hub-1.example".into(),
                device_id: "dev-1".into(),
                substatus: None,
                assigned_at: "2026-11-26T10:00:00Z".into(),
                pending_key: None,
                last_rotation: None,
            })
            .unwrap();
        state
    }

    #[test]
    fn a_rotated_key_is_stored_beside_the_current_one_until_it_is_used() {
        let dir = tempfile::tempdir().unwrap();
        let state = provisioned(dir.path());
        let before = state.load().unwrap().unwrap();
        let key = SharedAccessKey::generate(64);
        let accepted = accept(
            &state,
            &json!({ "rotationId": "r-1", "slot": "secondary", "key": key.expose_base64() }),
        )
        .unwrap();
        assert_eq!(accepted, Accepted::Stored("r-1".into()));
        let after = state.load().unwrap().unwrap();
        assert_eq!(
            after.credentials.key, before.credentials.key,
            "the current key stays"
        );
        assert_eq!(after.pending_key.unwrap().key, key);
        // A rotation the device finished is not taken up again.
        let mut done = state.load().unwrap().unwrap();
        done.pending_key = None;
        done.last_rotation = Some("r-1".into());
        state.save(&done).unwrap();
        let again = accept(
            &state,
            &json!({ "rotationId": "r-1", "key": key.expose_base64() }),
        )
        .unwrap();
        assert_eq!(again, Accepted::AlreadyDone("r-1".into()));
        assert_eq!(state.load().unwrap().unwrap().pending_key, None);
    }

    #[test]
    fn malformed_rotations_are_refused_and_change_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let state = provisioned(dir.path());
        let before = state.load().unwrap().unwrap();
        for payload in [
            json!(null),
            json!({ "key": SharedAccessKey::generate(32).expose_base64() }),
            json!({ "rotationId": "r-1" }),
            json!({ "rotationId": "r-1", "key": "not base64!" }),
            json!({ "rotationId": "r-1", "key": SharedAccessKey::generate(8).expose_base64() }),
        ] {
            let error = accept(&state, &payload).unwrap_err();
            assert_eq!(error.status(), 400, "{payload}");
        }
        assert_eq!(state.load().unwrap().unwrap(), before);
        let empty = tempfile::tempdir().unwrap();
        let error = accept(
            &StateDir::new(empty.path()),
            &json!({ "rotationId": "r-1", "key": SharedAccessKey::generate(32).expose_base64() }),
        )
        .unwrap_err();
        assert_eq!(error.status(), 409);
    }
}
