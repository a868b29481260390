//! Lambda Managed Instances, against the real extension binary under the Lambda stand-in in that
//! model: INVOKE registration refused, schema 2025-01-29 required, invocations that overlap with
//! no INVOKE, no runtimeDone and no freeze, JSON logs carrying their requestId and tenantId.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{assert_clean, block_on, config, otlp, run, sorted};
use lambda_sim::otlp_receiver::{attr_str, hex, number_value};
use lambda_sim::{RecordingEndpoint, SimConfig, SimReport};
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use serde_json::Value;

/// Where the bridge writes the tenant of an invocation and of its log records.
const TENANT: &str = "aws.lambda.tenant.id";
/// Within the timer's default interval (1 s), the buffering window (25 ms) and slack for a loaded
/// machine (the bound is a maximum over hundreds of events): a timer at twice the interval fails
/// (2.0 s), and the run (about 4 s) is longer than this bound twice over, so delivery at the
/// shutdown fails too.
const FRESH: Duration = Duration::from_millis(1_750);
/// Invocations in the concurrent run: 8 at a time, 400 ms each, about 4 s.
const CONCURRENT_INVOCATIONS: usize = 80;

/// `concurrency` invocations at once, `invocations` in all, over 3 tenants, each running about
/// 400 ms (so 40 of them at 8 at once last about two seconds).
fn managed(invocations: usize, concurrency: usize, env: &[(&str, String)]) -> SimConfig {
    SimConfig {
        managed_instances: Some(concurrency),
        tenants: 3,
        invoke_duration_ms: 400,
        error_every: Some(5),
        ..config(invocations, env)
    }
}

/// The most invocations that ran at the same moment.
fn max_overlap(report: &SimReport) -> usize {
    report
        .invocations
        .iter()
        .map(|i| {
            report
                .invocations
                .iter()
                .filter(|o| o.invoked_at <= i.invoked_at && i.invoked_at < o.runtime_done_emitted)
                .count()
        })
        .max()
        .unwrap_or(0)
}

/// The value of a cumulative counter in the last export that has it (summed over its points).
fn last_counter(
    metrics: &[(
        opentelemetry_proto::tonic::resource::v1::Resource,
        opentelemetry_proto::tonic::metrics::v1::Metric,
    )],
    name: &str,
) -> f64 {
    metrics
        .iter()
        .rev()
        .find(|(_, m)| m.name == name)
        .map(|(_, m)| match &m.data {
            Some(Data::Sum(sum)) => sum.data_points.iter().map(number_value).sum(),
            _ => panic!("{name} is not a sum"),
        })
        .unwrap_or(0.0)
}

/// The OTel trace id, parent span id and span id in a `platform.start`'s X-Ray `tracing`.
fn xray_ids(start: &Value) -> (String, String, String) {
    let tracing = &start["record"]["tracing"];
    let header = tracing["value"].as_str().expect("an X-Ray header");
    let field = |name: &str| {
        header
            .split(';')
            .find_map(|part| part.strip_prefix(name))
            .expect("a field of the header")
            .to_string()
    };
    let root = field("Root=");
    let trace_id = root.split('-').skip(1).collect::<String>();
    (
        trace_id,
        field("Parent="),
        tracing["spanId"].as_str().expect("spanId").to_string(),
    )
}

/// When each event (by its text) reached `endpoint`.
fn arrivals(endpoint: &RecordingEndpoint) -> HashMap<String, Instant> {
    let mut at = HashMap::new();
    for request in endpoint.requests().iter().filter(|r| r.succeeded()) {
        let events: Vec<Value> = serde_json::from_slice(&request.body).expect("a JSON array");
        for event in events {
            at.entry(event.to_string()).or_insert(request.arrived_at);
        }
    }
    at
}

