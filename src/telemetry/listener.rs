//! The HTTP endpoint the Telemetry API POSTs batches to.
//!
//! The request path does the minimum: split the array (zero-copy), push into the pipeline,
//! record runtimeDone/report progress, answer. Delivery happens elsewhere, so the listener
//! answers in microseconds even while sinks are stuck.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::Router;
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::Buffering;
use crate::pipeline::Pipeline;
use crate::self_metrics::METRICS;
use crate::telemetry::batch::parse_batch;
use crate::telemetry::progress::{self, Progress};

/// Lambda may send up to 2 × maxBytes in one POST, plus the array's own punctuation and
/// metadata; anything larger is not from Lambda.
pub fn body_limit(buffering: &Buffering) -> usize {
    2 * buffering.max_bytes as usize + 64 * 1024
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

struct Shared {
    pipeline: Arc<Pipeline>,
    progress: watch::Sender<Progress>,
}

/// The running listener.
pub struct Listener {
    pub local_addr: SocketAddr,
    stop: watch::Sender<bool>,
    server: tokio::task::JoinHandle<()>,
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

/// Binds and starts serving on the current runtime; returns the address really bound.
pub async fn start(
    host: &str,
    port: u16,
    buffering: &Buffering,
    pipeline: Arc<Pipeline>,
    progress: watch::Sender<Progress>,
) -> Result<Listener, ListenerError> {
    let socket = TcpListener::bind((host, port))
        .await
        .map_err(|source| ListenerError::Bind {
            host: host.to_string(),
            port,
            source,
        })?;
    let local_addr = socket.local_addr().map_err(|source| ListenerError::Bind {
        host: host.to_string(),
        port,
        source,
    })?;
    let shared = Arc::new(Shared { pipeline, progress });
    let app = Router::new()
        .fallback(receive)
        .layer(DefaultBodyLimit::max(body_limit(buffering)))
        .with_state(shared);
    let (stop, mut stopped) = watch::channel(false);
    let server = tokio::spawn(async move {
        let serve = axum::serve(socket, app).with_graceful_shutdown(async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        });
        if let Err(e) = serve.await {
            tracing::error!(error = %e, "telemetry listener stopped");
        }
    });
    Ok(Listener {
        local_addr,
        stop,
        server,
    })
}

async fn receive(
    State(shared): State<Arc<Shared>>,
    method: axum::http::Method,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> (StatusCode, &'static str) {
    if method != axum::http::Method::POST {
        METRICS
            .listener_rejected
            .with_label_values(&["method"])
            .inc();
        return (
            StatusCode::METHOD_NOT_ALLOWED,
            "POST a JSON array of events\n",
        );
    }
    let body = match body {
        Ok(body) => body,
        Err(rejection) => {
            let reason = if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                "too_large"
            } else {
                "body"
            };
            METRICS.listener_rejected.with_label_values(&[reason]).inc();
            tracing::warn!(status = rejection.status().as_u16(), reason = %rejection.body_text(), "telemetry listener: body rejected");
            let status = rejection.status();
            return (status, "body rejected\n");
        }
    };
    let batch = match parse_batch(&body) {
        Ok(batch) => batch,
        Err(e) => {
            METRICS
                .listener_rejected
                .with_label_values(&["not_an_array"])
                .inc();
            tracing::warn!(bytes = body.len(), error = %e, "telemetry listener: POST rejected");
            return (StatusCode::BAD_REQUEST, "expected a JSON array of events\n");
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
    progress::record(&shared.progress, batch.runtime_done, batch.reports);
    (StatusCode::OK, "")
}
