//! Issue "OpenTelemetry output": the real binary, the Lambda stand-in and an in-process OTLP/HTTP
//! receiver whose payloads are decoded with the protobuf definitions (and their JSON mapping).

mod common;

use std::collections::HashMap;

use common::otlp::{attr_bool, attr_int, attr_str};
use common::*;
use lambda_sim::otlp_receiver::{hex, number_value};
use lambda_sim::{Behaviour, RecordingEndpoint, SimReport};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::metrics::v1::{metric, Metric};
use opentelemetry_proto::tonic::trace::v1::{span, status, Span};
use serde_json::Value;

async fn run_with_collector(
    invocations: usize,
    extra: &[(&str, String)],
    tweak: impl FnOnce(&mut lambda_sim::SimConfig),
) -> (SimReport, RecordingEndpoint) {
    let collector = RecordingEndpoint::start(Behaviour::ok())
        .await
        .expect("collector");
    let mut env = vec![("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url())];
    env.extend(extra.iter().cloned());
    let mut cfg = config(invocations, &env);
    tweak(&mut cfg);
    let report = run(cfg).await;
    assert_clean(&report);
    (report, collector)
}

fn event<'a>(report: &'a SimReport, kind: &str, request: &str) -> &'a Value {
    report
        .events_sent
        .iter()
        .find(|e| e["type"] == kind && request_id(e) == Some(request))
        .unwrap_or_else(|| panic!("{kind} for {request} was sent"))
}

/// X-Ray `Root=1-aaaaaaaa-bbbb…;Parent=cccc…` → (32 hex trace id, 16 hex parent).
fn xray_ids(header: &str) -> (String, String) {
    let mut trace = String::new();
    let mut parent = String::new();
    for part in header.split(';') {
        if let Some(root) = part.strip_prefix("Root=1-") {
            trace = root.replace('-', "");
        }
        if let Some(p) = part.strip_prefix("Parent=") {
            parent = p.to_string();
        }
    }
    (trace, parent)
}

fn check_invocation_spans(report: &SimReport, spans: &[Span]) {
    for (i, invocation) in report.invocations.iter().enumerate() {
        let rid = invocation.request_id.as_str();
        let server: Vec<&Span> = spans
            .iter()
            .filter(|s| attr_str(&s.attributes, "faas.invocation_id") == Some(rid))
            .collect();
        assert_eq!(server.len(), 1, "one invocation span for {rid}");
        let inv = server[0];
        assert_eq!(inv.name, "sim-function");
        assert_eq!(inv.kind, span::SpanKind::Server as i32);
        let start = event(report, "platform.start", rid);
        let done = event(report, "platform.runtimeDone", rid);
        let header = start["record"]["tracing"]["value"]
            .as_str()
            .expect("xray header");
        let (trace, parent) = xray_ids(header);
        assert_eq!(hex(&inv.trace_id), trace, "trace id from the X-Ray Root");
        assert_eq!(
            hex(&inv.parent_span_id),
            parent,
            "parent from the X-Ray Parent"
        );
        assert_eq!(
            hex(&inv.span_id),
            start["record"]["tracing"]["spanId"]
                .as_str()
                .expect("spanId")
        );
        assert_eq!(
            inv.start_time_unix_nano,
            nanos(start["time"].as_str().expect("time"))
        );
        assert_eq!(
            inv.end_time_unix_nano,
            nanos(done["time"].as_str().expect("time"))
        );
        assert_eq!(attr_bool(&inv.attributes, "faas.coldstart"), Some(i == 0));
        assert_eq!(attr_str(&inv.attributes, "faas.trigger"), Some("other"));
        let arn = attr_str(&inv.attributes, "aws.lambda.invoked_arn").expect("invoked arn");
        assert!(arn.starts_with("arn:aws:lambda:") && arn.ends_with(":function:sim-function"));
        assert_eq!(attr_str(&inv.attributes, "cloud.resource_id"), Some(arn));
        let status = done["record"]["status"].as_str().expect("status");
        let code = inv.status.as_ref().map_or(0, |s| s.code);
        if status == "success" {
            assert_ne!(code, status::StatusCode::Error as i32);
        } else {
            assert_eq!(
                code,
                status::StatusCode::Error as i32,
                "{status} is an error"
            );
            let error_type = done["record"]["errorType"].as_str().unwrap_or(status);
            assert_eq!(attr_str(&inv.attributes, "error.type"), Some(error_type));
        }
        // Phases: the runtimeDone spans (µs-exact) and the report's extension overhead.
        let children: HashMap<&str, &Span> = spans
            .iter()
            .filter(|s| s.parent_span_id == inv.span_id && s.trace_id == inv.trace_id)
            .map(|s| (s.name.as_str(), s))
            .collect();
        for phase in done["record"]["spans"].as_array().into_iter().flatten() {
            let name = phase["name"].as_str().expect("name");
            let child = children
                .get(name)
                .unwrap_or_else(|| panic!("{name} child span"));
            let begin = nanos(phase["start"].as_str().expect("start"));
            let duration_ns =
                (phase["durationMs"].as_f64().expect("durationMs") * 1e6).round() as u64;
            assert_eq!(child.start_time_unix_nano, begin);
            assert!(child.end_time_unix_nano.abs_diff(begin + duration_ns) <= 1_000);
        }
        let overhead = children
            .get("extensionOverhead")
            .expect("extensionOverhead child");
        assert_eq!(overhead.start_time_unix_nano, inv.end_time_unix_nano);
    }
}

