//! IoT Hub message routing: which endpoints an event of a hub goes to.
//!
//! A route names a source (device telemetry or one of the non-telemetry event kinds), a
//! condition and one endpoint: the built-in `events` endpoint (the hub's own Event
//! Hub-compatible stream) or a custom Event Hubs endpoint (an event hub of the emulated
//! namespace). An event goes to every endpoint of every route it matches, once per endpoint;
//! telemetry that matches no route goes to the built-in endpoint only when the fallback route
//! is on. Non-telemetry events that match no route go nowhere, as in Azure
//! (MicrosoftDocs/azure-docs articles/iot-hub/iot-hub-devguide-messages-d2c.md: "Fallback
//! route" and "Non-telemetry events").
//!
//! Conditions: only `true` is modelled; any other query is refused when the emulator starts,
//! so a route never silently matches more than Azure would.

use super::log::{EventStream, LogError};
use super::NewEvent;
use std::sync::Arc;

/// The built-in endpoint's name, as routes name it.
pub const BUILT_IN: &str = "events";

/// What a route reads (`routing.routes[].source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Device-to-cloud telemetry.
    DeviceMessages,
    /// Twin changes.
    TwinChangeEvents,
    /// Identity created or deleted.
    DeviceLifecycleEvents,
    /// Connected or disconnected.
    DeviceConnectionStateEvents,
}

impl Source {
    /// Parses the ARM name (`DeviceLifecycleEvents`, case-insensitive).
    pub fn parse(text: &str) -> Option<Self> {
        [
            Source::DeviceMessages,
            Source::TwinChangeEvents,
            Source::DeviceLifecycleEvents,
            Source::DeviceConnectionStateEvents,
        ]
        .into_iter()
        .find(|s| s.name().eq_ignore_ascii_case(text))
    }

    /// The ARM name.
    pub fn name(self) -> &'static str {
        match self {
            Source::DeviceMessages => "DeviceMessages",
            Source::TwinChangeEvents => "TwinChangeEvents",
            Source::DeviceLifecycleEvents => "DeviceLifecycleEvents",
            Source::DeviceConnectionStateEvents => "DeviceConnectionStateEvents",
        }
    }

    /// The source of an event, from the `iothub-message-source` the hub stamps on it.
    fn of(event: &NewEvent) -> Option<Self> {
        let source = event
            .system_properties
            .get("iothub-message-source")
            .and_then(serde_json::Value::as_str)?;
        match source {
            "Telemetry" => Some(Source::DeviceMessages),
            "twinChangeEvents" => Some(Source::TwinChangeEvents),
            "deviceLifecycleEvents" => Some(Source::DeviceLifecycleEvents),
            "deviceConnectionStateEvents" => Some(Source::DeviceConnectionStateEvents),
            _ => None,
        }
    }
}

/// A route as configured: `SOURCE=ENDPOINT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteConfig {
    /// What it reads.
    pub source: Source,
    /// `events` or the name of an event hub in the namespace.
    pub endpoint: String,
}

impl RouteConfig {
    /// Parses `SOURCE=ENDPOINT` (`DeviceLifecycleEvents=hub-events`).
    pub fn parse(text: &str) -> Result<Self, String> {
        let (source, endpoint) = text.split_once('=').ok_or_else(|| {
            format!(
                "route {text:?} must read SOURCE=ENDPOINT, e.g. DeviceLifecycleEvents=hub-events"
            )
        })?;
        let source = Source::parse(source.trim()).ok_or_else(|| {
            format!(
                "route source {source:?} is not DeviceMessages, TwinChangeEvents, \
                DeviceLifecycleEvents or DeviceConnectionStateEvents"
            )
        })?;
        let endpoint = endpoint.trim();
        if endpoint.is_empty() {
            return Err(format!("route {text:?} names no endpoint"));
        }
        Ok(Self {
            source,
            endpoint: endpoint.to_owned(),
        })
    }
}

/// A hub's routing: its routes with their endpoints resolved, and the fallback route.
pub struct Router {
    routes: Vec<(Source, Arc<EventStream>)>,
    built_in: Arc<EventStream>,
    fallback: bool,
}

impl Router {
    /// Routes to resolved endpoints; `fallback` sends unmatched telemetry to `built_in`.
    pub fn new(
        routes: Vec<(Source, Arc<EventStream>)>,
        built_in: Arc<EventStream>,
        fallback: bool,
    ) -> Self {
        Self {
            routes,
            built_in,
            fallback,
        }
    }

    /// The built-in endpoint.
    pub fn built_in(&self) -> &Arc<EventStream> {
        &self.built_in
    }

    /// Appends `event` to every endpoint it is routed to; returns how many that was.
    pub fn route(&self, event: NewEvent) -> Result<usize, LogError> {
        let source = Source::of(&event);
        let mut targets: Vec<&Arc<EventStream>> = Vec::new();
        for (route_source, endpoint) in &self.routes {
            // Two routes to one endpoint still deliver the message there once.
            if Some(*route_source) == source && !targets.iter().any(|t| Arc::ptr_eq(t, endpoint)) {
                targets.push(endpoint);
            }
        }
        if targets.is_empty() && self.fallback && source == Some(Source::DeviceMessages) {
            targets.push(&self.built_in);
        }
        let count = targets.len();
        for target in targets {
            target.append(event.clone())?;
        }
        Ok(count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Map, Value};

    fn event(source: &str) -> NewEvent {
        let mut system = Map::new();
        system.insert("iothub-message-source".into(), json!(source));
        NewEvent {
            device_id: "d1".into(),
            system_properties: system,
            properties: Map::<String, Value>::new(),
            body: bytes::Bytes::from_static(b"{}"),
        }
    }

    #[test]
    fn events_go_to_their_routes_and_unmatched_telemetry_to_the_fallback_only() {
        let built_in = Arc::new(EventStream::in_memory("events", 2, 100));
        let custom = Arc::new(EventStream::in_memory("hub-events", 2, 100));
        let router = Router::new(
            vec![
                (Source::DeviceLifecycleEvents, custom.clone()),
                (Source::TwinChangeEvents, custom.clone()),
                (Source::TwinChangeEvents, custom.clone()),
            ],
            built_in.clone(),
            true,
        );
        assert_eq!(router.route(event("deviceLifecycleEvents")).unwrap(), 1);
        assert_eq!(
            router.route(event("twinChangeEvents")).unwrap(),
            1,
            "once per endpoint"
        );
        assert_eq!(router.route(event("Telemetry")).unwrap(), 1, "fallback");
        assert_eq!(
            router.route(event("deviceConnectionStateEvents")).unwrap(),
            0,
            "no route, and the fallback carries telemetry only"
        );
        let without_fallback = Router::new(Vec::new(), built_in, false);
        assert_eq!(without_fallback.route(event("Telemetry")).unwrap(), 0);
    }

    #[test]
    fn routes_are_parsed_from_source_and_endpoint() {
        assert_eq!(
            RouteConfig::parse("devicelifecycleevents=hub-events").unwrap(),
            RouteConfig {
                source: Source::DeviceLifecycleEvents,
                endpoint: "hub-events".into()
            }
        );
        assert!(RouteConfig::parse("Lifecycle=hub-events").is_err());
        assert!(RouteConfig::parse("DeviceMessages").is_err());
        assert!(RouteConfig::parse("DeviceMessages=").is_err());
    }
}