#[test]
fn registers_for_shutdown_only_and_subscribes_with_the_2025_schema() {
    block_on(async {
        let sink = RecordingEndpoint::start(lambda_sim::Behaviour::ok())
            .await
            .expect("sink");
        let report = run(managed(4, 2, &[("DISPATCH_POST_URI", sink.url())])).await;
        assert_clean(&report);
        assert_eq!(report.register_status, Some(200));
        assert_eq!(
            report.register_body.as_ref().map(|b| b["events"].clone()),
            Some(serde_json::json!(["SHUTDOWN"]))
        );
        assert_eq!(report.subscribe_status, Some(200));
        assert_eq!(
            report
                .subscription_body
                .as_ref()
                .map(|b| b["schemaVersion"].clone()),
            Some(Value::from("2025-01-29"))
        );
        // The model is logged once, at start.
        let mentions = report
            .extension_output
            .lines()
            .filter(|l| l.contains("model=managed-instances"))
            .count();
        assert_eq!(mentions, 1, "{}", report.extension_output);
        assert_eq!(sorted(&sink.received_events()), sorted(&report.events_sent));
        // The reports waited for, and still done 250 ms before the deadline (2 s).
        let took = report.shutdown_duration.expect("exited");
        assert!(
            took <= Duration::from_millis(2_000 - 250 + 120),
            "exited {took:?} after SHUTDOWN"
        );
    });
}

