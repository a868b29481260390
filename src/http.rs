//! HTTP delivery shared by every output (the sinks and the self-metrics' Pushgateway, so it is
//! no sink's): a lazily built client (TLS roots are loaded at the first flush, not at start-up)
//! and one POST with retries inside the flush deadline.
//!
//! Plain-http endpoints (the common case on loopback or in a VPC: a collector sidecar) go through
//! hyper-util's client directly; https ones through reqwest with rustls. reqwest's extra layers
//! (URL conversions, redirect and timeout wrappers) cost ~35k instructions per request, measured
//! with callgrind, and the bridge makes several requests per invocation.

use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use reqwest::StatusCode;
use thiserror::Error;
use tokio::time::Instant;

/// The most of an answer's body that is read. Only OTLP reads it (a partial-success message,
/// a few hundred bytes); an endpoint answering with more must not cost the function memory
/// (a 200 MiB answer would be an out-of-memory kill on a 128 MB function) nor time.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;

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

/// The client behind [`LazyClient`]: plain HTTP/1.1 only, or reqwest with TLS.
#[derive(Debug)]
pub enum Transport {
    Plain(hyper_util::client::legacy::Client<HttpConnector, Full<Bytes>>),
    Tls(reqwest::Client),
}

/// One answer: status, the Retry-After it asked for, and its body.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub retry_after: Option<Duration>,
    pub body: Bytes,
}

/// Where requests go: the URL (reqwest's client and log lines use it) and the same target as an
/// `http::Uri`, parsed once rather than per request (~3 k instructions each time, measured).
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub url: reqwest::Url,
    uri: Option<hyper::Uri>,
}

impl Endpoint {
    pub fn new(url: reqwest::Url) -> Endpoint {
        let uri = url.as_str().parse().ok();
        Endpoint { url, uri }
    }
}

impl Transport {
    /// One request, bounded by `timeout` (connect, send and the whole answer) of time the process
    /// was not frozen; the error is a description without the URL (which could carry credentials).
    pub async fn send(
        &self,
        method: reqwest::Method,
        endpoint: &Endpoint,
        headers: &HeaderMap,
        body: Bytes,
        timeout: Duration,
    ) -> Result<Answer, String> {
        match self {
            Transport::Plain(client) => {
                let request = plain_request(method, endpoint, headers, body)?;
                let exchange = async {
                    let response = client.request(request).await.map_err(|e| {
                        if e.is_connect() {
                            format!("connection failed: {}", innermost(&e))
                        } else {
                            format!("request failed: {}", innermost(&e))
                        }
                    })?;
                    let (parts, body) = response.into_parts();
                    let body = read_bounded(body).await;
                    Ok(Answer {
                        retry_after: retry_after(&parts.headers),
                        status: parts.status,
                        body,
                    })
                };
                crate::awake::timeout(timeout, exchange)
                    .await
                    .map_err(|_| "timed out".to_string())?
            }
            Transport::Tls(client) => {
                let exchange = async {
                    let response = client
                        .request(method, endpoint.url.clone())
                        .headers(headers.clone())
                        .body(body)
                        .send()
                        .await
                        .map_err(|e| describe(&e))?;
                    let status = response.status();
                    let retry_after = retry_after(response.headers());
                    let body = read_bounded(reqwest::Body::from(response)).await;
                    Ok(Answer {
                        status,
                        retry_after,
                        body,
                    })
                };
                // Not reqwest's own timeout: this one does not count a freeze (`crate::awake`).
                crate::awake::timeout(timeout, exchange)
                    .await
                    .map_err(|_| "timed out".to_string())?
            }
        }
    }
}

