//! One connection to the hub, from CONNECT to its end, as a small state machine.
//!
//! A session is first *connecting* ([`Session::connect`]: TCP, TLS, CONNECT, CONNACK), then
//! *subscribed* ([`Session::subscribe`]: twin, methods, cloud-to-device messages, and the twin
//! read), then loops in one [`Phase`]:
//! - `Running`: telemetry flows from the outbox, the window full.
//! - `RenewingToken`: no new telemetry; the connection ends once the hub has acknowledged what
//!   is in flight ([`super::token_renewal`]).
//! - `Draining`: shutdown asked; the whole outbox drains, within [`super::FLUSH_LIMIT`].
//!
//! What arrives from the hub (twin answers, desired patches, methods, messages) is handled in
//! [`super::incoming`].

use super::{start_rotation, stopped, token_renewal, End, SenderConfig, Shared, FLUSH_LIMIT};
use crate::assignment::Assignment;
use crate::rotation;
use iot_credentials::sas::encode_component;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS, TlsConfiguration};
use rumqttc::{Outgoing, Transport};
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, Interval};

/// Where a connected session is.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Phase {
    /// Telemetry flows.
    Running,
    /// The token is due: draining what is in flight, then reconnecting, by `until` at the latest.
    RenewingToken { until: Instant },
    /// Shutting down: draining the whole outbox, by `until` at the latest.
    Draining { until: Instant },
}

/// Telemetry sent and not yet acknowledged, by outbox sequence number.
#[derive(Default)]
pub(super) struct Window {
    pub(super) in_flight: BTreeSet<u64>,
    /// Sent, waiting for the packet id the client gives them.
    awaiting_id: VecDeque<u64>,
    by_packet: HashMap<u16, u64>,
}

/// What one connection holds.
pub(super) struct Session<'a> {
    pub(super) config: &'a SenderConfig,
    pub(super) assignment: &'a Assignment,
    pub(super) shared: &'a Arc<Shared>,
    shutdown: &'a mut watch::Receiver<bool>,
    pub(super) client: AsyncClient,
    events: EventLoop,
    phase: Phase,
    renew_at: Instant,
    /// The stored assignment as this session knows it; a change means a move.
    pub(super) fingerprint: Option<(std::time::SystemTime, u64)>,
    watch_state: Interval,
    pub(super) method_done: mpsc::UnboundedSender<Result<Assignment, String>>,
    method_results: mpsc::UnboundedReceiver<Result<Assignment, String>>,
    pub(super) rotation_done: mpsc::UnboundedSender<Result<rotation::Finished, String>>,
    rotation_results: mpsc::UnboundedReceiver<Result<rotation::Finished, String>>,
    pub(super) rotation_retry: Option<Instant>,
    /// DPS starts once the method's answer is on the wire.
    pub(super) rotate_after_answer: bool,
    pub(super) reprovision_after_answer: bool,
    pub(super) window: Window,
    /// Twin requests, reports and method answers waiting for room in the client's request
    /// channel: they go before telemetry and are never dropped, or a method caller would wait
    /// for an answer that never comes (and see 504).
    control: VecDeque<(String, Vec<u8>)>,
    /// Request ids of this connection: twin reads and reports.
    rid: u64,
    pub(super) twin_request: Option<String>,
}

impl<'a> Session<'a> {
    /// Prepares a connection to the assignment's hub (nothing is sent yet).
    pub(super) fn new(
        config: &'a SenderConfig,
        assignment: &'a Assignment,
        shared: &'a Arc<Shared>,
        tls: Arc<rustls::ClientConfig>,
        shutdown: &'a mut watch::Receiver<bool>,
    ) -> Self {
        let hub = &assignment.hub;
        let port = config
            .hub_ports
            .get(hub)
            .copied()
            .unwrap_or(config.mqtt_port);
        let mut options = MqttOptions::new(assignment.device_id.clone(), hub.clone(), port);
        token_renewal::sign_into(&mut options, config, assignment);
        options.set_keep_alive(Duration::from_secs(60));
        options.set_clean_session(true);
        options.set_max_packet_size(256 * 1024, 256 * 1024);
        options.set_transport(Transport::Tls(TlsConfiguration::Rustls(tls)));
        let (client, events) = AsyncClient::new(options, (config.window * 2).max(16));
        let renew_at = token_renewal::due(config);
        let fingerprint = config.state.fingerprint();
        let watch_state = tokio::time::interval(Duration::from_millis(500));
        let (method_done, method_results) = mpsc::unbounded_channel();
        let (rotation_done, rotation_results) = mpsc::unbounded_channel();
        // A rotated key stored before (by an earlier session, or before a restart) is taken up
        // now, beside connecting with the current key.
        if assignment.pending_key.is_some() {
            start_rotation(config, shared, &rotation_done);
        }
        Session {
            config,
            assignment,
            shared,
            shutdown,
            client,
            events,
            phase: Phase::Running,
            renew_at,
            fingerprint,
            watch_state,
            method_done,
            method_results,
            rotation_done,
            rotation_results,
            rotation_retry: None,
            rotate_after_answer: false,
            reprovision_after_answer: false,
            window: Window::default(),
            control: VecDeque::new(),
            rid: 1,
            twin_request: None,
        }
    }

