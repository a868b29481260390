//! Defects found by probing the release binary from outside, each reproduced here: the real
//! extension under the Lambda stand-in, real endpoints on loopback, input as a hostile or broken
//! peer would send it.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use lambda_sim::{Behaviour, RecordingEndpoint};

/// The listener's deadlines (`telemetry::listener`), and what a test allows beyond them.
const LISTENER_TIMEOUT: Duration = Duration::from_secs(5);
const TIMEOUT_SLACK: Duration = Duration::from_secs(2);

#[test]
fn an_event_without_a_usable_time_costs_only_its_own_timestamp() {
    block_on(async {
        let collector = RecordingEndpoint::start(Behaviour::ok())
            .await
            .expect("collector");
        let mut cfg = config(12, &[("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url())]);
        let statuses = Arc::new(Mutex::new(Vec::new()));
        let record = statuses.clone();
        cfg.progress = Some(Box::new(move |inv| {
            if inv.index != 2 {
                return;
            }
            let port = inv.listener_port.expect("the listener subscribed");
            let body = br#"[{"type":"function","record":"no time"},
                {"type":"extension","time":null,"record":"null time"},
                {"type":"function","time":"yesterday","record":{"message":"bad time"}},
                {"type":"function","time":17,"record":"numeric time"},
                {"type":"platform.report","time":"2026-01-01T00:00:00.000Z","record":{"requestId":"x","status":"success","metrics":{"durationMs":1e300,"billedDurationMs":-5,"memorySizeMB":128,"maxMemoryUsedMB":1e300}}}]"#;
            record.lock().expect("lock").push(post_blocking(port, body));
        }));
        let report = run(cfg).await;
        assert_clean(&report);
        assert_eq!(*statuses.lock().expect("lock"), vec![200]);
        let out = &report.extension_output;
        assert!(!out.contains("panicked"), "{out}");

        // Every invocation's span still left, after the bad events as before them.
        assert_each_invocation_span_exported_once(&report, &collector);
        // The records without a time are exported, observed when they arrived.
        let logs = common::otlp::logs(&collector);
        let body = |r: &opentelemetry_proto::tonic::logs::v1::LogRecord| match r
            .body
            .as_ref()
            .and_then(|b| b.value.as_ref())
        {
            Some(opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(s)) => {
                s.clone()
            }
            _ => String::new(),
        };
        for text in ["no time", "null time", "bad time"] {
            let record = logs
                .iter()
                .map(|(_, r)| r)
                .find(|r| body(r) == text)
                .unwrap_or_else(|| panic!("the record {text:?} was exported"));
            assert!(record.observed_time_unix_nano > 0, "{text}");
        }
        // And the logs signal went on: the last invocation's logs arrived too.
        let last = &report.invocations.last().expect("invocations").request_id;
        assert!(
            logs.iter().any(|(_, r)| {
                common::otlp::attr_str(&r.attributes, "faas.invocation_id") == Some(last)
            }),
            "logs of the last invocation exported"
        );
    });
}

/// Credentials written into endpoint URLs: sent as Basic authorization, never logged, even at
/// `trace` while every endpoint fails before it recovers.
#[test]
fn credentials_in_urls_are_sent_as_basic_auth_and_never_logged() {
    block_on(async {
        let sink = RecordingEndpoint::start(Behaviour::fail_first(3, 500))
            .await
            .expect("sink");
        let collector = RecordingEndpoint::start(Behaviour::fail_first(3, 503))
            .await
            .expect("collector");
        let with_credentials = |url: String| url.replacen("http://", "http://user:PASSWORD1@", 1);
        let cfg = config(
            4,
            &[
                ("BRIDGE_LOG", "trace".into()),
                ("DISPATCH_POST_URI", with_credentials(sink.url())),
                (
                    "OTEL_EXPORTER_OTLP_ENDPOINT",
                    with_credentials(collector.url()),
                ),
                (
                    "OTEL_EXPORTER_OTLP_HEADERS",
                    "x-api-key=HEADERSECRET2".into(),
                ),
                ("BRIDGE_DISPATCH_HEADERS", "x-key=DISPATCHSECRET3".into()),
                (
                    "BRIDGE_PUSHGATEWAY_URL",
                    "http://gw:PASSWORD4@127.0.0.1:9/".into(),
                ),
            ],
        );
        let report = run(cfg).await;
        assert_clean(&report);
        let out = &report.extension_output;
        // "user:PASSWORD1" in base64, as it would appear in a logged header.
        let basic = "dXNlcjpQQVNTV09SRDE=";
        for secret in [
            "PASSWORD1",
            "HEADERSECRET2",
            "DISPATCHSECRET3",
            "PASSWORD4",
            basic,
        ] {
            assert!(!out.contains(secret), "{secret} logged:\n{out}");
        }
        assert!(
            out.contains("TRACE") || out.contains("DEBUG"),
            "trace logging on"
        );
        for endpoint in [&sink, &collector] {
            let requests = endpoint.requests();
            assert!(requests.iter().any(|r| r.succeeded()));
            for request in &requests {
                assert_eq!(
                    request.header("authorization"),
                    Some(format!("Basic {basic}").as_str())
                );
            }
        }
        assert_eq!(received_raw(&sink).len(), report.events_sent.len());
    });
}

#[test]
fn an_invalid_url_with_credentials_is_not_echoed_even_in_the_init_error() {
    block_on(async {
        let cfg = config(
            1,
            &[
                ("BRIDGE_STRICT", "true".into()),
                (
                    "DISPATCH_POST_URI",
                    "ftp://user:PASSWORD1@example.com/".into(),
                ),
                (
                    "OTEL_EXPORTER_OTLP_ENDPOINT",
                    "http://user:PASSWORD2@bad host:4318".into(),
                ),
                ("BRIDGE_PUSHGATEWAY_URL", "gw:PASSWORD3@x".into()),
            ],
        );
        let report = init_failed(cfg).await;
        assert_eq!(report.init_errors.len(), 1, "{}", report.extension_output);
        let init_error = format!("{:?}", report.init_errors[0]);
        for text in [&report.extension_output, &init_error] {
            for secret in ["PASSWORD1", "PASSWORD2", "PASSWORD3"] {
                assert!(!text.contains(secret), "{secret} shown:\n{text}");
            }
            for variable in [
                "DISPATCH_POST_URI",
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                "BRIDGE_PUSHGATEWAY_URL",
            ] {
                assert!(text.contains(variable), "{variable} named:\n{text}");
            }
        }
    });
}

/// The report of a run whose init failed (as it must).
async fn init_failed(cfg: lambda_sim::SimConfig) -> lambda_sim::SimReport {
    match lambda_sim::run(cfg).await {
        Err(lambda_sim::SimError::InitFailed { report, .. }) => *report,
        Err(e) => panic!("unexpected: {e}"),
        Ok(report) => panic!("init succeeded:\n{}", report.extension_output),
    }
}

/// An endpoint that answers 200 with an endless body, recording what it was sent. Plain TCP:
/// the body is streamed, never held, so the test itself stays small.
/// Requests received: path and body.
type Received = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

struct FloodingEndpoint {
    port: u16,
    bodies: Received,
}

impl FloodingEndpoint {
    fn start(answer_bytes: usize) -> FloodingEndpoint {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let record = bodies.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().take(10_000) {
                let Ok(stream) = stream else { continue };
                let record = record.clone();
                std::thread::spawn(move || serve_flood(stream, answer_bytes, &record));
            }
        });
        FloodingEndpoint { port, bodies }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// Reads one request at a time (head and Content-Length body), answers each with a
/// `answer_bytes` body written in 64 KiB chunks until the peer goes away.
fn serve_flood(mut stream: TcpStream, answer_bytes: usize, record: &Mutex<Vec<(String, Vec<u8>)>>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(20)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(20)));
    let mut buffer = Vec::new();
    for _ in 0..1000 {
        let Some((path, body)) = read_request(&mut stream, &mut buffer) else {
            return;
        };
        record.lock().expect("lock").push((path, body));
        let answer = format!("HTTP/1.1 200 OK\r\nContent-Length: {answer_bytes}\r\n\r\n");
        if stream.write_all(answer.as_bytes()).is_err() {
            return;
        }
        let zeros = [b'0'; 65536];
        let mut left = answer_bytes;
        while left > 0 {
            let n = left.min(zeros.len());
            if stream.write_all(&zeros[..n]).is_err() {
                return; // the bridge stopped reading and closed: as it should
            }
            left -= n;
        }
    }
}

