//! DPS's rate limits. Azure allows a DPS instance 1,000 device registrations and 1,000 service
//! operations a minute per unit (MicrosoftDocs/azure-docs includes/iot-dps-limits.md, "Device
//! registrations 1,000/min/service", "Operations 1,000/min/service") and answers the excess
//! with 429 Too Many Requests. The emulator enforces configurable limits as token buckets:
//! `per_minute` calls a minute on average, with up to `burst` at once. The registration limit
//! counts register calls only (polls and status lookups have their own, much looser limit in
//! Azure and are not limited here); the operation limit counts every call of the service API,
//! a bulk call once (Azure does not say how it counts one).
//!
//! How long to wait is told in whole seconds (HTTP `Retry-After`, MQTT `&retry-after=` in the
//! answer topic), because that is how the SDKs read it: azure-iot-sdk-python
//! (provisioning/pipeline/pipeline_stages_provisioning.py parses it with `int(…, 10)`) and
//! azure-iot-sdk-node (provisioning/transport/mqtt/src/mqtt.ts multiplies it by 1000).

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A rate limit: of register calls, or of service-API calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Calls admitted per minute, on average (Azure: 1,000 per unit for each).
    pub per_minute: u32,
    /// Calls admitted at once after a quiet spell (the bucket's size).
    pub burst: u32,
}

impl Rate {
    /// `per_minute` with a burst of one second's worth (at least one).
    pub fn per_minute(per_minute: u32) -> Self {
        Self {
            per_minute,
            burst: per_minute.div_ceil(60).max(1),
        }
    }
}

/// The token bucket.
#[derive(Debug)]
pub struct RateLimiter {
    rate: Rate,
    bucket: Mutex<Bucket>,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    filled_at: Instant,
}

impl RateLimiter {
    /// A full bucket.
    pub fn new(rate: Rate) -> Self {
        Self {
            rate,
            bucket: Mutex::new(Bucket {
                tokens: f64::from(rate.burst.max(1)),
                filled_at: Instant::now(),
            }),
        }
    }

    /// The configured rate.
    pub fn rate(&self) -> Rate {
        self.rate
    }

    /// Takes one call from the bucket, or answers how many whole seconds (at least one)
    /// until one is available.
    pub fn admit(&self) -> Result<(), u64> {
        self.admit_at(Instant::now())
    }

    fn admit_at(&self, now: Instant) -> Result<(), u64> {
        let per_second = f64::from(self.rate.per_minute) / 60.0;
        let capacity = f64::from(self.rate.burst.max(1));
        let mut bucket = self.bucket.lock().unwrap_or_else(|p| p.into_inner());
        let elapsed = now
            .saturating_duration_since(bucket.filled_at)
            .as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * per_second).min(capacity);
        bucket.filled_at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Ok(());
        }
        if per_second <= 0.0 {
            // A limit of zero admits nothing; tell clients to come back in a minute.
            return Err(60);
        }
        let wait = Duration::from_secs_f64(((1.0 - bucket.tokens) / per_second).min(3600.0));
        Err(wait.as_secs_f64().ceil().max(1.0) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_admitted_then_the_excess_is_told_when_to_come_back() {
        let limiter = RateLimiter::new(Rate {
            per_minute: 60,
            burst: 3,
        });
        let start = Instant::now();
        for _ in 0..3 {
            assert_eq!(limiter.admit_at(start), Ok(()));
        }
        assert_eq!(limiter.admit_at(start), Err(1));
        // One a second refills: after a second, exactly one more.
        let later = start + Duration::from_secs(1);
        assert_eq!(limiter.admit_at(later), Ok(()));
        assert_eq!(limiter.admit_at(later), Err(1));
    }

    #[test]
    fn a_slow_rate_asks_for_a_longer_wait_and_zero_admits_nothing() {
        let slow = RateLimiter::new(Rate {
            per_minute: 6,
            burst: 1,
        });
        let start = Instant::now();
        assert_eq!(slow.admit_at(start), Ok(()));
        assert_eq!(slow.admit_at(start), Err(10));
        let closed = RateLimiter::new(Rate {
            per_minute: 0,
            burst: 0,
        });
        // The bucket starts with one token (burst at least one), then stays empty.
        assert_eq!(closed.admit_at(start), Ok(()));
        assert_eq!(closed.admit_at(start + Duration::from_secs(600)), Err(60));
    }

    #[test]
    fn the_default_burst_is_one_seconds_worth() {
        assert_eq!(Rate::per_minute(1000).burst, 17);
        assert_eq!(Rate::per_minute(30).burst, 1);
    }
}
