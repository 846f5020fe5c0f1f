//! The non-HTTP functions: the host invokes them with `POST /{FunctionName}` and the
//! custom-handler invocation body (`{"Data": …, "Metadata": …}`), and reads
//! `{"Outputs", "Logs", "ReturnValue"}` back; any other status fails the invocation, which the
//! function's retry policy then repeats.
//!
//! - `OnHubEvents`: batches of every hub's lifecycle, twin-change and connection-state events
//!   from the one event hub the hubs route them to (eventHubTrigger, cardinality many, dataType
//!   string). Which hub an event comes from is in the event (`hubName`), so adding a hub is a
//!   routing setting, not a function.
//! - `Reconcile`: the timer that compares the registry with DPS and the hubs.
//! - `DeliverNotifications`: the timer that sends queued status notifications.
//!
//! The body's shape follows the host (Azure/azure-functions-host,
//! `ScriptInvocationContextExtensions`): values that are not JSON objects, such as the array of
//! event bodies and every metadata array, arrive JSON-encoded as strings.

use crate::domain::events::{
    reported_section, Change, ConnectionSequence, EventKey, HubEvent, Stamp,
};
use crate::domain::journal::DeadLetter;
use crate::service::Service;
use serde_json::{json, Map, Value};
use std::sync::Arc;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Reply};

/// The non-HTTP functions this handler serves, with their trigger type; functions/*/function.json
/// is tested against it.
pub const FUNCTIONS: &[(&str, &str)] = &[
    ("OnHubEvents", "eventHubTrigger"),
    ("Reconcile", "timerTrigger"),
    ("DeliverNotifications", "timerTrigger"),
];

/// Invocations can carry a batch of many events.
const INVOCATION_LIMIT: u64 = 32 * 1024 * 1024;
/// The part of a dead event kept with it.
const DEAD_EVENT_KEPT: usize = 16 * 1024;

/// `POST /{FunctionName}` for every function in [`FUNCTIONS`].
pub fn route(service: Arc<Service>) -> BoxedFilter<(Response,)> {
    warp::path::param::<String>()
        .and(warp::path::end())
        .and_then(|function: String| async move {
            FUNCTIONS
                .iter()
                .find(|(name, _)| *name == function)
                .copied()
                .ok_or_else(warp::reject::not_found)
        })
        .and(warp::post())
        .and(super::body_up_to(INVOCATION_LIMIT))
        .then(
            move |(name, trigger): (&'static str, &'static str), body: bytes::Bytes| {
                let service = service.clone();
                async move {
                    // An unreadable invocation is set aside, not refused: refusing would have the host
                    // deliver it again forever and hold up the partition behind it.
                    let invocation = serde_json::from_slice(&body).unwrap_or_else(|_| {
                        Value::String(String::from_utf8_lossy(&body).into_owned())
                    });
                    invoke(&service, name, trigger, invocation).await
                }
            },
        )
        .boxed()
}

/// The host's idea of success: 200 with the result document.
fn result(logs: Vec<String>, value: Value) -> Response {
    warp::reply::json(&json!({ "Outputs": {}, "Logs": logs, "ReturnValue": value })).into_response()
}

/// A failed invocation: the host retries it per the function's retry policy.
fn failed(message: String) -> Response {
    warp::reply::with_status(warp::reply::json(&json!({ "Outputs": {}, "Logs": [message.clone()], "ReturnValue": { "error": message } })), StatusCode::SERVICE_UNAVAILABLE)
        .into_response()
}

async fn invoke(service: &Service, function: &str, trigger: &str, invocation: Value) -> Response {
    match (trigger, function) {
        ("eventHubTrigger", _) => {
            let (events, malformed) = parse_batch(service, function, &invocation);
            match service.record_events(function, events, malformed).await {
                Ok(report) => {
                    tracing::info!(
                        function,
                        events = report.events,
                        changed = report.changed,
                        unknown = report.unknown,
                        dead = report.dead_lettered,
                        "recorded events"
                    );
                    result(
                        vec![format!(
                            "{} events, {} records changed",
                            report.events, report.changed
                        )],
                        json!({ "events": report.events, "changed": report.changed, "unknownDevice": report.unknown, "deadLettered": report.dead_lettered, "notified": report.notified }),
                    )
                }
                Err(error) => {
                    tracing::warn!(
                        function,
                        %error,
                        "a batch of events could not be recorded; the host will deliver it again"
                    );
                    failed(error.to_string())
                }
            }
        }
        (_, "Reconcile") => match service.reconcile().await {
            Ok(report) => result(
                vec![format!(
                    "{} checked, {} repaired",
                    report.checked, report.repaired_count
                )],
                serde_json::to_value(&report).unwrap_or_default(),
            ),
            Err(error) => failed(error.to_string()),
        },
        (_, "DeliverNotifications") => match service.deliver_notifications().await {
            Ok(report) => result(
                vec![format!(
                    "{} delivered, {} to retry",
                    report.delivered, report.retried
                )],
                json!({ "delivered": report.delivered, "retried": report.retried }),
            ),
            Err(error) => failed(error.to_string()),
        },
        _ => failed(format!("{function} has no implementation")),
    }
}

