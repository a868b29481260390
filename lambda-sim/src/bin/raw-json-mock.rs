//! `raw-json-mock`: the raw JSON sink's endpoint in the local observability stack. It records the
//! elements of every JSON array POSTed to it and serves them back, so that what the bridge sent
//! can be looked at (or asserted on) from outside.
//!
//! * `POST` to any path: the body must be JSON; an array's elements are recorded (another value
//!   counts as one element), answered `200 {}`. Not JSON: `400`.
//! * `GET /events`: every recorded element, as one JSON array, in arrival order, each element's
//!   text exactly as it was POSTed.
//! * `DELETE /events`: forgets them (the counters are kept).
//! * `GET /stats`: `{"posts": n, "events": n, "retained": n}`, where `events` counts every
//!   element ever recorded and `retained` those `GET /events` still returns.
//! * `GET /healthz`: `200 ok`.
//!
//! Environment: `MOCK_ADDR` (default `0.0.0.0:8080`), `MOCK_MAX_EVENTS` (default 100000: the
//! oldest elements are forgotten beyond it, so a stack left running does not grow without end).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::value::RawValue;

const USAGE: &str = "\
raw-json-mock: records the JSON arrays POSTed to it and serves them back

    POST <any path>    record the array's elements (200; 400 when the body is not JSON)
    GET /events        every recorded element, as one JSON array
    DELETE /events     forget the recorded elements
    GET /stats         {\"posts\": n, \"events\": n, \"retained\": n}
    GET /healthz       200

ENVIRONMENT:
    MOCK_ADDR          listen address (default 0.0.0.0:8080)
    MOCK_MAX_EVENTS    elements kept for GET /events; older ones are forgotten (default 100000)";

const DEFAULT_ADDR: &str = "0.0.0.0:8080";
const DEFAULT_MAX_EVENTS: usize = 100_000;
/// Largest accepted body: far above what the bridge POSTs (its queue is 8 MiB by default).
const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

#[derive(Debug, Default)]
struct Recorded {
    posts: u64,
    events: u64,
    /// Each element's JSON text, as POSTed.
    kept: VecDeque<String>,
}

#[derive(Debug)]
struct Mock {
    max_events: usize,
    recorded: Mutex<Recorded>,
}

impl Mock {
    fn lock(&self) -> MutexGuard<'_, Recorded> {
        self.recorded.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records the elements of `body`; `None` when it is not JSON.
    fn record(&self, body: &[u8]) -> Option<usize> {
        let elements: Vec<String> = match serde_json::from_slice::<Vec<Box<RawValue>>>(body) {
            Ok(items) => items.into_iter().map(|i| i.get().to_string()).collect(),
            Err(_) => {
                let value: Box<RawValue> = serde_json::from_slice(body).ok()?;
                vec![value.get().to_string()]
            }
        };
        let n = elements.len();
        let mut recorded = self.lock();
        recorded.posts += 1;
        recorded.events += n as u64;
        recorded.kept.extend(elements);
        let excess = recorded.kept.len().saturating_sub(self.max_events);
        recorded.kept.drain(..excess);
        Some(n)
    }

    fn events_json(&self) -> String {
        let recorded = self.lock();
        let mut out =
            String::with_capacity(2 + recorded.kept.iter().map(|e| e.len() + 1).sum::<usize>());
        out.push('[');
        for (i, e) in recorded.kept.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(e);
        }
        out.push(']');
        out
    }

    fn stats_json(&self) -> String {
        let recorded = self.lock();
        serde_json::json!({
            "posts": recorded.posts,
            "events": recorded.events,
            "retained": recorded.kept.len(),
        })
        .to_string()
    }
}

fn json(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn handle(State(mock): State<Arc<Mock>>, method: Method, uri: Uri, body: Bytes) -> Response {
    match (method, uri.path()) {
        (Method::POST, _) => match mock.record(&body) {
            Some(_) => json(StatusCode::OK, "{}".into()),
            None => json(
                StatusCode::BAD_REQUEST,
                r#"{"error":"the body is not JSON"}"#.into(),
            ),
        },
        (Method::GET, "/events") => json(StatusCode::OK, mock.events_json()),
        (Method::DELETE, "/events") => {
            mock.lock().kept.clear();
            json(StatusCode::OK, "{}".into())
        }
        (Method::GET, "/stats") => json(StatusCode::OK, mock.stats_json()),
        (Method::GET, "/healthz") => (StatusCode::OK, "ok\n").into_response(),
        (Method::GET, _) => (StatusCode::NOT_FOUND, "not found\n").into_response(),
        _ => (StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n").into_response(),
    }
}

fn settings() -> Result<(SocketAddr, usize), String> {
    let addr = std::env::var("MOCK_ADDR").unwrap_or_else(|_| DEFAULT_ADDR.to_string());
    let addr: SocketAddr = addr
        .parse()
        .map_err(|_| format!("MOCK_ADDR={addr:?} is not an address like {DEFAULT_ADDR}"))?;
    let max_events = match std::env::var("MOCK_MAX_EVENTS") {
        Ok(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("MOCK_MAX_EVENTS={v:?} is not a positive number"))?,
        Err(_) => DEFAULT_MAX_EVENTS,
    };
    Ok((addr, max_events))
}

async fn serve(addr: SocketAddr, max_events: usize) -> Result<(), String> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let local = listener
        .local_addr()
        .map_err(|e| format!("cannot read the listening address: {e}"))?;
    let mock = Arc::new(Mock {
        max_events,
        recorded: Mutex::new(Recorded::default()),
    });
    let app = Router::new()
        .fallback(handle)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(mock);
    println!("raw-json-mock: listening on http://{local}/ (GET /events, /stats, /healthz)");
    axum::serve(listener, app)
        .await
        .map_err(|e| format!("server stopped: {e}"))
}

fn main() -> ExitCode {
    if std::env::args().skip(1).any(|a| a == "-h" || a == "--help") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    if let Some(other) = std::env::args().nth(1) {
        eprintln!("raw-json-mock: unknown argument {other:?}\n{USAGE}");
        return ExitCode::from(2);
    }
    let (addr, max_events) = match settings() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("raw-json-mock: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = match lambda_sim::tool::runtime("raw-json-mock") {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    match rt.block_on(serve(addr, max_events)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("raw-json-mock: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mock(max_events: usize) -> Mock {
        Mock {
            max_events,
            recorded: Mutex::new(Recorded::default()),
        }
    }

    #[test]
    fn records_elements_verbatim_and_counts() {
        let m = mock(10);
        assert_eq!(m.record(br#"[{"a": 1}, {"b":[2, 3]}]"#), Some(2));
        assert_eq!(m.record(br#"{"single":true}"#), Some(1));
        assert_eq!(m.record(b"not json"), None);
        assert_eq!(
            m.events_json(),
            r#"[{"a": 1},{"b":[2, 3]},{"single":true}]"#
        );
        let stats: serde_json::Value = serde_json::from_str(&m.stats_json()).unwrap();
        assert_eq!(
            stats,
            serde_json::json!({"posts": 2, "events": 3, "retained": 3})
        );
    }

    #[test]
    fn keeps_only_the_newest_elements() {
        let m = mock(2);
        m.record(b"[1,2,3]");
        m.record(b"[4]");
        assert_eq!(m.events_json(), "[3,4]");
        let stats: serde_json::Value = serde_json::from_str(&m.stats_json()).unwrap();
        assert_eq!(stats["events"], 4);
        assert_eq!(stats["retained"], 2);
    }
}
