//! The hub events `handler-bench` sends the handler: `OnHubEvents` invocations as the Functions
//! host delivers them, in a fixed mix drawn from a seeded generator so runs compare.

use serde_json::{json, Value};

/// A deterministic generator (xorshift) for the event mix.
pub struct Seeded(pub u64);

impl Seeded {
    /// The next number below `n`.
    pub fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// One invocation of `OnHubEvents` as the host sends it: `size` events for random devices
/// (`bench-000000` onwards, `devices` of them), nine in ten telemetry, the rest twin changes and
/// connection changes, in stream order.
pub fn invocation(
    rng: &mut Seeded,
    partition: usize,
    first_sequence: i64,
    size: usize,
    devices: usize,
) -> Value {
    let now = time::OffsetDateTime::now_utc();
    let stamp = |offset_ms: i64| {
        (now + time::Duration::milliseconds(offset_ms))
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default()
    };
    let (mut bodies, mut props, mut system, mut enqueued, mut sequences) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 0..size {
        let sequence = first_sequence + i as i64;
        let device = format!("bench-{:06}", rng.below(devices));
        let at = stamp(i as i64);
        let (source, body, app) = match rng.below(20) {
            0 => (
                "twinChangeEvents",
                json!({ "version": sequence, "properties": { "reported": { "firmware": format!("1.{sequence}"), "$version": sequence } } }).to_string(),
                json!({ "hubName": "hub-1", "deviceId": device, "opType": "updateTwin", "operationTimestamp": at }),
            ),
            1 => (
                "deviceConnectionStateEvents",
                json!({ "sequenceNumber": format!("{:064X}", sequence) }).to_string(),
                json!({ "hubName": "hub-1", "deviceId": device, "opType": if sequence % 2 == 0 { "deviceConnected" } else { "deviceDisconnected" }, "operationTimestamp": at }),
            ),
            _ => ("Telemetry", json!({ "temperature": 21.5 }).to_string(), json!({ "kind": "reading" })),
        };
        bodies.push(body);
        props.push(app);
        system.push(
            json!({ "iothub-message-source": source, "iothub-connection-device-id": device }),
        );
        enqueued.push(at.trim_end_matches('Z').to_owned());
        sequences.push(sequence);
    }
    json!({
        "Data": { "events": serde_json::to_string(&bodies).unwrap_or_default() },
        "Metadata": {
            "PartitionContext": { "EventHubName": "hub-1", "PartitionId": partition.to_string() },
            "SequenceNumberArray": serde_json::to_string(&sequences).unwrap_or_default(),
            "EnqueuedTimeUtcArray": serde_json::to_string(&enqueued).unwrap_or_default(),
            "PropertiesArray": serde_json::to_string(&props).unwrap_or_default(),
            "SystemPropertiesArray": serde_json::to_string(&system).unwrap_or_default(),
        }
    })
}