/// A value the host may send as JSON-encoded text or as JSON.
fn decoded(value: Option<&Value>) -> Option<Value> {
    match value? {
        Value::String(text) => serde_json::from_str(text).ok(),
        other => Some(other.clone()),
    }
}

fn array(metadata: &Value, name: &str) -> Vec<Value> {
    decoded(metadata.get(name))
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
}

fn shortened(text: &str) -> String {
    let mut end = text.len().min(DEAD_EVENT_KEPT);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

/// Splits an invocation into events the registry can apply and events it never can.
pub fn parse_batch(
    service: &Service,
    function: &str,
    invocation: &Value,
) -> (Vec<HubEvent>, Vec<DeadLetter>) {
    let dead = |key: String, device_id: Option<String>, reason: String, event: String| DeadLetter {
        function: function.to_owned(),
        key,
        device_id,
        reason,
        event: shortened(&event),
        at: Stamp::now(),
    };
    let data = &invocation["Data"];
    let metadata = &invocation["Metadata"];
    let bodies = data
        .as_object()
        .and_then(|d| d.values().next())
        .and_then(|v| decoded(Some(v)))
        .and_then(|v| v.as_array().cloned());
    let Some(bodies) = bodies else {
        let key = format!("invocation~{}", uuid::Uuid::new_v4().simple());
        return (
            Vec::new(),
            vec![dead(
                key,
                None,
                "the invocation carries no array of events".into(),
                invocation.to_string(),
            )],
        );
    };
    let properties = array(metadata, "PropertiesArray");
    let system = array(metadata, "SystemPropertiesArray");
    let enqueued = array(metadata, "EnqueuedTimeUtcArray");
    let sequences = array(metadata, "SequenceNumberArray");
    let context = decoded(metadata.get("PartitionContext")).unwrap_or_default();
    let stream = context["EventHubName"]
        .as_str()
        .unwrap_or(function)
        .to_owned();
    let partition = context["PartitionId"]
        .as_str()
        .map_or_else(|| context["PartitionId"].to_string(), str::to_owned);

    let mut events = Vec::new();
    let mut malformed = Vec::new();
    for (i, body) in bodies.iter().enumerate() {
        let sequence = sequences.get(i).and_then(Value::as_i64);
        let key = EventKey {
            stream: stream.clone(),
            partition: partition.clone(),
            sequence: sequence.unwrap_or(-1),
        };
        let raw = || {
            json!({ "body": body, "properties": properties.get(i), "systemProperties": system.get(i) }).to_string()
        };
        let empty = Map::new();
        let props = properties
            .get(i)
            .and_then(Value::as_object)
            .unwrap_or(&empty);
        let sys = system.get(i).and_then(Value::as_object).unwrap_or(&empty);
        match parse_event(service, key.clone(), body, props, sys, enqueued.get(i)) {
            Ok(Some(event)) => events.push(event),
            Ok(None) => {}
            Err(reason) => {
                // Named as parse_event reads it, so the dashboard can link a letter to its device.
                let device_id = [
                    props.get("deviceId"),
                    sys.get("iothub-connection-device-id"),
                ]
                .into_iter()
                .flatten()
                .find_map(Value::as_str)
                .map(str::to_owned);
                malformed.push(dead(key.to_string(), device_id, reason, raw()))
            }
        }
    }
    (events, malformed)
}

/// One event; `None` for kinds the registry does not follow.
fn parse_event(
    service: &Service,
    key: EventKey,
    body: &Value,
    props: &Map<String, Value>,
    sys: &Map<String, Value>,
    enqueued: Option<&Value>,
) -> Result<Option<HubEvent>, String> {
    if key.sequence < 0 {
        return Err("the event has no sequence number".into());
    }
    let event = RawEvent { body, props };
    let source =
        text(sys, "iothub-message-source").ok_or("the event has no iothub-message-source")?;
    let device_id = text(props, "deviceId")
        .or_else(|| text(sys, "iothub-connection-device-id"))
        .ok_or("the event names no device")?;
    let enqueued = enqueued
        .and_then(Value::as_str)
        .and_then(Stamp::parse)
        .or_else(|| {
            text(sys, "iothub-enqueuedtime")
                .as_deref()
                .and_then(Stamp::parse)
        })
        .ok_or("the event has no enqueued time")?;
    // A module's events (IoT Edge modules, module twins) carry its device's id and a moduleId;
    // they are the module's state, never the device's, so the registry leaves them out.
    if props.contains_key("moduleId") || sys.contains_key("iothub-connection-module-id") {
        return Ok(None);
    }
    let telemetry = source.eq_ignore_ascii_case("telemetry");
    // Every hub routes to one event hub, so the hub is named by the event, not the stream.
    // Telemetry carries no hub name; it only tells when the device was last seen.
    let hub = match text(props, "hubName") {
        Some(name) => service.hub_host(&name),
        None if telemetry => String::new(),
        None => return Err("the event names no hub (hubName)".into()),
    };
    let op = text(props, "opType").unwrap_or_default();
    let change = match source.to_ascii_lowercase().as_str() {
        "telemetry" => Some((enqueued.clone(), Change::Telemetry)),
        "devicelifecycleevents" => event.lifecycle_change(&op)?,
        "twinchangeevents" => event.twin_change(&op)?,
        "deviceconnectionstateevents" => event.connection_change(&op)?,
        _ => None,
    };
    Ok(change.map(|(at, change)| HubEvent {
        key,
        device_id,
        hub,
        at,
        enqueued,
        change,
    }))
}

/// A property's text, if it is text.
fn text(map: &Map<String, Value>, name: &str) -> Option<String> {
    map.get(name).and_then(Value::as_str).map(str::to_owned)
}

/// One event's body and application properties, as the host delivers them. Each kind reads its
/// time and body before its operation type, so a malformed event is set aside whatever it does.
struct RawEvent<'a> {
    body: &'a Value,
    props: &'a Map<String, Value>,
}

