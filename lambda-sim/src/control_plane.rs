//! The loopback Extensions API + Telemetry API server.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::Router;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::events;
use super::telemetry::{Subscription, TelemetryHub};
use super::{ErrorReport, SimError};

/// Header carrying the extension id.
pub const ID_HEADER: &str = "lambda-extension-identifier";

/// A `/event/next` call waiting for its answer.
#[derive(Debug)]
pub(crate) struct PendingNext {
    pub at: Instant,
    pub reply: oneshot::Sender<Value>,
}

/// What the control plane tells the driver.
#[derive(Debug)]
pub(crate) enum ControlMsg {
    Next(PendingNext),
    InitError,
    ExitError,
}

/// Everything the control plane records.
#[derive(Debug, Default)]
pub(crate) struct Recorded {
    pub register_headers: Vec<(String, String)>,
    pub register_body: Option<Value>,
    pub register_status: Option<u16>,
    pub extension_id: Option<String>,
    pub extension_name: Option<String>,
    pub registered_events: Vec<String>,
    pub subscription_body: Option<Value>,
    pub subscribe_status: Option<u16>,
    pub subscribe_error: Option<String>,
    pub init_errors: Vec<ErrorReport>,
    pub exit_errors: Vec<ErrorReport>,
    pub next_calls: Vec<Instant>,
    /// All `/event/next` calls (`next_calls` may hold only the latest under a history limit).
    pub next_calls_total: usize,
    /// The extension's CPU time (ns, all threads) when each of `next_calls` arrived (same index).
    pub cpu_ns_at_next: Vec<Option<u64>>,
    pub unknown_requests: Vec<String>,
}

pub(crate) struct Shared {
    pub recorded: Mutex<Recorded>,
    pub hub: Arc<TelemetryHub>,
    pub ctrl: mpsc::UnboundedSender<ControlMsg>,
    pub function_name: String,
    pub function_version: String,
    /// Keep about this many `next_calls` (`SimConfig::history_limit`).
    pub history_limit: Option<usize>,
    /// The extension's pid once spawned (0 before), for the CPU samples at `/event/next`.
    pub pid: AtomicU32,
    /// Lambda Managed Instances' rules: INVOKE registration refused, schema 2025-01-29 only.
    pub managed_instances: bool,
    /// `SimConfig::refuse_subscription`.
    pub refuse_subscription: Option<u16>,
}

impl Shared {
    pub fn lock(&self) -> MutexGuard<'_, Recorded> {
        self.recorded.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The running server; stops when dropped.
pub(crate) struct ControlPlane {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ControlPlane {
    pub async fn start(shared: Arc<Shared>) -> Result<ControlPlane, SimError> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .map_err(SimError::Bind)?;
        let addr = listener.local_addr().map_err(SimError::Bind)?;
        let app = Router::new()
            .route("/2020-01-01/extension/register", post(register))
            .route("/2020-01-01/extension/event/next", get(next))
            .route("/2020-01-01/extension/init/error", post(init_error))
            .route("/2020-01-01/extension/exit/error", post(exit_error))
            .route("/2022-07-01/telemetry", put(subscribe))
            .route("/2022-07-01/telemetry/", put(subscribe))
            .fallback(unknown)
            .layer(DefaultBodyLimit::max(16 * 1024 * 1024))
            .with_state(shared);
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::warn!("simulated control plane stopped: {e}");
            }
        });
        Ok(ControlPlane { addr, task })
    }
}