#[test]
fn spans_follow_the_xray_header_and_the_platform_times() {
    block_on(async {
        let (report, collector) = run_with_collector(
            6,
            &[("DISPATCH_POST_URI", "http://127.0.0.1:9/unused".into())],
            |c| {
                c.error_every = Some(3);
                c.timeout_every = Some(5);
                c.function_timeout_ms = 200;
            },
        )
        .await;
        let spans: Vec<Span> = common::otlp::spans(&collector)
            .into_iter()
            .map(|(_, s)| s)
            .collect();
        check_invocation_spans(&report, &spans);

        // The init span and the cold-start link from the first invocation.
        let init = spans
            .iter()
            .find(|s| s.name == "sim-function init")
            .expect("init span");
        let init_start = &report.events_of_type("platform.initStart")[0];
        assert_eq!(
            init.start_time_unix_nano,
            nanos(init_start["time"].as_str().expect("time"))
        );
        let init_done = &report.events_of_type("platform.initRuntimeDone")[0];
        assert_eq!(
            init.end_time_unix_nano,
            nanos(init_done["time"].as_str().expect("time"))
        );
        assert_eq!(
            attr_str(&init.attributes, "aws.lambda.initialization_type"),
            Some("on-demand")
        );
        assert!(attr_str(&init.attributes, "aws.lambda.runtime_version").is_some());
        let first = &report.invocations[0].request_id;
        let first_span = spans
            .iter()
            .find(|s| attr_str(&s.attributes, "faas.invocation_id") == Some(first))
            .expect("first invocation span");
        assert_eq!(first_span.links.len(), 1);
        assert_eq!(first_span.links[0].span_id, init.span_id);
        assert_eq!(first_span.links[0].trace_id, init.trace_id);

        // The resource.
        let (resource, _) = &common::otlp::spans(&collector)[0];
        let a = &resource.attributes;
        assert_eq!(attr_str(a, "service.name"), Some("sim-function"));
        assert_eq!(attr_str(a, "cloud.provider"), Some("aws"));
        assert_eq!(attr_str(a, "cloud.platform"), Some("aws_lambda"));
        assert_eq!(attr_str(a, "cloud.account.id"), Some("123456789012"));
        assert!(attr_str(a, "cloud.region").is_some());
        assert_eq!(attr_str(a, "faas.name"), Some("sim-function"));
        assert_eq!(attr_str(a, "faas.version"), Some("$LATEST"));
        assert!(attr_str(a, "faas.instance").is_some());
        assert_eq!(attr_int(a, "faas.max_memory"), Some(128 * 1024 * 1024));
    });
}

fn last<'a>(metrics: &'a [Metric], name: &str) -> &'a Metric {
    metrics
        .iter()
        .rev()
        .find(|m| m.name == name)
        .unwrap_or_else(|| panic!("metric {name} was exported"))
}

