//! The driver: spawns the extension and plays Lambda's part through init, invocations and shutdown.

use std::collections::BTreeMap;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;
use tokio::io::AsyncReadExt;
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::control_plane::{ControlMsg, ControlPlane, PendingNext, Shared};
use super::cpu_function::CpuProcess;
use super::events::{self, ReportArgs, RuntimeOutcome, Trace};
use super::telemetry::{self, TelemetryHub};
use super::{EventTiming, InvocationRecord, ProgressFn, RunTotals, SimConfig, SimError, SimReport};

/// Lambda's PATH.
const LAMBDA_PATH: &str = "/usr/local/bin:/usr/bin/:/bin:/opt/bin";
/// Error types of failed invocations, in turn.
const ERROR_TYPES: [&str; 3] = ["Error", "TypeError", "Runtime.UnhandledPromiseRejection"];
/// Slack on top of the function timeout for the extension's `/event/next` after an invoke.
const NEXT_SLACK: Duration = Duration::from_secs(10);
/// Captured extension output kept under a history limit (the latest part).
const OUTPUT_LIMIT: usize = 1024 * 1024;

/// Aborts a task when dropped.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

enum Waited {
    Msg(ControlMsg),
    Exited,
    TimedOut,
}

struct Driver {
    cfg: SimConfig,
    /// Events emitted so far (picks each one's time format).
    emitted: Arc<std::sync::atomic::AtomicUsize>,
    progress: Option<ProgressFn>,
    hub: Arc<TelemetryHub>,
    shared: Arc<Shared>,
    ctrl_rx: mpsc::UnboundedReceiver<ControlMsg>,
    control_plane: ControlPlane,
    deliverer: Option<AbortOnDrop>,
    child: Child,
    pid: Option<u32>,
    spawned_at: Instant,
    exit: Option<ExitStatus>,
    exited_at: Option<Instant>,
    output: Arc<Mutex<String>>,
    output_tasks: Vec<JoinHandle<()>>,
    frozen: bool,
    // Results.
    cold_start: Option<Duration>,
    init_duration: Option<Duration>,
    invocations: Vec<InvocationRecord>,
    errors: Vec<String>,
    shutdown_at: Option<Instant>,
    shutdown_duration: Option<Duration>,
    peak_rss_kb_before_shutdown: Option<u64>,
    rss_kb_before_shutdown: Option<u64>,
    cpu_ns_before_shutdown: Option<u64>,
    killed: bool,
    // Counts over the whole run (`invocations` may be pruned).
    invocations_total: usize,
    by_status: BTreeMap<String, usize>,
    max_overhead: Option<Duration>,
    /// Managed Instances: invocations still running when SHUTDOWN is handed over.
    running: Option<tokio::task::JoinSet<InvocationRecord>>,
    /// The CPU-bound function's process (`SimConfig::cpu_function`), while it works.
    function: Option<CpuProcess>,
    function_pid: Option<u32>,
}

pub(crate) async fn run(mut cfg: SimConfig) -> Result<SimReport, SimError> {
    let progress = cfg.progress.take();
    let hub = Arc::new(TelemetryHub::with_history_limit(cfg.history_limit));
    let (ctrl_tx, ctrl_rx) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        recorded: Mutex::new(Default::default()),
        hub: hub.clone(),
        ctrl: ctrl_tx,
        function_name: cfg.function_name.clone(),
        function_version: cfg.function_version.clone(),
        history_limit: cfg.history_limit,
        pid: std::sync::atomic::AtomicU32::new(0),
        managed_instances: cfg.managed_instances.is_some(),
        refuse_subscription: cfg.refuse_subscription,
    });
    let control_plane = ControlPlane::start(shared.clone()).await?;
    let client = if cfg.new_connection_per_push {
        http_client_without_pool()?
    } else {
        http_client()?
    };
    let deliverer = AbortOnDrop(tokio::spawn(telemetry::deliver(
        hub.clone(),
        client,
        Duration::from_millis(cfg.telemetry_post_timeout_ms),
    )));

    // The function's own process, started with the extension as a runtime is.
    let function = cfg
        .cpu_function
        .as_ref()
        .map(CpuProcess::spawn)
        .transpose()?;
    let function_pid = function.as_ref().and_then(CpuProcess::pid);

    let mut cmd = Command::new(&cfg.extension_path);
    if !cfg.inherit_env {
        cmd.env_clear();
        cmd.env("PATH", LAMBDA_PATH);
    }
    for (k, v) in lambda_env(&cfg, &control_plane.addr.to_string()) {
        cmd.env(k, v);
    }
    for (k, v) in &cfg.extension_env {
        cmd.env(k, v);
    }
    cmd.stdin(Stdio::null()).kill_on_drop(true);
    if cfg.own_process_group {
        cmd.process_group(0);
    }
    if cfg.capture_output {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    } else {
        cmd.stdout(Stdio::inherit()).stderr(Stdio::inherit());
    }
    let spawned_at = Instant::now();
    let mut child = cmd.spawn().map_err(|source| SimError::Spawn {
        path: cfg.extension_path.clone(),
        source,
    })?;
    let pid = child.id();
    if let Some(p) = pid {
        shared.pid.store(p, std::sync::atomic::Ordering::Relaxed);
    }

    let output = Arc::new(Mutex::new(String::new()));
    let output_limit = cfg.history_limit.map(|_| OUTPUT_LIMIT);
    let mut output_tasks = Vec::new();
    if let Some(out) = child.stdout.take() {
        output_tasks.push(tokio::spawn(capture(out, output.clone(), output_limit)));
    }
    if let Some(err) = child.stderr.take() {
        output_tasks.push(tokio::spawn(capture(err, output.clone(), output_limit)));
    }

    let mut d = Driver {
        emitted: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
        cfg,
        progress,
        hub,
        shared,
        ctrl_rx,
        control_plane,
        deliverer: Some(deliverer),
        child,
        pid,
        spawned_at,
        exit: None,
        exited_at: None,
        output,
        output_tasks,
        frozen: false,
        cold_start: None,
        init_duration: None,
        invocations: Vec::new(),
        errors: Vec::new(),
        shutdown_at: None,
        shutdown_duration: None,
        peak_rss_kb_before_shutdown: None,
        rss_kb_before_shutdown: None,
        cpu_ns_before_shutdown: None,
        killed: false,
        invocations_total: 0,
        by_status: BTreeMap::new(),
        max_overhead: None,
        running: None,
        function,
        function_pid,
    };

    let first_next = match d.init().await {
        Ok(p) => p,
        Err(reason) => {
            d.errors.push(reason.clone());
            let grace = Duration::from_millis(d.cfg.shutdown_deadline_ms);
            d.stop_process(grace).await;
            let report = d.finish().await;
            return Err(SimError::InitFailed {
                reason,
                report: Box::new(report),
            });
        }
    };
    let (pending, deferred_report) = match d.cfg.managed_instances {
        Some(concurrency) => {
            let (pending, running) = d.concurrent_invocations(first_next, concurrency).await;
            d.running = running;
            (pending, None)
        }
        None => d.invocations(first_next).await,
    };
    d.shutdown(pending, deferred_report).await;
    Ok(d.finish().await)
}

