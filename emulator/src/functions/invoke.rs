//! Invoking non-HTTP functions the way the Functions host does for a custom handler
//! (Azure/azure-functions-host: ScriptInvocationContextExtensions.ToHttpScriptInvocationContext,
//! DefaultHttpWorkerService.ProcessDefaultInvocationRequest):
//!
//! - `POST /{FunctionName}` with `{"Data": {...}, "Metadata": {...}}`, chunked (no
//!   Content-Length), and the headers `X-Azure-Functions-InvocationId`,
//!   `X-Azure-Functions-HostVersion`.
//! - Binding data whose key ends in "trigger" is left out of `Metadata`; a value that is not a
//!   JSON object (arrays, strings, numbers) is sent JSON-encoded *as a string*
//!   (`JsonConvert.SerializeObject`), so an event batch arrives as the string `"[\"…\",\"…\"]"`.
//! - The answer must be 2xx with a JSON `{"Outputs", "Logs", "ReturnValue"}`; anything else is a
//!   failed invocation. (The real host waits forever on an empty 2xx body; here that fails too.)

use super::link::{Framing, HandlerLink, Outgoing};
use crate::events::Event;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method};
use serde_json::{json, Map, Value};
use std::sync::Arc;

/// What the host version header says.
pub const HOST_VERSION: &str = "4.0.0-emulator";

/// Why an invocation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum InvocationError {
    /// The handler could not be reached.
    #[error("the handler could not be reached: {0}")]
    Unreachable(String),
    /// The handler answered with an error status.
    #[error("the handler answered HTTP {0}")]
    Status(u16),
    /// The answer is not an invocation result.
    #[error("the handler's answer is not an invocation result: {0}")]
    NotAResult(String),
}

/// Calls a custom handler's non-HTTP functions.
#[derive(Clone)]
pub struct Invoker {
    link: HandlerLink,
}

impl Invoker {
    /// An invoker over `link`.
    pub fn new(link: HandlerLink) -> Self {
        Self { link }
    }

    /// The link to the handler, shared with the HTTP front.
    pub fn link(&self) -> &HandlerLink {
        &self.link
    }

    /// Invokes `function` with `payload`; returns the handler's log lines.
    ///
    /// The body goes chunked, without Content-Length: the host posts an `ObjectContent`, whose
    /// length .NET's HttpClient does not compute (DefaultHttpWorkerService.cs,
    /// HttpScriptInvocationContextExtensions.ToHttpRequestMessage; dotnet/corefx#26233).
    pub async fn invoke(
        &self,
        function: &str,
        payload: &Value,
        invocation_id: &str,
    ) -> Result<Vec<String>, InvocationError> {
        let mut headers = HeaderMap::new();
        let mut add = |name: &'static str, value: &str| {
            if let Ok(value) = HeaderValue::from_str(value) {
                headers.insert(name, value);
            }
        };
        add("x-azure-functions-invocationid", invocation_id);
        add("x-azure-functions-hostversion", HOST_VERSION);
        add(
            "user-agent",
            &format!("Azure-Functions-Host/{HOST_VERSION}"),
        );
        add("content-type", "application/json; charset=utf-8");
        let request = Outgoing {
            method: Method::POST,
            path_and_query: format!("/{function}"),
            headers,
            body: Framing::Chunked(Bytes::from(payload.to_string())),
        };
        let answer = self
            .link
            .exchange(&request)
            .await
            .map_err(|e| InvocationError::Unreachable(e.to_string()))?;
        if !answer.status.is_success() {
            return Err(InvocationError::Status(answer.status.as_u16()));
        }
        let json_content = answer
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.to_ascii_lowercase().contains("json"));
        if !json_content {
            return Err(InvocationError::NotAResult(
                "the Content-Type is not application/json".into(),
            ));
        }
        let result: Value = serde_json::from_slice(&answer.body)
            .map_err(|e| InvocationError::NotAResult(e.to_string()))?;
        let Some(object) = result.as_object() else {
            return Err(InvocationError::NotAResult("not a JSON object".into()));
        };
        let logs = object
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("Logs"))
            .and_then(|(_, v)| v.as_array())
            .map(|lines| {
                lines
                    .iter()
                    .map(|l| l.as_str().map_or_else(|| l.to_string(), str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        Ok(logs)
    }
}

/// What the host serializes with `JsonConvert.SerializeObject` when a value is not an object.
fn as_json_string(value: &Value) -> Value {
    Value::String(value.to_string())
}

/// A UTC time as .NET's `DateTime` (kind unspecified) serializes: no offset, up to seven
/// fractional digits without trailing zeros.
pub fn dotnet_datetime(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let base = format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    );
    let fraction = format!("{:07}", t.nanosecond() / 100);
    let fraction = fraction.trim_end_matches('0');
    if fraction.is_empty() {
        base
    } else {
        format!("{base}.{fraction}")
    }
}

/// The `sys` binding data every invocation carries.
pub fn sys(function: &str) -> Value {
    json!({
        "MethodName": function,
        "UtcNow": crate::azure_format::now(),
        "RandGuid": uuid::Uuid::new_v4().to_string(),
    })
}

/// Where a batch comes from.
pub struct BatchSource<'a> {
    /// The Event Hubs namespace host (here: the hub's host name).
    pub namespace: &'a str,
    /// The event hub (here: the hub's name).
    pub event_hub: &'a str,
    /// Consumer group.
    pub consumer_group: &'a str,
    /// Partition id.
    pub partition: usize,
}

