//! A stand-in for the Azure Functions host running a custom-handler app: what `func start` does
//! locally, with the parts a custom handler depends on made faithful.
//!
//! - [`app`]: reading host.json, function.json folders and local.settings.json.
//! - [`supervisor`]: starting, watching and restarting the handler process.
//! - [`identity`]: the app's managed identity (the local token service behind IDENTITY_ENDPOINT).
//! - [`front`]: `http://127.0.0.1:7071/api/*` with function keys, forwarded as is.
//! - [`keys`], [`admin`]: the key store and what each key opens; the admin API (`/admin/...`:
//!   keys, running a function) with the master key.
//! - [`invoke`]: the `Data`/`Metadata` invocation format for non-HTTP triggers.
//! - [`link`]: the one path to the handler, resending what a dying handler never answered.
//! - [`dispatch`]: event delivery (batches, order, checkpoints, retry policies) and timers.
//! - [`routes`], [`schedule`]: route templates and NCRONTAB schedules.

pub(crate) mod admin;
pub mod app;
pub(crate) mod dispatch;
pub(crate) mod front;
pub mod identity;
pub(crate) mod invoke;
pub(crate) mod keys;
pub(crate) mod link;
pub(crate) mod routes;
pub(crate) mod schedule;
pub mod supervisor;

use crate::events::checkpoints::Checkpoints;
use crate::events::log::EventStream;
use crate::events::namespace::Namespace;
use crate::hub::Hubs;
use app::{FunctionApp, FunctionDef, Trigger};
use dispatch::Delivery;
use front::Front;
use invoke::Invoker;
use iot_credentials::SharedAccessKey;
use keys::KeyStore;
use link::HandlerLink;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use supervisor::HandlerSupervisor;
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
    /// The key store cannot be read.
    #[error(transparent)]
    Keys(#[from] keys::KeyStoreError),
}

/// A running stand-in.
pub struct FunctionsHost {
    /// Where the front listens.
    pub address: SocketAddr,
    /// The handler process.
    pub handler: Arc<HandlerSupervisor>,
    /// The loaded app.
    pub app: Arc<FunctionApp>,
    /// The app's managed identity.
    pub identity: Arc<identity::IdentityEndpoint>,
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

/// Where event functions can read: the hubs' built-in endpoints and the namespace's event hubs.
#[derive(Clone, Copy)]
pub(crate) struct EventSources<'a> {
    /// The hubs by host name.
    pub hubs: &'a Hubs,
    /// The Event Hubs namespace.
    pub namespace: &'a Namespace,
}

/// The stream an eventHubTrigger reads, and the namespace host its partition context names.
///
/// The `connection` setting is either a connection string, or (identity-based, as in Azure)
/// absent with `<connection>__fullyQualifiedNamespace` naming the namespace; the stand-in
/// grants the app's identity access, as a role assignment would
/// (MicrosoftDocs/azure-docs articles/azure-functions/functions-bindings-event-hubs-trigger.md,
/// "Identity-based connections"). A connection string names either the Event Hubs namespace
/// (an event hub the hubs route to) or a hub's built-in endpoint; `EntityPath` overrides
/// `eventHubName`.
fn event_source(
    settings: &std::collections::BTreeMap<String, String>,
    connection: &str,
    event_hub_name: Option<&str>,
    EventSources { hubs, namespace }: EventSources<'_>,
) -> Result<(Arc<EventStream>, String), String> {
    let identity_setting = format!("{connection}__fullyQualifiedNamespace");
    let (host, key, entity) = match (settings.get(connection), settings.get(&identity_setting)) {
        (Some(text), _) => {
            let (host, key_name, key, entity) = event_hub_connection(text).ok_or_else(|| {
                format!("the app setting {connection:?} is not an Event Hubs connection string")
            })?;
            (host, Some((key_name, key)), entity)
        }
        (None, Some(fqns)) => (fqns.trim().trim_end_matches('/').to_owned(), None, None),
        (None, None) => {
            return Err(format!(
                "neither the app setting {connection:?} named by `connection` nor \
                    {identity_setting:?} is set"
            ))
        }
    };
    let name = entity
        .or_else(|| event_hub_name.map(str::to_owned))
        .unwrap_or_default();
    let authorized = |policy: &str, expected: &SharedAccessKey| {
        key.as_ref().is_none_or(|(key_name, key)| {
            key_name.eq_ignore_ascii_case(policy)
                && SharedAccessKey::from_base64(key).is_ok_and(|k| &k == expected)
        })
    };
    if host.eq_ignore_ascii_case(&namespace.host_name) {
        let stream = namespace.event_hub(&name).ok_or_else(|| {
            format!(
                "the namespace {host} has no event hub {name:?} (it has {})",
                namespace.names().collect::<Vec<_>>().join(", ")
            )
        })?;
        if !authorized(&namespace.policy, &namespace.key) {
            return Err(format!(
                "the connection {connection:?} is not authorized for {host}"
            ));
        }
        return Ok((stream.clone(), host));
    }
    if key.is_none() {
        return Err(format!(
            "{identity_setting} names {host}, which is not the Event Hubs namespace {}; a hub's \
                built-in endpoint takes connection strings only",
            namespace.host_name
        ));
    }
    let hub = hubs
        .get(&host)
        .ok_or_else(|| format!("no emulated hub or namespace serves the endpoint {host}"))?;
    if !name.eq_ignore_ascii_case(hub.settings().name.as_str()) {
        return Err(format!(
            "the event hub {name:?} is not the stream of hub {} (EntityPath or eventHubName must \
                be {:?})",
            host,
            hub.settings().name
        ));
    }
    let expected = hub.settings();
    if !authorized(&expected.service_policy, &expected.service_key) {
        return Err(format!(
            "the connection {connection:?} is not authorized for {host}"
        ));
    }
    Ok((hub.events().clone(), host))
}

