//! The bridge's own metrics (prometheus crate): what it received, sent, retried and dropped.
//!
//! A Lambda instance cannot be scraped, so besides the optional `/metrics` endpoint
//! (`BRIDGE_METRICS_ADDR`, for local runs) they can be pushed to a Pushgateway
//! (`BRIDGE_PUSHGATEWAY_URL`) at shutdown and at most every `BRIDGE_PUSH_INTERVAL_MS`.

pub mod config;
pub mod stale_groups;

/// The Pushgateway job every bridge pushes its group under.
pub const JOB: &str = "lambda-telemetry-bridge";

use std::sync::LazyLock;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

use crate::event::EventKind;
use crate::sinks::otlp::sampling::Decision;

const SAMPLING_DECISIONS: [Decision; 4] = [
    Decision::Sampled,
    Decision::SampledOut,
    Decision::KeptFailed,
    Decision::KeptSlow,
];

const fn decision_label(decision: Decision) -> &'static str {
    match decision {
        Decision::Sampled => "sampled",
        Decision::SampledOut => "sampled_out",
        Decision::KeptFailed => "kept_failed",
        Decision::KeptSlow => "kept_slow",
    }
}

/// The output a series is about (label `sink`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkLabel {
    RawJson,
    /// The OTLP sink as the pipeline sees it (one cursor for its three signals).
    Otlp,
    OtlpTraces,
    OtlpMetrics,
    OtlpLogs,
}

impl SinkLabel {
    pub const fn as_str(self) -> &'static str {
        match self {
            SinkLabel::RawJson => "raw_json",
            SinkLabel::Otlp => "otlp",
            SinkLabel::OtlpTraces => "otlp_traces",
            SinkLabel::OtlpMetrics => "otlp_metrics",
            SinkLabel::OtlpLogs => "otlp_logs",
        }
    }
}

impl std::fmt::Display for SinkLabel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a delivery failed (label `reason` of `bridge_sink_failures_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// A definite no from the endpoint (4xx): the items were dropped.
    Rejected,
    /// Still failing at the deadline: the items stay for the next flush.
    GaveUp,
}

impl Failure {
    const ALL: [Failure; 2] = [Failure::Rejected, Failure::GaveUp];

    const fn as_str(self) -> &'static str {
        match self {
            Failure::Rejected => "rejected",
            Failure::GaveUp => "gave_up",
        }
    }
}

/// Why items were dropped (label `reason` of `bridge_sink_events_dropped_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    /// The queue or a retry buffer was full: the oldest went.
    Overflow,
    /// The endpoint refused them (4xx).
    Rejected,
    /// The OTLP encoder panicked on them.
    Unencodable,
}

impl Dropped {
    /// The reasons a dashboard shows at zero from the start.
    const USUAL: [Dropped; 2] = [Dropped::Overflow, Dropped::Rejected];

    const fn as_str(self) -> &'static str {
        match self {
            Dropped::Overflow => "overflow",
            Dropped::Rejected => "rejected",
            Dropped::Unencodable => "unencodable",
        }
    }
}

/// Why the telemetry listener refused a request or a connection (label `reason` of
/// `bridge_listener_rejected_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    Method,
    TooLarge,
    Body,
    BodyTimeout,
    /// A new connection that sent no request in time.
    HeadTimeout,
    NotAnArray,
    TooManyElements,
    /// A connection closed to make room for a new one.
    Connections,
}

impl Refused {
    const USUAL: [Refused; 4] = [
        Refused::Method,
        Refused::TooLarge,
        Refused::Body,
        Refused::NotAnArray,
    ];

    const fn as_str(self) -> &'static str {
        match self {
            Refused::Method => "method",
            Refused::TooLarge => "too_large",
            Refused::Body => "body",
            Refused::BodyTimeout => "body_timeout",
            Refused::HeadTimeout => "head_timeout",
            Refused::NotAnArray => "not_an_array",
            Refused::TooManyElements => "too_many_elements",
            Refused::Connections => "connections",
        }
    }
}

/// What triggered a flush (label `reason` of `bridge_flush_duration_seconds`). The pipeline's
/// `FlushReason` converts into it: this module is below every other and imports none of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushTrigger {
    Invoke,
    Background,
    Shutdown,
}

impl FlushTrigger {
    const ALL: [FlushTrigger; 3] = [
        FlushTrigger::Invoke,
        FlushTrigger::Background,
        FlushTrigger::Shutdown,
    ];

    const fn as_str(self) -> &'static str {
        match self {
            FlushTrigger::Invoke => "invoke",
            FlushTrigger::Background => "background",
            FlushTrigger::Shutdown => "shutdown",
        }
    }
}

