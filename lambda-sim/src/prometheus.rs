//! What the OpenTelemetry Collector's `prometheus` exporter (as `deploy/otel-collector.yaml`
//! configures it) makes of OTLP metrics, for tests that cannot run the collector: its naming
//! rules (OTLP name and unit → Prometheus name, attribute key → label; the collector's default
//! `UnderscoreEscapingWithSuffixes`, github.com/prometheus/otlptranslator) and its exposition
//! ([`Exposition`]): one series per metric, resource attributes
//! (`resource_to_telemetry_conversion`), scope and point attributes; the latest cumulative point
//! of each; a series not updated within `metric_expiration` is no longer exposed.
//! [`ExpositionServer`] serves it at `/metrics` for a real Prometheus to scrape.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::routing::get;
use axum::Router;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::metrics::v1::{
    metric::Data, AggregationTemporality, Metric, NumberDataPoint,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use tokio::task::JoinHandle;

use super::otlp_receiver::{self, decode, number_value, value_text, Signal};
use super::{RecordedRequest, SimError};

/// The kind of a Prometheus metric family, as the collector maps OTLP metrics to them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A gauge.
    Gauge,
    /// A monotonic sum.
    Counter,
    /// A non-monotonic sum.
    UpDownCounter,
    /// An explicit-bucket histogram.
    Histogram,
    /// A summary.
    Summary,
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == ':'
}

/// Prometheus unit word of an OTLP (UCUM) unit; an unknown unit is kept as it is.
fn unit_word(unit: &str) -> String {
    let mapped = match unit {
        "d" => "days",
        "h" => "hours",
        "min" => "minutes",
        "s" => "seconds",
        "ms" => "milliseconds",
        "us" => "microseconds",
        "ns" => "nanoseconds",
        "By" => "bytes",
        "KiBy" => "kibibytes",
        "MiBy" => "mebibytes",
        "GiBy" => "gibibytes",
        "TiBy" => "tibibytes",
        "KBy" => "kilobytes",
        "MBy" => "megabytes",
        "GBy" => "gigabytes",
        "TBy" => "terabytes",
        "m" => "meters",
        "V" => "volts",
        "A" => "amperes",
        "J" => "joules",
        "W" => "watts",
        "g" => "grams",
        "Cel" => "celsius",
        "Hz" => "hertz",
        "1" => "",
        "%" => "percent",
        other => other,
    };
    mapped.to_string()
}

fn per_unit_word(unit: &str) -> String {
    let mapped = match unit {
        "s" => "second",
        "m" => "minute",
        "h" => "hour",
        "d" => "day",
        "w" => "week",
        "mo" => "month",
        "y" => "year",
        other => other,
    };
    mapped.to_string()
}

/// Invalid characters become `_`, runs of `_` collapse, a leading `_` goes.
fn clean_unit(unit: &str) -> String {
    let mut out = String::new();
    for c in unit.chars() {
        let c = if is_name_char(c) { c } else { '_' };
        if c == '_' && out.ends_with('_') {
            continue;
        }
        out.push(c);
    }
    out.strip_prefix('_').map(str::to_string).unwrap_or(out)
}

/// `s` → (`seconds`, ``); `By/s` → (`bytes`, `per_second`); `{invocation}` → (``, ``).
fn unit_suffixes(unit: &str) -> (String, String) {
    let mut parts = unit.splitn(2, '/');
    let main = parts.next().unwrap_or("").trim();
    let main = if main.is_empty() || main.contains(['{', '}']) {
        String::new()
    } else {
        unit_word(main)
    };
    let per = match parts.next().map(str::trim) {
        Some(p) if !p.is_empty() && !p.contains(['{', '}']) => format!("per_{}", per_unit_word(p)),
        _ => String::new(),
    };
    (clean_unit(&main), clean_unit(&per))
}

