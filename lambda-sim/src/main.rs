//! `lambda-sim`: runs the extension against a loopback stand-in for the Lambda control plane and
//! checks that every telemetry event made it through, exactly once and in order; with an embedded
//! OTLP/HTTP receiver, it also shows what the extension exported as OpenTelemetry.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use lambda_sim::fleet::{self, FleetConfig, FleetFunction, FleetReport};
use lambda_sim::otlp_receiver::OtlpStats;
use lambda_sim::{
    self as sim, posted_events, Behaviour, InvocationRecord, RecordingEndpoint, SimConfig,
    SimError, SimReport,
};
use serde_json::Value;

const USAGE: &str = "\
lambda-sim: run the extension against a simulated Lambda control plane

USAGE:
    lambda-sim [OPTIONS]

OPTIONS:
    --invocations N           number of invocations (default 20); 0: until SIGINT/SIGTERM (Ctrl-C)
    --errors-every N          every Nth invocation ends with status \"error\"
    --timeouts-every N        every Nth invocation ends with status \"timeout\"
    --logs-dropped-every N    every Nth invocation, Lambda also emits platform.logsDropped
    --function-timeout-ms N   function timeout; a timed-out invocation lasts this long (default 3000)
    --function-ms N           how long each invocation's function runs (default 8)
    --between-ms N            idle time between invocations (default 0)
    --freeze                  SIGSTOP the extension between invocations, as Lambda freezes it
    --snap-start              emit SnapStart restore events instead of init events
    --managed-instances N     Lambda Managed Instances: N invocations at once, no INVOKE for the
                              extension, no runtimeDone, no freeze, schema 2025-01-29 required
    --tenants K               tenant isolation: spread invocations over K tenant ids (tenantId in
                              platform events and JSON logs)
    --environments N          a fleet: N execution environments at once, each its own bridge
                              process (its own faas.instance); each serves --lifetime invocations,
                              shuts down, and a new one cold-starts in its place; --invocations
                              counts across the fleet
    --functions LIST          the fleet's functions, name or name:version, comma-separated
                              (environment i serves the i-th, round-robin; default sim-function)
    --lifetime N              invocations an environment of the fleet serves (default 10)
    --no-otlp                 do not start the embedded OTLP receiver (OTLP output stays off)
    --endpoint-latency-ms N   the embedded endpoints answer after N ms (a network away; default 0)
    --endpoint-jitter-ms N    and up to N ms more, drawn per request (default 0)
    --extension PATH          extension binary (default: lambda-telemetry-bridge next to this binary)
    --quiet                   hide the extension's own logs
    -h, --help                this help

