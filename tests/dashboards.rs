//! Every metric a dashboard in `dashboards/` queries must really exist in Prometheus.
//!
//! The real bridge runs under the simulator with an OTLP receiver; the metrics it exports are
//! renamed by the OpenTelemetry Collector's Prometheus naming rules (the `prometheus` exporter of
//! `deploy/otel-collector.yaml`), the bridge's own metrics (its `/metrics` endpoint) are added, and
//! every metric and label named by a PromQL expression of a dashboard (panel targets and template
//! variables) is looked up in that set. A dashboard naming a metric that never appears fails.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use common::{assert_clean, block_on, config, run};
use lambda_sim::prometheus::{label_name, prometheus_name, Kind};
use lambda_sim::{Behaviour, RecordingEndpoint};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::metrics::v1::{metric::Data, Metric};
use serde_json::Value;

/// The series names a metric of `kind` is exposed as.
fn series_names(base: &str, kind: Kind) -> Vec<String> {
    match kind {
        Kind::Histogram => ["_bucket", "_sum", "_count"]
            .iter()
            .map(|s| format!("{base}{s}"))
            .collect(),
        Kind::Summary => vec![
            base.to_string(),
            format!("{base}_sum"),
            format!("{base}_count"),
        ],
        _ => vec![base.to_string()],
    }
}

/// Series name → the label names it can carry.
type Catalogue = BTreeMap<String, BTreeSet<String>>;

fn add_series(catalogue: &mut Catalogue, base: &str, kind: Kind, labels: &BTreeSet<String>) {
    for series in series_names(base, kind) {
        let entry = catalogue.entry(series.clone()).or_default();
        entry.extend(labels.iter().cloned());
        if series.ends_with("_bucket") {
            entry.insert("le".into());
        }
        if kind == Kind::Summary && series == base {
            entry.insert("quantile".into());
        }
    }
}

fn keys(attributes: &[KeyValue]) -> impl Iterator<Item = String> + '_ {
    attributes.iter().map(|kv| label_name(&kv.key))
}

/// What Prometheus holds for the collector's exposition of `metrics`.
fn otlp_catalogue(
    metrics: &[(opentelemetry_proto::tonic::resource::v1::Resource, Metric)],
) -> Catalogue {
    let mut catalogue = Catalogue::new();
    for (resource, metric) in metrics {
        // `resource_to_telemetry_conversion` makes every resource attribute a label; the
        // collector adds the scope's labels and Prometheus the target's.
        let mut labels: BTreeSet<String> = keys(&resource.attributes).collect();
        labels.extend(
            ["job", "instance", "otel_scope_name", "otel_scope_version"]
                .iter()
                .map(|s| s.to_string()),
        );
        let kind = match &metric.data {
            Some(Data::Gauge(g)) => {
                labels.extend(g.data_points.iter().flat_map(|p| keys(&p.attributes)));
                Kind::Gauge
            }
            Some(Data::Sum(s)) => {
                labels.extend(s.data_points.iter().flat_map(|p| keys(&p.attributes)));
                if s.is_monotonic {
                    Kind::Counter
                } else {
                    Kind::UpDownCounter
                }
            }
            Some(Data::Histogram(h)) => {
                labels.extend(h.data_points.iter().flat_map(|p| keys(&p.attributes)));
                Kind::Histogram
            }
            Some(Data::Summary(s)) => {
                labels.extend(s.data_points.iter().flat_map(|p| keys(&p.attributes)));
                Kind::Summary
            }
            Some(Data::ExponentialHistogram(_)) => panic!(
                "{}: exponential histograms become native histograms, which the dashboards do \
                 not expect",
                metric.name
            ),
            None => continue,
        };
        let base = prometheus_name(&metric.name, &metric.unit, kind);
        add_series(&mut catalogue, &base, kind, &labels);
    }
    catalogue
}

