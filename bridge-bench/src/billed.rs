//! `bridge-bench --billed`: what each flush policy adds to the bill, as Lambda counts it.
//!
//! One cell per policy × endpoint latency × traffic. Billed time added per invocation is the
//! simulator's "extension overhead": the runtime's response (runtimeDone emitted) → the
//! extension's `/event/next` (`report.durationMs − runtimeDone.durationMs`). Freshness is
//! runtimeDone emitted → its arrival at the raw endpoint, in ms and in invocations begun
//! meanwhile. Lost and duplicated events are counted at the end. The bridge runs at a 128 MB
//! function's CPU share when the harness can make a cgroup for it (root), and says so.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use lambda_sim::stats::{median, percentile};
use lambda_sim::{self as sim, Behaviour, RecordingEndpoint, SimConfig, SimReport};
use serde_json::Value;

use crate::cgroup::{CpuGroup, CPU_PERIOD_US, CPU_QUOTA_US};

pub const POLICIES: [&str; 4] = ["adaptive", "end", "periodic:1000", "shutdown"];
pub const LATENCIES_MS: [u64; 3] = [0, 30, 150];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Traffic {
    /// Back-to-back invocations of a 50 ms function.
    Steady,
    /// 3 s gaps, frozen (SIGSTOP) between invocations.
    Sparse,
}

impl Traffic {
    fn name(self) -> &'static str {
        match self {
            Traffic::Steady => "steady (50 ms fn, back to back)",
            Traffic::Sparse => "sparse (3 s gaps, frozen)",
        }
    }
}

/// One cell's figures.
#[derive(Debug, Default)]
pub struct Cell {
    pub billed_median_ms: Option<f64>,
    pub billed_p95_ms: Option<f64>,
    pub fresh_p95_ms: Option<f64>,
    pub fresh_p95_invocations: Option<f64>,
    pub lost: usize,
    pub duplicated: usize,
}

fn sorted_texts(events: &[Value]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for e in events {
        *counts.entry(e.to_string()).or_insert(0) += 1;
    }
    counts
}

/// Runs one cell.
pub async fn run_cell(
    bridge: &Path,
    policy: &str,
    latency_ms: u64,
    traffic: Traffic,
    invocations: usize,
) -> Result<Cell, String> {
    let latency = Behaviour::ok().with_latency(
        Duration::from_millis(latency_ms),
        Duration::from_millis(latency_ms / 10),
    );
    let raw = RecordingEndpoint::start(latency.clone())
        .await
        .map_err(|e| e.to_string())?;
    let otlp = RecordingEndpoint::start(latency)
        .await
        .map_err(|e| e.to_string())?;
    let env = vec![
        ("DISPATCH_POST_URI".to_string(), raw.url()),
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT".to_string(),
            format!("http://{}", otlp.addr()),
        ),
        ("BRIDGE_FLUSH".to_string(), policy.to_string()),
    ];
    let cfg = SimConfig {
        extension_path: bridge.to_path_buf(),
        extension_env: env,
        invocations,
        runtime_init_ms: 30,
        invoke_duration_ms: 50,
        between_invokes_ms: match traffic {
            Traffic::Steady => 0,
            Traffic::Sparse => 3_000,
        },
        freeze_between_invokes: true,
        capture_output: true,
        ..SimConfig::default()
    };
    let report = sim::run(cfg).await.map_err(|e| e.to_string())?;
    if !report.clean() {
        let out = &report.extension_output;
        let tail = &out[out.len().saturating_sub(1500)..];
        return Err(format!(
            "{policy} / {latency_ms} ms / {}: run not clean\n{tail}",
            traffic.name()
        ));
    }
    Ok(figures(&report, &raw))
}

/// Billed time, freshness at the raw endpoint, and events lost and duplicated there.
pub fn figures(report: &SimReport, raw: &RecordingEndpoint) -> Cell {
    let billed: Vec<f64> = report
        .invocations
        .iter()
        .map(|i| i.extension_overhead.as_secs_f64() * 1e3)
        .collect();
    // When each invocation's runtimeDone reached the raw endpoint.
    let requests = raw.requests();
    let mut arrived = BTreeMap::new();
    for request in requests.iter().filter(|r| r.succeeded()) {
        let events: Vec<Value> = serde_json::from_slice(&request.body).unwrap_or_default();
        for e in events {
            if e["type"] == "platform.runtimeDone" {
                if let Some(id) = e["record"]["requestId"].as_str() {
                    arrived.entry(id.to_string()).or_insert(request.arrived_at);
                }
            }
        }
    }
    let mut fresh_ms = Vec::new();
    let mut fresh_invocations = Vec::new();
    for invocation in &report.invocations {
        if let Some(at) = arrived.get(&invocation.request_id) {
            let emitted = invocation.runtime_done_emitted;
            fresh_ms.push(at.saturating_duration_since(emitted).as_secs_f64() * 1e3);
            let begun = report
                .invocations
                .iter()
                .filter(|i| i.invoked_at > emitted && i.invoked_at <= *at)
                .count();
            fresh_invocations.push(begun as f64);
        }
    }
    let sent = sorted_texts(&report.events_sent);
    let received = sorted_texts(&raw.received_events());
    let (mut lost, mut duplicated) = (0, 0);
    for (text, n) in &sent {
        let got = received.get(text).copied().unwrap_or(0);
        lost += n.saturating_sub(got);
        duplicated += got.saturating_sub(*n);
    }
    duplicated += received
        .iter()
        .filter(|(t, _)| !sent.contains_key(*t))
        .map(|(_, n)| n)
        .sum::<usize>();
    Cell {
        billed_median_ms: median(&billed),
        billed_p95_ms: percentile(&billed, 95.0),
        fresh_p95_ms: percentile(&fresh_ms, 95.0),
        fresh_p95_invocations: percentile(&fresh_invocations, 95.0),
        lost,
        duplicated,
    }
}

