//! The `/event/next` loop: what each INVOKE and the SHUTDOWN do. The delivery task flushes
//! beside the loop; the loop tells it what is due and decides whether the invocation waits
//! (`cadence`), and drains everything at SHUTDOWN before its deadline.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;
use tokio::time::Instant;

use super::api::ErrorPhase;
use super::cadence::{Cadence, Hold, QueueState};
use super::{ExtensionsApi, NextEvent};
use crate::config::{Config, FlushPolicy, TelemetryType};
use crate::pipeline::delivery::Delivery;
use crate::pipeline::{FlushReason, InvokeInfo, Pipeline};
use crate::self_metrics::{Pusher, METRICS};
use crate::telemetry::listener;
use crate::telemetry::progress::Progress;

/// Kept free at the end of the shutdown window: Lambda SIGKILLs at `deadlineMs`.
const SHUTDOWN_MARGIN: Duration = Duration::from_millis(250);
/// Used when SHUTDOWN carries no usable deadline (internal-extension budget, the smallest).
const FALLBACK_SHUTDOWN_BUDGET: Duration = Duration::from_millis(500);
/// Shutdown flush rounds: the first sends everything; later ones retry what a sink left.
const SHUTDOWN_FLUSH_ROUNDS: usize = 3;
/// A request's worth of events for the coalescing of steady deliveries. What a flush holds costs
/// memory while it is mapped and encoded (a few KiB per event under OTLP): 500 keeps a busy
/// function's peak RSS within ~1.5 MiB of delivery at every invocation (tests/faults.rs), and is
/// still one request per output per second up to ~40 invocations/s of a dozen events each.
const REQUEST_EVENTS: usize = 500;
/// A request's worth of bytes: a quarter of a raw batch's 4 MiB cap, and the 1 MB that some
/// OTLP log endpoints take per request.
const REQUEST_BYTES: usize = 1024 * 1024;
/// The runtimeDone wait wakes up at most this often (see `on_invoke`).
const MIN_WAIT_STEP: Duration = Duration::from_millis(250);

/// Converts an epoch-milliseconds deadline to a monotonic instant, computed now (so a deadline
/// received after a thaw is measured from the thaw, never from a timer armed before the freeze).
fn instant_at_epoch_ms(deadline_ms: u64) -> Option<Instant> {
    if deadline_ms == 0 {
        return None;
    }
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    Some(Instant::now() + Duration::from_millis(deadline_ms.saturating_sub(now_ms)))
}

/// The lifecycle's state between events.
pub struct EventLoop {
    config: Config,
    api: ExtensionsApi,
    pipeline: Arc<Pipeline>,
    progress: watch::Receiver<Progress>,
    /// False when the subscription failed: no runtimeDone will ever come, so never wait for it.
    telemetry_live: bool,
    listener: Option<listener::Listener>,
    delivery: Delivery,
    /// Managed Instances: the task that delivers every `periodic` interval.
    timer: Option<tokio::task::JoinHandle<()>>,
    cadence: Cadence,
    last_flush: Instant,
    last_request: Option<String>,
    invocations: u64,
    /// Shared with the pushes started beside the lifecycle.
    pusher: Option<Arc<tokio::sync::Mutex<Pusher>>>,
    /// The delivery asked for beside the lifecycle (`Delivery::kick_at`) and not yet due.
    kick_asked_for: Option<Instant>,
}

/// Delivers what is queued every `every`, beside the lifecycle, and pushes the self-metrics when
/// due (Managed Instances, where no INVOKE marks time and nothing is frozen).
fn start_timer(
    every: Duration,
    delivery: Delivery,
    pusher: Option<Arc<tokio::sync::Mutex<Pusher>>>,
    push_timeout: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval_at(Instant::now() + every, every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            delivery.tick();
            push_self_metrics_beside(pusher.as_ref(), push_timeout);
        }
    })
}

