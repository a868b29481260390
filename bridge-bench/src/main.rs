//! `bridge-bench`: measures the bridge against the floor extension (`bench-floor`) under the
//! loopback Lambda simulator and prints medians over repeated runs, each figure next to the floor's
//! and with its budget (see BENCHMARKS.md).

mod billed;
mod cgroup;
mod cost;
mod event_path;
mod fleet_series;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use lambda_sim::stats::{median, percentile};
use lambda_sim::{self as sim, otlp_receiver, Behaviour, RecordingEndpoint, SimConfig};
use serde_json::value::RawValue;

const USAGE: &str = "\
bridge-bench: the bridge's cost (cold start, per-invoke overhead, CPU, memory, throughput, size)
against a trivial floor extension, under the loopback Lambda simulator

USAGE:
    bridge-bench [OPTIONS]

OPTIONS:
    --runs N              repeated runs; figures are medians over them (default 7)
    --invocations N       invocations of the standard scenario (default 1000)
    --big-invocations N   invocations of the 1 MiB-batch scenario (default 20)
    --big-lines N         function log lines per invocation there (default 10000)
    --quick               smoke mode: 1 run, 20 + 3 small invocations; checks that every figure
                          is produced and finite, no budget checks
    --check               exit 1 when a budget is missed (default: only report)
    --bridge-env K=V      extra environment for the bridge only (repeatable; an empty V removes
                          K, e.g. DISPATCH_POST_URI= turns the raw sink off): for experiments
    --skip-big            run only the standard scenario
    --markdown            print the table as Markdown
    --fleet               instead: the series the collector's Prometheus exporter exposes for a
                          churning fleet (environments replaced every few invocations), at most
                          at one time and ever, with a scaled-down metric_expiration of 2 s
    --billed              instead: the billed time each flush policy adds per invocation, its
                          freshness and loss, per endpoint latency (loopback, 30, 150 ms) and
                          traffic (steady, sparse with freezes), at a 128 MB function's CPU
                          share when it can make a cgroup (root); with --quick, fewer invocations
                          then the CPU-bound function scenario (see --cpu-bound)
    --full-cpu            with --billed, --cost, --cpu-bound: no cgroup, full CPU
    --only A,B,…          with --billed: only the cells matching each part (steady or sparse,
                          a latency in ms, a policy), e.g. --only steady,150,adaptive (any such
                          filter skips the CPU-bound scenario); --only cpu-bound: only that
    --cost                instead: the standard cost scenario of issue 21 (3 log lines, raw +
                          OTLP http/protobuf, endpoints 30 ms away, a 10 ms function, steady
                          traffic): CPU per invocation of the bridge, the push-only floor and
                          the I/O floor at full CPU and (as root) at a 128 MB share, requests per
                          invocation per output, invocation rate, freshness, loss; then the
                          CPU-bound scenario; a Markdown table with the issue's budgets
                          (--runs default 3, --invocations default 200)
    --skip-cpu-bound      with --cost: leave the CPU-bound scenario out
    --per-event           instead: CPU per event by kind (start, runtimeDone, report, function log
                          line as text and as JSON): the extension's event path run in this
                          process on one thread, both outputs on, endpoints on another thread
                          (also printed by --cost)
    --cpu-bound           instead: only the CPU-bound function scenario: the function burns
                          --cpu-fn-ms of CPU per invocation in a process of its own
                          (bench-cpu-function), in the same cgroup as the extension at a 128 MB
                          share (as root; else full CPU, said so); its mean duration with the
                          bridge and with the push-only floor, and their difference (--runs
                          default 3, bridge and floor alternating who goes first)
    --cpu-fn-ms X         CPU the function burns per invocation, ms (default 20)
    --cpu-invocations N   invocations per run of the CPU-bound scenario, the first (cold) left
                          out of the mean (default 60; quick: 6)
    --bridge PATH         the bridge binary (default: lambda-telemetry-bridge next to this binary)
    --floor PATH          the floor binary (default: bench-floor next to this binary)
    --cpu-function PATH   the CPU-bound function (default: bench-cpu-function next to this binary)
    -h, --help            this help

Scenarios, run for the bridge and for two floors in each run (both sinks on loopback: a recording
raw JSON endpoint as DISPATCH_POST_URI and an OTLP/HTTP receiver as OTEL_EXPORTER_OTLP_ENDPOINT).
The push-only floor (bench-floor with BENCH_FLOOR_POSTS=0) registers, subscribes, accepts and
answers every push and loops on /event/next, what every Telemetry API extension must do: ratios
are taken against it. The I/O floor (bench-floor as is) also POSTs one pre-encoded body to each
endpoint the bridge posts to per invocation: a second reference, in its own columns (standard
scenario only):
  standard  N invocations, 3 log lines each, default buffering: cold start, CPU to the first
            /event/next, per-invoke overhead (runtimeDone delivered -> next /event/next), CPU
            per invocation, peak RSS at the SHUTDOWN handover
  big       BRIDGE_BUFFER_MAX_ITEMS=10000, BRIDGE_BUFFER_MAX_BYTES=1048576, many log lines per
            invocation: peak RSS, events per CPU-second and per wall-second";

#[derive(Debug, Clone)]
struct Args {
    runs: usize,
    invocations: usize,
    big_invocations: usize,
    big_lines: usize,
    quick: bool,
    check: bool,
    markdown: bool,
    bridge: Option<PathBuf>,
    floor: Option<PathBuf>,
    bridge_env: Vec<(String, String)>,
    skip_big: bool,
    billed: bool,
    full_cpu: bool,
    only: billed::Only,
    fleet: bool,
    cost: bool,
    per_event: bool,
    cpu_bound: bool,
    skip_cpu_bound: bool,
    cpu_fn_ms: f64,
    cpu_invocations: Option<usize>,
    cpu_function: Option<PathBuf>,
    /// `--runs` and `--invocations` as given (the cost scenarios have their own defaults).
    runs_flag: Option<usize>,
    invocations_flag: Option<usize>,
}