/// What the command line changes about an app: settings (already filled in) and the handler
/// executable.
#[derive(Debug, Clone, Default)]
pub(crate) struct Overrides {
    /// Replaced or added app settings.
    pub settings: std::collections::BTreeMap<String, String>,
    /// The handler executable.
    pub executable: Option<std::path::PathBuf>,
}

/// An event-triggered function with the stream it reads and that stream's namespace host.
type EventListener = (FunctionDef, Arc<EventStream>, String);

/// Every event-triggered function of the app with its resolved source; a binding whose
/// settings name no known stream stops the start with its reason.
fn event_listeners(
    app: &FunctionApp,
    sources: EventSources<'_>,
) -> Result<Vec<EventListener>, FunctionsError> {
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
        let (stream, host) = event_source(
            &app.settings,
            connection,
            event_hub_name.as_deref(),
            sources,
        )
        .map_err(binding_error)?;
        listeners.push((function.clone(), stream, host));
    }
    Ok(listeners)
}

/// One delivery loop per event function and partition.
fn spawn_deliveries(
    delivery: &Delivery,
    listeners: Vec<EventListener>,
    checkpoints: &Arc<Checkpoints>,
    max_event_batch: usize,
) -> Vec<JoinHandle<()>> {
    let mut tasks = Vec::new();
    for (function, stream, host) in listeners {
        for partition in 0..stream.partition_count() {
            tasks.push(tokio::spawn(dispatch::deliver_partition(
                delivery.clone(),
                function.clone(),
                stream.clone(),
                host.clone(),
                partition,
                checkpoints.clone(),
                max_event_batch,
            )));
        }
    }
    tasks
}

/// One loop per timer function.
fn spawn_timers(delivery: &Delivery, app: &FunctionApp) -> Vec<JoinHandle<()>> {
    app.functions
        .iter()
        .filter(|f| matches!(f.trigger, Trigger::Timer { .. }))
        .map(|function| tokio::spawn(dispatch::run_timer(delivery.clone(), function.clone())))
        .collect()
}

/// Starts the stand-in for the app at `root`: the handler process, the HTTP front on `listener`,
/// one delivery loop per event function and partition, one loop per timer function.
pub(crate) async fn start(
    root: &std::path::Path,
    overrides: Overrides,
    listener: TcpListener,
    keys: Arc<KeyStore>,
    sources: EventSources<'_>,
    checkpoints: Arc<Checkpoints>,
    shutdown: watch::Receiver<bool>,
) -> Result<(FunctionsHost, Vec<JoinHandle<()>>), FunctionsError> {
    let mut app = FunctionApp::load_with(root, &overrides.settings)?;
    if let Some(executable) = overrides.executable {
        app.handler.executable = executable;
    }
    let address = listener.local_addr()?;
    let mut tasks = Vec::new();

    // Resolve every event binding first, so a wrong setting stops the start with its reason.
    let listeners = event_listeners(&app, sources)?;

    // The platform gives every app with an identity these two variables. Kept beside the app
    // settings (which the handler's environment is made of) unless a setting already names them,
    // so a test can hand the handler a wrong header.
    let (identity, identity_task) = identity::IdentityEndpoint::start(shutdown.clone()).await?;
    tasks.push(identity_task);
    for (name, value) in identity.environment() {
        app.settings.entry(name.to_owned()).or_insert(value);
    }
    let app = Arc::new(app);

    let (handler, supervisor) = HandlerSupervisor::start(&app, shutdown.clone())?;
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
    tasks.extend(spawn_deliveries(
        &delivery,
        listeners,
        &checkpoints,
        app.max_event_batch,
    ));
    tasks.extend(spawn_timers(&delivery, &app));
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
            identity,
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