pub(crate) fn http_client() -> Result<reqwest::Client, SimError> {
    client_builder()?
        .build()
        .map_err(|e| SimError::HttpClient(e.to_string()))
}

/// A client that opens a new connection for every request (no idle connection is kept).
fn http_client_without_pool() -> Result<reqwest::Client, SimError> {
    client_builder()?
        .pool_max_idle_per_host(0)
        .build()
        .map_err(|e| SimError::HttpClient(e.to_string()))
}

fn client_builder() -> Result<reqwest::ClientBuilder, SimError> {
    // The crate's reqwest has rustls without a default crypto provider; hand it a ring-based
    // config instead of installing a process-wide default (which would be the caller's choice).
    // Only plain HTTP to the loopback is used, so the TLS config is never exercised.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| SimError::HttpClient(e.to_string()))?
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    Ok(reqwest::Client::builder()
        .no_proxy()
        .tls_backend_preconfigured(tls)
        // Lambda's destination host; the simulated sandbox is the loopback.
        .resolve(
            "sandbox.localdomain",
            std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        ))
}

/// `AWS_LAMBDA_INITIALIZATION_TYPE` and `platform.initStart`'s `initializationType`.
fn initialization_type(cfg: &SimConfig) -> &'static str {
    if cfg.managed_instances.is_some() {
        "lambda-managed-instances"
    } else if cfg.snap_start {
        "snap-start"
    } else {
        "on-demand"
    }
}

/// The X-Ray context of invocation `i` (from 0): `SimConfig::xray`, `unsampled_every`, `trace_seed`.
fn trace_for(cfg: &SimConfig, i: usize) -> Option<Trace> {
    if !cfg.xray {
        return None;
    }
    let sampled = !cfg
        .unsampled_every
        .is_some_and(|n| n > 0 && (i + 1) % n == 0);
    Some(match cfg.trace_seed {
        Some(seed) => Trace::seeded(seed, i, sampled),
        None => Trace::with(&mut fastrand::Rng::new(), sampled),
    })
}

/// The tenant of invocation `i` (`SimConfig::tenants`), spread round-robin.
fn tenant_for(cfg: &SimConfig, i: usize) -> Option<String> {
    (cfg.tenants > 0).then(|| format!("tenant-{}", i % cfg.tenants + 1))
}

fn lambda_env(cfg: &SimConfig, runtime_api: &str) -> Vec<(String, String)> {
    let date: String = events::rfc3339(SystemTime::now())
        .chars()
        .take(10)
        .map(|c| if c == '-' { '/' } else { c })
        .collect();
    let mut env: Vec<(String, String)> = [
        ("AWS_LAMBDA_RUNTIME_API", runtime_api.to_string()),
        ("AWS_LAMBDA_FUNCTION_NAME", cfg.function_name.clone()),
        ("AWS_LAMBDA_FUNCTION_VERSION", cfg.function_version.clone()),
        ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", cfg.memory_mb.to_string()),
        ("AWS_REGION", events::REGION.to_string()),
        ("AWS_DEFAULT_REGION", events::REGION.to_string()),
        (
            "AWS_LAMBDA_LOG_GROUP_NAME",
            format!("/aws/lambda/{}", cfg.function_name),
        ),
        (
            "AWS_LAMBDA_LOG_STREAM_NAME",
            format!("{date}/[$LATEST]{}", events::random_hex(32)),
        ),
        ("AWS_EXECUTION_ENV", "AWS_Lambda_nodejs20.x".to_string()),
        (
            "AWS_LAMBDA_INITIALIZATION_TYPE",
            initialization_type(cfg).to_string(),
        ),
        ("LAMBDA_TASK_ROOT", "/var/task".to_string()),
        ("LAMBDA_RUNTIME_DIR", "/var/runtime".to_string()),
        ("_HANDLER", "index.handler".to_string()),
        ("TZ", ":UTC".to_string()),
        ("LANG", "en_US.UTF-8".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    if !cfg
        .extension_env
        .iter()
        .any(|(k, _)| k == "BRIDGE_LISTENER_ADDR")
    {
        env.push(("BRIDGE_LISTENER_ADDR".into(), "127.0.0.1".into()));
    }
    env
}

/// Marks where captured output was cut under a limit.
const OUTPUT_CUT: &str = "[... earlier extension output dropped ...]\n";

async fn capture<R: tokio::io::AsyncRead + Unpin>(
    mut r: R,
    out: Arc<Mutex<String>>,
    limit: Option<usize>,
) {
    let mut buf = vec![0u8; 8192];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                let mut out = out.lock().unwrap_or_else(|e| e.into_inner());
                out.push_str(&String::from_utf8_lossy(&buf[..n]));
                if let Some(limit) = limit {
                    keep_tail(&mut out, limit);
                }
            }
        }
    }
}

/// Once `s` is twice `limit` long, cuts it to about its last `limit` bytes (at a line start when
/// there is one), behind a marker.
fn keep_tail(s: &mut String, limit: usize) {
    if s.len() < 2 * limit.max(1) {
        return;
    }
    let mut cut = s.len() - limit;
    while !s.is_char_boundary(cut) {
        cut += 1;
    }
    if let Some(nl) = s[cut..].find('\n') {
        cut += nl + 1;
    }
    s.replace_range(..cut, OUTPUT_CUT);
}