/// The Prometheus name of an OTLP metric (the `UnderscoreEscapingWithSuffixes` strategy, the
/// collector's default): name split into words at every character other than `[A-Za-z0-9:]`,
/// the unit's word appended unless already one of the words, `_total` for counters, `_ratio` for
/// gauges of unit `1`.
pub fn prometheus_name(name: &str, unit: &str, kind: Kind) -> String {
    let mut words: Vec<String> = name
        .split(|c: char| !is_name_char(c))
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect();
    let (mut main, mut per) = unit_suffixes(unit);
    if words.contains(&main) {
        main.clear();
    }
    if per == "per_" {
        per.clear();
    } else {
        if let Some(p) = per.strip_suffix('_') {
            per = p.to_string();
        }
        if words.contains(&per) {
            per.clear();
        }
    }
    if !per.is_empty() {
        if let Some(m) = main.strip_suffix('_') {
            main = m.to_string();
        }
    }
    for suffix in [main, per] {
        if !suffix.is_empty() {
            words.push(suffix);
        }
    }
    if kind == Kind::Counter {
        words.retain(|w| w != "total");
        words.push("total".into());
    }
    if unit == "1" && kind == Kind::Gauge {
        words.retain(|w| w != "ratio");
        words.push("ratio".into());
    }
    let joined = words.join("_");
    if joined.starts_with(|c: char| c.is_ascii_digit()) {
        format!("_{joined}")
    } else {
        joined
    }
}

/// The Prometheus label name of an attribute key (invalid characters become `_`).
pub fn label_name(key: &str) -> String {
    let name: String = key
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if name.starts_with(|c: char| c.is_ascii_digit()) {
        format!("key_{name}")
    } else {
        name
    }
}

/// The value of one exposed series.
#[derive(Debug, Clone, PartialEq)]
enum Value {
    Number(f64),
    Histogram {
        bounds: Vec<f64>,
        counts: Vec<u64>,
        sum: f64,
        count: u64,
    },
}

impl Value {
    /// `other` added to this (delta points of one stream).
    fn add(&mut self, other: &Value) {
        match (self, other) {
            (Value::Number(a), Value::Number(b)) => *a += b,
            (
                Value::Histogram {
                    bounds,
                    counts,
                    sum,
                    count,
                },
                Value::Histogram {
                    bounds: other_bounds,
                    counts: other_counts,
                    sum: other_sum,
                    count: other_count,
                },
            ) if bounds == other_bounds && counts.len() == other_counts.len() => {
                for (c, o) in counts.iter_mut().zip(other_counts) {
                    *c += o;
                }
                *sum += other_sum;
                *count += other_count;
            }
            (this, other) => *this = other.clone(),
        }
    }
}

/// One series as the exporter keeps it.
#[derive(Debug, Clone)]
struct Series {
    family: String,
    kind: Kind,
    labels: BTreeMap<String, String>,
    value: Value,
    start_unix_nano: u64,
    time_unix_nano: u64,
    received: Instant,
}

/// The exporter's state: the latest point of every series it was sent.
#[derive(Debug, Clone, Default)]
pub struct Exposition {
    series: BTreeMap<String, Series>,
}

impl Exposition {
    /// Nothing received yet.
    pub fn new() -> Exposition {
        Exposition::default()
    }

    /// The metrics of every accepted `/v1/metrics` request, received when it arrived.
    pub fn add_requests(&mut self, requests: &[RecordedRequest]) {
        for request in otlp_receiver::accepted(requests, Signal::Metrics) {
            let Ok(export) = decode::<ExportMetricsServiceRequest>(request) else {
                continue;
            };
            for rm in export.resource_metrics {
                let resource = rm.resource.unwrap_or_default();
                for sm in rm.scope_metrics {
                    let scope = sm.scope.unwrap_or_default();
                    let scope_labels = [
                        ("otel_scope_name".to_string(), scope.name),
                        ("otel_scope_version".to_string(), scope.version),
                    ];
                    for metric in &sm.metrics {
                        self.add(&resource, &scope_labels, metric, request.arrived_at);
                    }
                }
            }
        }
    }

