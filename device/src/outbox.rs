//! The sender's outbox: every telemetry message the device accepts is written here first, one
//! file per message named by a sequence number, and removed only when the hub has acknowledged
//! it. Offline, messages pile up to a bound; past it the oldest are dropped and counted (the
//! count survives restarts and is reported to the hub). On reconnect the outbox drains oldest
//! first, so order is kept and nothing accepted is lost short of the bound.

use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::fs;
use std::path::PathBuf;

const SUFFIX: &str = ".msg";
const DROPPED_FILE: &str = "dropped";

/// One telemetry message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Message {
    /// The message id (`$.mid`): the same on every attempt, so a receiver can drop duplicates.
    pub id: String,
    /// The body.
    pub body: String,
    /// `$.ct`.
    pub content_type: String,
    /// `$.ce`.
    pub content_encoding: String,
}

/// Why the outbox could not be used.
#[derive(Debug, thiserror::Error)]
#[error("the outbox in {path} cannot be used: {source}")]
pub struct OutboxError {
    path: PathBuf,
    source: std::io::Error,
}

/// A bounded, durable FIFO of messages.
pub struct Outbox {
    dir: PathBuf,
    capacity: usize,
    queued: BTreeSet<u64>,
    next: u64,
    dropped: u64,
}

impl Outbox {
    /// Opens (or creates) the outbox in `dir`, keeping at most `capacity` messages.
    pub fn open(dir: impl Into<PathBuf>, capacity: usize) -> Result<Self, OutboxError> {
        let dir = dir.into();
        let io = |source| OutboxError {
            path: dir.clone(),
            source,
        };
        fs::create_dir_all(&dir).map_err(io)?;
        let mut queued = BTreeSet::new();
        for entry in fs::read_dir(&dir).map_err(io)? {
            let name = entry.map_err(io)?.file_name();
            let name = name.to_string_lossy();
            if let Some(seq) = name
                .strip_suffix(SUFFIX)
                .and_then(|n| n.parse::<u64>().ok())
            {
                queued.insert(seq);
            } else if name.ends_with(".tmp") {
                // A write cut short by a crash: it was never accepted. This covers
                // `iot_io::atomic_file`'s temporary names and `{seq}.tmp`, the name an older
                // version of the outbox gave its temporary files.
                let _ = fs::remove_file(dir.join(name.as_ref()));
            }
        }
        let dropped = fs::read_to_string(dir.join(DROPPED_FILE))
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0);
        let next = queued.last().map_or(1, |last| last + 1);
        Ok(Self {
            dir,
            capacity: capacity.max(1),
            queued,
            next,
            dropped,
        })
    }

    fn path(&self, seq: u64) -> PathBuf {
        self.dir.join(format!("{seq:020}{SUFFIX}"))
    }

    fn io(&self, source: std::io::Error) -> OutboxError {
        OutboxError {
            path: self.dir.clone(),
            source,
        }
    }

    /// Accepts a message: once this returns, the message is on disk. Returns its sequence number.
    pub fn push(&mut self, message: &Message) -> Result<u64, OutboxError> {
        let seq = self.next;
        let text = serde_json::to_vec(message).map_err(|e| self.io(std::io::Error::other(e)))?;
        iot_io::atomic_file::write(&self.path(seq), &text, iot_io::atomic_file::Access::Default)
            .map_err(|e| self.io(e))?;
        self.next += 1;
        self.queued.insert(seq);
        while self.queued.len() > self.capacity {
            if let Some(oldest) = self.queued.pop_first() {
                let _ = fs::remove_file(self.path(oldest));
                self.dropped += 1;
            }
        }
        if self.dropped > 0 {
            let _ = fs::write(self.dir.join(DROPPED_FILE), self.dropped.to_string());
        }
        Ok(seq)
    }

    /// The oldest messages not in `skip` (those already in flight), at most `n`.
    pub fn oldest(&self, n: usize, skip: &BTreeSet<u64>) -> Vec<(u64, Message)> {
        self.queued
            .iter()
            .filter(|seq| !skip.contains(seq))
            .take(n)
            .filter_map(|&seq| {
                let text = fs::read(self.path(seq)).ok()?;
                serde_json::from_slice(&text).ok().map(|m| (seq, m))
            })
            .collect()
    }

    /// The hub acknowledged `seq`.
    pub fn acknowledge(&mut self, seq: u64) {
        if self.queued.remove(&seq) {
            let _ = fs::remove_file(self.path(seq));
        }
    }

    /// Messages waiting.
    pub fn len(&self) -> usize {
        self.queued.len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.queued.is_empty()
    }

    /// Messages dropped because the bound was reached, ever.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(n: u32) -> Message {
        Message {
            id: format!("m{n}"),
            body: format!("{{\"n\":{n}}}"),
            content_type: "application/json".into(),
            content_encoding: "utf-8".into(),
        }
    }

    #[test]
    fn messages_survive_a_restart_in_order_until_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let mut outbox = Outbox::open(dir.path(), 10).unwrap();
        for n in 0..3 {
            outbox.push(&message(n)).unwrap();
        }
        let first = outbox.oldest(1, &BTreeSet::new())[0].0;
        outbox.acknowledge(first);
        drop(outbox);
        let reopened = Outbox::open(dir.path(), 10).unwrap();
        let left: Vec<String> = reopened
            .oldest(10, &BTreeSet::new())
            .into_iter()
            .map(|(_, m)| m.id)
            .collect();
        assert_eq!(left, ["m1", "m2"]);
    }

    #[test]
    fn past_the_bound_the_oldest_go_and_are_counted_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let mut outbox = Outbox::open(dir.path(), 3).unwrap();
        for n in 0..5 {
            outbox.push(&message(n)).unwrap();
        }
        assert_eq!((outbox.len(), outbox.dropped()), (3, 2));
        let reopened = Outbox::open(dir.path(), 3).unwrap();
        assert_eq!(reopened.dropped(), 2);
        assert_eq!(reopened.oldest(1, &BTreeSet::new())[0].1.id, "m2");
        let in_flight: BTreeSet<u64> = reopened
            .oldest(1, &BTreeSet::new())
            .iter()
            .map(|(s, _)| *s)
            .collect();
        assert_eq!(
            reopened.oldest(5, &in_flight).len(),
            2,
            "in-flight messages are not handed out twice"
        );
    }
}