fn sum_value(m: &Metric) -> f64 {
    match &m.data {
        Some(metric::Data::Sum(s)) => s.data_points.iter().map(number_value).sum(),
        other => panic!("{} is not a sum: {other:?}", m.name),
    }
}

fn histogram(m: &Metric) -> (u64, f64, Vec<f64>) {
    match &m.data {
        Some(metric::Data::Histogram(h)) => {
            let count = h.data_points.iter().map(|p| p.count).sum();
            let sum = h.data_points.iter().filter_map(|p| p.sum).sum();
            (count, sum, h.data_points[0].explicit_bounds.clone())
        }
        other => panic!("{} is not a histogram: {other:?}", m.name),
    }
}

/// Out-of-memory and `failure` invocations, which the simulator now produces: each counted
/// exactly, errors split by their type, the out-of-memory counter only for those.
#[test]
fn out_of_memory_and_failed_invocations_are_counted_by_type() {
    block_on(async {
        let (report, collector) = run_with_collector(12, &[], |c| {
            c.out_of_memory_every = Some(3); // 3, 6, 9, 12
            c.failure_every = Some(4); // 4, 8 (12 is out of memory)
        })
        .await;
        assert_eq!(report.count_status("error"), 4);
        assert_eq!(report.count_status("failure"), 2);
        let metrics: Vec<Metric> = common::otlp::metrics(&collector)
            .into_iter()
            .map(|(_, m)| m)
            .collect();
        assert_eq!(sum_value(last(&metrics, "aws.lambda.out_of_memory")), 4.0);
        assert_eq!(sum_value(last(&metrics, "faas.errors")), 6.0);
        assert_eq!(sum_value(last(&metrics, "faas.invocations")), 6.0);
        let Some(metric::Data::Sum(errors)) = &last(&metrics, "faas.errors").data else {
            panic!("faas.errors is a sum")
        };
        let mut by_type: Vec<(String, f64)> = errors
            .data_points
            .iter()
            .map(|p| {
                let value = number_value(p);
                let kind = attr_str(&p.attributes, "error.type")
                    .unwrap_or("?")
                    .to_string();
                (kind, value)
            })
            .collect();
        by_type.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            by_type,
            vec![
                ("Runtime.ExitError".to_string(), 2.0),
                ("Runtime.OutOfMemory".to_string(), 4.0)
            ]
        );
        // Their spans are errors of that type.
        let spans: Vec<Span> = common::otlp::spans(&collector)
            .into_iter()
            .map(|(_, s)| s)
            .filter(|s| s.kind == span::SpanKind::Server as i32)
            .collect();
        let oom_spans = spans
            .iter()
            .filter(|s| attr_str(&s.attributes, "error.type") == Some("Runtime.OutOfMemory"))
            .count();
        assert_eq!(oom_spans, 4);
    });
}

