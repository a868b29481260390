//! Decoding what an OTLP/HTTP receiver (a [`RecordingEndpoint`](super::RecordingEndpoint)
//! pointed to by `OTEL_EXPORTER_OTLP_ENDPOINT`) received: protobuf or JSON per `content-type`,
//! gzip per `content-encoding`, with the OTLP definitions of `opentelemetry-proto`. Plus
//! [`OtlpStats`], a bounded running summary (requests per signal, spans per name, metric names
//! with unit and type, log records, one example trace) that `lambda-sim` prints.
//!
//! ```no_run
//! # async fn demo() -> Result<(), lambda_sim::SimError> {
//! use lambda_sim::otlp_receiver::{attr_str, decode_traces};
//! use lambda_sim::{self as sim, Behaviour, RecordingEndpoint, SimConfig};
//! let collector = RecordingEndpoint::start(Behaviour::ok()).await?;
//! let report = sim::run(SimConfig {
//!     extension_env: vec![("OTEL_EXPORTER_OTLP_ENDPOINT".into(), collector.url())],
//!     invocations: 3,
//!     ..SimConfig::default()
//! })
//! .await?;
//! let spans = decode_traces(&collector.requests());
//! let first = &report.invocations[0].request_id;
//! assert!(spans
//!     .iter()
//!     .any(|(_, s)| attr_str(&s.attributes, "faas.invocation_id") == Some(first)));
//! # Ok(())
//! # }
//! ```

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::io::Read;

pub use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
pub use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
pub use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
pub use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
pub use opentelemetry_proto::tonic::logs::v1::LogRecord;
pub use opentelemetry_proto::tonic::metrics::v1::{metric, number_data_point, Metric};
pub use opentelemetry_proto::tonic::resource::v1::Resource;
pub use opentelemetry_proto::tonic::trace::v1::{span, status, Span};

use opentelemetry_proto::tonic::metrics::v1::AggregationTemporality;

use super::RecordedRequest;

/// An OTLP signal, by its OTLP/HTTP path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Signal {
    /// `/v1/traces`.
    Traces,
    /// `/v1/metrics`.
    Metrics,
    /// `/v1/logs`.
    Logs,
}

impl Signal {
    /// Every signal.
    pub const ALL: [Signal; 3] = [Signal::Traces, Signal::Metrics, Signal::Logs];

    /// `/v1/traces`, `/v1/metrics` or `/v1/logs`.
    pub fn path(self) -> &'static str {
        match self {
            Signal::Traces => "/v1/traces",
            Signal::Metrics => "/v1/metrics",
            Signal::Logs => "/v1/logs",
        }
    }

    /// `traces`, `metrics` or `logs`.
    pub fn name(self) -> &'static str {
        match self {
            Signal::Traces => "traces",
            Signal::Metrics => "metrics",
            Signal::Logs => "logs",
        }
    }

    /// The signal of a request, by its path (which may have a prefix, as when the endpoint URL
    /// has one; the query is ignored). `None` for other paths.
    pub fn of(request: &RecordedRequest) -> Option<Signal> {
        let path = request.path.split(['?', '#']).next().unwrap_or("");
        Signal::ALL.into_iter().find(|s| path.ends_with(s.path()))
    }
}

