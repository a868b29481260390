//! A loopback stand-in for the Lambda control plane: the Extensions API, the Telemetry API with
//! Lambda's buffered delivery, and a driver that runs an extension binary through init, a series of
//! invocations and shutdown, recording what happened.
//!
//! Events are written as raw JSON shaped like the AWS schema (see [`events`]), never through the
//! extension's own Rust types, so that a mistake in those types cannot cancel out in tests.
//! [`otlp_receiver`] decodes what a [`RecordingEndpoint`] used as OTLP/HTTP receiver got.
//!
//! ```no_run
//! # async fn demo() -> Result<(), lambda_sim::SimError> {
//! use lambda_sim::{self as sim, Behaviour, RecordingEndpoint, SimConfig};
//! let sink = RecordingEndpoint::start(Behaviour::ok()).await?;
//! let report = sim::run(SimConfig {
//!     extension_path: "target/release/lambda-telemetry-bridge".into(),
//!     extension_env: vec![("DISPATCH_POST_URI".into(), sink.url())],
//!     invocations: 5,
//!     ..SimConfig::default()
//! })
//! .await?;
//! assert_eq!(report.undelivered_events, 0);
//! assert_eq!(sink.received_events(), report.events_sent);
//! # Ok(())
//! # }
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;

mod control_plane;
mod cpu_function;
mod driver;
pub mod events;
pub mod fleet;
pub mod otlp_receiver;
pub mod procfs;
pub mod prometheus;
mod recorder;
pub mod stats;
mod telemetry;
pub mod tool;

pub use control_plane::{parse_http_uri, validate_subscription, SCHEMA_VERSIONS};
pub use recorder::{posted_events, Behaviour, RecordedRequest, RecordingEndpoint};
pub use telemetry::{Subscription, RETRIES, RETRY_BACKOFF};

