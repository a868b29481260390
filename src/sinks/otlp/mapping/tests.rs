//! The mapper fed events one by one, its output checked span by span.

use super::*;
use bytes::Bytes;
use opentelemetry::metrics::MeterProvider as _;
use opentelemetry::trace::{SpanId, SpanKind, Status, TraceId};
use opentelemetry_sdk::metrics::SdkMeterProvider;
use std::time::Duration;

fn mapper() -> Mapper {
    mapper_for(false, false)
}

/// A mapper for the default model or Managed Instances, with or without a logger.
fn mapper_for(managed_instances: bool, with_logs: bool) -> Mapper {
    use opentelemetry::logs::LoggerProvider as _;
    let provider = SdkMeterProvider::builder().build();
    let meter = provider.meter("test");
    let logger = with_logs.then(|| {
        opentelemetry_sdk::logs::SdkLoggerProvider::builder()
            .build()
            .logger("test")
    });
    Mapper::new(
        "fn".into(),
        InstrumentationScope::builder("test").build(),
        &meter,
        logger,
        Pricing::for_arch("x86_64"),
        Sampling::default(),
        managed_instances,
    )
}

fn event(json: &str) -> Event {
    let kind = serde_json::from_str::<serde_json::Value>(json)
        .ok()
        .and_then(|v| v["type"].as_str().map(EventKind::from_type))
        .unwrap_or(EventKind::Unknown);
    Event::new(Bytes::copy_from_slice(json.as_bytes()), kind)
}

const START: &str = r#"{"time":"2026-01-01T00:00:00.000Z","type":"platform.start","record":{"requestId":"r1","tracing":{"spanId":"1111111111111111","type":"X-Amzn-Trace-Id","value":"Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1"}}}"#;
const DONE: &str = r#"{"time":"2026-01-01T00:00:00.120Z","type":"platform.runtimeDone","record":{"requestId":"r1","status":"error","errorType":"Runtime.Boom","metrics":{"durationMs":120.5},"spans":[{"name":"responseLatency","start":"2026-01-01T00:00:00.000Z","durationMs":100.25}]}}"#;
const REPORT: &str = r#"{"time":"2026-01-01T00:00:00.200Z","type":"platform.report","record":{"requestId":"r1","status":"error","metrics":{"durationMs":130.5,"billedDurationMs":131,"memorySizeMB":128,"maxMemoryUsedMB":64}}}"#;

fn server_spans(spans: &[SpanData]) -> Vec<&SpanData> {
    spans
        .iter()
        .filter(|s| s.span_kind == SpanKind::Server)
        .collect()
}

#[test]
fn start_and_runtime_done_in_different_flushes_make_one_span() {
    let mut m = mapper();
    m.map(&event(START));
    assert!(m.take().spans.is_empty(), "no end yet, nothing to export");
    m.map(&event(DONE));
    let spans = m.take().spans;
    let server = server_spans(&spans);
    assert_eq!(server.len(), 1);
    let span = server[0];
    assert_eq!(
        span.span_context.trace_id(),
        TraceId::from_hex("5759e988bd862e3fe1be46a994272793").expect("hex")
    );
    assert_eq!(
        span.parent_span_id,
        SpanId::from_hex("53995c3f42cd8ad8").expect("hex")
    );
    assert_eq!(
        span.span_context.span_id(),
        SpanId::from_hex("1111111111111111").expect("hex")
    );
    assert_eq!(
        span.end_time.duration_since(span.start_time).ok(),
        Some(Duration::from_millis(120))
    );
    assert!(matches!(&span.status, Status::Error { description } if description == "Runtime.Boom"));
    let child = spans
        .iter()
        .find(|s| s.name == "responseLatency")
        .expect("phase span");
    assert_eq!(child.parent_span_id, span.span_context.span_id());
    assert_eq!(
        child.end_time.duration_since(child.start_time).ok(),
        Some(Duration::from_micros(100_250))
    );
    // The report comes in a later thaw: it adds the extension overhead as a child.
    m.map(&event(REPORT));
    let later = m.take().spans;
    assert_eq!(later.len(), 1);
    assert_eq!(later[0].name, "extensionOverhead");
    assert_eq!(later[0].parent_span_id, span.span_context.span_id());
    assert_eq!(
        later[0].end_time.duration_since(later[0].start_time).ok(),
        Some(Duration::from_millis(10))
    );
}

#[test]
fn runtime_done_before_start_still_makes_one_complete_span() {
    let mut m = mapper();
    m.map(&event(DONE));
    m.map(&event(START));
    let spans = m.take().spans;
    let server = server_spans(&spans);
    assert_eq!(server.len(), 1, "a late start does not make a second span");
    let span = server[0];
    // The start is derived from runtimeDone's time and duration.
    assert_eq!(
        span.end_time.duration_since(span.start_time).ok(),
        Some(Duration::from_micros(120_500))
    );
}

