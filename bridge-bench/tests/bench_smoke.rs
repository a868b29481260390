//! CI smoke test of the benchmark harness: `bridge-bench --quick` must produce every figure (finite,
//! for the bridge and the floor) and exit 0. It checks that the harness works, not how fast the
//! bridge is (no budgets in quick mode; these are debug builds anyway).

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Longest the smoke run may take before it is killed.
const LIMIT: Duration = Duration::from_secs(120);

/// Runs `bridge-bench` with `args` (the bridge and floor of this build), killed after [`LIMIT`];
/// panics unless it exits 0. Returns its stdout.
fn bridge_bench(args: &[&str]) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bridge-bench"));
    cmd.args(args)
        .arg("--bridge")
        .arg(bridge_binary())
        .arg("--floor")
        .arg(env!("CARGO_BIN_EXE_bench-floor"))
        .arg("--cpu-function")
        .arg(env!("CARGO_BIN_EXE_bench-cpu-function"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, _) in std::env::vars() {
        if k.starts_with("BRIDGE_") || k.starts_with("DISPATCH_") || k.starts_with("OTEL_") {
            cmd.env_remove(k);
        }
    }
    let mut child = cmd.spawn().expect("bridge-bench starts");
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for bridge-bench") {
            break Some(status);
        }
        if started.elapsed() > LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = out_reader.join().unwrap_or_default();
    let stderr = err_reader.join().unwrap_or_default();
    let status = status.unwrap_or_else(|| {
        panic!("bridge-bench {args:?} did not finish within {LIMIT:?}\n{stdout}\n{stderr}")
    });
    assert!(
        status.success(),
        "bridge-bench {args:?} failed ({status})\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}"
    );
    stdout
}

#[test]
fn bridge_bench_quick_produces_every_figure() {
    let stdout = bridge_bench(&["--quick"]);
    for figure in [
        "cold start",
        "CPU to first /event/next",
        "per-invoke overhead",
        "CPU per invocation",
        "a new connection per telemetry push",
        "peak RSS after",
        "throughput, events per CPU-second",
        "binary size (stripped)",
        "layer zip",
        "push-only floor",
        "I/O floor",
    ] {
        assert!(
            stdout.contains(figure),
            "no {figure:?} line in the table:\n{stdout}"
        );
    }
}

/// The billed-time matrix, one cell per policy on loopback with steady traffic: every figure is
/// there, nothing lost or duplicated, and `end` is billed while `adaptive` is not held.
#[test]
fn bridge_bench_billed_produces_a_row_per_policy() {
    let stdout = bridge_bench(&["--billed", "--quick", "--full-cpu", "--only", "steady,0"]);
    let rows: Vec<Vec<String>> = stdout
        .lines()
        .filter(|l| l.starts_with("| steady"))
        .map(|l| l.split('|').map(|c| c.trim().to_string()).collect())
        .collect();
    assert_eq!(rows.len(), 4, "{stdout}");
    for row in &rows {
        // | traffic | latency | policy | billed median | p95 | fresh ms | fresh inv | lost | dup |
        assert_eq!(row.len(), 11, "{stdout}");
        for cell in &row[4..8] {
            assert!(cell.parse::<f64>().is_ok(), "{cell:?} in {stdout}");
        }
        assert_eq!((row[8].as_str(), row[9].as_str()), ("0", "0"), "{stdout}");
    }
    let billed = |policy: &str| -> f64 {
        rows.iter()
            .find(|r| r[3] == policy)
            .map(|r| r[4].parse().unwrap_or(f64::NAN))
            .unwrap_or(f64::NAN)
    };
    // The Telemetry API's buffering window (25 ms) is billed under end, never under adaptive's
    // steady traffic: a difference no machine's speed can turn around.
    assert!(billed("end") > 10.0, "{stdout}");
    assert!(billed("adaptive") < 5.0, "{stdout}");
}