fn num(v: Option<f64>, decimals: usize) -> String {
    v.map_or("–".into(), |v| format!("{v:.decimals$}"))
}

/// `--only`'s name of the CPU-bound function scenario.
pub const CPU_BOUND: &str = "cpu-bound";

/// Which cells to run (`--only`, e.g. `steady,150,adaptive`): each part filters one axis;
/// `--only cpu-bound` runs only the CPU-bound function scenario, and any other `--only` skips it.
#[derive(Debug, Clone, Default)]
pub struct Only(Vec<String>);

impl Only {
    pub fn parse(raw: &str) -> Only {
        Only(raw.split(',').map(|p| p.trim().to_string()).collect())
    }

    /// `cpu-bound` alone: only the CPU-bound function scenario.
    fn only_cpu_bound(&self) -> bool {
        !self.0.is_empty() && self.0.iter().all(|p| p == CPU_BOUND)
    }

    /// Whether the policy matrix runs (not under `--only cpu-bound`).
    pub fn wants_matrix(&self) -> bool {
        !self.only_cpu_bound()
    }

    /// Whether the CPU-bound function scenario runs: without `--only`, or with
    /// `--only cpu-bound`.
    pub fn wants_cpu_bound(&self) -> bool {
        self.0.is_empty() || self.only_cpu_bound()
    }

    fn wants(&self, traffic: Traffic, latency: u64, policy: &str) -> bool {
        let traffic = match traffic {
            Traffic::Steady => "steady",
            Traffic::Sparse => "sparse",
        };
        let latency = latency.to_string();
        self.0.iter().all(|part| {
            let axis_of = |p: &str| {
                if p == "steady" || p == "sparse" {
                    0
                } else if p.parse::<u64>().is_ok() {
                    1
                } else {
                    2
                }
            };
            match axis_of(part) {
                0 => part == traffic,
                1 => *part == latency,
                _ => part == policy,
            }
        })
    }
}

/// Runs the whole matrix (or the cells `only` names) and prints it as a Markdown table.
pub async fn run_matrix(
    bridge: &Path,
    quick: bool,
    full_cpu: bool,
    only: &Only,
) -> Result<(), String> {
    if !only.wants_matrix() {
        return Ok(());
    }
    let mut group = None;
    let (target, cpu) = if full_cpu {
        (bridge.to_path_buf(), "full CPU".to_string())
    } else {
        match CpuGroup::create("billed").and_then(|mut g| {
            let script = g.wrapper(bridge, "bridge")?;
            Ok((g, script))
        }) {
            Ok((made, script)) => {
                eprintln!(
                    "  bridge CPU: {CPU_QUOTA_US}/{CPU_PERIOD_US} µs per period (cgroup {})",
                    made.dir().display()
                );
                group = Some(made);
                (script, "a 128 MB function's CPU share (7.2 %)".to_string())
            }
            Err(e) => {
                eprintln!("  no CPU cgroup ({e}): figures at full CPU");
                (
                    bridge.to_path_buf(),
                    "full CPU, no cgroup (not possible here)".to_string(),
                )
            }
        }
    };
    let result = run_cells(&target, quick, only, &cpu).await;
    // Removed once every bridge has exited.
    drop(group);
    result
}

async fn run_cells(target: &Path, quick: bool, only: &Only, cpu: &str) -> Result<(), String> {
    let (steady_n, sparse_n) = if quick { (12, 2) } else { (60, 6) };
    println!(
        "Billed time added per invocation, freshness and loss, by flush policy ({cpu}; endpoints \
         answer after the latency ± 10 %; a kept-alive push connection)\n"
    );
    println!("| traffic | latency | policy | billed median (ms) | billed p95 (ms) | fresh p95 (ms) | fresh p95 (invocations) | lost | duplicated |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for traffic in [Traffic::Steady, Traffic::Sparse] {
        for latency in LATENCIES_MS {
            for policy in POLICIES {
                if !only.wants(traffic, latency, policy) {
                    continue;
                }
                let n = match traffic {
                    Traffic::Steady => steady_n,
                    Traffic::Sparse => sparse_n,
                };
                let cell = run_cell(target, policy, latency, traffic, n).await?;
                let latency_text = if latency == 0 {
                    "loopback".to_string()
                } else {
                    format!("{latency} ms")
                };
                println!(
                    "| {} | {latency_text} | {policy} | {} | {} | {} | {} | {} | {} |",
                    traffic.name(),
                    num(cell.billed_median_ms, 1),
                    num(cell.billed_p95_ms, 1),
                    num(cell.fresh_p95_ms, 0),
                    num(cell.fresh_p95_invocations, 0),
                    cell.lost,
                    cell.duplicated,
                );
            }
        }
    }
    Ok(())
}