fn parse_args(mut it: impl Iterator<Item = String>) -> Result<Option<Args>, String> {
    let mut a = Args {
        runs: 7,
        invocations: 1000,
        big_invocations: 20,
        big_lines: 10_000,
        quick: false,
        check: false,
        markdown: false,
        bridge: None,
        floor: None,
        bridge_env: Vec::new(),
        skip_big: false,
        billed: false,
        full_cpu: false,
        only: billed::Only::default(),
        fleet: false,
        cost: false,
        per_event: false,
        cpu_bound: false,
        skip_cpu_bound: false,
        cpu_fn_ms: 20.0,
        cpu_invocations: None,
        cpu_function: None,
        runs_flag: None,
        invocations_flag: None,
    };
    let (mut runs, mut inv, mut big_inv, mut big_lines) = (None, None, None, None);
    fn number(flag: &str, v: Option<String>) -> Result<usize, String> {
        let v = v.ok_or_else(|| format!("{flag} needs a value"))?;
        v.parse::<usize>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("{flag}: expected a positive integer, got {v:?}"))
    }
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "-h" | "--help" => return Ok(None),
            "--runs" => runs = Some(number("--runs", it.next())?),
            "--invocations" => inv = Some(number("--invocations", it.next())?),
            "--big-invocations" => big_inv = Some(number("--big-invocations", it.next())?),
            "--big-lines" => big_lines = Some(number("--big-lines", it.next())?),
            "--quick" => a.quick = true,
            "--check" => a.check = true,
            "--markdown" => a.markdown = true,
            "--bridge" => a.bridge = Some(it.next().ok_or("--bridge needs a path")?.into()),
            "--floor" => a.floor = Some(it.next().ok_or("--floor needs a path")?.into()),
            "--bridge-env" => {
                let kv = it.next().ok_or("--bridge-env needs K=V")?;
                let (k, v) = kv
                    .split_once('=')
                    .ok_or_else(|| format!("--bridge-env: expected K=V, got {kv:?}"))?;
                a.bridge_env.push((k.to_string(), v.to_string()));
            }
            "--skip-big" => a.skip_big = true,
            "--billed" => a.billed = true,
            "--fleet" => a.fleet = true,
            "--full-cpu" => a.full_cpu = true,
            "--only" => a.only = billed::Only::parse(&it.next().ok_or("--only needs a value")?),
            "--cost" => a.cost = true,
            "--per-event" => a.per_event = true,
            "--cpu-bound" => a.cpu_bound = true,
            "--skip-cpu-bound" => a.skip_cpu_bound = true,
            "--cpu-fn-ms" => {
                let v = it.next().ok_or("--cpu-fn-ms needs a value")?;
                a.cpu_fn_ms = v
                    .parse::<f64>()
                    .ok()
                    .filter(|x| x.is_finite() && *x > 0.0 && *x <= 10_000.0)
                    .ok_or_else(|| format!("--cpu-fn-ms: expected ms in (0, 10000], got {v:?}"))?;
            }
            "--cpu-invocations" => {
                a.cpu_invocations = Some(number("--cpu-invocations", it.next())?)
            }
            "--cpu-function" => {
                a.cpu_function = Some(it.next().ok_or("--cpu-function needs a path")?.into())
            }
            other => return Err(format!("unknown option {other:?} (see --help)")),
        }
    }
    if a.quick {
        a.runs = 1;
        a.invocations = 20;
        a.big_invocations = 3;
        a.big_lines = 2000;
    }
    a.runs_flag = runs;
    a.invocations_flag = inv;
    a.runs = runs.unwrap_or(a.runs);
    a.invocations = inv.unwrap_or(a.invocations);
    a.big_invocations = big_inv.unwrap_or(a.big_invocations);
    a.big_lines = big_lines.unwrap_or(a.big_lines);
    Ok(Some(a))
}

fn next_to_me(name: &str) -> Result<PathBuf, String> {
    let exe =
        std::env::current_exe().map_err(|e| format!("cannot locate bridge-bench itself: {e}"))?;
    let dir = exe
        .parent()
        .ok_or("cannot locate the directory of bridge-bench")?;
    Ok(dir.join(name))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ext {
    Bridge,
    /// `bench-floor` with `BENCH_FLOOR_POSTS=0`: registers, subscribes, accepts and answers every
    /// push, loops on `/event/next`. Ratios are taken against it.
    Floor,
    /// `bench-floor` as it is by default: also one pre-encoded POST per output per invocation.
    IoFloor,
}

impl Ext {
    fn name(self) -> &'static str {
        match self {
            Ext::Bridge => "bridge",
            Ext::Floor => "floor",
            Ext::IoFloor => "io-floor",
        }
    }
}

/// What one standard run of one extension gave.
#[derive(Debug, Clone, Default)]
struct Standard {
    cold_start_ms: Option<f64>,
    cpu_start_ms: Option<f64>,
    overhead_ms: Option<f64>,
    overhead_p99_ms: Option<f64>,
    first_overhead_ms: Option<f64>,
    cpu_per_invoke_ms: Option<f64>,
    /// The same, with the simulator opening a new connection for every telemetry push.
    cpu_per_invoke_new_connection_ms: Option<f64>,
    peak_rss_kib: Option<f64>,
}

/// What one big-batch run of one extension gave.
#[derive(Debug, Clone, Default)]
struct Big {
    peak_rss_kib: Option<f64>,
    events: usize,
    cpu_ns: Option<f64>,
    wall_s: Option<f64>,
    batch_events: Option<f64>,
    batch_bytes: Option<f64>,
}

impl Big {
    fn events_per_cpu_s(&self) -> Option<f64> {
        self.cpu_ns
            .filter(|c| *c > 0.0)
            .map(|c| self.events as f64 / (c / 1e9))
    }
    fn events_per_wall_s(&self) -> Option<f64> {
        self.wall_s
            .filter(|w| *w > 0.0)
            .map(|w| self.events as f64 / w)
    }
    fn cpu_us_per_event(&self) -> Option<f64> {
        self.cpu_ns
            .filter(|_| self.events > 0)
            .map(|c| c / 1e3 / self.events as f64)
    }
}

