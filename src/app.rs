//! Wires the pieces together and runs the extension's lifecycle:
//! register → start listener → subscribe → loop on `/event/next`. The delivery task flushes
//! beside the loop; the loop tells it what is due and decides whether the invocation waits.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;
use tokio::time::Instant;

use crate::config::url::redact_url;
use crate::config::{Config, ConfigIssue, FlushPolicy, TelemetryType, SANDBOX_HOST};
use crate::http::LazyClient;
use crate::lifecycle::api::ErrorPhase;
use crate::lifecycle::cadence::{Cadence, Hold, QueueState};
use crate::lifecycle::{ExtensionsApi, NextEvent};
use crate::pipeline::delivery::Delivery;
use crate::pipeline::{FlushReason, InvokeInfo, Pipeline, Sink};
use crate::self_metrics::{self, Pusher, METRICS};
use crate::settings::Settings;
use crate::sinks::otlp::{FunctionIdentity, OtlpSink};
use crate::sinks::raw_json::RawJsonSink;
use crate::telemetry::progress::{self, Progress};
use crate::telemetry::{listener, subscription};

/// Kept free at the end of the shutdown window: Lambda SIGKILLs at `deadlineMs`.
const SHUTDOWN_MARGIN: Duration = Duration::from_millis(250);
/// Used when SHUTDOWN carries no usable deadline (internal-extension budget, the smallest).
const FALLBACK_SHUTDOWN_BUDGET: Duration = Duration::from_millis(500);
/// Shutdown flush rounds: the first sends everything; later ones retry what a sink left.
const SHUTDOWN_FLUSH_ROUNDS: usize = 3;
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

struct Bridge {
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
}

/// Runs the extension until SHUTDOWN; the exit code Lambda sees.
pub async fn run(settings: Settings, issues: Vec<ConfigIssue>, extension_name: String) -> ExitCode {
    let Settings {
        core: config,
        dispatch,
        otlp,
        self_metrics,
    } = settings;
    let model = config.lambda.model;
    if model.is_managed_instances() {
        // Never frozen there: a late timer is a starved CPU, not a freeze to forgive.
        crate::awake::assume_no_freezes();
    }
    let mut api = ExtensionsApi::new(&config.lambda.runtime_api);
    let events = model.extension_events();
    // Said before registering: a refused registration is the first thing to explain.
    tracing::info!(
        model = %model.as_str(),
        initialization_type = %config.lambda.initialization_type.as_deref().unwrap_or("?"),
        events = ?events,
        "execution model"
    );
    let registration = match api.register(&extension_name, events).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "registration failed; the extension cannot run");
            return ExitCode::from(1);
        }
    };
    tracing::info!(
        name = %extension_name,
        function = registration.function_name.as_deref().unwrap_or("?"),
        version = registration.function_version.as_deref().unwrap_or("?"),
        account_id_known = registration.account_id.is_some(),
        "registered"
    );

    for issue in &issues {
        tracing::error!("configuration: {issue}");
    }
    if config.strict && !issues.is_empty() {
        return fail_init(&api, &issues).await;
    }

    // One HTTP client (one connection pool, TLS roots loaded at most once) for every output.
    let outbound = dispatch
        .iter()
        .map(|d| &d.uri)
        .chain(otlp.iter().flat_map(|o| {
            [&o.traces, &o.metrics, &o.logs]
                .into_iter()
                .flatten()
                .map(|s| &s.endpoint)
        }))
        .chain(self_metrics.pushgateway.iter().map(|p| &p.url));
    let http = Arc::new(LazyClient::for_urls(outbound));

    let mut sinks: Vec<Arc<dyn Sink>> = Vec::new();
    match &dispatch {
        Some(dispatch) => match RawJsonSink::new(dispatch, http.clone()) {
            Ok(sink) => {
                tracing::info!(
                    endpoint = %redact_url(&dispatch.uri),
                    min_batch_size = dispatch.min_batch_size,
                    "raw JSON sink enabled"
                );
                sinks.push(Arc::new(sink));
            }
            Err(e) => tracing::error!(error = %e, "raw JSON sink disabled"),
        },
        None => tracing::info!(
            "DISPATCH_POST_URI is not set: raw JSON events are discarded after the other sinks took them"
        ),
    }
    match &otlp {
        Some(otlp) => {
            let identity = FunctionIdentity::new(&registration, &config.lambda);
            tracing::info!(
                traces = otlp
                    .traces
                    .as_ref()
                    .map(|s| redact_url(&s.endpoint))
                    .unwrap_or_else(|| "off".into()),
                metrics = otlp
                    .metrics
                    .as_ref()
                    .map(|s| redact_url(&s.endpoint))
                    .unwrap_or_else(|| "off".into()),
                logs = otlp
                    .logs
                    .as_ref()
                    .map(|s| redact_url(&s.endpoint))
                    .unwrap_or_else(|| "off".into()),
                "OTLP sink enabled"
            );
            sinks.push(Arc::new(OtlpSink::new(
                otlp.clone(),
                &identity,
                http.clone(),
            )));
        }
        None => tracing::info!(
            "no OTEL_EXPORTER_OTLP_*ENDPOINT set (or OTEL_SDK_DISABLED=true): OTLP output is off"
        ),
    }
    let pipeline = Arc::new(Pipeline::new(
        sinks,
        config.queue_max_events,
        config.queue_max_bytes,
    ));

    if let Some(addr) = self_metrics.metrics_addr {
        match self_metrics::serve(addr).await {
            Ok(bound) => tracing::info!(addr = %bound, "self-metrics served at /metrics"),
            Err(e) => {
                tracing::error!(addr = %addr, error = %e, "BRIDGE_METRICS_ADDR: cannot listen; /metrics disabled")
            }
        }
    }
    let pusher = self_metrics.pushgateway.as_ref().map(|gateway| {
        let instance = config
            .lambda
            .log_stream
            .clone()
            .unwrap_or_else(|| format!("pid-{}", std::process::id()));
        Arc::new(tokio::sync::Mutex::new(Pusher::new(
            gateway,
            &instance,
            self_metrics.push_interval,
            http.clone(),
        )))
    });

    let (progress_tx, progress_rx) = progress::channel(model.is_managed_instances());
    let mut listen_issues = Vec::new();
    let (listener, telemetry_live) = start_telemetry(
        &config,
        &api,
        pipeline.clone(),
        progress_tx,
        &mut listen_issues,
    )
    .await;
    if config.strict && !listen_issues.is_empty() {
        return fail_init(&api, &listen_issues).await;
    }

    // Beside the lifecycle, a queue past a quarter of its limits is drained as it fills
    // (`adaptive`, and the timer of Managed Instances).
    let delivery = Delivery::start(
        pipeline.clone(),
        config.flush_timeout,
        config.flush_policy == FlushPolicy::Adaptive || model.is_managed_instances(),
    );
    // Managed Instances: no INVOKE, no freeze; delivery runs on the timer.
    let timer = match config.flush_policy {
        FlushPolicy::Periodic(every) if model.is_managed_instances() => Some(start_timer(
            every,
            delivery.clone(),
            pusher.clone(),
            config.flush_timeout,
        )),
        _ => None,
    };
    let mut bridge = Bridge {
        cadence: Cadence::new(config.flush_max_delay),
        config,
        api,
        pipeline,
        progress: progress_rx,
        telemetry_live,
        listener,
        delivery,
        timer,
        last_flush: Instant::now(),
        last_request: None,
        invocations: 0,
        pusher,
    };
    bridge.event_loop().await
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

