//! A hub's event stream: a fixed number of partitions, each an ordered log.
//!
//! Events of one device always land in the same partition (a hash of the device id), so a
//! consumer reading a partition in order sees each device's events in order, as with IoT Hub's
//! built-in endpoint. Each partition keeps its newest `retention` events in memory; when durable,
//! every event is also appended to `p{n}.jsonl` before `append` returns, and the newest
//! `retention` events are reloaded at start.

use super::{Event, NewEvent};
use sha2::{Digest, Sha256};
use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::Notify;

/// Partitions per hub (IoT Hub's default for the built-in endpoint).
pub const DEFAULT_PARTITIONS: usize = 4;
/// Events kept in memory per partition when no other figure is configured.
pub const DEFAULT_RETENTION: usize = 100_000;

/// Why an event could not be recorded.
#[derive(Debug, thiserror::Error)]
#[error("the event stream cannot be written: {0}")]
pub struct LogError(#[from] io::Error);

struct Partition {
    state: Mutex<PartitionState>,
    arrived: Notify,
}

struct PartitionState {
    events: VecDeque<Arc<Event>>,
    next_sequence: u64,
    file: Option<BufWriter<File>>,
}

/// How an event's partition is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Partitioning {
    /// By a hash of the device id: IoT Hub's built-in endpoint partitions by the originating
    /// device (MicrosoftDocs/azure-docs articles/iot-hub/iot-hub-devguide-messages-d2c.md).
    ByDevice,
    /// In turn: Event Hubs spreads events sent without a partition key over the partitions, and
    /// no source says IoT Hub sets one when it routes to a custom Event Hubs endpoint. So a
    /// consumer of such an endpoint must not count on one device's events sharing a partition.
    RoundRobin,
}

/// The event stream of one hub.
pub struct EventStream {
    name: String,
    partitions: Vec<Partition>,
    retention: usize,
    partitioning: Partitioning,
    turn: std::sync::atomic::AtomicUsize,
}

/// A batch read from a partition.
#[derive(Debug, Clone)]
pub struct Batch {
    /// The events, in order.
    pub events: Vec<Arc<Event>>,
    /// Set when events between the requested position and the first returned one were already
    /// dropped by retention (the consumer fell too far behind).
    pub skipped: u64,
}

impl EventStream {
    /// A stream held in memory only.
    pub fn in_memory(name: &str, partitions: usize, retention: usize) -> Self {
        Self {
            name: name.to_owned(),
            partitions: (0..partitions.max(1))
                .map(|_| Partition::new(VecDeque::new(), 0, None))
                .collect(),
            retention: retention.max(1),
            partitioning: Partitioning::ByDevice,
            turn: Default::default(),
        }
    }

    /// The same stream, choosing partitions by `partitioning`.
    pub fn partitioned(mut self, partitioning: Partitioning) -> Self {
        self.partitioning = partitioning;
        self
    }

    /// A stream kept in `dir`, reloading what is there.
    pub fn open(
        name: &str,
        dir: &Path,
        partitions: usize,
        retention: usize,
    ) -> Result<Self, LogError> {
        fs::create_dir_all(dir)?;
        let retention = retention.max(1);
        let mut loaded = Vec::new();
        for index in 0..partitions.max(1) {
            let path = dir.join(format!("p{index}.jsonl"));
            let (events, next_sequence) = reload(&path, retention)?;
            let file = OpenOptions::new().create(true).append(true).open(&path)?;
            loaded.push(Partition::new(
                events,
                next_sequence,
                Some(BufWriter::new(file)),
            ));
        }
        Ok(Self {
            name: name.to_owned(),
            partitions: loaded,
            retention,
            partitioning: Partitioning::ByDevice,
            turn: Default::default(),
        })
    }

    /// The stream's name (the hub's name, as `EntityPath` would say).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Number of partitions.
    pub fn partition_count(&self) -> usize {
        self.partitions.len()
    }

    /// The partition a device's events go to.
    pub fn partition_of(&self, device_id: &str) -> usize {
        let digest = Sha256::digest(device_id.as_bytes());
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        (u64::from_be_bytes(first) % self.partitions.len() as u64) as usize
    }

    /// Appends an event (written to disk first when durable) and wakes readers.
    pub fn append(&self, new: NewEvent) -> Result<Arc<Event>, LogError> {
        let index = match self.partitioning {
            Partitioning::ByDevice => self.partition_of(&new.device_id),
            Partitioning::RoundRobin => {
                self.turn.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % self.partitions.len()
            }
        };
        let partition = &self.partitions[index];
        let event = {
            let mut state = partition.lock();
            let now = time::OffsetDateTime::now_utc();
            let mut event = Event {
                sequence_number: state.next_sequence,
                enqueued_time_ms: (now.unix_timestamp_nanos() / 1_000_000) as i64,
                system_properties: new.system_properties,
                properties: new.properties,
                body: new.body,
            };
            let enqueued = crate::azure_format::format_time(now);
            event
                .system_properties
                .insert("iothub-enqueuedtime".into(), enqueued.clone().into());
            event
                .system_properties
                .insert("x-opt-enqueued-time".into(), enqueued.into());
            event
                .system_properties
                .insert("x-opt-sequence-number".into(), event.sequence_number.into());
            event
                .system_properties
                .insert("x-opt-offset".into(), event.offset().into());
            if let Some(file) = state.file.as_mut() {
                let mut line = serde_json::to_vec(&event).map_err(io::Error::other)?;
                line.push(b'\n');
                file.write_all(&line)?;
                file.flush()?;
            }
            let event = Arc::new(event);
            state.next_sequence += 1;
            state.events.push_back(event.clone());
            while state.events.len() > self.retention {
                state.events.pop_front();
            }
            event
        };
        partition.arrived.notify_waiters();
        Ok(event)
    }