/// `/proc/loadavg`'s first three fields: other work on the machine skews wall-clock figures.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The endpoints a bridge run exports to.
struct Sinks {
    raw: RecordingEndpoint,
    otlp: RecordingEndpoint,
}

impl Sinks {
    async fn start() -> Result<Sinks, String> {
        Ok(Sinks {
            raw: RecordingEndpoint::start(Behaviour::ok())
                .await
                .map_err(|e| e.to_string())?,
            otlp: RecordingEndpoint::start(Behaviour::ok())
                .await
                .map_err(|e| e.to_string())?,
        })
    }

    fn env(&self) -> Vec<(String, String)> {
        vec![
            ("DISPATCH_POST_URI".into(), self.raw.url()),
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT".into(),
                format!("http://{}", self.otlp.addr()),
            ),
        ]
    }

    /// Events the raw sink received (elements of the 2xx-answered POSTed arrays).
    fn raw_events(&self) -> usize {
        self.raw
            .requests()
            .iter()
            .filter(|r| r.succeeded())
            .map(|r| {
                serde_json::from_slice::<Vec<&RawValue>>(&r.body)
                    .map(|v| v.len())
                    .unwrap_or(0)
            })
            .sum()
    }

    /// OTLP log records the receiver got.
    fn otlp_log_records(&self) -> usize {
        otlp_receiver::decode_logs(&self.otlp.requests()).len()
    }
}

/// `env` with the `--bridge-env` overrides applied (for the bridge only), and the push-only
/// floor's `BENCH_FLOOR_POSTS=0`.
fn with_overrides(
    ext: Ext,
    mut env: Vec<(String, String)>,
    extra: &[(String, String)],
) -> Vec<(String, String)> {
    if ext == Ext::Floor {
        env.push(("BENCH_FLOOR_POSTS".into(), "0".into()));
    }
    if ext == Ext::Bridge {
        for (k, v) in extra {
            env.retain(|(name, _)| name != k);
            if !v.is_empty() {
                env.push((k.clone(), v.clone()));
            }
        }
    }
    env
}

fn has_var(env: &[(String, String)], name: &str) -> bool {
    env.iter().any(|(k, _)| k == name)
}

fn base_config(path: &Path, env: Vec<(String, String)>) -> SimConfig {
    SimConfig {
        extension_path: path.to_path_buf(),
        extension_env: env,
        runtime_init_ms: 30,
        capture_output: true,
        ..SimConfig::default()
    }
}

/// The last 2,000 bytes of an extension's output.
fn output_tail(out: &str) -> String {
    let start = out.len().saturating_sub(2000);
    let start = (start..out.len())
        .find(|&i| out.is_char_boundary(i))
        .unwrap_or(out.len());
    out[start..].to_string()
}

/// Problems of a run that make its figures worthless.
fn check_run(ext: Ext, report: &sim::SimReport) -> Result<(), String> {
    let ok = match ext {
        // Whatever the floor leaves undelivered at exit (the last report) does not matter.
        Ext::Floor | Ext::IoFloor => {
            report.exit_code == Some(0)
                && !report.killed
                && report.init_errors.is_empty()
                && report
                    .invocations
                    .iter()
                    .all(|i| i.next_called_at.is_some())
        }
        Ext::Bridge => report.clean(),
    };
    if ok {
        Ok(())
    } else {
        let tail = output_tail(&report.extension_output);
        Err(format!(
            "{} run not clean: exit={:?} killed={} undelivered={} errors={:?}\n--- last output ---\n{}",
            ext.name(),
            report.exit_code,
            report.killed,
            report.undelivered_events,
            report.errors,
            tail
        ))
    }
}

/// CPU per invocation, in ms: the extension's CPU time at its last `/event/next` (the one that
/// gets SHUTDOWN) minus at its first, ÷ invocations.
fn cpu_per_invoke_ms(report: &sim::SimReport) -> Option<f64> {
    let cpu = &report.cpu_ns_at_next;
    let first_cpu = cpu.first().copied().flatten();
    let last_cpu = cpu.last().copied().flatten();
    let n = report.invocations.len();
    match (first_cpu, last_cpu) {
        (Some(a), Some(b)) if n > 0 && cpu.len() == n + 1 => {
            Some(b.saturating_sub(a) as f64 / 1e6 / n as f64)
        }
        _ => None,
    }
}

async fn run_standard(
    ext: Ext,
    path: &Path,
    invocations: usize,
    extra: &[(String, String)],
    new_connection_per_push: bool,
) -> Result<Standard, String> {
    let sinks = Sinks::start().await?;
    let env = with_overrides(ext, sinks.env(), extra);
    let raw_on = has_var(&env, "DISPATCH_POST_URI");
    let cfg = SimConfig {
        invocations,
        new_connection_per_push,
        ..base_config(path, env)
    };
    let report = sim::run(cfg).await.map_err(|e| e.to_string())?;
    check_run(ext, &report)?;
    if ext == Ext::Bridge && raw_on {
        let received = sinks.raw_events();
        if received != report.totals.events_sent {
            return Err(format!(
                "bridge: the raw sink received {received} of {} events\n--- last output ---\n{}",
                report.totals.events_sent,
                output_tail(&report.extension_output)
            ));
        }
    }

    // Per-invoke overhead: runtimeDone delivered to the extension -> its next /event/next.
    let mut done_delivered = std::collections::HashMap::new();
    for (event, timing) in report.events_sent.iter().zip(&report.event_times) {
        if timing.event_type == "platform.runtimeDone" {
            if let (Some(id), Some(at)) = (
                event
                    .get("record")
                    .and_then(|r| r.get("requestId"))
                    .and_then(|v| v.as_str()),
                timing.delivered_at,
            ) {
                done_delivered.insert(id.to_string(), at);
            }
        }
    }
    let first_overhead_ms = report.invocations.first().and_then(|inv| {
        let next = inv.next_called_at?;
        let delivered = done_delivered.get(&inv.request_id)?;
        Some(ms(next.saturating_duration_since(*delivered)))
    });
    let overheads: Vec<f64> = report
        .invocations
        .iter()
        .filter_map(|inv| {
            let next = inv.next_called_at?;
            let delivered = done_delivered.get(&inv.request_id)?;
            // The floor calls /event/next before runtimeDone even exists: 0.
            Some(ms(next.saturating_duration_since(*delivered)))
        })
        .collect();

    let first_cpu = report.cpu_ns_at_next.first().copied().flatten();
    let cpu_per_invoke_ms = cpu_per_invoke_ms(&report);
    Ok(Standard {
        cold_start_ms: report.cold_start.map(ms),
        cpu_start_ms: first_cpu.map(|c| c as f64 / 1e6),
        overhead_ms: median(&overheads),
        overhead_p99_ms: percentile(&overheads, 99.0),
        first_overhead_ms,
        cpu_per_invoke_ms,
        cpu_per_invoke_new_connection_ms: None,
        peak_rss_kib: report.peak_rss_kb_before_shutdown.map(|k| k as f64),
    })
}

