//! Delivering events and timer ticks to functions.
//!
//! Each eventHubTrigger function reads every partition of its stream in order, in batches of up
//! to `maxEventBatchSize`, starting where its checkpoint says. After an invocation the checkpoint
//! moves past the batch: at once on success; on failure after the function's retry policy is
//! spent. A function without a retry policy is not retried (the Event Hubs trigger always
//! checkpoints); `maxRetryCount: -1` retries until it succeeds.

use super::app::{FunctionDef, RetryPolicy, Trigger};
use super::invoke::{self, BatchSource, Invoker, RetryContext};
use super::schedule::Schedule;
use super::supervisor::HandlerSupervisor;
use crate::events::checkpoints::Checkpoints;
use crate::events::log::EventStream;
use serde_json::Value;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// What every delivery loop shares.
#[derive(Clone)]
pub struct Delivery {
    /// Calls the handler.
    pub invoker: Invoker,
    /// Tells when the handler is up.
    pub handler: Arc<HandlerSupervisor>,
    /// Stops the loops.
    pub shutdown: watch::Receiver<bool>,
}

impl Delivery {
    /// Runs one invocation under `policy`; `payload` builds the body for each attempt. Returns
    /// false only when shut down mid-way.
    async fn run(
        &self,
        function: &str,
        policy: Option<&RetryPolicy>,
        what: &str,
        payload: impl Fn(Option<&RetryContext>) -> Value,
    ) -> bool {
        let mut shutdown = self.shutdown.clone();
        let mut attempt: u32 = 0;
        let mut last_error: Option<String> = None;
        loop {
            tokio::select! {
                _ = self.handler.wait_ready() => {}
                _ = shutdown.changed() => return false,
            }
            let context = policy.map(|p| RetryContext {
                retry_count: attempt,
                max_retry_count: p.max_retries.map_or(-1, i64::from),
                last_error: last_error.clone(),
            });
            let body = payload(context.as_ref());
            let invocation_id = uuid::Uuid::new_v4().to_string();
            let started = Instant::now();
            let start_of_handler = self.handler.generation();
            let outcome = tokio::select! {
                outcome = self.invoker.invoke(function, &body, &invocation_id) => outcome,
                _ = shutdown.changed() => return false,
            };
            let elapsed_ms = started.elapsed().as_millis() as u64;
            match outcome {
                Ok(logs) => {
                    for line in logs {
                        tracing::info!(target: "function", function, "{line}");
                    }
                    tracing::info!(
                        function,
                        invocation.id = %invocation_id,
                        %what,
                        attempt,
                        elapsed_ms,
                        "invocation succeeded"
                    );
                    return true;
                }
                Err(error) if self.handler.generation() != start_of_handler => {
                    // The handler died under the invocation: like the real host after a worker
                    // restart, deliver it again from the last checkpoint, not as a retry.
                    tracing::warn!(
                        function,
                        invocation.id = %invocation_id,
                        %what,
                        %error,
                        "the handler died during the invocation; it is delivered again"
                    );
                    continue;
                }
                Err(error) => {
                    tracing::warn!(
                        function,
                        invocation.id = %invocation_id,
                        %what,
                        attempt,
                        elapsed_ms,
                        %error,
                        "invocation failed"
                    );
                    last_error = Some(error.to_string());
                }
            }
            let Some(policy) = policy else {
                tracing::error!(
                    function,
                    %what,
                    "no retry policy: the failed batch is checkpointed and will not be delivered \
                        again"
                );
                return true;
            };
            if policy.max_retries.is_some_and(|max| attempt >= max) {
                tracing::error!(
                    function,
                    %what,
                    retries = attempt,
                    "retries exhausted: the failed batch is checkpointed"
                );
                return true;
            }
            attempt += 1;
            tokio::select! {
                _ = tokio::time::sleep(policy.delay(attempt)) => {}
                _ = shutdown.changed() => return false,
            }
        }
    }
}

/// Delivers one partition of `stream` to an eventHubTrigger function, forever.
pub async fn deliver_partition(
    delivery: Delivery,
    function: FunctionDef,
    stream: Arc<EventStream>,
    namespace: String,
    partition: usize,
    checkpoints: Arc<Checkpoints>,
    max_batch: usize,
) {
    let Trigger::EventHub {
        binding,
        many,
        binary,
        consumer_group,
        ..
    } = &function.trigger
    else {
        return;
    };
    let consumer = format!("{}.{}", function.name, consumer_group);
    let mut position =
        checkpoints.load(&consumer, stream.name(), stream.partition_count())[partition];
    let mut shutdown = delivery.shutdown.clone();
    let batch_size = if *many { max_batch } else { 1 };
    loop {
        let batch = tokio::select! {
            batch = stream.read(partition, position, batch_size) => batch,
            _ = shutdown.changed() => return,
        };
        if batch.skipped > 0 {
            tracing::warn!(
                function = %function.name,
                partition,
                skipped = batch.skipped,
                "events expired before delivery (retention)"
            );
        }
        let (Some(first), Some(last)) = (batch.events.first(), batch.events.last()) else {
            continue;
        };
        let what = format!(
            "{} event(s) of {} partition {partition}, sequence {}-{}",
            batch.events.len(),
            stream.name(),
            first.sequence_number,
            last.sequence_number
        );
        let source = BatchSource {
            namespace: &namespace,
            event_hub: stream.name(),
            consumer_group,
            partition,
        };
        let next = last.sequence_number + 1;
        let delivered = delivery
            .run(&function.name, function.retry.as_ref(), &what, |retry| {
                invoke::event_batch(
                    &function.name,
                    binding,
                    *many,
                    *binary,
                    &batch.events,
                    &source,
                    retry,
                )
            })
            .await;
        if !delivered {
            return;
        }
        position = next;
        if let Err(error) = checkpoints.save(&consumer, stream.name(), partition, next) {
            tracing::error!(
                function = %function.name,
                partition,
                %error,
                "the checkpoint could not be saved; events may be delivered again after a restart"
            );
        }
    }
}

/// Runs a timerTrigger function on its schedule, forever.
pub async fn run_timer(delivery: Delivery, function: FunctionDef) {
    let Trigger::Timer {
        binding,
        schedule,
        run_on_startup,
        monitored,
    } = &function.trigger
    else {
        return;
    };
    let schedule: &Schedule = schedule;
    let mut shutdown = delivery.shutdown.clone();
    let mut last: Option<String> = None;
    let mut pending_startup = *run_on_startup;
    loop {
        let now = time::OffsetDateTime::now_utc();
        let Some(next) = schedule.next_after(now) else {
            tracing::warn!(function = %function.name, "the schedule never fires");
            return;
        };
        if !pending_startup {
            let wait = Duration::try_from(next - now).unwrap_or(Duration::ZERO);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => return,
            }
        }
        pending_startup = false;
        let after = schedule
            .next_after(time::OffsetDateTime::now_utc())
            .map(crate::azure_format::format_time);
        let ran = delivery
            .run(&function.name, function.retry.as_ref(), "timer", |retry| {
                let status = monitored.then(|| invoke::ScheduleStatus {
                    last: last.as_deref(),
                    next: after.as_deref(),
                });
                invoke::timer(&function.name, binding, status, false, retry)
            })
            .await;
        if !ran {
            return;
        }
        last = Some(crate::azure_format::now());
    }
}
