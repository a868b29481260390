//! CI smoke test of the benchmark harness: `bridge-bench --quick` must produce every figure (finite,
//! for the bridge and the floor) and exit 0. It checks that the harness works, not how fast the
//! bridge is (no budgets in quick mode; these are debug builds anyway).

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Longest the smoke run may take before it is killed.
const LIMIT: Duration = Duration::from_secs(120);

#[test]
fn bridge_bench_quick_produces_every_figure() {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bridge-bench"));
    cmd.arg("--quick")
        .arg("--bridge")
        .arg(bridge_binary())
        .arg("--floor")
        .arg(env!("CARGO_BIN_EXE_bench-floor"))
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
        panic!("bridge-bench --quick did not finish within {LIMIT:?}\n{stdout}\n{stderr}")
    });
    assert!(
        status.success(),
        "bridge-bench --quick failed ({status})\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}"
    );
    for figure in [
        "cold start",
        "CPU to first /event/next",
        "per-invoke overhead",
        "CPU per invocation",
        "peak RSS after",
        "throughput, events per CPU-second",
        "binary size (stripped)",
        "layer zip",
    ] {
        assert!(
            stdout.contains(figure),
            "no {figure:?} line in the table:\n{stdout}"
        );
    }
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