    /// Runs the connection to its end.
    pub(super) async fn run(mut self) -> End {
        if let Err(end) = self.connect().await {
            return end;
        }
        self.subscribe();
        loop {
            if let Some(end) = self.step().await {
                return end;
            }
        }
    }

    /// Connecting: waits for CONNACK, interrupted only by shutdown.
    ///
    /// rumqttc makes the whole connection (TCP, TLS, CONNECT, CONNACK) inside one `poll()` and
    /// holds it in that future until CONNACK, so a poll that another select! branch cancels
    /// drops the half-made connection. Made inside the main loop, a connection slower than its
    /// quickest branch (the 500 ms state check, the telemetry interval) was never finished: on
    /// a slow link the device connected and dropped the connection again and again.
    async fn connect(&mut self) -> Result<(), End> {
        let connack = tokio::select! {
            event = self.events.poll() => event,
            _ = stopped(self.shutdown) => return Err(End::Shutdown),
        };
        match connack {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {}
            Ok(other) => {
                return Err(End::Failed(format!(
                    "the hub answered {other:?} before CONNACK"
                )))
            }
            Err(error) => return Err(End::Failed(error.to_string())),
        }
        self.shared
            .stats
            .connections
            .fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            hub = %self.assignment.hub,
            device.id = %self.assignment.device_id,
            "connected to the hub"
        );
        Ok(())
    }

    /// Subscribed: twin answers and patches, methods, cloud-to-device messages; asks for the
    /// twin.
    fn subscribe(&mut self) {
        let device_id = &self.assignment.device_id;
        let filters = [
            "$iothub/twin/res/#".to_owned(),
            "$iothub/twin/PATCH/properties/desired/#".to_owned(),
            "$iothub/methods/POST/#".to_owned(),
            format!("devices/{device_id}/messages/devicebound/#"),
        ];
        for filter in filters {
            let _ = self.client.try_subscribe(filter, QoS::AtLeastOnce);
        }
        let id = format!("get-{}", self.rid);
        self.send_control(format!("$iothub/twin/GET/?$rid={id}"), Vec::new());
        self.twin_request = Some(id);
    }

    /// One turn of the loop: what the phase asks, then the next thing that happens.
    async fn step(&mut self) -> Option<End> {
        self.publish_control();
        match self.phase {
            Phase::RenewingToken { until } => {
                let in_flight = self.window.in_flight.len();
                if token_renewal::may_reconnect(in_flight, until) {
                    let stats = &self.shared.stats;
                    token_renewal::disconnect(&self.client, &mut self.events, in_flight, stats)
                        .await;
                    return Some(End::Renew);
                }
            }
            Phase::Running => self.fill_window(),
            Phase::Draining { until } => {
                self.fill_window();
                if self.drained() || Instant::now() >= until {
                    let _ = self.client.try_disconnect();
                    return Some(End::Shutdown);
                }
            }
        }
        self.next_event().await
    }

    /// Waits for the next event of any kind and handles it.
    async fn next_event(&mut self) -> Option<End> {
        let renewing = matches!(self.phase, Phase::RenewingToken { .. });
        let draining = matches!(self.phase, Phase::Draining { .. });
        let renewal_deadline = match self.phase {
            Phase::RenewingToken { until } => until,
            _ => self.renew_at,
        };
        tokio::select! {
            event = self.events.poll() => match event {
                Ok(event) => self.on_event(event),
                Err(error) => Some(End::Failed(error.to_string())),
            },
            Some(outcome) = self.method_results.recv() => self.on_reprovisioned(outcome),
            Some(outcome) = self.rotation_results.recv() => self.on_rotation_finished(outcome),
            _ = tokio::time::sleep_until(self.rotation_retry.unwrap_or_else(Instant::now)),
                if self.rotation_retry.is_some() =>
            {
                self.rotation_retry = None;
                start_rotation(self.config, self.shared, &self.rotation_done);
                None
            }
            _ = self.shared.produced.notified() => None,
            _ = self.watch_state.tick() => self.check_assignment(),
            _ = tokio::time::sleep_until(self.renew_at), if self.phase == Phase::Running => {
                self.phase = token_renewal::begin(self.config);
                None
            }
            _ = tokio::time::sleep_until(renewal_deadline), if renewing => None,
            _ = stopped(self.shutdown), if !draining => {
                // Shutting down drains the whole outbox; a renewal would stop that.
                self.phase = Phase::Draining {
                    until: Instant::now() + FLUSH_LIMIT,
                };
                None
            }
        }
    }

    /// Handles one MQTT event.
    fn on_event(&mut self, event: Event) -> Option<End> {
        match event {
            Event::Outgoing(Outgoing::Publish(0)) if self.rotate_after_answer => {
                self.rotate_after_answer = false;
                start_rotation(self.config, self.shared, &self.rotation_done);
            }
            Event::Outgoing(Outgoing::Publish(0)) if self.reprovision_after_answer => {
                self.reprovision_after_answer = false;
                self.start_reprovisioning();
            }
            Event::Outgoing(Outgoing::Publish(pkid)) if pkid != 0 => {
                if let Some(seq) = self.window.awaiting_id.pop_front() {
                    self.window.by_packet.insert(pkid, seq);
                }
            }
            Event::Incoming(Packet::PubAck(ack)) => self.acknowledged(ack.pkid),
            Event::Incoming(Packet::Publish(publish)) => self.on_publish(&publish),
            _ => {}
        }
        None
    }

    /// The hub acknowledged a telemetry message: it leaves the outbox.
    fn acknowledged(&mut self, pkid: u16) {
        let Some(seq) = self.window.by_packet.remove(&pkid) else {
            return;
        };
        self.window.in_flight.remove(&seq);
        self.shared
            .outbox
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .acknowledge(seq);
        if self
            .shared
            .stats
            .acknowledged
            .fetch_add(1, Ordering::Relaxed)
            == 0
        {
            tracing::info!("the hub acknowledged the first message");
        }
    }

    /// A new assignment was stored (re-provisioned, or a rotated key): the session moves.
    fn check_assignment(&mut self) -> Option<End> {
        if self.config.state.fingerprint() != self.fingerprint {
            tracing::info!("the device has a new assignment; moving");
            let _ = self.client.try_disconnect();
            return Some(End::Reassigned);
        }
        None
    }

    /// Queues a twin request, report or method answer (QoS 0), ahead of telemetry.
    pub(super) fn send_control(&mut self, topic: String, payload: Vec<u8>) {
        self.control.push_back((topic, payload));
    }

    /// Queues a reported-properties patch under the next request id.
    pub(super) fn report(&mut self, patch: &serde_json::Value) {
        self.rid += 1;
        let topic = format!("$iothub/twin/PATCH/properties/reported/?$rid=r{}", self.rid);
        self.send_control(topic, patch.to_string().into_bytes());
    }

    /// Hands queued control messages to the client while its channel has room.
    fn publish_control(&mut self) {
        while let Some((topic, payload)) = self.control.pop_front() {
            if self
                .client
                .try_publish(topic.clone(), QoS::AtMostOnce, false, payload.clone())
                .is_err()
            {
                self.control.push_front((topic, payload));
                break;
            }
        }
    }

    /// Fills the window from the outbox, oldest first.
    fn fill_window(&mut self) {
        let room = self
            .config
            .window
            .saturating_sub(self.window.in_flight.len());
        if room == 0 {
            return;
        }
        let next = self
            .shared
            .outbox
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .oldest(room, &self.window.in_flight);
        let device_id = &self.assignment.device_id;
        for (seq, message) in next {
            let topic = format!(
                "devices/{device_id}/messages/events/$.mid={}&$.ct={}&$.ce={}",
                encode_component(&message.id),
                encode_component(&message.content_type),
                encode_component(&message.content_encoding)
            );
            if self
                .client
                .try_publish(topic, QoS::AtLeastOnce, false, message.body.into_bytes())
                .is_err()
            {
                break;
            }
            self.window.in_flight.insert(seq);
            self.window.awaiting_id.push_back(seq);
        }
    }

    /// Done draining: the producer has stopped and everything it accepted is acknowledged.
    fn drained(&self) -> bool {
        let empty = self
            .shared
            .outbox
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty();
        empty && !self.shared.producing.load(Ordering::Acquire)
    }
}