/// Why a request's body could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// `content-encoding: gzip` with a body that is not gzip.
    #[error("bad gzip body: {0}")]
    Gzip(#[source] std::io::Error),
    /// A `content-encoding` other than gzip (or identity).
    #[error("unsupported content-encoding {0:?}")]
    Encoding(String),
    /// Not a valid protobuf message of the signal's request type.
    #[error("bad OTLP protobuf: {0}")]
    Protobuf(#[source] prost::DecodeError),
    /// Not valid OTLP JSON of the signal's request type.
    #[error("bad OTLP JSON: {0}")]
    Json(#[source] serde_json::Error),
}

/// Whether the body is OTLP JSON (`content-type` mentions json); else it is taken as protobuf.
pub fn is_json(request: &RecordedRequest) -> bool {
    request
        .header("content-type")
        .is_some_and(|c| c.to_ascii_lowercase().contains("json"))
}

/// Whether the body is gzip-compressed (`content-encoding: gzip`).
pub fn is_gzip(request: &RecordedRequest) -> bool {
    request
        .header("content-encoding")
        .is_some_and(|e| e.trim().eq_ignore_ascii_case("gzip"))
}

/// The body, decompressed per `content-encoding`.
pub fn body(request: &RecordedRequest) -> Result<Cow<'_, [u8]>, DecodeError> {
    match request.header("content-encoding").map(str::trim) {
        None | Some("") => Ok(Cow::Borrowed(&request.body)),
        Some(e) if e.eq_ignore_ascii_case("identity") => Ok(Cow::Borrowed(&request.body)),
        Some(e) if e.eq_ignore_ascii_case("gzip") => {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(&request.body[..])
                .read_to_end(&mut out)
                .map_err(DecodeError::Gzip)?;
            Ok(Cow::Owned(out))
        }
        Some(other) => Err(DecodeError::Encoding(other.to_string())),
    }
}

/// Decodes a request's body as `T` (one of the `Export*ServiceRequest`s): JSON or protobuf per
/// `content-type`, after gzip per `content-encoding`.
pub fn decode<T>(request: &RecordedRequest) -> Result<T, DecodeError>
where
    T: prost::Message + Default + serde::de::DeserializeOwned,
{
    let bytes = body(request)?;
    if is_json(request) {
        serde_json::from_slice(&bytes).map_err(DecodeError::Json)
    } else {
        T::decode(&bytes[..]).map_err(DecodeError::Protobuf)
    }
}

/// The POSTs of `signal` that were answered with 2xx (what the exporter counts as delivered).
pub fn accepted(
    requests: &[RecordedRequest],
    signal: Signal,
) -> impl Iterator<Item = &RecordedRequest> {
    requests
        .iter()
        .filter(move |r| r.method == "POST" && r.succeeded() && Signal::of(r) == Some(signal))
}

fn flat_spans(req: ExportTraceServiceRequest) -> impl Iterator<Item = (Resource, Span)> {
    req.resource_spans.into_iter().flat_map(|rs| {
        let resource = rs.resource.unwrap_or_default();
        rs.scope_spans
            .into_iter()
            .flat_map(|ss| ss.spans)
            .map(move |s| (resource.clone(), s))
    })
}

fn flat_metrics(req: ExportMetricsServiceRequest) -> impl Iterator<Item = (Resource, Metric)> {
    req.resource_metrics.into_iter().flat_map(|rm| {
        let resource = rm.resource.unwrap_or_default();
        rm.scope_metrics
            .into_iter()
            .flat_map(|sm| sm.metrics)
            .map(move |m| (resource.clone(), m))
    })
}

fn flat_logs(req: ExportLogsServiceRequest) -> impl Iterator<Item = (Resource, LogRecord)> {
    req.resource_logs.into_iter().flat_map(|rl| {
        let resource = rl.resource.unwrap_or_default();
        rl.scope_logs
            .into_iter()
            .flat_map(|sl| sl.log_records)
            .map(move |l| (resource.clone(), l))
    })
}

/// Every span of every accepted `/v1/traces` POST, in arrival order, with its resource. Requests
/// that cannot be decoded are skipped (use [`decode`] to see why).
pub fn decode_traces(requests: &[RecordedRequest]) -> Vec<(Resource, Span)> {
    accepted(requests, Signal::Traces)
        .filter_map(|r| decode::<ExportTraceServiceRequest>(r).ok())
        .flat_map(flat_spans)
        .collect()
}

/// Every metric of every accepted `/v1/metrics` POST, in arrival order, with its resource
/// (cumulative exports repeat earlier series). Requests that cannot be decoded are skipped.
pub fn decode_metrics(requests: &[RecordedRequest]) -> Vec<(Resource, Metric)> {
    accepted(requests, Signal::Metrics)
        .filter_map(|r| decode::<ExportMetricsServiceRequest>(r).ok())
        .flat_map(flat_metrics)
        .collect()
}

/// Every log record of every accepted `/v1/logs` POST, in arrival order, with its resource.
/// Requests that cannot be decoded are skipped.
pub fn decode_logs(requests: &[RecordedRequest]) -> Vec<(Resource, LogRecord)> {
    accepted(requests, Signal::Logs)
        .filter_map(|r| decode::<ExportLogsServiceRequest>(r).ok())
        .flat_map(flat_logs)
        .collect()
}

/// The value of attribute `key`.
pub fn attr<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a any_value::Value> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v: &AnyValue| v.value.as_ref())
}

/// A string attribute.
pub fn attr_str<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a str> {
    match attr(attributes, key)? {
        any_value::Value::StringValue(s) => Some(s),
        _ => None,
    }
}

/// A boolean attribute.
pub fn attr_bool(attributes: &[KeyValue], key: &str) -> Option<bool> {
    match attr(attributes, key)? {
        any_value::Value::BoolValue(b) => Some(*b),
        _ => None,
    }
}

/// An integer attribute.
pub fn attr_int(attributes: &[KeyValue], key: &str) -> Option<i64> {
    match attr(attributes, key)? {
        any_value::Value::IntValue(i) => Some(*i),
        _ => None,
    }
}

/// A numeric attribute (integer or double) as `f64`.
pub fn attr_f64(attributes: &[KeyValue], key: &str) -> Option<f64> {
    match attr(attributes, key)? {
        any_value::Value::DoubleValue(d) => Some(*d),
        // Attribute integers are small here; the conversion is for display.
        any_value::Value::IntValue(i) => Some(*i as f64),
        _ => None,
    }
}

