//! Shared helpers: run the real extension binary under the in-process Lambda stand-in.
#![allow(dead_code)]

use std::future::Future;
use std::path::PathBuf;

use lambda_sim::{self as sim, RecordingEndpoint, SimConfig, SimReport};
use serde_json::Value;

pub fn bridge_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_lambda-telemetry-bridge"))
}

pub fn block_on<F: Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
        .block_on(future)
}

/// An endpoint served by a runtime on a thread of its own, so that it answers while the test's
/// runtime is blocked (a freeze staged with a blocking sleep in the progress callback, which
/// would otherwise stop the endpoint too). Dropping it stops the thread.
pub struct EndpointThread {
    pub endpoint: RecordingEndpoint,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EndpointThread {
    pub fn start(behaviour: sim::Behaviour) -> EndpointThread {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            block_on(async move {
                let endpoint = RecordingEndpoint::start(behaviour).await;
                if ready_tx.send(endpoint).is_ok() {
                    let _ = stopped.await;
                }
            })
        });
        let endpoint = ready_rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("the endpoint's thread started")
            .expect("endpoint");
        EndpointThread {
            endpoint,
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for EndpointThread {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A simulation of `invocations` with the bridge and `env`; quick invocations, output captured.
pub fn config(invocations: usize, env: &[(&str, String)]) -> SimConfig {
    SimConfig {
        extension_path: bridge_binary(),
        extension_env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
        invocations,
        runtime_init_ms: 20,
        invoke_duration_ms: 4,
        ..SimConfig::default()
    }
}

pub async fn run(cfg: SimConfig) -> SimReport {
    match sim::run(cfg).await {
        Ok(report) => report,
        Err(e) => panic!("simulation failed: {e}"),
    }
}

/// The longest any telemetry push of the run took to be answered (sent → answered).
pub fn slowest_push(report: &SimReport) -> std::time::Duration {
    report
        .telemetry_posts
        .iter()
        .map(|p| p.answered_at - p.sent_at)
        .max()
        .expect("the run made pushes")
}

/// Panics with the extension's output when the run was not clean.
pub fn assert_clean(report: &SimReport) {
    assert!(
        report.clean(),
        "run not clean: exit={:?} killed={} undelivered={} errors={:?}\n--- extension output ---\n{}",
        report.exit_code,
        report.killed,
        report.undelivered_events,
        report.errors,
        report.extension_output
    );
}

/// The raw JSON text of every element POSTed (2xx-answered) to `endpoint`, in order.
pub fn received_raw(endpoint: &RecordingEndpoint) -> Vec<String> {
    let mut out = Vec::new();
    for request in endpoint.requests().iter().filter(|r| r.succeeded()) {
        let items: Vec<Box<serde_json::value::RawValue>> =
            serde_json::from_slice(&request.body).expect("the raw sink POSTs JSON arrays");
        out.extend(items.into_iter().map(|i| i.get().to_string()));
    }
    out
}

/// Events' texts, sorted: to compare as multisets (flushes in flight at once, under `adaptive`,
/// may arrive in any order; each must arrive exactly once).
pub fn sorted(events: &[Value]) -> Vec<String> {
    let mut texts: Vec<String> = events.iter().map(Value::to_string).collect();
    texts.sort();
    texts
}

/// Each of `invocations`' `platform.runtimeDone` reached `sink` before that invocation's next
/// `/event/next` (it left before the freeze); `why` says what a failure means.
pub fn assert_runtime_done_before_next(
    report: &SimReport,
    invocations: &[lambda_sim::InvocationRecord],
    sink: &RecordingEndpoint,
    why: &str,
) {
    let requests = sink.requests();
    for invocation in invocations {
        let next = invocation.next_called_at.expect("next called");
        let carrying = requests
            .iter()
            .find(|r| {
                let body: Vec<Value> = serde_json::from_slice(&r.body).expect("a JSON array");
                body.iter().any(|e| {
                    e["type"] == "platform.runtimeDone"
                        && request_id(e) == Some(invocation.request_id.as_str())
                })
            })
            .unwrap_or_else(|| {
                panic!("invocation {}: runtimeDone never arrived", invocation.index)
            });
        assert!(
            carrying.arrived_at < next,
            "invocation {}: {why}\n{}",
            invocation.index,
            report.extension_output
        );
    }
}

/// The request id of an event, if it has one.
pub fn request_id(event: &Value) -> Option<&str> {
    event.get("record")?.get("requestId")?.as_str()
}

pub mod otlp {
    //! What an OTLP/HTTP receiver got, decoded with the protobuf definitions (or their JSON form)
    //! by the simulator's decoder; unlike its lenient `decode_*`, a payload that does not decode
    //! fails the test here.
    use lambda_sim::otlp_receiver::{self, decode, number_value, Signal};
    use lambda_sim::{RecordedRequest, RecordingEndpoint, SimReport};
    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
    use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::logs::v1::LogRecord;
    use opentelemetry_proto::tonic::metrics::v1::metric;
    use opentelemetry_proto::tonic::metrics::v1::Metric;
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::Span;

    #[allow(unused_imports)] // each test crate uses a different subset
    pub use otlp_receiver::{attr_bool, attr_int, attr_str};

    /// The accepted requests of one signal, each checked to decode strictly.
    fn accepted<T>(endpoint: &RecordingEndpoint, signal: Signal) -> Vec<RecordedRequest>
    where
        T: prost::Message + Default + serde::de::DeserializeOwned,
    {
        let requests: Vec<RecordedRequest> = otlp_receiver::accepted(&endpoint.requests(), signal)
            .cloned()
            .collect();
        for request in &requests {
            if let Err(e) = decode::<T>(request) {
                panic!("an invalid OTLP {} payload: {e}", signal.name());
            }
        }
        requests
    }

    pub fn spans(endpoint: &RecordingEndpoint) -> Vec<(Resource, Span)> {
        otlp_receiver::decode_traces(&accepted::<ExportTraceServiceRequest>(
            endpoint,
            Signal::Traces,
        ))
    }

    /// Every metric of every export, in order (cumulative exports repeat earlier series).
    pub fn metrics(endpoint: &RecordingEndpoint) -> Vec<(Resource, Metric)> {
        otlp_receiver::decode_metrics(&accepted::<ExportMetricsServiceRequest>(
            endpoint,
            Signal::Metrics,
        ))
    }

    pub fn logs(endpoint: &RecordingEndpoint) -> Vec<(Resource, LogRecord)> {
        otlp_receiver::decode_logs(&accepted::<ExportLogsServiceRequest>(
            endpoint,
            Signal::Logs,
        ))
    }

    /// The invocation metrics are made from every event: the outcome counters partition the
    /// invocations, and the duration histogram counts each once with the sum Lambda sent.
    pub fn assert_invocation_metrics_whole(collector: &RecordingEndpoint, report: &SimReport) {
        let n = report.invocations.len();
        let metrics = metrics(collector);
        let last = |name: &str| -> &Metric {
            metrics
                .iter()
                .rev()
                .map(|(_, m)| m)
                .find(|m| m.name == name)
                .unwrap_or_else(|| panic!("{name} exported"))
        };
        // Successes, errors and timeouts partition the invocations.
        let count_of = |name: &str| -> f64 {
            match metrics
                .iter()
                .rev()
                .map(|(_, m)| m)
                .find(|m| m.name == name)
            {
                Some(Metric {
                    data: Some(metric::Data::Sum(sum)),
                    ..
                }) => sum.data_points.iter().map(number_value).sum(),
                Some(other) => panic!("{name} is not a sum: {other:?}"),
                None => 0.0,
            }
        };
        let total: f64 = ["faas.invocations", "faas.errors", "faas.timeouts"]
            .iter()
            .map(|name| count_of(name))
            .sum();
        assert_eq!(total, n as f64, "every invocation counted");
        assert!(count_of("faas.invocations") > 0.0);
        let Some(metric::Data::Histogram(duration)) = &last("faas.invoke_duration").data else {
            panic!("faas.invoke_duration is a histogram")
        };
        let count: u64 = duration.data_points.iter().map(|p| p.count).sum();
        let sum: f64 = duration.data_points.iter().filter_map(|p| p.sum).sum();
        let sent: f64 = report
            .events_sent
            .iter()
            .filter(|e| e["type"] == "platform.runtimeDone")
            .map(|e| e["record"]["metrics"]["durationMs"].as_f64().unwrap_or(0.0) / 1e3)
            .sum();
        assert_eq!(count, n as u64, "every invocation's duration recorded");
        assert!((sum - sent).abs() < 1e-6, "{sum} vs {sent}");
    }
}

fn not_rfc_3339<T>(time: &str) -> T {
    panic!("not an RFC 3339 time: {time:?}")
}

/// Nanoseconds since the epoch of an RFC 3339 time (`2026-01-01T00:00:00.123Z`, any fraction
/// length, `Z` or a `±HH:MM` offset). Written here, not borrowed from a library the simulator or
/// the bridge uses, so that an error in their parsing cannot cancel out in the expectation.
pub fn nanos(time: &str) -> u64 {
    let b = time.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't') {
        not_rfc_3339::<()>(time);
    }
    let num = |range: std::ops::Range<usize>| -> i64 {
        time.get(range)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| not_rfc_3339(time))
    };
    let (year, month, day) = (num(0..4), num(5..7), num(8..10));
    let (hour, minute, second) = (num(11..13), num(14..16), num(17..19));
    let mut rest = &time[19..];
    let mut fraction_ns = 0i64;
    if let Some(f) = rest.strip_prefix('.') {
        let digits = f.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            not_rfc_3339::<()>(time);
        }
        let padded = format!("{:0<9}", &f[..digits.min(9)]);
        fraction_ns = padded.parse().unwrap_or_else(|_| not_rfc_3339(time));
        rest = &f[digits..];
    }
    let offset_s = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6 && (rest.starts_with('+') || rest.starts_with('-')) => {
            let sign = if rest.starts_with('-') { -1 } else { 1 };
            let h: i64 = rest[1..3].parse().unwrap_or_else(|_| not_rfc_3339(time));
            let m: i64 = rest[4..6].parse().unwrap_or_else(|_| not_rfc_3339(time));
            sign * (h * 3600 + m * 60)
        }
        _ => not_rfc_3339(time),
    };
    // Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's days_from_civil).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offset_s;
    (seconds * 1_000_000_000 + fraction_ns) as u64
}