/// Eight invocations at a time over about four seconds, none shown to the extension: every event
/// reaches the raw endpoint once and within 1.75 s of reaching the bridge (the 1 s timer); each
/// invocation is one span with its report's duration and status, no cold-start flag, its tenant;
/// every log record is on its own invocation's trace; the bridge exits 0 before the deadline.
#[test]
fn concurrent_invocations_arrive_once_promptly_and_each_on_its_own_trace() {
    block_on(async {
        let sink = RecordingEndpoint::start(lambda_sim::Behaviour::ok())
            .await
            .expect("sink");
        let collector = RecordingEndpoint::start(lambda_sim::Behaviour::ok())
            .await
            .expect("collector");
        let gateway = RecordingEndpoint::start(lambda_sim::Behaviour::ok())
            .await
            .expect("a Pushgateway stand-in");
        let report = run(managed(
            CONCURRENT_INVOCATIONS,
            8,
            &[
                ("DISPATCH_POST_URI", sink.url()),
                ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url()),
                ("BRIDGE_PUSHGATEWAY_URL", gateway.url()),
            ],
        ))
        .await;
        assert_clean(&report);
        // The bridge's own count of the invocations it handled: their starts, as no INVOKE comes.
        assert_eq!(
            common::metric_value(&common::last_push(&gateway), "bridge_invocations_total"),
            Some(CONCURRENT_INVOCATIONS as f64)
        );
        assert_eq!(report.totals.invocations, CONCURRENT_INVOCATIONS);
        assert!(
            max_overlap(&report) >= 4,
            "invocations did not overlap: the test proves nothing"
        );
        assert_eq!(
            report.totals.next_calls, 1,
            "one /event/next, answered with SHUTDOWN: no INVOKE"
        );
        assert!(report.events_of_type("platform.runtimeDone").is_empty());
        let shutdown = report
            .shutdown_duration
            .expect("the bridge exited after SHUTDOWN");
        // Done 250 ms before deadlineMs (the simulator's default, 2 s; it would kill only at the
        // deadline), plus what an exit needs to be seen on a loaded machine.
        assert!(
            shutdown <= Duration::from_millis(2_000 - 250 + 120),
            "exited {shutdown:?} after SHUTDOWN (deadline 2 s, margin 250 ms)"
        );
        assert!(!report.killed);

        // Every event once, and promptly: those the bridge had before SHUTDOWN reached the
        // endpoint within a couple of seconds, on the timer, not at shutdown.
        assert_eq!(sorted(&sink.received_events()), sorted(&report.events_sent));
        let shutdown_at = report.shutdown_at.expect("SHUTDOWN handed over");
        let reached = arrivals(&sink);
        let mut before_shutdown = 0;
        for (event, timing) in report.events_sent.iter().zip(&report.event_times) {
            let pushed = timing.delivered_at.expect("pushed to the bridge");
            if pushed >= shutdown_at {
                continue;
            }
            let arrived = reached[&event.to_string()];
            assert!(
                arrived.saturating_duration_since(pushed) < FRESH,
                "{} reached the endpoint {:?} after the bridge got it",
                event["type"],
                arrived.saturating_duration_since(pushed)
            );
            before_shutdown += usize::from(arrived < shutdown_at);
        }
        assert!(
            before_shutdown * 2 > report.events_sent.len(),
            "only {before_shutdown} of {} events left before SHUTDOWN: delivery is not on a timer",
            report.events_sent.len()
        );

        // One SERVER span per request id: the report's duration and status, its tenant, no
        // cold-start flag.
        let spans = otlp::spans(&collector);
        let reports: HashMap<&str, &Value> = report
            .events_of_type("platform.report")
            .into_iter()
            .map(|e| (e["record"]["requestId"].as_str().expect("id"), &e["record"]))
            .collect();
        let mut trace_of = HashMap::new();
        for invocation in &report.invocations {
            let server: Vec<_> = spans
                .iter()
                .map(|(_, s)| s)
                .filter(|s| {
                    s.kind == SpanKind::Server as i32
                        && attr_str(&s.attributes, "faas.invocation_id")
                            == Some(invocation.request_id.as_str())
                })
                .collect();
            assert_eq!(server.len(), 1, "invocation {}", invocation.index);
            let span = server[0];
            let record = reports[invocation.request_id.as_str()];
            let duration_ms = (span.end_time_unix_nano - span.start_time_unix_nano) as f64 / 1e6;
            let reported = record["metrics"]["durationMs"]
                .as_f64()
                .expect("durationMs");
            assert!(
                (duration_ms - reported).abs() < 0.01,
                "span {duration_ms} ms, report {reported} ms"
            );
            let error = span
                .status
                .as_ref()
                .is_some_and(|s| s.code == StatusCode::Error as i32);
            assert_eq!(error, invocation.status != "success");
            if error {
                assert_eq!(
                    attr_str(&span.attributes, "error.type"),
                    invocation.error_type.as_deref()
                );
            }
            assert!(
                span.attributes.iter().all(|kv| kv.key != "faas.coldstart"),
                "no cold starts under Managed Instances"
            );
            assert_eq!(
                attr_str(&span.attributes, TENANT),
                invocation.tenant_id.as_deref()
            );
            // Trace context from platform.start's tracing.
            let start = report
                .events_of_type("platform.start")
                .into_iter()
                .find(|e| e["record"]["requestId"] == *invocation.request_id)
                .expect("its platform.start");
            let (trace_id, parent, span_id) = xray_ids(start);
            assert_eq!(hex(&span.trace_id), trace_id);
            assert_eq!(hex(&span.parent_span_id), parent);
            assert_eq!(hex(&span.span_id), span_id);
            let children = spans
                .iter()
                .filter(|(_, s)| s.parent_span_id == span.span_id)
                .count();
            assert_eq!(children, 2, "responseLatency and responseDuration");
            trace_of.insert(invocation.request_id.clone(), span.trace_id.clone());
        }

        // Every log record joins its own invocation's trace, with its tenant.
        let logs = otlp::logs(&collector);
        assert_eq!(logs.len(), report.events_of_type("function").len());
        let tenant_of: HashMap<&str, Option<&str>> = report
            .invocations
            .iter()
            .map(|i| (i.request_id.as_str(), i.tenant_id.as_deref()))
            .collect();
        let mut without_request_id = 0;
        for (_, log) in &logs {
            let Some(id) = attr_str(&log.attributes, "faas.invocation_id") else {
                // Eight invocations run at once: nothing says which one it belongs to.
                assert!(
                    log.trace_id.iter().all(|b| *b == 0),
                    "a log record without requestId was joined to a guess"
                );
                without_request_id += 1;
                continue;
            };
            assert_eq!(
                hex(&log.trace_id),
                hex(&trace_of[id]),
                "a log record of {id} on another trace"
            );
            assert_eq!(attr_str(&log.attributes, TENANT), tenant_of[id]);
        }
        assert_eq!(
            without_request_id,
            CONCURRENT_INVOCATIONS / 4,
            "every fourth invocation's first line"
        );

        // Metrics only from fields that are present: outcomes partition the invocations; no
        // billed duration, memory or cold start was invented.
        let metrics = otlp::metrics(&collector);
        let names: Vec<&str> = metrics.iter().map(|(_, m)| m.name.as_str()).collect();
        for absent in [
            "faas.coldstarts",
            "aws.lambda.billed_duration",
            "faas.mem_usage",
            "aws.lambda.memory_size",
            "aws.lambda.estimated_cost",
        ] {
            assert!(!names.contains(&absent), "{absent} was exported");
        }
        assert!(names.contains(&"faas.invoke_duration"));
        // Outcomes from the reports partition the invocations, each counted once.
        let errors = report.count_status("error") as f64;
        assert_eq!(errors, (CONCURRENT_INVOCATIONS / 5) as f64);
        assert_eq!(last_counter(&metrics, "faas.errors"), errors);
        assert_eq!(
            last_counter(&metrics, "faas.invocations"),
            CONCURRENT_INVOCATIONS as f64 - errors,
            "successful invocations"
        );
    });
}