/// The bridge's own metrics, as it really exposes them: the text format it pushed to a
/// (recording) Pushgateway at shutdown — the same text its `/metrics` endpoint serves.
fn add_self_metrics(catalogue: &mut Catalogue, exposition: &str) {
    let mut found = 0;
    for line in exposition
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let name = &line[..name_end];
        let mut labels: BTreeSet<String> =
            ["job", "instance"].iter().map(|s| s.to_string()).collect();
        if let (Some(open), Some(close)) = (line.find('{'), line.find('}')) {
            for pair in line[open + 1..close].split(',').filter(|p| !p.is_empty()) {
                if let Some((key, _)) = pair.split_once('=') {
                    labels.insert(key.trim().to_string());
                }
            }
        }
        catalogue
            .entry(name.to_string())
            .or_default()
            .extend(labels);
        found += 1;
    }
    assert!(found > 0, "the bridge pushed no self-metrics");
    // Prometheus records `up` for every scrape target (docker-compose.yml's prometheus scrapes
    // the collector, the bridge and the Pushgateway).
    add_series(
        catalogue,
        "up",
        Kind::Gauge,
        &["job", "instance"].iter().map(|s| s.to_string()).collect(),
    );
}

// ---- PromQL: which metrics and labels an expression names ----

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Ident(String),
    Punct(char),
    /// Strings, numbers, durations and `$variables`: never a metric or a label.
    Other,
}

fn tokenize(expr: &str) -> Vec<Token> {
    let chars: Vec<char> = expr.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '#' {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '"' || c == '\'' || c == '`' {
            i += 1;
            while i < chars.len() && chars[i] != c {
                if chars[i] == '\\' && c != '`' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            tokens.push(Token::Other);
        } else if c == '$' {
            // `$var`, `${var}`, `${var:format}`, `$__rate_interval`.
            i += 1;
            if i < chars.len() && chars[i] == '{' {
                while i < chars.len() && chars[i] != '}' {
                    i += 1;
                }
                i += 1;
            } else {
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
            }
            tokens.push(Token::Other);
        } else if c.is_ascii_digit()
            || (c == '.' && chars.get(i + 1).is_some_and(|d| d.is_ascii_digit()))
        {
            // 0.99, 1e3, 0x1f, 5m, 1h30m.
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
            tokens.push(Token::Other);
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
            {
                i += 1;
            }
            tokens.push(Token::Ident(chars[start..i].iter().collect()));
        } else {
            tokens.push(Token::Punct(c));
            i += 1;
        }
    }
    tokens
}

/// Keywords followed by a parenthesised list of label names.
const GROUPING: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];
/// Aggregation operators: `sum by (le) (…)` has no parenthesis right after `sum`.
const AGGREGATIONS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];
/// Other words that are neither metrics nor labels.
const KEYWORDS: &[&str] = &[
    "bool", "and", "or", "unless", "offset", "atan2", "inf", "nan", "Inf", "NaN",
];

#[derive(Debug, Default, PartialEq)]
struct Names {
    metrics: Vec<String>,
    labels: Vec<String>,
}

/// The metric names and label names `expr` uses.
fn names(expr: &str) -> Names {
    let tokens = tokenize(expr);
    let mut out = Names::default();
    let mut i = 0;
    // Collects the identifiers up to the bracket closing the one at `i`; returns past it.
    let inside = |i: usize, open: char, close: char, into: &mut Vec<String>| -> usize {
        let mut depth = 0;
        let mut j = i;
        while j < tokens.len() {
            match &tokens[j] {
                Token::Punct(c) if *c == open => depth += 1,
                Token::Punct(c) if *c == close => {
                    depth -= 1;
                    if depth == 0 {
                        return j + 1;
                    }
                }
                Token::Ident(name) => into.push(name.clone()),
                _ => {}
            }
            j += 1;
        }
        j
    };
    while i < tokens.len() {
        match &tokens[i] {
            Token::Ident(word) => {
                let next_is_paren = tokens.get(i + 1) == Some(&Token::Punct('('));
                if GROUPING.contains(&word.as_str()) {
                    if next_is_paren {
                        i = inside(i + 1, '(', ')', &mut out.labels);
                        continue;
                    }
                } else if next_is_paren
                    || KEYWORDS.contains(&word.as_str())
                    || AGGREGATIONS.contains(&word.as_str())
                {
                    // A function or an aggregation; its arguments follow.
                } else {
                    out.metrics.push(word.clone());
                }
                i += 1;
            }
            Token::Punct('{') => i = inside(i, '{', '}', &mut out.labels),
            Token::Punct('[') => {
                // A range or subquery: durations and variables only.
                let mut ignored = Vec::new();
                i = inside(i, '[', ']', &mut ignored);
            }
            _ => i += 1,
        }
    }
    out
}