#[test]
fn metrics_match_what_the_platform_reported() {
    block_on(async {
        let (report, collector) = run_with_collector(8, &[], |c| {
            c.error_every = Some(4);
            c.timeout_every = Some(7);
            c.function_timeout_ms = 200;
            c.logs_dropped_every = Some(3);
        })
        .await;
        let metrics: Vec<Metric> = common::otlp::metrics(&collector)
            .into_iter()
            .map(|(_, m)| m)
            .collect();
        let dropped = report.events_of_type("platform.logsDropped");
        assert!(
            !dropped.is_empty(),
            "the simulator sent platform.logsDropped"
        );
        let sent_total = |field: &str| -> f64 {
            dropped
                .iter()
                .map(|e| e["record"][field].as_f64().unwrap_or(0.0))
                .sum()
        };
        let records = last(&metrics, "aws.lambda.logs_dropped.records");
        assert_eq!(sum_value(records), sent_total("droppedRecords"));
        assert_eq!(records.unit, "{record}");
        let bytes = last(&metrics, "aws.lambda.logs_dropped.bytes");
        assert_eq!(sum_value(bytes), sent_total("droppedBytes"));
        assert_eq!(bytes.unit, "By");
        let done = report.events_of_type("platform.runtimeDone");
        let reports = report.events_of_type("platform.report");
        let n = report.invocations.len() as f64;
        assert_eq!(
            sum_value(last(&metrics, "faas.invocations")),
            report.count_status("success") as f64
        );
        assert_eq!(
            sum_value(last(&metrics, "faas.errors")),
            report.count_status("error") as f64
        );
        assert_eq!(
            sum_value(last(&metrics, "faas.timeouts")),
            report.count_status("timeout") as f64
        );
        assert_eq!(sum_value(last(&metrics, "faas.coldstarts")), 1.0);
        // Data points carry no attributes but faas.errors' error.type (README: Metrics).
        for m in &metrics {
            let points: Vec<&Vec<KeyValue>> = match &m.data {
                Some(metric::Data::Sum(s)) => s.data_points.iter().map(|p| &p.attributes).collect(),
                Some(metric::Data::Histogram(h)) => {
                    h.data_points.iter().map(|p| &p.attributes).collect()
                }
                Some(metric::Data::Gauge(g)) => {
                    g.data_points.iter().map(|p| &p.attributes).collect()
                }
                other => panic!("{}: unexpected data {other:?}", m.name),
            };
            let keys: Vec<&str> = points
                .into_iter()
                .flatten()
                .map(|a| a.key.as_str())
                .collect();
            let allowed: &[&str] = if m.name == "faas.errors" {
                &["error.type"]
            } else {
                &[]
            };
            assert!(
                keys.iter().all(|k| allowed.contains(k)),
                "{}: attributes {keys:?}",
                m.name
            );
        }
        let errors = last(&metrics, "faas.errors");
        let Some(metric::Data::Sum(errors)) = &errors.data else {
            panic!("faas.errors is a sum")
        };
        assert!(!errors.data_points.is_empty());
        assert!(errors
            .data_points
            .iter()
            .all(|p| attr_str(&p.attributes, "error.type").is_some()));
        let invocations = last(&metrics, "faas.invocations");
        assert_eq!(invocations.unit, "{invocation}");

        let invoke = last(&metrics, "faas.invoke_duration");
        assert_eq!(invoke.unit, "s");
        let (count, sum, bounds) = histogram(invoke);
        assert_eq!(count as f64, n);
        let expected: f64 = done
            .iter()
            .map(|e| e["record"]["metrics"]["durationMs"].as_f64().unwrap_or(0.0) / 1000.0)
            .sum();
        assert!((sum - expected).abs() < 1e-6, "{sum} vs {expected}");
        assert_eq!(
            bounds,
            vec![0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0]
        );

        let (count, sum, _) = histogram(last(&metrics, "faas.mem_usage"));
        assert_eq!(count as f64, n);
        let expected: f64 = reports
            .iter()
            .map(|e| {
                e["record"]["metrics"]["maxMemoryUsedMB"]
                    .as_f64()
                    .unwrap_or(0.0)
                    * 1048576.0
            })
            .sum();
        assert_eq!(sum, expected);
        assert_eq!(last(&metrics, "faas.mem_usage").unit, "By");

        let (count, sum, _) = histogram(last(&metrics, "aws.lambda.billed_duration"));
        assert_eq!(count as f64, n);
        let expected: f64 = reports
            .iter()
            .map(|e| {
                e["record"]["metrics"]["billedDurationMs"]
                    .as_f64()
                    .unwrap_or(0.0)
                    / 1000.0
            })
            .sum();
        assert!((sum - expected).abs() < 1e-9);

        let init = last(&metrics, "faas.init_duration");
        let (count, sum, _) = histogram(init);
        assert_eq!(count, 1);
        let init_ms = report.events_of_type("platform.initReport")[0]["record"]["metrics"]
            ["durationMs"]
            .as_f64()
            .expect("durationMs");
        assert!((sum - init_ms / 1000.0).abs() < 1e-9);

        let cost = sum_value(last(&metrics, "aws.lambda.estimated_cost"));
        let expected: f64 = reports
            .iter()
            .map(|e| {
                let m = &e["record"]["metrics"];
                m["billedDurationMs"].as_f64().unwrap_or(0.0) / 1000.0
                    * (m["memorySizeMB"].as_f64().unwrap_or(0.0) / 1024.0)
                    * 0.000_016_666_7
                    + 0.000_000_2
            })
            .sum();
        assert!((cost - expected).abs() < 1e-12, "{cost} vs {expected}");
        // The rest, each against what the platform events said.
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * b.abs().max(1.0);
        let size_mb = reports[0]["record"]["metrics"]["memorySizeMB"]
            .as_f64()
            .expect("memorySizeMB");
        match &last(&metrics, "aws.lambda.memory_size").data {
            Some(metric::Data::Gauge(g)) => {
                let point = g.data_points.last().expect("a point");
                let value = number_value(point);
                assert_eq!(value, size_mb * 1048576.0);
            }
            other => panic!("aws.lambda.memory_size is a gauge: {other:?}"),
        }
        let (count, sum, _) = histogram(last(&metrics, "aws.lambda.memory_utilization"));
        let expected: f64 = reports
            .iter()
            .map(|e| {
                let m = &e["record"]["metrics"];
                m["maxMemoryUsedMB"].as_f64().unwrap_or(0.0)
                    / m["memorySizeMB"].as_f64().unwrap_or(1.0)
            })
            .sum();
        assert_eq!(count as f64, n);
        assert!(close(sum, expected), "utilisation {sum} vs {expected}");
        for (metric_name, phase) in [
            ("aws.lambda.response_latency", "responseLatency"),
            ("aws.lambda.response_duration", "responseDuration"),
            ("aws.lambda.runtime_overhead", "runtimeOverhead"),
        ] {
            let phases: Vec<f64> = done
                .iter()
                .flat_map(|e| e["record"]["spans"].as_array().cloned().unwrap_or_default())
                .filter(|s| s["name"] == phase)
                .map(|s| s["durationMs"].as_f64().unwrap_or(0.0) / 1000.0)
                .collect();
            let (count, sum, _) = histogram(last(&metrics, metric_name));
            assert_eq!(count as usize, phases.len(), "{metric_name}");
            assert!(close(sum, phases.iter().sum()), "{metric_name}: {sum}");
        }
        let (count, sum, _) = histogram(last(&metrics, "aws.lambda.produced_bytes"));
        let expected: f64 = done
            .iter()
            .map(|e| {
                e["record"]["metrics"]["producedBytes"]
                    .as_f64()
                    .unwrap_or(0.0)
            })
            .sum();
        // Only runtimeDone events that carry producedBytes (a timed-out one does not).
        let with_bytes = done
            .iter()
            .filter(|e| e["record"]["metrics"]["producedBytes"].is_number())
            .count();
        assert!(with_bytes > 0 && with_bytes < done.len());
        assert_eq!(count as usize, with_bytes);
        assert_eq!(sum, expected);
        // What the report adds to runtimeDone: the extensions' time after the runtime finished.
        let overheads: Vec<f64> = reports
            .iter()
            .map(|r| {
                let id = request_id(r).expect("requestId");
                let runtime = done
                    .iter()
                    .find(|d| request_id(d) == Some(id))
                    .and_then(|d| d["record"]["metrics"]["durationMs"].as_f64())
                    .expect("its runtimeDone");
                let total = r["record"]["metrics"]["durationMs"]
                    .as_f64()
                    .expect("durationMs");
                (total - runtime).max(0.0) / 1000.0
            })
            .collect();
        let (count, sum, _) = histogram(last(
            &metrics,
            "aws.lambda.post_runtime_extensions_duration",
        ));
        assert_eq!(count as usize, overheads.len());
        assert!(close(sum, overheads.iter().sum()), "post-runtime {sum}");
        // Cumulative by default.
        if let Some(metric::Data::Sum(s)) = &last(&metrics, "faas.invocations").data {
            assert_eq!(s.aggregation_temporality, 2);
            assert!(s.is_monotonic);
        }
    });
}

