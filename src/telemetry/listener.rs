//! The HTTP endpoint the Telemetry API POSTs batches to.
//!
//! The request path does the minimum: split the array (zero-copy), push into the pipeline,
//! record runtimeDone/report progress, answer. Delivery happens elsewhere, so the listener
//! answers in microseconds even while sinks are stuck.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
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

#[derive(Debug, Default)]
pub struct ListenerStats {
    pub posts: AtomicU64,
    pub events: AtomicU64,
    pub malformed_events: AtomicU64,
    pub rejected_posts: AtomicU64,
}

struct Shared {
    pipeline: Arc<Pipeline>,
    progress: watch::Sender<Progress>,
    stats: Arc<ListenerStats>,
}

pub struct Listener {
    pub local_addr: SocketAddr,
    pub stats: Arc<ListenerStats>,
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
    let stats = Arc::new(ListenerStats::default());
    let shared = Arc::new(Shared {
        pipeline,
        progress,
        stats: stats.clone(),
    });
    let app = Router::new()
        .fallback(receive)
        .layer(DefaultBodyLimit::max(body_limit(buffering)))
        .with_state(shared);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(socket, app).await {
            tracing::error!(error = %e, "telemetry listener stopped");
        }
    });
    Ok(Listener { local_addr, stats })
}

async fn receive(
    State(shared): State<Arc<Shared>>,
    method: axum::http::Method,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> (StatusCode, &'static str) {
    if method != axum::http::Method::POST {
        shared.stats.rejected_posts.fetch_add(1, Ordering::Relaxed);
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
            shared.stats.rejected_posts.fetch_add(1, Ordering::Relaxed);
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
            shared.stats.rejected_posts.fetch_add(1, Ordering::Relaxed);
            METRICS
                .listener_rejected
                .with_label_values(&["not_an_array"])
                .inc();
            tracing::warn!(bytes = body.len(), error = %e, "telemetry listener: POST rejected");
            return (StatusCode::BAD_REQUEST, "expected a JSON array of events\n");
        }
    };
    let count = batch.events.len();
    shared.stats.posts.fetch_add(1, Ordering::Relaxed);
    METRICS.listener_posts.inc();
    for event in &batch.events {
        METRICS.event_received(event.kind());
    }
    shared
        .stats
        .events
        .fetch_add(count as u64, Ordering::Relaxed);
    if batch.malformed > 0 {
        shared
            .stats
            .malformed_events
            .fetch_add(batch.malformed as u64, Ordering::Relaxed);
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
