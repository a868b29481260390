//! Issue "Control what leaves", log filters and masking: a minimum severity, lines without a
//! level, drop rules on the body, and mask rules (presets and the user's own) on log records and
//! span attributes; the raw batch unchanged unless `BRIDGE_MASK_RAW` says so; every bad rule one
//! ERROR line, the others working; metrics made from every event. The real binary under the
//! Lambda stand-in, OTLP decoded with the protobuf definitions.

mod common;

use common::otlp::attr_str;
use common::*;
use lambda_sim::{Behaviour, RecordingEndpoint, SimConfig, SimReport};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::metric;
use serde_json::{json, Value};

struct Run {
    report: SimReport,
    collector: RecordingEndpoint,
    raw: RecordingEndpoint,
    gateway: RecordingEndpoint,
}

async fn run_with(
    invocations: usize,
    records: Vec<Value>,
    extra: &[(&str, &str)],
    tweak: impl FnOnce(&mut SimConfig),
) -> Run {
    let collector = RecordingEndpoint::start(Behaviour::ok())
        .await
        .expect("collector");
    let raw = RecordingEndpoint::start(Behaviour::ok())
        .await
        .expect("raw endpoint");
    let gateway = RecordingEndpoint::start(Behaviour::ok())
        .await
        .expect("pushgateway");
    let mut env = vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url()),
        ("DISPATCH_POST_URI", raw.url()),
        ("BRIDGE_PUSHGATEWAY_URL", gateway.url()),
        ("BRIDGE_PUSH_INTERVAL_MS", "3600000".to_string()),
    ];
    env.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
    let mut cfg = config(invocations, &env);
    cfg.log_lines_per_invoke = records.len();
    cfg.log_records = records;
    cfg.capture_output = true;
    tweak(&mut cfg);
    let report = run(cfg).await;
    assert_clean(&report);
    Run {
        report,
        collector,
        raw,
        gateway,
    }
}

/// The text of an OTLP value: a string, or every string inside a key-value list or an array.
fn texts(value: &AnyValue, out: &mut Vec<String>) {
    match &value.value {
        Some(any_value::Value::StringValue(s)) => out.push(s.clone()),
        Some(any_value::Value::IntValue(i)) => out.push(i.to_string()),
        Some(any_value::Value::KvlistValue(list)) => attribute_texts(&list.values, out),
        Some(any_value::Value::ArrayValue(items)) => {
            for v in &items.values {
                texts(v, out);
            }
        }
        _ => {}
    }
}

/// The keys and the texts of the values.
fn attribute_texts(attributes: &[KeyValue], out: &mut Vec<String>) {
    for kv in attributes {
        out.push(kv.key.clone());
        if let Some(v) = &kv.value {
            texts(v, out);
        }
    }
}

impl Run {
    /// The bodies of the function log records exported.
    fn log_bodies(&self) -> Vec<String> {
        otlp::logs(&self.collector)
            .iter()
            .map(|(_, log)| {
                let mut out = Vec::new();
                if let Some(body) = &log.body {
                    texts(body, &mut out);
                }
                out.join(" ")
            })
            .collect()
    }

    /// Every text the OTLP receiver got: log bodies and attributes (keys, strings, integers),
    /// span names, attributes and status messages, metric data points' attributes.
    fn otlp_texts(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (_, log) in otlp::logs(&self.collector) {
            if let Some(body) = &log.body {
                texts(body, &mut out);
            }
            attribute_texts(&log.attributes, &mut out);
        }
        for (_, span) in otlp::spans(&self.collector) {
            out.push(span.name.clone());
            attribute_texts(&span.attributes, &mut out);
            if let Some(status) = &span.status {
                out.push(status.message.clone());
            }
        }
        for (_, metric) in otlp::metrics(&self.collector) {
            if let Some(metric::Data::Sum(sum)) = &metric.data {
                for point in &sum.data_points {
                    attribute_texts(&point.attributes, &mut out);
                }
            }
        }
        out
    }

    fn self_metric(&self, series: &str) -> Option<f64> {
        metric_value(&last_push(&self.gateway), series)
    }

    /// ERROR lines of the extension's output that name `variable`.
    fn errors_naming(&self, variable: &str) -> usize {
        self.report
            .extension_output
            .lines()
            .filter(|l| l.contains("ERROR") && l.contains(variable))
            .count()
    }

