//! `RecordingEndpoint`: a small HTTP server that records every request and answers as told. It is
//! the raw-JSON sink's target in the simulator and in tests.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::Value;
use tokio::task::JoinHandle;

use super::SimError;

/// How a [`RecordingEndpoint`] answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Behaviour {
    /// Answer the first `fail_first` requests (after the `succeed_first` ones) with `fail_status`.
    pub fail_first: usize,
    /// Requests answered normally before the failures begin.
    pub succeed_first: usize,
    /// Status of the failed answers (default 500).
    pub fail_status: u16,
    /// When set, every request (after the `fail_first` ones) is answered with this status.
    pub always_status: Option<u16>,
    /// Wait this long before each answer (an endpoint a network away).
    pub delay: Duration,
    /// And up to this much more, drawn uniformly per request.
    pub jitter: Duration,
}

impl Default for Behaviour {
    fn default() -> Self {
        Behaviour {
            fail_first: 0,
            succeed_first: 0,
            fail_status: 500,
            always_status: None,
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
        }
    }
}

impl Behaviour {
    /// 200 to everything.
    pub fn ok() -> Behaviour {
        Behaviour::default()
    }

    /// The first `n` requests get `status`, later ones 200.
    pub fn fail_first(n: usize, status: u16) -> Behaviour {
        Behaviour {
            fail_first: n,
            fail_status: status,
            ..Behaviour::default()
        }
    }

    /// Every request gets `status`.
    pub fn always(status: u16) -> Behaviour {
        Behaviour {
            always_status: Some(status),
            ..Behaviour::default()
        }
    }

    /// Same behaviour, each answer delayed by `delay`.
    /// The failures begin after `n` requests answered normally.
    pub fn after(mut self, n: usize) -> Behaviour {
        self.succeed_first = n;
        self
    }

    pub fn with_delay(mut self, delay: Duration) -> Behaviour {
        self.delay = delay;
        self
    }

    /// Each answer delayed by `delay` plus up to `jitter`, drawn uniformly per request.
    pub fn with_latency(mut self, delay: Duration, jitter: Duration) -> Behaviour {
        self.delay = delay;
        self.jitter = jitter;
        self
    }
}

/// One request a [`RecordingEndpoint`] received.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    /// `POST`, `PUT`, …
    pub method: String,
    /// Path and query, e.g. `/v1/traces`.
    pub path: String,
    /// Header names (lowercase) and values, in arrival order.
    pub headers: Vec<(String, String)>,
    /// The body as received.
    pub body: Vec<u8>,
    /// When the request (headers and body) had arrived.
    pub arrived_at: Instant,
    /// When its answer was sent (after the behaviour's delay).
    pub answered_at: Instant,
    /// The status it was answered with.
    pub status: u16,
}