fn headers_vec(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Parses a body as JSON; a body that is not JSON is kept as a string.
fn body_value(body: &Bytes) -> (Value, bool) {
    match serde_json::from_slice::<Value>(body) {
        Ok(v) => (v, true),
        Err(_) => (
            Value::String(String::from_utf8_lossy(body).into_owned()),
            false,
        ),
    }
}

fn error(status: StatusCode, error_type: &str, message: impl Into<String>) -> Response {
    let body = json!({"errorMessage": message.into(), "errorType": error_type}).to_string();
    (status, [("content-type", "application/json")], body).into_response()
}

/// Checks the `Lambda-Extension-Identifier` header against the registered id; `Some` is the
/// rejection to answer.
fn check_id(shared: &Shared, headers: &HeaderMap) -> Option<Response> {
    let expected = shared.lock().extension_id.clone();
    match (header(headers, ID_HEADER), expected) {
        (Some(got), Some(expected)) if got == expected => None,
        (None, _) => Some(error(
            StatusCode::FORBIDDEN,
            "Extension.MissingExtensionIdentifier",
            "missing Lambda-Extension-Identifier header",
        )),
        _ => Some(error(
            StatusCode::FORBIDDEN,
            "Extension.InvalidExtensionIdentifier",
            "unknown Lambda-Extension-Identifier",
        )),
    }
}

async fn register(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let (value, _) = body_value(&body);
    let name = header(&headers, "lambda-extension-name").map(str::to_string);
    let accept = header(&headers, "lambda-extension-accept-feature")
        .unwrap_or("")
        .to_string();
    let mut rec = shared.lock();
    rec.register_headers = headers_vec(&headers);
    rec.register_body = Some(value.clone());

    let events: Result<Vec<String>, String> = match value.get("events").and_then(Value::as_array) {
        None => Err("the body must be an object with an \"events\" array".into()),
        Some(list) => list
            .iter()
            .map(|e| match e.as_str() {
                Some(s @ ("INVOKE" | "SHUTDOWN")) => Ok(s.to_string()),
                _ => Err(format!(
                    "invalid event type {e}: expected \"INVOKE\" or \"SHUTDOWN\""
                )),
            })
            .collect(),
    };
    let outcome = match (name, events) {
        (None, _) => Err((
            "Extension.InvalidExtensionName",
            "missing Lambda-Extension-Name header".to_string(),
        )),
        (Some(n), _) if n.is_empty() => Err((
            "Extension.InvalidExtensionName",
            "empty Lambda-Extension-Name header".to_string(),
        )),
        (_, Err(m)) => Err(("Extension.InvalidEventType", m)),
        (_, Ok(events)) if shared.managed_instances && events.iter().any(|e| e == "INVOKE") => {
            Err((
                "Extension.InvalidEventType",
                "INVOKE is not a valid event type on Lambda Managed Instances: register for \
                 SHUTDOWN only"
                    .to_string(),
            ))
        }
        (Some(_), Ok(_)) if rec.extension_id.is_some() => Err((
            "Extension.AlreadyRegistered",
            "the extension is already registered".to_string(),
        )),
        (Some(n), Ok(events)) => Ok((n, events)),
    };
    match outcome {
        Err((error_type, message)) => {
            rec.register_status = Some(403);
            error(StatusCode::FORBIDDEN, error_type, message)
        }
        Ok((name, events)) => {
            let id = events::uuid();
            rec.extension_id = Some(id.clone());
            rec.extension_name = Some(name);
            rec.registered_events = events;
            rec.register_status = Some(200);
            drop(rec);
            let mut body = json!({
                "functionName": shared.function_name,
                "functionVersion": shared.function_version,
                "handler": "index.handler",
            });
            if accept.split(',').any(|f| f.trim() == "accountId") {
                body["accountId"] = json!(events::ACCOUNT_ID);
            }
            (
                StatusCode::OK,
                [
                    ("lambda-extension-identifier", id),
                    ("content-type", "application/json".to_string()),
                ],
                body.to_string(),
            )
                .into_response()
        }
    }
}

async fn next(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if let Some(r) = check_id(&shared, &headers) {
        return r;
    }
    let at = Instant::now();
    let cpu = match shared.pid.load(Ordering::Relaxed) {
        0 => None,
        pid => super::procfs::cpu_ns(pid),
    };
    {
        let mut rec = shared.lock();
        rec.next_calls.push(at);
        rec.cpu_ns_at_next.push(cpu);
        rec.next_calls_total += 1;
        if let Some(limit) = shared.history_limit.map(|l| l.max(1)) {
            if rec.next_calls.len() >= 2 * limit {
                let excess = rec.next_calls.len() - limit;
                rec.next_calls.drain(..excess);
                let excess = rec.cpu_ns_at_next.len().saturating_sub(limit);
                rec.cpu_ns_at_next.drain(..excess);
            }
        }
    }
    let (tx, rx) = oneshot::channel();
    if shared
        .ctrl
        .send(ControlMsg::Next(PendingNext { at, reply: tx }))
        .is_err()
    {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Sim.Stopped",
            "the simulator is not running",
        );
    }
    match rx.await {
        Ok(event) => (
            StatusCode::OK,
            [
                ("lambda-extension-event-identifier", events::uuid()),
                ("content-type", "application/json".to_string()),
            ],
            event.to_string(),
        )
            .into_response(),
        Err(_) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Sim.Stopped",
            "the simulator stopped",
        ),
    }
}