#[test]
fn an_endpoint_answering_with_a_huge_body_costs_neither_memory_nor_deadlines() {
    block_on(async {
        const FLUSH_TIMEOUT_MS: u64 = 1000;
        let raw = FloodingEndpoint::start(200 << 20);
        let collector = FloodingEndpoint::start(200 << 20);
        let tag = "BRIDGE_TEST_TAG=huge-answers";
        let mut cfg = config(
            8,
            &[
                ("DISPATCH_POST_URI", raw.url()),
                ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url()),
                ("BRIDGE_FLUSH_TIMEOUT_MS", FLUSH_TIMEOUT_MS.to_string()),
                ("BRIDGE_TEST_TAG", "huge-answers".into()),
            ],
        );
        let peak = Arc::new(Mutex::new(0u64));
        let record = peak.clone();
        cfg.progress = Some(Box::new(move |_| {
            if let Some((hwm, _)) = rss_of_tagged(tag) {
                let mut peak = record.lock().expect("lock");
                *peak = (*peak).max(hwm);
            }
        }));
        let report = run(cfg).await;
        assert_clean(&report);
        let peak_kb = *peak.lock().expect("lock");
        // Before the bound: 417 MiB (raw) and 820 MiB (OTLP). The debug build idles near 10 MiB.
        assert!(
            peak_kb > 0 && peak_kb < 48 * 1024,
            "peak RSS {peak_kb} kB with 200 MiB answers"
        );
        let held = report
            .invocations
            .iter()
            .map(|i| i.extension_overhead)
            .max()
            .unwrap_or_default();
        assert!(
            held < Duration::from_millis(FLUSH_TIMEOUT_MS),
            "an invoke was held {held:?}"
        );
        // Delivered once each: a 200 is a 200, however long the answer.
        let mut delivered = Vec::new();
        for (path, body) in raw.bodies.lock().expect("lock").iter() {
            assert_eq!(path, "/");
            let items: Vec<serde_json::Value> = serde_json::from_slice(body).expect("JSON array");
            delivered.extend(items);
        }
        assert_eq!(delivered, report.events_sent);
        let traces = collector
            .bodies
            .lock()
            .expect("lock")
            .iter()
            .filter(|(p, _)| p == "/v1/traces")
            .count();
        assert!(traces >= 1, "traces exported");
    });
}