/// Sleeps for `pause`, or less when `stop` turns true meanwhile; returns whether it did.
async fn sleep_unless_stopped(
    stop: Option<tokio::sync::watch::Receiver<bool>>,
    pause: Duration,
) -> bool {
    let Some(mut stop) = stop else {
        tokio::time::sleep(pause).await;
        return false;
    };
    let until = tokio::time::Instant::now() + pause;
    loop {
        if *stop.borrow_and_update() {
            return true;
        }
        tokio::select! {
            _ = tokio::time::sleep_until(until) => return *stop.borrow(),
            changed = stop.changed() => {
                if changed.is_err() {
                    // The sender is gone: no stop can come any more.
                    tokio::time::sleep_until(until).await;
                    return *stop.borrow();
                }
            }
        }
    }
}

fn vary(base: Duration, spread: f64) -> Duration {
    base.mul_f64(1.0 - spread + 2.0 * spread * fastrand::f64())
}

impl Driver {
    fn emit(&self, event: Value) {
        self.emitter().emit(event);
    }

    /// What emits events for this run, also from the tasks of concurrent invocations.
    fn emitter(&self) -> Emitter {
        Emitter {
            hub: self.hub.clone(),
            emitted: self.emitted.clone(),
        }
    }

    fn signal(&self, sig: libc::c_int) {
        if self.exit.is_some() {
            return;
        }
        if let Some(pid) = self.pid.and_then(|p| libc::pid_t::try_from(p).ok()) {
            // SAFETY: kill(2) has no memory-safety preconditions; the pid is our own child,
            // not reaped yet (we checked it has not exited), so it cannot have been reused.
            unsafe {
                libc::kill(pid, sig);
            }
        }
    }

    fn freeze(&mut self) {
        if !self.frozen {
            // Lambda does not deliver telemetry to a frozen sandbox.
            self.hub.set_paused(true);
            self.signal(libc::SIGSTOP);
            self.frozen = true;
        }
    }

    fn thaw(&mut self) {
        if self.frozen {
            self.signal(libc::SIGCONT);
            self.hub.set_paused(false);
            self.frozen = false;
        }
    }

    fn record_exit(&mut self, status: std::io::Result<ExitStatus>) {
        self.exited_at = Some(Instant::now());
        match status {
            Ok(s) => self.exit = Some(s),
            Err(e) => self
                .errors
                .push(format!("cannot wait for the extension process: {e}")),
        }
    }

    fn has_exited(&self) -> bool {
        self.exited_at.is_some()
    }

    fn describe_exit(&self) -> String {
        use std::os::unix::process::ExitStatusExt;
        match self.exit {
            Some(s) => match (s.code(), s.signal()) {
                (Some(c), _) => format!("exit code {c}"),
                (None, Some(sig)) => format!("signal {sig}"),
                _ => "unknown status".into(),
            },
            None => "unknown status".into(),
        }
    }

    /// Waits for a control-plane message, the process's exit, or `until`.
    async fn wait(&mut self, until: Instant) -> Waited {
        if self.has_exited() {
            return match self.ctrl_rx.try_recv() {
                Ok(m) => Waited::Msg(m),
                Err(_) => Waited::Exited,
            };
        }
        enum Got {
            Msg(Option<ControlMsg>),
            Exit(std::io::Result<ExitStatus>),
            Timer,
        }
        let got = tokio::select! {
            biased;
            m = self.ctrl_rx.recv() => Got::Msg(m),
            s = self.child.wait() => Got::Exit(s),
            _ = tokio::time::sleep_until(until.into()) => Got::Timer,
        };
        match got {
            Got::Msg(Some(m)) => Waited::Msg(m),
            Got::Msg(None) | Got::Timer => Waited::TimedOut,
            Got::Exit(s) => {
                self.record_exit(s);
                Waited::Exited
            }
        }
    }

    /// Waits for the process to exit until `deadline`; returns whether it did.
    async fn wait_exit(&mut self, deadline: Instant) -> bool {
        if self.has_exited() {
            return true;
        }
        let got = tokio::select! {
            s = self.child.wait() => Some(s),
            _ = tokio::time::sleep_until(deadline.into()) => None,
        };
        match got {
            Some(s) => {
                self.record_exit(s);
                true
            }
            None => false,
        }
    }

    /// Lets the process exit within `grace`, then SIGKILLs it.
    async fn stop_process(&mut self, grace: Duration) {
        self.thaw();
        if self.wait_exit(Instant::now() + grace).await {
            return;
        }
        self.kill().await;
    }

    async fn kill(&mut self) {
        if self.has_exited() {
            return;
        }
        self.killed = true;
        if let Err(e) = self.child.start_kill() {
            self.errors
                .push(format!("cannot kill the extension process: {e}"));
        }
        if !self
            .wait_exit(Instant::now() + Duration::from_secs(5))
            .await
        {
            self.errors
                .push("the extension process did not die after SIGKILL".into());
        }
    }

    fn init_state(&self) -> String {
        let rec = self.shared.lock();
        format!(
            "registered: {}, subscribed: {}, /event/next called: {}",
            if rec.extension_id.is_some() {
                "yes"
            } else {
                "no"
            },
            match rec.subscribe_status {
                Some(200) => "yes".to_string(),
                Some(s) => format!(
                    "rejected ({s}: {})",
                    rec.subscribe_error.clone().unwrap_or_default()
                ),
                None => "no".to_string(),
            },
            if rec.next_calls.is_empty() {
                "no"
            } else {
                "yes"
            },
        )
    }