    /// The raw endpoint got exactly the events Lambda sent, byte for byte (as a multiset).
    fn assert_raw_unchanged(&self) {
        let mut received = received_raw(&self.raw);
        let mut sent = self.report.events_sent_raw.clone();
        received.sort();
        sent.sort();
        assert_eq!(received, sent, "the raw batch is Lambda's bytes");
    }
}

/// A Node.js-format text line (its level is the third field).
fn node_line(level: &str, message: &str) -> Value {
    json!(format!(
        "2024-05-01T12:00:00.000Z\t8f5e0c9a-1b2c-4d3e-9f00-123456789abc\t{level}\t{message}\n"
    ))
}

#[test]
fn filters_drop_what_each_rule_names_and_nothing_else() {
    block_on(async {
        let records = vec![
            json!({"level": "DEBUG", "message": "cache miss"}),
            json!({"level": "INFO", "message": "GET /health 200"}),
            json!({"level": "WARN", "message": "slow downstream"}),
            node_line("DEBUG", "node debug line"),
            node_line("ERROR", "node error line"),
            json!("plain print output\n"),
            json!({"message": "a record without a level"}),
            // pino's numeric levels: 20 debug, 40 warn.
            json!({"level": 20, "msg": "pino debug line"}),
            json!({"level": 40, "msg": "pino warn line"}),
        ];
        let n = 6;
        let filters = [
            ("BRIDGE_LOGS_MIN_SEVERITY", "info"),
            (
                "BRIDGE_LOGS_DROP_RULES",
                r#"[{"name":"health","pattern":"^GET /health\\b"}]"#,
            ),
        ];
        let run = run_with(n, records.clone(), &filters, |_| {}).await;
        let mut bodies = run.log_bodies();
        bodies.sort();
        let mut expected: Vec<String> = [
            "a record without a level",
            "pino warn line",
            "plain print output\n",
            "slow downstream",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain(std::iter::once(
            node_line("ERROR", "node error line")
                .as_str()
                .expect("text")
                .to_string(),
        ))
        .flat_map(|s| std::iter::repeat_n(s, n))
        .collect();
        expected.sort();
        assert_eq!(bodies, expected);
        assert_eq!(
            run.self_metric("bridge_logs_filtered_total{rule=\"min_severity\"}"),
            Some((3 * n) as f64)
        );
        assert_eq!(
            run.self_metric("bridge_logs_filtered_total{rule=\"health\"}"),
            Some(n as f64)
        );
        assert_eq!(
            run.self_metric("bridge_logs_filtered_total{rule=\"unleveled\"}"),
            None,
            "no series for a rule not configured"
        );
        // The text line's level is its record's severity.
        let logs = otlp::logs(&run.collector);
        assert!(logs
            .iter()
            .any(|(_, l)| l.severity_text == "ERROR" && l.severity_number == 17));
        run.assert_raw_unchanged();
        otlp::assert_invocation_metrics_whole(&run.collector, &run.report);

        // Lines without a level go too when asked.
        let mut strict = filters.to_vec();
        strict.push(("BRIDGE_LOGS_DROP_UNLEVELED", "true"));
        let run = run_with(n, records, &strict, |_| {}).await;
        let mut bodies = run.log_bodies();
        bodies.sort();
        bodies.dedup();
        assert_eq!(bodies.len(), 3, "{bodies:?}");
        assert_eq!(
            run.self_metric("bridge_logs_filtered_total{rule=\"unleveled\"}"),
            Some((2 * n) as f64)
        );
        run.assert_raw_unchanged();
    });
}

/// What the function logs in the masking tests, and the sequences none of which may reach the
/// OTLP receiver.
fn sensitive() -> (Vec<Value>, Vec<&'static str>) {
    let records = vec![
        json!({
            "level": "INFO",
            "message": "paid with 4111 1111 1111 1111",
            "customer": "jane.doe@example.com",
            "nested": {"auth": "Bearer abc.def-ghi"}
        }),
        node_line(
            "INFO",
            "called with Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.payload.sig",
        ),
        json!({"level": "WARN", "msg": "key AKIAIOSFODNN7EXAMPLE leaked for bob@example.org"}),
        json!({"message": "order ORD-12345 shipped"}),
        json!("card 5500-0000-0000-0004 on file\n"),
        // A card number as a JSON number, an address as a key, a card with its CVV after it.
        json!({
            "level": 30,
            "message": "stored 4012 8888 8888 1881 123",
            "card": 4222222222222u64,
            "carol@example.net": "owner"
        }),
    ];
    let secrets = vec![
        "4111 1111 1111 1111",
        "jane.doe@example.com",
        "abc.def-ghi",
        "eyJhbGciOiJIUzI1NiJ9",
        "AKIAIOSFODNN7EXAMPLE",
        "bob@example.org",
        "ORD-12345",
        "5500-0000-0000-0004",
        "tenant-1",
        "tenant-2",
        "4012 8888 8888 1881",
        "4222222222222",
        "carol@example.net",
        // Masked by a user rule: the function's error type, on the span's status and
        // attribute and on faas.errors' error.type.
        "UnhandledPromiseRejection",
    ];
    (records, secrets)
}

const MASK_RULES: &str = r#"[{"name":"orders","pattern":"ORD-[0-9]+","replacement":"ORD-#"},
    {"name":"tenants","pattern":"tenant-[0-9]+"},
    {"name":"rejections","pattern":"UnhandledPromiseRejection"}]"#;