/// Opens a connection to the listener and lets `act` misbehave on it; returns how long the
/// bridge took to answer or close, the status line if any, and when that was.
fn misbehave(port: u16, act: impl FnOnce(&mut TcpStream)) -> (Duration, String, Instant) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let _ = stream.set_read_timeout(Some(LISTENER_TIMEOUT + TIMEOUT_SLACK * 2));
    let started = Instant::now();
    act(&mut stream);
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                answer.extend_from_slice(&chunk[..n]);
                if answer.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
        }
    }
    let status = String::from_utf8_lossy(&answer)
        .lines()
        .next()
        .unwrap_or("")
        .to_string();
    (started.elapsed(), status, Instant::now())
}

#[test]
fn slow_heads_and_short_or_endless_bodies_are_cut_off_in_time() {
    let (report, results, _) = run_with_misbehaving_peers(false);
    let shutdown = report.shutdown_at.expect("shut down");
    let outcome = |name: &str| {
        let (took, status, at) = results
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, o)| o.clone())
            .unwrap_or_else(|| panic!("{name} ran"));
        // Cut off by the listener's own deadline, not by the shutdown that closes everything.
        assert!(
            took < LISTENER_TIMEOUT + TIMEOUT_SLACK,
            "{name} held {took:?}"
        );
        assert!(at < shutdown, "{name} was only closed by the shutdown");
        status
    };
    let status = outcome("slow head");
    assert!(status.is_empty() || status.contains("408"), "{status}");
    let status = outcome("short body");
    assert!(status.contains("408"), "short body: {status}");
    let status = outcome("endless chunked body");
    assert!(status.contains("413"), "endless body: {status}");
    assert_eq!(report.totals.failed_telemetry_posts, 0);
}