/// Retry bookkeeping the host adds to `Metadata` when a function has a retry policy.
pub struct RetryContext {
    /// 0 on the first attempt.
    pub retry_count: u32,
    /// -1 for unlimited.
    pub max_retry_count: i64,
    /// Why the previous attempt failed.
    pub last_error: Option<String>,
}

/// The invocation body of an eventHubTrigger function.
pub fn event_batch(
    function: &str,
    binding: &str,
    many: bool,
    binary: bool,
    events: &[Arc<Event>],
    source: &BatchSource<'_>,
    retry: Option<&RetryContext>,
) -> Value {
    use base64::Engine;
    let body = |e: &Event| -> Value {
        if binary {
            Value::String(base64::engine::general_purpose::STANDARD.encode(&e.body))
        } else {
            Value::String(String::from_utf8_lossy(&e.body).into_owned())
        }
    };
    let enqueued = |e: &Event| dotnet_datetime(e.enqueued_time_ms);
    let system = |e: &Event| -> Value {
        let mut properties = e.system_properties.clone();
        // The Event Hubs extension adds these to SystemProperties for every event.
        properties.insert("SequenceNumber".into(), json!(e.sequence_number));
        properties.insert("Offset".into(), json!(e.sequence_number));
        properties.insert("PartitionKey".into(), Value::Null);
        properties.insert("EnqueuedTimeUtc".into(), json!(enqueued(e)));
        Value::Object(properties)
    };
    let mut metadata = Map::new();
    metadata.insert(
        "PartitionContext".into(),
        json!({
            "FullyQualifiedNamespace": source.namespace,
            "EventHubName": source.event_hub,
            "ConsumerGroup": source.consumer_group,
            "PartitionId": source.partition.to_string(),
        }),
    );
    let data = if many {
        let array =
            |f: &dyn Fn(&Event) -> Value| Value::Array(events.iter().map(|e| f(e)).collect());
        metadata.insert(
            "PartitionKeyArray".into(),
            as_json_string(&array(&|_| Value::Null)),
        );
        metadata.insert(
            "OffsetArray".into(),
            as_json_string(&array(&|e| json!(e.offset()))),
        );
        metadata.insert(
            "SequenceNumberArray".into(),
            as_json_string(&array(&|e| json!(e.sequence_number))),
        );
        metadata.insert(
            "EnqueuedTimeUtcArray".into(),
            as_json_string(&array(&|e| json!(enqueued(e)))),
        );
        metadata.insert(
            "PropertiesArray".into(),
            as_json_string(&array(&|e| Value::Object(e.properties.clone()))),
        );
        metadata.insert(
            "SystemPropertiesArray".into(),
            as_json_string(&array(&system)),
        );
        as_json_string(&array(&body))
    } else {
        let e = &events[0];
        metadata.insert("PartitionKey".into(), Value::Null);
        metadata.insert("Offset".into(), as_json_string(&json!(e.sequence_number)));
        metadata.insert(
            "SequenceNumber".into(),
            as_json_string(&json!(e.sequence_number)),
        );
        metadata.insert("EnqueuedTimeUtc".into(), json!(enqueued(e)));
        // Dictionaries are JSON objects, so they arrive as objects.
        metadata.insert("Properties".into(), Value::Object(e.properties.clone()));
        metadata.insert("SystemProperties".into(), system(e));
        as_json_string(&body(e))
    };
    metadata.insert("sys".into(), sys(function));
    if let Some(retry) = retry {
        metadata.insert("RetryContext".into(), retry_context(retry));
    }
    let mut inputs = Map::new();
    inputs.insert(binding.to_owned(), data);
    json!({ "Data": inputs, "Metadata": metadata })
}