/// Errors of the simulator.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// A loopback listener could not be opened.
    #[error("cannot listen on a loopback port: {0}")]
    Bind(#[source] std::io::Error),
    /// The extension binary could not be started.
    #[error("cannot start the extension {path}: {source}")]
    Spawn {
        /// The binary.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP client that delivers telemetry could not be built.
    #[error("cannot build the telemetry HTTP client: {0}")]
    HttpClient(String),
    /// The extension did not finish its init phase. The report holds what happened so far.
    #[error("extension init failed: {reason}")]
    InitFailed {
        /// What went wrong.
        reason: String,
        /// Everything recorded until the extension was stopped.
        report: Box<SimReport>,
    },
}

/// Called after each invocation (when the extension called `/event/next` again, or gave up).
pub type ProgressFn = Box<dyn FnMut(&InvocationRecord) + Send>;

/// How to run the simulation. Build with `..SimConfig::default()`.
pub struct SimConfig {
    /// The extension binary.
    pub extension_path: PathBuf,
    /// Added to the extension's environment (after the Lambda variables, so these win).
    pub extension_env: Vec<(String, String)>,
    /// Give the extension the simulator's whole environment too (default false: a clean
    /// Lambda-like environment with only `PATH`, the Lambda variables and `extension_env`).
    pub inherit_env: bool,
    /// Number of invocations; 0: no limit, invocations go on until [`stop`](Self::stop) turns
    /// true.
    pub invocations: usize,
    /// When this turns `true`, the current invocation is finished, no new one starts and the
    /// extension gets SHUTDOWN as after the last invocation.
    pub stop: Option<tokio::sync::watch::Receiver<bool>>,
    /// Keep at most about this many events, telemetry POSTs, invocations and `/event/next` calls
    /// in the report (the oldest finished ones are dropped; [`SimReport::totals`] keeps counting
    /// them) and only the last 1 MiB of the extension's captured output. For long runs; `None`
    /// (the default) keeps everything.
    pub history_limit: Option<usize>,
    /// Function name (`AWS_LAMBDA_FUNCTION_NAME`, register answer, ARN).
    pub function_name: String,
    /// Function version (`AWS_LAMBDA_FUNCTION_VERSION`, register answer, `platform.start`).
    pub function_version: String,
    /// Configured memory (MB).
    pub memory_mb: u64,
    /// Function timeout: INVOKE's `deadlineMs` is now + this; a timed-out invocation runs this long.
    pub function_timeout_ms: u64,
    /// Base runtime duration per invocation (varied ±50%).
    pub invoke_duration_ms: u64,
    /// Base duration of the runtime's own init (varied ±25%), concurrent with the extension's.
    pub runtime_init_ms: u64,
    /// `function` log lines per invocation (alternating text and JSON records).
    pub log_lines_per_invoke: usize,
    /// What the function logs, instead of the built-in lines: line k of every invocation is
    /// `log_records[k % len]`, a string as a text line exactly as given, an object as a JSON
    /// record (its `timestamp` and `requestId` added when it has none, and its `tenantId` in
    /// tenant isolation mode). Empty (the default): the built-in lines.
    pub log_records: Vec<serde_json::Value>,
    /// Every Nth invocation ends with status `error`.
    pub error_every: Option<usize>,
    /// Every Nth invocation ends with status `timeout` (takes precedence over `error_every`).
    pub timeout_every: Option<usize>,
    /// Every Nth invocation ends with status `failure` (`Runtime.ExitError`; takes precedence
    /// over `timeout_every` and `error_every`).
    pub failure_every: Option<usize>,
    /// Every Nth invocation runs out of memory: status `error`, `Runtime.OutOfMemory`, and the
    /// report's max memory used equal to the memory size (takes precedence over the others).
    pub out_of_memory_every: Option<usize>,
    /// Every Nth invocation, Lambda also emits a `platform.logsDropped` event.
    pub logs_dropped_every: Option<usize>,
    /// Idle time between two invocations.
    pub between_invokes_ms: u64,
    /// SIGSTOP the extension once it called `/event/next` after an invocation, SIGCONT right
    /// before handing it the next event (Lambda's freeze/thaw).
    pub freeze_between_invokes: bool,
    /// SHUTDOWN's `deadlineMs` is now + this; the extension is SIGKILLed then.
    pub shutdown_deadline_ms: u64,
    /// Registration, subscription and the first `/event/next` must happen within this.
    pub init_timeout_ms: u64,
    /// Timeout of one telemetry POST to the extension's listener.
    pub telemetry_post_timeout_ms: u64,
    /// Capture the extension's stdout and stderr into the report (else they are inherited).
    pub capture_output: bool,
    /// Start the extension in a process group of its own, so that a Ctrl-C in the terminal (which
    /// signals the whole foreground group) reaches only the simulator, which then shuts the
    /// extension down the Lambda way. Default false.
    pub own_process_group: bool,
    /// Give INVOKE and the platform events an X-Ray tracing header.
    pub xray: bool,
    /// Every Nth invocation's X-Ray header says `Sampled=0` (nothing upstream traced it).
    pub unsampled_every: Option<usize>,
    /// Trace ids from this seed: two runs with the same seed give their invocations the same
    /// trace ids (`None`, the default: random ones).
    pub trace_seed: Option<u64>,
    /// Emit `platform.restore*` events (SnapStart restore) instead of `platform.init*`.
    pub snap_start: bool,
    /// Before handing over SHUTDOWN, force delivery of everything buffered, ignoring the
    /// subscription's buffering limits, and wait (up to `function_timeout_ms`) until it was
    /// answered. Real Lambda does not do this (default false); it isolates shutdown handling from
    /// buffering delays when a test wants that.
    pub flush_before_shutdown: bool,
    /// Never emit the last invocation's `platform.report` (one Lambda lost, or delayed past the
    /// shutdown deadline). Default false.
    pub withhold_last_report: bool,
    /// Push telemetry over a new connection each time, instead of one kept alive as AWS's
    /// emulator does (an extension's listener then pays for every accept). Default false.
    pub new_connection_per_push: bool,
    /// Refuse the Telemetry API subscription with this status (a 4xx as `ValidationError`, a
    /// 5xx as `ServiceException`), as Lambda does when it cannot subscribe the extension.
    /// Default `None`: accepted when valid.
    pub refuse_subscription: Option<u16>,
    /// Lambda Managed Instances with this many invocations running at once (`None`: the
    /// default model). The rules change as AWS documents them: registering for INVOKE is
    /// refused (403 `Extension.InvalidEventType`), subscriptions need schema 2025-01-29 (400
    /// otherwise), `/event/next` answers only SHUTDOWN, invocations overlap, `platform.report`
    /// carries status, `durationMs` and spans only, there is no `platform.runtimeDone`, function
    /// logs are JSON records with their `requestId` (but the first line of every fourth
    /// invocation, written as if from a background thread, has none), and nothing is frozen.
    /// `timeout_every` and `freeze_between_invokes` do not apply there.
    pub managed_instances: Option<usize>,
    /// Managed Instances: hand over SHUTDOWN as soon as the last invocation has started, while
    /// invocations are still running (their logs and reports follow SHUTDOWN). Default false:
    /// SHUTDOWN after the last report, as when Lambda drains an environment first.
    pub shutdown_during_invocations: bool,
    /// Tenant isolation: invocations are spread over this many tenant ids, carried by
    /// `platform.start`, `platform.runtimeDone`, `platform.report` and JSON log records (0: no
    /// tenants).
    pub tenants: usize,
    /// A CPU-bound function: instead of sleeping through each invocation, the driver asks a
    /// process of its own (spawned once at init, like a real runtime, and killed at the end of
    /// the run) to burn [`CpuFunction::cpu_ms_per_invoke`] of its own CPU time. The
    /// invocation's runtime duration is then the wall time the burn took, which is what a
    /// CPU quota shared with the extension lengthens. `None` (the default): the function
    /// sleeps for `invoke_duration_ms`. Timed-out invocations still last the function timeout;
    /// Managed Instances invocations ignore it.
    pub cpu_function: Option<CpuFunction>,
    /// Called after each invocation.
    pub progress: Option<ProgressFn>,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            extension_path: PathBuf::from("target/release/lambda-telemetry-bridge"),
            extension_env: Vec::new(),
            inherit_env: false,
            invocations: 20,
            stop: None,
            history_limit: None,
            function_name: "sim-function".into(),
            function_version: "$LATEST".into(),
            memory_mb: 128,
            function_timeout_ms: 3000,
            invoke_duration_ms: 8,
            runtime_init_ms: 120,
            log_lines_per_invoke: 3,
            log_records: Vec::new(),
            error_every: None,
            timeout_every: None,
            failure_every: None,
            out_of_memory_every: None,
            logs_dropped_every: None,
            between_invokes_ms: 0,
            freeze_between_invokes: false,
            shutdown_deadline_ms: 2000,
            init_timeout_ms: 10_000,
            telemetry_post_timeout_ms: 10_000,
            capture_output: true,
            own_process_group: false,
            xray: true,
            unsampled_every: None,
            trace_seed: None,
            snap_start: false,
            flush_before_shutdown: false,
            withhold_last_report: false,
            new_connection_per_push: false,
            refuse_subscription: None,
            managed_instances: None,
            shutdown_during_invocations: false,
            tenants: 0,
            cpu_function: None,
            progress: None,
        }
    }
}