/// An attribute value as text (strings unquoted).
pub fn value_text(value: &any_value::Value) -> String {
    match value {
        any_value::Value::StringValue(s) => s.clone(),
        any_value::Value::BoolValue(b) => b.to_string(),
        any_value::Value::IntValue(i) => i.to_string(),
        any_value::Value::DoubleValue(d) => d.to_string(),
        any_value::Value::BytesValue(b) => hex(b),
        any_value::Value::ArrayValue(a) => format!(
            "[{}]",
            a.values
                .iter()
                .filter_map(|v| v.value.as_ref())
                .map(value_text)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        any_value::Value::KvlistValue(kv) => format!(
            "{{{}}}",
            kv.values
                .iter()
                .map(|kv| format!(
                    "{}={}",
                    kv.key,
                    kv.value
                        .as_ref()
                        .and_then(|v| v.value.as_ref())
                        .map(value_text)
                        .unwrap_or_default()
                ))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        // Variants of newer protocol versions (e.g. string-table references).
        #[allow(unreachable_patterns)]
        other => format!("{other:?}"),
    }
}

/// Lowercase hex of an id.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// A span's duration in milliseconds (0 when it ends before it starts).
pub fn duration_ms(span: &Span) -> f64 {
    // Nanosecond counts of spans fit an f64 well enough for display.
    span.end_time_unix_nano
        .saturating_sub(span.start_time_unix_nano) as f64
        / 1e6
}

/// `SERVER`, `INTERNAL`, … of a span.
pub fn kind_name(span: &Span) -> &'static str {
    match span::SpanKind::try_from(span.kind) {
        Ok(span::SpanKind::Server) => "SERVER",
        Ok(span::SpanKind::Internal) => "INTERNAL",
        Ok(span::SpanKind::Client) => "CLIENT",
        Ok(span::SpanKind::Producer) => "PRODUCER",
        Ok(span::SpanKind::Consumer) => "CONSUMER",
        _ => "UNSPECIFIED",
    }
}

/// Whether a span's status is ERROR.
pub fn is_error(span: &Span) -> bool {
    span.status
        .as_ref()
        .is_some_and(|s| s.code == status::StatusCode::Error as i32)
}

/// `UNSET`, `OK` or `ERROR("message")`.
pub fn status_text(span: &Span) -> String {
    let Some(s) = span.status.as_ref() else {
        return "UNSET".into();
    };
    match status::StatusCode::try_from(s.code) {
        Ok(status::StatusCode::Ok) => "OK".into(),
        Ok(status::StatusCode::Error) if s.message.is_empty() => "ERROR".into(),
        Ok(status::StatusCode::Error) => format!("ERROR({:?})", s.message),
        _ => "UNSET".into(),
    }
}

/// Attributes shown in a trace tree, when present.
pub const TREE_ATTRIBUTES: [&str; 5] = [
    "faas.coldstart",
    "aws.lambda.status",
    "error.type",
    "aws.lambda.incomplete",
    "aws.lambda.initialization_type",
];

/// One span in a tree: name, duration, kind (unless INTERNAL), status (unless UNSET) and the
/// [`TREE_ATTRIBUTES`] it has.
pub fn span_line(span: &Span) -> String {
    let mut line = format!("{}  {:.2} ms", span.name, duration_ms(span));
    if span.kind != span::SpanKind::Internal as i32 {
        let _ = write!(line, "  {}", kind_name(span));
    }
    let status = status_text(span);
    if status != "UNSET" {
        let _ = write!(line, "  status {status}");
    }
    for key in TREE_ATTRIBUTES {
        if let Some(v) = attr(&span.attributes, key) {
            let _ = write!(line, "  {key}={}", value_text(v));
        }
    }
    line
}

/// Renders the spans of one trace as an indented tree (children under their parent, by start
/// time; spans whose parent is not among them are roots). A link of a span to a span of
/// `linkable` (e.g. the init span, in its own trace) is shown as a `link ->` line under it; a
/// link to a span not there, with its ids.
pub fn render_trace(spans: &[Span], linkable: &[Span]) -> Vec<String> {
    let ids: BTreeSet<&[u8]> = spans.iter().map(|s| s.span_id.as_slice()).collect();
    let mut roots: Vec<&Span> = spans
        .iter()
        .filter(|s| s.parent_span_id.is_empty() || !ids.contains(s.parent_span_id.as_slice()))
        .collect();
    roots.sort_by_key(|s| s.start_time_unix_nano);
    let mut out = Vec::new();
    for root in roots {
        render_node(root, spans, linkable, "", "", &mut out, 0);
    }
    out
}

fn render_node(
    node: &Span,
    spans: &[Span],
    linkable: &[Span],
    first_prefix: &str,
    rest_prefix: &str,
    out: &mut Vec<String>,
    depth: usize,
) {
    out.push(format!("{first_prefix}{}", span_line(node)));
    let mut children: Vec<&Span> = spans
        .iter()
        .filter(|s| s.parent_span_id == node.span_id && !s.span_id.is_empty())
        .collect();
    children.sort_by_key(|s| s.start_time_unix_nano);
    let links: Vec<String> = node
        .links
        .iter()
        .map(|l| {
            let label = attr_str(&l.attributes, "aws.lambda.link")
                .map(|k| format!(" ({k})"))
                .unwrap_or_default();
            match linkable
                .iter()
                .find(|s| s.trace_id == l.trace_id && s.span_id == l.span_id)
            {
                Some(target) => format!(
                    "link{label} -> {}  [trace {}]",
                    span_line(target),
                    hex(&target.trace_id)
                ),
                None => format!(
                    "link{label} -> trace {} span {} (not received)",
                    hex(&l.trace_id),
                    hex(&l.span_id)
                ),
            }
        })
        .collect();
    let total = children.len() + links.len();
    let mut n = 0;
    for link in links {
        n += 1;
        let branch = if n == total { "└─ " } else { "├─ " };
        out.push(format!("{rest_prefix}{branch}{link}"));
    }
    // Bounded depth: a malformed trace (a parent cycle) cannot recurse forever.
    if depth >= 16 {
        return;
    }
    for child in children {
        n += 1;
        let last = n == total;
        let (first, rest) = if last {
            ("└─ ", "   ")
        } else {
            ("├─ ", "│  ")
        };
        render_node(
            child,
            spans,
            linkable,
            &format!("{rest_prefix}{first}"),
            &format!("{rest_prefix}{rest}"),
            out,
            depth + 1,
        );
    }
}

/// The short name of an OTLP severity number (`INFO` for 9–12, …; `no severity` when
/// unspecified).
pub fn severity_name(number: i32) -> &'static str {
    match number {
        1..=4 => "TRACE",
        5..=8 => "DEBUG",
        9..=12 => "INFO",
        13..=16 => "WARN",
        17..=20 => "ERROR",
        21..=24 => "FATAL",
        _ => "no severity",
    }
}

/// What a metric is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    /// A gauge.
    Gauge,
    /// A monotonic sum.
    Counter,
    /// A non-monotonic sum.
    UpDownCounter,
    /// An explicit-bucket histogram.
    Histogram,
    /// An exponential histogram.
    ExponentialHistogram,
    /// A summary.
    Summary,
    /// No data.
    Empty,
}

impl MetricKind {
    /// `gauge`, `counter`, `updown counter`, `histogram`, `exp histogram`, `summary`, `empty`.
    pub fn name(self) -> &'static str {
        match self {
            MetricKind::Gauge => "gauge",
            MetricKind::Counter => "counter",
            MetricKind::UpDownCounter => "updown counter",
            MetricKind::Histogram => "histogram",
            MetricKind::ExponentialHistogram => "exp histogram",
            MetricKind::Summary => "summary",
            MetricKind::Empty => "empty",
        }
    }
}