/// A template variable's query: `label_values(expr, label)`, `label_values(label)`,
/// `query_result(expr)`, `metrics(regex)` or plain PromQL. Returns the PromQL it runs and the
/// label it reads.
fn variable_query(query: &str) -> (Option<String>, Option<String>) {
    let q = query.trim();
    if let Some(args) = q
        .strip_prefix("label_values(")
        .and_then(|r| r.strip_suffix(')'))
    {
        return match args.rsplit_once(',') {
            Some((expr, label)) => (
                Some(expr.trim().to_string()),
                Some(label.trim().to_string()),
            ),
            None => (None, Some(args.trim().to_string())),
        };
    }
    if let Some(expr) = q
        .strip_prefix("query_result(")
        .and_then(|r| r.strip_suffix(')'))
    {
        return (Some(expr.to_string()), None);
    }
    if q.starts_with("metrics(") || q.starts_with("label_names(") {
        return (None, None);
    }
    (Some(q.to_string()), None)
}

/// One PromQL expression of a dashboard: where it is, the PromQL, and a label it must offer.
struct Query {
    place: String,
    expr: String,
    label: Option<String>,
    /// From a template variable, not a panel.
    variable: bool,
}

fn collect_queries(value: &Value, place: &str, out: &mut Vec<Query>) {
    match value {
        Value::Object(map) => {
            let here = match map.get("title").and_then(Value::as_str) {
                Some(title) => format!("{place} > {title}"),
                None => place.to_string(),
            };
            if let Some(Value::String(expr)) = map.get("expr") {
                out.push(Query {
                    place: here.clone(),
                    expr: expr.clone(),
                    label: None,
                    variable: false,
                });
            }
            // A template variable of type query.
            if map.get("type").and_then(Value::as_str) == Some("query") {
                let name = map.get("name").and_then(Value::as_str).unwrap_or("?");
                let query = match map.get("query") {
                    Some(Value::String(q)) => Some(q.clone()),
                    Some(Value::Object(q)) => {
                        q.get("query").and_then(Value::as_str).map(String::from)
                    }
                    _ => None,
                };
                if let Some(query) = query {
                    let (expr, label) = variable_query(&query);
                    if let Some(expr) = expr {
                        out.push(Query {
                            place: format!("{place} > variable {name}"),
                            expr,
                            label,
                            variable: true,
                        });
                    }
                }
            }
            for (key, v) in map {
                if key != "expr" {
                    collect_queries(v, &here, out);
                }
            }
        }
        Value::Array(items) => {
            for v in items {
                collect_queries(v, place, out);
            }
        }
        _ => {}
    }
}

fn dashboards_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("dashboards")
}

fn dashboard_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dashboards_dir())
        .expect("dashboards/ exists")
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "dashboards/ holds no *.json");
    files
}

/// The metric names a `__name__="…"` or `__name__=~"…"` matcher selects, for the regexes the
/// dashboards use: a literal, or one group of alternatives (`faas_(invocations|errors)_total`).
fn metrics_by_name_matcher(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("__name__") {
        rest = &rest[at + "__name__".len()..];
        let value = rest
            .trim_start_matches(['=', '~', ' '])
            .strip_prefix('"')
            .and_then(|v| v.split_once('"'))
            .map(|(v, _)| v);
        let Some(pattern) = value else { continue };
        match (pattern.find('('), pattern.find(')')) {
            (Some(open), Some(close)) if open < close => {
                let (head, tail) = (&pattern[..open], &pattern[close + 1..]);
                for alternative in pattern[open + 1..close].split('|') {
                    out.push(format!("{head}{alternative}{tail}"));
                }
            }
            _ => out.push(pattern.to_string()),
        }
    }
    out
}