impl fmt::Debug for SimConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimConfig")
            .field("extension_path", &self.extension_path)
            .field("extension_env", &self.extension_env)
            .field("inherit_env", &self.inherit_env)
            .field("invocations", &self.invocations)
            .field("stop", &self.stop.as_ref().map(|s| *s.borrow()))
            .field("history_limit", &self.history_limit)
            .field("function_name", &self.function_name)
            .field("function_version", &self.function_version)
            .field("memory_mb", &self.memory_mb)
            .field("function_timeout_ms", &self.function_timeout_ms)
            .field("invoke_duration_ms", &self.invoke_duration_ms)
            .field("runtime_init_ms", &self.runtime_init_ms)
            .field("log_lines_per_invoke", &self.log_lines_per_invoke)
            .field("log_records", &self.log_records.len())
            .field("error_every", &self.error_every)
            .field("timeout_every", &self.timeout_every)
            .field("failure_every", &self.failure_every)
            .field("out_of_memory_every", &self.out_of_memory_every)
            .field("logs_dropped_every", &self.logs_dropped_every)
            .field("between_invokes_ms", &self.between_invokes_ms)
            .field("freeze_between_invokes", &self.freeze_between_invokes)
            .field("shutdown_deadline_ms", &self.shutdown_deadline_ms)
            .field("init_timeout_ms", &self.init_timeout_ms)
            .field("telemetry_post_timeout_ms", &self.telemetry_post_timeout_ms)
            .field("capture_output", &self.capture_output)
            .field("own_process_group", &self.own_process_group)
            .field("xray", &self.xray)
            .field("refuse_subscription", &self.refuse_subscription)
            .field("snap_start", &self.snap_start)
            .field("flush_before_shutdown", &self.flush_before_shutdown)
            .field("managed_instances", &self.managed_instances)
            .field("tenants", &self.tenants)
            .field("cpu_function", &self.cpu_function)
            .field("progress", &self.progress.as_ref().map(|_| "Fn"))
            .finish()
    }
}