The raw JSON sink (DISPATCH_POST_URI) points to a recording endpoint started by lambda-sim, unless
DISPATCH_POST_URI is set in the environment. Likewise OTLP goes to an embedded OTLP/HTTP receiver
(OTEL_EXPORTER_OTLP_ENDPOINT), whose decoded content the summary shows (requests, spans, metrics,
log records, the first invocation's trace as a tree), unless OTEL_EXPORTER_OTLP_ENDPOINT is set or
--no-otlp is given. BRIDGE_* (e.g. BRIDGE_METRICS_ADDR, BRIDGE_PUSHGATEWAY_URL), DISPATCH_*,
OTEL_* and RUST_LOG variables are passed to the extension.

SIGINT or SIGTERM ends the run after the current invocation: the extension gets SHUTDOWN and the
summary is printed. A second one aborts (the extension is killed).";

/// Events (and POSTs, invocations) kept in memory by a run without an end.
const HISTORY_LIMIT: usize = 5000;
/// How often a run without an end counts and forgets what the endpoints received.
const DRAIN_EVERY: Duration = Duration::from_secs(1);
/// Width of the summary's labels.
const LABEL: usize = 30;

#[derive(Debug, Clone)]
struct Args {
    invocations: usize,
    errors_every: Option<usize>,
    timeouts_every: Option<usize>,
    logs_dropped_every: Option<usize>,
    function_timeout_ms: Option<u64>,
    between_ms: u64,
    function_ms: Option<u64>,
    endpoint_latency_ms: u64,
    endpoint_jitter_ms: u64,
    freeze: bool,
    snap_start: bool,
    no_otlp: bool,
    managed_instances: Option<usize>,
    tenants: usize,
    environments: Option<usize>,
    functions: Vec<FleetFunction>,
    lifetime: usize,
    extension: Option<PathBuf>,
    quiet: bool,
}

fn parse_args(mut it: impl Iterator<Item = String>) -> Result<Option<Args>, String> {
    let mut a = Args {
        invocations: 20,
        errors_every: None,
        timeouts_every: None,
        logs_dropped_every: None,
        function_timeout_ms: None,
        between_ms: 0,
        function_ms: None,
        endpoint_latency_ms: 0,
        endpoint_jitter_ms: 0,
        freeze: false,
        snap_start: false,
        no_otlp: false,
        managed_instances: None,
        tenants: 0,
        environments: None,
        functions: Vec::new(),
        lifetime: 10,
        extension: None,
        quiet: false,
    };
    fn number<T: std::str::FromStr>(flag: &str, v: Option<String>) -> Result<T, String> {
        let v = v.ok_or_else(|| format!("{flag} needs a value"))?;
        v.parse()
            .map_err(|_| format!("{flag}: {v:?} is not a valid number"))
    }
    fn every(flag: &str, v: Option<String>) -> Result<Option<usize>, String> {
        match number::<usize>(flag, v)? {
            0 => Err(format!("{flag} must be at least 1")),
            n => Ok(Some(n)),
        }
    }
    while let Some(arg) = it.next() {
        // Accept --flag=value too.
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = || inline.clone().or_else(|| it.next());
        match flag.as_str() {
            "-h" | "--help" => return Ok(None),
            "--invocations" => a.invocations = number(&flag, value())?,
            "--errors-every" | "--error-every" => a.errors_every = every(&flag, value())?,
            "--timeouts-every" | "--timeout-every" => a.timeouts_every = every(&flag, value())?,
            "--logs-dropped-every" => a.logs_dropped_every = every(&flag, value())?,
            "--function-timeout-ms" => a.function_timeout_ms = Some(number(&flag, value())?),
            "--between-ms" => a.between_ms = number(&flag, value())?,
            "--function-ms" => a.function_ms = Some(number(&flag, value())?),
            "--endpoint-latency-ms" => a.endpoint_latency_ms = number(&flag, value())?,
            "--endpoint-jitter-ms" => a.endpoint_jitter_ms = number(&flag, value())?,
            "--freeze" => a.freeze = true,
            "--snap-start" => a.snap_start = true,
            "--managed-instances" => a.managed_instances = every(&flag, value())?,
            "--tenants" => a.tenants = number(&flag, value())?,
            "--environments" => a.environments = every(&flag, value())?,
            "--functions" => {
                let list = value().ok_or("--functions needs a list")?;
                a.functions = list
                    .split(',')
                    .map(|f| {
                        FleetFunction::parse(f).ok_or_else(|| {
                            format!("--functions: {f:?} is not name or name:version")
                        })
                    })
                    .collect::<Result<_, _>>()?;
            }
            "--lifetime" => {
                a.lifetime = every(&flag, value())?.unwrap_or(1);
            }
            "--no-otlp" => a.no_otlp = true,
            "--quiet" | "-q" => a.quiet = true,
            "--extension" => {
                a.extension = Some(PathBuf::from(value().ok_or("--extension needs a path")?))
            }
            other => return Err(format!("unknown option {other:?} (see --help)")),
        }
    }
    if a.environments.is_none() && a.functions.len() > 1 {
        return Err("--functions with more than one function needs --environments".into());
    }
    if a.managed_instances.is_some() {
        // What the model does not have, refused rather than silently ignored.
        for (given, flag, why) in [
            (a.freeze, "--freeze", "environments are never frozen"),
            (
                a.snap_start,
                "--snap-start",
                "there is no SnapStart restore",
            ),
            (
                a.timeouts_every.is_some(),
                "--timeouts-every",
                "the per-invocation timeout is not enforced",
            ),
        ] {
            if given {
                return Err(format!(
                    "{flag} does not apply to --managed-instances ({why} there)"
                ));
            }
        }
    }
    Ok(Some(a))
}

fn default_extension() -> Result<PathBuf, String> {
    let exe =
        std::env::current_exe().map_err(|e| format!("cannot locate lambda-sim itself: {e}"))?;
    let dir = exe
        .parent()
        .ok_or("cannot locate the directory of lambda-sim")?;
    build_extension_under_cargo(dir)?;
    Ok(dir.join("lambda-telemetry-bridge"))
}

/// Under `cargo run` (which sets `CARGO` and `CARGO_MANIFEST_DIR`), builds the extension next to
/// lambda-sim in the same profile (a no-op when it is up to date), so the README's first command
/// works on a fresh clone and always runs the current bridge: `cargo run --bin lambda-sim` builds
/// only lambda-sim.
fn build_extension_under_cargo(dir: &std::path::Path) -> Result<(), String> {
    let (Some(cargo), Some(manifest_dir)) = (
        std::env::var_os("CARGO"),
        std::env::var_os("CARGO_MANIFEST_DIR"),
    ) else {
        return Ok(()); // not under cargo: the caller reports the missing binary
    };
    let release = dir.file_name().is_some_and(|n| n == "release");
    let mut command = std::process::Command::new(cargo);
    // The extension is another package of the workspace (lambda-sim does not depend on it).
    command.current_dir(manifest_dir).args([
        "build",
        "--quiet",
        "-p",
        "lambda-telemetry-bridge",
        "--bin",
        "lambda-telemetry-bridge",
    ]);
    if release {
        command.arg("--release");
    }
    let status = command
        .status()
        .map_err(|e| format!("cannot run cargo to build the extension: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("building the extension failed ({status})"))
    }
}

/// SIGINT / SIGTERM: the first asks for a graceful end, the second aborts the run, a third (should
/// the process not react) exits at once.
mod signals {
    use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};

    static RECEIVED: AtomicUsize = AtomicUsize::new(0);
    static LAST: AtomicI32 = AtomicI32::new(0);

    extern "C" fn on_signal(sig: libc::c_int) {
        // Only lock-free atomics and _exit here: all async-signal-safe.
        LAST.store(sig, Ordering::SeqCst);
        if RECEIVED.fetch_add(1, Ordering::SeqCst) >= 2 {
            // SAFETY: _exit(2) is async-signal-safe and has no preconditions.
            unsafe { libc::_exit(130) };
        }
    }

    pub fn install() {
        for sig in [libc::SIGINT, libc::SIGTERM] {
            // SAFETY: the handler only touches atomics and calls _exit, which is allowed in a
            // signal handler; it is installed before any other thread exists.
            unsafe {
                libc::signal(sig, on_signal as *const () as libc::sighandler_t);
            }
        }
    }

    /// Signals received so far.
    pub fn received() -> usize {
        RECEIVED.load(Ordering::SeqCst)
    }

    /// The name of the last signal received.
    pub fn last_name() -> &'static str {
        match LAST.load(Ordering::SeqCst) {
            libc::SIGINT => "SIGINT",
            libc::SIGTERM => "SIGTERM",
            _ => "a signal",
        }
    }
}