fn retry_context(retry: &RetryContext) -> Value {
    json!({
        "RetryCount": retry.retry_count,
        "MaxRetryCount": retry.max_retry_count,
        "Exception": retry.last_error.as_ref().map(|message| json!({ "Message": message })),
    })
}

/// What a monitored schedule reports: its last and next occurrences.
pub struct ScheduleStatus<'a> {
    /// The previous run, if any.
    pub last: Option<&'a str>,
    /// The next run.
    pub next: Option<&'a str>,
}

/// The invocation body of a timerTrigger function; `status` is None for unmonitored schedules
/// (those firing more than once a minute), which the host sends as `"ScheduleStatus": null`.
pub fn timer(
    function: &str,
    binding: &str,
    status: Option<ScheduleStatus<'_>>,
    past_due: bool,
    retry: Option<&RetryContext>,
) -> Value {
    let mut metadata = Map::new();
    metadata.insert("sys".into(), sys(function));
    if let Some(retry) = retry {
        metadata.insert("RetryContext".into(), retry_context(retry));
    }
    let mut inputs = Map::new();
    inputs.insert(
        binding.to_owned(),
        json!({
            "Schedule": { "AdjustForDST": true },
            "ScheduleStatus": status.map(|s| json!({ "Last": s.last, "Next": s.next, "LastUpdated": crate::azure_format::now() })),
            "IsPastDue": past_due,
        }),
    );
    json!({ "Data": inputs, "Metadata": metadata })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_look_like_dotnet_datetimes() {
        assert_eq!(
            dotnet_datetime(1_654_109_018_051),
            "2022-06-01T18:43:38.051"
        );
        assert_eq!(dotnet_datetime(1_654_109_018_000), "2022-06-01T18:43:38");
    }

    #[test]
    fn a_batch_arrives_as_json_encoded_strings_with_array_metadata() {
        let event = |n: u64, body: &str| {
            Arc::new(Event {
                sequence_number: n,
                enqueued_time_ms: 1_654_109_018_051,
                system_properties: serde_json::from_value(
                    json!({ "iothub-connection-device-id": "d1" }),
                )
                .unwrap(),
                properties: serde_json::from_value(json!({ "opType": "updateTwin" })).unwrap(),
                body: bytes::Bytes::from(body.to_owned()),
            })
        };
        let events = [event(7, "{\"a\":1}"), event(8, "{\"a\":2}")];
        let source = BatchSource {
            namespace: "127.0.0.3",
            event_hub: "hub-1",
            consumer_group: "$Default",
            partition: 2,
        };
        let payload = event_batch("OnEvents", "events", true, false, &events, &source, None);
        let data = payload["Data"]["events"]
            .as_str()
            .expect("the batch is a string");
        assert_eq!(
            serde_json::from_str::<Vec<String>>(data).unwrap(),
            ["{\"a\":1}", "{\"a\":2}"]
        );
        let metadata = &payload["Metadata"];
        assert_eq!(metadata["SequenceNumberArray"], "[7,8]");
        let properties: Vec<Value> =
            serde_json::from_str(metadata["PropertiesArray"].as_str().unwrap()).unwrap();
        assert_eq!(properties[1]["opType"], "updateTwin");
        let system: Vec<Value> =
            serde_json::from_str(metadata["SystemPropertiesArray"].as_str().unwrap()).unwrap();
        assert_eq!(system[0]["iothub-connection-device-id"], "d1");
        assert_eq!(system[0]["SequenceNumber"], 7);
        assert_eq!(metadata["PartitionContext"]["PartitionId"], "2");
        assert_eq!(metadata["sys"]["MethodName"], "OnEvents");
        assert!(metadata.get("RetryContext").is_none());
    }
}