#[test]
fn a_report_alone_makes_the_invocation_span() {
    let mut m = mapper();
    m.map(&event(REPORT));
    let spans = m.take().spans;
    assert_eq!(server_spans(&spans).len(), 1);
}

#[test]
fn an_invocation_without_end_is_exported_at_shutdown_marked_incomplete() {
    let mut m = mapper();
    m.map(&event(START));
    m.finish(SystemTime::now());
    let spans = m.take().spans;
    let server = server_spans(&spans);
    assert_eq!(server.len(), 1);
    assert!(server[0]
        .attributes
        .iter()
        .any(|kv| kv.key.as_str() == "aws.lambda.incomplete"));
    assert!(matches!(server[0].status, Status::Error { .. }));
    m.finish(SystemTime::now());
    assert!(m.take().spans.is_empty(), "exported once");
}

#[test]
fn records_that_do_not_match_the_schema_are_counted_not_fatal() {
    let mut m = mapper();
    m.map(&event(
        r#"{"time":"x","type":"platform.runtimeDone","record":"a string"}"#,
    ));
    m.map(&event(
        r#"{"type":"platform.report","record":{"requestId":5}}"#,
    ));
    assert_eq!(m.unmappable, 2);
    assert!(m.take().spans.is_empty());
}

// ---- Lambda Managed Instances: overlapping invocations, no runtimeDone, tenants ----

fn mi_start(request_id: &str, at: &str, tenant: &str) -> Event {
    event(&format!(
        r#"{{"time":"{at}","type":"platform.start","record":{{"requestId":"{request_id}","version":"$LATEST","tenantId":"{tenant}"}}}}"#
    ))
}

fn mi_report(request_id: &str, at: &str, status: &str, duration_ms: f64) -> Event {
    event(&format!(
        r#"{{"time":"{at}","type":"platform.report","record":{{"requestId":"{request_id}","status":"{status}","metrics":{{"durationMs":{duration_ms}}},"spans":[{{"name":"responseLatency","start":"2026-01-01T00:00:00.010Z","durationMs":5.0}},{{"name":"responseDuration","start":"2026-01-01T00:00:00.015Z","durationMs":1.0}}]}}}}"#
    ))
}

fn mi_log(request_id: Option<&str>, at: &str, tenant: &str) -> Event {
    let id = request_id
        .map(|r| format!(r#","requestId":"{r}""#))
        .unwrap_or_default();
    event(&format!(
        r#"{{"time":"{at}","type":"function","record":{{"timestamp":"{at}","level":"INFO","message":"hello"{id},"tenantId":"{tenant}"}}}}"#
    ))
}

fn attribute<'a>(span: &'a SpanData, key: &str) -> Option<&'a opentelemetry::Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| &kv.value)
}

#[test]
fn managed_instances_interleaved_invocations_each_make_one_span_from_start_to_report() {
    let mut m = mapper_for(true, false);
    m.map(&mi_start("a", "2026-01-01T00:00:00.000Z", "t1"));
    m.map(&mi_start("b", "2026-01-01T00:00:00.005Z", "t2"));
    m.map(&mi_report("b", "2026-01-01T00:00:00.030Z", "error", 25.0));
    m.map(&mi_report("a", "2026-01-01T00:00:00.050Z", "success", 50.0));
    let spans = m.take().spans;
    let server = server_spans(&spans);
    assert_eq!(server.len(), 2);
    for (id, tenant, ms, error) in [("a", "t1", 50, false), ("b", "t2", 25, true)] {
        let span = server
            .iter()
            .find(|s| {
                attribute(s, "faas.invocation_id").map(|v| v.as_str().into_owned())
                    == Some(id.to_string())
            })
            .expect("a span per request id");
        assert_eq!(
            span.end_time.duration_since(span.start_time).ok(),
            Some(Duration::from_millis(ms))
        );
        assert!(
            attribute(span, "faas.coldstart").is_none(),
            "no cold starts"
        );
        assert_eq!(
            attribute(span, TENANT_ID).map(|v| v.as_str().into_owned()),
            Some(tenant.to_string())
        );
        assert_eq!(matches!(span.status, Status::Error { .. }), error);
        let children: Vec<&str> = spans
            .iter()
            .filter(|s| s.parent_span_id == span.span_context.span_id())
            .map(|s| s.name.as_ref())
            .collect();
        assert_eq!(children, ["responseLatency", "responseDuration"]);
    }
}