    /// One metric of a resource, received at `received`.
    fn add(
        &mut self,
        resource: &Resource,
        scope: &[(String, String)],
        metric: &Metric,
        received: Instant,
    ) {
        let mut base: BTreeMap<String, String> = labels(&resource.attributes);
        base.extend(scope.iter().filter(|(_, v)| !v.is_empty()).cloned());
        let attr = |kv: &str| {
            resource
                .attributes
                .iter()
                .find(|a| a.key == kv)
                .and_then(|a| a.value.as_ref())
                .and_then(|v| v.value.as_ref())
                .map(value_text)
        };
        // The exporter names the job after the service and the instance after its instance id.
        if let Some(service) = attr("service.name") {
            base.insert("job".into(), service);
        }
        if let Some(instance) = attr("service.instance.id") {
            base.insert("instance".into(), instance);
        }
        // One point: its attributes, value, start and time.
        type Point<'m> = (&'m [KeyValue], Value, u64, u64);
        fn number(p: &NumberDataPoint) -> Point<'_> {
            let value = Value::Number(number_value(p));
            (
                &p.attributes,
                value,
                p.start_time_unix_nano,
                p.time_unix_nano,
            )
        }
        let is_delta = |temporality: i32| temporality == AggregationTemporality::Delta as i32;
        let (kind, delta, points): (Kind, bool, Vec<Point<'_>>) = match &metric.data {
            Some(Data::Gauge(g)) => (
                Kind::Gauge,
                false,
                g.data_points.iter().map(number).collect(),
            ),
            Some(Data::Sum(s)) => (
                if s.is_monotonic {
                    Kind::Counter
                } else {
                    Kind::UpDownCounter
                },
                is_delta(s.aggregation_temporality),
                s.data_points.iter().map(number).collect(),
            ),
            Some(Data::Histogram(h)) => (
                Kind::Histogram,
                is_delta(h.aggregation_temporality),
                h.data_points
                    .iter()
                    .map(|p| {
                        let value = Value::Histogram {
                            bounds: p.explicit_bounds.clone(),
                            counts: p.bucket_counts.clone(),
                            sum: p.sum.unwrap_or(0.0),
                            count: p.count,
                        };
                        (
                            &p.attributes[..],
                            value,
                            p.start_time_unix_nano,
                            p.time_unix_nano,
                        )
                    })
                    .collect(),
            ),
            _ => return,
        };
        let family = prometheus_name(&metric.name, &metric.unit, kind);
        for (attributes, value, start, time) in points {
            let mut series_labels = base.clone();
            series_labels.extend(labels(attributes));
            let key = format!("{family}{series_labels:?}");
            match self.series.get_mut(&key) {
                Some(series) if time < series.time_unix_nano => {} // an older point: ignored
                Some(series) if delta && start == series.time_unix_nano => {
                    // A delta that continues the stored one: added (the exporter's accumulator).
                    series.value.add(&value);
                    series.time_unix_nano = time;
                    series.received = received;
                }
                Some(series) => {
                    series.value = value;
                    series.start_unix_nano = start;
                    series.time_unix_nano = time;
                    series.received = received;
                }
                None => {
                    self.series.insert(
                        key,
                        Series {
                            family: family.clone(),
                            kind,
                            labels: series_labels,
                            value,
                            start_unix_nano: start,
                            time_unix_nano: time,
                            received,
                        },
                    );
                }
            }
        }
    }

    /// The series updated within `expiration` before `now` (the exporter's `metric_expiration`).
    fn live(&self, now: Instant, expiration: Duration) -> impl Iterator<Item = &Series> {
        self.series
            .values()
            .filter(move |s| now.saturating_duration_since(s.received) <= expiration)
    }

    /// How many sample lines the exposition has now (a histogram's buckets, sum and count each
    /// count): what a scrape stores as series.
    pub fn series_count(&self, now: Instant, expiration: Duration) -> usize {
        self.live(now, expiration)
            .map(|s| match &s.value {
                Value::Number(_) => 1,
                Value::Histogram { bounds, .. } => bounds.len() + 3,
            })
            .sum()
    }

    /// How many series were ever exposed (what the exposition would hold without expiration).
    pub fn series_ever(&self) -> usize {
        self.series
            .values()
            .map(|s| match &s.value {
                Value::Number(_) => 1,
                Value::Histogram { bounds, .. } => bounds.len() + 3,
            })
            .sum()
    }

    /// The text exposition format, as a scrape at `now` gets it.
    pub fn render(&self, now: Instant, expiration: Duration) -> String {
        let mut families: BTreeMap<&str, Vec<&Series>> = BTreeMap::new();
        for series in self.live(now, expiration) {
            families.entry(&series.family).or_default().push(series);
        }
        let mut out = String::new();
        for (family, members) in families {
            let kind = match members[0].kind {
                Kind::Counter => "counter",
                Kind::Histogram => "histogram",
                Kind::Summary => "summary",
                Kind::Gauge | Kind::UpDownCounter => "gauge",
            };
            let _ = writeln!(out, "# TYPE {family} {kind}");
            for series in members {
                match &series.value {
                    Value::Number(v) => line(&mut out, family, &series.labels, None, *v),
                    Value::Histogram {
                        bounds,
                        counts,
                        sum,
                        count,
                    } => {
                        let bucket = format!("{family}_bucket");
                        let mut cumulative = 0u64;
                        for (i, bound) in bounds.iter().enumerate() {
                            cumulative += counts.get(i).copied().unwrap_or(0);
                            let le = format_value(*bound);
                            line(
                                &mut out,
                                &bucket,
                                &series.labels,
                                Some(&le),
                                cumulative as f64,
                            );
                        }
                        line(
                            &mut out,
                            &bucket,
                            &series.labels,
                            Some("+Inf"),
                            *count as f64,
                        );
                        line(
                            &mut out,
                            &format!("{family}_sum"),
                            &series.labels,
                            None,
                            *sum,
                        );
                        line(
                            &mut out,
                            &format!("{family}_count"),
                            &series.labels,
                            None,
                            *count as f64,
                        );
                    }
                }
            }
        }
        out
    }
}