/// Checks every query of every dashboard against `catalogue`; the problems found.
fn check_dashboards(catalogue: &Catalogue) -> Vec<String> {
    let mut problems = Vec::new();
    for file in dashboard_files() {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&file).expect("readable dashboard");
        let json: Value = match serde_json::from_str(&text) {
            Ok(v) => v,
            Err(e) => {
                problems.push(format!("{name}: not JSON: {e}"));
                continue;
            }
        };
        let mut queries = Vec::new();
        collect_queries(&json, &name, &mut queries);
        if queries.iter().all(|q| q.variable) {
            problems.push(format!("{name}: no panel has a PromQL expression"));
        }
        for q in &queries {
            let mut used = names(&q.expr);
            used.metrics.extend(metrics_by_name_matcher(&q.expr));
            if used.metrics.is_empty() {
                problems.push(format!("{}: `{}` names no metric", q.place, q.expr));
            }
            let mut offered: BTreeSet<&str> = ["__name__", "job", "instance"].into();
            for metric in &used.metrics {
                match catalogue.get(metric) {
                    Some(labels) => offered.extend(labels.iter().map(String::as_str)),
                    None => problems.push(format!(
                        "{}: metric `{metric}` never appears (in `{}`)",
                        q.place, q.expr
                    )),
                }
            }
            if used.metrics.iter().all(|m| catalogue.contains_key(m)) {
                for label in used.labels.iter().chain(q.label.iter()) {
                    if !offered.contains(label.as_str()) {
                        problems.push(format!(
                            "{}: label `{label}` is on none of {:?} (in `{}`)",
                            q.place, used.metrics, q.expr
                        ));
                    }
                }
            }
        }
    }
    problems
}

#[test]
fn every_dashboard_metric_is_produced() {
    let (catalogue, otlp_names) = block_on(async {
        let collector = RecordingEndpoint::start(Behaviour::ok())
            .await
            .expect("an OTLP receiver");
        let raw = RecordingEndpoint::start(Behaviour::ok())
            .await
            .expect("a raw JSON endpoint");
        let gateway = RecordingEndpoint::start(Behaviour::ok())
            .await
            .expect("a Pushgateway stand-in");
        let mut cfg = config(
            9,
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url()),
                ("DISPATCH_POST_URI", raw.url()),
                ("BRIDGE_PUSHGATEWAY_URL", gateway.url()),
                // As the stack configures it: the filter and mask panels' series exist.
                ("BRIDGE_LOGS_MIN_SEVERITY", "debug".into()),
                ("BRIDGE_MASK_PRESETS", "all".into()),
            ],
        );
        // The stack's mix (docker-compose.yml), compressed: successes, errors and timeouts.
        cfg.error_every = Some(3);
        cfg.timeout_every = Some(4);
        cfg.function_timeout_ms = 200;
        let report = run(cfg).await;
        assert_clean(&report);
        let metrics = common::otlp::metrics(&collector);
        assert!(!metrics.is_empty(), "the bridge exported no metrics");
        let names: BTreeSet<String> = metrics.iter().map(|(_, m)| m.name.clone()).collect();
        let mut catalogue = otlp_catalogue(&metrics);
        add_self_metrics(&mut catalogue, &common::last_push(&gateway));
        (catalogue, names)
    });

    let problems = check_dashboards(&catalogue);
    assert!(
        problems.is_empty(),
        "dashboards name what Prometheus will not have:\n  {}\n\nOTLP metrics exported: {:?}\n\
         Prometheus series (with their labels):\n  {}",
        problems.join("\n  "),
        otlp_names,
        catalogue
            .iter()
            .map(|(k, v)| format!("{k} {v:?}"))
            .collect::<Vec<_>>()
            .join("\n  ")
    );
}

