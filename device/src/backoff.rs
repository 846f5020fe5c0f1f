//! Exponential backoff with jitter, the one rule the device retries by: provisioning after a
//! throttled or failed DPS call, the telemetry sender after a failed connection or rotation.

use std::time::Duration;

/// First wait after a 429 or 5xx; doubled each time, with jitter, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// How a device waits before retrying a throttled (429) or failed (5xx) call: exponential
/// backoff from `first`, doubled per retry up to `max`, never shorter than the server's
/// `Retry-After`, and with `jitter` stretched by a random part of up to half, so that devices
/// refused at the same moment do not all come back at the same moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The wait before the first retry.
    pub first: Duration,
    /// The longest wait the doubling reaches.
    pub max: Duration,
    /// Spread retries randomly (off: every device waits exactly the same, synchronized).
    pub jitter: bool,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            first: FIRST_BACKOFF,
            max: MAX_BACKOFF,
            jitter: true,
        }
    }
}

impl Backoff {
    /// The wait before retry number `retry` (0 for the first), given the server's `Retry-After`.
    pub fn wait(&self, retry: u32, retry_after: Option<Duration>) -> Duration {
        let doubled = self
            .first
            .saturating_mul(1u32.checked_shl(retry.min(31)).unwrap_or(u32::MAX));
        let floor = doubled.min(self.max).max(retry_after.unwrap_or_default());
        if self.jitter {
            floor + floor.mul_f64(random_fraction() / 2.0)
        } else {
            floor
        }
    }
}

/// A wait spread randomly over half to one and a half times `base`: the sender's reconnections,
/// so that devices cut off together do not all come back together.
pub(crate) fn spread(base: Duration) -> Duration {
    base.mul_f64(0.5 + random_fraction())
}

/// A random number in 0..=1.
pub(crate) fn random_fraction() -> f64 {
    let mut bytes = [0u8; 2];
    let _ = getrandom::fill(&mut bytes);
    f64::from(u16::from_le_bytes(bytes)) / f64::from(u16::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap_and_never_undercuts_retry_after() {
        let fixed = Backoff {
            jitter: false,
            ..Backoff::default()
        };
        let waits: Vec<u64> = (0..9)
            .map(|n| fixed.wait(n, None).as_millis() as u64)
            .collect();
        assert_eq!(
            waits,
            [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]
        );
        assert_eq!(
            fixed.wait(0, Some(Duration::from_secs(3))),
            Duration::from_secs(3)
        );
        assert_eq!(fixed.wait(u32::MAX, None), MAX_BACKOFF);
    }

    #[test]
    fn jitter_spreads_waits_over_up_to_half_again_above_the_floor() {
        let jittered = Backoff::default();
        let waits: Vec<Duration> = (0..200)
            .map(|_| jittered.wait(1, Some(Duration::from_secs(2))))
            .collect();
        assert!(waits
            .iter()
            .all(|w| *w >= Duration::from_secs(2) && *w <= Duration::from_secs(3)));
        // 200 draws from 65,536 values: all equal would mean no jitter at all.
        assert!(waits.iter().any(|w| *w != waits[0]), "{waits:?}");
    }
}