    /// Up to `max` events of `partition` from sequence number `from`, waiting until at least one
    /// exists. Cancel-safe: dropping the future loses nothing.
    pub async fn read(&self, partition: usize, from: u64, max: usize) -> Batch {
        let Some(partition) = self.partitions.get(partition) else {
            return std::future::pending().await;
        };
        loop {
            let arrived = partition.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            if let Some(batch) = partition.take(from, max) {
                return batch;
            }
            arrived.await;
        }
    }

    /// The next sequence number of each partition (the end of the stream).
    pub fn ends(&self) -> Vec<u64> {
        self.partitions
            .iter()
            .map(|p| p.lock().next_sequence)
            .collect()
    }
}

impl Partition {
    fn new(
        events: VecDeque<Arc<Event>>,
        next_sequence: u64,
        file: Option<BufWriter<File>>,
    ) -> Self {
        Self {
            state: Mutex::new(PartitionState {
                events,
                next_sequence,
                file,
            }),
            arrived: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, PartitionState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn take(&self, from: u64, max: usize) -> Option<Batch> {
        let state = self.lock();
        if from >= state.next_sequence {
            return None;
        }
        let oldest = state
            .events
            .front()
            .map_or(state.next_sequence, |e| e.sequence_number);
        let start = from.max(oldest);
        let skip = (start - oldest) as usize;
        let events: Vec<Arc<Event>> = state
            .events
            .iter()
            .skip(skip)
            .take(max.max(1))
            .cloned()
            .collect();
        Some(Batch {
            skipped: start - from,
            events,
        })
    }
}

/// Reads the newest `retention` events of a partition file; a torn last line is ignored.
fn reload(path: &PathBuf, retention: usize) -> Result<(VecDeque<Arc<Event>>, u64), LogError> {
    let mut events = VecDeque::new();
    let mut next_sequence = 0;
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((events, 0)),
        Err(e) => return Err(e.into()),
    };
    for line in BufReader::new(file).lines() {
        let line = line?;
        let Ok(event) = serde_json::from_str::<Event>(&line) else {
            // Only the last line can be torn (the process died mid-write, so it was never
            // acknowledged); anything after it is unreadable too.
            tracing::warn!(file = %path.display(), "stopping at an unreadable event line");
            break;
        };
        next_sequence = event.sequence_number + 1;
        events.push_back(Arc::new(event));
        if events.len() > retention {
            events.pop_front();
        }
    }
    Ok((events, next_sequence))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Map;

    fn event(device: &str, n: u32) -> NewEvent {
        NewEvent {
            device_id: device.into(),
            system_properties: Map::new(),
            properties: Map::new(),
            body: bytes::Bytes::from(format!("{{\"n\":{n}}}")),
        }
    }

    #[tokio::test]
    async fn a_devices_events_stay_in_one_partition_in_order() {
        let stream = EventStream::in_memory("hub", 4, 1000);
        for n in 0..10 {
            stream.append(event("dev-a", n)).unwrap();
            stream.append(event("dev-b", n)).unwrap();
        }
        let partition = stream.partition_of("dev-a");
        let batch = stream.read(partition, 0, 100).await;
        let bodies: Vec<String> = batch
            .events
            .iter()
            .filter(|e| e.body.starts_with(b"{\"n\""))
            .map(|e| String::from_utf8_lossy(&e.body).into_owned())
            .collect();
        assert!(bodies.len() >= 10);
        let seqs: Vec<u64> = batch.events.iter().map(|e| e.sequence_number).collect();
        assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1));
    }

    #[tokio::test]
    async fn readers_wait_for_new_events() {
        let stream = Arc::new(EventStream::in_memory("hub", 1, 10));
        let reader = {
            let stream = stream.clone();
            tokio::spawn(async move { stream.read(0, 0, 10).await })
        };
        tokio::task::yield_now().await;
        stream.append(event("d", 1)).unwrap();
        let batch = tokio::time::timeout(std::time::Duration::from_secs(5), reader)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(batch.events.len(), 1);
    }

    #[tokio::test]
    async fn retention_drops_the_oldest_and_says_how_many_a_reader_missed() {
        let stream = EventStream::in_memory("hub", 1, 3);
        for n in 0..5 {
            stream.append(event("d", n)).unwrap();
        }
        let batch = stream.read(0, 0, 10).await;
        assert_eq!(batch.skipped, 2);
        assert_eq!(batch.events.first().unwrap().sequence_number, 2);
    }

    #[tokio::test]
    async fn a_durable_stream_reloads_its_events_and_continues_numbering() {
        let dir = tempfile::tempdir().unwrap();
        {
            let stream = EventStream::open("hub", dir.path(), 2, 100).unwrap();
            for n in 0..6 {
                stream.append(event("dev", n)).unwrap();
            }
        }
        let stream = EventStream::open("hub", dir.path(), 2, 100).unwrap();
        let partition = stream.partition_of("dev");
        assert_eq!(stream.read(partition, 0, 100).await.events.len(), 6);
        assert_eq!(stream.append(event("dev", 7)).unwrap().sequence_number, 6);
    }
}
