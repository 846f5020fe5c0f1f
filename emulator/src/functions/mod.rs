//! A stand-in for the Azure Functions host running a custom-handler app: what `func start` does
//! locally, with the parts a custom handler depends on made faithful.
//!
//! - [`app`]: reading host.json, function.json folders and local.settings.json.
//! - [`handler`]: starting, watching and restarting the handler process.
//! - [`front`]: `http://127.0.0.1:7071/api/*` with function keys, forwarded as is.
//! - [`invoke`]: the `Data`/`Metadata` invocation format for non-HTTP triggers.
//! - [`link`]: the one path to the handler, resending what a dying handler never answered.
//! - [`dispatch`]: event delivery (batches, order, checkpoints, retry policies) and timers.
//! - [`routes`], [`schedule`]: route templates and NCRONTAB schedules.

pub mod app;
pub mod dispatch;
pub mod front;
pub mod handler;
pub mod invoke;
pub mod link;
pub mod routes;
pub mod schedule;

use crate::events::checkpoints::Checkpoints;
use crate::hub::Hubs;
use app::{FunctionApp, Trigger};
use dispatch::Delivery;
use front::{Front, Keys};
use handler::HandlerProcess;
use invoke::Invoker;
use iot_credentials::SharedAccessKey;
use link::HandlerLink;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Why the stand-in could not start.
#[derive(Debug, thiserror::Error)]
pub enum FunctionsError {
    /// The app is invalid.
    #[error(transparent)]
    App(#[from] app::AppError),
    /// A trigger names a stream that does not exist or a wrong key.
    #[error("function {function}: {reason}")]
    Binding {
        /// The function.
        function: String,
        /// What is wrong.
        reason: String,
    },
    /// A setting given on the command line cannot be filled in.
    #[error("app setting {name}: {reason}")]
    Setting {
        /// The setting.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// Starting a process or a listener failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// A running stand-in.
pub struct FunctionsHost {
    /// Where the front listens.
    pub address: SocketAddr,
    /// The handler process.
    pub handler: Arc<HandlerProcess>,
    /// The loaded app.
    pub app: Arc<FunctionApp>,
}

/// Parses an Event Hubs connection string into (host, key name, key, entity path).
fn event_hub_connection(text: &str) -> Option<(String, String, String, Option<String>)> {
    let mut endpoint = None;
    let (mut key_name, mut key, mut entity) = (None, None, None);
    for part in text.split(';').filter(|p| !p.is_empty()) {
        let (name, value) = part.split_once('=')?;
        match name.trim().to_ascii_lowercase().as_str() {
            "endpoint" => endpoint = Some(value.trim().to_owned()),
            "sharedaccesskeyname" => key_name = Some(value.trim().to_owned()),
            "sharedaccesskey" => key = Some(value.trim().to_owned()),
            "entitypath" => entity = Some(value.trim().to_owned()),
            _ => {}
        }
    }
    let host = endpoint?
        .trim_start_matches("sb://")
        .trim_end_matches('/')
        .split(':')
        .next()?
        .to_owned();
    Some((host, key_name?, key?, entity))
}

/// What the command line changes about an app: settings (already filled in) and the handler
/// executable.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// Replaced or added app settings.
    pub settings: std::collections::BTreeMap<String, String>,
    /// The handler executable.
    pub executable: Option<std::path::PathBuf>,
}

/// Starts the stand-in for the app at `root`: the handler process, the HTTP front on `listener`,
/// one delivery loop per event function and partition, one loop per timer function.
pub async fn start(
    root: &std::path::Path,
    overrides: Overrides,
    listener: TcpListener,
    keys: Keys,
    hubs: &Hubs,
    checkpoints: Arc<Checkpoints>,
    shutdown: watch::Receiver<bool>,
) -> Result<(FunctionsHost, Vec<JoinHandle<()>>), FunctionsError> {
    let mut app = FunctionApp::load_with(root, &overrides.settings)?;
    if let Some(executable) = overrides.executable {
        app.handler.executable = executable;
    }
    let app = Arc::new(app);
    let address = listener.local_addr()?;
    let mut tasks = Vec::new();

    // Resolve every event binding first, so a wrong setting stops the start with its reason.
    let mut listeners = Vec::new();
    for function in &app.functions {
        let Trigger::EventHub {
            event_hub_name,
            connection,
            ..
        } = &function.trigger
        else {
            continue;
        };
        let binding_error = |reason: String| FunctionsError::Binding {
            function: function.name.clone(),
            reason,
        };
        let text = app.settings.get(connection).ok_or_else(|| {
            binding_error(format!(
                "the app setting {connection:?} named by `connection` is missing"
            ))
        })?;
        let (host, key_name, key, entity) = event_hub_connection(text).ok_or_else(|| {
            binding_error(format!(
                "the app setting {connection:?} is not an Event Hubs connection string"
            ))
        })?;
        let hub = hubs
            .get(&host)
            .ok_or_else(|| binding_error(format!("no emulated hub serves the endpoint {host}")))?;
        let name = entity
            .or_else(|| event_hub_name.clone())
            .unwrap_or_default();
        if !name.eq_ignore_ascii_case(hub.settings().name.as_str()) {
            return Err(binding_error(format!(
                "the event hub {name:?} is not the stream of hub {} (EntityPath or eventHubName must be {:?})",
                host,
                hub.settings().name
            )));
        }
        let expected = hub.settings();
        let key_ok = key_name.eq_ignore_ascii_case(&expected.service_policy)
            && SharedAccessKey::from_base64(&key).is_ok_and(|k| k == expected.service_key);
        if !key_ok {
            return Err(binding_error(format!(
                "the connection {connection:?} is not authorized for {host}"
            )));
        }
        listeners.push((function.clone(), hub.events().clone(), host));
    }

    let (handler, supervisor) = HandlerProcess::start(&app, shutdown.clone())?;
    tasks.push(supervisor);
    let handler = Arc::new(handler);
    // 230 s: the front end's limit on an HTTP answer, and the longest an invocation may run here.
    let invoker = Invoker::new(HandlerLink::new(handler.clone(), Duration::from_secs(230)));
    let front = Arc::new(Front {
        app: app.clone(),
        keys,
        handler: handler.clone(),
        invoker: invoker.clone(),
    });
    tasks.push(tokio::spawn(crate::net::https::serve_plain(
        listener,
        move |request| front::handle(front.clone(), request),
        shutdown.clone(),
    )));
    let delivery = Delivery {
        invoker,
        handler: handler.clone(),
        shutdown: shutdown.clone(),
    };
    for (function, stream, host) in listeners {
        for partition in 0..stream.partition_count() {
            tasks.push(tokio::spawn(dispatch::deliver_partition(
                delivery.clone(),
                function.clone(),
                stream.clone(),
                host.clone(),
                partition,
                checkpoints.clone(),
                app.max_event_batch,
            )));
        }
    }
    for function in app
        .functions
        .iter()
        .filter(|f| matches!(f.trigger, Trigger::Timer { .. }))
    {
        tasks.push(tokio::spawn(dispatch::run_timer(
            delivery.clone(),
            function.clone(),
        )));
    }
    tracing::info!(
        %address,
        functions = ?app.functions.iter().map(|f| f.name.as_str()).collect::<Vec<_>>(),
        "Functions host stand-in started"
    );
    Ok((
        FunctionsHost {
            address,
            handler,
            app,
        },
        tasks,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_hub_connection_strings_are_understood() {
        let parsed = event_hub_connection("Endpoint=sb://127.0.0.3/;SharedAccessKeyName=iothubowner;SharedAccessKey=a2V5;EntityPath=hub-1");
        assert_eq!(
            parsed,
            Some((
                "127.0.0.3".into(),
                "iothubowner".into(),
                "a2V5".into(),
                Some("hub-1".into())
            ))
        );
        assert_eq!(event_hub_connection("HostName=x"), None);
    }
}
