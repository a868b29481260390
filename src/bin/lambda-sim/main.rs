//! `lambda-sim`: runs the extension against a loopback stand-in for the Lambda control plane and
//! checks that every telemetry event made it through, exactly once and in order.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use lambda_telemetry_bridge::sim::{
    self, Behaviour, InvocationRecord, RecordingEndpoint, SimConfig, SimError, SimReport,
};
use serde_json::Value;

const USAGE: &str = "\
lambda-sim: run the extension against a simulated Lambda control plane

USAGE:
    lambda-sim [OPTIONS]

OPTIONS:
    --invocations N           number of invocations (default 20)
    --errors-every N          every Nth invocation ends with status \"error\"
    --timeouts-every N        every Nth invocation ends with status \"timeout\"
    --function-timeout-ms N   function timeout; a timed-out invocation lasts this long (default 3000)
    --between-ms N            idle time between invocations (default 0)
    --freeze                  SIGSTOP the extension between invocations, as Lambda freezes it
    --snap-start              emit SnapStart restore events instead of init events
    --extension PATH          extension binary (default: lambda-telemetry-bridge next to this binary)
    --quiet                   hide the extension's own logs
    -h, --help                this help

The raw JSON sink (DISPATCH_POST_URI) points to a recording endpoint started by lambda-sim, unless
DISPATCH_POST_URI is set in the environment. BRIDGE_*, DISPATCH_*, OTEL_* and RUST_LOG variables are
passed to the extension.";

#[derive(Debug)]
struct Args {
    invocations: usize,
    errors_every: Option<usize>,
    timeouts_every: Option<usize>,
    function_timeout_ms: Option<u64>,
    between_ms: u64,
    freeze: bool,
    snap_start: bool,
    extension: Option<PathBuf>,
    quiet: bool,
}

