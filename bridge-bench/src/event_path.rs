//! CPU per event by kind: the bridge's own event path (the listener's parse of a Telemetry API
//! POST, the queue, the OTLP mapping and encoding, the raw batch, the HTTP requests), run in
//! this process on one thread, with both outputs on (raw JSON and OTLP http/protobuf) and their
//! endpoints answering on another thread, so that the figure is the bridge's CPU only.
//!
//! Events come as Lambda pushes them (POSTs of `PUSH_EVENTS`), and are delivered in flushes of
//! `FLUSH_EVENTS` (what a coalesced delivery beside the lifecycle holds). `platform.start`,
//! `platform.runtimeDone` and `platform.report` are measured as Lambda sends them, in that order
//! for each invocation: runtimeDone's figure is (start + runtimeDone) − start, the report's is
//! (start + runtimeDone + report) − (start + runtimeDone), so that each pays what it costs in the
//! state the others leave (a runtimeDone makes the invocation's span and its phases, a report
//! the extensions' overhead span and ends the invocation). Log lines join an invocation that
//! started. Thread CPU time (`CLOCK_THREAD_CPUTIME_ID`), the median of `RUNS` runs.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use lambda_sim::events::{self, ReportArgs, RuntimeOutcome};
use lambda_sim::stats::median;
use lambda_sim::{Behaviour, RecordingEndpoint};
use lambda_telemetry_bridge::http::LazyClient;
use lambda_telemetry_bridge::lifecycle::Registration;
use lambda_telemetry_bridge::pipeline::{FlushReason, Pipeline, Sink};
use lambda_telemetry_bridge::settings::Settings;
use lambda_telemetry_bridge::sinks::otlp::{FunctionIdentity, OtlpSink};
use lambda_telemetry_bridge::sinks::raw_json::RawJsonSink;
use lambda_telemetry_bridge::telemetry::batch::parse_batch;
use serde_json::Value;

/// Events per Telemetry API POST.
const PUSH_EVENTS: usize = 20;
/// Events per delivery.
const FLUSH_EVENTS: usize = 500;
const RUNS: usize = 5;

/// The kinds measured, by name; the last two rows are a whole invocation's three platform
/// events, with its spans exported and sampled out (`OTEL_TRACES_SAMPLER=always_off`).
pub const KINDS: [&str; 8] = [
    "platform.start",
    "platform.runtimeDone",
    "platform.report",
    "function log line, text",
    "function log line, JSON",
    "function log line, JSON, every mask preset",
    "an invocation's start + runtimeDone + report, spans exported",
    "an invocation's start + runtimeDone + report, spans sampled out",
];

/// This thread's CPU time, in ns.
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own; the clock id is a constant.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return 0;
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// What one invocation's events look like (the simulator's generators, as in every scenario).
struct Invocation {
    start: Value,
    runtime_done: Value,
    report: Value,
    text_log: Value,
    json_log: Value,
}

fn invocation(i: usize) -> Invocation {
    let request_id = events::uuid();
    let begun = SystemTime::now();
    let duration = Duration::from_millis(10 + (i % 7) as u64);
    let outcome = RuntimeOutcome {
        request_id: request_id.clone(),
        status: "success".into(),
        error_type: None,
        start: begun,
        duration,
        produced_bytes: 120,
        trace: None,
        tenant_id: None,
    };
    let ended = begun + duration;
    let args = ReportArgs {
        duration: duration + Duration::from_micros(300),
        memory_mb: 128,
        max_memory_used_mb: 40,
        init_duration: None,
        restore_duration: None,
        extension_overhead: Some((ended, Duration::from_micros(300))),
    };
    Invocation {
        start: events::platform_start(begun, &request_id, "$LATEST", None),
        text_log: events::function_text_log(begun, &request_id, "INFO", "handled order 1234"),
        json_log: events::function_json_log(begun, &request_id, "INFO", "handled order 1234"),
        runtime_done: events::runtime_done(ended, &outcome),
        report: events::report(ended + Duration::from_micros(300), &outcome, &args),
    }
}

