//! The `lambda-sim` command line, run as a user runs it: the built binary with the built bridge,
//! its embedded raw JSON endpoint and OTLP receiver, and its summary.

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Longest a run may take before it is killed.
const LIMIT: Duration = Duration::from_secs(60);

struct Run {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Runs `lambda-sim` with `args` (and `--extension` set to the built bridge, `--quiet`), in an
/// environment without the user's BRIDGE_*, DISPATCH_* and OTEL_* variables. With `signal`, sends
/// that signal once `after` invocation lines were printed.
fn lambda_sim(args: &[&str], signal: Option<(usize, libc::c_int)>) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lambda-sim"));
    cmd.args(args)
        .arg("--quiet")
        .arg("--extension")
        .arg(bridge_binary())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, _) in std::env::vars() {
        if k.starts_with("BRIDGE_") || k.starts_with("DISPATCH_") || k.starts_with("OTEL_") {
            cmd.env_remove(k);
        }
    }
    let mut child = cmd.spawn().expect("lambda-sim starts");
    let (tx, rx) = mpsc::channel::<String>();
    let stdout = child.stdout.take().expect("piped stdout");
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut stderr = child.stderr.take().expect("piped stderr");
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });

    let started = Instant::now();
    let mut lines: Vec<String> = Vec::new();
    let mut signalled = false;
    let status = loop {
        // Bounded: a fast run prints more often than the wait, which must not keep this loop
        // from checking the signal and the exit.
        let round = Instant::now() + Duration::from_millis(50);
        while let Ok(line) = rx.recv_timeout(round.saturating_duration_since(Instant::now())) {
            lines.push(line);
        }
        if let Some((after, sig)) = signal {
            let invocations = lines.iter().filter(|l| l.starts_with("  #")).count();
            if !signalled && invocations >= after {
                let pid = libc::pid_t::try_from(child.id()).expect("a pid");
                // SAFETY: kill(2) on our own, not yet reaped child.
                unsafe {
                    libc::kill(pid, sig);
                }
                signalled = true;
            }
        }
        if let Some(status) = child.try_wait().expect("wait for lambda-sim") {
            break status;
        }
        if started.elapsed() > LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "lambda-sim did not finish within {LIMIT:?}; output so far:\n{}",
                lines.join("\n")
            );
        }
    };
    let _ = reader.join();
    lines.extend(rx.try_iter());
    Run {
        status,
        stdout: lines.join("\n"),
        stderr: err_reader.join().unwrap_or_default(),
    }
}