#[test]
fn delta_temporality_is_honoured() {
    block_on(async {
        let (report, collector) = run_with_collector(
            5,
            &[(
                "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE",
                "delta".into(),
            )],
            |_| {},
        )
        .await;
        let metrics: Vec<Metric> = common::otlp::metrics(&collector)
            .into_iter()
            .map(|(_, m)| m)
            .collect();
        let total: f64 = metrics
            .iter()
            .filter(|m| m.name == "faas.invocations")
            .map(sum_value)
            .sum();
        assert_eq!(
            total,
            report.count_status("success") as f64,
            "delta points add up to the total"
        );
        if let Some(metric::Data::Sum(s)) = &last(&metrics, "faas.invocations").data {
            assert_eq!(s.aggregation_temporality, 1);
        }
    });
}

#[test]
fn logs_carry_their_invocations_trace() {
    block_on(async {
        let (report, collector) = run_with_collector(4, &[], |_| {}).await;
        let logs = common::otlp::logs(&collector);
        let sent = report.events_of_type("function");
        assert_eq!(logs.len(), sent.len());
        // Whose each log line is, from what the simulator sent (not from what the bridge says):
        // the record's requestId (JSON format), else the invocation started last (text format).
        let mut owners = Vec::new();
        let mut running: Option<String> = None;
        for event in &report.events_sent {
            match event["type"].as_str() {
                Some("platform.start") => running = request_id(event).map(str::to_string),
                Some("function") => owners.push(
                    event["record"]["requestId"]
                        .as_str()
                        .map(str::to_string)
                        .or_else(|| running.clone())
                        .expect("a log line inside an invocation"),
                ),
                _ => {}
            }
        }
        assert_eq!(owners.len(), sent.len());
        let spans: Vec<Span> = common::otlp::spans(&collector)
            .into_iter()
            .map(|(_, s)| s)
            .collect();
        for (((_, log), event), expected_owner) in logs.iter().zip(&sent).zip(&owners) {
            let record = &event["record"];
            let body = match log.body.as_ref().and_then(|b| b.value.as_ref()) {
                Some(opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(s)) => {
                    s.clone()
                }
                other => panic!("string body expected: {other:?}"),
            };
            if let Some(text) = record.as_str() {
                assert_eq!(body, text);
            } else {
                assert_eq!(body, record["message"].as_str().expect("message"));
                assert_eq!(
                    log.severity_text,
                    record["level"].as_str().expect("level").to_uppercase()
                );
                assert!(log.severity_number > 0);
                assert_eq!(
                    log.time_unix_nano,
                    nanos(record["timestamp"].as_str().expect("timestamp"))
                );
            }
            assert_eq!(
                attr_str(&log.attributes, "faas.invocation_id"),
                Some(expected_owner.as_str())
            );
            let span = spans
                .iter()
                .find(|s| {
                    s.kind == span::SpanKind::Server as i32
                        && attr_str(&s.attributes, "faas.invocation_id")
                            == Some(expected_owner.as_str())
                })
                .expect("the owning invocation span");
            assert_eq!(log.trace_id, span.trace_id);
            assert_eq!(log.span_id, span.span_id);
        }
    });
}