#[test]
fn nanos_reads_rfc_3339_as_written_by_hand() {
    assert_eq!(nanos("1970-01-01T00:00:00Z"), 0);
    assert_eq!(nanos("1970-01-02T00:00:00.5Z"), 86_400_500_000_000);
    // 2022-10-12T00:03:50.000Z, Lambda's example: 1665533030 s.
    assert_eq!(nanos("2022-10-12T00:03:50.000Z"), 1_665_533_030_000_000_000);
    assert_eq!(
        nanos("2022-10-12T02:03:50.000000001+02:00"),
        1_665_533_030_000_000_001
    );
    assert_eq!(
        nanos("2024-02-29T12:00:00.123456Z") % 1_000_000_000,
        123_456_000
    );
}

/// A port nothing listens on (bound, then released).
pub fn dead_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The value of one series in Prometheus text format.
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// The body of the last push a recording Pushgateway received.
pub fn last_push(gateway: &RecordingEndpoint) -> String {
    let pushes = gateway.requests();
    let last = pushes.last().expect("the bridge pushed its metrics");
    String::from_utf8(last.body.clone()).expect("text format")
}

/// A blocking HTTP/1.0 request on loopback (the simulator's progress callback is synchronous;
/// HTTP/1.0 keeps the answer unchunked): the status (0 if the connection failed) and the body.
pub fn http_blocking(port: u16, method: &str, path: &str, body: &[u8]) -> (u16, String) {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return (0, String::new());
    };
    let _ = stream.set_read_timeout(Some(std::time::Duration::from_secs(5)));
    let head = format!(
        "{method} {path} HTTP/1.0\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    if stream.write_all(head.as_bytes()).is_err() || stream.write_all(body).is_err() {
        return (0, String::new());
    }
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// A blocking POST of `body` to `/`; the status.
pub fn post_blocking(port: u16, body: &[u8]) -> u16 {
    http_blocking(port, "POST", "/", body).0
}