/// Every event kind, in the order of [`kind_index`].
const KINDS: [EventKind; 16] = [
    EventKind::InitStart,
    EventKind::InitRuntimeDone,
    EventKind::InitReport,
    EventKind::Start,
    EventKind::RuntimeDone,
    EventKind::Report,
    EventKind::RestoreStart,
    EventKind::RestoreRuntimeDone,
    EventKind::RestoreReport,
    EventKind::Extension,
    EventKind::TelemetrySubscription,
    EventKind::LogsDropped,
    EventKind::OtherPlatform,
    EventKind::FunctionLog,
    EventKind::ExtensionLog,
    EventKind::Unknown,
];

fn kind_index(kind: EventKind) -> usize {
    KINDS
        .iter()
        .position(|k| *k == kind)
        .unwrap_or(KINDS.len() - 1)
}

pub struct SelfMetrics {
    pub registry: Registry,
    /// One child per event kind, resolved once: the listener counts without a label lookup.
    events_received: Vec<IntCounter>,
    pub listener_posts: IntCounter,
    listener_rejected: IntCounterVec,
    sink_batches: IntCounterVec,
    sink_events_sent: IntCounterVec,
    sink_bytes_sent: IntCounterVec,
    sink_failures: IntCounterVec,
    sink_retries: IntCounterVec,
    sink_events_dropped: IntCounterVec,
    pub queue_depth_events: IntGauge,
    pub queue_depth_bytes: IntGauge,
    flush_duration: HistogramVec,
    pub invocations: IntCounter,
    /// One child per decision, resolved once.
    sampling_decisions: Vec<IntCounter>,
    /// Per log filter rule; series exist only for the rules configured.
    logs_filtered: IntCounterVec,
    /// Per mask rule and output; series exist only for the rules configured.
    masked: IntCounterVec,
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let metric = IntCounterVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| panic!("metric {name} is well-formed: {e}"));
    let _ = registry.register(Box::new(metric.clone()));
    metric
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let metric =
        IntCounter::new(name, help).unwrap_or_else(|e| panic!("metric {name} is well-formed: {e}"));
    let _ = registry.register(Box::new(metric.clone()));
    metric
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let metric =
        IntGauge::new(name, help).unwrap_or_else(|e| panic!("metric {name} is well-formed: {e}"));
    let _ = registry.register(Box::new(metric.clone()));
    metric
}