fn error_report(headers: &HeaderMap, body: &Bytes) -> ErrorReport {
    let (value, _) = body_value(body);
    ErrorReport {
        headers: headers_vec(headers),
        error_type: header(headers, "lambda-extension-function-error-type").map(str::to_string),
        body: if body.is_empty() { None } else { Some(value) },
        at: Instant::now(),
    }
}

async fn init_error(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(r) = check_id(&shared, &headers) {
        return r;
    }
    shared
        .lock()
        .init_errors
        .push(error_report(&headers, &body));
    let _ = shared.ctrl.send(ControlMsg::InitError);
    accepted()
}

async fn exit_error(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(r) = check_id(&shared, &headers) {
        return r;
    }
    shared
        .lock()
        .exit_errors
        .push(error_report(&headers, &body));
    let _ = shared.ctrl.send(ControlMsg::ExitError);
    accepted()
}

fn accepted() -> Response {
    (
        StatusCode::ACCEPTED,
        [("content-type", "application/json")],
        r#"{"status":"OK"}"#,
    )
        .into_response()
}

/// The only schema version Lambda Managed Instances accepts.
pub const MANAGED_INSTANCES_SCHEMA: &str = "2025-01-29";

/// Accepted schema versions of `PUT /telemetry`.
pub const SCHEMA_VERSIONS: [&str; 3] = ["2022-07-01", "2022-12-13", "2025-01-29"];

/// Validates a subscription body like Lambda does.
pub fn validate_subscription(body: &Value) -> Result<Subscription, String> {
    let obj = body.as_object().ok_or("the body must be a JSON object")?;
    match obj.get("schemaVersion").and_then(Value::as_str) {
        Some(v) if SCHEMA_VERSIONS.contains(&v) => {}
        Some(v) => return Err(format!("unsupported schemaVersion {v:?}")),
        None => return Err("missing schemaVersion".into()),
    }
    let types = obj
        .get("types")
        .and_then(Value::as_array)
        .ok_or("missing types array")?;
    let mut subscribed = Vec::new();
    for t in types {
        match t.as_str() {
            Some(s @ ("platform" | "function" | "extension")) => {
                if !subscribed.iter().any(|x| x == s) {
                    subscribed.push(s.to_string());
                }
            }
            _ => {
                return Err(format!(
                    "invalid type {t}: expected platform, function or extension"
                ))
            }
        }
    }
    if subscribed.is_empty() {
        return Err("types must not be empty".into());
    }
    let buffering = match obj.get("buffering") {
        None | Some(Value::Null) => serde_json::Map::new(),
        Some(Value::Object(b)) => b.clone(),
        Some(_) => return Err("buffering must be an object".into()),
    };
    let range = |name: &str, min: u64, max: u64, default: u64| -> Result<u64, String> {
        match buffering.get(name) {
            None => Ok(default),
            Some(v) => match v.as_u64() {
                Some(n) if (min..=max).contains(&n) => Ok(n),
                _ => Err(format!(
                    "buffering.{name} must be an integer in {min}..={max}, got {v}"
                )),
            },
        }
    };
    let max_items = range("maxItems", 1_000, 10_000, 10_000)?;
    let max_bytes = range("maxBytes", 262_144, 1_048_576, 262_144)?;
    let timeout_ms = range("timeoutMs", 25, 30_000, 1_000)?;
    let dest = obj
        .get("destination")
        .and_then(Value::as_object)
        .ok_or("missing destination object")?;
    match dest.get("protocol").and_then(Value::as_str) {
        Some("HTTP") => {}
        other => {
            return Err(format!(
                "destination.protocol must be \"HTTP\", got {other:?}"
            ))
        }
    }
    let uri = dest
        .get("URI")
        .and_then(Value::as_str)
        .ok_or("missing destination.URI")?;
    let (_, port) = parse_http_uri(uri)?;
    if port == 9001 {
        return Err("destination port 9001 is reserved".into());
    }
    Ok(Subscription {
        uri: uri.to_string(),
        types: subscribed,
        max_items: usize::try_from(max_items).unwrap_or(usize::MAX),
        max_bytes: usize::try_from(max_bytes).unwrap_or(usize::MAX),
        timeout: Duration::from_millis(timeout_ms),
    })
}