/// The program a CPU-bound function runs in ([`SimConfig::cpu_function`]).
///
/// The protocol, one line each way: the driver writes a decimal number of microseconds and a
/// newline to the program's stdin; the program burns that much of its own CPU time (not wall
/// time) and answers one line on its stdout that starts with `ok` (the rest, e.g. the CPU time
/// it measured, is ignored). `bridge-bench`'s `bench-cpu-function` is such a program. Each
/// invocation's burn is split into `log_lines_per_invoke + 1` requests, with a function log
/// line emitted between two of them, so the telemetry is the same as a sleeping function's.
#[derive(Debug, Clone, PartialEq)]
pub struct CpuFunction {
    /// The program (a wrapper script may put it into a cgroup first, then `exec` it).
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// CPU time burned per invocation, in milliseconds.
    pub cpu_ms_per_invoke: f64,
}

/// A call to `/init/error` or `/exit/error`.
#[derive(Debug, Clone)]
pub struct ErrorReport {
    /// Request headers (lowercase names).
    pub headers: Vec<(String, String)>,
    /// `Lambda-Extension-Function-Error-Type`.
    pub error_type: Option<String>,
    /// The body (a JSON string value when it was not JSON), `None` when empty.
    pub body: Option<Value>,
    /// When it arrived.
    pub at: Instant,
}

/// One invocation.
#[derive(Debug, Clone)]
pub struct InvocationRecord {
    /// Its tenant (`SimConfig::tenants`).
    pub tenant_id: Option<String>,
    /// 0-based.
    pub index: usize,
    /// The request id.
    pub request_id: String,
    /// `success`, `error` or `timeout`.
    pub status: String,
    /// Error type when not `success`.
    pub error_type: Option<String>,
    /// When the INVOKE was handed to the extension (Managed Instances: when it started).
    pub invoked_at: Instant,
    /// Runtime duration (INVOKE → runtimeDone).
    pub runtime_duration: Duration,
    /// When `platform.runtimeDone` was emitted (Managed Instances: `platform.report`).
    pub runtime_done_emitted: Instant,
    /// When the extension called `/event/next` again (`None`: it did not, see `SimReport::errors`;
    /// always under Managed Instances, where extensions do not take part in invocations).
    pub next_called_at: Option<Instant>,
    /// `next_called_at - runtime_done_emitted` (0 when the extension called before the runtime
    /// was done; the time waited when it never called): Lambda's postRuntimeExtensionsDuration.
    pub extension_overhead: Duration,
    /// The port of the extension's telemetry listener, from its subscription (`None` before it
    /// subscribed): where a test can POST to the listener without guessing a free port.
    pub listener_port: Option<u16>,
}

/// One POST attempt of a telemetry batch to the extension's listener.
#[derive(Debug, Clone)]
pub struct TelemetryPost {
    /// Events in the batch.
    pub events: usize,
    /// Body size.
    pub bytes: usize,
    /// 1 for the first attempt, up to 1 + [`RETRIES`].
    pub attempt: u32,
    /// HTTP status, `None` on a connection error or timeout.
    pub status: Option<u16>,
    /// The connection error.
    pub error: Option<String>,
    /// When the POST started.
    pub sent_at: Instant,
    /// When it was answered (or failed).
    pub answered_at: Instant,
}