#[test]
fn a_flood_of_idle_connections_beyond_the_file_limit_never_blocks_pushes() {
    // Every push of this run comes on a new connection, those during the flood included.
    let (report, _, out) = run_with_misbehaving_peers(true);
    assert_eq!(report.totals.failed_telemetry_posts, 0, "{out}");
    assert!(out.contains("too many open connections"), "{out}");
    // And at once: not after the flood's connections time out (5 s without a request), which
    // is when a listener that did not make room would accept them.
    let slowest = slowest_push(&report);
    assert!(
        slowest < Duration::from_secs(2),
        "a push waited {slowest:?} during the flood"
    );
}

/// POSTs an empty batch on `stream` and reads the answer's status line ("" when the connection
/// was closed).
fn push_empty_batch(stream: &mut TcpStream) -> String {
    let request = b"POST / HTTP/1.1\r\nHost: sandbox\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n[]";
    if stream.write_all(request).is_err() {
        return String::new();
    }
    let mut answer = Vec::new();
    let mut chunk = [0u8; 1024];
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&chunk[..n]),
        }
    }
    String::from_utf8_lossy(&answer)
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

/// Lambda keeps its connection to the listener alive across idle gaps and freezes: a connection
/// that has carried a push and then stays idle longer than the listener's head timeout (5 s)
/// still carries the next one (a head deadline on every request, hyper's own, would close it
/// and race Lambda's next push).
#[test]
fn a_used_connection_idle_past_the_head_timeout_still_carries_a_push() {
    block_on(async {
        let sink = RecordingEndpoint::start(Behaviour::ok())
            .await
            .expect("sink");
        let mut cfg = config(10, &[("DISPATCH_POST_URI", sink.url())]);
        // The bridge lives ~9 s: past the idle gap below.
        cfg.between_invokes_ms = 900;
        let statuses = Arc::new(Mutex::new(Vec::new()));
        let worker = Arc::new(Mutex::new(None));
        let (s, w) = (statuses.clone(), worker.clone());
        cfg.progress = Some(Box::new(move |inv| {
            if inv.index != 0 {
                return;
            }
            let port = inv.listener_port.expect("the listener subscribed");
            let s = s.clone();
            *w.lock().expect("lock") = Some(std::thread::spawn(move || {
                let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                let first = push_empty_batch(&mut stream);
                std::thread::sleep(LISTENER_TIMEOUT + Duration::from_secs(1));
                let second = push_empty_batch(&mut stream);
                s.lock().expect("lock").extend([first, second]);
            }));
        }));
        let report = run(cfg).await;
        if let Some(worker) = worker.lock().expect("lock").take() {
            worker.join().expect("worker");
        }
        assert_clean(&report);
        let statuses = statuses.lock().expect("lock").clone();
        assert_eq!(statuses.len(), 2, "{statuses:?}");
        assert!(statuses[0].contains(" 200"), "first push: {statuses:?}");
        assert!(
            statuses[1].contains(" 200"),
            "the push after 6 s idle on the same connection: {statuses:?}"
        );
    });
}