/// Peak and current RSS (kB) of the process whose environment holds `tag`.
pub fn rss_of_tagged(tag: &str) -> Option<(u64, u64)> {
    let pid = pid_of_tagged(tag)?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
    };
    Some((field("VmHWM:")?, field("VmRSS:")?))
}

/// The pid of the process whose environment holds `tag` (`NAME=value`).
pub fn pid_of_tagged(tag: &str) -> Option<i32> {
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        if environ.split(|b| *b == 0).any(|kv| kv == tag.as_bytes()) {
            return Some(pid);
        }
    }
    None
}

/// One HTTP/1.1 request read from `stream` by a test's hand-made endpoint: the request line's
/// path and the body (`Content-Length` bytes). What arrived beyond it stays in `buffer` for the
/// next call. `None` when the peer closed (or a read failed) first.
pub fn read_request(
    stream: &mut std::net::TcpStream,
    buffer: &mut Vec<u8>,
) -> Option<(String, Vec<u8>)> {
    use std::io::Read;
    let mut chunk = [0u8; 65536];
    let head_end = loop {
        if let Some(i) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).to_string();
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    while buffer.len() < head_end + length {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
        }
    }
    let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
    let body = buffer[head_end..head_end + length].to_vec();
    buffer.drain(..head_end + length);
    Some((path, body))
}

/// Each invocation's SERVER span was exported exactly once.
pub fn assert_each_invocation_span_exported_once(
    report: &lambda_sim::SimReport,
    collector: &lambda_sim::RecordingEndpoint,
) {
    let spans = otlp::spans(collector);
    for invocation in &report.invocations {
        let n = spans
            .iter()
            .filter(|(_, s)| {
                otlp::attr_str(&s.attributes, "faas.invocation_id") == Some(&invocation.request_id)
            })
            .count();
        assert_eq!(
            n, 1,
            "invocation {} exported exactly once",
            invocation.index
        );
    }
}

/// A server process a test started (Prometheus, a Pushgateway); killed when dropped.
pub struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `program` (installed by `.ci/run`: `apt-get install prometheus prometheus-pushgateway`).
pub fn start_server(program: &str, args: &[String]) -> Server {
    let child = std::process::Command::new(program)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("{program} must be installed (apt-get install -y prometheus prometheus-pushgateway): {e}")
        });
    Server(child)
}