/// The endpoints, on a thread of their own (their CPU is not the bridge's).
struct Endpoints {
    raw: String,
    otlp: String,
    _stop: std::sync::mpsc::Sender<()>,
}

fn endpoints() -> Result<Endpoints, String> {
    let (urls_tx, urls_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                let _ = urls_tx.send(Err(e.to_string()));
                return;
            }
        };
        rt.block_on(async move {
            let started = async {
                let raw = RecordingEndpoint::start(Behaviour::ok()).await?;
                let otlp = RecordingEndpoint::start(Behaviour::ok()).await?;
                Ok::<_, lambda_sim::SimError>((raw, otlp))
            };
            match started.await {
                Ok((raw, otlp)) => {
                    let _ = urls_tx.send(Ok((raw.url(), otlp.url())));
                    // Answer until the bench is done; forget what was recorded as it goes.
                    while stop_rx.try_recv() == Err(std::sync::mpsc::TryRecvError::Empty) {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        raw.clear();
                        otlp.clear();
                    }
                }
                Err(e) => {
                    let _ = urls_tx.send(Err(e.to_string()));
                }
            }
        });
    });
    let (raw, otlp) = urls_rx.recv().map_err(|e| e.to_string()).and_then(|r| r)?;
    Ok(Endpoints {
        raw,
        otlp,
        _stop: stop_tx,
    })
}