fn parse_args(mut it: impl Iterator<Item = String>) -> Result<Option<Args>, String> {
    let mut a = Args {
        invocations: 20,
        errors_every: None,
        timeouts_every: None,
        function_timeout_ms: None,
        between_ms: 0,
        freeze: false,
        snap_start: false,
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
            "--function-timeout-ms" => a.function_timeout_ms = Some(number(&flag, value())?),
            "--between-ms" => a.between_ms = number(&flag, value())?,
            "--freeze" => a.freeze = true,
            "--snap-start" => a.snap_start = true,
            "--quiet" | "-q" => a.quiet = true,
            "--extension" => {
                a.extension = Some(PathBuf::from(value().ok_or("--extension needs a path")?))
            }
            other => return Err(format!("unknown option {other:?} (see --help)")),
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
    Ok(dir.join("lambda-telemetry-bridge"))
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
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("lambda-sim: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("lambda-sim: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the simulation; `Ok(true)` when the extension behaved.
async fn run(args: Args) -> Result<bool, String> {
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

    // Environment for the extension: the user's BRIDGE_*, DISPATCH_*, OTEL_* and RUST_LOG, plus a
    // recording endpoint as the raw JSON sink unless the user pointed it elsewhere.
    let mut env: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| {
            k.starts_with("BRIDGE_")
                || k.starts_with("DISPATCH_")
                || k.starts_with("OTEL_")
                || k == "RUST_LOG"
                || k == "RUST_BACKTRACE"
        })
        .collect();
    let endpoint = if env.iter().any(|(k, _)| k == "DISPATCH_POST_URI") {
        None
    } else {
        let ep = RecordingEndpoint::start(Behaviour::ok())
            .await
            .map_err(|e| e.to_string())?;
        env.push(("DISPATCH_POST_URI".into(), ep.url()));
        Some(ep)
    };

    println!(
        "lambda-sim: {} invocation(s) of {}",
        args.invocations,
        extension.display()
    );
    match &endpoint {
        Some(ep) => println!(
            "lambda-sim: raw JSON sink -> recording endpoint {}",
            ep.url()
        ),
        None => println!("lambda-sim: raw JSON sink -> DISPATCH_POST_URI from the environment"),
    }

    let mut cfg = SimConfig {
        extension_path: extension,
        extension_env: env,
        invocations: args.invocations,
        error_every: args.errors_every,
        timeout_every: args.timeouts_every,
        between_invokes_ms: args.between_ms,
        freeze_between_invokes: args.freeze,
        snap_start: args.snap_start,
        capture_output: args.quiet,
        progress: Some(Box::new(print_invocation)),
        ..SimConfig::default()
    };
    if let Some(t) = args.function_timeout_ms {
        cfg.function_timeout_ms = t;
    }

    let report = match sim::run(cfg).await {
        Ok(r) => r,
        Err(SimError::InitFailed { reason, report }) => {
            println!();
            println!("INIT FAILED: {reason}");
            print_failure_details(&report, &reason);
            return Ok(false);
        }
        Err(e) => return Err(e.to_string()),
    };

    // The extension has exited: whatever it forwarded has arrived.
    let received = endpoint.as_ref().map(|ep| ep.received_events());
    Ok(summary(&report, received.as_deref()))
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

fn median(mut v: Vec<Duration>) -> Option<Duration> {
    if v.is_empty() {
        return None;
    }
    v.sort();
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2
    })
}

fn opt_ms(d: Option<Duration>) -> String {
    d.map(|d| format!("{:.1} ms", ms(d)))
        .unwrap_or_else(|| "-".into())
}

/// Prints the summary; returns whether the run was good.
fn summary(report: &SimReport, received: Option<&[Value]>) -> bool {
    let mut ok = true;
    println!();
    println!("Summary");
    println!("=======");

    let counts = report.event_counts();
    println!(
        "events sent by Lambda          {:>6}",
        report.events_sent.len()
    );
    for (ty, n) in &counts {
        println!("  {ty:<30} {n:>4}");
    }
    let delivered = report.events_sent.len() - report.undelivered_events;
    println!("delivered to the extension     {delivered:>6}");
    if report.undelivered_events > 0 {
        ok = false;
        println!(
            "  LOST before the extension    {:>6}",
            report.undelivered_events
        );
    }
    let failed_posts = report
        .telemetry_posts
        .iter()
        .filter(|p| !p.status.is_some_and(|s| (200..300).contains(&s)))
        .count();
    println!(
        "telemetry POSTs                {:>6}  ({} failed)",
        report.telemetry_posts.len(),
        failed_posts
    );

    match received {
        Some(received) => {
            println!("received by raw JSON endpoint  {:>6}", received.len());
            let x = exactly_once(&report.events_sent, received);
            if x.ok {
                println!("exactly once, in order         yes");
            } else {
                ok = false;
                println!(
                    "exactly once, in order         NO  (missing {}, duplicated {}, unexpected {}, order {})",
                    x.missing,
                    x.duplicated,
                    x.unexpected,
                    if x.in_order { "kept" } else { "differs" }
                );
            }
        }
        None => {
            println!("received by raw JSON endpoint       -  (DISPATCH_POST_URI set by the user)")
        }
    }

    let n = report.invocations.len();
    println!(
        "invocations                    {:>6}  ({} success, {} error, {} timeout)",
        n,
        report.count_status("success"),
        report.count_status("error"),
        report.count_status("timeout")
    );
    println!(
        "cold start (spawn -> ready)    {:>9}",
        opt_ms(report.cold_start)
    );
    println!(
        "init duration (initReport)     {:>9}",
        opt_ms(report.init_duration)
    );
    let overheads: Vec<Duration> = report
        .invocations
        .iter()
        .map(|i| i.extension_overhead)
        .collect();
    println!(
        "extension overhead / invoke    {:>9}  median, {} max",
        opt_ms(median(overheads.clone())),
        opt_ms(overheads.iter().max().copied())
    );
    println!(
        "shutdown (SHUTDOWN -> exit)    {:>9}",
        opt_ms(report.shutdown_duration)
    );
    let exit = match (report.exit_code, report.exit_signal) {
        (Some(c), _) => format!("{c}"),
        (None, Some(s)) => format!("signal {s}"),
        _ => "-".into(),
    };
    println!(
        "exit code                      {:>6}{}",
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
            "/init/error                    {}",
            e.error_type.as_deref().unwrap_or("-")
        );
    }
    for e in &report.exit_errors {
        ok = false;
        println!(
            "/exit/error                    {}",
            e.error_type.as_deref().unwrap_or("-")
        );
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
            && a.quiet));
        assert!(matches!(parse(&["--help"]), Ok(None)));
        assert!(parse(&["--bogus"]).is_err());
        assert!(parse(&["--invocations"]).is_err());
        assert!(parse(&["--errors-every", "0"]).is_err());
    }

    #[test]
    fn exactly_once_check() {
        let a = serde_json::json!({"a": 1});
        let b = serde_json::json!({"b": 2});
        let x = exactly_once(&[a.clone(), b.clone()], &[a.clone(), b.clone()]);
        assert!(x.ok);
        let x = exactly_once(&[a.clone(), b.clone()], &[b.clone(), a.clone()]);
        assert!(!x.ok && x.missing == 0 && x.duplicated == 0 && !x.in_order);
        let x = exactly_once(&[a.clone(), b.clone()], &[a.clone(), a.clone()]);
        assert!(!x.ok && x.missing == 1 && x.duplicated == 1);
    }
}
