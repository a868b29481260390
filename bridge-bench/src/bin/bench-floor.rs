//! The benchmark floor: the most trivial Telemetry API extension, built in the same profile and on
//! the same stack as the bridge (tokio current-thread runtime, axum 0.8 over HTTP/1.1 for the
//! listener, hyper-util's legacy client for the Runtime API). It registers, starts a listener that
//! answers every request with 200 (after reading the body), subscribes, then loops on
//! `/event/next` and exits 0 on SHUTDOWN. It does the bridge's I/O and none of its work: at each
//! INVOKE it POSTs one pre-encoded body to each endpoint the bridge posts to per invocation
//! (`DISPATCH_POST_URI`; `/v1/traces` and `/v1/logs` under `OTEL_EXPORTER_OTLP_ENDPOINT`), beside
//! the lifecycle as the bridge's default policy does (the **I/O floor**). Nothing else: no parsing
//! of telemetry, no encoding, no logging.
//!
//! With `BENCH_FLOOR_POSTS=0` it is the **push-only floor**: it POSTs nothing, and only does what
//! every Telemetry API extension must do (register, subscribe, accept and answer every push, loop
//! on `/event/next`). `bridge-bench` takes its ratios against the push-only floor and shows the
//! I/O floor beside it as a second reference.
//!
//! It reads `AWS_LAMBDA_RUNTIME_API`, `BRIDGE_LISTENER_ADDR` (default `sandbox.localdomain`) and,
//! so that its subscription asks for the same buffering as the bridge's in each scenario,
//! `BRIDGE_BUFFER_MAX_ITEMS`, `BRIDGE_BUFFER_MAX_BYTES` and `BRIDGE_BUFFER_TIMEOUT_MS`.

use std::path::Path;
use std::process::ExitCode;

use axum::body::Bytes;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::Router;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;

const SANDBOX_HOST: &str = "sandbox.localdomain";

type HttpClient = Client<HttpConnector, Full<Bytes>>;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

/// One call to the Runtime API; the status must be 2xx. Returns the headers and the body.
async fn call(
    client: &HttpClient,
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Result<(hyper::HeaderMap, Bytes), String> {
    let mut builder = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    let request = builder
        .body(Full::new(body))
        .map_err(|e| format!("{url}: {e}"))?;
    let response = client
        .request(request)
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    let (parts, body) = response.into_parts();
    let bytes = body
        .collect()
        .await
        .map_err(|e| format!("{url}: {e}"))?
        .to_bytes();
    if !parts.status.is_success() {
        return Err(format!("{url}: HTTP {}", parts.status));
    }
    Ok((parts.headers, bytes))
}

async fn answer(_body: Bytes) -> StatusCode {
    StatusCode::OK
}

/// The endpoints the bridge posts to per invocation, each with a pre-encoded body of about the
/// size the bridge sends for one invocation of the standard scenario.
fn outputs() -> Vec<(hyper::Uri, &'static str, Bytes)> {
    let mut out = Vec::new();
    if std::env::var("BENCH_FLOOR_POSTS").is_ok_and(|v| v.trim() == "0") {
        // The push-only floor.
        return out;
    }
    if let Some(uri) = std::env::var("DISPATCH_POST_URI")
        .ok()
        .and_then(|u| u.parse().ok())
    {
        let event = r#"{"time":"2026-01-01T00:00:00.000Z","type":"function","record":"a log line of the standard scenario, about this long"}"#;
        let body = format!("[{}]", [event; 12].join(","));
        out.push((uri, "application/json", Bytes::from(body)));
    }
    if let Ok(base) = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT") {
        for (path, size) in [("v1/traces", 1200), ("v1/logs", 900)] {
            let url = format!("{}/{path}", base.trim_end_matches('/'));
            if let Ok(uri) = url.parse() {
                // Opaque bytes of a typical export's size: nothing reads them but the receiver.
                out.push((uri, "application/x-protobuf", Bytes::from(vec![0u8; size])));
            }
        }
    }
    out
}