/// A number data point's value, integer or double (0 when absent). Counter values of a
/// simulation are far below 2^53, so the conversion is exact.
pub fn number_value(p: &opentelemetry_proto::tonic::metrics::v1::NumberDataPoint) -> f64 {
    match p.value {
        Some(number_data_point::Value::AsDouble(d)) => d,
        Some(number_data_point::Value::AsInt(i)) => i as f64,
        None => 0.0,
    }
}

/// A metric's kind, temporality (`Some(true)`: delta) and its value in one export: the sum of a
/// sum, the count of a histogram or summary, the largest point of a gauge.
pub fn metric_value(m: &Metric) -> (MetricKind, Option<bool>, f64) {
    let number = number_value;
    let delta = |t: i32| Some(t == AggregationTemporality::Delta as i32);
    // Counts of a simulation are far below 2^53.
    match &m.data {
        Some(metric::Data::Gauge(g)) => (
            MetricKind::Gauge,
            None,
            g.data_points.iter().map(number).fold(0.0, f64::max),
        ),
        Some(metric::Data::Sum(s)) => (
            if s.is_monotonic {
                MetricKind::Counter
            } else {
                MetricKind::UpDownCounter
            },
            delta(s.aggregation_temporality),
            s.data_points.iter().map(number).sum(),
        ),
        Some(metric::Data::Histogram(h)) => (
            MetricKind::Histogram,
            delta(h.aggregation_temporality),
            h.data_points.iter().map(|p| p.count as f64).sum(),
        ),
        Some(metric::Data::ExponentialHistogram(h)) => (
            MetricKind::ExponentialHistogram,
            delta(h.aggregation_temporality),
            h.data_points.iter().map(|p| p.count as f64).sum(),
        ),
        Some(metric::Data::Summary(s)) => (
            MetricKind::Summary,
            None,
            s.data_points.iter().map(|p| p.count as f64).sum(),
        ),
        None => (MetricKind::Empty, None, 0.0),
    }
}

/// One metric name as received.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricSummary {
    /// Its unit.
    pub unit: String,
    /// Its kind.
    pub kind: MetricKind,
    /// `Some(true)`: delta temporality, `Some(false)`: cumulative, `None`: not applicable.
    pub delta: Option<bool>,
    /// Exports it appeared in.
    pub exports: usize,
    /// Its value over the run: the total of a counter (the latest cumulative value, or the sum of
    /// the deltas), the number of measurements of a histogram, the latest largest gauge point.
    pub value: f64,
}

impl MetricSummary {
    /// `counter (cumulative)`, `histogram (delta)`, `gauge`, ….
    pub fn type_text(&self) -> String {
        match self.delta {
            Some(true) => format!("{} (delta)", self.kind.name()),
            Some(false) => format!("{} (cumulative)", self.kind.name()),
            None => self.kind.name().to_string(),
        }
    }

    /// `total 20`, `count 20`, `last 134217728`.
    pub fn value_text(&self) -> String {
        let v = number_text(self.value);
        match self.kind {
            MetricKind::Counter | MetricKind::UpDownCounter => format!("total {v}"),
            MetricKind::Histogram | MetricKind::ExponentialHistogram | MetricKind::Summary => {
                format!("count {v}")
            }
            MetricKind::Gauge => format!("last {v}"),
            MetricKind::Empty => String::new(),
        }
    }
}

fn number_text(v: f64) -> String {
    if v == v.trunc() && v.abs() < 1e15 {
        format!("{v:.0}")
    } else if v.abs() >= 0.01 {
        format!("{v:.3}")
    } else {
        format!("{v:.3e}")
    }
}

/// The example trace [`OtlpStats`] keeps: every span of one invocation's trace.
#[derive(Debug, Clone, Default)]
pub struct ExampleTrace {
    /// Its trace id.
    pub trace_id: Vec<u8>,
    /// The invocation (`faas.invocation_id` of its SERVER span).
    pub request_id: String,
    /// The resource of its spans.
    pub resource: Resource,
    /// Its spans, in arrival order.
    pub spans: Vec<Span>,
}

/// Spans kept for the example trace (a trace of a Lambda invocation has five).
const EXAMPLE_SPANS: usize = 64;
/// Root spans without an invocation (init, restore) kept as link targets.
const LINK_TARGETS: usize = 16;
/// Decode errors kept as text.
const ERRORS_KEPT: usize = 5;
/// Invocations and log records tracked for the join checks ([`OtlpStats::joins`]); beyond
/// this a long run is not checked (and says so).
const JOINS_TRACKED: usize = 200_000;

/// Whether each invocation got one span, and each log record naming an invocation is on that
/// invocation's trace ([`OtlpStats::joins`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Joins {
    /// Invocations (`faas.invocation_id` of SERVER spans) seen.
    pub invocations: usize,
    /// Those with more than one SERVER span.
    pub invocations_with_several_spans: usize,
    /// Log records naming an invocation (`faas.invocation_id`).
    pub logs: usize,
    /// Those carrying the trace id of that invocation's span.
    pub logs_on_their_trace: usize,
    /// Those carrying another trace id, or none.
    pub logs_on_another_trace: usize,
    /// Those naming an invocation no span was received for.
    pub logs_of_unknown_invocations: usize,
    /// More than the tracked number: the counts cover only the first part of the run.
    pub truncated: bool,
}

impl Joins {
    /// One span per invocation and every log record on its invocation's trace.
    pub fn ok(&self) -> bool {
        self.invocations_with_several_spans == 0
            && self.logs_on_another_trace == 0
            && self.logs_of_unknown_invocations == 0
    }
}