/// A request for the plain-http client; the target parsed once per endpoint (an invalid one is
/// reported by the builder).
fn plain_request(
    method: reqwest::Method,
    endpoint: &Endpoint,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<hyper::Request<Full<Bytes>>, String> {
    let builder = hyper::Request::builder().method(method);
    let builder = match &endpoint.uri {
        Some(uri) => builder.uri(uri.clone()),
        None => builder.uri(endpoint.url.as_str()),
    };
    let mut request = builder
        .body(Full::new(body))
        .map_err(|e| format!("request failed: {e}"))?;
    *request.headers_mut() = headers.clone();
    Ok(request)
}

/// What [`Transport::get_lines`] read.
#[derive(Debug)]
pub struct Listing {
    pub status: StatusCode,
    /// The body was longer than the bound: only its first lines were read.
    pub truncated: bool,
}

impl Transport {
    /// GETs `endpoint` and hands each line of the answer's body to `on_line` as it arrives, at
    /// most `max_bytes` of it and within `timeout` (of time the process was not frozen), so a
    /// long listing costs neither memory nor more than its bound.
    pub async fn get_lines(
        &self,
        endpoint: &Endpoint,
        headers: &HeaderMap,
        timeout: Duration,
        max_bytes: usize,
        mut on_line: impl FnMut(&str),
    ) -> Result<Listing, String> {
        let mut pending: Vec<u8> = Vec::new();
        let mut read = 0usize;
        // Feeds a chunk; false once the bound is reached.
        let mut feed = |chunk: &[u8]| -> bool {
            read += chunk.len();
            pending.extend_from_slice(chunk);
            while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                on_line(&String::from_utf8_lossy(&pending[..end]));
                pending.drain(..=end);
            }
            // A line longer than any a listing has is not kept whole (the memory stays bounded
            // by this, not by `max_bytes`): what is left of it reads as lines of no interest.
            if pending.len() > MAX_ANSWER_BYTES {
                pending.clear();
            }
            read <= max_bytes
        };
        let exchange = async {
            match self {
                Transport::Plain(client) => {
                    let request =
                        plain_request(reqwest::Method::GET, endpoint, headers, Bytes::new())?;
                    let response = client
                        .request(request)
                        .await
                        .map_err(|e| format!("request failed: {}", innermost(&e)))?;
                    let status = response.status();
                    let mut body = std::pin::pin!(response.into_body());
                    let mut truncated = false;
                    while let Some(frame) = body.frame().await {
                        let frame = frame.map_err(|e| format!("reading failed: {e}"))?;
                        if frame.into_data().is_ok_and(|data| !feed(&data)) {
                            truncated = true;
                            break;
                        }
                    }
                    Ok(Listing { status, truncated })
                }
                Transport::Tls(client) => {
                    let mut response = client
                        .get(endpoint.url.clone())
                        .headers(headers.clone())
                        .send()
                        .await
                        .map_err(|e| describe(&e))?;
                    let status = response.status();
                    let mut truncated = false;
                    while let Some(chunk) = response.chunk().await.map_err(|e| describe(&e))? {
                        if !feed(&chunk) {
                            truncated = true;
                            break;
                        }
                    }
                    Ok(Listing { status, truncated })
                }
            }
        };
        crate::awake::timeout(timeout, exchange)
            .await
            .map_err(|_| "timed out".to_string())?
    }
}

/// At most [`MAX_ANSWER_BYTES`] of an answer's body; the rest is not read (the connection is then
/// not reused). The body matters only to OTLP (partial success): a broken one is no failure.
async fn read_bounded<B>(body: B) -> Bytes
where
    B: hyper::body::Body<Data = Bytes>,
{
    let mut body = std::pin::pin!(body);
    let mut out = bytes::BytesMut::new();
    while let Some(Ok(frame)) = body.frame().await {
        if let Ok(data) = frame.into_data() {
            let room = MAX_ANSWER_BYTES - out.len();
            if data.len() >= room {
                out.extend_from_slice(&data[..room]);
                break;
            }
            out.extend_from_slice(&data);
        }
    }
    out.freeze()
}

/// `Retry-After` as seconds or as an HTTP date (RFC 9110 §10.2.3); a date in the past is no
/// wait, and a value that is neither is ignored (the backoff applies).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    )
}