#[test]
fn the_default_model_keeps_the_cold_start_flag() {
    let mut m = mapper();
    m.map(&event(START));
    m.map(&event(DONE));
    let spans = m.take().spans;
    let server = server_spans(&spans);
    assert_eq!(
        attribute(server[0], "faas.coldstart"),
        Some(&opentelemetry::Value::Bool(true))
    );
}

#[test]
fn an_invocation_whose_report_never_comes_is_let_go_after_the_bound() {
    let mut m = mapper_for(true, false);
    m.map(&mi_start("lost", "2026-01-01T00:00:00.000Z", "t"));
    m.map(&mi_start("later", "2026-01-01T00:10:00.000Z", "t"));
    assert!(m.take().spans.is_empty(), "ten minutes is within the bound");
    m.map(&mi_start("much-later", "2026-01-01T00:16:00.000Z", "t"));
    let spans = m.take().spans;
    let server = server_spans(&spans);
    assert_eq!(server.len(), 1);
    assert_eq!(
        attribute(server[0], "faas.invocation_id").map(|v| v.as_str().into_owned()),
        Some("lost".to_string())
    );
    assert!(attribute(server[0], "aws.lambda.incomplete").is_some());
    assert_eq!(m.invocations.len(), 2, "the lost invocation is forgotten");
}

#[test]
fn managed_instances_logs_join_only_through_their_own_request_id() {
    let mut m = mapper_for(true, true);
    m.map(&mi_start("a", "2026-01-01T00:00:00.000Z", "t1"));
    m.map(&mi_start("b", "2026-01-01T00:00:00.001Z", "t2"));
    m.map(&mi_log(Some("a"), "2026-01-01T00:00:00.002Z", "t1"));
    m.map(&mi_log(None, "2026-01-01T00:00:00.003Z", "t2"));
    m.map(&mi_report("a", "2026-01-01T00:00:00.004Z", "success", 4.0));
    // A record that arrives after its invocation's report still joins it.
    m.map(&mi_log(Some("a"), "2026-01-01T00:00:00.005Z", "t1"));
    let out = m.take();
    let a = server_spans(&out.spans)[0].span_context.trace_id();
    assert_eq!(out.logs.len(), 3);
    let trace = |log: &SdkLogRecord| log.trace_context().map(|t| t.trace_id);
    assert_eq!(trace(&out.logs[0]), Some(a));
    assert_eq!(trace(&out.logs[1]), None, "no requestId: not guessed");
    assert_eq!(trace(&out.logs[2]), Some(a));
    let tenant = |log: &SdkLogRecord| {
        log.attributes_iter()
            .find(|(k, _)| k.as_str() == TENANT_ID)
            .map(|(_, v)| format!("{v:?}"))
    };
    assert!(tenant(&out.logs[0]).is_some_and(|t| t.contains("t1")));
    assert!(tenant(&out.logs[1]).is_some_and(|t| t.contains("t2")));
}

#[test]
fn the_default_model_joins_a_log_without_request_id_to_the_running_invocation() {
    let mut m = mapper_for(false, true);
    m.map(&event(START));
    m.map(&mi_log(None, "2026-01-01T00:00:00.003Z", "t"));
    let out = m.take();
    assert_eq!(
        out.logs[0].trace_context().map(|t| t.trace_id),
        Some(TraceId::from_hex("5759e988bd862e3fe1be46a994272793").expect("hex"))
    );
}

#[test]
fn a_report_delivered_again_makes_no_second_span_on_either_model() {
    for managed in [false, true] {
        let mut m = mapper_for(managed, false);
        m.map(&mi_start("a", "2026-01-01T00:00:00.000Z", "t"));
        m.map(&mi_report("a", "2026-01-01T00:00:00.050Z", "success", 50.0));
        m.map(&mi_report("a", "2026-01-01T00:00:00.050Z", "success", 50.0));
        m.map(&mi_start("a", "2026-01-01T00:00:00.000Z", "t"));
        let spans = m.take().spans;
        assert_eq!(server_spans(&spans).len(), 1, "managed: {managed}");
        assert!(m.invocations.is_empty(), "nothing left open");
    }
}

#[test]
fn a_report_after_its_invocation_was_let_go_is_not_a_second_span() {
    let mut m = mapper_for(true, false);
    m.map(&mi_start("slow", "2026-01-01T00:00:00.000Z", "t"));
    m.map(&mi_start("other", "2026-01-01T00:16:00.000Z", "t"));
    m.map(&mi_report(
        "slow",
        "2026-01-01T00:17:00.000Z",
        "success",
        1_020_000.0,
    ));
    let spans = m.take().spans;
    let server = server_spans(&spans);
    assert_eq!(server.len(), 1, "the incomplete span only");
    assert!(attribute(server[0], "aws.lambda.incomplete").is_some());
}