#[test]
fn json_protocol_with_gzip_carries_the_same_mapping() {
    block_on(async {
        let (report, collector) = run_with_collector(
            3,
            &[
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json".into()),
                ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip".into()),
                ("OTEL_EXPORTER_OTLP_HEADERS", "x-api-key=very-secret".into()),
            ],
            |_| {},
        )
        .await;
        let requests = collector.requests();
        assert!(requests
            .iter()
            .all(|r| r.header("content-encoding") == Some("gzip")));
        assert!(requests
            .iter()
            .all(|r| r.header("content-type").is_some_and(|c| c.contains("json"))));
        assert!(requests
            .iter()
            .all(|r| r.header("x-api-key") == Some("very-secret")));
        assert!(
            !report.extension_output.contains("very-secret"),
            "headers are never logged"
        );
        let spans: Vec<Span> = common::otlp::spans(&collector)
            .into_iter()
            .map(|(_, s)| s)
            .collect();
        check_invocation_spans(&report, &spans);
        assert!(!common::otlp::metrics(&collector).is_empty());
        assert!(!common::otlp::logs(&collector).is_empty());
        // The bytes themselves, read by a decoder that shares nothing with the encoder: gzip, then
        // plain JSON checked against the OTLP/JSON rules.
        let mut checked = 0;
        for request in &requests {
            let mut json = Vec::new();
            std::io::Read::read_to_end(
                &mut flate2::read::GzDecoder::new(request.body.as_slice()),
                &mut json,
            )
            .expect("gzip");
            let value: Value = serde_json::from_slice(&json).expect("JSON");
            check_otlp_json(&value, "$", &mut checked);
        }
        assert!(checked > 50, "{checked} ids and 64-bit integers checked");
    });
}