/// The most specific cause of an error (hyper's outer errors say little).
fn innermost(error: &(dyn std::error::Error + 'static)) -> String {
    let mut current = error;
    while let Some(source) = current.source() {
        current = source;
    }
    current.to_string()
}

/// Builds the shared client once, on first use.
#[derive(Debug)]
pub struct LazyClient {
    client: OnceLock<Transport>,
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

    pub fn get(&self) -> Result<&Transport, HttpError> {
        if let Some(client) = self.client.get() {
            return Ok(client);
        }
        // Lambda freezes the process; a pooled connection may be dead after a thaw. Keep the
        // pool short-lived so most flushes after a long freeze start on a fresh connection.
        let idle = Duration::from_secs(30);
        if !self.needs_tls {
            let mut connector = HttpConnector::new();
            connector.set_nodelay(true);
            let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
                .pool_timer(TokioTimer::new())
                .pool_idle_timeout(idle)
                .build(connector);
            return Ok(self.client.get_or_init(|| Transport::Plain(client)));
        }
        // ring is the provider compiled in; installing fails only if one is already set.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .no_proxy()
            // Telemetry endpoints do not redirect; following would re-send bodies unbounded.
            .redirect(reqwest::redirect::Policy::none())
            .pool_idle_timeout(idle)
            .build()
            .map_err(|e| HttpError::Client(e.to_string()))?;
        Ok(self.client.get_or_init(|| Transport::Tls(client)))
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

/// The wait after failed attempt number `attempt` (1-based): exponential backoff with full
/// jitter (`jitter` in 0..1 scales the cap, 25 ms doubling up to 1 s), and never less than
/// what the endpoint asked for with `Retry-After`.
fn backoff(attempt: u32, retry_after: Option<Duration>, jitter: f64) -> Duration {
    let cap = BASE_BACKOFF
        .saturating_mul(1 << attempt.saturating_sub(1).min(10))
        .min(MAX_BACKOFF);
    let backoff = cap.mul_f64(jitter.clamp(0.0, 1.0));
    retry_after.map_or(backoff, |ra| ra.max(backoff))
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
    client: &Transport,
    endpoint: &Endpoint,
    headers: &HeaderMap,
    body: Bytes,
    deadline: Instant,
    attempt_timeout: Duration,
) -> Result<Delivered, PostError> {
    let mut attempts = 0u32;
    let mut deadline = deadline;
    // At most one freeze is forgiven per POST (a starved CPU can look like one).
    let mut extended = false;
    let mut last;
    loop {
        attempts += 1;
        let started = Instant::now();
        let remaining = deadline.saturating_duration_since(started);
        if remaining.is_zero() {
            return Err(PostError::GaveUp {
                attempts: attempts - 1,
                last: "no time left".into(),
            });
        }
        let timeout = remaining.min(attempt_timeout);
        let mut retry_after = None;
        let answer = client
            .send(
                reqwest::Method::POST,
                endpoint,
                headers,
                body.clone(),
                timeout,
            )
            .await;
        // An attempt that lasted longer than its timeout allows was frozen part of the time (a
        // peer that closed the connection meanwhile fails it only at the thaw): the retries get
        // the time that was left, counted from the thaw (`crate::awake`).
        if !extended && crate::awake::looks_frozen(started.elapsed().saturating_sub(timeout)) {
            deadline = Instant::now() + remaining;
            extended = true;
        }
        match answer {
            Ok(answer) if answer.status.is_success() => {
                return Ok(Delivered {
                    attempts,
                    body: answer.body,
                });
            }
            Ok(answer) if retryable(answer.status) => {
                retry_after = answer.retry_after;
                last = format!("HTTP {}", answer.status);
            }
            Ok(answer) => return Err(PostError::Rejected(answer.status)),
            Err(error) => last = error,
        }
        let wait = backoff(attempts, retry_after, fastrand::f64());
        if Instant::now() + wait >= deadline {
            return Err(PostError::GaveUp { attempts, last });
        }
        let slept = Instant::now();
        tokio::time::sleep(wait).await;
        // A sleep that overran by more than scheduling explains was frozen: that time was not
        // the endpoint's to use.
        let overrun = slept.elapsed().saturating_sub(wait);
        if !extended && crate::awake::looks_frozen(overrun) {
            deadline += overrun;
            extended = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// An endpoint on loopback that answers each request with the next scripted status (and
    /// `Retry-After`), the last one repeated, and records when each request arrived.
    struct Scripted {
        url: reqwest::Url,
        arrivals: Arc<Mutex<Vec<Instant>>>,
    }

    impl Scripted {
        async fn start(script: Vec<(u16, Option<&str>)>) -> Scripted {
            let script: Vec<(u16, Option<String>)> = script
                .into_iter()
                .map(|(status, after)| (status, after.map(String::from)))
                .collect();
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let url = reqwest::Url::parse(&format!(
                "http://{}/ingest",
                listener.local_addr().expect("addr")
            ))
            .expect("url");
            let arrivals = Arc::new(Mutex::new(Vec::new()));
            let seen = arrivals.clone();
            tokio::spawn(async move {
                let script = Arc::new(script);
                for _ in 0..100 {
                    let Ok((mut stream, _)) = listener.accept().await else {
                        return;
                    };
                    let (seen, script) = (seen.clone(), script.clone());
                    tokio::spawn(async move {
                        let mut buffer = Vec::new();
                        let mut chunk = [0u8; 4096];
                        for _ in 0..100 {
                            // One request: its head, then Content-Length bytes of body.
                            let head_end = loop {
                                if let Some(i) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                                    break i + 4;
                                }
                                match stream.read(&mut chunk).await {
                                    Ok(0) | Err(_) => return,
                                    Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                                }
                            };
                            let head = String::from_utf8_lossy(&buffer[..head_end]).to_lowercase();
                            let length: usize = head
                                .lines()
                                .find_map(|l| l.strip_prefix("content-length:"))
                                .and_then(|v| v.trim().parse().ok())
                                .unwrap_or(0);
                            while buffer.len() < head_end + length {
                                match stream.read(&mut chunk).await {
                                    Ok(0) | Err(_) => return,
                                    Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                                }
                            }
                            buffer.drain(..head_end + length);
                            let n = {
                                let mut seen = seen.lock().expect("lock");
                                seen.push(Instant::now());
                                seen.len()
                            };
                            let (status, retry_after) = &script[(n - 1).min(script.len() - 1)];
                            let extra = retry_after
                                .as_ref()
                                .map(|r| format!("retry-after: {r}\r\n"))
                                .unwrap_or_default();
                            let answer =
                                format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\n{extra}\r\n");
                            if stream.write_all(answer.as_bytes()).await.is_err() {
                                return;
                            }
                        }
                    });
                }
            });
            Scripted { url, arrivals }
        }

        fn arrivals(&self) -> Vec<Instant> {
            self.arrivals.lock().expect("lock").clone()
        }
    }

    async fn post(server: &Scripted, within: Duration) -> Result<Delivered, PostError> {
        let client = LazyClient::new(false);
        let transport = client.get().expect("client");
        post_with_retry(
            transport,
            &Endpoint::new(server.url.clone()),
            &HeaderMap::new(),
            Bytes::from_static(b"[]"),
            Instant::now() + within,
            Duration::from_secs(2),
        )
        .await
    }

    #[tokio::test]
    async fn timeouts_throttling_and_server_errors_are_retried_until_delivered() {
        for status in [408, 429, 500, 502, 503, 504] {
            let server = Scripted::start(vec![(status, None), (status, None), (200, None)]).await;
            let delivered = post(&server, Duration::from_secs(20))
                .await
                .unwrap_or_else(|e| panic!("{status}: {e}"));
            assert_eq!(delivered.attempts, 3, "{status}");
            assert_eq!(server.arrivals().len(), 3, "{status}");
        }
    }

    #[tokio::test]
    async fn retry_after_is_waited_for() {
        let server = Scripted::start(vec![(429, Some("1")), (503, Some("1")), (200, None)]).await;
        let delivered = post(&server, Duration::from_secs(20))
            .await
            .expect("delivered");
        assert_eq!(delivered.attempts, 3);
        let arrivals = server.arrivals();
        for pair in arrivals.windows(2) {
            // A lower bound only: a busy machine can make the gap longer, never shorter.
            assert!(
                pair[1] - pair[0] >= Duration::from_secs(1),
                "retried after {:?}",
                pair[1] - pair[0]
            );
        }
    }

    #[tokio::test]
    async fn a_retry_after_beyond_the_deadline_gives_up_without_waiting() {
        let server = Scripted::start(vec![(503, Some("30"))]).await;
        let started = Instant::now();
        match post(&server, Duration::from_secs(5)).await {
            Err(PostError::GaveUp { attempts, .. }) => assert_eq!(attempts, 1),
            other => panic!("expected a give-up, got {other:?}"),
        }
        // At once: not the 30 s asked for, nor the deadline (5 s), nor a backoff step (≥ 25 ms
        // doubling; 500 ms leaves room for a busy machine and catches a wait of one second).
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "waited {:?} for nothing",
            started.elapsed()
        );
        assert_eq!(server.arrivals().len(), 1);
    }

    #[tokio::test]
    async fn retry_after_as_an_http_date_is_waited_for() {
        // Two seconds ahead, in the IMF-fixdate form (whole seconds: the wait is 1 to 2 s).
        let at = std::time::SystemTime::now() + Duration::from_secs(2);
        let date = httpdate::fmt_http_date(at);
        let server = Scripted::start(vec![(503, Some(date.as_str())), (200, None)]).await;
        let delivered = post(&server, Duration::from_secs(20))
            .await
            .expect("delivered");
        assert_eq!(delivered.attempts, 2);
        let arrivals = server.arrivals();
        let waited = arrivals[1] - arrivals[0];
        // The backoff alone would retry within 50 ms.
        assert!(
            waited >= Duration::from_millis(900),
            "retried after {waited:?}"
        );
        // A date in the past is no wait; a value that is neither form is ignored.
        let mut headers = HeaderMap::new();
        headers.insert(
            RETRY_AFTER,
            httpdate::fmt_http_date(std::time::UNIX_EPOCH)
                .parse()
                .expect("header"),
        );
        assert_eq!(retry_after(&headers), Some(Duration::ZERO));
        headers.insert(RETRY_AFTER, "soon".parse().expect("header"));
        assert_eq!(retry_after(&headers), None);
    }

    #[tokio::test]
    async fn other_client_errors_are_rejected_at_once() {
        for status in [400, 401, 403, 404, 413] {
            let server = Scripted::start(vec![(status, None), (200, None)]).await;
            let started = Instant::now();
            match post(&server, Duration::from_secs(5)).await {
                Err(PostError::Rejected(s)) => assert_eq!(s.as_u16(), status),
                other => panic!("{status}: expected a rejection, got {other:?}"),
            }
            assert!(
                started.elapsed() < Duration::from_millis(500),
                "{status}: rejected after {:?}, not at once",
                started.elapsed()
            );
            assert_eq!(server.arrivals().len(), 1, "{status} is not retried");
        }
    }

    #[tokio::test]
    async fn an_endpoint_that_keeps_failing_is_tried_until_the_deadline() {
        let server = Scripted::start(vec![(500, None)]).await;
        let started = Instant::now();
        match post(&server, Duration::from_millis(600)).await {
            Err(PostError::GaveUp { attempts, .. }) => {
                // The last attempt may time out before its request was written.
                let arrived = server.arrivals().len();
                assert!(arrived == attempts as usize || arrived + 1 == attempts as usize);
                // 25 ms doubling with jitter: several attempts fit in 600 ms.
                assert!(attempts >= 3, "{attempts} attempts");
            }
            other => panic!("expected a give-up, got {other:?}"),
        }
        assert!(started.elapsed() <= Duration::from_millis(600) + Duration::from_secs(2));
    }

    #[test]
    fn backoff_doubles_from_25_ms_up_to_1_s_with_full_jitter_and_honours_retry_after() {
        let ms = Duration::from_millis;
        for (attempt, cap) in [
            (1, 25),
            (2, 50),
            (3, 100),
            (4, 200),
            (5, 400),
            (6, 800),
            (7, 1000),
            (30, 1000),
        ] {
            assert_eq!(backoff(attempt, None, 1.0), ms(cap), "attempt {attempt}");
            assert_eq!(backoff(attempt, None, 0.0), Duration::ZERO);
            assert_eq!(backoff(attempt, None, 0.5), ms(cap) / 2);
        }
        assert_eq!(
            backoff(1, Some(Duration::from_secs(3)), 1.0),
            Duration::from_secs(3)
        );
        assert_eq!(backoff(7, Some(ms(10)), 1.0), ms(1000));
    }
}
