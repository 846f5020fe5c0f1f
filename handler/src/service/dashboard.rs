//! The fleet dashboard's figures (`GET /api/dashboard`): how many devices stand where along the
//! way (enrolled → registered → connected → reporting), the registry's statuses, how many devices
//! live on each hub, and which need attention (registered but never connected, disconnected
//! for at least a threshold, provisioning failed, events set aside), from one scan of the records'
//! summaries ([`crate::domain::summary`]) and the newest dead letters.
//!
//! Why a scan and not running counts: counters kept in their own rows would add a contended,
//! non-atomic write to every record change (the event functions' hot path), drift after a crash
//! between the two writes, and still not answer "disconnected for longer than an hour", which
//! changes with time and no write. The summary is written in the record's own entity write, so
//! the scan is always exact; docs/benchmarks.md has what it costs at 10,000 devices.

use super::{Service, ServiceError};
use crate::domain::events::Stamp;
use crate::domain::journal::DeadLetter;
use crate::domain::summary::{Stage, Summary};
use crate::domain::Status;
use std::collections::BTreeMap;

/// `disconnectedFor` when the page is opened without it, in minutes.
pub const DEFAULT_DISCONNECTED_MINUTES: u32 = 60;
/// The longest `disconnectedFor` taken: 30 days.
pub const MAX_DISCONNECTED_MINUTES: u32 = 30 * 24 * 60;
/// Devices listed per kind of attention (the counts are complete).
pub const LISTED: usize = 50;
/// Dead letters shown, newest first.
pub const DEAD_LETTERS_SHOWN: usize = 20;
/// Summaries read per storage call (Table Storage's largest page).
const SCAN_PAGE: usize = 1000;

/// Devices on one hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubCount {
    /// The hub's host name, lower case.
    pub hub: String,
    /// Devices registered there.
    pub devices: usize,
    /// Of those, connected now.
    pub connected: usize,
}

/// A device that needs attention, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Flagged {
    /// The device.
    pub summary: Summary,
    /// Since when it has been in this state, when known.
    pub since: Option<Stamp>,
    /// What is wrong, in words.
    pub reason: String,
}

/// One kind of attention: how many devices, and the longest-standing of them.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Attention {
    /// Devices of this kind.
    pub total: usize,
    /// The first [`LISTED`], longest-standing first.
    pub items: Vec<Flagged>,
}

impl Attention {
    fn add(&mut self, flagged: Flagged) {
        self.total += 1;
        self.items.push(flagged);
        // Bounded however large the fleet: trimmed now and then, never holding every device.
        if self.items.len() >= 4 * LISTED {
            self.trim();
        }
    }

    fn trim(&mut self) {
        self.items.sort_by(|a, b| {
            let key = |f: &Flagged| {
                (
                    f.since.is_none(),
                    f.since.as_ref().map(Stamp::nanos),
                    f.summary.device_id.as_str().to_owned(),
                )
            };
            key(a).cmp(&key(b))
        });
        self.items.truncate(LISTED);
    }
}

/// Everything the page shows.
#[derive(Debug, Clone, PartialEq)]
pub struct Dashboard {
    /// When the figures were taken.
    pub at: Stamp,
    /// The threshold of "disconnected for at least", in minutes.
    pub disconnected_minutes: u32,
    /// Devices that reached each stage (each includes the later ones).
    pub stages: BTreeMap<Stage, usize>,
    /// Devices per registry status, in [`Status::ALL`] order.
    pub statuses: Vec<(Status, usize)>,
    /// Devices per hub: every linked hub, and any other a record names; by name.
    pub hubs: Vec<HubCount>,
    /// Registered, never connected to their hub.
    pub never_connected: Attention,
    /// Registered, disconnected for at least the threshold.
    pub disconnected: Attention,
    /// DPS refused the registration, or the device reports a failure.
    pub provisioning_failed: Attention,
    /// The newest events set aside (at most [`DEAD_LETTERS_SHOWN`]).
    pub dead_letters: Vec<DeadLetter>,
    /// Whether there are more dead letters than shown.
    pub more_dead_letters: bool,
}

impl Dashboard {
    /// Devices that reached `stage`.
    pub fn count(&self, stage: Stage) -> usize {
        self.stages.get(&stage).copied().unwrap_or(0)
    }
}

/// The figures, built one summary at a time.
pub struct Tally {
    dashboard: Dashboard,
    statuses: BTreeMap<&'static str, usize>,
    hubs: BTreeMap<String, HubCount>,
}