async fn run_big(
    ext: Ext,
    path: &Path,
    invocations: usize,
    lines: usize,
    quick: bool,
    extra: &[(String, String)],
) -> Result<Big, String> {
    let sinks = Sinks::start().await?;
    let mut env = sinks.env();
    if !quick {
        env.push(("BRIDGE_BUFFER_MAX_ITEMS".into(), "10000".into()));
        env.push(("BRIDGE_BUFFER_MAX_BYTES".into(), "1048576".into()));
    }
    let env = with_overrides(ext, env, extra);
    let raw_on = has_var(&env, "DISPATCH_POST_URI");
    let cfg = SimConfig {
        invocations,
        log_lines_per_invoke: lines,
        invoke_duration_ms: 4,
        function_timeout_ms: 30_000,
        shutdown_deadline_ms: 5_000,
        // Everything emitted is delivered (and the CPU sampled) before SHUTDOWN, so that the
        // window below covers the same events for the floor, which does not wait for them.
        flush_before_shutdown: true,
        ..base_config(path, env)
    };
    let report = sim::run(cfg).await.map_err(|e| e.to_string())?;
    check_run(ext, &report)?;

    let first = report.next_calls.first().copied();
    let (Some(first), Some(last)) = (first, report.shutdown_at) else {
        return Err(format!(
            "{}: no /event/next or SHUTDOWN recorded",
            ext.name()
        ));
    };
    // Events that reached the extension between its first /event/next and the SHUTDOWN
    // handover: the CPU window below covers their whole way (listener, queue, both sinks).
    let events = report
        .event_times
        .iter()
        .filter(|t| t.delivered_at.is_some_and(|at| at > first && at <= last))
        .count();
    if ext == Ext::Bridge && raw_on {
        let received = sinks.raw_events();
        if received != report.totals.events_sent {
            return Err(format!(
                "bridge: the raw sink received {received} of {} events\n--- last output ---\n{}",
                report.totals.events_sent,
                output_tail(&report.extension_output)
            ));
        }
        let function_events = report.event_counts().get("function").copied().unwrap_or(0);
        let logs = sinks.otlp_log_records();
        if extra.is_empty() && logs < function_events {
            return Err(format!(
                "bridge: the OTLP receiver got {logs} log records for {function_events} function events"
            ));
        }
    }
    let cpu_ns = match (
        report.cpu_ns_at_next.first().copied().flatten(),
        report.cpu_ns_before_shutdown,
    ) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a) as f64),
        _ => None,
    };
    let ok_posts: Vec<&sim::TelemetryPost> = report
        .telemetry_posts
        .iter()
        .filter(|p| p.status.is_some_and(|s| (200..300).contains(&s)))
        .collect();
    let max_events = ok_posts.iter().map(|p| p.events).max();
    let max_bytes = ok_posts.iter().map(|p| p.bytes).max();
    Ok(Big {
        peak_rss_kib: report.peak_rss_kb_before_shutdown.map(|k| k as f64),
        events,
        cpu_ns,
        wall_s: Some(last.saturating_duration_since(first).as_secs_f64()),
        batch_events: max_events.map(|e| e as f64),
        batch_bytes: max_bytes.map(|b| b as f64),
    })
}