    /// The init phase. Returns the extension's first pending `/event/next`.
    async fn init(&mut self) -> Result<PendingNext, String> {
        let snap = self.cfg.snap_start && self.cfg.managed_instances.is_none();
        let init_type = initialization_type(&self.cfg);
        let now = SystemTime::now();
        if snap {
            self.emit(events::restore_start(now));
        } else {
            self.emit(events::init_start(
                now,
                init_type,
                &self.cfg.function_name,
                &self.cfg.function_version,
            ));
        }
        let runtime_ready_at =
            self.spawned_at + vary(Duration::from_millis(self.cfg.runtime_init_ms), 0.25);
        let init_deadline = self.spawned_at + Duration::from_millis(self.cfg.init_timeout_ms);
        let mut runtime_done_at: Option<Instant> = None;
        let mut first: Option<PendingNext> = None;
        loop {
            let now = Instant::now();
            if runtime_done_at.is_none() && now >= runtime_ready_at {
                let t = SystemTime::now();
                self.emit(if snap {
                    events::restore_runtime_done(t)
                } else {
                    events::init_runtime_done(t, init_type)
                });
                runtime_done_at = Some(now);
            }
            if let (Some(rt), Some(p)) = (runtime_done_at, first.as_ref()) {
                let end = rt.max(p.at);
                let duration = end.saturating_duration_since(self.spawned_at);
                self.init_duration = Some(duration);
                let t = SystemTime::now();
                self.emit(if snap {
                    events::restore_report(t, duration)
                } else {
                    events::init_report(t, init_type, duration)
                });
                break;
            }
            if now >= init_deadline {
                return Err(format!(
                    "init did not finish within {} ms ({})",
                    self.cfg.init_timeout_ms,
                    self.init_state()
                ));
            }
            let wake = if runtime_done_at.is_none() {
                runtime_ready_at.min(init_deadline)
            } else {
                init_deadline
            };
            match self.wait(wake).await {
                Waited::Msg(ControlMsg::Next(p)) => {
                    if first.is_none() {
                        self.cold_start = Some(p.at.saturating_duration_since(self.spawned_at));
                        let (name, evs) = {
                            let rec = self.shared.lock();
                            (
                                rec.extension_name.clone().unwrap_or_default(),
                                rec.registered_events.clone(),
                            )
                        };
                        self.emit(events::platform_extension(SystemTime::now(), &name, &evs));
                        first = Some(p);
                    } else {
                        self.errors.push(
                            "the extension called /event/next twice concurrently during init"
                                .into(),
                        );
                    }
                }
                Waited::Msg(ControlMsg::InitError) => {
                    let detail = self
                        .shared
                        .lock()
                        .init_errors
                        .last()
                        .map(|e| {
                            format!(
                                "{} {}",
                                e.error_type
                                    .clone()
                                    .unwrap_or_else(|| "(no error type)".into()),
                                e.body.as_ref().map(Value::to_string).unwrap_or_default()
                            )
                        })
                        .unwrap_or_default();
                    return Err(format!("the extension reported an init error: {detail}"));
                }
                Waited::Msg(ControlMsg::ExitError) => {}
                Waited::Exited => {
                    return Err(format!(
                        "the extension exited during init ({}; {})",
                        self.describe_exit(),
                        self.init_state()
                    ));
                }
                Waited::TimedOut => {}
            }
        }
        let rec = self.shared.lock();
        if rec.subscribe_status != Some(200) {
            let msg = match rec.subscribe_status {
                None => "the extension did not subscribe to the Telemetry API during init".into(),
                Some(s) => format!(
                    "the extension's Telemetry API subscription was rejected ({s}: {})",
                    rec.subscribe_error.clone().unwrap_or_default()
                ),
            };
            drop(rec);
            self.errors.push(msg);
        }
        first.ok_or_else(|| "init ended without a pending /event/next".to_string())
    }

    fn outcome_for(&self, i: usize, errors_so_far: usize) -> (String, Option<String>) {
        let nth = |every: Option<usize>| every.is_some_and(|n| n > 0 && (i + 1) % n == 0);
        if nth(self.cfg.out_of_memory_every) {
            ("error".into(), Some(OUT_OF_MEMORY.into()))
        } else if nth(self.cfg.failure_every) {
            ("failure".into(), Some("Runtime.ExitError".into()))
        } else if nth(self.cfg.timeout_every) {
            ("timeout".into(), Some("Sandbox.Timedout".into()))
        } else if nth(self.cfg.error_every) {
            (
                "error".into(),
                Some(ERROR_TYPES[errors_so_far % ERROR_TYPES.len()].into()),
            )
        } else {
            ("success".into(), None)
        }
    }

    /// Drives invocations until the limit or a stop; returns the extension's pending
    /// `/event/next` (for SHUTDOWN) and the last invocation's report, which Lambda emits only
    /// after handing over SHUTDOWN.
    async fn invocations(
        &mut self,
        first: PendingNext,
    ) -> (Option<PendingNext>, Option<(RuntimeOutcome, ReportArgs)>) {
        let mut pending = Some(first);
        let mut deferred = None;
        let mut errors_so_far = 0usize;
        let limit = self.cfg.invocations;
        let mut i = 0usize;
        while (limit == 0 || i < limit) && !self.stop_requested() {
            if i > 0 && self.cfg.between_invokes_ms > 0 {
                let pause = Duration::from_millis(self.cfg.between_invokes_ms);
                if sleep_unless_stopped(self.cfg.stop.clone(), pause).await {
                    break;
                }
            }
            let Some(next) = pending.take() else { break };
            let (status, error_type) = self.outcome_for(i, errors_so_far);
            if status == "error" {
                errors_so_far += 1;
            }
            let Some(done) = self.invocation(i, next, status, error_type).await else {
                break;
            };
            let last = i + 1 == limit || self.stop_requested();
            if last && done.next.is_some() {
                // Lambda emits it after handing over SHUTDOWN.
                deferred = Some((done.outcome, done.report));
            } else {
                self.emit(events::report(
                    SystemTime::now(),
                    &done.outcome,
                    &done.report,
                ));
            }
            self.keep_record(done.record);
            pending = done.next;
            i += 1;
            if last {
                break;
            }
        }
        (pending, deferred)
    }

