//! Where the device renews its SAS token: a planned reconnection before the token expires.
//!
//! The hub closes a connection whose token has expired, so at 80% of the token's lifetime the
//! session stops sending new telemetry, waits for the hub to acknowledge what is in flight (so a
//! planned reconnection sends nothing twice), disconnects, and the sender connects again with a
//! freshly signed token.

use super::session::Phase;
use super::{SenderConfig, Stats, API_VERSION};
use crate::assignment::Assignment;
use iot_credentials::sas::unix_now;
use iot_credentials::SasToken;
use rumqttc::{AsyncClient, EventLoop, MqttOptions};
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::time::Instant;

/// Signs a token for this connection and puts it in the MQTT credentials.
pub(super) fn sign_into(options: &mut MqttOptions, config: &SenderConfig, assignment: &Assignment) {
    let hub = &assignment.hub;
    let device_id = &assignment.device_id;
    let token = SasToken::sign(
        &format!("{hub}/devices/{device_id}"),
        &assignment.credentials.key,
        None,
        unix_now() + config.token_lifetime.as_secs().max(2),
    );
    options.set_credentials(
        format!("{hub}/{device_id}/?api-version={API_VERSION}"),
        token.expose(),
    );
}

/// When a connection made now must start renewing: at 80% of the token's lifetime, before the
/// hub closes the connection.
pub(super) fn due(config: &SenderConfig) -> Instant {
    Instant::now()
        + config
            .token_lifetime
            .mul_f64(0.8)
            .max(Duration::from_millis(500))
}

/// The phase a session enters when renewal is due.
pub(super) fn begin(config: &SenderConfig) -> Phase {
    // The token is still valid for a fifth of its lifetime: drain within three quarters of
    // that, leaving the rest for the DISCONNECT.
    Phase::RenewingToken {
        until: Instant::now() + config.token_lifetime.mul_f64(0.15),
    }
}

/// Whether the connection may end for renewal now: nothing is in flight, or draining took too
/// long.
pub(super) fn may_reconnect(in_flight: usize, until: Instant) -> bool {
    in_flight == 0 || Instant::now() >= until
}

/// Ends the connection for renewal, counting a renewal that leaves messages unacknowledged
/// (they are sent again on the next connection, so the hub may see them twice).
pub(super) async fn disconnect(
    client: &AsyncClient,
    events: &mut EventLoop,
    in_flight: usize,
    stats: &Stats,
) {
    if in_flight > 0 {
        stats.renewals_cut_short.fetch_add(1, Ordering::Relaxed);
    }
    let _ = client.try_disconnect();
    // Let the DISCONNECT go out.
    let _ = tokio::time::timeout(Duration::from_millis(200), events.poll()).await;
}
