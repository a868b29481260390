//! Shared helpers: run the real extension binary under the in-process Lambda stand-in.
#![allow(dead_code)]

use std::future::Future;
use std::path::PathBuf;

use lambda_telemetry_bridge::sim::{self, RecordingEndpoint, SimConfig, SimReport};
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

/// The request id of an event, if it has one.
pub fn request_id(event: &Value) -> Option<&str> {
    event.get("record")?.get("requestId")?.as_str()
}

pub mod otlp {
    //! Decodes what an OTLP/HTTP receiver got, with the protobuf definitions (or their JSON form).
    use std::io::Read;

    use lambda_telemetry_bridge::sim::{RecordedRequest, RecordingEndpoint};
    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
    use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
    use opentelemetry_proto::tonic::logs::v1::LogRecord;
    use opentelemetry_proto::tonic::metrics::v1::Metric;
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::Span;
    use prost::Message;

    fn body(request: &RecordedRequest) -> Vec<u8> {
        if request.header("content-encoding") == Some("gzip") {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(&request.body[..])
                .read_to_end(&mut out)
                .expect("valid gzip");
            out
        } else {
            request.body.clone()
        }
    }

    fn is_json(request: &RecordedRequest) -> bool {
        request
            .header("content-type")
            .is_some_and(|c| c.contains("json"))
    }

    fn decode<T: Message + Default + serde::de::DeserializeOwned>(request: &RecordedRequest) -> T {
        let bytes = body(request);
        if is_json(request) {
            serde_json::from_slice(&bytes).expect("valid OTLP JSON")
        } else {
            T::decode(&bytes[..]).expect("valid OTLP protobuf")
        }
    }

    fn posts<'a>(
        requests: &'a [RecordedRequest],
        path: &'a str,
    ) -> impl Iterator<Item = &'a RecordedRequest> {
        requests
            .iter()
            .filter(move |r| r.method == "POST" && r.path == path && r.succeeded())
    }

    pub fn spans(endpoint: &RecordingEndpoint) -> Vec<(Resource, Span)> {
        let requests = endpoint.requests();
        let mut out = Vec::new();
        for r in posts(&requests, "/v1/traces") {
            let req: ExportTraceServiceRequest = decode(r);
            for rs in req.resource_spans {
                let resource = rs.resource.clone().unwrap_or_default();
                for ss in rs.scope_spans {
                    for span in ss.spans {
                        out.push((resource.clone(), span));
                    }
                }
            }
        }
        out
    }

    /// Every metric of every export, in order (cumulative exports repeat earlier series).
    pub fn metrics(endpoint: &RecordingEndpoint) -> Vec<(Resource, Metric)> {
        let requests = endpoint.requests();
        let mut out = Vec::new();
        for r in posts(&requests, "/v1/metrics") {
            let req: ExportMetricsServiceRequest = decode(r);
            for rm in req.resource_metrics {
                let resource = rm.resource.clone().unwrap_or_default();
                for sm in rm.scope_metrics {
                    for m in sm.metrics {
                        out.push((resource.clone(), m));
                    }
                }
            }
        }
        out
    }

    pub fn logs(endpoint: &RecordingEndpoint) -> Vec<(Resource, LogRecord)> {
        let requests = endpoint.requests();
        let mut out = Vec::new();
        for r in posts(&requests, "/v1/logs") {
            let req: ExportLogsServiceRequest = decode(r);
            for rl in req.resource_logs {
                let resource = rl.resource.clone().unwrap_or_default();
                for sl in rl.scope_logs {
                    for l in sl.log_records {
                        out.push((resource.clone(), l));
                    }
                }
            }
        }
        out
    }

    pub fn attr<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a any_value::Value> {
        attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.as_ref())
            .and_then(|v: &AnyValue| v.value.as_ref())
    }

    pub fn attr_str<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a str> {
        match attr(attributes, key)? {
            any_value::Value::StringValue(s) => Some(s),
            _ => None,
        }
    }

    pub fn attr_bool(attributes: &[KeyValue], key: &str) -> Option<bool> {
        match attr(attributes, key)? {
            any_value::Value::BoolValue(b) => Some(*b),
            _ => None,
        }
    }

    pub fn attr_int(attributes: &[KeyValue], key: &str) -> Option<i64> {
        match attr(attributes, key)? {
            any_value::Value::IntValue(i) => Some(*i),
            _ => None,
        }
    }
}

/// Nanoseconds since the epoch of an RFC 3339 time.
pub fn nanos(time: &str) -> u64 {
    let t = humantime::parse_rfc3339(time).expect("RFC 3339 time");
    t.duration_since(std::time::UNIX_EPOCH)
        .expect("after epoch")
        .as_nanos() as u64
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

/// A blocking HTTP/1.1 POST on loopback; returns the status code (0 if the connection failed).
pub fn post_blocking(port: u16, body: &[u8]) -> u16 {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return 0;
    };
    let _ = stream.set_read_timeout(Some(std::time::Duration::from_secs(5)));
    let head = format!(
        "POST / HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if stream.write_all(head.as_bytes()).is_err() || stream.write_all(body).is_err() {
        return 0;
    }
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Peak and current RSS (kB) of the process whose environment holds `tag`.
pub fn rss_of_tagged(tag: &str) -> Option<(u64, u64)> {
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let path = entry.path();
        let Ok(environ) = std::fs::read(path.join("environ")) else {
            continue;
        };
        if !environ.split(|b| *b == 0).any(|kv| kv == tag.as_bytes()) {
            continue;
        }
        let status = std::fs::read_to_string(path.join("status")).ok()?;
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        };
        return Some((field("VmHWM:")?, field("VmRSS:")?));
    }
    None
}