type Outcomes = Vec<(&'static str, (Duration, String, Instant))>;

/// Runs 16 invocations while, from the second on, peers misbehave on the listener: a slow head,
/// a short body, an endless chunked body, or (with `flood`) 400 idle connections with the
/// bridge's open files limited to 256. Lambda's own pushes must all go through.
fn run_with_misbehaving_peers(flood: bool) -> (lambda_sim::SimReport, Outcomes, String) {
    block_on(async {
        let sink = RecordingEndpoint::start(Behaviour::ok())
            .await
            .expect("sink");
        let tag = if flood {
            "BRIDGE_TEST_TAG=flooded-listener"
        } else {
            "BRIDGE_TEST_TAG=misbehaving-peers"
        };
        let mut cfg = config(
            12,
            &[
                ("DISPATCH_POST_URI", sink.url()),
                (
                    "BRIDGE_TEST_TAG",
                    tag["BRIDGE_TEST_TAG=".len()..].to_string(),
                ),
            ],
        );
        // Long enough for the listener's deadlines to pass while invocations go on.
        cfg.between_invokes_ms = 700;
        // During the flood, pushes come on new connections, not over one opened before it.
        cfg.new_connection_per_push = flood;
        let results = Arc::new(Mutex::new(Vec::new()));
        let held: Arc<Mutex<Vec<TcpStream>>> = Arc::new(Mutex::new(Vec::new()));
        let workers = Arc::new(Mutex::new(Vec::new()));
        let (r, h, w) = (results.clone(), held.clone(), workers.clone());
        cfg.progress = Some(Box::new(move |inv| {
            if inv.index != 1 {
                return;
            }
            let port = inv.listener_port.expect("the listener subscribed");
            if flood {
                // A limit on open files below the flood (Lambda's is 1,024; 256 keeps the test's
                // own descriptors well clear of a 1,024 default in the test process).
                let pid = pid_of_tagged(tag).expect("the bridge runs");
                let limit = libc::rlimit {
                    rlim_cur: 256,
                    rlim_max: 256,
                };
                // SAFETY: prlimit reads `limit` and writes nothing (null old-limit pointer).
                let rc = unsafe {
                    libc::prlimit(pid, libc::RLIMIT_NOFILE, &limit, std::ptr::null_mut())
                };
                assert_eq!(rc, 0, "prlimit on the bridge");
                // 400 connections that never send a thing, beyond the bridge's 256 descriptors,
                // from a thread of their own (this callback holds up the simulator, which must go
                // on pushing and reading output).
                let h = h.clone();
                w.lock().expect("lock").push(std::thread::spawn(move || {
                    let mut held = h.lock().expect("lock");
                    for _ in 0..400 {
                        match TcpStream::connect(("127.0.0.1", port)) {
                            Ok(s) => held.push(s),
                            Err(_) => break,
                        }
                    }
                }));
                return;
            }
            type Case = (&'static str, fn(&mut TcpStream));
            let cases: [Case; 3] = [
                ("slow head", |s| {
                    let _ = s.write_all(b"POST / HTTP/1.1\r\nHost: x\r\n");
                }),
                ("short body", |s| {
                    let _ = s.write_all(
                        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n[1,2,3",
                    );
                }),
                ("endless chunked body", |s| {
                    let _ = s.write_all(
                        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
                    );
                    let chunk = format!("10000\r\n{}\r\n", "1".repeat(0x10000));
                    for _ in 0..64 {
                        if s.write_all(chunk.as_bytes()).is_err() {
                            break;
                        }
                    }
                }),
            ];
            for (name, act) in cases {
                let r = r.clone();
                w.lock().expect("lock").push(std::thread::spawn(move || {
                    let outcome = misbehave(port, act);
                    r.lock().expect("lock").push((name, outcome));
                }));
            }
        }));
        let report = run(cfg).await;
        for worker in workers.lock().expect("lock").drain(..) {
            worker.join().expect("worker");
        }
        drop(held);
        assert_clean(&report);
        // Lambda's pushes all went through: every event once, in order.
        let sent = report.events_sent_raw.clone();
        assert_eq!(received_raw(&sink), sent);
        let results = results.lock().expect("lock").clone();
        let out = report.extension_output.clone();
        (report, results, out)
    })
}

#[test]
fn arrays_beyond_twice_max_items_are_refused_before_they_cost_memory() {
    block_on(async {
        let sink = RecordingEndpoint::start(Behaviour::ok())
            .await
            .expect("sink");
        let tag = "BRIDGE_TEST_TAG=tiny-elements";
        let mut cfg = config(
            3,
            &[
                ("DISPATCH_POST_URI", sink.url()),
                ("BRIDGE_TEST_TAG", "tiny-elements".into()),
            ],
        );
        let results = Arc::new(Mutex::new(Vec::new()));
        let peak = Arc::new(Mutex::new(0u64));
        let (record, record_peak) = (results.clone(), peak.clone());
        cfg.progress = Some(Box::new(move |inv| {
            if inv.index != 1 {
                return;
            }
            let port = inv.listener_port.expect("the listener subscribed");
            let array = |n: usize| format!("[{}]", vec!["1"; n].join(",")).into_bytes();
            let mut out = record.lock().expect("lock");
            // maxItems is 1,000: 2,000 elements pass, one more does not.
            out.push(("at the limit", post_blocking(port, &array(2000))));
            out.push(("one more", post_blocking(port, &array(2001))));
            // 290,000 elements in 580 KB, under the byte limit (589,824), five times.
            for _ in 0..5 {
                out.push(("tiny elements", post_blocking(port, &array(290_000))));
            }
            *record_peak.lock().expect("lock") = rss_of_tagged(tag).map_or(0, |(hwm, _)| hwm);
        }));
        let report = run(cfg).await;
        assert_clean(&report);
        let statuses = results.lock().expect("lock").clone();
        assert_eq!(statuses[0], ("at the limit", 200));
        assert_eq!(statuses[1], ("one more", 413));
        assert!(statuses[2..].iter().all(|(_, s)| *s == 413), "{statuses:?}");
        let peak_kb = *peak.lock().expect("lock");
        // Before the bound, one such array took the bridge from 6 to 35 MiB.
        assert!(peak_kb > 0 && peak_kb < 24 * 1024, "peak RSS {peak_kb} kB");
        // The 2,000 accepted elements reached the raw sink beside the simulated events.
        assert_eq!(
            sink.received_events().len(),
            report.events_sent.len() + 2000
        );
    });
}

#[test]
fn settings_that_used_to_fail_silently_say_so_and_fall_back() {
    block_on(async {
        let sink = RecordingEndpoint::start(Behaviour::ok())
            .await
            .expect("sink");
        // A port another process holds.
        let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = taken.local_addr().expect("addr").port();
        let env = [
            ("DISPATCH_POST_URI", sink.url()),
            ("BRIDGE_LOG", "warning".to_string()),
            ("BRIDGE_LISTENER_PORT", port.to_string()),
            ("BRIDGE_ARCHITECTURE", "mips".to_string()),
            ("OTEL_SDK_DISABLED", "maybe".to_string()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "carrier-pigeon".to_string()),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://".to_string()),
        ];
        let report = run(config(3, &env)).await;
        assert_clean(&report);
        let out = &report.extension_output;
        let errors: Vec<&str> = out.lines().filter(|l| l.contains("ERROR")).collect();
        for variable in [
            "BRIDGE_LOG",
            "BRIDGE_LISTENER_PORT",
            "BRIDGE_ARCHITECTURE",
            "OTEL_SDK_DISABLED",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
        ] {
            let lines = errors
                .iter()
                .filter(|l| l.contains(&format!("{variable}=")))
                .count();
            assert_eq!(lines, 1, "one ERROR line for {variable}:\n{out}");
        }
        // Logging fell back to info (an invalid filter used to turn every line off).
        assert!(out.contains("INFO") && out.contains("registered"), "{out}");
        // The listener fell back to an ephemeral port and telemetry flowed.
        let uri = report.subscription_body.as_ref().expect("subscribed")["destination"]["URI"]
            .as_str()
            .expect("URI")
            .to_string();
        assert!(!uri.ends_with(&format!(":{port}/")), "{uri}");
        assert_eq!(received_raw(&sink).len(), report.events_sent.len());

        // With BRIDGE_STRICT, the taken port alone is an init error.
        let report = init_failed(config(
            1,
            &[
                ("BRIDGE_STRICT", "true".to_string()),
                ("BRIDGE_LISTENER_PORT", port.to_string()),
            ],
        ))
        .await;
        assert_eq!(report.init_errors.len(), 1, "{}", report.extension_output);
        assert!(format!("{:?}", report.init_errors[0]).contains("BRIDGE_LISTENER_PORT"));
        assert_eq!(report.exit_code, Some(1));
        drop(taken);
    });
}

/// Runs the bridge against a Runtime API that is a raw socket served by `answer`, until it exits
/// (at most `within`): its exit code, output and how long it ran.
fn bridge_against(
    answer: impl FnOnce(TcpStream) + Send + 'static,
    within: Duration,
) -> (Option<i32>, String, Duration) {
    let api = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = api.local_addr().expect("addr").port();
    // Accepts one connection, or gives up when the bridge has had its time (a bridge that exits
    // without connecting must not leave this thread waiting for ever).
    api.set_nonblocking(true).expect("nonblocking");
    let accept_until = Instant::now() + within;
    let server = std::thread::spawn(move || {
        while Instant::now() < accept_until {
            match api.accept() {
                Ok((stream, _)) => {
                    let _ = stream.set_nonblocking(false);
                    answer(stream);
                    return;
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    });
    let started = Instant::now();
    let mut child = std::process::Command::new(bridge_binary())
        .env_clear()
        .env("AWS_LAMBDA_RUNTIME_API", format!("127.0.0.1:{port}"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn the bridge");
    let mut code = None;
    while started.elapsed() < within {
        if let Ok(Some(status)) = child.try_wait() {
            code = status.code();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let ran = started.elapsed();
    if code.is_none() {
        let _ = child.kill();
    }
    let output = child.wait_with_output().expect("output");
    let _ = server.join();
    let text = String::from_utf8_lossy(&output.stdout).to_string()
        + &String::from_utf8_lossy(&output.stderr);
    (code, text, ran)
}

#[test]
fn a_registration_that_never_answers_fails_init_loudly_and_in_time() {
    let (code, out, ran) = bridge_against(
        |stream| {
            // Read the request, never answer; hold the connection until the bridge gives up.
            let mut stream = stream;
            let _ = stream.set_read_timeout(Some(Duration::from_secs(15)));
            let mut sink = [0u8; 4096];
            while matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
        },
        Duration::from_secs(12),
    );
    assert_eq!(code, Some(1), "{out}");
    // 3 s without an answer, then the exit: the process's start and exit take a few ms, 1 s is
    // room for a loaded machine and less than a second timeout or a retry would add.
    assert!(
        ran >= Duration::from_secs(3) && ran < Duration::from_secs(4),
        "gave up after {ran:?}, not at 3 s"
    );
    assert!(
        out.contains("ERROR") && out.contains("register") && out.contains("no answer"),
        "{out}"
    );
}

#[test]
fn a_refused_registration_fails_init_with_the_reason() {
    let (code, out, _) = bridge_against(
        |mut stream| {
            let mut head = [0u8; 4096];
            let _ = stream.read(&mut head);
            let body = r#"{"errorMessage":"INVOKE is not allowed","errorType":"Extension.InvalidEventType"}"#;
            let answer = format!(
                "HTTP/1.1 403 Forbidden\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(answer.as_bytes());
        },
        Duration::from_secs(12),
    );
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("ERROR") && out.contains("403") && out.contains("Extension.InvalidEventType"),
        "{out}"
    );
}

/// Lambda may send up to 2 × maxBytes in one POST, plus its metadata: the listener takes exactly
/// 2 × maxBytes + 64 KiB and refuses one byte more, at the default and at the largest maxBytes.
#[test]
fn the_body_limit_is_exactly_twice_max_bytes_plus_64_kib() {
    for max_bytes in [262_144usize, 1_048_576] {
        let limit = 2 * max_bytes + 64 * 1024;
        let statuses = block_on(async {
            let mut cfg = config(2, &[("BRIDGE_BUFFER_MAX_BYTES", max_bytes.to_string())]);
            let statuses = Arc::new(Mutex::new(Vec::new()));
            let record = statuses.clone();
            cfg.progress = Some(Box::new(move |inv| {
                if inv.index != 0 {
                    return;
                }
                let port = inv.listener_port.expect("the listener subscribed");
                // An empty array padded with whitespace to the exact size.
                let body = |size: usize| {
                    let mut b = vec![b' '; size];
                    b[0] = b'[';
                    b[size - 1] = b']';
                    b
                };
                let mut out = record.lock().expect("lock");
                out.push(post_blocking(port, &body(limit)));
                out.push(post_blocking(port, &body(limit + 1)));
            }));
            let report = run(cfg).await;
            assert_clean(&report);
            let statuses = statuses.lock().expect("lock").clone();
            statuses
        });
        assert_eq!(
            statuses,
            vec![200, 413],
            "maxBytes {max_bytes}: limit {limit}"
        );
    }
}

/// A Pushgateway stand-in on a thread of its own: PUTs (the pushes) answered at once; a GET of
/// `/metrics` (the stale-group cleanup's listing) answered with `listing` bytes of exposition
/// lines, streamed, or (`None`) never answered.
fn pushgateway_stand_in(listing: Option<usize>) -> (u16, std::thread::JoinHandle<()>) {
    let server = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = server.local_addr().expect("addr").port();
    server.set_nonblocking(true).expect("nonblocking");
    let until = Instant::now() + Duration::from_secs(30);
    let thread = std::thread::spawn(move || {
        let mut workers = Vec::new();
        while Instant::now() < until {
            let Ok((mut stream, _)) = server.accept() else {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            };
            let _ = stream.set_nonblocking(false);
            let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
            workers.push(std::thread::spawn(move || {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && head.len() < 65536 {
                    match stream.read(&mut byte) {
                        Ok(1) => head.push(byte[0]),
                        _ => return,
                    }
                }
                let head = String::from_utf8_lossy(&head).to_string();
                if !head.starts_with("GET") {
                    // A push: read its body and answer at once.
                    let length: usize = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().to_string())
                        })
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                    let mut body = vec![0u8; length];
                    let _ = stream.read_exact(&mut body);
                    let _ = stream.write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                    );
                    return;
                }
                match listing {
                    None => std::thread::sleep(Duration::from_secs(10)),
                    Some(bytes) => {
                        let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n");
                        let line =
                            "some_series{instance=\"x\",job=\"another-job\"} 1\n".repeat(1000);
                        let mut sent = 0;
                        while sent < bytes {
                            if stream.write_all(line.as_bytes()).is_err() {
                                return;
                            }
                            sent += line.len();
                        }
                    }
                }
            }));
        }
        for worker in workers {
            let _ = worker.join();
        }
    });
    (port, thread)
}

/// A Pushgateway whose listing never comes, or is far longer than the bridge reads, delays no
/// invocation and costs no memory: the cleanup runs beside the lifecycle, reads at most 32 MiB
/// as it streams (one WARN line) and gives up after its budget.
#[test]
fn a_slow_or_huge_pushgateway_listing_delays_nothing() {
    for listing in [None, Some(64 * 1024 * 1024)] {
        let (port, _server) = pushgateway_stand_in(listing);
        let report = block_on(async {
            let sink = RecordingEndpoint::start(Behaviour::ok())
                .await
                .expect("sink");
            let mut cfg = config(
                12,
                &[
                    ("DISPATCH_POST_URI", sink.url()),
                    ("BRIDGE_PUSHGATEWAY_URL", format!("http://127.0.0.1:{port}")),
                    ("BRIDGE_PUSHGATEWAY_STALE_AFTER_MS", "1000".into()),
                ],
            );
            // Past the cleanup's start (a second) and its listing.
            cfg.between_invokes_ms = 250;
            run(cfg).await
        });
        assert_clean(&report);
        let out = &report.extension_output;
        for invocation in &report.invocations[1..] {
            assert!(
                invocation.extension_overhead < Duration::from_millis(100),
                "{listing:?}: invocation {} held {:?}\n{out}",
                invocation.index,
                invocation.extension_overhead
            );
        }
        let took = report.shutdown_duration.expect("exited");
        assert!(took < Duration::from_millis(2000 - 250 + 120), "{took:?}");
        if listing.is_some() {
            assert!(
                out.contains("its listing is longer than the bridge reads"),
                "{out}"
            );
            let peak = report.peak_rss_kb_before_shutdown.expect("peak RSS");
            // The listing is not held: a bridge that buffered its 32 MiB would be far beyond this
            // (16.5 MiB measured, a debug build).
            assert!(peak < 24 * 1024, "{peak} kB after a 64 MiB listing");
        }
    }
}