/// The zip `scripts/build-layer.sh` makes (one deflated entry `extensions/<name>`, mode 0755),
/// built in memory; its length is the layer's size. `level`: the deflate level (6, zlib's default,
/// as Python's zipfile uses; quick mode uses 0 to stay fast on unoptimised debug binaries).
fn layer_zip(binary: &Path, name: &str, level: u32) -> Result<Vec<u8>, String> {
    use std::io::Write;
    let data = std::fs::read(binary).map_err(|e| format!("{}: {e}", binary.display()))?;
    let mut crc = flate2::Crc::new();
    crc.update(&data);
    let crc = crc.sum();
    let mut enc = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::new(level));
    enc.write_all(&data).map_err(|e| e.to_string())?;
    let compressed = enc.finish().map_err(|e| e.to_string())?;
    let entry = format!("extensions/{name}");
    let (size, csize) = (
        u32::try_from(data.len()).map_err(|_| "binary too large for a zip without zip64")?,
        u32::try_from(compressed.len()).map_err(|_| "binary too large")?,
    );
    let name_len = u16::try_from(entry.len()).map_err(|_| "name too long")?;
    let mut z = Vec::with_capacity(compressed.len() + 200);
    // Local file header.
    z.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
    z.extend_from_slice(&20u16.to_le_bytes()); // version needed
    z.extend_from_slice(&0u16.to_le_bytes()); // flags
    z.extend_from_slice(&8u16.to_le_bytes()); // deflate
    z.extend_from_slice(&0u16.to_le_bytes()); // time
    z.extend_from_slice(&0x21u16.to_le_bytes()); // date (1980-01-01)
    z.extend_from_slice(&crc.to_le_bytes());
    z.extend_from_slice(&csize.to_le_bytes());
    z.extend_from_slice(&size.to_le_bytes());
    z.extend_from_slice(&name_len.to_le_bytes());
    z.extend_from_slice(&0u16.to_le_bytes());
    z.extend_from_slice(entry.as_bytes());
    z.extend_from_slice(&compressed);
    let cd_offset = u32::try_from(z.len()).map_err(|_| "zip too large")?;
    // Central directory entry.
    z.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
    z.extend_from_slice(&(0x0300u16 | 20).to_le_bytes()); // made by: Unix
    z.extend_from_slice(&20u16.to_le_bytes());
    z.extend_from_slice(&0u16.to_le_bytes());
    z.extend_from_slice(&8u16.to_le_bytes());
    z.extend_from_slice(&0u16.to_le_bytes());
    z.extend_from_slice(&0x21u16.to_le_bytes());
    z.extend_from_slice(&crc.to_le_bytes());
    z.extend_from_slice(&csize.to_le_bytes());
    z.extend_from_slice(&size.to_le_bytes());
    z.extend_from_slice(&name_len.to_le_bytes());
    z.extend_from_slice(&0u16.to_le_bytes()); // extra
    z.extend_from_slice(&0u16.to_le_bytes()); // comment
    z.extend_from_slice(&0u16.to_le_bytes()); // disk
    z.extend_from_slice(&0u16.to_le_bytes()); // internal attributes
    z.extend_from_slice(&(0o100755u32 << 16).to_le_bytes()); // external: -rwxr-xr-x
    z.extend_from_slice(&0u32.to_le_bytes()); // local header offset
    z.extend_from_slice(entry.as_bytes());
    let cd_size = u32::try_from(z.len()).map_err(|_| "zip too large")? - cd_offset;
    // End of central directory.
    z.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
    z.extend_from_slice(&0u16.to_le_bytes());
    z.extend_from_slice(&0u16.to_le_bytes());
    z.extend_from_slice(&1u16.to_le_bytes());
    z.extend_from_slice(&1u16.to_le_bytes());
    z.extend_from_slice(&cd_size.to_le_bytes());
    z.extend_from_slice(&cd_offset.to_le_bytes());
    z.extend_from_slice(&0u16.to_le_bytes());
    Ok(z)
}

/// One line of the table.
struct Row {
    figure: String,
    bridge: Option<f64>,
    floor: Option<f64>,
    /// Median over runs of bridge / floor in the same run.
    ratio: Option<f64>,
    /// Whether the floor is expected to have this figure.
    floor_expected: bool,
    /// The I/O floor's figure (`None`: not measured for this figure).
    io_floor: Option<f64>,
    /// Median over runs of bridge / I/O floor in the same run.
    io_ratio: Option<f64>,
    /// Whether the I/O floor is expected to have this figure.
    io_expected: bool,
    budget: String,
    pass: Option<bool>,
    unit: &'static str,
    decimals: usize,
}

fn fmt_value(v: Option<f64>, unit: &str, decimals: usize) -> String {
    match v {
        Some(v) if unit.is_empty() => format!("{v:.decimals$}"),
        Some(v) => format!("{v:.decimals$} {unit}"),
        None => "—".to_string(),
    }
}

fn ratio_of(pairs: &[(Option<f64>, Option<f64>)]) -> Option<f64> {
    let r: Vec<f64> = pairs
        .iter()
        .filter_map(|(b, f)| match (b, f) {
            (Some(b), Some(f)) if *f > 0.0 => Some(b / f),
            _ => None,
        })
        .collect();
    median(&r)
}

fn render(rows: &[Row], markdown: bool) -> String {
    let header = [
        "figure",
        "bridge",
        "push-only floor",
        "ratio",
        "I/O floor",
        "ratio to I/O floor",
        "budget",
        "result",
    ];
    let times = |r: Option<f64>| r.map(|x| format!("{x:.2}×")).unwrap_or_else(|| "—".into());
    let cells: Vec<[String; 8]> = rows
        .iter()
        .map(|r| {
            [
                r.figure.clone(),
                fmt_value(r.bridge, r.unit, r.decimals),
                if r.floor_expected {
                    fmt_value(r.floor, r.unit, r.decimals)
                } else {
                    "—".into()
                },
                times(r.ratio),
                if r.io_expected {
                    fmt_value(r.io_floor, r.unit, r.decimals)
                } else {
                    "—".into()
                },
                times(r.io_ratio),
                r.budget.clone(),
                match r.pass {
                    Some(true) => "pass".into(),
                    Some(false) => "FAIL".into(),
                    None => "—".into(),
                },
            ]
        })
        .collect();
    let mut out = String::new();
    if markdown {
        out.push_str(&format!("| {} |\n", header.join(" | ")));
        out.push_str("|---|---:|---:|---:|---:|---:|---|---|\n");
        for c in &cells {
            out.push_str(&format!("| {} |\n", c.join(" | ")));
        }
        return out;
    }
    let mut width = header.map(|h| h.chars().count());
    for c in &cells {
        for (w, s) in width.iter_mut().zip(c.iter()) {
            *w = (*w).max(s.chars().count());
        }
    }
    let line = |c: &[String]| -> String {
        let mut s = String::new();
        for (i, (cell, w)) in c.iter().zip(width.iter()).enumerate() {
            let pad = w - cell.chars().count();
            if i == 0 || i >= 6 {
                s.push_str(cell);
                s.push_str(&" ".repeat(pad));
            } else {
                s.push_str(&" ".repeat(pad));
                s.push_str(cell);
            }
            s.push_str("  ");
        }
        s.trim_end().to_string() + "\n"
    };
    out.push_str(&line(&header.map(String::from)));
    out.push_str(&line(&width.map(|w| "-".repeat(w))));
    for c in &cells {
        out.push_str(&line(c));
    }
    out
}

struct Results {
    standard: Vec<(Standard, Standard)>,
    /// The I/O floor's standard runs (same index).
    io_standard: Vec<Standard>,
    big: Vec<(Big, Big)>,
}