/// A running summary of what an OTLP receiver got; its memory does not grow with the number of
/// requests (beyond one entry per span and metric name). Feed it with [`add`](Self::add), e.g.
/// with [`RecordingEndpoint::take_requests`](super::RecordingEndpoint::take_requests) now and
/// then during a long run.
#[derive(Debug, Clone, Default)]
pub struct OtlpStats {
    /// Accepted POSTs per signal.
    pub requests: BTreeMap<Signal, usize>,
    /// Body encodings seen: `protobuf`, `json`, with `+gzip`.
    pub encodings: BTreeSet<String>,
    /// Requests to other paths, other methods, or answered with an error status.
    pub other_requests: usize,
    /// Accepted requests whose body could not be decoded.
    pub undecodable: usize,
    /// The first few decode errors.
    pub errors: Vec<String>,
    /// Spans received.
    pub spans: usize,
    /// Spans per name.
    pub spans_by_name: BTreeMap<String, usize>,
    /// Spans with status ERROR per name.
    pub error_spans_by_name: BTreeMap<String, usize>,
    /// Metric data received (one per metric per export).
    pub metric_points: usize,
    /// Metrics per name.
    pub metrics: BTreeMap<String, MetricSummary>,
    /// Log records received.
    pub log_records: usize,
    /// Those carrying a trace id.
    pub logs_with_trace: usize,
    /// Those per severity text (else the name of the severity number, see [`severity_name`]).
    pub logs_by_severity: BTreeMap<String, usize>,
    /// The first invocation's trace.
    pub example: Option<ExampleTrace>,
    /// SERVER spans without an invocation id (init, restore): what an invocation's span links to.
    pub link_targets: Vec<Span>,
    /// Per invocation id: its SERVER spans and the first one's trace id.
    invocation_traces: HashMap<String, (usize, Vec<u8>)>,
    /// Log records naming an invocation: (invocation id, trace id).
    log_traces: Vec<(String, Vec<u8>)>,
    /// The latest cumulative value per metric name and resource.
    cumulative_by_source: HashMap<(String, String), f64>,
    /// Whether some resources' cumulative values were left out of the totals (too many).
    pub metric_sources_truncated: bool,
    joins_truncated: bool,
}

impl OtlpStats {
    /// An empty summary.
    pub fn new() -> OtlpStats {
        OtlpStats::default()
    }

    /// Adds requests (in arrival order).
    pub fn add(&mut self, requests: &[RecordedRequest]) {
        for r in requests {
            self.add_request(r);
        }
    }

    fn decode_failed(&mut self, signal: Signal, e: DecodeError) {
        self.undecodable += 1;
        if self.errors.len() < ERRORS_KEPT {
            self.errors.push(format!("{}: {e}", signal.name()));
        }
    }

    /// Adds one request.
    pub fn add_request(&mut self, request: &RecordedRequest) {
        let signal = match Signal::of(request) {
            Some(s) if request.method == "POST" && request.succeeded() => s,
            _ => {
                self.other_requests += 1;
                return;
            }
        };
        *self.requests.entry(signal).or_insert(0) += 1;
        let mut encoding = if is_json(request) { "json" } else { "protobuf" }.to_string();
        if is_gzip(request) {
            encoding.push_str("+gzip");
        }
        self.encodings.insert(encoding);
        match signal {
            Signal::Traces => match decode::<ExportTraceServiceRequest>(request) {
                Ok(req) => self.add_spans(flat_spans(req).collect()),
                Err(e) => self.decode_failed(signal, e),
            },
            Signal::Metrics => match decode::<ExportMetricsServiceRequest>(request) {
                Ok(req) => self.add_metrics(flat_metrics(req)),
                Err(e) => self.decode_failed(signal, e),
            },
            Signal::Logs => match decode::<ExportLogsServiceRequest>(request) {
                Ok(req) => {
                    for (_, l) in flat_logs(req) {
                        self.log_records += 1;
                        if let Some(id) = attr_str(&l.attributes, "faas.invocation_id") {
                            if self.log_traces.len() < JOINS_TRACKED {
                                self.log_traces.push((id.to_string(), l.trace_id.clone()));
                            } else {
                                self.joins_truncated = true;
                            }
                        }
                        if !l.trace_id.is_empty() && l.trace_id.iter().any(|b| *b != 0) {
                            self.logs_with_trace += 1;
                        }
                        let severity = if l.severity_text.is_empty() {
                            severity_name(l.severity_number).to_string()
                        } else {
                            l.severity_text
                        };
                        *self.logs_by_severity.entry(severity).or_insert(0) += 1;
                    }
                }
                Err(e) => self.decode_failed(signal, e),
            },
        }
    }

    /// Adds the spans of one export.
    pub fn add_spans(&mut self, spans: Vec<(Resource, Span)>) {
        let is_server = |s: &Span| s.kind == span::SpanKind::Server as i32;
        if self.example.is_none() {
            // The earliest invocation span of the first export that has one.
            let first = spans
                .iter()
                .filter(|(_, s)| {
                    is_server(s) && attr_str(&s.attributes, "faas.invocation_id").is_some()
                })
                .min_by_key(|(_, s)| s.start_time_unix_nano);
            if let Some((resource, s)) = first {
                self.example = Some(ExampleTrace {
                    trace_id: s.trace_id.clone(),
                    request_id: attr_str(&s.attributes, "faas.invocation_id")
                        .unwrap_or_default()
                        .to_string(),
                    resource: resource.clone(),
                    spans: Vec::new(),
                });
            }
        }
        for (_, s) in spans {
            self.spans += 1;
            *self.spans_by_name.entry(s.name.clone()).or_insert(0) += 1;
            if is_error(&s) {
                *self.error_spans_by_name.entry(s.name.clone()).or_insert(0) += 1;
            }
            if is_server(&s)
                && attr_str(&s.attributes, "faas.invocation_id").is_none()
                && self.link_targets.len() < LINK_TARGETS
            {
                self.link_targets.push(s.clone());
            }
            if let Some(id) =
                attr_str(&s.attributes, "faas.invocation_id").filter(|_| is_server(&s))
            {
                let tracked = self.invocation_traces.len();
                match self.invocation_traces.get_mut(id) {
                    Some(entry) => entry.0 += 1,
                    None if tracked < JOINS_TRACKED => {
                        self.invocation_traces
                            .insert(id.to_string(), (1, s.trace_id.clone()));
                    }
                    None => self.joins_truncated = true,
                }
            }
            if let Some(ex) = self.example.as_mut() {
                if ex.trace_id == s.trace_id && ex.spans.len() < EXAMPLE_SPANS {
                    ex.spans.push(s);
                }
            }
        }
    }