/// Timing of one event of `SimReport::events_sent` (same index).
#[derive(Debug, Clone)]
pub struct EventTiming {
    /// The event's `type`.
    pub event_type: String,
    /// When it was put into Lambda's buffer.
    pub emitted_at: Instant,
    /// When the POST containing it was answered with 2xx (`None`: never delivered).
    pub delivered_at: Option<Instant>,
}

/// Counts over a whole run. Without [`SimConfig::history_limit`] they equal what the report's
/// lists give; with it, they also count what was dropped from those lists.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunTotals {
    /// Events of the subscribed stream emitted (cf. `SimReport::events_sent`).
    pub events_sent: usize,
    /// Those events per `type`.
    pub events_by_type: BTreeMap<String, usize>,
    /// Invocations (cf. `SimReport::invocations`).
    pub invocations: usize,
    /// Invocations per status (`success`, `error`, `timeout`).
    pub invocations_by_status: BTreeMap<String, usize>,
    /// The longest extension overhead of an invocation.
    pub max_extension_overhead: Option<Duration>,
    /// POST attempts to the telemetry destination (cf. `SimReport::telemetry_posts`).
    pub telemetry_posts: usize,
    /// Those not answered with 2xx.
    pub failed_telemetry_posts: usize,
    /// `/event/next` calls (cf. `SimReport::next_calls`).
    pub next_calls: usize,
}

/// Everything that happened during a run.
#[derive(Debug, Clone)]
pub struct SimReport {
    /// `AWS_LAMBDA_RUNTIME_API` given to the extension.
    pub runtime_api: String,
    /// The extension's pid.
    pub pid: Option<u32>,
    /// When the extension was spawned (reference point for the other instants).
    pub spawned_at: Instant,
    /// Headers of `/register` (lowercase names).
    pub register_headers: Vec<(String, String)>,
    /// Body of `/register`.
    pub register_body: Option<Value>,
    /// Status answered to `/register`.
    pub register_status: Option<u16>,
    /// Value of `Lambda-Extension-Name` at registration.
    pub extension_name: Option<String>,
    /// Body of the last `PUT /telemetry`.
    pub subscription_body: Option<Value>,
    /// Status answered to the last `PUT /telemetry`.
    pub subscribe_status: Option<u16>,
    /// Why the last subscription was rejected.
    pub subscribe_error: Option<String>,
    /// Calls to `/init/error`.
    pub init_errors: Vec<ErrorReport>,
    /// Calls to `/exit/error`.
    pub exit_errors: Vec<ErrorReport>,
    /// Requests to unknown control-plane paths (`METHOD /path`).
    pub unknown_requests: Vec<String>,
    /// The events of the subscribed stream, in emission order (events of types the extension
    /// did not subscribe to are left out).
    pub events_sent: Vec<Value>,
    /// The exact bytes of each of `events_sent`, as the Telemetry API POSTed them (written in
    /// Lambda's style, not serde_json's: see `events::encode_like_lambda`).
    pub events_sent_raw: Vec<String>,
    /// Timing of each of `events_sent`.
    pub event_times: Vec<EventTiming>,
    /// Events of the run never delivered (dropped after retries, or still buffered at exit),
    /// counted over the whole run like [`totals`](Self::totals).
    pub undelivered_events: usize,
    /// Invocations, in order.
    pub invocations: Vec<InvocationRecord>,
    /// Spawn → first `/event/next`.
    pub cold_start: Option<Duration>,
    /// Init duration as reported in `platform.initReport` (spawn → extension and runtime ready).
    pub init_duration: Option<Duration>,
    /// Every `/event/next` call.
    pub next_calls: Vec<Instant>,
    /// The extension's CPU time in ns (all threads: the sum of the first field of
    /// `/proc/PID/task/*/schedstat`) when each of `next_calls` arrived (same index); `None` where
    /// `/proc` could not tell. See [`procfs::cpu_ns`].
    pub cpu_ns_at_next: Vec<Option<u64>>,
    /// The extension's peak RSS (`VmHWM`, KiB) right before SHUTDOWN was handed over (`None`:
    /// no SHUTDOWN handed over, or `/proc` could not tell).
    pub peak_rss_kb_before_shutdown: Option<u64>,
    /// Its current RSS (`VmRSS`, KiB) at the same moment.
    pub rss_kb_before_shutdown: Option<u64>,
    /// Its CPU time (ns, all threads, as in `cpu_ns_at_next`) at the same moment (after the
    /// forced delivery of [`SimConfig::flush_before_shutdown`], when asked for).
    pub cpu_ns_before_shutdown: Option<u64>,
    /// Every POST attempt to the telemetry destination.
    pub telemetry_posts: Vec<TelemetryPost>,
    /// When SHUTDOWN was handed to the extension.
    pub shutdown_at: Option<Instant>,
    /// SHUTDOWN handed over → process exit.
    pub shutdown_duration: Option<Duration>,
    /// When the process exited.
    pub exited_at: Option<Instant>,
    /// Exit code (`None` when killed by a signal or never observed).
    pub exit_code: Option<i32>,
    /// The signal that ended the process, if any.
    pub exit_signal: Option<i32>,
    /// The simulator had to SIGKILL the extension.
    pub killed: bool,
    /// The extension's stdout and stderr (when captured).
    pub extension_output: String,
    /// Problems observed (a missing `/event/next`, a process that exited early, …).
    pub errors: Vec<String>,
    /// Counts over the whole run (the lists above may hold only the latest part of it, see
    /// [`SimConfig::history_limit`]).
    pub totals: RunTotals,
    /// The CPU-bound function's pid ([`SimConfig::cpu_function`]).
    pub function_pid: Option<u32>,
    /// Its CPU time (ns, all threads, as in `cpu_ns_at_next`) at the end of the run, right
    /// before it was stopped: what it really burned.
    pub function_cpu_ns: Option<u64>,
}