fn labels(attributes: &[KeyValue]) -> BTreeMap<String, String> {
    attributes
        .iter()
        .filter_map(|kv| {
            let value = kv.value.as_ref()?.value.as_ref()?;
            Some((label_name(&kv.key), value_text(value)))
        })
        .collect()
}

fn format_value(v: f64) -> String {
    if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.to_string()
    } else {
        format!("{v}")
    }
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn line(out: &mut String, name: &str, labels: &BTreeMap<String, String>, le: Option<&str>, v: f64) {
    let mut pairs: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect();
    if let Some(le) = le {
        pairs.push(format!("le=\"{le}\""));
    }
    let _ = writeln!(out, "{name}{{{}}} {}", pairs.join(","), format_value(v));
}

/// Serves a text exposition at `http://127.0.0.1:<port>/metrics`, rendered at every scrape by
/// `render` (e.g. [`Exposition::render`] of what an OTLP receiver recorded so far); stops when
/// dropped.
pub struct ExpositionServer {
    /// Where it listens.
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for ExpositionServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ExpositionServer {
    /// Starts serving.
    pub async fn start(
        render: impl Fn() -> String + Send + Sync + 'static,
    ) -> Result<ExpositionServer, SimError> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .map_err(SimError::Bind)?;
        let addr = listener.local_addr().map_err(SimError::Bind)?;
        let render = Arc::new(render);
        let app = Router::new().route(
            "/metrics",
            get(move || {
                let render = render.clone();
                async move { render() }
            }),
        );
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(ExpositionServer { addr, task })
    }
}

/// What the collector's exporter exposes now for the OTLP metrics in `requests`.
pub fn exposition_of(requests: &[RecordedRequest], expiration: Duration) -> String {
    let mut exposition = Exposition::new();
    exposition.add_requests(requests);
    exposition.render(Instant::now(), expiration)
}

/// The collector's exporter fed by a recording OTLP receiver as it receives: each call takes
/// only what arrived since the last one, so a scrape costs what is new, not the whole run.
pub struct LiveExposition {
    exposition: std::sync::Mutex<(Exposition, usize)>,
    expiration: Duration,
}

impl LiveExposition {
    /// An exporter with `metric_expiration` = `expiration`.
    pub fn new(expiration: Duration) -> LiveExposition {
        LiveExposition {
            exposition: std::sync::Mutex::new((Exposition::new(), 0)),
            expiration,
        }
    }

    /// Adds what `receiver` recorded since the last call, and renders the exposition now.
    pub fn render(&self, receiver: &super::RecordingEndpoint) -> String {
        let mut guard = self.exposition.lock().unwrap_or_else(|e| e.into_inner());
        let (exposition, seen) = &mut *guard;
        let new = receiver.requests_from(*seen);
        *seen += new.len();
        exposition.add_requests(&new);
        exposition.render(Instant::now(), self.expiration)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue};
    use opentelemetry_proto::tonic::metrics::v1::{
        number_data_point, HistogramDataPoint, NumberDataPoint, Sum,
    };