/// The first number after `label` on the line that starts with it.
fn number_after(out: &str, label: &str) -> Option<u64> {
    out.lines()
        .find(|l| l.starts_with(label))?
        .get(label.len()..)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[test]
fn five_invocations_with_the_embedded_otlp_receiver() {
    let run = lambda_sim(&["--invocations", "5", "--logs-dropped-every", "2"], None);
    let out = &run.stdout;
    assert!(
        run.status.success(),
        "exit {:?}\n{out}\n{}",
        run.status,
        run.stderr
    );
    assert!(out.contains("lambda-sim: OTLP -> embedded receiver http://127.0.0.1:"));
    assert_eq!(
        out.lines().filter(|l| l.starts_with("  #")).count(),
        5,
        "one live line per invocation\n{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("exactly once, in order") && l.trim_end().ends_with(" yes")),
        "{out}"
    );
    assert!(number_after(out, "  platform.logsDropped").is_some_and(|n| n == 2));
    assert!(out.contains("result: OK"), "{out}");

    // What the OTLP receiver got.
    assert!(
        out.contains("OTLP received by the embedded receiver"),
        "{out}"
    );
    let requests = out
        .lines()
        .find(|l| l.starts_with("  OTLP requests"))
        .unwrap_or_default();
    assert!(requests.contains("(protobuf)"), "{requests}");
    for signal in ["traces", "metrics", "logs"] {
        let n = requests
            .split_once(&format!(" {signal} "))
            .and_then(|(_, rest)| rest.split([',', ' ']).next())
            .and_then(|n| n.parse::<u64>().ok());
        assert!(
            n.is_some_and(|n| n > 0),
            "{signal} requests in {requests:?}"
        );
    }
    assert!(
        number_after(out, "  spans").is_some_and(|n| n >= 5 * 5),
        "{out}"
    );
    for name in [
        "sim-function",
        "responseLatency",
        "responseDuration",
        "runtimeOverhead",
        "extensionOverhead",
    ] {
        assert!(
            number_after(out, &format!("    {name} ")).is_some_and(|n| n == 5),
            "5 spans named {name}\n{out}"
        );
    }
    assert!(number_after(out, "    sim-function init").is_some_and(|n| n == 1));
    assert!(
        number_after(out, "  metric names").is_some_and(|n| n > 0),
        "{out}"
    );
    for metric in [
        "faas.invoke_duration",
        "faas.coldstarts",
        "aws.lambda.logs_dropped.records",
    ] {
        assert!(
            out.lines()
                .any(|l| l.starts_with(&format!("    {metric} "))),
            "metric {metric}\n{out}"
        );
    }
    assert!(
        number_after(out, "  log records").is_some_and(|n| n > 0),
        "{out}"
    );

    // The first invocation's trace as a tree.
    let tree: Vec<&str> = out
        .lines()
        .skip_while(|l| !l.starts_with("  example trace "))
        .skip(1)
        .take_while(|l| l.starts_with("    "))
        .map(str::trim)
        .collect();
    assert!(
        tree.first()
            .is_some_and(|root| root.starts_with("sim-function ")
                && root.contains(" SERVER")
                && root.contains("faas.coldstart=true")),
        "{tree:#?}"
    );
    assert!(
        tree.iter()
            .any(|l| l.starts_with("├─ link (init) -> sim-function init ")),
        "{tree:#?}"
    );
    let children: Vec<&str> = tree
        .iter()
        .filter_map(|l| l.strip_prefix("├─ ").or_else(|| l.strip_prefix("└─ ")))
        .filter(|l| !l.starts_with("link"))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(
        children,
        [
            "responseLatency",
            "responseDuration",
            "runtimeOverhead",
            "extensionOverhead"
        ],
        "{tree:#?}"
    );
    assert!(tree.iter().all(|l| l.contains(" ms")), "{tree:#?}");
}

#[test]
fn zero_invocations_runs_until_sigint_then_shuts_down() {
    let run = lambda_sim(
        &["--invocations", "0", "--between-ms", "20", "--no-otlp"],
        Some((3, libc::SIGINT)),
    );
    let out = &run.stdout;
    assert!(
        run.status.success(),
        "exit {:?}\n{out}\n{}",
        run.status,
        run.stderr
    );
    assert!(out.contains("lambda-sim: OTLP -> off (--no-otlp)"), "{out}");
    assert!(
        out.contains("lambda-sim: stopped by SIGINT after "),
        "{out}"
    );
    let invocations = number_after(out, "invocations").unwrap_or(0);
    assert!(invocations >= 3, "{out}");
    assert_eq!(
        out.lines().filter(|l| l.starts_with("  #")).count() as u64,
        invocations,
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("exactly once (by count)") && l.trim_end().ends_with(" yes")),
        "{out}"
    );
    assert!(
        number_after(out, "exit code").is_some_and(|c| c == 0),
        "{out}"
    );
    assert!(out.contains("result: OK"), "{out}");
}

/// The Managed Instances model from the command line: invocations at once, tenants, and the
/// summary's join checks.
#[test]
fn managed_instances_with_tenants() {
    let run = lambda_sim(
        &[
            "--managed-instances",
            "4",
            "--tenants",
            "2",
            "--invocations",
            "12",
            "--function-ms",
            "100",
            "--errors-every",
            "4",
        ],
        None,
    );
    let out = &run.stdout;
    assert!(
        run.status.success(),
        "exit {:?}\n{out}\n{}",
        run.status,
        run.stderr
    );
    assert!(
        out.contains("lambda-sim: Lambda Managed Instances, 4 invocation(s) at once, 2 tenant(s)")
    );
    assert_eq!(number_after(out, "  platform.start"), Some(12), "{out}");
    assert_eq!(number_after(out, "  platform.runtimeDone"), None, "{out}");
    assert_eq!(number_after(out, "  invocation spans"), Some(12), "{out}");
    assert!(
        out.lines().any(
            |l| l.starts_with("  one span each, logs joined") && l.trim_end().ends_with(" yes")
        ),
        "{out}"
    );
    assert!(out.contains("result: OK"), "{out}");
    // What the model does not have is refused, not ignored.
    let refused = lambda_sim(&["--managed-instances", "2", "--freeze"], None);
    assert!(!refused.status.success());
    assert!(
        refused.stderr.contains("does not apply") || refused.stdout.contains("does not apply"),
        "{}{}",
        refused.stdout,
        refused.stderr
    );
}

/// The extension binary, built by `cargo test` at the workspace root beside this package's own
/// binaries (this package does not depend on the extension crate, so Cargo does not name it).
fn bridge_binary() -> std::path::PathBuf {
    let path = std::path::Path::new(env!("CARGO_BIN_EXE_lambda-sim"))
        .with_file_name("lambda-telemetry-bridge");
    assert!(
        path.exists(),
        "{} is missing: run `cargo test` at the workspace root (it builds the extension too)",
        path.display()
    );
    path
}