/// The standard cost scenario and the CPU-bound function, at full CPU: every row of the table is
/// there with a finite figure for the bridge, nothing lost or duplicated, and the CPU-bound
/// function really burns its CPU time (its own CPU per invocation, read from `/proc`, and its
/// duration are at least what it was asked to burn).
#[test]
fn bridge_bench_cost_produces_every_figure() {
    let stdout = bridge_bench(&["--cost", "--quick", "--full-cpu", "--cpu-fn-ms", "20"]);
    // | figure | CPU | bridge | push-only floor | I/O floor | ratio | budget | result |
    let rows: Vec<Vec<String>> = stdout
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| figure") && !l.starts_with("| run"))
        .map(|l| l.split('|').map(|c| c.trim().to_string()).collect())
        .filter(|r: &Vec<String>| r.len() == 10)
        .collect();
    let row = |figure: &str| -> &Vec<String> {
        rows.iter()
            .find(|r| r[1].starts_with(figure))
            .unwrap_or_else(|| panic!("no {figure:?} row:\n{stdout}"))
    };
    let value = |cell: &str| -> f64 { cell.parse::<f64>().unwrap_or(f64::NAN) };
    for figure in [
        "CPU per invocation",
        "requests per invocation, raw",
        "requests per invocation, /v1/traces",
        "requests per invocation, /v1/logs",
        "requests per invocation, /v1/metrics",
        "requests per invocation, all outputs",
        "invocation rate",
        "freshness p95",
        "events lost",
        "events duplicated",
        "CPU-bound function (20 ms CPU/inv): mean duration",
        "CPU-bound function: added per invocation",
        "CPU-bound function: its own CPU per invocation",
    ] {
        let r = row(figure);
        assert!(value(&r[3]).is_finite(), "{figure}: {:?}\n{stdout}", r[3]);
    }
    let cpu = row("CPU per invocation");
    assert!(
        value(&cpu[4]).is_finite() && value(&cpu[5]).is_finite(),
        "{stdout}"
    );
    assert_eq!(value(&row("events lost")[3]), 0.0, "{stdout}");
    assert_eq!(value(&row("events duplicated")[3]), 0.0, "{stdout}");
    // The push-only floor sends nothing; the I/O floor one request per output per invocation.
    let raw = row("requests per invocation, raw");
    assert_eq!(value(&raw[4]), 0.0, "{stdout}");
    assert!(value(&raw[5]) >= 0.5, "{stdout}");
    let duration = row("CPU-bound function (20 ms CPU/inv): mean duration");
    let burned = row("CPU-bound function: its own CPU per invocation");
    for k in [3, 4] {
        assert!(value(&duration[k]) >= 20.0, "{stdout}");
        assert!(value(&burned[k]) >= 19.0, "{stdout}");
    }
    assert!(stdout.contains("full CPU, no cgroup"), "{stdout}");
    // CPU per event by kind: | event | µs |, a finite figure for each kind (a difference of
    // two runs: on a busy machine a quick run may even make it slightly negative).
    for kind in [
        "platform.start",
        "platform.runtimeDone",
        "platform.report",
        "function log line, text",
        "function log line, JSON",
        "function log line, JSON, every mask preset",
        "an invocation's start + runtimeDone + report, spans exported",
        "an invocation's start + runtimeDone + report, spans sampled out",
    ] {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(&format!("| {kind} |")))
            .unwrap_or_else(|| panic!("no CPU per event row for {kind}:\n{stdout}"));
        let us = line
            .split('|')
            .nth(2)
            .and_then(|c| c.trim().parse::<f64>().ok())
            .unwrap_or(f64::NAN);
        assert!(us.is_finite(), "{kind}: {line}");
    }
    // Masking: a row per rule set, two finite figures each (the harness itself checks that
    // exactly the lines with a match were changed).
    for rules in [
        "none",
        "card_numbers",
        "bearer_tokens",
        "emails",
        "aws_access_keys",
        "all four",
    ] {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(&format!("| {rules} |")))
            .unwrap_or_else(|| panic!("no masking row for {rules}:\n{stdout}"));
        let cells: Vec<f64> = line
            .split('|')
            .filter_map(|c| c.trim().parse::<f64>().ok())
            .collect();
        assert_eq!(cells.len(), 2, "{line}");
    }
}

#[test]
fn bridge_bench_fleet_counts_the_exposed_series() {
    let stdout = bridge_bench(&["--fleet", "--quick"]);
    let number = |label: &str| -> Option<f64> {
        stdout
            .lines()
            .find(|l| l.starts_with(label))?
            .get(label.len()..)?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    assert_eq!(number("environments started"), Some(6.0), "{stdout}");
    let per_environment = number("series per environment").expect("series per environment");
    assert!(per_environment > 10.0, "{stdout}");
    let most = number("series exposed, most at one time").expect("most exposed");
    let ever = number("series ever exposed (no expiry)").expect("ever");
    assert!(most > 0.0 && most <= ever, "{stdout}");
}

/// The extension binary, built by `cargo test` at the workspace root beside this package's own
/// binaries (this package does not depend on the extension crate, so Cargo does not name it).
fn bridge_binary() -> std::path::PathBuf {
    let path = std::path::Path::new(env!("CARGO_BIN_EXE_bridge-bench"))
        .with_file_name("lambda-telemetry-bridge");
    assert!(
        path.exists(),
        "{} is missing: run `cargo test` at the workspace root (it builds the extension too)",
        path.display()
    );
    path
}