impl SimReport {
    /// Value of a `/register` header (case-insensitive).
    pub fn register_header(&self, name: &str) -> Option<&str> {
        self.register_headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The sent events of one `type`.
    pub fn events_of_type(&self, ty: &str) -> Vec<&Value> {
        self.events_sent
            .iter()
            .filter(|e| e.get("type").and_then(Value::as_str) == Some(ty))
            .collect()
    }

    /// Number of sent events per `type` (over the whole run).
    pub fn event_counts(&self) -> BTreeMap<String, usize> {
        self.totals.events_by_type.clone()
    }

    /// Invocations with the given status (over the whole run).
    pub fn count_status(&self, status: &str) -> usize {
        self.totals
            .invocations_by_status
            .get(status)
            .copied()
            .unwrap_or(0)
    }

    /// Whether the lists of the report hold only the latest part of the run
    /// ([`SimConfig::history_limit`]).
    pub fn history_pruned(&self) -> bool {
        self.totals.events_sent > self.events_sent.len()
            || self.totals.invocations > self.invocations.len()
            || self.totals.telemetry_posts > self.telemetry_posts.len()
            || self.totals.next_calls > self.next_calls.len()
    }

    /// Whether the extension went through init, every invocation and shutdown cleanly: exit code
    /// 0, not killed, every event delivered, no error observed.
    pub fn clean(&self) -> bool {
        self.exit_code == Some(0)
            && !self.killed
            && self.undelivered_events == 0
            && self.errors.is_empty()
            && self.init_errors.is_empty()
            && self.exit_errors.is_empty()
    }
}

/// Runs the extension at `cfg.extension_path` against the simulated control plane: init, then
/// `cfg.invocations` invocations, then SHUTDOWN. Problems of the extension after init are recorded
/// in [`SimReport::errors`]; a failed init is [`SimError::InitFailed`] (which carries the report).
pub async fn run(cfg: SimConfig) -> Result<SimReport, SimError> {
    driver::run(cfg).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send<T: Send>(_: &T) {}

    #[test]
    fn run_future_is_send() {
        let fut = run(SimConfig::default());
        assert_send(&fut);
    }
}