fn col<T>(v: &[(T, T)], f: impl Fn(&T) -> Option<f64>) -> (Vec<Option<f64>>, Vec<Option<f64>>) {
    (
        v.iter().map(|(b, _)| f(b)).collect(),
        v.iter().map(|(_, fl)| f(fl)).collect(),
    )
}

fn med(v: &[Option<f64>]) -> Option<f64> {
    median(&v.iter().flatten().copied().collect::<Vec<_>>())
}

/// How a figure is judged against its budget.
#[derive(Debug, Clone, Copy)]
enum Check {
    /// Shown for reference, not judged.
    Reference,
    AtMost(f64),
    AtLeast(f64),
    /// At most this many times the floor's figure (same run).
    TimesFloor(f64),
    /// At most `max`, and at most `times` the floor's figure.
    AtMostAndTimesFloor {
        max: f64,
        times: f64,
    },
    /// At most the floor's figure plus this.
    FloorPlus(f64),
}

impl Check {
    fn passes(self, value: f64, floor: Option<f64>, ratio: Option<f64>) -> bool {
        match self {
            Check::Reference => true,
            Check::AtMost(max) => value <= max,
            Check::AtLeast(min) => value >= min,
            Check::TimesFloor(times) => ratio.is_some_and(|r| r <= times),
            Check::AtMostAndTimesFloor { max, times } => {
                value <= max && ratio.is_some_and(|r| r <= times)
            }
            Check::FloorPlus(extra) => floor.is_some_and(|f| value <= f + extra),
        }
    }
}

/// One figure of the table: the bridge's and the (push-only) floor's value in each run, the I/O
/// floor's where it was measured, how it is shown (`scale` turns the measured unit into `unit`),
/// and its budget as BENCHMARKS.md states it.
struct Figure {
    name: String,
    values: (Vec<Option<f64>>, Vec<Option<f64>>),
    io_floor: Option<Vec<Option<f64>>>,
    scale: f64,
    unit: &'static str,
    decimals: usize,
    budget: &'static str,
    check: Check,
}

impl Figure {
    fn new(
        name: impl Into<String>,
        values: (Vec<Option<f64>>, Vec<Option<f64>>),
        unit: &'static str,
        decimals: usize,
    ) -> Figure {
        Figure {
            name: name.into(),
            values,
            io_floor: None,
            scale: 1.0,
            unit,
            decimals,
            budget: "(reference)",
            check: Check::Reference,
        }
    }

    /// The I/O floor's value in each run (same order as the bridge's).
    fn io(mut self, values: Vec<Option<f64>>) -> Figure {
        self.io_floor = Some(values);
        self
    }

    fn scaled(mut self, scale: f64) -> Figure {
        self.scale = scale;
        self
    }

    fn budget(mut self, budget: &'static str, check: Check) -> Figure {
        self.budget = budget;
        self.check = check;
        self
    }

    /// Medians over the runs, the ratio, and the verdict (none in quick mode).
    fn row(self, quick: bool) -> Row {
        let scale = |v: &[Option<f64>]| -> Vec<Option<f64>> {
            v.iter().map(|x| x.map(|x| x * self.scale)).collect()
        };
        let (bridge, floor) = (scale(&self.values.0), scale(&self.values.1));
        let pairs: Vec<(Option<f64>, Option<f64>)> =
            bridge.iter().copied().zip(floor.iter().copied()).collect();
        let io = self.io_floor.as_deref().map(scale);
        let (io_floor, io_ratio) = match &io {
            Some(io) => {
                let pairs: Vec<(Option<f64>, Option<f64>)> =
                    bridge.iter().copied().zip(io.iter().copied()).collect();
                (med(io), ratio_of(&pairs))
            }
            None => (None, None),
        };
        let (bridge, floor, ratio) = (med(&bridge), med(&floor), ratio_of(&pairs));
        let judged = !quick && !matches!(self.check, Check::Reference);
        Row {
            figure: self.name,
            bridge,
            floor,
            ratio,
            floor_expected: true,
            io_floor,
            io_ratio,
            io_expected: io.is_some(),
            budget: self.budget.to_string(),
            pass: judged
                .then(|| bridge.map(|v| self.check.passes(v, floor, ratio)))
                .flatten(),
            unit: self.unit,
            decimals: self.decimals,
        }
    }
}

const MIB: f64 = 1024.0 * 1024.0;

/// Start-up, per-invocation cost and memory over the standard runs.
fn standard_figures(args: &Args, runs: &[(Standard, Standard)], io: &[Standard]) -> Vec<Figure> {
    let fig = |name: String, f: fn(&Standard) -> Option<f64>, unit: &'static str, decimals| {
        Figure::new(name, col(runs, f), unit, decimals).io(io.iter().map(f).collect())
    };
    vec![
        fig(
            "cold start (spawn → first /event/next)".to_string(),
            |x| x.cold_start_ms,
            "ms",
            2,
        )
        .budget(
            "≤ 1.5× floor and ≤ 10 ms",
            Check::AtMostAndTimesFloor {
                max: 10.0,
                times: 1.5,
            },
        ),
        fig(
            "CPU to first /event/next".to_string(),
            |x| x.cpu_start_ms,
            "ms",
            2,
        )
        .budget("≤ 2× floor", Check::TimesFloor(2.0)),
        fig(
            "per-invoke overhead (runtimeDone delivered → /event/next), median".to_string(),
            |x| x.overhead_ms,
            "ms",
            3,
        )
        .budget("≤ floor + 1 ms", Check::FloorPlus(1.0)),
        fig(
            "per-invoke overhead, p99 of a run".to_string(),
            |x| x.overhead_p99_ms,
            "ms",
            3,
        ),
        fig(
            "per-invoke overhead, first invocation".to_string(),
            |x| x.first_overhead_ms,
            "ms",
            3,
        ),
        fig(
            "CPU per invocation (both sinks on)".to_string(),
            |x| x.cpu_per_invoke_ms,
            "ms",
            3,
        )
        .budget(
            "≤ 0.15 ms and ≤ 3× push-only floor",
            Check::AtMostAndTimesFloor {
                max: 0.15,
                times: 3.0,
            },
        ),
        fig(
            "CPU per invocation, a new connection per telemetry push".to_string(),
            |x| x.cpu_per_invoke_new_connection_ms,
            "ms",
            3,
        ),
        fig(
            format!("peak RSS after {} invocations", args.invocations),
            |x| x.peak_rss_kib,
            "MiB",
            2,
        )
        .scaled(1.0 / 1024.0)
        .budget("≤ 10 MiB", Check::AtMost(10.0)),
    ]
}