/// The bridge's sinks and pipeline as the extension builds them, from these settings and
/// `extra`.
fn pipeline(ends: &Endpoints, extra: &[(&'static str, &str)]) -> Result<Arc<Pipeline>, String> {
    let mut vars: HashMap<&str, String> = [
        ("AWS_LAMBDA_RUNTIME_API", "127.0.0.1:9001".to_string()),
        ("AWS_LAMBDA_FUNCTION_NAME", "bench-fn".into()),
        ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128".into()),
        ("AWS_REGION", "us-east-1".into()),
        ("DISPATCH_POST_URI", ends.raw.clone()),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", ends.otlp.clone()),
    ]
    .into_iter()
    .collect();
    vars.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
    let (settings, issues) =
        Settings::from_lookup(|k| vars.get(k).cloned()).map_err(|e| format!("settings: {e}"))?;
    if !issues.is_empty() {
        return Err(format!("settings: {issues:?}"));
    }
    let dispatch = settings.dispatch.ok_or("no raw sink")?;
    let otlp = settings.otlp.ok_or("no OTLP sink")?;
    let urls = [&dispatch.uri].into_iter().chain(
        [&otlp.traces, &otlp.metrics, &otlp.logs]
            .into_iter()
            .flatten()
            .map(|s| &s.endpoint),
    );
    let http = Arc::new(LazyClient::for_urls(urls));
    let registration = Registration {
        extension_id: "bench".into(),
        function_name: Some("bench-fn".into()),
        function_version: Some("$LATEST".into()),
        handler: None,
        account_id: None,
    };
    let identity = FunctionIdentity::new(&registration, &settings.core.lambda);
    let raw = RawJsonSink::new(&dispatch, None, http.clone()).map_err(|e| e.to_string())?;
    let sinks: Vec<Arc<dyn Sink>> = vec![
        Arc::new(raw),
        Arc::new(OtlpSink::new(otlp, &identity, http)),
    ];
    Ok(Arc::new(Pipeline::new(
        sinks,
        settings.core.queue_max_events,
        settings.core.queue_max_bytes,
    )))
}

/// The POST bodies for `events`, `PUSH_EVENTS` each.
fn bodies(events: &[&Value]) -> Vec<Bytes> {
    events
        .chunks(PUSH_EVENTS)
        .map(|c| Bytes::from(serde_json::to_vec(c).unwrap_or_default()))
        .collect()
}

/// CPU (ns) the bridge spends on `events`: parsed as pushed, queued, delivered every
/// `FLUSH_EVENTS`. A warm-up run first (connections, the OTLP SDK's state, buffers).
async fn cpu_for(pipeline: &Pipeline, bodies: &[Bytes]) -> Result<u64, String> {
    let flush = || async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let report = pipeline.flush(FlushReason::Background, deadline).await;
        if report.iter().any(|s| s.done < s.offered) {
            return Err(format!("a flush did not deliver: {report:?}"));
        }
        Ok(())
    };
    let started = thread_cpu_ns();
    let mut queued = 0;
    for body in bodies {
        let batch = parse_batch(body, 10_000, false).map_err(|e| e.to_string())?;
        queued += batch.events.len();
        pipeline.push(batch.events);
        if queued >= FLUSH_EVENTS {
            flush().await?;
            queued = 0;
        }
    }
    flush().await?;
    Ok(thread_cpu_ns() - started)
}

/// µs per event of each kind (in [`KINDS`]' order), medians over the runs.
pub async fn per_event_us(events_per_kind: usize) -> Result<Vec<f64>, String> {
    let ends = endpoints()?;
    let mut runs: Vec<Vec<f64>> = vec![Vec::new(); KINDS.len()];
    for _ in 0..RUNS {
        let invocations: Vec<Invocation> = (0..events_per_kind).map(invocation).collect();
        let pick = |f: &dyn Fn(&Invocation) -> Vec<&Value>| -> Vec<Bytes> {
            bodies(&invocations.iter().flat_map(f).collect::<Vec<_>>())
        };
        let masked: &[(&str, &str)] = &[("BRIDGE_MASK_PRESETS", "all")];
        let sampled_out: &[(&str, &str)] = &[("OTEL_TRACES_SAMPLER", "always_off")];
        let sets = [
            (pick(&|i| vec![&i.start]), &[][..]),
            (pick(&|i| vec![&i.start, &i.runtime_done]), &[][..]),
            (
                pick(&|i| vec![&i.start, &i.runtime_done, &i.report]),
                &[][..],
            ),
            (pick(&|i| vec![&i.start, &i.text_log]), &[][..]),
            (pick(&|i| vec![&i.start, &i.json_log]), &[][..]),
            (pick(&|i| vec![&i.start, &i.json_log]), masked),
            (
                pick(&|i| vec![&i.start, &i.runtime_done, &i.report]),
                sampled_out,
            ),
        ];
        let mut cpu = Vec::new();
        for (set, extra) in &sets {
            // A pipeline of its own for each set: no state left by another.
            let pipeline = pipeline(&ends, extra)?;
            let warm = pick(&|i| vec![&i.start, &i.runtime_done, &i.report]);
            cpu_for(&pipeline, &warm[..warm.len().min(10)]).await?;
            cpu.push(cpu_for(&pipeline, set).await? as f64);
        }
        let n = events_per_kind as f64;
        let us = |ns: f64| ns / n / 1e3;
        runs[0].push(us(cpu[0]));
        runs[1].push(us(cpu[1] - cpu[0]));
        runs[2].push(us(cpu[2] - cpu[1]));
        runs[3].push(us(cpu[3] - cpu[0]));
        runs[4].push(us(cpu[4] - cpu[0]));
        runs[5].push(us(cpu[5] - cpu[0]));
        runs[6].push(us(cpu[2]));
        runs[7].push(us(cpu[6]));
    }
    Ok(runs.iter().map(|r| median(r).unwrap_or(f64::NAN)).collect())
}

/// Prints the table.
pub async fn run(quick: bool) -> Result<Vec<f64>, String> {
    let n = if quick { 300 } else { 3_000 };
    eprintln!("bridge-bench: CPU per event by kind, {n} events per kind, {RUNS} runs");
    let us = per_event_us(n).await?;
    println!(
        "\nCPU per event by kind (the bridge's event path in one thread: parse of each {PUSH_EVENTS}-event \
         push, queue, raw batch and OTLP http/protobuf mapping and encoding, requests to endpoints on \
         another thread; a delivery per {FLUSH_EVENTS} events; median of {RUNS} runs of {n} events)\n"
    );
    println!("| event | CPU per event (µs) |");
    println!("|---|---:|");
    for (kind, v) in KINDS.iter().zip(&us) {
        println!("| {kind} | {v:.1} |");
    }
    let lines = if quick { 2_000 } else { 200_000 };
    println!(
        "\nMasking one 200-byte log line (Masking::mask, this thread's CPU, {lines} lines; \
         a line with nothing to mask, and one with one match)\n"
    );
    println!("| rules | ns per line, nothing to mask | ns per line, one match |");
    println!("|---|---:|---:|");
    for (rules, clean, matched) in masking_ns(lines)? {
        println!("| {rules} | {clean:.0} | {matched:.0} |");
    }
    Ok(us)
}

/// ns per 200-byte line for no rules, each preset alone and every preset together: a line with
/// nothing to mask and one with one match of that preset.
fn masking_ns(lines: usize) -> Result<Vec<(String, f64, f64)>, String> {
    use lambda_telemetry_bridge::masking::Masking;
    use lambda_telemetry_bridge::self_metrics::SinkLabel;
    let pad = |text: &str| {
        let mut line = format!(
            "2024-05-01T12:00:00.000Z\t8f5e0c9a-1b2c-4d3e-9f00-123456789abc\tINFO\t{text} "
        );
        while line.len() < 200 {
            line.push_str("order 1234 shipped to warehouse 7, ");
        }
        line.truncate(200);
        line
    };
    let clean = pad("handled the request in 12 ms for tenant blue");
    let cases = [
        ("none", "", "nothing"),
        (
            "card_numbers",
            "card_numbers",
            "paid with 4111 1111 1111 1111",
        ),
        (
            "bearer_tokens",
            "bearer_tokens",
            "header Bearer eyJhbGciOiJIUzI1NiJ9.x",
        ),
        ("emails", "emails", "mailed jane.doe@example.com"),
        (
            "aws_access_keys",
            "aws_access_keys",
            "key AKIAIOSFODNN7EXAMPLE",
        ),
        ("all four", "all", "mailed jane.doe@example.com"),
    ];
    let mut out = Vec::new();
    for (label, presets, matching) in cases {
        let vars: HashMap<&str, String> = [
            ("AWS_LAMBDA_RUNTIME_API", "127.0.0.1:9001".to_string()),
            ("BRIDGE_MASK_PRESETS", presets.to_string()),
        ]
        .into_iter()
        .collect();
        let (settings, issues) =
            Settings::from_lookup(|k| vars.get(k).cloned()).map_err(|e| e.to_string())?;
        if !issues.is_empty() {
            return Err(format!("masking settings: {issues:?}"));
        }
        let masking: &Masking = &settings.masking;
        let matched = pad(matching);
        let mut per_line = [0.0; 2];
        for (k, line) in [&clean, &matched].into_iter().enumerate() {
            let started = thread_cpu_ns();
            let mut changed = 0usize;
            for _ in 0..lines {
                changed += usize::from(
                    masking
                        .mask(std::hint::black_box(line), SinkLabel::Otlp)
                        .is_some(),
                );
            }
            per_line[k] = (thread_cpu_ns() - started) as f64 / lines as f64;
            let expected = if k == 1 && !presets.is_empty() {
                lines
            } else {
                0
            };
            if changed != expected {
                return Err(format!(
                    "masking {label}: {changed} of {lines} lines changed, expected {expected}"
                ));
            }
        }
        out.push((label.to_string(), per_line[0], per_line[1]));
    }
    Ok(out)
}
