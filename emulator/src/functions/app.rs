//! A function app as the Functions host reads it: `host.json`, one folder per function with its
//! `function.json`, and the app settings of `local.settings.json`.
//!
//! The host looks for function folders at the app root. This project keeps them under
//! `functions/` and packaging lays them at the root, so both places are read.

use super::routes::RouteTemplate;
use super::schedule::Schedule;
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Why an app could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A file is not what the host expects.
    #[error("{path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// Who may call an HTTP function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthLevel {
    /// Anyone.
    Anonymous,
    /// A host function key, one of the function's own keys, or the master key.
    Function,
    /// A system key or the master key.
    System,
    /// The master key only.
    Admin,
}

/// How a function retries a failed invocation (function.json `retry`).
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Retries after the first attempt; None means forever (`-1`).
    pub max_retries: Option<u32>,
    /// Delay before retry n (from 1).
    pub delays: RetryDelays,
}

/// The two strategies of the Functions retry policy.
#[derive(Debug, Clone, PartialEq)]
pub enum RetryDelays {
    /// The same delay every time.
    Fixed(Duration),
    /// `minimum * 2^(n-1)`, capped at `maximum`.
    Exponential {
        /// First delay.
        minimum: Duration,
        /// Largest delay.
        maximum: Duration,
    },
}

impl RetryPolicy {
    /// The delay before retry `n` (1-based).
    pub fn delay(&self, n: u32) -> Duration {
        match &self.delays {
            RetryDelays::Fixed(delay) => *delay,
            RetryDelays::Exponential { minimum, maximum } => {
                let factor = 1u32.checked_shl(n.saturating_sub(1)).unwrap_or(u32::MAX);
                minimum.saturating_mul(factor).min(*maximum)
            }
        }
    }
}

/// What starts a function.
#[derive(Debug, Clone)]
pub enum Trigger {
    /// An HTTP request.
    Http {
        /// Who may call.
        auth: AuthLevel,
        /// Allowed methods (upper case); empty means all.
        methods: Vec<String>,
        /// The route under the prefix.
        route: RouteTemplate,
    },
    /// Events from an Event Hub (here: an emulated hub's event stream).
    EventHub {
        /// Binding name (the key in `Data`).
        binding: String,
        /// `eventHubName`, `%setting%` resolved.
        event_hub_name: Option<String>,
        /// Name of the app setting holding the connection string.
        connection: String,
        /// `many`: a batch per invocation.
        many: bool,
        /// Consumer group.
        consumer_group: String,
        /// `binary` sends bodies as base64; anything else as text.
        binary: bool,
    },
    /// A schedule.
    Timer {
        /// Binding name.
        binding: String,
        /// When.
        schedule: Schedule,
        /// Also run once at start.
        run_on_startup: bool,
        /// Whether the host keeps the schedule's status (`useMonitor`; off by default for
        /// schedules firing more than once a minute), which decides `ScheduleStatus`.
        monitored: bool,
    },
}

/// One function.
#[derive(Debug, Clone)]
pub struct FunctionDef {
    /// The folder name.
    pub name: String,
    /// Its trigger.
    pub trigger: Trigger,
    /// Its retry policy, if any.
    pub retry: Option<RetryPolicy>,
}

/// The custom handler as host.json describes it.
#[derive(Debug, Clone)]
pub struct HandlerDescription {
    /// Executable, resolved against the app root.
    pub executable: PathBuf,
    /// Working directory.
    pub working_directory: PathBuf,
    /// Arguments.
    pub arguments: Vec<String>,
}

/// How the host hands an HTTP-triggered function's request to the handler. Either applies only
/// to functions with exactly one httpTrigger input and one http output
/// (`IsHttpInAndOutFunction`); any other HTTP function gets the invocation payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpMode {
    /// `enableProxyingHttpRequest`: the request streams through as the client sent it.
    Proxying,
    /// `enableForwardingHttpRequest`: the request is rebuilt; its body is copied only when it
    /// came with a Content-Length above zero.
    Forwarding,
}

/// A loaded function app.
#[derive(Debug, Clone)]
pub struct FunctionApp {
    /// The app root.
    pub root: PathBuf,
    /// The custom handler.
    pub handler: HandlerDescription,
    /// How HTTP requests reach the handler.
    pub http_mode: HttpMode,
    /// `extensions.http.routePrefix` (default `api`).
    pub route_prefix: String,
    /// `extensions.eventHubs.maxEventBatchSize` (default 100).
    pub max_event_batch: usize,
    /// App settings (local.settings.json `Values`).
    pub settings: BTreeMap<String, String>,
    /// Enabled functions.
    pub functions: Vec<FunctionDef>,
}