    fn kv(key: &str, value: &str) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(value.into())),
            }),
            ..Default::default()
        }
    }

    fn counter(value: u64, start: u64, time: u64, delta: bool) -> Metric {
        Metric {
            name: "faas.invocations".into(),
            unit: "{invocation}".into(),
            data: Some(Data::Sum(Sum {
                data_points: vec![NumberDataPoint {
                    start_time_unix_nano: start,
                    time_unix_nano: time,
                    value: Some(number_data_point::Value::AsInt(value as i64)),
                    ..Default::default()
                }],
                aggregation_temporality: if delta {
                    AggregationTemporality::Delta
                } else {
                    AggregationTemporality::Cumulative
                } as i32,
                is_monotonic: true,
            })),
            ..Default::default()
        }
    }

    fn resource(instance: &str) -> Resource {
        Resource {
            attributes: vec![kv("faas.name", "f"), kv("faas.instance", instance)],
            ..Default::default()
        }
    }

    #[test]
    fn cumulative_points_replace_and_environments_are_series_of_their_own() {
        let mut e = Exposition::new();
        let now = Instant::now();
        e.add(&resource("a"), &[], &counter(3, 1, 10, false), now);
        e.add(&resource("a"), &[], &counter(5, 1, 20, false), now);
        e.add(&resource("a"), &[], &counter(4, 1, 15, false), now); // older: ignored
        e.add(&resource("b"), &[], &counter(1, 1, 12, false), now);
        let text = e.render(now, Duration::from_secs(60));
        assert!(
            text.contains("# TYPE faas_invocations_total counter"),
            "{text}"
        );
        assert!(
            text.contains(r#"faas_invocations_total{faas_instance="a",faas_name="f"} 5"#),
            "{text}"
        );
        assert!(
            text.contains(r#"faas_invocations_total{faas_instance="b",faas_name="f"} 1"#),
            "{text}"
        );
        assert_eq!(e.series_count(now, Duration::from_secs(60)), 2);
    }

    #[test]
    fn deltas_add_up_only_when_they_chain() {
        let mut e = Exposition::new();
        let now = Instant::now();
        e.add(&resource("a"), &[], &counter(3, 0, 10, true), now);
        e.add(&resource("a"), &[], &counter(2, 10, 20, true), now);
        let text = e.render(now, Duration::from_secs(60));
        assert!(text.contains("} 5\n"), "{text}");
        e.add(&resource("a"), &[], &counter(7, 25, 30, true), now);
        let text = e.render(now, Duration::from_secs(60));
        assert!(
            text.contains("} 7\n"),
            "a delta that does not chain replaces: {text}"
        );
    }

    #[test]
    fn series_not_updated_within_the_expiration_are_not_exposed() {
        let mut e = Exposition::new();
        let then = Instant::now();
        e.add(&resource("a"), &[], &counter(3, 1, 10, false), then);
        let later = then + Duration::from_secs(10);
        assert_eq!(e.series_count(later, Duration::from_secs(5)), 0);
        assert!(!e
            .render(later, Duration::from_secs(5))
            .contains("faas_invocations"));
        assert_eq!(e.series_ever(), 1);
    }

    #[test]
    fn histograms_are_exposed_as_cumulative_buckets() {
        let mut e = Exposition::new();
        let now = Instant::now();
        let metric = Metric {
            name: "faas.invoke_duration".into(),
            unit: "s".into(),
            data: Some(Data::Histogram(
                opentelemetry_proto::tonic::metrics::v1::Histogram {
                    data_points: vec![HistogramDataPoint {
                        time_unix_nano: 5,
                        count: 4,
                        sum: Some(0.5),
                        bucket_counts: vec![1, 2, 1],
                        explicit_bounds: vec![0.1, 0.25],
                        ..Default::default()
                    }],
                    aggregation_temporality: AggregationTemporality::Cumulative as i32,
                },
            )),
            ..Default::default()
        };
        e.add(&resource("a"), &[], &metric, now);
        let text = e.render(now, Duration::from_secs(60));
        for expected in [
            r#"faas_invoke_duration_seconds_bucket{faas_instance="a",faas_name="f",le="0.1"} 1"#,
            r#"faas_invoke_duration_seconds_bucket{faas_instance="a",faas_name="f",le="0.25"} 3"#,
            r#"faas_invoke_duration_seconds_bucket{faas_instance="a",faas_name="f",le="+Inf"} 4"#,
            r#"faas_invoke_duration_seconds_sum{faas_instance="a",faas_name="f"} 0.5"#,
            r#"faas_invoke_duration_seconds_count{faas_instance="a",faas_name="f"} 4"#,
        ] {
            assert!(text.contains(expected), "{expected}\n{text}");
        }
    }
}
