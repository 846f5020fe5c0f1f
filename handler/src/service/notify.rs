//! Status notifications for the outside world (in Azure, a Logic App's HTTP trigger): queued in
//! the outbox table when events change a device's provisioning status, POSTed as JSON signed with
//! HMAC-SHA256, retried with growing delays until the receiver answers 2xx. Delivery runs apart
//! from event processing: in a background task woken when something is queued, and in a timer
//! function that picks up whatever another instance left.

use super::{Service, ServiceError};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// Header carrying `sha256=<hex HMAC of the body>`.
pub const SIGNATURE_HEADER: &str = "X-Registry-Signature";
/// Header carrying the notification id (also in the body), for de-duplication.
pub const ID_HEADER: &str = "X-Registry-Notification-Id";
/// Notifications sent per pass.
const PASS_LIMIT: usize = 100;
/// How long one POST to the webhook may take.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a claimed notification is left to its claimant before another pass may take it
/// (the claimant died between claiming and recording the outcome): longer than any send.
const CLAIM_MS: i64 = 2 * 30 * 1000;

/// The waits between delivery attempts: `first`, doubling up to `longest`
/// (`NOTIFY_RETRY_INTERVALS`; 1 s and 5 minutes unless set).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryIntervals {
    /// The wait after the first failed attempt.
    pub first: Duration,
    /// The longest wait.
    pub longest: Duration,
}

impl Default for RetryIntervals {
    fn default() -> Self {
        Self {
            first: Duration::from_secs(1),
            longest: Duration::from_secs(5 * 60),
        }
    }
}

impl RetryIntervals {
    /// Parses `first,longest` in seconds (decimals allowed, as `0.05,2`).
    pub fn parse(text: &str) -> Result<Self, String> {
        let (first, longest) = text
            .split_once(',')
            .ok_or_else(|| format!("{text:?} is not first,longest (seconds)"))?;
        let seconds = |part: &str| -> Result<Duration, String> {
            let value: f64 = part
                .trim()
                .parse()
                .map_err(|_| format!("{:?} is not a number of seconds", part.trim()))?;
            if !(value.is_finite() && value > 0.0 && value <= 86_400.0) {
                return Err(format!(
                    "{:?} must be more than 0 and at most 86400 seconds",
                    part.trim()
                ));
            }
            Ok(Duration::from_secs_f64(value))
        };
        let (first, longest) = (seconds(first)?, seconds(longest)?);
        if first > longest {
            return Err("the first interval is longer than the longest".into());
        }
        Ok(Self { first, longest })
    }

    /// The wait after `attempts` failed attempts, in milliseconds (at least 1).
    fn backoff_ms(&self, attempts: u32) -> i64 {
        let first = i64::try_from(self.first.as_millis()).unwrap_or(i64::MAX);
        let longest = i64::try_from(self.longest.as_millis()).unwrap_or(i64::MAX);
        first
            .saturating_mul(1_i64 << attempts.saturating_sub(1).min(20))
            .min(longest)
            .max(1)
    }
}

/// The webhook's signing secret; never printed.
#[derive(Clone)]
pub struct WebhookSecret(String);

impl WebhookSecret {
    /// Wraps a secret (at least 16 characters).
    pub fn new(secret: String) -> Option<Self> {
        (secret.len() >= 16).then_some(Self(secret))
    }

    /// `sha256=<hex>` of `body`.
    pub fn sign(&self, body: &[u8]) -> String {
        // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
        let mut mac = match Hmac::<Sha256>::new_from_slice(self.0.as_bytes()) {
            Ok(mac) => mac,
            Err(_) => return String::new(),
        };
        mac.update(body);
        let digest = mac.finalize().into_bytes();
        format!(
            "sha256={}",
            digest
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        )
    }
}

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookSecret(<redacted>)")
    }
}

/// Where notifications go.
#[derive(Debug, Clone)]
pub struct Webhook {
    /// The receiver.
    pub url: String,
    /// The signing secret.
    pub secret: WebhookSecret,
}

/// The delivery side: the webhook (if configured), an HTTP client, the retry intervals and a
/// wake-up signal.
pub struct Notifier {
    webhook: Option<Webhook>,
    http: reqwest::Client,
    retry: RetryIntervals,
    wake: Notify,
}

impl Notifier {
    /// Delivers to `webhook`, or nowhere (nothing is queued then).
    pub fn new(webhook: Option<Webhook>, http: reqwest::Client) -> Self {
        Self {
            webhook,
            http,
            retry: RetryIntervals::default(),
            wake: Notify::new(),
        }
    }

    /// The same, retrying failed deliveries after `retry`.
    pub fn with_retry(self, retry: RetryIntervals) -> Self {
        Self { retry, ..self }
    }

    /// The retry intervals.
    pub fn retry(&self) -> RetryIntervals {
        self.retry
    }

