//! HTTP delivery shared by the sinks: a lazily built client (TLS roots are loaded at the first
//! flush, not at start-up) and one POST with retries inside the flush deadline.

use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use reqwest::StatusCode;
use thiserror::Error;
use tokio::time::Instant;

/// First retry delay; doubled per attempt up to [`MAX_BACKOFF`], with full jitter.
const BASE_BACKOFF: Duration = Duration::from_millis(25);
const MAX_BACKOFF: Duration = Duration::from_millis(1_000);

#[derive(Debug, Error)]
pub enum HttpError {
    #[error("building the HTTP client failed: {0}")]
    Client(String),
    #[error("invalid header name or value in {0}")]
    Header(&'static str),
}

/// Why a POST did not deliver.
#[derive(Debug, Error)]
pub enum PostError {
    /// A definite no (4xx other than 408/429): retrying cannot help.
    #[error("rejected with HTTP {0}")]
    Rejected(StatusCode),
    /// Still failing when the deadline came; the data may be retried at the next flush.
    #[error("not delivered before the deadline after {attempts} attempt(s): {last}")]
    GaveUp { attempts: u32, last: String },
}

/// Builds the shared client once, on first use.
#[derive(Debug)]
pub struct LazyClient {
    client: OnceLock<reqwest::Client>,
    /// Whether any URL this client serves is https. Loading the platform's root certificates
    /// costs ~10 ms of CPU (parsing a ~200 KB PEM bundle), so plain-http clients skip it.
    needs_tls: bool,
}

impl LazyClient {
    pub const fn new(needs_tls: bool) -> Self {
        LazyClient {
            client: OnceLock::new(),
            needs_tls,
        }
    }

    /// A client for these URLs: with TLS roots only if one of them is https.
    pub fn for_urls<'a>(urls: impl IntoIterator<Item = &'a reqwest::Url>) -> Self {
        Self::new(urls.into_iter().any(|u| u.scheme() == "https"))
    }

    pub fn get(&self) -> Result<&reqwest::Client, HttpError> {
        if let Some(client) = self.client.get() {
            return Ok(client);
        }
        // ring is the provider compiled in; installing fails only if one is already set.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut builder = reqwest::Client::builder();
        if !self.needs_tls {
            // No https URL: an empty root store instead of loading the platform's roots.
            builder = builder.tls_certs_only(Vec::new());
        }
        let client = builder
            .no_proxy()
            // Telemetry endpoints do not redirect; following would re-send bodies unbounded.
            .redirect(reqwest::redirect::Policy::none())
            // Lambda freezes the process; a pooled connection may be dead after a thaw. Keep the
            // pool short-lived so most flushes after a long freeze start on a fresh connection.
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| HttpError::Client(e.to_string()))?;
        Ok(self.client.get_or_init(|| client))
    }
}

pub fn header_map(
    pairs: &[(String, String)],
    variable: &'static str,
) -> Result<HeaderMap, HttpError> {
    let mut map = HeaderMap::new();
    for (k, v) in pairs {
        let name = HeaderName::from_bytes(k.as_bytes()).map_err(|_| HttpError::Header(variable))?;
        let mut value = HeaderValue::from_str(v).map_err(|_| HttpError::Header(variable))?;
        value.set_sensitive(true);
        map.insert(name, value);
    }
    Ok(map)
}

fn retryable(status: StatusCode) -> bool {
    status.is_server_error()
        || status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
}

/// Describes a transport error without its URL (which could carry credentials).
fn describe(error: &reqwest::Error) -> String {
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "connection failed"
    } else if error.is_request() {
        "request failed"
    } else {
        "transport error"
    };
    let mut source = std::error::Error::source(error);
    let mut detail = String::new();
    while let Some(s) = source {
        detail = s.to_string();
        source = s.source();
    }
    if detail.is_empty() {
        kind.to_string()
    } else {
        format!("{kind}: {detail}")
    }
}

/// A delivered POST: how many attempts it took and the answer's body.
#[derive(Debug)]
pub struct Delivered {
    pub attempts: u32,
    pub body: Bytes,
}

/// POSTs `body` (headers include the content type), retrying connection errors, timeouts, 408,
/// 429 and 5xx with exponential backoff and jitter (honouring Retry-After) until `deadline`
/// and at most `attempt_timeout` per attempt.
pub async fn post_with_retry(
    client: &reqwest::Client,
    url: &reqwest::Url,
    headers: &HeaderMap,
    body: Bytes,
    deadline: Instant,
    attempt_timeout: Duration,
) -> Result<Delivered, PostError> {
    let mut attempts = 0u32;
    let mut last;
    loop {
        attempts += 1;
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(PostError::GaveUp {
                attempts: attempts - 1,
                last: "no time left".into(),
            });
        }
        let request = client
            .post(url.clone())
            .headers(headers.clone())
            .timeout(remaining.min(attempt_timeout))
            .body(body.clone());
        let mut retry_after = None;
        match request.send().await {
            Ok(response) if response.status().is_success() => {
                // The body matters only to OTLP (partial success); a broken one is not a failure.
                let body = response.bytes().await.unwrap_or_default();
                return Ok(Delivered { attempts, body });
            }
            Ok(response) if retryable(response.status()) => {
                retry_after = response
                    .headers()
                    .get(RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs);
                last = format!("HTTP {}", response.status());
            }
            Ok(response) => return Err(PostError::Rejected(response.status())),
            Err(error) => last = describe(&error),
        }
        let exp = BASE_BACKOFF.saturating_mul(1 << (attempts - 1).min(10));
        let backoff = exp.min(MAX_BACKOFF).mul_f64(fastrand::f64());
        let wait = retry_after.map_or(backoff, |ra| ra.max(backoff));
        if Instant::now() + wait >= deadline {
            return Err(PostError::GaveUp { attempts, last });
        }
        tokio::time::sleep(wait).await;
    }
}