impl SelfMetrics {
    fn new() -> SelfMetrics {
        let registry = Registry::new();
        let received = counter_vec(
            &registry,
            "bridge_events_received_total",
            "Telemetry API events received, by type",
            &["type"],
        );
        let flush_duration = HistogramVec::new(
            HistogramOpts::new(
                "bridge_flush_duration_seconds",
                "Duration of a flush of all sinks",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ]),
            &["reason"],
        )
        .unwrap_or_else(|e| panic!("flush histogram is well-formed: {e}"));
        let _ = registry.register(Box::new(flush_duration.clone()));
        for trigger in FlushTrigger::ALL {
            flush_duration.with_label_values(&[trigger.as_str()]);
        }
        let listener_rejected = counter_vec(
            &registry,
            "bridge_listener_rejected_total",
            "Telemetry API requests rejected, by reason",
            &["reason"],
        );
        for reason in Refused::USUAL {
            listener_rejected.with_label_values(&[reason.as_str()]);
        }
        let sampling = counter_vec(
            &registry,
            "bridge_sampling_decisions_total",
            "Traces (invocations, init and restore phases) by the sampling decision: sampled, \
             sampled_out, kept_failed, kept_slow",
            &["decision"],
        );
        let logs_filtered = counter_vec(
            &registry,
            "bridge_logs_filtered_total",
            "Log records left out of the OTLP logs, by the rule that dropped them (min_severity, \
             unleveled, or a drop rule's name)",
            &["rule"],
        );
        let masked = counter_vec(
            &registry,
            "bridge_masked_total",
            "Text values in which a mask rule replaced something, by rule and output",
            &["rule", "sink"],
        );
        SelfMetrics {
            logs_filtered,
            masked,
            sampling_decisions: SAMPLING_DECISIONS
                .iter()
                .map(|d| sampling.with_label_values(&[decision_label(*d)]))
                .collect(),
            events_received: KINDS
                .iter()
                .map(|k| received.with_label_values(&[k.label()]))
                .collect(),
            listener_posts: counter(
                &registry,
                "bridge_listener_posts_total",
                "Telemetry API POSTs accepted",
            ),
            listener_rejected,
            sink_batches: counter_vec(
                &registry,
                "bridge_sink_batches_total",
                "Requests delivered, per sink",
                &["sink"],
            ),
            sink_events_sent: counter_vec(
                &registry,
                "bridge_sink_events_sent_total",
                "Items delivered (events, spans, log records), per sink",
                &["sink"],
            ),
            sink_bytes_sent: counter_vec(
                &registry,
                "bridge_sink_bytes_sent_total",
                "Request body bytes delivered, per sink",
                &["sink"],
            ),
            sink_failures: counter_vec(
                &registry,
                "bridge_sink_failures_total",
                "Deliveries that failed, per sink and reason (rejected, gave_up)",
                &["sink", "reason"],
            ),
            sink_retries: counter_vec(
                &registry,
                "bridge_sink_retries_total",
                "Retried requests, per sink",
                &["sink"],
            ),
            sink_events_dropped: counter_vec(
                &registry,
                "bridge_sink_events_dropped_total",
                "Items dropped, per sink and reason (overflow, rejected)",
                &["sink", "reason"],
            ),
            queue_depth_events: gauge(
                &registry,
                "bridge_queue_depth_events",
                "Events queued for the slowest sink",
            ),
            queue_depth_bytes: gauge(&registry, "bridge_queue_depth_bytes", "Bytes queued"),
            flush_duration,
            invocations: counter(
                &registry,
                "bridge_invocations_total",
                "Invocations handled: INVOKE events (under Managed Instances, which has none, platform.start events)",
            ),
            registry,
        }
    }

    /// Creates a sink's series at zero, so dashboards show 0 rather than "no data" before the
    /// first failure or drop.
    pub fn init_sink(&self, sink: SinkLabel) {
        let sink = sink.as_str();
        for counter in [
            &self.sink_batches,
            &self.sink_events_sent,
            &self.sink_bytes_sent,
            &self.sink_retries,
        ] {
            counter.with_label_values(&[sink]);
        }
        for reason in Failure::ALL {
            self.sink_failures
                .with_label_values(&[sink, reason.as_str()]);
        }
        for reason in Dropped::USUAL {
            self.sink_events_dropped
                .with_label_values(&[sink, reason.as_str()]);
        }
    }

    /// One request delivered, with its body's size.
    pub fn request_delivered(&self, sink: SinkLabel, bytes: u64) {
        self.sink_batches.with_label_values(&[sink.as_str()]).inc();
        self.sink_bytes_sent
            .with_label_values(&[sink.as_str()])
            .inc_by(bytes);
    }

    /// Items (events, spans, log records, metric collections) delivered.
    pub fn items_delivered(&self, sink: SinkLabel, items: u64) {
        self.sink_events_sent
            .with_label_values(&[sink.as_str()])
            .inc_by(items);
    }

    /// Requests sent again after a failed attempt.
    pub fn retried(&self, sink: SinkLabel, retries: u64) {
        self.sink_retries
            .with_label_values(&[sink.as_str()])
            .inc_by(retries);
    }

    pub fn failed(&self, sink: SinkLabel, failure: Failure) {
        self.sink_failures
            .with_label_values(&[sink.as_str(), failure.as_str()])
            .inc();
    }

    pub fn dropped(&self, sink: SinkLabel, reason: Dropped, items: u64) {
        self.sink_events_dropped
            .with_label_values(&[sink.as_str(), reason.as_str()])
            .inc_by(items);
    }

    pub fn refused(&self, reason: Refused) {
        self.listener_rejected
            .with_label_values(&[reason.as_str()])
            .inc();
    }

    pub fn flushed(&self, trigger: FlushTrigger, seconds: f64) {
        self.flush_duration
            .with_label_values(&[trigger.as_str()])
            .observe(seconds);
    }

    /// An invocation's (or a phase's) spans were exported or left out.
    pub fn sampling_decided(&self, decision: Decision) {
        // SAMPLING_DECISIONS lists the variants in declaration order.
        self.sampling_decisions[decision as usize].inc();
    }

    /// The counter of log records a filter rule drops (resolved once, when the rule is read).
    pub fn logs_filtered_by(&self, rule: &str) -> IntCounter {
        self.logs_filtered.with_label_values(&[rule])
    }

    /// The counter of values a mask rule changed in an output's data.
    pub fn masked_by(&self, rule: &str, sink: SinkLabel) -> IntCounter {
        self.masked.with_label_values(&[rule, sink.as_str()])
    }

    pub fn event_received(&self, kind: EventKind) {
        self.events_received[kind_index(kind)].inc();
    }

    /// The text exposition format.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "self-metrics: encoding failed");
        }
        out
    }
}

/// The process-wide self-metrics.
pub static METRICS: LazyLock<SelfMetrics> = LazyLock::new(SelfMetrics::new);