/// Pushes the self-metrics beside the lifecycle when their interval has passed.
fn push_self_metrics_beside(
    pusher: Option<&Arc<tokio::sync::Mutex<Pusher>>>,
    push_timeout: Duration,
) {
    let Some(pusher) = pusher else {
        return;
    };
    let Ok(mut pusher) = pusher.clone().try_lock_owned() else {
        return; // a push is in progress
    };
    if !pusher.due() {
        return;
    }
    let deadline = Instant::now() + push_timeout;
    tokio::spawn(async move { pusher.maybe_push(false, deadline).await });
}

impl EventLoop {
    /// Starts the delivery task (and, under Managed Instances, its timer) beside the loop.
    pub fn start(
        config: Config,
        api: ExtensionsApi,
        pipeline: Arc<Pipeline>,
        progress: watch::Receiver<Progress>,
        (listener, telemetry_live): (Option<listener::Listener>, bool),
        pusher: Option<Arc<tokio::sync::Mutex<Pusher>>>,
    ) -> EventLoop {
        // Beside the lifecycle, a queue past a quarter of its limits is drained as it fills
        // (`adaptive`, and the timer of Managed Instances).
        let delivery = Delivery::start(
            pipeline.clone(),
            config.flush_timeout,
            config.flush_policy == FlushPolicy::Adaptive
                || config.lambda.model.is_managed_instances(),
        );
        // Managed Instances: no INVOKE, no freeze; delivery runs on the timer.
        let timer = match config.flush_policy {
            FlushPolicy::Periodic(every) if config.lambda.model.is_managed_instances() => {
                Some(start_timer(
                    every,
                    delivery.clone(),
                    pusher.clone(),
                    config.flush_timeout,
                ))
            }
            _ => None,
        };
        EventLoop {
            cadence: Cadence::new(config.flush_max_delay),
            config,
            api,
            pipeline,
            progress,
            telemetry_live,
            listener,
            delivery,
            timer,
            last_flush: Instant::now(),
            last_request: None,
            kick_asked_for: None,
            invocations: 0,
            pusher,
        }
    }

