//! The HTTP client handed to the opentelemetry-otlp exporters.
//!
//! The exporters encode (protobuf or JSON, gzip) and build the request; this client sends it
//! through the bridge's shared POST with retries, bounded by the current flush's deadline
//! rather than a fixed exporter timeout, and remembers whether a failure was a definite
//! rejection (drop the batch) or a give-up (keep it for the next flush).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::config::SignalConfig;

use async_trait::async_trait;
use bytes::Bytes;
use opentelemetry_http::{HttpClient, HttpError, Request, Response};
use tokio::time::Instant;

use crate::http::{post_with_retry, Endpoint, LazyClient, PostError};
use crate::self_metrics::{SinkLabel, METRICS};

/// How the last export attempt ended, as far as the transport knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Delivered,
    Rejected(u16),
    GaveUp,
}

#[derive(Debug)]
pub struct DeadlineClient {
    http: Arc<LazyClient>,
    /// The signal's endpoint, parsed once (the exporter's request carries the same URI).
    endpoint: Endpoint,
    attempt_timeout: Duration,
    /// The self-metrics `sink` label.
    sink: SinkLabel,
    deadline: Mutex<Instant>,
    outcome: Mutex<Option<Outcome>>,
}

impl DeadlineClient {
    pub fn new(
        http: Arc<LazyClient>,
        signal: &SignalConfig,
        sink: SinkLabel,
    ) -> Arc<DeadlineClient> {
        Arc::new(DeadlineClient {
            http,
            endpoint: Endpoint::new(signal.endpoint.clone()),
            attempt_timeout: signal.timeout,
            sink,
            deadline: Mutex::new(Instant::now()),
            outcome: Mutex::new(None),
        })
    }

    pub fn set_deadline(&self, deadline: Instant) {
        *self.deadline.lock().unwrap_or_else(|e| e.into_inner()) = deadline;
        *self.outcome.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    pub fn take_outcome(&self) -> Option<Outcome> {
        self.outcome
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    fn record(&self, outcome: Outcome) {
        *self.outcome.lock().unwrap_or_else(|e| e.into_inner()) = Some(outcome);
    }
}

/// The exporter owns its client; this handle shares ours with it.
#[derive(Debug, Clone)]
pub struct SharedClient(pub Arc<DeadlineClient>);

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct TransportError(String);

#[async_trait]
impl HttpClient for SharedClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let inner = &self.0;
        let deadline = *inner.deadline.lock().unwrap_or_else(|e| e.into_inner());
        let client = inner.http.get()?;
        let (parts, body) = request.into_parts();
        let size = body.len() as u64;
        match post_with_retry(
            client,
            &inner.endpoint,
            &parts.headers,
            body,
            deadline,
            inner.attempt_timeout,
        )
        .await
        {
            Ok(delivered) => {
                inner.record(Outcome::Delivered);
                METRICS.request_delivered(inner.sink, size);
                METRICS.retried(inner.sink, u64::from(delivered.attempts - 1));
                Ok(Response::builder().status(200).body(delivered.body)?)
            }
            Err(PostError::Rejected(status)) => {
                inner.record(Outcome::Rejected(status.as_u16()));
                Ok(Response::builder()
                    .status(status.as_u16())
                    .body(Bytes::new())?)
            }
            Err(e @ PostError::GaveUp { attempts, .. }) => {
                METRICS.retried(inner.sink, u64::from(attempts.saturating_sub(1)));
                inner.record(Outcome::GaveUp);
                Err(Box::new(TransportError(e.to_string())))
            }
        }
    }
}