/// Serves `GET /metrics` on `addr` (on the current runtime); returns the address bound.
pub async fn serve(addr: std::net::SocketAddr) -> std::io::Result<std::net::SocketAddr> {
    use axum::http::header::CONTENT_TYPE;
    let socket = tokio::net::TcpListener::bind(addr).await?;
    let bound = socket.local_addr()?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(|| async {
            (
                [(CONTENT_TYPE, "text/plain; version=0.0.4")],
                METRICS.render(),
            )
        }),
    );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(socket, app).await {
            tracing::warn!(error = %e, "self-metrics endpoint stopped");
        }
    });
    Ok(bound)
}

/// RFC 4648 base64url with padding (what the Pushgateway's `@base64` path suffix expects).
fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Pushes the self-metrics to a Pushgateway, at most once per interval (and at shutdown).
pub struct Pusher {
    endpoint: crate::http::Endpoint,
    /// The content type and, with credentials in the URL, the authorization (secret).
    pub headers: reqwest::header::HeaderMap,
    interval: std::time::Duration,
    last: Option<tokio::time::Instant>,
    client: std::sync::Arc<crate::http::LazyClient>,
}

impl Pusher {
    /// `instance` groups this execution environment's series (its log stream name).
    pub fn new(
        gateway: &config::Pushgateway,
        instance: &str,
        interval: std::time::Duration,
        client: std::sync::Arc<crate::http::LazyClient>,
    ) -> Pusher {
        let mut url = gateway.url.clone();
        // A log stream name holds '/', which a Pushgateway path segment cannot: its protocol
        // takes such label values base64url-encoded, as `instance@base64/<value>`.
        let encoded = base64url(instance.as_bytes());
        if let Ok(mut segments) = url.path_segments_mut() {
            segments.pop_if_empty().extend([
                "metrics",
                "job",
                JOB,
                "instance@base64",
                encoded.as_str(),
            ]);
        }
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            reqwest::header::CONTENT_TYPE,
            reqwest::header::HeaderValue::from_static("text/plain; version=0.0.4"),
        );
        if let Some(value) = gateway
            .authorization
            .as_deref()
            .and_then(|v| reqwest::header::HeaderValue::from_str(v).ok())
        {
            let mut value = value;
            value.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        Pusher {
            endpoint: crate::http::Endpoint::new(url),
            headers,
            interval,
            last: None,
            client,
        }
    }

    /// Whether the interval has passed since the last push.
    pub fn due(&self) -> bool {
        self.last.is_none_or(|last| last.elapsed() >= self.interval)
    }

    /// Pushes if the interval has passed (or `force`), finishing by `deadline`.
    pub async fn maybe_push(&mut self, force: bool, deadline: tokio::time::Instant) {
        let now = tokio::time::Instant::now();
        if !force
            && self
                .last
                .is_some_and(|last| now.duration_since(last) < self.interval)
        {
            return;
        }
        self.last = Some(now);
        let remaining = deadline.saturating_duration_since(now);
        if remaining.is_zero() {
            return;
        }
        let client = match self.client.get() {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "self-metrics push skipped");
                return;
            }
        };
        let result = client
            .send(
                reqwest::Method::PUT,
                &self.endpoint,
                &self.headers,
                METRICS.render().into(),
                remaining,
            )
            .await;
        match result {
            Ok(answer) if answer.status.is_success() => tracing::debug!("self-metrics pushed"),
            Ok(answer) => {
                tracing::warn!(status = answer.status.as_u16(), endpoint = %crate::config::url::redact_url(&self.endpoint.url), "self-metrics push rejected")
            }
            Err(error) => {
                tracing::warn!(endpoint = %crate::config::url::redact_url(&self.endpoint.url), error, "self-metrics push failed")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64url_matches_rfc_4648() {
        assert_eq!(base64url(b""), "");
        assert_eq!(base64url(b"f"), "Zg==");
        assert_eq!(base64url(b"fo"), "Zm8=");
        assert_eq!(base64url(b"foo"), "Zm9v");
        assert_eq!(
            base64url(b"2026/11/25/[$LATEST]ab"),
            "MjAyNi8xMS8yNS9bJExBVEVTVF1hYg=="
        );
        assert_eq!(base64url(&[0xfb, 0xff]), "-_8=");
    }

    #[test]
    fn every_kind_has_its_counter() {
        for kind in KINDS {
            METRICS.event_received(kind);
        }
        let text = String::from_utf8(METRICS.render()).expect("utf-8");
        assert!(text.contains("bridge_events_received_total{type=\"platform.runtimeDone\"} 1"));
        assert!(text.contains("bridge_events_received_total{type=\"unknown\"} 1"));
    }
}
