//! The HTTP endpoint the Telemetry API POSTs batches to.
//!
//! The request path does the minimum: split the array (zero-copy), push into the pipeline,
//! record runtimeDone/report progress, answer. Delivery happens elsewhere, so the listener
//! answers in microseconds even while sinks are stuck.
//!
//! It is served by hyper's HTTP/1.1 connection directly (not `axum::serve`) because a listener
//! inside a 128 MB sandbox with 1,024 file descriptors needs what that does not expose: a
//! deadline for a new connection's first request, a deadline on bodies, and a bound on open
//! connections, where a new connection closes the oldest unused one rather than waiting behind
//! it: Lambda's next push must never queue behind connections that hold nothing.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::config::Buffering;
use crate::pipeline::Pipeline;
use crate::self_metrics::{Refused, METRICS};
use crate::telemetry::batch::{parse_batch, BatchError};
use crate::telemetry::progress::{self, Progress};

/// A new connection must have carried a request (its head read) within this, or it is closed.
/// Lambda sends a whole request at once, from outside the sandbox's CPU limit.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// A request's body must arrive within this of its head.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(5);
/// Open connections at most; the oldest is closed to make room for a new one. Lambda pushes
/// over one kept-alive connection; Lambda's file-descriptor limit is 1,024.
pub const MAX_CONNECTIONS: usize = 128;

/// Lambda may send up to 2 × maxBytes in one POST, plus the array's own punctuation and
/// metadata; anything larger is not from Lambda.
pub fn body_limit(buffering: &Buffering) -> usize {
    2 * buffering.max_bytes as usize + 64 * 1024
}

/// Elements accepted in one POST: Lambda sends at most `maxItems`; twice that leaves room for
/// what the platform may add, as the byte limit does.
pub fn element_limit(buffering: &Buffering) -> usize {
    2 * buffering.max_items as usize
}

#[derive(Debug, Error)]
pub enum ListenerError {
    #[error("cannot bind the telemetry listener to {host}:{port}: {source}")]
    Bind {
        host: String,
        port: u16,
        #[source]
        source: std::io::Error,
    },
}

/// A bound socket, not yet served.
pub struct BoundSocket {
    socket: TcpListener,
    /// The host it was bound with (the configured one, or a fallback).
    pub host: String,
    pub local_addr: SocketAddr,
}

/// Binds `host:port` (port 0: ephemeral).
pub async fn bind(host: &str, port: u16) -> Result<BoundSocket, ListenerError> {
    let error = |source| ListenerError::Bind {
        host: host.to_string(),
        port,
        source,
    };
    let socket = TcpListener::bind((host, port)).await.map_err(error)?;
    let local_addr = socket.local_addr().map_err(error)?;
    Ok(BoundSocket {
        socket,
        host: host.to_string(),
        local_addr,
    })
}

struct Shared {
    pipeline: Arc<Pipeline>,
    progress: watch::Sender<Progress>,
    body_limit: usize,
    max_items: usize,
    /// Whether the lifecycle tracks started invocations (Managed Instances).
    track_starts: bool,
}

/// The running listener.
pub struct Listener {
    pub local_addr: SocketAddr,
    stop: watch::Sender<bool>,
    server: tokio::task::JoinHandle<()>,
}

impl ListenerError {
    /// The I/O error's kind (a port in use is told from a host that cannot be bound).
    pub fn kind(&self) -> std::io::ErrorKind {
        match self {
            ListenerError::Bind { source, .. } => source.kind(),
        }
    }
}

impl Listener {
    /// Stops accepting, lets requests in flight finish (their events reach the pipeline and
    /// Lambda gets its answer), and returns when the server is done or at `deadline`.
    pub async fn stop(self, deadline: tokio::time::Instant) {
        let _ = self.stop.send(true);
        if tokio::time::timeout_at(deadline, self.server)
            .await
            .is_err()
        {
            tracing::debug!("telemetry listener: requests still in flight at the deadline");
        }
    }
}