    /// Lambda Managed Instances: up to `concurrency` invocations at once until the limit or a
    /// stop, none of them shown to the extension (its `/event/next` stays pending until
    /// SHUTDOWN). Returns that pending call, and with `shutdown_during_invocations` the
    /// invocations still running.
    async fn concurrent_invocations(
        &mut self,
        first: PendingNext,
        concurrency: usize,
    ) -> (
        Option<PendingNext>,
        Option<tokio::task::JoinSet<InvocationRecord>>,
    ) {
        enum Step {
            Ended(Result<InvocationRecord, tokio::task::JoinError>),
            Control(Waited),
        }
        let concurrency = concurrency.max(1);
        let limit = self.cfg.invocations;
        let emitter = self.emitter();
        let mut running = tokio::task::JoinSet::new();
        let mut started = 0usize;
        let mut errors_so_far = 0usize;
        loop {
            while running.len() < concurrency
                && (limit == 0 || started < limit)
                && !self.stop_requested()
            {
                let (status, error_type) = match self.outcome_for(started, errors_so_far) {
                    // Managed Instances does not enforce the per-invocation timeout.
                    (status, _) if status == "timeout" => ("success".to_string(), None),
                    outcome => outcome,
                };
                if status == "error" {
                    errors_so_far += 1;
                }
                let invocation = ConcurrentInvocation {
                    index: started,
                    version: self.cfg.function_version.clone(),
                    request_id: events::uuid(),
                    tenant_id: tenant_for(&self.cfg, started),
                    trace: trace_for(&self.cfg, started),
                    status,
                    error_type,
                    // A pause before each start keeps `between_invokes_ms` per slot.
                    pause: Duration::from_millis(if started >= concurrency {
                        self.cfg.between_invokes_ms
                    } else {
                        0
                    }),
                    duration: vary(Duration::from_millis(self.cfg.invoke_duration_ms), 0.5),
                    log_lines: self.cfg.log_lines_per_invoke,
                    log_records: self.cfg.log_records.clone(),
                    listener_port: self.hub.destination_port(),
                };
                running.spawn(invocation.run(emitter.clone()));
                started += 1;
            }
            let all_started = (limit > 0 && started >= limit) || self.stop_requested();
            if running.is_empty() {
                return (Some(first), None);
            }
            if all_started && self.cfg.shutdown_during_invocations {
                return (Some(first), Some(running));
            }
            let step = tokio::select! {
                Some(ended) = running.join_next() => Step::Ended(ended),
                waited = self.wait(Instant::now() + Duration::from_secs(3600)) => Step::Control(waited),
            };
            match step {
                Step::Ended(Ok(record)) => self.keep_record(record),
                Step::Ended(Err(e)) => self.errors.push(format!("an invocation task failed: {e}")),
                Step::Control(Waited::Msg(ControlMsg::Next(p))) => {
                    self.errors.push(
                        "the extension called /event/next again while a call was pending (Managed \
                         Instances answers it only at SHUTDOWN)"
                            .into(),
                    );
                    drop(p);
                }
                Step::Control(Waited::Msg(_)) | Step::Control(Waited::TimedOut) => {}
                Step::Control(Waited::Exited) => {
                    self.errors.push(format!(
                        "the extension exited ({}) while invocations were running",
                        self.describe_exit()
                    ));
                    running.abort_all();
                    return (None, None);
                }
            }
        }
    }

    /// Invocation `i`, from `platform.start` to the extension's next `/event/next`; `None` when
    /// INVOKE could not be handed over.
    async fn invocation(
        &mut self,
        i: usize,
        next: PendingNext,
        status: String,
        error_type: Option<String>,
    ) -> Option<Invoked> {
        let function_timeout = Duration::from_millis(self.cfg.function_timeout_ms);
        let request_id = events::uuid();
        let trace = trace_for(&self.cfg, i);
        let tenant_id = tenant_for(&self.cfg, i);
        self.emit(events::with_tenant(
            events::platform_start(
                SystemTime::now(),
                &request_id,
                &self.cfg.function_version,
                trace.as_ref(),
            ),
            tenant_id.as_deref(),
        ));
        self.thaw();
        let invoked_at = Instant::now();
        let invoke_sys = SystemTime::now();
        let invoke = events::invoke(
            events::epoch_ms(invoke_sys + function_timeout),
            &request_id,
            &self.cfg.function_name,
            trace.as_ref(),
        );
        if next.reply.send(invoke).is_err() {
            self.errors.push(format!(
                "invocation {i}: the extension's /event/next request was gone when INVOKE was handed over"
            ));
            return None;
        }
        let target = if status == "timeout" {
            function_timeout
        } else {
            vary(Duration::from_millis(self.cfg.invoke_duration_ms), 0.5).min(function_timeout)
        };
        let custom = self.cfg.log_records.clone();
        let lines = LogLine {
            request_id: &request_id,
            tenant_id: tenant_id.as_deref(),
            k: 0,
            n: self.cfg.log_lines_per_invoke,
            status: &status,
            error_type: error_type.as_deref(),
            custom: &custom,
        };
        let burn = status != "timeout";
        self.run_function(i, lines, invoked_at, target, burn).await;
        let runtime_duration = invoked_at.elapsed();
        let outcome = RuntimeOutcome {
            request_id: request_id.clone(),
            status: status.clone(),
            error_type: error_type.clone(),
            start: invoke_sys,
            duration: runtime_duration,
            produced_bytes: match status.as_str() {
                "success" => 20 + fastrand::u64(..2000),
                _ => 80 + fastrand::u64(..200),
            },
            trace,
            tenant_id: tenant_id.clone(),
        };
        let done_sys = SystemTime::now();
        self.emit(events::runtime_done(done_sys, &outcome));
        let runtime_done_emitted = Instant::now();

        let next = self
            .await_next(i, runtime_done_emitted + function_timeout + NEXT_SLACK)
            .await;
        let next_called_at = next.as_ref().map(|p| p.at);
        let extension_overhead = match next_called_at {
            Some(at) => at.saturating_duration_since(runtime_done_emitted),
            None => runtime_done_emitted.elapsed(),
        };
        if next.is_some() && self.cfg.freeze_between_invokes {
            self.freeze();
        }
        let report = self.report_args(
            i,
            runtime_duration + extension_overhead,
            (done_sys, extension_overhead),
            error_type.as_deref() == Some(OUT_OF_MEMORY),
        );
        Some(Invoked {
            outcome,
            report,
            record: InvocationRecord {
                tenant_id,
                index: i,
                request_id,
                status,
                error_type,
                invoked_at,
                runtime_duration,
                runtime_done_emitted,
                next_called_at,
                extension_overhead,
                listener_port: self.hub.destination_port(),
            },
            next,
        })
    }