impl RecordedRequest {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body parsed as JSON, if it is JSON.
    pub fn body_json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// Whether it was answered with a 2xx status.
    pub fn succeeded(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// The elements of the JSON arrays POSTed in `requests` and answered with 2xx, concatenated in
/// order (a POSTed JSON value that is not an array counts as one element; a body that is not JSON
/// is skipped). [`RecordingEndpoint::received_events`] over a given list of requests.
pub fn posted_events(requests: &[RecordedRequest]) -> Vec<Value> {
    let mut out = Vec::new();
    for r in requests
        .iter()
        .filter(|r| r.method == "POST" && r.succeeded())
    {
        match serde_json::from_slice::<Value>(&r.body) {
            Ok(Value::Array(items)) => out.extend(items),
            Ok(other) => out.push(other),
            Err(_) => {}
        }
    }
    out
}

#[derive(Debug)]
struct Inner {
    behaviour: Behaviour,
    seen: usize,
    requests: Vec<RecordedRequest>,
}

#[derive(Debug)]
struct EndpointState {
    inner: Mutex<Inner>,
}

impl EndpointState {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A loopback HTTP server recording every request. Stops when dropped.
#[derive(Debug)]
pub struct RecordingEndpoint {
    addr: SocketAddr,
    state: Arc<EndpointState>,
    task: JoinHandle<()>,
}

impl Drop for RecordingEndpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RecordingEndpoint {
    /// Starts an endpoint on `127.0.0.1:0` (a free port).
    pub async fn start(behaviour: Behaviour) -> Result<RecordingEndpoint, SimError> {
        RecordingEndpoint::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), behaviour).await
    }

    /// Starts an endpoint on the given address.
    pub async fn start_on(
        addr: SocketAddr,
        behaviour: Behaviour,
    ) -> Result<RecordingEndpoint, SimError> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(SimError::Bind)?;
        let addr = listener.local_addr().map_err(SimError::Bind)?;
        let state = Arc::new(EndpointState {
            inner: Mutex::new(Inner {
                behaviour,
                seen: 0,
                requests: Vec::new(),
            }),
        });
        let app = Router::new()
            .fallback(record)
            .layer(DefaultBodyLimit::max(64 * 1024 * 1024))
            .with_state(state.clone());
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::warn!("recording endpoint stopped: {e}");
            }
        });
        Ok(RecordingEndpoint { addr, state, task })
    }

    /// `http://127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state.lock().requests.clone()
    }

    /// The recorded requests from the `from`-th on (none if fewer were recorded; after
    /// [`clear`](Self::clear) or [`take_requests`](Self::take_requests) the count restarts).
    pub fn requests_from(&self, from: usize) -> Vec<RecordedRequest> {
        self.state
            .lock()
            .requests
            .get(from..)
            .map(<[RecordedRequest]>::to_vec)
            .unwrap_or_default()
    }

    /// The elements of the JSON arrays POSTed and answered with 2xx, concatenated in arrival
    /// order (a POSTed JSON value that is not an array counts as one element; a body that is not
    /// JSON is skipped).
    pub fn received_events(&self) -> Vec<Value> {
        posted_events(&self.state.lock().requests)
    }

    /// Changes how later requests are answered (the count of already-failed requests is kept).
    pub fn set_behaviour(&self, behaviour: Behaviour) {
        self.state.lock().behaviour = behaviour;
    }

    /// Forgets the recorded requests (the failure count is kept).
    pub fn clear(&self) {
        self.state.lock().requests.clear();
    }

    /// Takes the requests recorded so far out, in arrival order: later calls return only what
    /// arrived since. For a long run, a caller that counts what it needs and calls this now and
    /// then keeps the endpoint's memory bounded.
    pub fn take_requests(&self) -> Vec<RecordedRequest> {
        std::mem::take(&mut self.state.lock().requests)
    }

    /// Number of requests received since the start (taken or cleared ones included).
    pub fn requests_seen(&self) -> usize {
        self.state.lock().seen
    }

    /// Waits until at least `n` requests were recorded, or `timeout`. Returns whether they were.
    pub async fn wait_for_requests(&self, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.state.lock().requests.len() >= n {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Waits until [`received_events`](Self::received_events) has at least `n` elements, or
    /// `timeout`. Returns whether it has.
    pub async fn wait_for_events(&self, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.received_events().len() >= n {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

async fn record(
    State(state): State<Arc<EndpointState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let arrived_at = Instant::now();
    let (status, delay) = {
        let mut inner = state.lock();
        inner.seen += 1;
        let b = &inner.behaviour;
        let failing = inner.seen > b.succeed_first && inner.seen <= b.succeed_first + b.fail_first;
        let status = if failing {
            b.fail_status
        } else {
            b.always_status.unwrap_or(200)
        };
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let delay = b.delay + b.jitter.mul_f64(fastrand::f64());
        inner.requests.push(RecordedRequest {
            method: method.as_str().to_string(),
            path: uri
                .path_and_query()
                .map(|p| p.as_str().to_string())
                .unwrap_or_else(|| uri.path().to_string()),
            headers: headers
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect(),
            body: body.to_vec(),
            arrived_at,
            answered_at: arrived_at + delay,
            status: status.as_u16(),
        });
        (status, delay)
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    (status, [("content-type", "application/json")], "{}").into_response()
}