    /// Whether notifications are wanted.
    pub fn enabled(&self) -> bool {
        self.webhook.is_some()
    }

    /// Asks the background task to deliver now.
    pub fn wake(&self) {
        self.wake.notify_one();
    }
}

/// What a delivery pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeliveryReport {
    /// Accepted by the receiver.
    pub delivered: usize,
    /// Refused or unreachable; tried again later.
    pub retried: usize,
}

/// Now, in unix milliseconds.
pub(super) fn now_ms() -> i64 {
    i64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000)
        .unwrap_or(i64::MAX)
}

impl Service {
    /// Sends every due notification once; failures are rescheduled. Each is claimed before it
    /// is sent, so passes running at once (the background task, the timer, other instances)
    /// never send the same one twice.
    pub async fn deliver_notifications(&self) -> Result<DeliveryReport, ServiceError> {
        let Some(webhook) = &self.notifier.webhook else {
            return Ok(DeliveryReport::default());
        };
        let mut report = DeliveryReport::default();
        // The outbox answers in id order; send in the order they came due (for a device's
        // changes, the order they were recorded).
        let mut due = self.outbox.due(now_ms(), PASS_LIMIT).await?;
        due.sort_by_key(|n| n.next_attempt_ms);
        for mut notification in due {
            let now = now_ms();
            if !self
                .outbox
                .claim(&notification.id, now, now.saturating_add(CLAIM_MS))
                .await?
            {
                continue;
            }
            let body = notification.document.to_string();
            let sent = self
                .notifier
                .http
                .post(&webhook.url)
                .timeout(SEND_TIMEOUT)
                .header("Content-Type", "application/json")
                .header(SIGNATURE_HEADER, webhook.secret.sign(body.as_bytes()))
                .header(ID_HEADER, &notification.id)
                .body(body)
                .send()
                .await;
            let accepted = sent.as_ref().is_ok_and(|r| r.status().is_success());
            if accepted {
                self.outbox.delivered(&notification.id).await?;
                report.delivered += 1;
                tracing::info!(
                    notification.id = %notification.id,
                    device.id = %notification.document["deviceId"],
                    "delivered a status notification"
                );
            } else {
                notification.attempts += 1;
                notification.next_attempt_ms =
                    now_ms() + self.notifier.retry.backoff_ms(notification.attempts);
                self.outbox.reschedule(&notification).await?;
                report.retried += 1;
                let status = sent.map(|r| r.status().as_u16()).unwrap_or_default();
                tracing::warn!(
                    notification.id = %notification.id,
                    attempts = notification.attempts,
                    status,
                    "the webhook did not accept a notification; it will be retried"
                );
            }
        }
        Ok(report)
    }

    /// Delivers notifications until `shutdown` completes: when woken, and at least every
    /// `period` or first retry interval, whichever is shorter (retries come due without a
    /// wake-up).
    pub async fn run_notifier(
        self: Arc<Self>,
        period: Duration,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        if !self.notifier.enabled() {
            return shutdown.await;
        }
        let period = period.min(self.notifier.retry.first);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                _ = self.notifier.wake.notified() => {}
                _ = tokio::time::sleep(period) => {}
            }
            if let Err(error) = self.deliver_notifications().await {
                tracing::warn!(%error, "notifications could not be delivered now");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_hmac_sha256_of_the_body_in_hex() {
        // RFC 4231 test case 2 uses key "Jefe"; ours needs 16+ characters, so check the shape and
        // that a changed body changes it.
        let secret = WebhookSecret::new("a-webhook-secret-of-some-length".into()).unwrap();
        let a = secret.sign(b"{\"id\":1}");
        assert!(a.starts_with("sha256=") && a.len() == 7 + 64);
        assert_ne!(a, secret.sign(b"{\"id\":2}"));
        assert!(WebhookSecret::new("short".into()).is_none());
        assert_eq!(format!("{secret:?}"), "WebhookSecret(<redacted>)");
    }

    #[test]
    fn retries_back_off_to_five_minutes() {
        let retry = RetryIntervals::default();
        assert_eq!(retry.backoff_ms(1), 1000);
        assert_eq!(retry.backoff_ms(3), 4000);
        assert_eq!(retry.backoff_ms(40), 5 * 60 * 1000);
    }

    #[test]
    fn retry_intervals_parse_seconds_and_refuse_nonsense() {
        let quick = RetryIntervals::parse("0.05, 0.4").unwrap();
        assert_eq!(quick.backoff_ms(1), 50);
        assert_eq!(quick.backoff_ms(3), 200);
        assert_eq!(quick.backoff_ms(9), 400);
        for bad in [
            "", "1", "a,2", "0,1", "-1,2", "NaN,1", "1,inf", "5,1", "1,1e9",
        ] {
            assert!(RetryIntervals::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