/// `BRIDGE_STRICT=true` and a setting was invalid: an init error reported to Lambda, exit 1.
async fn fail_init(api: &ExtensionsApi, issues: &[ConfigIssue]) -> ExitCode {
    let message = issues
        .iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join("; ");
    if let Err(e) = api
        .report_error(ErrorPhase::Init, "InvalidConfiguration", &message)
        .await
    {
        tracing::error!(error = %e, "could not report the init error");
    }
    ExitCode::from(1)
}

/// Binds the listener and subscribes; returns the listener and whether telemetry will arrive.
/// Failure here degrades the bridge (no telemetry) but never fails the function's init.
async fn start_telemetry(
    config: &Config,
    api: &ExtensionsApi,
    pipeline: Arc<Pipeline>,
    progress_tx: watch::Sender<Progress>,
    issues: &mut Vec<ConfigIssue>,
) -> (Option<listener::Listener>, bool) {
    let Some(bound) = bind_listener(config, issues).await else {
        return (None, false);
    };
    // Lambda reaches a listener on a fallback host by the sandbox's name.
    let destination = if bound.host == config.listener_host {
        config.destination_host.as_str()
    } else {
        SANDBOX_HOST
    };
    let body = subscription::subscription_body(config, destination, bound.local_addr.port());
    let listener = listener::start(bound, &config.buffering, pipeline, progress_tx);
    let live = match api.subscribe_telemetry(body).await {
        Ok(status) => {
            tracing::info!(
                listener = %listener.local_addr,
                status = status.as_u16(),
                types = ?config.telemetry_types.iter().map(|t| t.as_str()).collect::<Vec<_>>(),
                max_items = config.buffering.max_items,
                max_bytes = config.buffering.max_bytes,
                timeout_ms = config.buffering.timeout_ms,
                flush = %config.flush_policy,
                "subscribed to the Telemetry API"
            );
            true
        }
        Err(e) => {
            tracing::error!(error = %e, "telemetry subscription failed; no telemetry will arrive");
            false
        }
    };
    (Some(listener), live)
}

/// Binds the configured host and port; a port that is taken or a host that cannot be bound is an
/// issue naming its variable (an init error under `BRIDGE_STRICT`), and the listener falls back
/// (a taken port to an ephemeral one, a host it cannot bind to the default host, keeping the
/// port), so telemetry still flows.
async fn bind_listener(
    config: &Config,
    issues: &mut Vec<ConfigIssue>,
) -> Option<listener::BoundSocket> {
    let mut host = config.listener_host.clone();
    let mut port = config.listener_port;
    loop {
        let error = match listener::bind(&host, port).await {
            Ok(socket) => return Some(socket),
            Err(e) => e,
        };
        let in_use = error.kind() == std::io::ErrorKind::AddrInUse;
        let issue = if in_use && port != 0 {
            let issue = ConfigIssue {
                variable: "BRIDGE_LISTENER_PORT".into(),
                value: port.to_string(),
                allowed: format!("a port free on {host} ({error})"),
                consequence: "listening on an ephemeral port".into(),
            };
            port = 0;
            issue
        } else if host != config.default_listener_host {
            let issue = ConfigIssue {
                variable: "BRIDGE_LISTENER_ADDR".into(),
                value: host.clone(),
                allowed: format!("an address of this host ({error})"),
                consequence: format!("listening on {}", config.default_listener_host),
            };
            host = config.default_listener_host.clone();
            issue
        } else {
            tracing::error!(error = %error, "telemetry disabled");
            return None;
        };
        tracing::error!("configuration: {issue}");
        issues.push(issue);
    }
}

impl Bridge {
    async fn event_loop(&mut self) -> ExitCode {
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
                        // What is queued (earlier invocations' events) leaves while the function
                        // runs; this invocation's leave during the next one.
                        self.delivery.kick();
                        push_self_metrics_beside(self.pusher.as_ref(), self.config.flush_timeout);
                        None
                    }
                }
            }
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