/// Splits `http://host[:port]/…` into host and port.
pub fn parse_http_uri(uri: &str) -> Result<(String, u16), String> {
    let rest = uri
        .strip_prefix("http://")
        .ok_or_else(|| format!("destination.URI must start with http://, got {uri:?}"))?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.is_empty() {
        return Err(format!("destination.URI has no host: {uri:?}"));
    }
    let (host, port) = if let Some(stripped) = authority.strip_prefix('[') {
        // [v6]:port
        let (h, p) = stripped
            .split_once(']')
            .ok_or_else(|| format!("bad host in {uri:?}"))?;
        (h.to_string(), p.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (authority.to_string(), None),
        }
    };
    let port = match port {
        None => 80,
        Some(p) => p
            .parse::<u16>()
            .map_err(|_| format!("bad port in destination.URI {uri:?}"))?,
    };
    if host.is_empty() {
        return Err(format!("destination.URI has no host: {uri:?}"));
    }
    Ok((host, port))
}

async fn subscribe(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(r) = check_id(&shared, &headers) {
        let mut rec = shared.lock();
        rec.subscription_body = Some(body_value(&body).0);
        rec.subscribe_status = Some(r.status().as_u16());
        rec.subscribe_error = Some("bad or missing Lambda-Extension-Identifier".into());
        return r;
    }
    let (value, is_json) = body_value(&body);
    if let Some(status) = shared.refuse_subscription {
        let mut rec = shared.lock();
        rec.subscription_body = Some(value);
        rec.subscribe_status = Some(status);
        rec.subscribe_error = Some("refused by the simulation".into());
        drop(rec);
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let kind = if status.is_server_error() {
            "ServiceException"
        } else {
            "ValidationError"
        };
        return error(status, kind, "the subscription was refused");
    }
    let result = if !is_json {
        Err("the body is not JSON".into())
    } else if shared.managed_instances
        && value.get("schemaVersion").and_then(Value::as_str) != Some(MANAGED_INSTANCES_SCHEMA)
    {
        Err(format!(
            "Lambda Managed Instances requires schemaVersion {MANAGED_INSTANCES_SCHEMA:?}, got {}",
            value.get("schemaVersion").unwrap_or(&Value::Null)
        ))
    } else {
        validate_subscription(&value)
    };
    let mut rec = shared.lock();
    rec.subscription_body = Some(value);
    match result {
        Err(message) => {
            rec.subscribe_status = Some(400);
            rec.subscribe_error = Some(message.clone());
            drop(rec);
            error(StatusCode::BAD_REQUEST, "ValidationError", message)
        }
        Ok(sub) => {
            rec.subscribe_status = Some(200);
            rec.subscribe_error = None;
            let name = rec.extension_name.clone().unwrap_or_default();
            drop(rec);
            let types = sub.types.clone();
            shared.hub.subscribe(sub);
            shared.hub.emit(events::telemetry_subscription(
                SystemTime::now(),
                &name,
                &types,
            ));
            (StatusCode::OK, "OK").into_response()
        }
    }
}