    /// The function runs for `target`, writing its `lines.n` log lines as it goes (and Lambda
    /// dropping some logs when configured to). With a CPU-bound function (and `burn`), it burns
    /// its CPU time instead, in `lines.n + 1` slices with a log line between two of them, and
    /// lasts as long as that takes.
    async fn run_function(
        &mut self,
        i: usize,
        lines: LogLine<'_>,
        invoked_at: Instant,
        target: Duration,
        burn: bool,
    ) {
        let cpu_ms = self.cfg.cpu_function.as_ref().map(|f| f.cpu_ms_per_invoke);
        if let Some(cpu_ms) = cpu_ms.filter(|_| burn && self.function.is_some()) {
            let total_us = (cpu_ms.max(0.0) * 1e3).round() as u64;
            let slices = lines.n as u64 + 1;
            let slice = |k: u64| total_us * (k + 1) / slices - total_us * k / slices;
            let mut ok = true;
            for k in 0..lines.n {
                ok = ok && self.burn(i, slice(k as u64)).await;
                let line = LogLine { k, ..lines };
                self.emit(line.event(k % 2 == 1));
            }
            self.maybe_drop_logs(i);
            if ok && self.burn(i, slice(lines.n as u64)).await {
                return;
            }
            // The function failed (recorded): the rest of the invocation sleeps.
            tokio::time::sleep_until((invoked_at + target).into()).await;
            return;
        }
        for k in 0..lines.n {
            let at = invoked_at + target.mul_f64((k + 1) as f64 / (lines.n + 1) as f64);
            tokio::time::sleep_until(at.into()).await;
            let line = LogLine { k, ..lines };
            self.emit(line.event(k % 2 == 1));
        }
        self.maybe_drop_logs(i);
        tokio::time::sleep_until((invoked_at + target).into()).await;
    }

    /// Every `logs_dropped_every`th invocation, Lambda reports dropped logs.
    fn maybe_drop_logs(&self, i: usize) {
        if self
            .cfg
            .logs_dropped_every
            .is_some_and(|n| n > 0 && (i + 1) % n == 0)
        {
            let records = 1 + fastrand::u64(..200);
            let bytes = records * (80 + fastrand::u64(..120));
            self.emit(events::logs_dropped(SystemTime::now(), records, bytes));
        }
    }

    /// One slice of the CPU-bound function's burn; `false` (with the error recorded and the
    /// function stopped) when it failed.
    async fn burn(&mut self, i: usize, micros: u64) -> bool {
        let Some(function) = self.function.as_mut() else {
            return false;
        };
        let limit = Duration::from_millis(self.cfg.function_timeout_ms) + NEXT_SLACK;
        match function.burn(micros, limit).await {
            Ok(()) => true,
            Err(e) => {
                self.errors.push(format!(
                    "invocation {i}: the CPU-bound function failed: {e}"
                ));
                if let Some(f) = self.function.take() {
                    f.stop().await;
                }
                false
            }
        }
    }

    /// The extensions' turn: waits for the next `/event/next` until `deadline`; `None` (with an
    /// error recorded) when the extension exited or did not call in time.
    async fn await_next(&mut self, i: usize, deadline: Instant) -> Option<PendingNext> {
        loop {
            match self.wait(deadline).await {
                Waited::Msg(ControlMsg::Next(p)) => return Some(p),
                Waited::Msg(_) => continue,
                Waited::Exited => {
                    self.errors.push(format!(
                        "invocation {i}: the extension exited ({}) instead of calling /event/next",
                        self.describe_exit()
                    ));
                    return None;
                }
                Waited::TimedOut => {
                    self.errors.push(format!(
                        "invocation {i}: the extension did not call /event/next within {} ms after runtimeDone",
                        (self.cfg.function_timeout_ms + NEXT_SLACK.as_millis() as u64)
                    ));
                    return None;
                }
            }
        }
    }

    /// What `platform.report` says of invocation `i`: its whole duration, memory, and the init
    /// (or restore) duration on the first.
    fn report_args(
        &self,
        i: usize,
        duration: Duration,
        extension_overhead: (SystemTime, Duration),
        out_of_memory: bool,
    ) -> ReportArgs {
        let memory = self.cfg.memory_mb.max(2);
        let used = ((memory as f64) * (0.45 + 0.25 * fastrand::f64())) as u64;
        ReportArgs {
            duration,
            memory_mb: self.cfg.memory_mb,
            // Out of memory: Lambda reports the whole memory size as used.
            max_memory_used_mb: if out_of_memory {
                self.cfg.memory_mb
            } else {
                used.clamp(1, memory - 1)
            },
            init_duration: (i == 0 && !self.cfg.snap_start)
                .then_some(self.init_duration)
                .flatten(),
            restore_duration: (i == 0 && self.cfg.snap_start)
                .then_some(self.init_duration)
                .flatten(),
            extension_overhead: Some(extension_overhead),
        }
    }

    /// Reports an invocation to the progress callback and keeps it (within the history limit).
    fn keep_record(&mut self, record: InvocationRecord) {
        if let Some(progress) = self.progress.as_mut() {
            progress(&record);
        }
        self.count_invocation(&record);
        self.invocations.push(record);
        if let Some(keep) = self.cfg.history_limit.map(|l| l.max(1)) {
            if self.invocations.len() >= 2 * keep {
                let excess = self.invocations.len() - keep;
                self.invocations.drain(..excess);
            }
        }
    }

    fn stop_requested(&self) -> bool {
        self.cfg.stop.as_ref().is_some_and(|s| *s.borrow())
    }

    fn count_invocation(&mut self, r: &InvocationRecord) {
        self.invocations_total += 1;
        *self.by_status.entry(r.status.clone()).or_insert(0) += 1;
        self.max_overhead = self.max_overhead.max(Some(r.extension_overhead));
    }

    async fn shutdown(
        &mut self,
        pending: Option<PendingNext>,
        deferred_report: Option<(RuntimeOutcome, ReportArgs)>,
    ) {
        let grace = Duration::from_millis(self.cfg.shutdown_deadline_ms);
        let Some(next) = pending else {
            // Nobody to hand SHUTDOWN to: Lambda would reset the environment.
            if !self.has_exited() {
                self.errors.push(
                    "no pending /event/next to hand SHUTDOWN to; the extension was killed".into(),
                );
                self.thaw();
                self.kill().await;
            }
            return;
        };
        self.thaw();
        if self.cfg.flush_before_shutdown
            && !self
                .hub
                .flush(Duration::from_millis(self.cfg.function_timeout_ms))
                .await
        {
            self.errors
                .push("forced telemetry delivery before SHUTDOWN did not finish".into());
        }
        if let Some(pid) = self.pid.filter(|_| !self.has_exited()) {
            self.peak_rss_kb_before_shutdown = super::procfs::peak_rss_kb(pid);
            self.rss_kb_before_shutdown = super::procfs::rss_kb(pid);
            self.cpu_ns_before_shutdown = super::procfs::cpu_ns(pid);
        }
        let deadline_sys = SystemTime::now() + grace;
        let handed_at = Instant::now();
        self.shutdown_at = Some(handed_at);
        if next
            .reply
            .send(events::shutdown(events::epoch_ms(deadline_sys), "spindown"))
            .is_err()
        {
            self.errors.push(
                "the extension's /event/next request was gone when SHUTDOWN was handed over".into(),
            );
        }
        if let Some((outcome, report)) = deferred_report.filter(|_| !self.cfg.withhold_last_report)
        {
            self.emit(events::report(SystemTime::now(), &outcome, &report));
        }
        if let Some(mut running) = self.running.take() {
            // Invocations that were still running end after SHUTDOWN, within its deadline.
            let until = handed_at + grace;
            while let Ok(Some(ended)) =
                tokio::time::timeout_at(until.into(), running.join_next()).await
            {
                match ended {
                    Ok(record) => self.keep_record(record),
                    Err(e) => self.errors.push(format!("an invocation task failed: {e}")),
                }
            }
        }
        if !self.wait_exit(handed_at + grace).await {
            self.errors.push(format!(
                "the extension did not exit within the shutdown deadline ({} ms) and was killed",
                grace.as_millis()
            ));
            self.kill().await;
        }
        if let Some(at) = self.exited_at {
            self.shutdown_duration = Some(at.saturating_duration_since(handed_at));
        }
    }