    pub async fn run(&mut self) -> ExitCode {
        let mut failures = 0;
        loop {
            let event = match self.api.next_event().await {
                Ok(event) => {
                    failures = 0;
                    event
                }
                Err(e) => {
                    failures += 1;
                    tracing::error!(error = %e, attempt = failures, "event/next failed");
                    if failures >= 3 {
                        let _ = self
                            .api
                            .report_error(ErrorPhase::Exit, "NextFailed", &e.to_string())
                            .await;
                        return ExitCode::from(1);
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            match event {
                NextEvent::Invoke {
                    request_id,
                    deadline_ms,
                    invoked_function_arn,
                    tracing,
                } => {
                    self.pipeline.note_invoke(&InvokeInfo {
                        request_id: request_id.clone(),
                        invoked_function_arn,
                        tracing,
                    });
                    self.on_invoke(request_id, deadline_ms).await
                }
                NextEvent::Shutdown {
                    reason,
                    deadline_ms,
                } => {
                    self.on_shutdown(&reason, deadline_ms).await;
                    return ExitCode::SUCCESS;
                }
            }
        }
    }

    /// How this invocation's end flushes, if it waits for its telemetry to leave (`None`:
    /// delivery runs beside the lifecycle, or not at all until a later invocation or shutdown).
    fn holds(&mut self, request_id: &str) -> Option<FlushReason> {
        match self.config.flush_policy {
            FlushPolicy::End => Some(FlushReason::Invoke),
            FlushPolicy::Periodic(every) => {
                (self.last_flush.elapsed() >= every).then_some(FlushReason::Invoke)
            }
            FlushPolicy::Shutdown => None,
            FlushPolicy::Adaptive => {
                let queue = QueueState {
                    oldest_undelivered_since: self.pipeline.oldest_undelivered_since(),
                    filling: self.pipeline.filling(),
                };
                match self.cadence.on_invoke(Instant::now(), queue) {
                    Some(hold) => {
                        tracing::debug!(request_id, why = hold.as_str(), "invoke: held");
                        // The first invocation is held to learn the traffic, as `end` would
                        // flush it; the others because their telemetry must not wait.
                        Some(if hold == Hold::FirstInvocation {
                            FlushReason::Invoke
                        } else {
                            FlushReason::Overdue
                        })
                    }
                    None => {
                        // What is queued (earlier invocations' events) leaves beside the
                        // lifecycle, once it is due.
                        self.deliver_when_due();
                        push_self_metrics_beside(self.pusher.as_ref(), self.config.flush_timeout);
                        None
                    }
                }
            }
        }
    }

    /// Steady traffic: what is queued leaves together once its oldest event is
    /// `BRIDGE_FLUSH_FRESHNESS_MS` old, or at once when a request's worth waits, so that an
    /// output gets about one request per freshness target at any invocation rate.
    fn deliver_when_due(&mut self) {
        let freshness = self.config.flush_freshness;
        if freshness.is_zero() {
            self.delivery.kick();
            return;
        }
        let untaken = self.pipeline.untaken();
        let Some(oldest) = untaken.oldest_since else {
            return;
        };
        // An event arrives up to the Telemetry API's buffering window after it happened: its
        // age counts from then.
        let window = Duration::from_millis(self.config.buffering.timeout_ms.into());
        let due = oldest + freshness.saturating_sub(window);
        let now = Instant::now();
        if untaken.events >= REQUEST_EVENTS || untaken.bytes >= REQUEST_BYTES || due <= now {
            self.kick_asked_for = None;
            self.delivery.kick();
        } else if self
            .kick_asked_for
            .is_none_or(|asked| asked <= now || due < asked)
        {
            // Asked once per delivery, not at every invocation (a message and a wake-up of the
            // delivery task each): the one asked for still stands until its instant.
            self.kick_asked_for = Some(due);
            self.delivery.kick_at(due);
        }
    }

    fn waits_for_runtime_done(&self) -> bool {
        self.telemetry_live && self.config.subscribes_to(TelemetryType::Platform)
    }

    /// A held invocation waits until its runtimeDone has arrived (the function runs meanwhile, so
    /// this costs nothing until the runtime finishes), then for its telemetry to leave.
    async fn on_invoke(&mut self, request_id: String, deadline_ms: u64) {
        self.invocations += 1;
        METRICS.invocations.inc();
        self.last_request = Some(request_id.clone());
        let Some(reason) = self.holds(&request_id) else {
            return;
        };
        // The flush below takes everything, the delivery asked for included.
        self.kick_asked_for = None;
        let started = Instant::now();
        if self.waits_for_runtime_done() {
            // A timed-out invoke's runtimeDone is emitted at the deadline; allow the flush
            // timeout beyond it for its delivery.
            let wait_until = instant_at_epoch_ms(deadline_ms).unwrap_or_else(Instant::now)
                + self.config.flush_timeout;
            // Wait in steps of the flush timeout (at least MIN_WAIT_STEP, so that a tiny flush
            // timeout cannot turn the wait into polling beside the running function). The step's
            // timer is then no later than the flush's own deadline timers (one per sink and per
            // request), and tokio interrupts its driver (an eventfd write and one more
            // epoll_wait) only for a new timer earlier than the one it parked on: ~5 system calls
            // less per invocation (BENCHMARKS.md). A step ending early costs one wake-up.
            let step = self.config.flush_timeout.max(MIN_WAIT_STEP);
            let arrived = loop {
                let step_end = wait_until.min(Instant::now() + step);
                match tokio::time::timeout_at(
                    step_end,
                    self.progress.wait_for(|p| p.runtime_done(&request_id)),
                )
                .await
                {
                    Ok(result) => break result.is_ok(),
                    Err(_) if step_end >= wait_until => break false,
                    Err(_) => {}
                }
            };
            if !arrived {
                tracing::warn!(
                    request_id,
                    "runtimeDone did not arrive by the invoke's deadline; flushing what is here"
                );
            }
        }
        let waited = started.elapsed();
        let flush_deadline = Instant::now() + self.config.flush_timeout;
        // A second round takes what a flush beside the lifecycle gave back meanwhile (it ended
        // after this one had taken its events), while there is time.
        for _ in 0..2 {
            let complete = self.delivery.flush(reason, flush_deadline).await;
            if complete || Instant::now() >= flush_deadline {
                break;
            }
        }
        self.last_flush = Instant::now();
        if let Some(pusher) = &self.pusher {
            let push = async { pusher.lock().await.maybe_push(false, flush_deadline).await };
            let _ = tokio::time::timeout_at(flush_deadline, push).await;
        }
        tracing::debug!(
            request_id,
            waited_us = waited.as_micros() as u64,
            total_us = started.elapsed().as_micros() as u64,
            "invoke done"
        );
    }

    /// Drains: waits for the last invocation's report (it arrives after SHUTDOWN), then flushes
    /// every sink, retrying stragglers, and returns before `deadlineMs` with a margin.
    async fn on_shutdown(&mut self, reason: &str, deadline_ms: u64) {
        let received = Instant::now();
        let hard_deadline = instant_at_epoch_ms(deadline_ms)
            .unwrap_or_else(|| received + FALLBACK_SHUTDOWN_BUDGET)
            .checked_sub(SHUTDOWN_MARGIN)
            .unwrap_or(received)
            .max(received);
        tracing::info!(
            reason,
            budget_ms = hard_deadline.duration_since(received).as_millis() as u64,
            invocations = self.invocations,
            "shutdown"
        );
        if let Some(timer) = self.timer.take() {
            timer.abort(); // the drain below takes everything
        }
        // Keep at least half of the budget for the flush itself.
        let wait_until = received + hard_deadline.duration_since(received) / 2;
        if self.waits_for_runtime_done() {
            // The reports Lambda still owes: the last invocation's (it comes after SHUTDOWN), and
            // under Managed Instances those of every invocation that started (they end without
            // the extension seeing it; on the default model none is tracked as open).
            let last = self.last_request.clone();
            let owed = |p: &Progress| {
                p.open_invocations() > 0 || last.as_deref().is_some_and(|l| !p.reported(l))
            };
            let arrived = tokio::time::timeout_at(wait_until, self.progress.wait_for(|p| !owed(p)))
                .await
                .is_ok_and(|r| r.is_ok());
            if !arrived {
                tracing::warn!(
                    last_request = last.as_deref().unwrap_or("-"),
                    open = self.progress.borrow().open_invocations(),
                    "shutdown: a platform.report did not arrive in time"
                );
            }
        }
        // Close the listener before the last flushes: requests in flight finish (Lambda gets its
        // answer, their events reach the queue), and nothing is accepted that could not be sent.
        if let Some(listener) = self.listener.take() {
            let budget = hard_deadline.saturating_duration_since(Instant::now()) / 4;
            listener.stop(Instant::now() + budget).await;
        }
        // Nothing new can arrive now; further rounds only retry what a sink left undelivered.
        for _ in 0..SHUTDOWN_FLUSH_ROUNDS {
            let complete = self
                .delivery
                .flush(FlushReason::Shutdown, hard_deadline)
                .await;
            if complete || Instant::now() >= hard_deadline {
                break;
            }
        }
        if let Some(pusher) = &self.pusher {
            // A hard cut: a freeze-tolerant request timeout must not outlive deadlineMs.
            let push = async { pusher.lock().await.maybe_push(true, hard_deadline).await };
            let _ = tokio::time::timeout_at(hard_deadline, push).await;
        }
        let pending = self.pipeline.pending();
        if pending > 0 {
            tracing::warn!(
                pending,
                "shutdown: events not delivered before the deadline"
            );
        }
        tracing::info!(
            elapsed_ms = received.elapsed().as_millis() as u64,
            "shutdown complete"
        );
    }
}