/// Memory and throughput with the largest batches Lambda sends.
fn big_batch_figures(args: &Args, runs: &[(Big, Big)]) -> Vec<Figure> {
    let label = if args.quick {
        "small batches"
    } else {
        "1 MiB / 10,000-event batches"
    };
    vec![
        Figure::new(
            format!("peak RSS with {label}"),
            col(runs, |x| x.peak_rss_kib),
            "MiB",
            2,
        )
        .scaled(1.0 / 1024.0)
        .budget("≤ 48 MiB", Check::AtMost(48.0)),
        Figure::new(
            "largest telemetry POST (events)",
            col(runs, |x| x.batch_events),
            "",
            0,
        ),
        Figure::new(
            "largest telemetry POST (bytes)",
            col(runs, |x| x.batch_bytes),
            "MiB",
            2,
        )
        .scaled(1.0 / MIB),
        Figure::new(
            "throughput, events per CPU-second (listener → both sinks)",
            col(runs, |x| x.events_per_cpu_s()),
            "ev/s",
            0,
        )
        .budget("≥ 200,000 ev/s", Check::AtLeast(200_000.0)),
        Figure::new(
            "CPU per event",
            col(runs, |x| x.cpu_us_per_event()),
            "µs",
            2,
        ),
        Figure::new(
            "throughput, events per wall-second (incl. simulator)",
            col(runs, |x| x.events_per_wall_s()),
            "ev/s",
            0,
        ),
    ]
}

/// What the layer weighs: (bridge binary, floor binary, bridge zip, floor zip), in bytes.
fn size_figures(args: &Args, sizes: (u64, u64, u64, u64)) -> Vec<Figure> {
    let (bridge_size, floor_size, bridge_zip, floor_zip) = sizes;
    let pair = |b: u64, f: u64| (vec![Some(b as f64)], vec![Some(f as f64)]);
    let zip = if args.quick {
        "layer zip (quick mode: stored, not deflated)"
    } else {
        "layer zip (extension.zip, deflated)"
    };
    vec![
        Figure::new(
            "binary size (stripped), bytes",
            pair(bridge_size, floor_size),
            "B",
            0,
        ),
        Figure::new(
            "binary size (stripped)",
            pair(bridge_size, floor_size),
            "MiB",
            2,
        )
        .scaled(1.0 / MIB)
        .budget("≤ 6 MiB", Check::AtMost(6.0)),
        Figure::new(zip, pair(bridge_zip, floor_zip), "MiB", 2).scaled(1.0 / MIB),
    ]
}

fn build_rows(args: &Args, res: &Results, sizes: (u64, u64, u64, u64)) -> Vec<Row> {
    let mut figures = standard_figures(args, &res.standard, &res.io_standard);
    if !args.skip_big {
        figures.extend(big_batch_figures(args, &res.big));
    }
    figures.extend(size_figures(args, sizes));
    figures.into_iter().map(|f| f.row(args.quick)).collect()
}