/// Two tenants, and every other invocation failing with the simulator's error types in turn
/// (the third is `Runtime.UnhandledPromiseRejection`, which a user rule masks).
fn failing_tenants(c: &mut SimConfig) {
    c.tenants = 2;
    c.error_every = Some(2);
}

/// Records per invocation in [`sensitive`].
const SENSITIVE_RECORDS: usize = 6;

#[test]
fn no_masked_sequence_reaches_the_otlp_receiver_and_the_raw_batch_stays_lambdas() {
    block_on(async {
        let (records, secrets) = sensitive();
        let n = 6;
        let vars = [
            ("BRIDGE_MASK_PRESETS", "all"),
            ("BRIDGE_MASK_RULES", MASK_RULES),
        ];
        let run = run_with(n, records, &vars, failing_tenants).await;
        // Nothing in any accepted OTLP request's bytes (uncompressed protobuf: strings are
        // stored as they are), nor in the decoded text.
        for request in run.collector.requests() {
            for secret in &secrets {
                assert!(
                    !request
                        .body
                        .windows(secret.len())
                        .any(|w| w == secret.as_bytes()),
                    "{secret} reached {}",
                    request.path
                );
            }
        }
        let all = run.otlp_texts();
        for secret in &secrets {
            assert!(!all.iter().any(|t| t.contains(secret)), "{secret} decoded");
        }
        let joined = all.join("\n");
        for marker in [
            "[masked:card_number]",
            "[masked:email]",
            "Bearer [masked:bearer_token]",
            "[masked:aws_access_key]",
            "ORD-#",
            "[masked:tenants]",
        ] {
            assert!(joined.contains(marker), "{marker} missing:\n{joined}");
        }
        // Span attributes carry the masked tenant.
        let spans = otlp::spans(&run.collector);
        assert!(spans.iter().any(|(_, s)| {
            attr_str(&s.attributes, "aws.lambda.tenant.id") == Some("[masked:tenants]")
        }));
        // Each line is still one record, on its invocation's trace.
        assert_eq!(otlp::logs(&run.collector).len(), SENSITIVE_RECORDS * n);
        run.assert_raw_unchanged();
        otlp::assert_invocation_metrics_whole(&run.collector, &run.report);
        // Every rule counted what it changed in the OTLP output, and nothing in the raw batch.
        for (rule, at_least) in [
            ("card_numbers", 2 * n),
            ("emails", 2 * n),
            ("bearer_tokens", 2 * n),
            ("aws_access_keys", n),
            ("orders", n),
        ] {
            let otlp = run
                .self_metric(&format!(
                    "bridge_masked_total{{rule=\"{rule}\",sink=\"otlp\"}}"
                ))
                .unwrap_or(0.0);
            assert!(otlp >= at_least as f64, "{rule}: {otlp}");
            assert_eq!(
                run.self_metric(&format!(
                    "bridge_masked_total{{rule=\"{rule}\",sink=\"raw_json\"}}"
                )),
                Some(0.0)
            );
        }
    });
}