// ---- the pieces above, on known cases ----

#[test]
fn names_follow_the_collectors_rules() {
    let cases = [
        (
            "faas.invoke_duration",
            "s",
            Kind::Histogram,
            "faas_invoke_duration_seconds",
        ),
        (
            "faas.mem_usage",
            "By",
            Kind::Histogram,
            "faas_mem_usage_bytes",
        ),
        (
            "faas.invocations",
            "{invocation}",
            Kind::Counter,
            "faas_invocations_total",
        ),
        (
            "aws.lambda.memory_size",
            "By",
            Kind::Gauge,
            "aws_lambda_memory_size_bytes",
        ),
        (
            "aws.lambda.memory_utilization",
            "1",
            Kind::Histogram,
            "aws_lambda_memory_utilization",
        ),
        ("cpu.utilization", "1", Kind::Gauge, "cpu_utilization_ratio"),
        (
            "aws.lambda.logs_dropped.bytes",
            "By",
            Kind::Counter,
            "aws_lambda_logs_dropped_bytes_total",
        ),
        (
            "aws.lambda.estimated_cost",
            "USD",
            Kind::Counter,
            "aws_lambda_estimated_cost_USD_total",
        ),
        ("requests.total", "1", Kind::Counter, "requests_total"),
        ("net.io", "By/s", Kind::Gauge, "net_io_bytes_per_second"),
        ("queue.size", "{item}", Kind::UpDownCounter, "queue_size"),
        (
            "http.server.duration",
            "ms",
            Kind::Histogram,
            "http_server_duration_milliseconds",
        ),
        ("speed", "m/s", Kind::Gauge, "speed_meters_per_second"),
    ];
    for (name, unit, kind, expected) in cases {
        assert_eq!(
            prometheus_name(name, unit, kind),
            expected,
            "{name} [{unit}] {kind:?}"
        );
    }
    assert_eq!(label_name("faas.name"), "faas_name");
    assert_eq!(label_name("error.type"), "error_type");
}

#[test]
fn name_matchers_select_metrics() {
    assert_eq!(
        metrics_by_name_matcher(r#"{__name__=~"faas_(invocations|errors)_total", faas_name="x"}"#),
        ["faas_invocations_total", "faas_errors_total"]
    );
    assert_eq!(metrics_by_name_matcher(r#"{__name__="up"}"#), ["up"]);
    assert!(metrics_by_name_matcher("sum(up)").is_empty());
}

#[test]
fn promql_names_are_extracted() {
    let n = names(
        r#"histogram_quantile(0.99, sum by (le, faas_name) (rate(faas_invoke_duration_seconds_bucket{faas_name=~"$function", faas_version=~"${version:regex}"}[$__rate_interval])))"#,
    );
    assert_eq!(n.metrics, ["faas_invoke_duration_seconds_bucket"]);
    assert_eq!(n.labels, ["le", "faas_name", "faas_name", "faas_version"]);

    let n = names(
        "sum(rate(a_total[5m] offset 1h)) / ignoring(reason) group_left sum without (x) (b) \
         or on() vector(0) > bool 1e3 and max_over_time(c[1h:5m]) unless d @ 1609746000",
    );
    assert_eq!(n.metrics, ["a_total", "b", "c", "d"]);
    assert_eq!(n.labels, ["reason", "x"]);

    let n =
        names(r#"sum(increase(x_total{a="by (le)", b!~'q{1}'}[$__range])) by (sink) # c_total"#);
    assert_eq!(n.metrics, ["x_total"]);
    assert_eq!(n.labels, ["a", "b", "sink"]);

    assert_eq!(
        variable_query(
            r#"label_values(faas_invocations_total{faas_name=~"$function"}, faas_version)"#
        ),
        (
            Some(r#"faas_invocations_total{faas_name=~"$function"}"#.to_string()),
            Some("faas_version".to_string())
        )
    );
    assert_eq!(
        variable_query("label_values(job)"),
        (None, Some("job".into()))
    );
}