/// POSTs each output's body, without waiting (beside the lifecycle).
fn post_outputs(client: &HttpClient, outputs: &[(hyper::Uri, &'static str, Bytes)]) {
    for (uri, content_type, body) in outputs {
        let request = Request::builder()
            .method(Method::POST)
            .uri(uri.clone())
            .header("content-type", *content_type)
            .body(Full::new(body.clone()));
        let Ok(request) = request else { continue };
        let client = client.clone();
        tokio::spawn(async move {
            if let Ok(response) = client.request(request).await {
                let _ = response.into_body().collect().await;
            }
        });
    }
}

async fn run(name: String) -> Result<(), String> {
    let api = std::env::var("AWS_LAMBDA_RUNTIME_API")
        .map_err(|_| "AWS_LAMBDA_RUNTIME_API is not set".to_string())?;
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: HttpClient = Client::builder(TokioExecutor::new()).build(connector);

    let base = format!("http://{api}/2020-01-01/extension");
    let (headers, _) = call(
        &client,
        Method::POST,
        &format!("{base}/register"),
        &[
            ("Lambda-Extension-Name", name.as_str()),
            ("Content-Type", "application/json"),
        ],
        Bytes::from_static(br#"{"events":["INVOKE","SHUTDOWN"]}"#),
    )
    .await?;
    let id = headers
        .get("Lambda-Extension-Identifier")
        .and_then(|v| v.to_str().ok())
        .ok_or("register: no Lambda-Extension-Identifier")?
        .to_string();

    let max_items = env_u64("BRIDGE_BUFFER_MAX_ITEMS", 1000);
    let max_bytes = env_u64("BRIDGE_BUFFER_MAX_BYTES", 262_144);
    let timeout_ms = env_u64("BRIDGE_BUFFER_TIMEOUT_MS", 25);
    let host = std::env::var("BRIDGE_LISTENER_ADDR").unwrap_or_else(|_| SANDBOX_HOST.into());
    let destination = if host == "0.0.0.0" || host == "::" {
        SANDBOX_HOST.to_string()
    } else {
        host.clone()
    };
    let socket = tokio::net::TcpListener::bind((host.as_str(), 0))
        .await
        .map_err(|e| format!("bind {host}: {e}"))?;
    let port = socket
        .local_addr()
        .map_err(|e| format!("bind {host}: {e}"))?
        .port();
    let limit = usize::try_from(2 * max_bytes + 64 * 1024).unwrap_or(usize::MAX);
    let app = Router::new()
        .fallback(answer)
        .layer(DefaultBodyLimit::max(limit));
    tokio::spawn(async move {
        let _ = axum::serve(socket, app).await;
    });

    let subscription = serde_json::json!({
        "schemaVersion": "2022-12-13",
        "types": ["platform", "function", "extension"],
        "buffering": {"maxItems": max_items, "maxBytes": max_bytes, "timeoutMs": timeout_ms},
        "destination": {"protocol": "HTTP", "URI": format!("http://{destination}:{port}/")},
    })
    .to_string()
    .into_bytes();
    call(
        &client,
        Method::PUT,
        &format!("http://{api}/2022-07-01/telemetry"),
        &[
            ("Lambda-Extension-Identifier", id.as_str()),
            ("Content-Type", "application/json"),
        ],
        Bytes::from(subscription),
    )
    .await?;

    let outputs = outputs();
    let next = format!("{base}/event/next");
    loop {
        let (_, body) = call(
            &client,
            Method::GET,
            &next,
            &[("Lambda-Extension-Identifier", id.as_str())],
            Bytes::new(),
        )
        .await?;
        // The only thing read from an event: whether it is SHUTDOWN.
        let event: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| format!("event/next: {e}"))?;
        if event.get("eventType").and_then(|t| t.as_str()) == Some("SHUTDOWN") {
            return Ok(());
        }
        post_outputs(&client, &outputs);
    }
}

fn main() -> ExitCode {
    let name = std::env::args_os()
        .next()
        .and_then(|arg0| {
            Path::new(&arg0)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "bench-floor".to_string());
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bench-floor: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(name)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench-floor: {e}");
            ExitCode::from(1)
        }
    }
}