impl RawEvent<'_> {
    /// The body as JSON: a string holding JSON (dataType string) or the object itself.
    fn body_json(&self) -> Result<Value, String> {
        match self.body {
            Value::String(text) => {
                serde_json::from_str(text).map_err(|e| format!("the event body is not JSON: {e}"))
            }
            Value::Object(_) => Ok(self.body.clone()),
            _ => Err("the event body is not a JSON object".into()),
        }
    }

    /// When the hub says the operation happened.
    fn operation_time(&self) -> Result<Stamp, String> {
        let at =
            text(self.props, "operationTimestamp").ok_or("the event has no operationTimestamp")?;
        Stamp::parse(&at).ok_or_else(|| format!("operationTimestamp {at:?} is not a time"))
    }

    /// An identity created or deleted; other lifecycle operations (module identities and the
    /// like) are not the registry's business.
    fn lifecycle_change(&self, op: &str) -> Result<Option<(Stamp, Change)>, String> {
        let at = self.operation_time()?;
        let change = match op {
            "createDeviceIdentity" => Change::Created {
                reported: reported_section(&self.body_json()?),
            },
            "deleteDeviceIdentity" => Change::Deleted,
            _ => return Ok(None),
        };
        Ok(Some((at, change)))
    }

    /// A twin patched (`updateTwin`) or replaced (`replaceTwin`).
    fn twin_change(&self, op: &str) -> Result<Option<(Stamp, Change)>, String> {
        let at = self.operation_time()?;
        let reported = reported_section(&self.body_json()?);
        let replaced = match op {
            "updateTwin" => false,
            "replaceTwin" => true,
            _ => return Ok(None),
        };
        Ok(Some((at, Change::Twin { reported, replaced })))
    }

    /// A device connected or disconnected, with the hub's sequence number of that change.
    fn connection_change(&self, op: &str) -> Result<Option<(Stamp, Change)>, String> {
        let at = self.operation_time()?;
        let body = self.body_json()?;
        let sequence = body["sequenceNumber"]
            .as_str()
            .and_then(ConnectionSequence::parse)
            .ok_or("the connection event has no hex sequenceNumber")?;
        let change = match op {
            "deviceConnected" => Change::Connected(sequence),
            "deviceDisconnected" => Change::Disconnected(sequence),
            other => return Err(format!("unknown connection opType {other:?}")),
        };
        Ok(Some((at, change)))
    }
}