impl Tally {
    /// An empty tally taken at `at`, with the linked hubs (shown even when empty).
    pub fn new(at: Stamp, disconnected_minutes: u32, linked_hubs: &[String]) -> Self {
        let hubs = linked_hubs
            .iter()
            .map(|hub| {
                let hub = hub.to_ascii_lowercase();
                (
                    hub.clone(),
                    HubCount {
                        hub,
                        devices: 0,
                        connected: 0,
                    },
                )
            })
            .collect();
        Self {
            dashboard: Dashboard {
                at,
                disconnected_minutes,
                stages: Stage::ALL.iter().map(|s| (*s, 0)).collect(),
                statuses: Vec::new(),
                hubs: Vec::new(),
                never_connected: Attention::default(),
                disconnected: Attention::default(),
                provisioning_failed: Attention::default(),
                dead_letters: Vec::new(),
                more_dead_letters: false,
            },
            statuses: BTreeMap::new(),
            hubs,
        }
    }

    /// Counts one record.
    pub fn add(&mut self, summary: Summary) {
        let d = &mut self.dashboard;
        let stage = summary.stage();
        for reached in Stage::ALL.iter().filter(|s| **s <= stage) {
            *d.stages.entry(*reached).or_default() += 1;
        }
        *self.statuses.entry(summary.status.as_str()).or_default() += 1;
        if summary.status == Status::Failed || summary.reports_failure() {
            let reason = if summary.status == Status::Failed {
                match &summary.registration_error {
                    Some(error) => format!("DPS refused the registration: {error}"),
                    None => "DPS refused the registration".to_owned(),
                }
            } else {
                let reported = summary.reported_status.as_deref().unwrap_or("a failure");
                format!("the device reports {reported}")
            };
            d.provisioning_failed.add(Flagged {
                since: summary.on_hub_since.clone(),
                reason,
                summary: summary.clone(),
            });
        }
        if stage < Stage::Registered {
            return;
        }
        if let Some(hub) = &summary.hub {
            let key = hub.to_ascii_lowercase();
            let count = self.hubs.entry(key.clone()).or_insert(HubCount {
                hub: key,
                devices: 0,
                connected: 0,
            });
            count.devices += 1;
            count.connected += usize::from(stage >= Stage::Connected);
        }
        match &summary.connection {
            None => d.never_connected.add(Flagged {
                since: summary.on_hub_since.clone(),
                reason: "registered, never connected to its hub".to_owned(),
                summary,
            }),
            Some(connection) if !connection.connected => {
                let minutes = (d.at.nanos() - connection.since.nanos()) / 60_000_000_000;
                if minutes >= i128::from(d.disconnected_minutes) {
                    d.disconnected.add(Flagged {
                        since: Some(connection.since.clone()),
                        reason: format!("disconnected for {}", duration_words(minutes)),
                        summary,
                    });
                }
            }
            Some(_) => {}
        }
    }

    /// The figures, with the newest dead letters (newest first, one more than shown if there
    /// are more).
    pub fn finish(mut self, mut dead_letters: Vec<DeadLetter>) -> Dashboard {
        let d = &mut self.dashboard;
        d.statuses = Status::ALL
            .iter()
            .map(|s| (*s, self.statuses.get(s.as_str()).copied().unwrap_or(0)))
            .collect();
        d.hubs = self.hubs.into_values().collect();
        for attention in [
            &mut d.never_connected,
            &mut d.disconnected,
            &mut d.provisioning_failed,
        ] {
            attention.trim();
        }
        d.more_dead_letters = dead_letters.len() > DEAD_LETTERS_SHOWN;
        dead_letters.truncate(DEAD_LETTERS_SHOWN);
        d.dead_letters = dead_letters;
        self.dashboard
    }
}

/// Minutes as a person says them: `45 min`, `3 h 5 min`, `2 days 4 h`.
pub fn duration_words(minutes: i128) -> String {
    let minutes = minutes.max(0);
    match minutes {
        m if m < 60 => format!("{m} min"),
        m if m < 24 * 60 => match m % 60 {
            0 => format!("{} h", m / 60),
            rest => format!("{} h {rest} min", m / 60),
        },
        m => {
            let days = m / (24 * 60);
            let unit = if days == 1 { "day" } else { "days" };
            match (m % (24 * 60)) / 60 {
                0 => format!("{days} {unit}"),
                hours => format!("{days} {unit} {hours} h"),
            }
        }
    }
}

impl Service {
    /// `GET /api/dashboard`: the figures now, with "disconnected" meaning for at least
    /// `disconnected_minutes`.
    pub async fn dashboard(&self, disconnected_minutes: u32) -> Result<Dashboard, ServiceError> {
        let linked: Vec<String> = self.hub_names.values().cloned().collect();
        let mut tally = Tally::new(Stamp::now(), disconnected_minutes, &linked);
        let mut continuation = None;
        loop {
            let page = self
                .store
                .summaries(SCAN_PAGE, continuation.as_deref())
                .await?;
            for summary in page.items {
                tally.add(summary);
            }
            continuation = page.continuation;
            if continuation.is_none() {
                break;
            }
        }
        let letters = self
            .dead_letters
            .dead_letters(DEAD_LETTERS_SHOWN + 1)
            .await?;
        Ok(tally.finish(letters))
    }
}

#[cfg(test)]
mod tests;