/// The OTLP/JSON encoding rules (OTLP specification, "JSON Protobuf Encoding"): field names in
/// lowerCamelCase, trace and span ids as lowercase hex (32 and 16 digits, not base64), 64-bit
/// integers as decimal strings, enums as numbers. Counts the values it checked.
fn check_otlp_json(value: &Value, path: &str, checked: &mut usize) {
    const INT64: [&str; 7] = [
        "timeUnixNano",
        "startTimeUnixNano",
        "endTimeUnixNano",
        "observedTimeUnixNano",
        "count",
        "asInt",
        "intValue",
    ];
    match value {
        Value::Object(fields) => {
            for (key, v) in fields {
                let here = format!("{path}.{key}");
                let camel = key.chars().next().is_some_and(|c| c.is_ascii_lowercase())
                    && key.chars().all(|c| c.is_ascii_alphanumeric());
                assert!(camel, "{here}: not lowerCamelCase");
                let hex = |digits: usize| {
                    let s = v.as_str().unwrap_or_else(|| panic!("{here}: not a string"));
                    assert!(
                        s.len() == digits
                            && s.chars()
                                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)),
                        "{here}: {s:?} is not {digits} lowercase hex digits"
                    );
                };
                match key.as_str() {
                    "traceId" => hex(32),
                    "spanId" => hex(16),
                    "parentSpanId" if v.as_str() != Some("") => hex(16),
                    k if INT64.contains(&k) => {
                        let s = v
                            .as_str()
                            .unwrap_or_else(|| panic!("{here}: {v} not a string"));
                        assert!(
                            !s.is_empty()
                                && s.trim_start_matches('-')
                                    .chars()
                                    .all(|c| c.is_ascii_digit()),
                            "{here}: {s:?}"
                        );
                    }
                    "bucketCounts" => {
                        for c in v.as_array().expect("an array") {
                            assert!(
                                c.as_str().is_some_and(|s| s.parse::<u64>().is_ok()),
                                "{here}: {c}"
                            );
                        }
                    }
                    "kind" | "severityNumber" | "aggregationTemporality" => {
                        assert!(v.is_u64(), "{here}: {v} is not an enum number")
                    }
                    _ => {
                        check_otlp_json(v, &here, checked);
                        continue;
                    }
                }
                *checked += 1;
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                check_otlp_json(item, &format!("{path}[{i}]"), checked);
            }
        }
        _ => {}
    }
}

#[test]
fn signals_can_be_turned_off() {
    block_on(async {
        let (_, collector) = run_with_collector(
            2,
            &[
                ("OTEL_TRACES_EXPORTER", "none".into()),
                ("OTEL_LOGS_EXPORTER", "none".into()),
            ],
            |_| {},
        )
        .await;
        let paths: Vec<String> = collector
            .requests()
            .iter()
            .map(|r| r.path.clone())
            .collect();
        assert!(
            !paths.is_empty() && paths.iter().all(|p| p == "/v1/metrics"),
            "{paths:?}"
        );
    });
}

#[test]
fn snap_start_restore_becomes_a_span() {
    block_on(async {
        let (report, collector) = run_with_collector(2, &[], |c| c.snap_start = true).await;
        let spans: Vec<Span> = common::otlp::spans(&collector)
            .into_iter()
            .map(|(_, s)| s)
            .collect();
        let restore = spans
            .iter()
            .find(|s| s.name == "sim-function restore")
            .expect("restore span");
        let start = &report.events_of_type("platform.restoreStart")[0];
        assert_eq!(
            restore.start_time_unix_nano,
            nanos(start["time"].as_str().expect("time"))
        );
        let metrics: Vec<Metric> = common::otlp::metrics(&collector)
            .into_iter()
            .map(|(_, m)| m)
            .collect();
        assert_eq!(
            histogram(last(&metrics, "aws.lambda.restore_duration")).0,
            1
        );
    });
}