    /// Adds the metrics of one export.
    pub fn add_metrics(&mut self, metrics: impl IntoIterator<Item = (Resource, Metric)>) {
        // Values of this export per name and resource (a name may come in several scopes).
        type Key = (String, String);
        let mut export: BTreeMap<Key, (MetricKind, Option<bool>, f64, String)> = BTreeMap::new();
        for (resource, m) in metrics {
            self.metric_points += 1;
            let (kind, delta, value) = metric_value(&m);
            let source = format!("{:?}", resource.attributes);
            let e = export
                .entry((m.name, source))
                .or_insert((kind, delta, 0.0, m.unit.clone()));
            e.2 = if kind == MetricKind::Gauge {
                e.2.max(value)
            } else {
                e.2 + value
            };
        }
        let mut counted = BTreeSet::new();
        for ((name, source), (kind, delta, value, unit)) in export {
            let s = self.metrics.entry(name.clone()).or_insert(MetricSummary {
                unit,
                kind,
                delta,
                exports: 0,
                value: 0.0,
            });
            if counted.insert(name.clone()) {
                s.exports += 1;
            }
            s.value = match (kind, delta) {
                (_, Some(true)) => s.value + value,
                (MetricKind::Gauge, _) => value,
                // Cumulative: each resource (a fleet's environment) has its own running total;
                // the summary is their sum, each resource's latest value counted once.
                _ => {
                    let tracked = self.cumulative_by_source.len();
                    let key = (name, source);
                    match self.cumulative_by_source.get_mut(&key) {
                        Some(previous) => {
                            let before = std::mem::replace(previous, value);
                            s.value + value - before
                        }
                        None if tracked < JOINS_TRACKED => {
                            self.cumulative_by_source.insert(key, value);
                            s.value + value
                        }
                        None => {
                            // Beyond what is tracked: this resource's value is left out (said
                            // in the summary) rather than taken for the fleet's.
                            self.metric_sources_truncated = true;
                            s.value
                        }
                    }
                }
            };
        }
    }

    /// Spans per invocation and log records against their invocations' traces, over what was
    /// added so far.
    pub fn joins(&self) -> Joins {
        let mut joins = Joins {
            invocations: self.invocation_traces.len(),
            invocations_with_several_spans: self
                .invocation_traces
                .values()
                .filter(|(n, _)| *n > 1)
                .count(),
            logs: self.log_traces.len(),
            truncated: self.joins_truncated,
            ..Joins::default()
        };
        for (id, trace) in &self.log_traces {
            match self.invocation_traces.get(id) {
                Some((_, span_trace)) if span_trace == trace => joins.logs_on_their_trace += 1,
                Some(_) => joins.logs_on_another_trace += 1,
                None => joins.logs_of_unknown_invocations += 1,
            }
        }
        joins
    }

    /// The example trace as an indented tree (see [`render_trace`]); empty without one.
    pub fn example_tree(&self) -> Vec<String> {
        match &self.example {
            Some(ex) => render_trace(&ex.spans, &self.link_targets),
            None => Vec::new(),
        }
    }

    /// Total accepted requests.
    pub fn total_requests(&self) -> usize {
        self.requests.values().sum()
    }