/// `BRIDGE_FLUSH=end` has no meaning there: one ERROR line, and the timer delivers anyway.
#[test]
fn flush_at_end_is_refused_and_the_timer_used() {
    block_on(async {
        let sink = RecordingEndpoint::start(lambda_sim::Behaviour::ok())
            .await
            .expect("sink");
        let report = run(managed(
            24,
            8,
            &[
                ("DISPATCH_POST_URI", sink.url()),
                ("BRIDGE_FLUSH", "end".into()),
            ],
        ))
        .await;
        assert_clean(&report);
        let refusals: Vec<&str> = report
            .extension_output
            .lines()
            .filter(|l| l.contains("ERROR") && l.contains("BRIDGE_FLUSH"))
            .collect();
        assert_eq!(refusals.len(), 1, "{}", report.extension_output);
        assert!(refusals[0].contains("periodic:1000"), "{}", refusals[0]);
        let shutdown_at = report.shutdown_at.expect("SHUTDOWN handed over");
        assert!(
            sink.requests()
                .iter()
                .any(|r| r.succeeded() && r.arrived_at < shutdown_at),
            "nothing was delivered before SHUTDOWN"
        );
        assert_eq!(sorted(&sink.received_events()), sorted(&report.events_sent));
    });
}

/// SHUTDOWN while invocations are still running: the bridge waits for their reports (they come
/// after SHUTDOWN), delivers everything and exits 0 before the deadline.
#[test]
fn shutdown_waits_for_the_invocations_still_running() {
    block_on(async {
        let sink = RecordingEndpoint::start(lambda_sim::Behaviour::ok())
            .await
            .expect("sink");
        let mut cfg = managed(16, 8, &[("DISPATCH_POST_URI", sink.url())]);
        cfg.shutdown_during_invocations = true;
        let report = run(cfg).await;
        assert_clean(&report);
        let shutdown_at = report.shutdown_at.expect("SHUTDOWN handed over");
        let late_reports = report
            .events_of_type("platform.report")
            .len()
            .saturating_sub(
                report
                    .invocations
                    .iter()
                    .filter(|i| i.runtime_done_emitted < shutdown_at)
                    .count(),
            );
        assert!(
            late_reports > 0,
            "no report came after SHUTDOWN: the test proves nothing"
        );
        assert_eq!(sorted(&sink.received_events()), sorted(&report.events_sent));
    });
}