async fn run(args: Args) -> Result<bool, String> {
    let bridge = match &args.bridge {
        Some(p) => p.clone(),
        None => next_to_me("lambda-telemetry-bridge")?,
    };
    let floor = match &args.floor {
        Some(p) => p.clone(),
        None => next_to_me("bench-floor")?,
    };
    if args.fleet {
        if !bridge.is_file() {
            return Err(format!("{} does not exist", bridge.display()));
        }
        fleet_series::run(&bridge, args.quick).await?;
        return Ok(true);
    }
    let bins = cost::Binaries {
        bridge: bridge.clone(),
        floor: floor.clone(),
        cpu_function: match &args.cpu_function {
            Some(p) => p.clone(),
            None => next_to_me("bench-cpu-function")?,
        },
    };
    let opts = cost::Options {
        runs: args.runs_flag.unwrap_or(if args.quick { 1 } else { 3 }),
        invocations: args
            .invocations_flag
            .unwrap_or(if args.quick { 12 } else { 200 }),
        cpu_invocations: args
            .cpu_invocations
            .unwrap_or(if args.quick { 6 } else { 60 }),
        cpu_fn_ms: args.cpu_fn_ms,
        quick: args.quick,
        full_cpu: args.full_cpu,
        bridge_env: args.bridge_env.clone(),
    };
    let judge = args.check && !args.quick;
    if args.per_event {
        event_path::run(args.quick).await?;
        return Ok(true);
    }
    if args.cost {
        event_path::run(args.quick).await?;
        let (complete, within) = cost::run_cost(&bins, &opts, args.skip_cpu_bound).await?;
        return Ok(complete && (within || !judge));
    }
    let cpu_bound = |wanted: bool| async move {
        if !wanted {
            return Ok(true);
        }
        for p in [&bins.bridge, &bins.floor] {
            if !p.is_file() {
                return Err(format!("{} does not exist", p.display()));
            }
        }
        let cb = cost::run_cpu_bound(&bins, &opts).await?;
        Ok(cb.complete() && (cb.within_budget() || !judge))
    };
    if args.cpu_bound {
        return cpu_bound(true).await;
    }
    if args.billed {
        if !bridge.is_file() {
            return Err(format!("{} does not exist", bridge.display()));
        }
        billed::run_matrix(&bridge, args.quick, args.full_cpu, &args.only).await?;
        return cpu_bound(args.only.wants_cpu_bound()).await;
    }
    for p in [&bridge, &floor] {
        if !p.is_file() {
            return Err(format!(
                "{} does not exist; build it first with `cargo build --release --bins`",
                p.display()
            ));
        }
    }
    eprintln!(
        "bridge-bench: {} run(s); standard: {} invocations; big: {} invocations × {} log lines",
        args.runs, args.invocations, args.big_invocations, args.big_lines
    );
    eprintln!("  bridge: {}", bridge.display());
    eprintln!("  floor:  {}", floor.display());
    let mut res = Results {
        standard: Vec::new(),
        io_standard: Vec::new(),
        big: Vec::new(),
    };
    let started = Instant::now();
    let load_before = loadavg();
    eprintln!("  load average before: {load_before}");
    for r in 0..args.runs {
        // Alternate who goes first, so that neither always gets the warmer machine.
        let order = if r % 2 == 0 {
            [Ext::Bridge, Ext::Floor, Ext::IoFloor]
        } else {
            [Ext::IoFloor, Ext::Floor, Ext::Bridge]
        };
        let (mut sb, mut sf, mut si) = (
            Standard::default(),
            Standard::default(),
            Standard::default(),
        );
        let (mut bb, mut bf) = (Big::default(), Big::default());
        for ext in order {
            let path = if ext == Ext::Bridge { &bridge } else { &floor };
            let mut s = run_standard(ext, path, args.invocations, &args.bridge_env, false).await?;
            let fresh =
                run_standard(ext, path, args.invocations / 2, &args.bridge_env, true).await?;
            s.cpu_per_invoke_new_connection_ms = fresh.cpu_per_invoke_ms;
            // The big-batch scenario is not measured for the I/O floor (its per-invocation
            // POSTs hardly matter there).
            let b = if args.skip_big || ext == Ext::IoFloor {
                Big::default()
            } else {
                run_big(
                    ext,
                    path,
                    args.big_invocations,
                    args.big_lines,
                    args.quick,
                    &args.bridge_env,
                )
                .await?
            };
            eprintln!(
                "  run {}/{} {:8}: cold {:.2} ms, cpu@start {:.2} ms, overhead {:.3} ms (p99 {:.3}, first {:.3}), cpu/inv {:.3} ms, rss {:.0} KiB | big: rss {:.0} KiB, {} ev, {:.0} ev/cpu-s, {:.0} ev/s, max POST {} ev / {} B",
                r + 1,
                args.runs,
                ext.name(),
                s.cold_start_ms.unwrap_or(f64::NAN),
                s.cpu_start_ms.unwrap_or(f64::NAN),
                s.overhead_ms.unwrap_or(f64::NAN),
                s.overhead_p99_ms.unwrap_or(f64::NAN),
                s.first_overhead_ms.unwrap_or(f64::NAN),
                s.cpu_per_invoke_ms.unwrap_or(f64::NAN),
                s.peak_rss_kib.unwrap_or(f64::NAN),
                b.peak_rss_kib.unwrap_or(f64::NAN),
                b.events,
                b.events_per_cpu_s().unwrap_or(f64::NAN),
                b.events_per_wall_s().unwrap_or(f64::NAN),
                b.batch_events.unwrap_or(f64::NAN),
                b.batch_bytes.unwrap_or(f64::NAN),
            );
            match ext {
                Ext::Bridge => {
                    sb = s;
                    bb = b;
                }
                Ext::Floor => {
                    sf = s;
                    bf = b;
                }
                Ext::IoFloor => si = s,
            }
        }
        res.standard.push((sb, sf));
        res.io_standard.push(si);
        res.big.push((bb, bf));
    }
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let level = if args.quick { 0 } else { 6 };
    let zip = |p: &Path, name: &str| layer_zip(p, name, level).map(|z| z.len() as u64);
    let sizes = (
        size(&bridge),
        size(&floor),
        zip(&bridge, "lambda-telemetry-bridge")?,
        zip(&floor, "bench-floor")?,
    );
    let rows = build_rows(&args, &res, sizes);
    eprintln!(
        "bridge-bench: done in {:.0} s; load average before: {load_before}, after: {}",
        started.elapsed().as_secs_f64(),
        loadavg()
    );
    println!("{}", render(&rows, args.markdown));

    // Every figure must exist and be finite (the floor's where it has one).
    let mut ok = true;
    for r in &rows {
        let b_ok = r.bridge.is_some_and(f64::is_finite);
        let f_ok = !r.floor_expected || r.floor.is_some_and(f64::is_finite);
        let io_ok = !r.io_expected || r.io_floor.is_some_and(f64::is_finite);
        if !b_ok || !f_ok || !io_ok {
            eprintln!("bridge-bench: figure missing or not finite: {}", r.figure);
            ok = false;
        }
    }
    if !args.quick && args.check && rows.iter().any(|r| r.pass == Some(false)) {
        eprintln!("bridge-bench: budget(s) missed");
        ok = false;
    }
    Ok(ok)
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(Some(a)) => a,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("bridge-bench: {e}");
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let rt = match lambda_sim::tool::runtime("bridge-bench") {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    match rt.block_on(run(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("bridge-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quick_overrides_but_flags_win() {
        let a = parse_args(
            ["--quick", "--invocations", "5"]
                .iter()
                .map(|s| s.to_string()),
        );
        let a = a.ok().flatten();
        assert!(a
            .as_ref()
            .is_some_and(|a| a.runs == 1 && a.invocations == 5));
        assert!(parse_args(["--runs", "0"].iter().map(|s| s.to_string())).is_err());
    }

    #[test]
    fn zip_layout() {
        let dir = std::env::temp_dir().join(format!("bridge-bench-zip-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let file = dir.join("x");
        assert!(std::fs::write(&file, vec![7u8; 10_000]).is_ok());
        let z = layer_zip(&file, "x", 6).unwrap_or_default();
        assert!(z.starts_with(&[0x50, 0x4b, 0x03, 0x04]));
        assert!(z.len() < 10_000 && z.len() > 22);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