#[test]
fn the_raw_batch_is_masked_when_asked_and_otherwise_byte_for_byte() {
    block_on(async {
        let (records, secrets) = sensitive();
        let n = 6;
        let vars = [
            ("BRIDGE_MASK_PRESETS", "all"),
            ("BRIDGE_MASK_RULES", MASK_RULES),
            ("BRIDGE_MASK_RAW", "true"),
        ];
        let run = run_with(n, records, &vars, failing_tenants).await;
        let received = received_raw(&run.raw);
        assert_eq!(received.len(), run.report.events_sent_raw.len());
        // An event with nothing to mask is Lambda's bytes; the others are JSON with only their
        // strings changed (the same keys and shape, as a multiset over the events).
        let mut masked = 0;
        let mut shapes_received = Vec::new();
        for text in &received {
            for secret in &secrets {
                assert!(!text.contains(secret), "{secret} in the raw batch: {text}");
            }
            let event: Value = serde_json::from_str(text).expect("still JSON");
            masked += usize::from(!run.report.events_sent_raw.contains(text));
            shapes_received.push(shape(&event).to_string());
        }
        let mut shapes_sent: Vec<String> = run
            .report
            .events_sent
            .iter()
            .map(|e| shape(e).to_string())
            .collect();
        shapes_received.sort();
        shapes_sent.sort();
        assert_eq!(
            shapes_received, shapes_sent,
            "only text changed (strings, keys, integers)"
        );
        assert!(masked >= SENSITIVE_RECORDS * n, "{masked} events masked");
        assert!(
            run.self_metric("bridge_masked_total{rule=\"emails\",sink=\"raw_json\"}")
                .unwrap_or(0.0)
                >= (2 * n) as f64
        );
    });
}

/// A JSON value's structure, to compare what masking may not change: its text (strings,
/// object keys, integers, which a rule may match) left out, and everything else kept.
fn shape(value: &Value) -> Value {
    match value {
        Value::String(_) => json!(""),
        Value::Number(n) if n.is_u64() || n.is_i64() => json!(""),
        Value::Array(items) => Value::Array(items.iter().map(shape).collect()),
        Value::Object(fields) => {
            let mut values: Vec<String> = fields.values().map(|v| shape(v).to_string()).collect();
            values.sort();
            json!({ "object": values })
        }
        other => other.clone(),
    }
}

#[test]
fn each_bad_rule_is_one_error_and_the_others_work() {
    block_on(async {
        let (records, _) = sensitive();
        let bad = [
            ("BRIDGE_MASK_PRESETS", "emails,credit_cards"),
            (
                "BRIDGE_MASK_RULES",
                r#"["(unclosed", {"name":"orders","pattern":"ORD-[0-9]+"}]"#,
            ),
            (
                "BRIDGE_LOGS_DROP_RULES",
                r#"["(bad", {"name":"stored_drop","pattern":"^stored "}]"#,
            ),
            ("BRIDGE_LOGS_MIN_SEVERITY", "loud"),
        ];
        let run = run_with(2, records.clone(), &bad, |_| {}).await;
        for (variable, _) in bad {
            assert_eq!(
                run.errors_naming(variable),
                1,
                "{variable}:\n{}",
                run.report.extension_output
            );
        }
        let all = run.otlp_texts().join("\n");
        for gone in ["jane.doe@example.com", "bob@example.org", "ORD-12345"] {
            assert!(!all.contains(gone), "{gone} not masked:\n{all}");
        }
        // The card preset was not asked for (credit_cards is no preset's name).
        assert!(all.contains("4111 1111 1111 1111"));
        // The bad filters are off; the good drop rule beside the bad one drops its line.
        assert_eq!(
            otlp::logs(&run.collector).len(),
            (SENSITIVE_RECORDS - 1) * 2
        );
        assert_eq!(
            run.self_metric("bridge_logs_filtered_total{rule=\"stored_drop\"}"),
            Some(2.0)
        );

        // With BRIDGE_STRICT, the same settings are an init error naming each variable.
        let mut strict: Vec<(&str, String)> =
            bad.iter().map(|(k, v)| (*k, v.to_string())).collect();
        strict.push(("BRIDGE_STRICT", "true".into()));
        let cfg = SimConfig {
            capture_output: true,
            ..config(1, &strict)
        };
        let report = match lambda_sim::run(cfg).await {
            Err(lambda_sim::SimError::InitFailed { report, .. }) => *report,
            Err(e) => panic!("unexpected: {e}"),
            Ok(report) => panic!("init succeeded:\n{}", report.extension_output),
        };
        let message = report
            .init_errors
            .first()
            .and_then(|e| e.body.as_ref())
            .and_then(|b| b["errorMessage"].as_str())
            .unwrap_or("")
            .to_string();
        for (variable, _) in bad {
            assert!(message.contains(variable), "{variable}: {message}");
        }
    });
}