fn read_json(path: &Path) -> Result<Value, AppError> {
    let text = fs::read_to_string(path).map_err(|source| AppError::Io {
        path: path.to_owned(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| AppError::Invalid {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

fn invalid(path: &Path, reason: impl Into<String>) -> AppError {
    AppError::Invalid {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

/// Parses a .NET TimeSpan as function.json writes it (`hh:mm:ss` or `d.hh:mm:ss`).
fn time_span(text: &str) -> Option<Duration> {
    let (days, rest) = match text.split_once('.') {
        Some((d, rest)) if rest.contains(':') => (d.parse::<u64>().ok()?, rest),
        _ => (0, text),
    };
    let parts: Vec<&str> = rest.split(':').collect();
    let [h, m, s] = parts.as_slice() else {
        return None;
    };
    // try_from_secs_f64 refuses negative, NaN and huge values instead of panicking.
    let seconds = Duration::try_from_secs_f64(s.parse().ok()?).ok()?;
    Duration::from_secs(days * 86_400)
        .checked_add(Duration::from_secs(
            h.parse::<u64>().ok()?.checked_mul(3600)?,
        ))?
        .checked_add(Duration::from_secs(m.parse::<u64>().ok()?.checked_mul(60)?))?
        .checked_add(seconds)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RetryJson {
    strategy: String,
    max_retry_count: i64,
    #[serde(default)]
    delay_interval: Option<String>,
    #[serde(default)]
    minimum_interval: Option<String>,
    #[serde(default)]
    maximum_interval: Option<String>,
}

fn retry_policy(path: &Path, value: &Value) -> Result<RetryPolicy, AppError> {
    let retry: RetryJson =
        serde_json::from_value(value.clone()).map_err(|e| invalid(path, format!("retry: {e}")))?;
    let max_retries = match retry.max_retry_count {
        -1 => None,
        n if n >= 0 => Some(n as u32),
        _ => return Err(invalid(path, "retry.maxRetryCount must be -1 or a count")),
    };
    let interval = |field: &Option<String>, name: &str| {
        field.as_deref().and_then(time_span).ok_or_else(|| {
            invalid(
                path,
                format!("retry.{name} must be a time span such as 00:00:05"),
            )
        })
    };
    let delays = match retry.strategy.as_str() {
        "fixedDelay" => RetryDelays::Fixed(interval(&retry.delay_interval, "delayInterval")?),
        "exponentialBackoff" => RetryDelays::Exponential {
            minimum: interval(&retry.minimum_interval, "minimumInterval")?,
            maximum: interval(&retry.maximum_interval, "maximumInterval")?,
        },
        other => return Err(invalid(path, format!("unknown retry strategy {other:?}"))),
    };
    Ok(RetryPolicy {
        max_retries,
        delays,
    })
}

/// Whether the bindings are one httpTrigger in and one http out, the only shape the host
/// proxies or forwards (FunctionMetadataExtensions.IsHttpInAndOutFunction).
fn http_in_and_out(bindings: &[Value]) -> bool {
    let is = |b: &Value, kind: &str, direction: &str| {
        b.get("type")
            .and_then(Value::as_str)
            .is_some_and(|t| t.eq_ignore_ascii_case(kind))
            && b.get("direction")
                .and_then(Value::as_str)
                .is_some_and(|d| d.eq_ignore_ascii_case(direction))
    };
    let inputs = bindings
        .iter()
        .filter(|b| is(b, "httpTrigger", "in"))
        .count();
    let outputs = bindings.iter().filter(|b| is(b, "http", "out")).count();
    bindings.len() == 2 && inputs == 1 && outputs == 1
}

impl FunctionApp {
    /// Loads the app at `root`.
    pub fn load(root: &Path) -> Result<Self, AppError> {
        Self::load_with(root, &BTreeMap::new())
    }

    /// Loads the app at `root` with some app settings replaced (they count for `%setting%`
    /// bindings and `AzureWebJobs.<name>.Disabled` too).
    pub fn load_with(root: &Path, overrides: &BTreeMap<String, String>) -> Result<Self, AppError> {
        let root = std::path::absolute(root).unwrap_or_else(|_| root.to_owned());
        let host_path = root.join("host.json");
        let host = read_json(&host_path)?;
        let custom = host.get("customHandler").ok_or_else(|| {
            invalid(
                &host_path,
                "no customHandler section: only custom handler apps are supported",
            )
        })?;
        let http_mode = Self::http_mode(custom, &host_path)?;
        let handler = Self::handler_description(&root, custom, &host_path)?;
        let route_prefix = host
            .pointer("/extensions/http/routePrefix")
            .and_then(Value::as_str)
            .unwrap_or("api")
            .trim_matches('/')
            .to_owned();
        let max_event_batch = host
            .pointer("/extensions/eventHubs/maxEventBatchSize")
            .and_then(Value::as_u64)
            .map_or(100, |n| n.clamp(1, 1000) as usize);
        let settings = Self::settings(&root, overrides)?;
        let functions = Self::enabled_functions(&root, &settings)?;
        Ok(Self {
            root,
            handler,
            http_mode,
            route_prefix,
            max_event_batch,
            settings,
            functions,
        })
    }

    /// How HTTP requests reach the handler, from host.json's `customHandler` flags.
    fn http_mode(custom: &Value, host_path: &Path) -> Result<HttpMode, AppError> {
        let flag = |name: &str| custom.get(name).and_then(Value::as_bool) == Some(true);
        // The host checks proxying first (DefaultHttpWorkerService.InvokeAsync).
        if flag("enableProxyingHttpRequest") {
            Ok(HttpMode::Proxying)
        } else if flag("enableForwardingHttpRequest") {
            Ok(HttpMode::Forwarding)
        } else {
            Err(invalid(
                host_path,
                "set customHandler.enableProxyingHttpRequest (or the older \
                    enableForwardingHttpRequest) to true: the stand-in hands HTTP requests to the handler as they are, and does not build the HTTP invocation payload",
            ))
        }
    }

    /// The handler's executable, working directory and arguments (`customHandler.description`),
    /// relative to the app root.
    fn handler_description(
        root: &Path,
        custom: &Value,
        host_path: &Path,
    ) -> Result<HandlerDescription, AppError> {
        let description = custom.get("description").cloned().unwrap_or_default();
        let executable = description
            .get("defaultExecutablePath")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                invalid(
                    host_path,
                    "customHandler.description.defaultExecutablePath is missing",
                )
            })?;
        let working = description
            .get("workingDirectory")
            .and_then(Value::as_str)
            .unwrap_or("");
        Ok(HandlerDescription {
            executable: root.join(executable),
            working_directory: root.join(working),
            arguments: description
                .get("arguments")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default(),
        })
    }

    /// The app settings: local.settings.json's `Values`, with `overrides` on top.
    fn settings(
        root: &Path,
        overrides: &BTreeMap<String, String>,
    ) -> Result<BTreeMap<String, String>, AppError> {
        let settings_path = root.join("local.settings.json");
        let mut settings: BTreeMap<String, String> = if settings_path.exists() {
            read_json(&settings_path)?
                .get("Values")
                .and_then(Value::as_object)
                .map(|values| {
                    values
                        .iter()
                        .map(|(k, v)| {
                            (
                                k.clone(),
                                v.as_str().map_or_else(|| v.to_string(), str::to_owned),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default()
        } else {
            BTreeMap::new()
        };
        settings.extend(overrides.iter().map(|(k, v)| (k.clone(), v.clone())));
        Ok(settings)
    }

    /// Every enabled function: a folder holding function.json, in the root or in `functions/`,
    /// in name order; a function disabled by `disabled` or `AzureWebJobs.<name>.Disabled` is
    /// left out, and two of one name stop the load.
    fn enabled_functions(
        root: &Path,
        settings: &BTreeMap<String, String>,
    ) -> Result<Vec<FunctionDef>, AppError> {
        let mut functions = Vec::new();
        for dir in [root.to_owned(), root.join("functions")] {
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            let mut folders: Vec<PathBuf> =
                entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
            folders.sort();
            for folder in folders {
                let path = folder.join("function.json");
                if !path.is_file() {
                    continue;
                }
                let name = folder
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                if functions
                    .iter()
                    .any(|f: &FunctionDef| f.name.eq_ignore_ascii_case(&name))
                {
                    return Err(invalid(&path, format!("a second function named {name}")));
                }
                let disabled_setting = settings
                    .get(&format!("AzureWebJobs.{name}.Disabled"))
                    .is_some_and(|v| v.eq_ignore_ascii_case("true"));
                let definition = read_json(&path)?;
                if disabled_setting
                    || definition.get("disabled").and_then(Value::as_bool) == Some(true)
                {
                    continue;
                }
                functions.push(Self::function(&path, name, &definition, settings)?);
            }
        }
        Ok(functions)
    }

    /// One function from its function.json: the trigger binding, read by its type, and the
    /// retry policy.
    fn function(
        path: &Path,
        name: String,
        definition: &Value,
        settings: &BTreeMap<String, String>,
    ) -> Result<FunctionDef, AppError> {
        let bindings = definition
            .get("bindings")
            .and_then(Value::as_array)
            .ok_or_else(|| invalid(path, "no bindings"))?;
        let trigger_json = bindings
            .iter()
            .find(|b| {
                b.get("type")
                    .and_then(Value::as_str)
                    .is_some_and(|t| t.ends_with("Trigger"))
            })
            .ok_or_else(|| invalid(path, "no trigger binding"))?;
        let trigger = match text(trigger_json, "type").as_deref() {
            Some("httpTrigger") => http_trigger(path, &name, trigger_json, bindings)?,
            Some("eventHubTrigger") => event_hub_trigger(path, trigger_json, settings)?,
            Some("timerTrigger") => timer_trigger(path, trigger_json, settings)?,
            Some(other) => {
                return Err(invalid(
                    path,
                    format!("trigger {other} is not supported by the stand-in"),
                ))
            }
            None => return Err(invalid(path, "the trigger binding has no type")),
        };
        let retry = definition
            .get("retry")
            .map(|r| retry_policy(path, r))
            .transpose()?;
        Ok(FunctionDef {
            name,
            trigger,
            retry,
        })
    }
}

/// A string field of a binding.
fn text(binding: &Value, field: &str) -> Option<String> {
    binding
        .get(field)
        .and_then(Value::as_str)
        .map(str::to_owned)
}

/// `%name%` replaced by the app setting `name` (left as it is when there is no such setting).
fn resolve(settings: &BTreeMap<String, String>, value: String) -> String {
    match value.strip_prefix('%').and_then(|v| v.strip_suffix('%')) {
        Some(setting) => settings.get(setting).cloned().unwrap_or(value),
        None => value,
    }
}

/// The name the trigger's data goes by in an invocation (`trigger` when unnamed).
fn binding_name(trigger: &Value) -> String {
    text(trigger, "name").unwrap_or_else(|| "trigger".into())
}

/// An `httpTrigger`: its `authLevel`, methods and route (the function's name when none).
fn http_trigger(
    path: &Path,
    name: &str,
    trigger: &Value,
    bindings: &[Value],
) -> Result<Trigger, AppError> {
    if !http_in_and_out(bindings) {
        return Err(invalid(
            path,
            "an HTTP function must have exactly one httpTrigger input and one http output: \
             only those are proxied or forwarded to the handler (IsHttpInAndOutFunction); \
             others get the invocation payload, which the stand-in does not build",
        ));
    }
    Ok(Trigger::Http {
        auth: match text(trigger, "authLevel")
            .unwrap_or_else(|| "function".into())
            .to_ascii_lowercase()
            .as_str()
        {
            "anonymous" => AuthLevel::Anonymous,
            "function" => AuthLevel::Function,
            "system" => AuthLevel::System,
            "admin" => AuthLevel::Admin,
            other => return Err(invalid(path, format!("unknown authLevel {other:?}"))),
        },
        methods: trigger
            .get("methods")
            .and_then(Value::as_array)
            .map(|m| {
                m.iter()
                    .filter_map(|v| v.as_str().map(str::to_ascii_uppercase))
                    .collect()
            })
            .unwrap_or_default(),
        route: RouteTemplate::parse(&text(trigger, "route").unwrap_or_else(|| name.to_owned()))
            .map_err(|e| invalid(path, e))?,
    })
}

/// An `eventHubTrigger`: the event hub and consumer group (`%setting%` resolved), connection,
/// cardinality and data type.
fn event_hub_trigger(
    path: &Path,
    trigger: &Value,
    settings: &BTreeMap<String, String>,
) -> Result<Trigger, AppError> {
    Ok(Trigger::EventHub {
        binding: binding_name(trigger),
        event_hub_name: text(trigger, "eventHubName").map(|v| resolve(settings, v)),
        connection: text(trigger, "connection")
            .ok_or_else(|| invalid(path, "eventHubTrigger needs connection"))?,
        many: text(trigger, "cardinality").is_none_or(|c| c.eq_ignore_ascii_case("many")),
        consumer_group: text(trigger, "consumerGroup")
            .map(|v| resolve(settings, v))
            .unwrap_or_else(|| "$Default".into()),
        binary: text(trigger, "dataType").is_some_and(|d| d.eq_ignore_ascii_case("binary")),
    })
}

/// A `timerTrigger`: its schedule (`%setting%` resolved), `runOnStartup` and `useMonitor`.
fn timer_trigger(
    path: &Path,
    trigger: &Value,
    settings: &BTreeMap<String, String>,
) -> Result<Trigger, AppError> {
    let schedule = Schedule::parse(&resolve(
        settings,
        text(trigger, "schedule").ok_or_else(|| invalid(path, "timerTrigger needs schedule"))?,
    ))
    .map_err(|e| invalid(path, e))?;
    // `useMonitor: true` cannot force monitoring of a sub-minute schedule: the host turns it
    // off (TimerTriggerAttributeBindingProvider.CreateSchedule).
    let monitored = trigger
        .get("useMonitor")
        .and_then(Value::as_bool)
        .unwrap_or(true)
        && !schedule.fires_more_than_once_a_minute();
    Ok(Trigger::Timer {
        binding: binding_name(trigger),
        schedule,
        run_on_startup: trigger
            .get("runOnStartup")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        monitored,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_spans_and_retry_delays_follow_the_host() {
        assert_eq!(time_span("00:00:05"), Some(Duration::from_secs(5)));
        assert_eq!(time_span("1.02:00:00"), Some(Duration::from_secs(93_600)));
        assert_eq!(time_span("00:00:00.5"), Some(Duration::from_millis(500)));
        assert_eq!(time_span("five"), None);
        let policy = RetryPolicy {
            max_retries: None,
            delays: RetryDelays::Exponential {
                minimum: Duration::from_secs(1),
                maximum: Duration::from_secs(10),
            },
        };
        let delays: Vec<u64> = (1..=6).map(|n| policy.delay(n).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 10, 10]);
    }

    #[test]
    fn an_app_is_read_from_host_json_settings_and_function_folders() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::write(root.join("host.json"), r#"{"version":"2.0","customHandler":{"description":{"defaultExecutablePath":"handler"},"enableForwardingHttpRequest":true},"extensions":{"eventHubs":{"maxEventBatchSize":16}}}"#).unwrap();
        fs::write(root.join("local.settings.json"), r#"{"IsEncrypted":false,"Values":{"FUNCTIONS_WORKER_RUNTIME":"custom","Hub":"Endpoint=sb://x/;EntityPath=hub-1","HubName":"hub-1","AzureWebJobs.Off.Disabled":"true"}}"#).unwrap();
        for (name, json) in [
            (
                "Enroll",
                r#"{"bindings":[{"type":"httpTrigger","authLevel":"function","direction":"in","name":"req","methods":["post","get"],"route":"enrollments/{id?}"},{"type":"http","direction":"out","name":"res"}]}"#,
            ),
            (
                "OnEvents",
                r#"{"bindings":[{"type":"eventHubTrigger","name":"events","direction":"in","eventHubName":"%HubName%","connection":"Hub","cardinality":"many","dataType":"string"}],"retry":{"strategy":"fixedDelay","maxRetryCount":-1,"delayInterval":"00:00:01"}}"#,
            ),
            (
                "Off",
                r#"{"bindings":[{"type":"timerTrigger","name":"t","schedule":"0 */5 * * * *"}]}"#,
            ),
        ] {
            fs::create_dir_all(root.join("functions").join(name)).unwrap();
            fs::write(
                root.join("functions").join(name).join("function.json"),
                json,
            )
            .unwrap();
        }
        let app = FunctionApp::load(root).unwrap();
        assert_eq!(app.max_event_batch, 16);
        assert_eq!(app.route_prefix, "api");
        let names: Vec<&str> = app.functions.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(
            names,
            ["Enroll", "OnEvents"],
            "disabled functions are left out"
        );
        match &app.functions[1].trigger {
            Trigger::EventHub {
                event_hub_name,
                many,
                binary,
                ..
            } => {
                assert_eq!(event_hub_name.as_deref(), Some("hub-1"));
                assert!(*many && !*binary);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(app.functions[1].retry.as_ref().unwrap().max_retries, None);
    }

    #[test]
    fn apps_without_forwarding_are_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join("host.json"),
            r#"{"customHandler":{"description":{"defaultExecutablePath":"h"}}}"#,
        )
        .unwrap();
        let error = FunctionApp::load(dir.path()).unwrap_err().to_string();
        assert!(error.contains("enableForwardingHttpRequest"), "{error}");
    }
}