async fn unknown(State(shared): State<Arc<Shared>>, method: Method, uri: Uri) -> Response {
    shared
        .lock()
        .unknown_requests
        .push(format!("{method} {uri}"));
    error(
        StatusCode::NOT_FOUND,
        "Sim.NotFound",
        format!("no such endpoint: {method} {uri}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(buffering: Value, uri: &str) -> Value {
        json!({
            "schemaVersion": "2022-12-13",
            "types": ["platform", "function"],
            "buffering": buffering,
            "destination": {"protocol": "HTTP", "URI": uri},
        })
    }

    /// The control plane of a Managed Instances environment, and a client for it.
    async fn managed_control_plane() -> (ControlPlane, reqwest::Client) {
        let (ctrl, _) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            recorded: Mutex::new(Recorded::default()),
            hub: Arc::new(TelemetryHub::with_history_limit(None)),
            ctrl,
            function_name: "f".into(),
            function_version: "$LATEST".into(),
            history_limit: None,
            pid: AtomicU32::new(0),
            managed_instances: true,
            refuse_subscription: None,
        });
        let plane = ControlPlane::start(shared).await.expect("control plane");
        let client = crate::driver::http_client().expect("client");
        (plane, client)
    }

    async fn register(
        client: &reqwest::Client,
        plane: &ControlPlane,
        events: Value,
    ) -> (u16, Value, Option<String>) {
        let answer = client
            .post(format!(
                "http://{}/2020-01-01/extension/register",
                plane.addr
            ))
            .header("Lambda-Extension-Name", "ext")
            .body(json!({ "events": events }).to_string())
            .send()
            .await
            .expect("register");
        let status = answer.status().as_u16();
        let id = answer
            .headers()
            .get(ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let text = answer.text().await.unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        (status, body, id)
    }

    #[tokio::test]
    async fn managed_instances_refuses_invoke_registration_with_403() {
        let (plane, client) = managed_control_plane().await;
        let (status, body, _) = register(&client, &plane, json!(["INVOKE", "SHUTDOWN"])).await;
        assert_eq!(status, 403);
        assert_eq!(body["errorType"], "Extension.InvalidEventType");
        let (status, _, id) = register(&client, &plane, json!(["SHUTDOWN"])).await;
        assert_eq!(status, 200);
        assert!(id.is_some());
    }

    #[tokio::test]
    async fn managed_instances_refuses_older_schema_versions_with_400() {
        let (plane, client) = managed_control_plane().await;
        let (_, _, id) = register(&client, &plane, json!(["SHUTDOWN"])).await;
        let id = id.expect("registered");
        let subscribe = |version: &'static str| {
            let mut subscription = body(
                json!({"maxItems": 1000, "maxBytes": 262144, "timeoutMs": 25}),
                "http://127.0.0.1:4243/",
            );
            subscription["schemaVersion"] = json!(version);
            client
                .put(format!("http://{}/2022-07-01/telemetry", plane.addr))
                .header(ID_HEADER, id.clone())
                .body(subscription.to_string())
                .send()
        };
        for old in ["2022-07-01", "2022-12-13"] {
            let answer = subscribe(old).await.expect("subscribe");
            assert_eq!(answer.status().as_u16(), 400, "{old}");
        }
        let answer = subscribe("2025-01-29").await.expect("subscribe");
        assert_eq!(answer.status().as_u16(), 200);
    }

    #[test]
    fn subscription_validation() {
        let ok = validate_subscription(&body(
            json!({"maxItems": 1000, "maxBytes": 262144, "timeoutMs": 25}),
            "http://127.0.0.1:4243/",
        ));
        let sub = ok.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(sub.max_items, 1000);
        assert_eq!(sub.timeout, Duration::from_millis(25));
        assert_eq!(sub.types, vec!["platform", "function"]);

        for bad in [
            json!({"maxItems": 999}),
            json!({"maxItems": 10001}),
            json!({"maxBytes": 262143}),
            json!({"maxBytes": 1048577}),
            json!({"timeoutMs": 24}),
            json!({"timeoutMs": 30001}),
            json!({"timeoutMs": "100"}),
        ] {
            assert!(
                validate_subscription(&body(bad.clone(), "http://127.0.0.1:4243/")).is_err(),
                "{bad}"
            );
        }
        assert!(
            validate_subscription(&body(json!({}), "http://sandbox.localdomain:9001/")).is_err()
        );
        assert!(validate_subscription(&body(json!({}), "tcp://127.0.0.1:4243")).is_err());
        let mut b = body(json!({}), "http://127.0.0.1:4243/");
        b["schemaVersion"] = json!("2021-03-18");
        assert!(validate_subscription(&b).is_err());
        b["schemaVersion"] = json!("2025-01-29");
        b["types"] = json!(["platform", "logs"]);
        assert!(validate_subscription(&b).is_err());
        b["types"] = json!(["extension"]);
        b["destination"]["protocol"] = json!("TCP");
        assert!(validate_subscription(&b).is_err());
    }

    #[test]
    fn uri_parsing() {
        assert_eq!(
            parse_http_uri("http://sandbox.localdomain:4243/x"),
            Ok(("sandbox.localdomain".to_string(), 4243))
        );
        assert_eq!(parse_http_uri("http://h"), Ok(("h".to_string(), 80)));
        assert_eq!(
            parse_http_uri("http://[::1]:5/"),
            Ok(("::1".to_string(), 5))
        );
        assert!(parse_http_uri("http://:5/").is_err());
        assert!(parse_http_uri("http://h:x/").is_err());
    }
}
