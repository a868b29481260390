//! The mapper fed events one by one, its output checked span by span.

use super::*;
use bytes::Bytes;
use opentelemetry::metrics::MeterProvider as _;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use std::time::Duration;

fn mapper() -> Mapper {
    let provider = SdkMeterProvider::builder().build();
    let meter = provider.meter("test");
    Mapper::new(
        "fn".into(),
        InstrumentationScope::builder("test").build(),
        &meter,
        None,
        Pricing::for_arch("x86_64"),
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