    /// Stops delivery: the destination is gone with the process. A POST it answered just before
    /// exiting still counts, so what is in flight is settled first (returns as soon as nothing
    /// is; the bound is generous for a busy machine).
    async fn stop_delivery(&mut self) {
        self.hub.settle(Duration::from_millis(1_000)).await;
        self.hub.stop();
        if let Some(mut d) = self.deliverer.take() {
            d.0.abort();
            let _ = (&mut d.0).await;
        }
        for t in std::mem::take(&mut self.output_tasks) {
            let _ = tokio::time::timeout(Duration::from_secs(1), t).await;
        }
    }

    /// What the telemetry hub emitted and delivered, counted (with what the history limit
    /// pruned); an error is recorded for events never delivered.
    fn tally_delivery(&mut self) -> Delivery {
        let (entries, telemetry_posts) = self.hub.take();
        let pruned = self.hub.pruned();
        let mut events_sent = Vec::new();
        let mut events_sent_raw = Vec::new();
        let mut event_times = Vec::new();
        for e in entries.into_iter().filter(|e| e.eligible) {
            events_sent_raw.push(String::from_utf8_lossy(&e.raw).into_owned());
            event_times.push(EventTiming {
                event_type: e.event_type,
                emitted_at: e.emitted_at,
                delivered_at: e.delivered_at,
            });
            events_sent.push(e.value);
        }
        let undelivered_events = pruned.undelivered
            + event_times
                .iter()
                .filter(|t| t.delivered_at.is_none())
                .count();
        let mut events_by_type = pruned.by_type;
        for t in &event_times {
            *events_by_type.entry(t.event_type.clone()).or_insert(0) += 1;
        }
        let failed_posts = telemetry_posts
            .iter()
            .filter(|p| !p.status.is_some_and(|s| (200..300).contains(&s)))
            .count();
        let totals = RunTotals {
            events_sent: pruned.events + events_sent.len(),
            events_by_type,
            invocations: self.invocations_total,
            invocations_by_status: std::mem::take(&mut self.by_status),
            max_extension_overhead: self.max_overhead,
            telemetry_posts: pruned.posts + telemetry_posts.len(),
            failed_telemetry_posts: pruned.failed_posts + failed_posts,
            next_calls: 0,
        };
        if undelivered_events > 0 {
            self.errors.push(format!(
                "{undelivered_events} telemetry event(s) were never delivered to the extension"
            ));
        }
        Delivery {
            events_sent,
            events_sent_raw,
            event_times,
            undelivered_events,
            telemetry_posts,
            totals,
        }
    }

    async fn finish(mut self) -> SimReport {
        use std::os::unix::process::ExitStatusExt;
        let function_cpu_ns = match self.function.take() {
            Some(f) => f.stop().await,
            None => None,
        };
        self.stop_delivery().await;
        let delivery = self.tally_delivery();
        let rec = std::mem::take(&mut *self.shared.lock());
        let totals = RunTotals {
            next_calls: rec.next_calls_total,
            ..delivery.totals
        };
        let extension_output =
            std::mem::take(&mut *self.output.lock().unwrap_or_else(|e| e.into_inner()));
        SimReport {
            runtime_api: self.control_plane.addr.to_string(),
            pid: self.pid,
            spawned_at: self.spawned_at,
            register_headers: rec.register_headers,
            register_body: rec.register_body,
            register_status: rec.register_status,
            extension_name: rec.extension_name,
            subscription_body: rec.subscription_body,
            subscribe_status: rec.subscribe_status,
            subscribe_error: rec.subscribe_error,
            init_errors: rec.init_errors,
            exit_errors: rec.exit_errors,
            unknown_requests: rec.unknown_requests,
            events_sent: delivery.events_sent,
            events_sent_raw: delivery.events_sent_raw,
            event_times: delivery.event_times,
            undelivered_events: delivery.undelivered_events,
            invocations: self.invocations,
            cold_start: self.cold_start,
            init_duration: self.init_duration,
            next_calls: rec.next_calls,
            cpu_ns_at_next: rec.cpu_ns_at_next,
            peak_rss_kb_before_shutdown: self.peak_rss_kb_before_shutdown,
            rss_kb_before_shutdown: self.rss_kb_before_shutdown,
            cpu_ns_before_shutdown: self.cpu_ns_before_shutdown,
            telemetry_posts: delivery.telemetry_posts,
            shutdown_at: self.shutdown_at,
            shutdown_duration: self.shutdown_duration,
            exited_at: self.exited_at,
            exit_code: self.exit.and_then(|s| s.code()),
            exit_signal: self.exit.and_then(|s| s.signal()),
            killed: self.killed,
            extension_output,
            errors: self.errors,
            totals,
            function_pid: self.function_pid,
            function_cpu_ns,
        }
    }
}

/// Emits events from the tasks of concurrent invocations.
#[derive(Clone)]
struct Emitter {
    hub: Arc<TelemetryHub>,
    emitted: Arc<std::sync::atomic::AtomicUsize>,
}

