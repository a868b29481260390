//! A small client for the Lambda Extensions API (and the Telemetry API's subscribe call, which
//! lives on the same host). Plain HTTP/1.1 to the local Runtime API: hyper's client without TLS,
//! so start-up loads no certificates.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use thiserror::Error;

const EXTENSION_API: &str = "2020-01-01/extension";
/// The one call without a timeout: it returns when Lambda has an event.
const NEXT: &str = "event/next";
const TELEMETRY_API: &str = "2022-07-01/telemetry";
/// Longest wait for an answer to any call but `/event/next` (which blocks by design). The Runtime
/// API is local and answers in microseconds; init has 10 s in all, so a call that never answers
/// must fail loudly well before Lambda's init timeout does it silently.
pub const CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

#[derive(Debug, Error)]
pub enum LifecycleError {
    #[error("{call}: could not reach the Runtime API at {host}: {source}")]
    Transport {
        call: &'static str,
        host: String,
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    #[error("{call}: reading the answer failed: {source}")]
    Body {
        call: &'static str,
        #[source]
        source: hyper::Error,
    },
    #[error("{call}: HTTP {status}: {body}")]
    Status {
        call: &'static str,
        status: StatusCode,
        body: String,
    },
    #[error("{call}: unexpected answer: {detail}")]
    Answer { call: &'static str, detail: String },
    #[error("invalid request to {call}: {detail}")]
    Request { call: &'static str, detail: String },
    #[error("{call}: no answer from the Runtime API at {host} within {} ms", .after.as_millis())]
    Timeout {
        call: &'static str,
        host: String,
        after: std::time::Duration,
    },
}

/// What registration tells the extension about its function.
#[derive(Debug, Clone, Default)]
pub struct Registration {
    pub extension_id: String,
    pub function_name: Option<String>,
    pub function_version: Option<String>,
    pub handler: Option<String>,
    pub account_id: Option<String>,
}

/// The events `/event/next` delivers.
#[derive(Debug, Clone, PartialEq)]
pub enum NextEvent {
    Invoke {
        request_id: String,
        deadline_ms: u64,
        invoked_function_arn: Option<String>,
        /// The X-Ray header value (`Root=…;Parent=…;Sampled=…`), when present.
        tracing: Option<String>,
    },
    Shutdown {
        reason: String,
        deadline_ms: u64,
    },
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RegisterAnswer {
    function_name: Option<String>,
    function_version: Option<String>,
    handler: Option<String>,
    account_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct EventAnswer {
    event_type: String,
    request_id: Option<String>,
    deadline_ms: Option<u64>,
    invoked_function_arn: Option<String>,
    tracing: Option<TracingAnswer>,
    shutdown_reason: Option<String>,
}

#[derive(Deserialize)]
struct TracingAnswer {
    value: Option<String>,
}

pub struct ExtensionsApi {
    host: String,
    client: Client<HttpConnector, Full<Bytes>>,
    extension_id: Option<String>,
}

impl ExtensionsApi {
    /// `host` is `AWS_LAMBDA_RUNTIME_API` (host:port).
    pub fn new(host: &str) -> ExtensionsApi {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        ExtensionsApi {
            host: host.to_string(),
            client: Client::builder(TokioExecutor::new()).build(connector),
            extension_id: None,
        }
    }

    pub fn extension_id(&self) -> Option<&str> {
        self.extension_id.as_deref()
    }

    /// One call, bounded by [`CALL_TIMEOUT`] unless it is `/event/next`.
    async fn call(
        &self,
        call: &'static str,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Result<(StatusCode, hyper::HeaderMap, Bytes), LifecycleError> {
        let exchange = self.exchange(call, method, path, headers, body);
        if call == NEXT {
            return exchange.await;
        }
        tokio::time::timeout(CALL_TIMEOUT, exchange)
            .await
            .map_err(|_| LifecycleError::Timeout {
                call,
                host: self.host.clone(),
                after: CALL_TIMEOUT,
            })?
    }

    async fn exchange(
        &self,
        call: &'static str,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Result<(StatusCode, hyper::HeaderMap, Bytes), LifecycleError> {
        let mut builder = Request::builder()
            .method(method)
            .uri(format!("http://{}/{}", self.host, path));
        if let Some(id) = &self.extension_id {
            builder = builder.header("Lambda-Extension-Identifier", id.as_str());
        }
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        let request =
            builder
                .body(Full::new(Bytes::from(body)))
                .map_err(|e| LifecycleError::Request {
                    call,
                    detail: e.to_string(),
                })?;
        let response =
            self.client
                .request(request)
                .await
                .map_err(|source| LifecycleError::Transport {
                    call,
                    host: self.host.clone(),
                    source,
                })?;
        let (parts, body) = response.into_parts();
        let bytes = body
            .collect()
            .await
            .map_err(|source| LifecycleError::Body { call, source })?
            .to_bytes();
        if !parts.status.is_success() {
            return Err(LifecycleError::Status {
                call,
                status: parts.status,
                body: String::from_utf8_lossy(&bytes[..bytes.len().min(512)]).into_owned(),
            });
        }
        Ok((parts.status, parts.headers, bytes))
    }

    /// `POST /register` for `events` (INVOKE and SHUTDOWN; SHUTDOWN only under Managed
    /// Instances, which refuses INVOKE), asking for the account id.
    pub async fn register(
        &mut self,
        name: &str,
        events: &[&str],
    ) -> Result<Registration, LifecycleError> {
        let call = "register";
        let (_, headers, body) = self
            .call(
                call,
                Method::POST,
                &format!("{EXTENSION_API}/register"),
                &[
                    ("Lambda-Extension-Name", name),
                    ("Lambda-Extension-Accept-Feature", "accountId"),
                    ("Content-Type", "application/json"),
                ],
                serde_json::json!({ "events": events })
                    .to_string()
                    .into_bytes(),
            )
            .await?;
        let extension_id = headers
            .get("Lambda-Extension-Identifier")
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
            .ok_or_else(|| LifecycleError::Answer {
                call,
                detail: "no Lambda-Extension-Identifier header".into(),
            })?
            .to_string();
        // The body is informative; a malformed one must not fail registration.
        let answer: Option<RegisterAnswer> = serde_json::from_slice(&body).ok();
        self.extension_id = Some(extension_id.clone());
        Ok(match answer {
            Some(a) => Registration {
                extension_id,
                function_name: a.function_name,
                function_version: a.function_version,
                handler: a.handler,
                account_id: a.account_id,
            },
            None => Registration {
                extension_id,
                ..Registration::default()
            },
        })
    }

    /// `GET /event/next`: blocks until Lambda has an event for us.
    pub async fn next_event(&self) -> Result<NextEvent, LifecycleError> {
        let call = NEXT;
        let (_, _, body) = self
            .call(
                call,
                Method::GET,
                &format!("{EXTENSION_API}/event/next"),
                &[],
                Vec::new(),
            )
            .await?;
        let answer: EventAnswer =
            serde_json::from_slice(&body).map_err(|e| LifecycleError::Answer {
                call,
                detail: format!("not an event: {e}"),
            })?;
        match answer.event_type.as_str() {
            "INVOKE" => Ok(NextEvent::Invoke {
                request_id: answer.request_id.ok_or_else(|| LifecycleError::Answer {
                    call,
                    detail: "INVOKE without requestId".into(),
                })?,
                deadline_ms: answer.deadline_ms.unwrap_or(0),
                invoked_function_arn: answer.invoked_function_arn,
                tracing: answer.tracing.and_then(|t| t.value),
            }),
            "SHUTDOWN" => Ok(NextEvent::Shutdown {
                reason: answer.shutdown_reason.unwrap_or_else(|| "unknown".into()),
                deadline_ms: answer.deadline_ms.unwrap_or(0),
            }),
            other => Err(LifecycleError::Answer {
                call,
                detail: format!("unknown eventType {other:?}"),
            }),
        }
    }

    /// `PUT /2022-07-01/telemetry` with a prepared subscription body.
    pub async fn subscribe_telemetry(&self, body: Vec<u8>) -> Result<StatusCode, LifecycleError> {
        let (status, _, _) = self
            .call(
                "telemetry subscribe",
                Method::PUT,
                TELEMETRY_API,
                &[("Content-Type", "application/json")],
                body,
            )
            .await?;
        Ok(status)
    }

    /// `POST /init/error` or `/exit/error`.
    pub async fn report_error(
        &self,
        phase: ErrorPhase,
        reason: &str,
        message: &str,
    ) -> Result<(), LifecycleError> {
        let error_type = format!("Extension.{reason}");
        let body = serde_json::json!({
            "errorMessage": message,
            "errorType": error_type,
            "stackTrace": [],
        });
        let (call, path) = match phase {
            ErrorPhase::Init => ("init/error", "init/error"),
            ErrorPhase::Exit => ("exit/error", "exit/error"),
        };
        self.call(
            call,
            Method::POST,
            &format!("{EXTENSION_API}/{path}"),
            &[
                ("Lambda-Extension-Function-Error-Type", error_type.as_str()),
                ("Content-Type", "application/json"),
            ],
            body.to_string().into_bytes(),
        )
        .await?;
        Ok(())
    }
}

#[derive(Debug, Clone, Copy)]
pub enum ErrorPhase {
    Init,
    Exit,
}