/// Starts serving `bound` on the current runtime.
pub fn start(
    bound: BoundSocket,
    buffering: &Buffering,
    pipeline: Arc<Pipeline>,
    progress: watch::Sender<Progress>,
) -> Listener {
    let track_starts = progress.borrow().tracks_open();
    let shared = Arc::new(Shared {
        track_starts,
        pipeline,
        progress,
        body_limit: body_limit(buffering),
        max_items: element_limit(buffering),
    });
    let (stop, stopped) = watch::channel(false);
    let server = tokio::spawn(accept_loop(bound.socket, shared, stopped));
    Listener {
        local_addr: bound.local_addr,
        stop,
        server,
    }
}

/// Connections closed for carrying no request in time, over the process's life.
static HEAD_TIMEOUTS: AtomicU64 = AtomicU64::new(0);

/// What the accept loop knows of a connection it handed over.
struct OpenConnection {
    /// Tells the connection to finish its request in flight, if any, and close.
    close: watch::Sender<bool>,
    /// Requests it has carried.
    requests: Arc<AtomicU64>,
}

/// Accepts until stopped, then lets every connection finish its request in flight.
async fn accept_loop(socket: TcpListener, shared: Arc<Shared>, mut stopped: watch::Receiver<bool>) {
    let mut connections = JoinSet::new();
    // Oldest first.
    let mut open: VecDeque<OpenConnection> = VecDeque::new();
    let mut accept_errors = 0u64;
    let mut evicted = 0u64;
    loop {
        let accepted = tokio::select! {
            biased;
            _ = stopped.wait_for(|stop| *stop) => break,
            accepted = socket.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, most likely: say so (once in a while), back off a little.
                accept_errors += 1;
                if accept_errors.is_power_of_two() {
                    tracing::error!(error = %e, failures = accept_errors, "telemetry listener: cannot accept a connection");
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        while connections.try_join_next().is_some() {}
        open.retain(|c| !c.close.is_closed());
        if open.len() >= MAX_CONNECTIONS {
            // The oldest connection that never carried a request (Lambda's own connection has,
            // and must not be the one closed to make room for a flood); else the oldest.
            let victim = open
                .iter()
                .position(|c| c.requests.load(Ordering::Relaxed) == 0)
                .unwrap_or(0);
            if let Some(victim) = open.remove(victim) {
                let _ = victim.close.send(true);
                evicted += 1;
                METRICS.refused(Refused::Connections);
                // A flood would otherwise log a line per connection.
                if evicted.is_power_of_two() {
                    tracing::warn!(
                        limit = MAX_CONNECTIONS,
                        closed_so_far = evicted,
                        "telemetry listener: too many open connections; closed the oldest idle one"
                    );
                }
            }
        }
        let (close, closed) = watch::channel(false);
        let requests = Arc::new(AtomicU64::new(0));
        open.push_back(OpenConnection {
            close,
            requests: requests.clone(),
        });
        connections.spawn(serve_connection(
            stream,
            shared.clone(),
            requests,
            stopped.clone(),
            closed,
        ));
    }
    drop(socket);
    connections.join_all().await;
}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    shared: Arc<Shared>,
    requests: Arc<AtomicU64>,
    mut stopped: watch::Receiver<bool>,
    mut evicted: watch::Receiver<bool>,
) {
    let counter = requests.clone();
    let service = hyper::service::service_fn(move |request| {
        counter.fetch_add(1, Ordering::Relaxed);
        let shared = shared.clone();
        async move { Ok::<_, Infallible>(receive(&shared, request).await) }
    });
    // No head deadline from hyper: it would also close Lambda's kept-alive connection after an
    // idle gap or a freeze, racing Lambda's next push (a POST Go's client does not retry). Only a
    // connection that has not carried a request in HEAD_TIMEOUT is closed; used idle ones are
    // kept, the connection bound keeping their number in check.
    let connection = hyper::server::conn::http1::Builder::new()
        .header_read_timeout(None)
        .serve_connection(TokioIo::new(stream), service);
    let mut connection = std::pin::pin!(connection);
    let first_request_by = tokio::time::sleep(HEAD_TIMEOUT);
    tokio::pin!(first_request_by);
    let mut used = false;
    loop {
        tokio::select! {
            _ = connection.as_mut() => return,
            _ = stopped.wait_for(|stop| *stop) => break,
            _ = evicted.wait_for(|close| *close) => break,
            _ = &mut first_request_by, if !used => {
                if requests.load(Ordering::Relaxed) == 0 {
                    METRICS.refused(Refused::HeadTimeout);
                    // A flood would otherwise log a line per connection.
                    let closed = HEAD_TIMEOUTS.fetch_add(1, Ordering::Relaxed) + 1;
                    if closed.is_power_of_two() {
                        tracing::warn!(
                            timeout_ms = HEAD_TIMEOUT.as_millis() as u64,
                            closed_so_far = closed,
                            "telemetry listener: no request on a connection in time; closed"
                        );
                    }
                    return;
                }
                used = true;
            }
        }
    }
    // Finish the request in flight, if any, then close; a peer that is slow about it (hyper
    // waits for a head it has begun to read) is dropped after a body's allowance.
    connection.as_mut().graceful_shutdown();
    let _ = tokio::time::timeout(BODY_TIMEOUT, connection).await;
}

fn answer(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    response
}

fn reject(reason: Refused) {
    METRICS.refused(reason);
}

async fn receive(shared: &Shared, request: Request<Incoming>) -> Response<Full<Bytes>> {
    if request.method() != Method::POST {
        reject(Refused::Method);
        return answer(
            StatusCode::METHOD_NOT_ALLOWED,
            "POST a JSON array of events\n",
        );
    }
    let limited = Limited::new(request.into_body(), shared.body_limit);
    let body = match tokio::time::timeout(BODY_TIMEOUT, limited.collect()).await {
        Ok(Ok(body)) => body.to_bytes(),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            reject(Refused::TooLarge);
            tracing::warn!(
                limit = shared.body_limit,
                "telemetry listener: body over the limit; rejected"
            );
            return answer(StatusCode::PAYLOAD_TOO_LARGE, "body too large\n");
        }
        Ok(Err(e)) => {
            reject(Refused::Body);
            tracing::warn!(error = %e, "telemetry listener: reading the body failed");
            return answer(StatusCode::BAD_REQUEST, "body rejected\n");
        }
        Err(_) => {
            reject(Refused::BodyTimeout);
            tracing::warn!(
                timeout_ms = BODY_TIMEOUT.as_millis() as u64,
                "telemetry listener: body not received in time; rejected"
            );
            return answer(StatusCode::REQUEST_TIMEOUT, "body not received in time\n");
        }
    };
    let batch = match parse_batch(&body, shared.max_items, shared.track_starts) {
        Ok(batch) => batch,
        Err(e @ BatchError::TooManyElements { .. }) => {
            reject(Refused::TooManyElements);
            tracing::warn!(bytes = body.len(), error = %e, "telemetry listener: POST rejected");
            return answer(
                StatusCode::PAYLOAD_TOO_LARGE,
                "more elements than the subscription's maxItems\n",
            );
        }
        Err(e) => {
            reject(Refused::NotAnArray);
            tracing::warn!(bytes = body.len(), error = %e, "telemetry listener: POST rejected");
            return answer(StatusCode::BAD_REQUEST, "expected a JSON array of events\n");
        }
    };
    let count = batch.events.len();
    METRICS.listener_posts.inc();
    for event in &batch.events {
        METRICS.event_received(event.kind());
    }
    if batch.malformed > 0 {
        tracing::warn!(
            malformed = batch.malformed,
            events = count,
            "telemetry listener: some elements are not well-formed events; passed on raw"
        );
    }
    tracing::debug!(
        events = count,
        bytes = body.len(),
        "telemetry batch received"
    );
    shared.pipeline.push(batch.events);
    progress::record(
        &shared.progress,
        batch.starts,
        batch.runtime_done,
        batch.reports,
    );
    answer(StatusCode::OK, "")
}