impl Emitter {
    /// Hands an event to the Telemetry API, its `time` written in one of the RFC 3339 forms
    /// Lambda's clock may produce.
    fn emit(&self, mut event: Value) {
        let n = self
            .emitted
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        events::vary_time(&mut event, n);
        self.hub.emit(event);
    }
}

/// One invocation under Lambda Managed Instances, run as a task beside the others.
struct ConcurrentInvocation {
    index: usize,
    version: String,
    request_id: String,
    tenant_id: Option<String>,
    trace: Option<Trace>,
    status: String,
    error_type: Option<String>,
    pause: Duration,
    duration: Duration,
    log_lines: usize,
    log_records: Vec<Value>,
    listener_port: Option<u16>,
}

impl ConcurrentInvocation {
    /// `platform.start`, JSON log records carrying the requestId (the only log format there),
    /// then `platform.report`; no runtimeDone.
    async fn run(self, emitter: Emitter) -> InvocationRecord {
        tokio::time::sleep(self.pause).await;
        let start_sys = SystemTime::now();
        let invoked_at = Instant::now();
        emitter.emit(events::with_tenant(
            events::platform_start(
                start_sys,
                &self.request_id,
                &self.version,
                self.trace.as_ref(),
            ),
            self.tenant_id.as_deref(),
        ));
        for k in 0..self.log_lines {
            let at = invoked_at
                + self
                    .duration
                    .mul_f64((k + 1) as f64 / (self.log_lines + 1) as f64);
            tokio::time::sleep_until(at.into()).await;
            let line = LogLine {
                request_id: &self.request_id,
                tenant_id: self.tenant_id.as_deref(),
                k,
                n: self.log_lines,
                status: &self.status,
                error_type: self.error_type.as_deref(),
                custom: &self.log_records,
            };
            let mut event = line.event(true);
            if k == 0 && self.index % 4 == 3 {
                // A record written outside the handler's context (a background thread): no
                // requestId, so nothing says which of the running invocations it belongs to.
                if let Some(record) = event["record"].as_object_mut() {
                    record.remove("requestId");
                }
            }
            emitter.emit(event);
        }
        tokio::time::sleep_until((invoked_at + self.duration).into()).await;
        let runtime_duration = invoked_at.elapsed();
        let outcome = RuntimeOutcome {
            request_id: self.request_id.clone(),
            status: self.status.clone(),
            error_type: self.error_type.clone(),
            start: start_sys,
            duration: runtime_duration,
            produced_bytes: 0,
            trace: self.trace,
            tenant_id: self.tenant_id.clone(),
        };
        emitter.emit(events::managed_report(SystemTime::now(), &outcome));
        InvocationRecord {
            tenant_id: self.tenant_id,
            index: self.index,
            request_id: self.request_id,
            status: self.status,
            error_type: self.error_type,
            invoked_at,
            runtime_duration,
            runtime_done_emitted: Instant::now(),
            next_called_at: None,
            extension_overhead: Duration::ZERO,
            listener_port: self.listener_port,
        }
    }
}

/// The k-th of `n` log lines of an invocation; the last line of a failed invocation is its error.
#[derive(Clone, Copy)]
struct LogLine<'a> {
    request_id: &'a str,
    tenant_id: Option<&'a str>,
    k: usize,
    n: usize,
    status: &'a str,
    error_type: Option<&'a str>,
    /// `SimConfig::log_records`.
    custom: &'a [Value],
}

impl LogLine<'_> {
    /// The line as a `function` event: a JSON record (with its requestId, and tenantId in tenant
    /// isolation mode), or text.
    fn event(&self, json: bool) -> Value {
        let now = SystemTime::now();
        let k = self.k;
        if !self.custom.is_empty() {
            let mut record = self.custom[k % self.custom.len()].clone();
            if let Some(fields) = record.as_object_mut() {
                fields
                    .entry("timestamp")
                    .or_insert_with(|| Value::from(events::rfc3339(now)));
                fields
                    .entry("requestId")
                    .or_insert_with(|| Value::from(self.request_id));
                let with_tenant =
                    events::with_tenant(events::event("function", now, record), self.tenant_id);
                return with_tenant;
            }
            return events::event("function", now, record);
        }
        let (level, message) = if k + 1 == self.n && self.status == "error" {
            let et = self.error_type.unwrap_or("Error");
            (
                "ERROR",
                format!(
                    "Invoke Error \t{{\"errorType\":\"{et}\",\"errorMessage\":\"simulated failure\",\"stack\":[\"{et}: simulated failure\",\"    at Runtime.handler (/var/task/index.mjs:12:11)\"]}}"
                ),
            )
        } else {
            match k % 3 {
                0 => ("INFO", format!("handling request, step {}", k + 1)),
                1 => ("DEBUG", format!("cache lookup done, step {}", k + 1)),
                _ => ("INFO", format!("wrote 3 items, step {}", k + 1)),
            }
        };
        if json {
            events::with_tenant(
                events::function_json_log(now, self.request_id, level, &message),
                self.tenant_id,
            )
        } else {
            events::function_text_log(now, self.request_id, level, &message)
        }
    }
}

/// The error type Lambda gives an invocation that ran out of memory.
const OUT_OF_MEMORY: &str = "Runtime.OutOfMemory";

/// The telemetry of a run, as the hub saw it delivered.
struct Delivery {
    events_sent: Vec<Value>,
    events_sent_raw: Vec<String>,
    event_times: Vec<EventTiming>,
    undelivered_events: usize,
    telemetry_posts: Vec<super::TelemetryPost>,
    totals: RunTotals,
}

/// One invocation, done: what the report will say, what was recorded, and the extension's next
/// `/event/next` (`None` when it did not call).
struct Invoked {
    outcome: RuntimeOutcome,
    report: ReportArgs,
    record: InvocationRecord,
    next: Option<PendingNext>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_tail_cuts_at_a_line_behind_a_marker() {
        let mut s = String::new();
        for i in 0..100 {
            s.push_str(&format!("line {i:03} é\n"));
        }
        let before = s.clone();
        keep_tail(&mut s, 1000);
        assert_eq!(s, before, "below twice the limit nothing is cut");
        keep_tail(&mut s, 500);
        assert!(s.starts_with(OUTPUT_CUT));
        let rest = &s[OUTPUT_CUT.len()..];
        assert!(rest.starts_with("line ") && before.ends_with(rest));
        assert!(rest.len() <= 500 && rest.len() > 450, "{}", rest.len());
    }
}