    /// The summary as lines (no trailing newline), labels padded to `width`.
    pub fn render(&self, width: usize) -> Vec<String> {
        let mut out = Vec::new();
        let per_signal = Signal::ALL
            .iter()
            .map(|s| {
                format!(
                    "{} {}",
                    s.name(),
                    self.requests.get(s).copied().unwrap_or(0)
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        let encodings = if self.encodings.is_empty() {
            String::new()
        } else {
            format!(
                "  ({})",
                self.encodings
                    .iter()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        out.push(format!(
            "{:<width$} {per_signal}{encodings}",
            "  OTLP requests"
        ));
        if self.undecodable > 0 {
            out.push(format!(
                "{:<width$} {}",
                "  UNDECODABLE requests", self.undecodable
            ));
            for e in &self.errors {
                out.push(format!("    - {e}"));
            }
        }
        if self.other_requests > 0 {
            out.push(format!(
                "{:<width$} {}",
                "  other requests (ignored)", self.other_requests
            ));
        }
        out.push(format!("{:<width$} {:>6}", "  spans", self.spans));
        for (name, n) in &self.spans_by_name {
            let errors = match self.error_spans_by_name.get(name) {
                Some(e) => format!("  ({e} with status ERROR)"),
                None => String::new(),
            };
            out.push(format!("{:<width$} {n:>6}{errors}", format!("    {name}")));
        }
        out.push(format!(
            "{:<width$} {:>6}  ({} data sets)",
            "  metric names",
            self.metrics.len(),
            self.metric_points
        ));
        if self.metric_sources_truncated {
            out.push(format!(
                "    (cumulative totals cover the first {JOINS_TRACKED} metric sources only)"
            ));
        }
        let name_width = self.metrics.keys().map(String::len).max().unwrap_or(0);
        let unit_width = self
            .metrics
            .values()
            .map(|m| m.unit.len())
            .max()
            .unwrap_or(0);
        let type_width = self
            .metrics
            .values()
            .map(|m| m.type_text().len())
            .max()
            .unwrap_or(0);
        for (name, m) in &self.metrics {
            let unit = if m.unit.is_empty() { "-" } else { &m.unit };
            out.push(
                format!(
                    "    {name:<name_width$}  {unit:<unit_width$}  {:<type_width$}  {}",
                    m.type_text(),
                    m.value_text()
                )
                .trim_end()
                .to_string(),
            );
        }
        let severities = self
            .logs_by_severity
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ");
        out.push(format!(
            "{:<width$} {:>6}  ({} with a trace id{}{severities})",
            "  log records",
            self.log_records,
            self.logs_with_trace,
            if severities.is_empty() { "" } else { "; " }
        ));
        let joins = self.joins();
        if joins.invocations > 0 {
            out.push(format!(
                "{:<width$} {:>6}  ({} with more than one span{})",
                "  invocation spans",
                joins.invocations,
                joins.invocations_with_several_spans,
                if joins.truncated {
                    "; only the first part of the run is checked"
                } else {
                    ""
                }
            ));
        }
        if joins.logs > 0 {
            out.push(format!(
                "{:<width$} {:>6}  of {} naming one ({} on another trace, {} of an invocation without span)",
                "  logs on their invocation",
                joins.logs_on_their_trace,
                joins.logs,
                joins.logs_on_another_trace,
                joins.logs_of_unknown_invocations
            ));
        }
        match &self.example {
            Some(ex) => {
                let service = ex
                    .resource
                    .attributes
                    .iter()
                    .find(|kv| kv.key == "service.name")
                    .and_then(|kv| kv.value.as_ref())
                    .and_then(|v| v.value.as_ref())
                    .map(value_text)
                    .unwrap_or_else(|| "-".into());
                out.push(format!(
                    "  example trace {} (request {}, service.name {service})",
                    hex(&ex.trace_id),
                    ex.request_id
                ));
                for line in self.example_tree() {
                    out.push(format!("    {line}"));
                }
            }
            None => {
                out.push("  example trace                  - (no invocation span received)".into())
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::time::Instant;

    use opentelemetry_proto::tonic::logs::v1::{ResourceLogs, ScopeLogs};
    use opentelemetry_proto::tonic::metrics::v1::{
        NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum,
    };
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Status};
    use prost::Message;

    use super::*;

    fn kv(key: &str, value: any_value::Value) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue { value: Some(value) }),
            ..Default::default()
        }
    }

    fn s(v: &str) -> any_value::Value {
        any_value::Value::StringValue(v.into())
    }

    fn mk_span(
        name: &str,
        id: u8,
        parent: Option<u8>,
        trace: u8,
        start_ms: u64,
        dur_ms: u64,
    ) -> Span {
        Span {
            trace_id: vec![trace; 16],
            span_id: vec![id; 8],
            parent_span_id: parent.map(|p| vec![p; 8]).unwrap_or_default(),
            name: name.into(),
            kind: if parent.is_none() {
                span::SpanKind::Server as i32
            } else {
                span::SpanKind::Internal as i32
            },
            start_time_unix_nano: start_ms * 1_000_000,
            end_time_unix_nano: (start_ms + dur_ms) * 1_000_000,
            ..Default::default()
        }
    }

    fn trace_request() -> ExportTraceServiceRequest {
        let init = Span {
            attributes: vec![kv("aws.lambda.initialization_type", s("on-demand"))],
            ..mk_span("fn init", 9, None, 7, 0, 120)
        };
        let mut server = Span {
            attributes: vec![
                kv("faas.invocation_id", s("req-1")),
                kv("faas.coldstart", any_value::Value::BoolValue(true)),
            ],
            status: Some(Status {
                code: status::StatusCode::Error as i32,
                message: "Error".into(),
            }),
            ..mk_span("fn", 1, Some(42), 1, 200, 10)
        };
        server.kind = span::SpanKind::Server as i32;
        server.links.push(span::Link {
            trace_id: vec![7; 16],
            span_id: vec![9; 8],
            attributes: vec![kv("aws.lambda.link", s("init"))],
            ..Default::default()
        });
        let later = Span {
            attributes: vec![kv("faas.invocation_id", s("req-2"))],
            kind: span::SpanKind::Server as i32,
            ..mk_span("fn", 5, None, 2, 300, 10)
        };
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![kv("service.name", s("fn"))],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    spans: vec![
                        init,
                        later,
                        mk_span("responseDuration", 3, Some(1), 1, 208, 1),
                        server,
                        mk_span("responseLatency", 2, Some(1), 1, 200, 8),
                    ],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    fn request(path: &str, content_type: &str, gzip: bool, body: Vec<u8>) -> RecordedRequest {
        let mut headers = vec![("content-type".to_string(), content_type.to_string())];
        let body = if gzip {
            headers.push(("content-encoding".into(), "gzip".into()));
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            enc.write_all(&body).unwrap_or_default();
            enc.finish().unwrap_or_default()
        } else {
            body
        };
        RecordedRequest {
            method: "POST".into(),
            path: path.into(),
            headers,
            body,
            arrived_at: Instant::now(),
            answered_at: Instant::now(),
            status: 200,
        }
    }

    fn sum_request(value: i64, delta: bool) -> ExportMetricsServiceRequest {
        ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                scope_metrics: vec![ScopeMetrics {
                    metrics: vec![Metric {
                        name: "faas.invocations".into(),
                        unit: "{invocation}".into(),
                        data: Some(metric::Data::Sum(Sum {
                            data_points: vec![NumberDataPoint {
                                value: Some(number_data_point::Value::AsInt(value)),
                                ..Default::default()
                            }],
                            aggregation_temporality: if delta {
                                AggregationTemporality::Delta as i32
                            } else {
                                AggregationTemporality::Cumulative as i32
                            },
                            is_monotonic: true,
                        })),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    #[test]
    fn decodes_protobuf_json_and_gzip() -> Result<(), String> {
        let req = trace_request();
        let json = serde_json::to_vec(&req).map_err(|e| e.to_string())?;
        let requests = vec![
            request(
                "/v1/traces",
                "application/x-protobuf",
                false,
                req.encode_to_vec(),
            ),
            request(
                "/v1/traces",
                "application/x-protobuf",
                true,
                req.encode_to_vec(),
            ),
            request("/prefix/v1/traces", "application/json", true, json),
            request(
                "/v1/metrics",
                "application/x-protobuf",
                false,
                sum_request(3, false).encode_to_vec(),
            ),
            request(
                "/v1/traces",
                "application/x-protobuf",
                false,
                b"\xff\xff".to_vec(),
            ),
        ];
        let spans = decode_traces(&requests);
        assert_eq!(spans.len(), 15);
        assert!(spans
            .iter()
            .all(|(r, _)| attr_str(&r.attributes, "service.name") == Some("fn")));
        assert_eq!(decode_metrics(&requests).len(), 1);
        assert!(decode_logs(&requests).is_empty());
        assert!(matches!(
            decode::<ExportTraceServiceRequest>(&requests[4]),
            Err(DecodeError::Protobuf(_))
        ));
        let mut bad_gzip = request("/v1/traces", "application/x-protobuf", false, vec![1, 2]);
        bad_gzip
            .headers
            .push(("content-encoding".into(), "gzip".into()));
        assert!(matches!(
            decode::<ExportTraceServiceRequest>(&bad_gzip),
            Err(DecodeError::Gzip(_))
        ));
        Ok(())
    }

    fn lines_contain(stats: &OtlpStats, text: &str) -> bool {
        stats.render(30).iter().any(|l| l.contains(text))
    }

    #[test]
    fn stats_and_tree() {
        let logs = ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                scope_logs: vec![ScopeLogs {
                    log_records: vec![
                        LogRecord {
                            severity_text: "INFO".into(),
                            trace_id: vec![1; 16],
                            ..Default::default()
                        },
                        LogRecord::default(),
                    ],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let requests = vec![
            request(
                "/v1/traces",
                "application/x-protobuf",
                false,
                trace_request().encode_to_vec(),
            ),
            request(
                "/v1/metrics",
                "application/x-protobuf",
                false,
                sum_request(3, false).encode_to_vec(),
            ),
            request(
                "/v1/metrics",
                "application/x-protobuf",
                false,
                sum_request(5, false).encode_to_vec(),
            ),
            request(
                "/v1/logs",
                "application/x-protobuf",
                true,
                logs.encode_to_vec(),
            ),
            request("/other", "text/plain", false, Vec::new()),
        ];
        let mut stats = OtlpStats::new();
        stats.add(&requests);
        // A later export adds the extensionOverhead child to the example trace.
        stats.add_spans(vec![(
            Resource::default(),
            mk_span("extensionOverhead", 4, Some(1), 1, 210, 2),
        )]);
        assert_eq!(stats.total_requests(), 4);
        assert_eq!(stats.other_requests, 1);
        assert_eq!(stats.spans, 6);
        assert_eq!(stats.spans_by_name.get("fn"), Some(&2));
        assert_eq!(stats.error_spans_by_name.get("fn"), Some(&1));
        let m = stats.metrics.get("faas.invocations");
        assert_eq!(m.map(|m| (m.value, m.exports)), Some((5.0, 2)));
        assert_eq!(
            m.map(MetricSummary::type_text).as_deref(),
            Some("counter (cumulative)")
        );
        assert_eq!((stats.log_records, stats.logs_with_trace), (2, 1));
        assert!(lines_contain(
            &stats,
            "(1 with a trace id; INFO 1, no severity 1)"
        ));
        let ex = stats.example.as_ref().map(|e| e.request_id.as_str());
        assert_eq!(ex, Some("req-1"));
        let tree = stats.example_tree();
        assert_eq!(tree.len(), 5, "{tree:#?}");
        assert!(
            tree[0].starts_with("fn  10.00 ms  SERVER  status ERROR(\"Error\")"),
            "{tree:#?}"
        );
        assert!(tree[0].contains("faas.coldstart=true"));
        assert!(tree[1].starts_with("├─ link (init) -> fn init  120.00 ms"));
        assert!(tree[1].contains("aws.lambda.initialization_type=on-demand"));
        assert_eq!(tree[2], "├─ responseLatency  8.00 ms");
        assert!(tree[3].starts_with("├─ responseDuration"));
        assert!(tree[4].starts_with("└─ extensionOverhead  2.00 ms"));
        let lines = stats.render(32).join("\n");
        assert!(
            lines.contains("traces 1, metrics 2, logs 1  (protobuf, protobuf+gzip)"),
            "{lines}"
        );
        assert!(
            lines.contains("faas.invocations  {invocation}  counter (cumulative)  total 5"),
            "{lines}"
        );
        assert!(
            lines.contains(
                "example trace 01010101010101010101010101010101 (request req-1, service.name fn)"
            ),
            "{lines}"
        );

        let mut delta = OtlpStats::new();
        delta.add_metrics(super::flat_metrics(sum_request(3, true)));
        delta.add_metrics(super::flat_metrics(sum_request(5, true)));
        assert_eq!(
            delta.metrics.get("faas.invocations").map(|m| m.value),
            Some(8.0)
        );
    }
}