fn main() -> ExitCode {
    // Die quietly on a closed stdout (`lambda-sim | head`) like other command-line tools.
    // SAFETY: setting a signal disposition to its default at startup, before any thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(Some(a)) => a,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("lambda-sim: {e}");
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    signals::install();
    let rt = match lambda_sim::tool::runtime("lambda-sim") {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    match rt.block_on(run(args)) {
        Ok(Outcome::Ok) => ExitCode::SUCCESS,
        Ok(Outcome::Failed) => ExitCode::FAILURE,
        Ok(Outcome::Aborted) => ExitCode::from(130),
        Err(e) => {
            eprintln!("lambda-sim: {e}");
            ExitCode::FAILURE
        }
    }
}

enum Outcome {
    Ok,
    Failed,
    Aborted,
}

/// What the raw JSON endpoint received.
enum RawReceived {
    /// Every event (a run with an end): compared with what was sent, event by event.
    All(Vec<Value>),
    /// Only counted (a run without an end).
    Counted(usize),
    /// The user's DISPATCH_POST_URI.
    External,
}

/// Where OTLP went.
enum OtlpTarget {
    Embedded { url: String, protocol: String },
    External(String),
    Off,
}

/// Runs the simulation.
async fn run(args: Args) -> Result<Outcome, String> {
    if let Some(slots) = args.environments {
        return run_fleet(args, slots).await;
    }
    let extension = locate_extension(&args)?;
    let forever = args.invocations == 0;
    let mut outputs = Outputs::start(&args).await?;
    outputs.announce(&args, &extension);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let cfg = sim_config(&args, extension, outputs.env.clone(), stop_rx);
    let Some(result) = drive(sim::run(cfg), &stop_tx, &mut outputs, forever).await else {
        // Dropping the run killed the extension.
        println!("lambda-sim: aborted");
        return Ok(Outcome::Aborted);
    };
    let report = match result {
        Ok(r) => r,
        Err(SimError::InitFailed { reason, report }) => {
            println!();
            println!("INIT FAILED: {reason}");
            print_failure_details(&report, &reason);
            return Ok(Outcome::Failed);
        }
        Err(e) => return Err(e.to_string()),
    };
    // The extension has exited: whatever it forwarded has arrived.
    outputs.drain(forever);
    if let Some(name) = outputs.stopped_by {
        println!(
            "lambda-sim: stopped by {name} after {} invocation(s)",
            report.totals.invocations
        );
    }
    let raw = outputs.raw_received(forever);
    let model = if args.managed_instances.is_some() {
        Model::ManagedInstances
    } else {
        Model::Default
    };
    let ok = summary(&report, model, &raw, &outputs.otlp_target, &outputs.otlp);
    Ok(if ok { Outcome::Ok } else { Outcome::Failed })
}

/// A fleet: `slots` environments at once, each a bridge process of its own, replaced after
/// `--lifetime` invocations, all sending to the same endpoints.
async fn run_fleet(args: Args, slots: usize) -> Result<Outcome, String> {
    let extension = locate_extension(&args)?;
    let forever = args.invocations == 0;
    let mut outputs = Outputs::start(&args).await?;
    outputs.announce(&args, &extension);
    let functions = if args.functions.is_empty() {
        vec![FleetFunction::new("sim-function", "$LATEST")]
    } else {
        args.functions.clone()
    };
    println!(
        "lambda-sim: a fleet of {slots} environment(s) at once, each replaced after {} \
         invocation(s); functions {}",
        args.lifetime,
        functions
            .iter()
            .map(|f| format!("{}:{}", f.name, f.version))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let template_args = args.clone();
    let env = outputs.env.clone();
    let template_stop = stop_rx.clone();
    let template_extension = extension.clone();
    let fleet_run = fleet::run(FleetConfig {
        slots,
        functions,
        invocations: args.invocations,
        lifetime: args.lifetime,
        stop: Some(stop_rx),
        keep_reports: !forever,
        template: Box::new(move |spec| {
            // One address serves one /metrics: the first slot's bridges serve it (one after the
            // other); every bridge still pushes, when BRIDGE_PUSHGATEWAY_URL is set.
            let env = env
                .iter()
                .filter(|(k, _)| spec.slot == 0 || k != "BRIDGE_METRICS_ADDR")
                .cloned()
                .collect();
            let mut cfg = sim_config(
                &template_args,
                template_extension.clone(),
                env,
                template_stop.clone(),
            );
            // Several bridges at once: their output is kept, and shown for those that failed.
            cfg.capture_output = true;
            cfg.progress = None;
            cfg.history_limit = None;
            cfg
        }),
        on_finished: Some(Box::new(print_environment)),
        ..FleetConfig::default()
    });
    let Some(fleet) = drive(fleet_run, &stop_tx, &mut outputs, forever).await else {
        println!("lambda-sim: aborted");
        return Ok(Outcome::Aborted);
    };
    outputs.drain(forever);
    if let Some(name) = outputs.stopped_by {
        println!(
            "lambda-sim: stopped by {name} after {} invocation(s)",
            fleet.invocations()
        );
    }
    let raw = outputs.raw_received(forever);
    let ok = fleet_summary(&fleet, &raw, &outputs.otlp_target, &outputs.otlp);
    Ok(if ok { Outcome::Ok } else { Outcome::Failed })
}

fn print_environment(env: &fleet::FinishedEnvironment) {
    let spec = &env.spec;
    let what = match env.report() {
        Some(r) => format!(
            "{} invocation(s), cold start {}, exit {}",
            r.totals.invocations,
            opt_ms(r.cold_start).trim(),
            r.exit_code
                .map(|c| c.to_string())
                .unwrap_or_else(|| "-".into())
        ),
        None => "did not run".into(),
    };
    let function = format!("{}:{}", spec.function.name, spec.function.version);
    println!(
        "  environment {:<3} {function:<18} slot {:<2} {what}",
        spec.index + 1,
        spec.slot + 1
    );
    if let Some(report) = env.report().filter(|r| !r.clean()) {
        println!("--- environment {} output ---", spec.index + 1);
        print!("{}", report.extension_output);
        println!("----------------------------");
    }
}

/// The fleet's totals and checks; whether all hold.
fn fleet_summary(
    fleet: &FleetReport,
    received: &RawReceived,
    otlp_target: &OtlpTarget,
    otlp: &OtlpStats,
) -> bool {
    let mut ok = fleet.clean();
    println!();
    println!("Summary (fleet)");
    println!("===============");
    println!(
        "{:<LABEL$} {:>6}  (at most {} at once)",
        "environments started",
        fleet.environments_started(),
        fleet.max_alive
    );
    for (function, t) in &fleet.totals {
        let statuses = t
            .by_status
            .iter()
            .map(|(s, n)| format!("{n} {s}"))
            .collect::<Vec<_>>()
            .join(", ");
        println!(
            "  {:<28} {:>4} environment(s), {} invocation(s) ({statuses})",
            format!("{}:{}", function.name, function.version),
            t.environments,
            t.invocations
        );
    }
    println!("{:<LABEL$} {:>6}", "invocations", fleet.invocations());
    println!(
        "{:<LABEL$} {:>6}",
        "events sent by Lambda",
        fleet.events_sent()
    );
    match received {
        RawReceived::All(received) => {
            let sent: Vec<Value> = fleet
                .environments
                .iter()
                .filter_map(|e| e.report())
                .flat_map(|r| r.events_sent.iter().cloned())
                .collect();
            println!(
                "{:<LABEL$} {:>6}",
                "received by raw JSON endpoint",
                received.len()
            );
            let x = exactly_once(&sent, received);
            if x.once() {
                println!("{:<LABEL$} yes", "each exactly once");
            } else {
                ok = false;
                println!(
                    "{:<LABEL$} NO  (missing {}, duplicated {}, unexpected {})",
                    "each exactly once", x.missing, x.duplicated, x.unexpected
                );
            }
        }
        RawReceived::Counted(n) => {
            println!("{:<LABEL$} {n:>6}", "received by raw JSON endpoint");
            if *n != fleet.events_sent() {
                ok = false;
                println!("{:<LABEL$} NO", "exactly once (by count)");
            } else {
                println!("{:<LABEL$} yes", "exactly once (by count)");
            }
        }
        RawReceived::External => println!(
            "{:<LABEL$}      -  (DISPATCH_POST_URI set by the user)",
            "received by raw JSON endpoint"
        ),
    }
    for problem in &fleet.unclean {
        println!("  - {problem}");
    }
    println!();
    if let OtlpTarget::Embedded { url, protocol } = otlp_target {
        println!("OTLP received by the embedded receiver ({url}, {protocol})");
        for line in otlp.render(LABEL) {
            println!("{line}");
        }
        ok &= otlp.undecodable == 0;
        ok &= joins_checked(fleet.invocations(), otlp);
    }
    println!();
    println!("result: {}", if ok { "OK" } else { "FAILED" });
    ok
}

/// `--extension`, else the bridge next to lambda-sim (built first under `cargo run`).
fn locate_extension(args: &Args) -> Result<PathBuf, String> {
    let extension = match args.extension.clone() {
        Some(p) => p,
        None => default_extension()?,
    };
    if !extension.is_file() {
        return Err(format!(
            "the extension binary {} does not exist; build it first with `cargo build --release` \
             (or pass --extension PATH)",
            extension.display()
        ));
    }
    Ok(extension)
}

/// Where the extension's output goes, and what has arrived there so far.
struct Outputs {
    /// The extension's environment: the user's BRIDGE_*, DISPATCH_*, OTEL_* and RUST_LOG, plus
    /// the endpoints below unless the user pointed them elsewhere.
    env: Vec<(String, String)>,
    /// The raw JSON sink's recording endpoint (`None`: the user's DISPATCH_POST_URI).
    raw_endpoint: Option<RecordingEndpoint>,
    /// The embedded OTLP receiver.
    collector: Option<RecordingEndpoint>,
    otlp_target: OtlpTarget,
    otlp: OtlpStats,
    /// Events the raw endpoint received, when they are counted rather than kept (`forever`).
    raw_count: usize,
    /// The signal that ended the run early.
    stopped_by: Option<&'static str>,
}

impl Outputs {
    async fn start(args: &Args) -> Result<Outputs, String> {
        let mut env: Vec<(String, String)> = std::env::vars()
            .filter(|(k, _)| {
                k.starts_with("BRIDGE_")
                    || k.starts_with("DISPATCH_")
                    || k.starts_with("OTEL_")
                    || k == "RUST_LOG"
                    || k == "RUST_BACKTRACE"
            })
            .collect();
        let user_var = |env: &[(String, String)], name: &str| {
            env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
        };
        let latency = Behaviour::ok().with_latency(
            Duration::from_millis(args.endpoint_latency_ms),
            Duration::from_millis(args.endpoint_jitter_ms),
        );
        let raw_endpoint = if user_var(&env, "DISPATCH_POST_URI").is_some() {
            None
        } else {
            let ep = RecordingEndpoint::start(latency.clone())
                .await
                .map_err(|e| e.to_string())?;
            env.push(("DISPATCH_POST_URI".into(), ep.url()));
            Some(ep)
        };
        let (collector, otlp_target) = match user_var(&env, "OTEL_EXPORTER_OTLP_ENDPOINT") {
            Some(url) => (None, OtlpTarget::External(url)),
            None if args.no_otlp => (None, OtlpTarget::Off),
            None => {
                let ep = RecordingEndpoint::start(latency.clone())
                    .await
                    .map_err(|e| e.to_string())?;
                let url = format!("http://{}", ep.addr());
                env.push(("OTEL_EXPORTER_OTLP_ENDPOINT".into(), url.clone()));
                let protocol = user_var(&env, "OTEL_EXPORTER_OTLP_PROTOCOL")
                    .unwrap_or_else(|| "http/protobuf".into());
                (Some(ep), OtlpTarget::Embedded { url, protocol })
            }
        };
        Ok(Outputs {
            env,
            raw_endpoint,
            collector,
            otlp_target,
            otlp: OtlpStats::new(),
            raw_count: 0,
            stopped_by: None,
        })
    }

    fn announce(&self, args: &Args, extension: &std::path::Path) {
        if let Some(n) = args.managed_instances {
            println!(
                "lambda-sim: Lambda Managed Instances, {n} invocation(s) at once{}",
                match args.tenants {
                    0 => String::new(),
                    k => format!(", {k} tenant(s)"),
                }
            );
        } else if args.tenants > 0 {
            println!("lambda-sim: tenant isolation, {} tenant(s)", args.tenants);
        }
        if args.invocations == 0 {
            println!(
                "lambda-sim: invocations until SIGINT/SIGTERM (Ctrl-C) of {}",
                extension.display()
            );
        } else {
            println!(
                "lambda-sim: {} invocation(s) of {}",
                args.invocations,
                extension.display()
            );
        }
        match &self.raw_endpoint {
            Some(ep) => println!(
                "lambda-sim: raw JSON sink -> recording endpoint {}",
                ep.url()
            ),
            None => {
                println!("lambda-sim: raw JSON sink -> DISPATCH_POST_URI from the environment")
            }
        }
        match &self.otlp_target {
            OtlpTarget::Embedded { url, protocol } => {
                println!("lambda-sim: OTLP -> embedded receiver {url} ({protocol})")
            }
            OtlpTarget::External(url) => {
                println!(
                    "lambda-sim: OTLP -> {url} (OTEL_EXPORTER_OTLP_ENDPOINT from the environment)"
                )
            }
            OtlpTarget::Off => println!("lambda-sim: OTLP -> off (--no-otlp)"),
        }
    }

    /// Folds what arrived into the summaries and forgets it (memory stays bounded in long
    /// runs); raw events are only counted when `count_raw` (else they are kept for the
    /// exactly-once check at the end).
    fn drain(&mut self, count_raw: bool) {
        if let Some(c) = &self.collector {
            self.otlp.add(&c.take_requests());
        }
        if count_raw {
            if let Some(ep) = &self.raw_endpoint {
                self.raw_count += posted_events(&ep.take_requests()).len();
            }
        }
    }

    fn raw_received(&self, forever: bool) -> RawReceived {
        match &self.raw_endpoint {
            None => RawReceived::External,
            Some(_) if forever => RawReceived::Counted(self.raw_count),
            Some(ep) => RawReceived::All(ep.received_events()),
        }
    }
}

fn sim_config(
    args: &Args,
    extension: PathBuf,
    env: Vec<(String, String)>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> SimConfig {
    let mut cfg = SimConfig {
        extension_path: extension,
        extension_env: env,
        invocations: args.invocations,
        stop: Some(stop),
        history_limit: (args.invocations == 0).then_some(HISTORY_LIMIT),
        error_every: args.errors_every,
        timeout_every: args.timeouts_every,
        logs_dropped_every: args.logs_dropped_every,
        between_invokes_ms: args.between_ms,
        freeze_between_invokes: args.freeze,
        snap_start: args.snap_start,
        managed_instances: args.managed_instances,
        tenants: args.tenants,
        capture_output: args.quiet,
        // Ctrl-C reaches only lambda-sim, which then shuts the extension down as Lambda would.
        own_process_group: true,
        progress: Some(Box::new(if args.managed_instances.is_some() {
            print_concurrent_invocation
        } else {
            print_invocation
        })),
        ..SimConfig::default()
    };
    if let Some(t) = args.function_timeout_ms {
        cfg.function_timeout_ms = t;
    }
    if let Some(ms) = args.function_ms {
        cfg.invoke_duration_ms = ms;
    }
    cfg
}

/// Runs the simulation, answering signals (the first ends it the Lambda way, the second aborts:
/// `None`) and draining the outputs as it goes.
async fn drive<F: std::future::Future>(
    sim_run: F,
    stop: &tokio::sync::watch::Sender<bool>,
    outputs: &mut Outputs,
    forever: bool,
) -> Option<F::Output> {
    tokio::pin!(sim_run);
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut last_drain = Instant::now();
    loop {
        tokio::select! {
            r = &mut sim_run => return Some(r),
            _ = tick.tick() => {
                match signals::received() {
                    0 => {}
                    1 if outputs.stopped_by.is_none() => {
                        let name = signals::last_name();
                        outputs.stopped_by = Some(name);
                        println!(
                            "lambda-sim: {name}: finishing the current invocation, then SHUTDOWN \
                             (again to abort)"
                        );
                        let _ = stop.send(true);
                    }
                    1 => {}
                    _ => return None,
                }
                if last_drain.elapsed() >= DRAIN_EVERY {
                    outputs.drain(forever);
                    last_drain = Instant::now();
                }
            }
        }
    }
}

fn print_invocation(r: &InvocationRecord) {
    let status = match &r.error_type {
        Some(t) => format!("{} ({t})", r.status),
        None => r.status.clone(),
    };
    let overhead = match r.next_called_at {
        Some(_) => format!("{:8.2} ms", ms(r.extension_overhead)),
        None => "  (no /event/next)".to_string(),
    };
    println!(
        "  #{:<4} {}  {:<44} runtime {:7.2} ms  extension overhead {}",
        r.index + 1,
        r.request_id.get(..8).unwrap_or(&r.request_id),
        status,
        ms(r.runtime_duration),
        overhead
    );
}

/// Under Managed Instances extensions take no part in invocations: no overhead to show.
fn print_concurrent_invocation(r: &InvocationRecord) {
    let status = match &r.error_type {
        Some(t) => format!("{} ({t})", r.status),
        None => r.status.clone(),
    };
    println!(
        "  #{:<4} {}  {:<44} runtime {:7.2} ms  {}",
        r.index + 1,
        r.request_id.get(..8).unwrap_or(&r.request_id),
        status,
        ms(r.runtime_duration),
        r.tenant_id.as_deref().unwrap_or("")
    );
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn print_failure_details(report: &SimReport, reason: &str) {
    for e in &report.init_errors {
        println!(
            "  /init/error: {} {}",
            e.error_type.as_deref().unwrap_or("(no error type)"),
            e.body.as_ref().map(Value::to_string).unwrap_or_default()
        );
    }
    for e in report.errors.iter().filter(|e| e.as_str() != reason) {
        println!("  - {e}");
    }
    if !report.extension_output.is_empty() {
        println!("--- extension output ---");
        print!("{}", report.extension_output);
        if !report.extension_output.ends_with('\n') {
            println!();
        }
        println!("------------------------");
    }
}

/// What the raw JSON endpoint received compared with what Lambda sent.
struct ExactlyOnce {
    ok: bool,
    missing: usize,
    duplicated: usize,
    unexpected: usize,
    in_order: bool,
}

impl ExactlyOnce {
    /// Every event once, whatever the order.
    fn once(&self) -> bool {
        self.missing == 0 && self.duplicated == 0 && self.unexpected == 0
    }
}

fn exactly_once(sent: &[Value], received: &[Value]) -> ExactlyOnce {
    // Count occurrences by serialized form (events carry distinct times/ids, so this is exact
    // enough; identical events are counted as many times as they were sent).
    let key = |v: &Value| v.to_string();
    let mut expected: BTreeMap<String, isize> = BTreeMap::new();
    for v in sent {
        *expected.entry(key(v)).or_insert(0) += 1;
    }
    let mut missing = 0usize;
    let mut duplicated = 0usize;
    let mut unexpected = 0usize;
    let mut seen: BTreeMap<String, isize> = BTreeMap::new();
    for v in received {
        *seen.entry(key(v)).or_insert(0) += 1;
    }
    for (k, &n) in &expected {
        let got = seen.get(k).copied().unwrap_or(0);
        if got < n {
            missing += (n - got) as usize;
        } else if got > n {
            duplicated += (got - n) as usize;
        }
    }
    for (k, &n) in &seen {
        if !expected.contains_key(k) {
            unexpected += n as usize;
        }
    }
    let in_order = sent == received;
    ExactlyOnce {
        ok: in_order,
        missing,
        duplicated,
        unexpected,
        in_order,
    }
}

/// One span per invocation and every log record on its invocation's trace (what the OTLP
/// receiver got, against the invocations run); prints the verdict, returns whether it holds.
fn joins_checked(invocations: usize, otlp: &OtlpStats) -> bool {
    let joins = otlp.joins();
    if otlp.spans == 0 || joins.truncated {
        return joins.ok(); // traces off, or a run longer than what is tracked (as printed)
    }
    let every_invocation = joins.invocations == invocations;
    let ok = every_invocation && joins.ok();
    println!(
        "{:<LABEL$} {}",
        "  one span each, logs joined",
        if ok {
            "yes".to_string()
        } else {
            format!(
                "NO  ({} of {invocations} invocations have a span, {} have several; {} log \
                 record(s) on another trace, {} of an invocation without span)",
                joins.invocations,
                joins.invocations_with_several_spans,
                joins.logs_on_another_trace,
                joins.logs_of_unknown_invocations
            )
        }
    );
    ok
}

fn opt_ms(d: Option<Duration>) -> String {
    d.map(|d| format!("{:.1} ms", ms(d)))
        .unwrap_or_else(|| "-".into())
}

/// Prints the summary; returns whether the run was good.
/// Which of Lambda's execution models the run simulated.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Model {
    Default,
    ManagedInstances,
}

fn summary(
    report: &SimReport,
    model: Model,
    received: &RawReceived,
    otlp_target: &OtlpTarget,
    otlp: &OtlpStats,
) -> bool {
    let mut ok = true;
    let totals = &report.totals;
    println!();
    println!("Summary");
    println!("=======");

    println!(
        "{:<LABEL$} {:>6}",
        "events sent by Lambda", totals.events_sent
    );
    for (ty, n) in report.event_counts() {
        println!("  {ty:<30} {n:>4}");
    }
    let delivered = totals.events_sent.saturating_sub(report.undelivered_events);
    println!("{:<LABEL$} {delivered:>6}", "delivered to the extension");
    if report.undelivered_events > 0 {
        ok = false;
        println!(
            "{:<LABEL$} {:>6}",
            "  LOST before the extension", report.undelivered_events
        );
    }
    println!(
        "{:<LABEL$} {:>6}  ({} failed)",
        "telemetry POSTs", totals.telemetry_posts, totals.failed_telemetry_posts
    );

    match received {
        RawReceived::All(received) => {
            println!(
                "{:<LABEL$} {:>6}",
                "received by raw JSON endpoint",
                received.len()
            );
            let x = exactly_once(&report.events_sent, received);
            if x.ok {
                println!("{:<LABEL$} yes", "exactly once, in order");
            } else if x.once() {
                // Overlapping flushes (BRIDGE_FLUSH=adaptive with slow endpoints, or a retried
                // batch) may deliver out of order; each event once is what matters.
                println!(
                    "{:<LABEL$} once: yes; in order: no (flushes overlapped)",
                    "exactly once, in order"
                );
            } else {
                ok = false;
                println!(
                    "{:<LABEL$} NO  (missing {}, duplicated {}, unexpected {}, order {})",
                    "exactly once, in order",
                    x.missing,
                    x.duplicated,
                    x.unexpected,
                    if x.in_order { "kept" } else { "differs" }
                );
            }
        }
        RawReceived::Counted(n) => {
            println!("{:<LABEL$} {n:>6}", "received by raw JSON endpoint");
            if *n == totals.events_sent {
                println!("{:<LABEL$} yes", "exactly once (by count)");
            } else {
                ok = false;
                println!(
                    "{:<LABEL$} NO  (sent {}, received {n})",
                    "exactly once (by count)", totals.events_sent
                );
            }
        }
        RawReceived::External => {
            println!(
                "{:<LABEL$}      -  (DISPATCH_POST_URI set by the user)",
                "received by raw JSON endpoint"
            )
        }
    }

    println!(
        "{:<LABEL$} {:>6}  ({} success, {} error, {} timeout)",
        "invocations",
        totals.invocations,
        report.count_status("success"),
        report.count_status("error"),
        report.count_status("timeout")
    );
    println!(
        "{:<LABEL$} {:>9}",
        "cold start (spawn -> ready)",
        opt_ms(report.cold_start)
    );
    println!(
        "{:<LABEL$} {:>9}",
        "init duration (initReport)",
        opt_ms(report.init_duration)
    );
    let overheads: Vec<Duration> = report
        .invocations
        .iter()
        .map(|i| i.extension_overhead)
        .collect();
    let kept = overheads.len();
    if model == Model::ManagedInstances {
        println!(
            "{:<LABEL$}         -  (Managed Instances: extensions take no part in invocations)",
            "extension overhead / invoke"
        );
    } else {
        println!(
            "{:<LABEL$} {:>9}  median{}, {} max",
            "extension overhead / invoke",
            opt_ms(lambda_sim::stats::median_duration(&overheads)),
            if kept < totals.invocations {
                format!(" of the last {kept}")
            } else {
                String::new()
            },
            opt_ms(totals.max_extension_overhead)
        );
    }
    println!(
        "{:<LABEL$} {:>9}",
        "shutdown (SHUTDOWN -> exit)",
        opt_ms(report.shutdown_duration)
    );
    let exit = match (report.exit_code, report.exit_signal) {
        (Some(c), _) => format!("{c}"),
        (None, Some(s)) => format!("signal {s}"),
        _ => "-".into(),
    };
    println!(
        "{:<LABEL$} {:>6}{}",
        "exit code",
        exit,
        if report.killed {
            "  (KILLED at the deadline)"
        } else {
            ""
        }
    );
    if report.exit_code != Some(0) || report.killed {
        ok = false;
    }
    for e in &report.init_errors {
        println!(
            "{:<LABEL$} {}",
            "/init/error",
            e.error_type.as_deref().unwrap_or("-")
        );
    }
    for e in &report.exit_errors {
        ok = false;
        println!(
            "{:<LABEL$} {}",
            "/exit/error",
            e.error_type.as_deref().unwrap_or("-")
        );
    }

    println!();
    match otlp_target {
        OtlpTarget::Embedded { url, protocol } => {
            println!("OTLP received by the embedded receiver ({url}, {protocol})");
            for line in otlp.render(LABEL) {
                println!("{line}");
            }
            if otlp.undecodable > 0 {
                ok = false;
            }
            ok &= joins_checked(report.totals.invocations, otlp);
        }
        OtlpTarget::External(url) => println!(
            "{:<LABEL$}      -  (sent to {url}, OTEL_EXPORTER_OTLP_ENDPOINT set by the user)",
            "OTLP output"
        ),
        OtlpTarget::Off => println!("{:<LABEL$}      -  (off: --no-otlp)", "OTLP output"),
    }

    let problems: Vec<&String> = report
        .errors
        .iter()
        .filter(|e| !e.contains("were never delivered"))
        .collect();
    if !problems.is_empty() {
        ok = false;
        println!("problems:");
        for e in problems {
            println!("  - {e}");
        }
    }
    if !ok && !report.extension_output.is_empty() {
        println!("--- extension output ---");
        print!("{}", report.extension_output);
        println!("------------------------");
    }
    println!();
    println!("result: {}", if ok { "OK" } else { "FAILED" });
    ok
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &[&str]) -> Result<Option<Args>, String> {
        parse_args(s.iter().map(|s| s.to_string()))
    }

    #[test]
    fn parses_options() {
        let a = parse(&[
            "--invocations",
            "5",
            "--errors-every=2",
            "--freeze",
            "--quiet",
        ]);
        let a = a.ok().flatten();
        assert!(a.as_ref().is_some_and(|a| a.invocations == 5
            && a.errors_every == Some(2)
            && a.freeze
            && a.quiet
            && !a.no_otlp));
        let a = parse(&["--invocations=0", "--no-otlp", "--logs-dropped-every", "3"])
            .ok()
            .flatten();
        assert!(a
            .as_ref()
            .is_some_and(|a| a.invocations == 0 && a.no_otlp && a.logs_dropped_every == Some(3)));
        assert!(matches!(parse(&["--help"]), Ok(None)));
        assert!(parse(&["--bogus"]).is_err());
        assert!(parse(&["--invocations"]).is_err());
        assert!(parse(&["--errors-every", "0"]).is_err());
        assert!(parse(&["--logs-dropped-every", "0"]).is_err());
    }

    #[test]
    fn parses_managed_instances_and_refuses_what_it_does_not_have() {
        let a = parse(&["--managed-instances", "8", "--tenants=3"])
            .ok()
            .flatten();
        assert!(a
            .as_ref()
            .is_some_and(|a| a.managed_instances == Some(8) && a.tenants == 3));
        assert!(parse(&["--managed-instances", "0"]).is_err());
        for other in ["--freeze", "--snap-start", "--timeouts-every=2"] {
            let refused = parse(&["--managed-instances=2", other]);
            assert!(
                refused
                    .as_ref()
                    .is_err_and(|e| e.contains("does not apply")),
                "{other}: {refused:?}"
            );
        }
    }

    #[test]
    fn exactly_once_check() {
        let a = serde_json::json!({"a": 1});
        let b = serde_json::json!({"b": 2});
        let x = exactly_once(&[a.clone(), b.clone()], &[a.clone(), b.clone()]);
        assert!(x.ok);
        let x = exactly_once(&[a.clone(), b.clone()], &[b.clone(), a.clone()]);
        assert!(!x.ok && x.missing == 0 && x.duplicated == 0 && !x.in_order);
        assert!(x.once());
        let x = exactly_once(&[a.clone(), b.clone()], &[a.clone(), a.clone()]);
        assert!(!x.ok && x.missing == 1 && x.duplicated == 1);
    }
}
