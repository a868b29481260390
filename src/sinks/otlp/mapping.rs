//! Telemetry API events → OpenTelemetry spans, metric measurements and log records.
//!
//! Platform events are replayed, not observed live, so spans are built as `SpanData` values with
//! the platform's own timestamps and the trace context of the X-Ray header. State is kept per
//! request id, so events split across POSTs or thaws (start and runtimeDone in different batches,
//! report in the next thaw) still make complete spans. Measurements go to SDK instruments and
//! are aggregated by the SDK until the next collection.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, SystemTime};

use opentelemetry::logs::{AnyValue, LogRecord as _, Logger as _, Severity};
use opentelemetry::metrics::{Counter, Gauge, Histogram, Meter};
use opentelemetry::trace::{
    Link, SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_sdk::logs::{SdkLogRecord, SdkLogger};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};
use serde::Deserialize;

use super::config::Pricing;
use super::xray;
use crate::event::{Event, EventKind};
use crate::pipeline::InvokeInfo;

/// Bucket advice of the OTel FaaS conventions for durations, in seconds.
pub const DURATION_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];
const MIB: f64 = 1024.0 * 1024.0;
/// Lambda memory sizes (128 MB to 10 GB), in bytes.
const MEMORY_BUCKETS_MIB: [f64; 11] = [
    64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 3072.0, 4096.0, 6144.0, 8192.0, 10240.0,
];
const UTILISATION_BUCKETS: [f64; 10] = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0];
const PRODUCED_BYTES_BUCKETS: [f64; 8] = [
    1024.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0, 6291456.0, 20971520.0,
];
/// Attributes of the metric data points (except `faas.errors`, which carries `error.type`).
/// None: the only candidate, `faas.trigger`, is always "other" (the Telemetry API does not say
/// what triggered an invocation), so it would split nothing, and an empty attribute set takes
/// the SDK's cheapest path (fewer instructions per invocation: 11 % with thin LTO, 1.4 % with the
/// fat LTO now used; BENCHMARKS.md).
const NO_ATTRIBUTES: &[KeyValue] = &[];
/// Invocations remembered while waiting for their later events; far more than can be in
/// flight, since an execution environment runs one invocation at a time.
const MAX_OPEN_INVOCATIONS: usize = 256;

/// The metric instruments, named after the OTel FaaS conventions and `aws.lambda.*` beyond them.
pub struct Instruments {
    invoke_duration: Histogram<f64>,
    init_duration: Histogram<f64>,
    mem_usage: Histogram<f64>,
    invocations: Counter<u64>,
    coldstarts: Counter<u64>,
    errors: Counter<u64>,
    timeouts: Counter<u64>,
    billed_duration: Histogram<f64>,
    memory_size: Gauge<u64>,
    memory_utilization: Histogram<f64>,
    response_latency: Histogram<f64>,
    response_duration: Histogram<f64>,
    runtime_overhead: Histogram<f64>,
    post_runtime_extensions_duration: Histogram<f64>,
    produced_bytes: Histogram<f64>,
    restore_duration: Histogram<f64>,
    logs_dropped_records: Counter<u64>,
    logs_dropped_bytes: Counter<u64>,
    out_of_memory: Counter<u64>,
    estimated_cost: Counter<f64>,
}

impl Instruments {
    pub fn new(meter: &Meter) -> Instruments {
        let seconds = |name: &'static str, description: &'static str| {
            meter
                .f64_histogram(name)
                .with_unit("s")
                .with_description(description)
                .with_boundaries(DURATION_BUCKETS.to_vec())
                .build()
        };
        Instruments {
            invoke_duration: seconds(
                "faas.invoke_duration",
                "Duration of the function's handler (runtimeDone durationMs)",
            ),
            init_duration: seconds("faas.init_duration", "Duration of the init phase"),
            mem_usage: meter
                .f64_histogram("faas.mem_usage")
                .with_unit("By")
                .with_description("Max memory used per invocation")
                .with_boundaries(MEMORY_BUCKETS_MIB.iter().map(|m| m * MIB).collect())
                .build(),
            invocations: meter
                .u64_counter("faas.invocations")
                .with_unit("{invocation}")
                .with_description("Successful invocations")
                .build(),
            coldstarts: meter
                .u64_counter("faas.coldstarts")
                .with_unit("{coldstart}")
                .with_description("Invocations that started a new execution environment")
                .build(),
            errors: meter
                .u64_counter("faas.errors")
                .with_unit("{error}")
                .with_description("Invocations that ended with status error or failure")
                .build(),
            timeouts: meter
                .u64_counter("faas.timeouts")
                .with_unit("{timeout}")
                .with_description("Invocations that timed out")
                .build(),
            billed_duration: seconds("aws.lambda.billed_duration", "Billed duration"),
            memory_size: meter
                .u64_gauge("aws.lambda.memory_size")
                .with_unit("By")
                .with_description("Configured memory size")
                .build(),
            memory_utilization: meter
                .f64_histogram("aws.lambda.memory_utilization")
                .with_unit("1")
                .with_description("Max memory used / memory size")
                .with_boundaries(UTILISATION_BUCKETS.to_vec())
                .build(),
            response_latency: seconds(
                "aws.lambda.response_latency",
                "runtimeDone responseLatency span",
            ),
            response_duration: seconds(
                "aws.lambda.response_duration",
                "runtimeDone responseDuration span",
            ),
            runtime_overhead: seconds(
                "aws.lambda.runtime_overhead",
                "runtimeDone runtimeOverhead span",
            ),
            post_runtime_extensions_duration: seconds(
                "aws.lambda.post_runtime_extensions_duration",
                "Time extensions kept the invocation open after the runtime finished",
            ),
            produced_bytes: meter
                .f64_histogram("aws.lambda.produced_bytes")
                .with_unit("By")
                .with_description("Bytes of the function's response")
                .with_boundaries(PRODUCED_BYTES_BUCKETS.to_vec())
                .build(),
            restore_duration: seconds("aws.lambda.restore_duration", "SnapStart restore duration"),
            logs_dropped_records: meter
                .u64_counter("aws.lambda.logs_dropped.records")
                .with_unit("{record}")
                .with_description("Log records Lambda dropped (platform.logsDropped)")
                .build(),
            logs_dropped_bytes: meter
                .u64_counter("aws.lambda.logs_dropped.bytes")
                .with_unit("By")
                .with_description("Log bytes Lambda dropped (platform.logsDropped)")
                .build(),
            out_of_memory: meter
                .u64_counter("aws.lambda.out_of_memory")
                .with_unit("{invocation}")
                .with_description("Invocations that ran out of memory")
                .build(),
            estimated_cost: meter
                .f64_counter("aws.lambda.estimated_cost")
                .with_unit("USD")
                .with_description("Estimated cost: GB-seconds billed × price + request price")
                .build(),
        }
    }
}

// ---- the records, as the Telemetry API schema (2022-12-13) defines them ----

/// An event whose record is parsed straight into its schema type: one pass over the bytes.
#[derive(Deserialize)]
struct Typed<'a, R> {
    #[serde(borrow)]
    time: Option<Cow<'a, str>>,
    record: R,
}

/// The event's time (when it has a valid one) and its record as `R`.
fn typed<'a, R: Deserialize<'a>>(raw: &'a [u8]) -> Option<(Option<SystemTime>, R)> {
    let event: Typed<'a, R> = serde_json::from_slice(raw).ok()?;
    Some((event.time.as_deref().and_then(parse_time), event.record))
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct TracingRecord {
    span_id: Option<String>,
    value: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct StartRecord {
    request_id: String,
    version: Option<String>,
    tracing: Option<TracingRecord>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PhaseSpanRecord {
    name: String,
    start: String,
    duration_ms: f64,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RuntimeDoneMetrics {
    duration_ms: Option<f64>,
    produced_bytes: Option<u64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RuntimeDoneRecord {
    request_id: String,
    status: String,
    error_type: Option<String>,
    #[serde(default)]
    metrics: RuntimeDoneMetrics,
    #[serde(default)]
    spans: Vec<PhaseSpanRecord>,
    tracing: Option<TracingRecord>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct ReportMetrics {
    duration_ms: Option<f64>,
    billed_duration_ms: Option<f64>,
    #[serde(rename = "memorySizeMB")]
    memory_size_mb: Option<u64>,
    #[serde(rename = "maxMemoryUsedMB")]
    max_memory_used_mb: Option<u64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReportRecord {
    request_id: String,
    status: String,
    error_type: Option<String>,
    #[serde(default)]
    metrics: ReportMetrics,
    tracing: Option<TracingRecord>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct PhaseRecord {
    initialization_type: Option<String>,
    phase: Option<String>,
    runtime_version: Option<String>,
    runtime_version_arn: Option<String>,
    status: Option<String>,
    error_type: Option<String>,
    metrics: Option<PhaseMetrics>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct PhaseMetrics {
    duration_ms: Option<f64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LogsDroppedRecord {
    dropped_records: Option<u64>,
    dropped_bytes: Option<u64>,
}

// ---- state ----

struct Invocation {
    trace_id: TraceId,
    span_id: SpanId,
    parent: Option<SpanId>,
    flags: TraceFlags,
    start: Option<SystemTime>,
    version: Option<String>,
    invoked_arn: Option<String>,
    coldstart: bool,
    /// Set when the invocation span has been emitted (at runtimeDone).
    ended_at: Option<SystemTime>,
    runtime_duration_ms: Option<f64>,
}

/// Init or SnapStart restore: one span from start to runtimeDone, emitted at its report.
#[derive(Default)]
struct Phase {
    ids: Option<(TraceId, SpanId)>,
    start: Option<SystemTime>,
    runtime_done: Option<SystemTime>,
    record: PhaseRecord,
    emitted: bool,
}

impl Phase {
    fn ids(&mut self) -> (TraceId, SpanId) {
        *self
            .ids
            .get_or_insert_with(|| (random_trace_id(), random_span_id()))
    }
}

/// The mapper's output since the last drain.
#[derive(Default)]
pub struct Mapped {
    pub spans: Vec<SpanData>,
    pub logs: Vec<SdkLogRecord>,
}

pub struct Mapper {
    function_name: String,
    scope: InstrumentationScope,
    instruments: Instruments,
    logger: Option<SdkLogger>,
    pricing: Pricing,
    invocations: HashMap<String, Invocation>,
    arrival: VecDeque<String>,
    notes: HashMap<String, InvokeInfo>,
    init: Phase,
    restore: Phase,
    invocations_seen: u64,
    /// The invocation running now (started, no runtimeDone yet), for log lines without requestId.
    current: Option<String>,
    /// Events whose record did not match the schema (passed on by other sinks anyway).
    pub unmappable: u64,
    out: Mapped,
}

fn random_trace_id() -> TraceId {
    TraceId::from_bytes(fastrand::u128(1..).to_be_bytes())
}

fn random_span_id() -> SpanId {
    SpanId::from_bytes(fastrand::u64(1..).to_be_bytes())
}

/// RFC 3339 (Lambda writes `2022-10-12T00:03:50.000Z`).
pub fn parse_time(text: &str) -> Option<SystemTime> {
    let text = text.trim();
    humantime::parse_rfc3339(text).ok().or_else(|| {
        let utc = text.strip_suffix("+00:00")?;
        humantime::parse_rfc3339(&format!("{utc}Z")).ok()
    })
}

/// A duration from the platform's milliseconds; negative, NaN or absurd values (beyond what a
/// `Duration` holds) become zero rather than a panic: one bad field costs only its own number.
fn ms(duration_ms: f64) -> Duration {
    Duration::try_from_secs_f64(duration_ms.max(0.0) / 1000.0).unwrap_or_default()
}

fn is_error_status(status: &str) -> bool {
    status != "success"
}

impl Mapper {
    pub fn new(
        function_name: String,
        scope: InstrumentationScope,
        meter: &Meter,
        logger: Option<SdkLogger>,
        pricing: Pricing,
    ) -> Mapper {
        Mapper {
            function_name,
            scope,
            instruments: Instruments::new(meter),
            logger,
            pricing,
            invocations: HashMap::new(),
            arrival: VecDeque::new(),
            notes: HashMap::new(),
            init: Phase::default(),
            restore: Phase::default(),
            invocations_seen: 0,
            current: None,
            unmappable: 0,
            out: Mapped::default(),
        }
    }

    pub fn note_invoke(&mut self, info: &InvokeInfo) {
        if let Some(invocation) = self.invocations.get_mut(&info.request_id) {
            invocation.invoked_arn = info.invoked_function_arn.clone();
            return;
        }
        if self.notes.len() >= MAX_OPEN_INVOCATIONS {
            self.notes.clear();
        }
        self.notes.insert(info.request_id.clone(), info.clone());
    }

    pub fn take(&mut self) -> Mapped {
        std::mem::take(&mut self.out)
    }

    pub fn map(&mut self, event: &Event) {
        let mapped = match event.kind() {
            EventKind::Unknown
            | EventKind::OtherPlatform
            | EventKind::Extension
            | EventKind::TelemetrySubscription => return,
            _ => self.map_known(event),
        };
        if mapped.is_none() {
            self.unmappable += 1;
            tracing::debug!(
                kind = event.kind().label(),
                "OTLP: event does not match the schema; not mapped"
            );
        }
    }

    fn map_known(&mut self, event: &Event) -> Option<()> {
        let raw = event.raw();
        match event.kind() {
            EventKind::Start => {
                let (time, record) = typed::<StartRecord>(raw)?;
                self.on_start(record, time?)
            }
            EventKind::RuntimeDone => {
                let (time, record) = typed::<RuntimeDoneRecord>(raw)?;
                self.on_runtime_done(record, time?)
            }
            EventKind::Report => {
                let (time, record) = typed::<ReportRecord>(raw)?;
                self.on_report(record, time?)
            }
            kind @ (EventKind::InitStart
            | EventKind::RestoreStart
            | EventKind::InitRuntimeDone
            | EventKind::RestoreRuntimeDone) => {
                let (time, record) = typed::<PhaseRecord>(raw)?;
                let time = Some(time?);
                let phase = self.phase(kind);
                phase.ids();
                if matches!(kind, EventKind::InitStart | EventKind::RestoreStart) {
                    phase.start = time;
                } else {
                    phase.runtime_done = time;
                }
                merge(&mut phase.record, record);
            }
            EventKind::InitReport | EventKind::RestoreReport => {
                let (time, record) = typed::<PhaseRecord>(raw)?;
                let restore = event.kind() == EventKind::RestoreReport;
                if let Some(d) = record.metrics.as_ref().and_then(|m| m.duration_ms) {
                    let histogram = if restore {
                        &self.instruments.restore_duration
                    } else {
                        &self.instruments.init_duration
                    };
                    histogram.record(d / 1000.0, NO_ATTRIBUTES);
                }
                let phase = self.phase(event.kind());
                merge(&mut phase.record, record);
                let end = time?;
                self.emit_phase(restore, end, false);
            }
            EventKind::LogsDropped => {
                let (_, record) = typed::<LogsDroppedRecord>(raw)?;
                self.instruments
                    .logs_dropped_records
                    .add(record.dropped_records.unwrap_or(0), NO_ATTRIBUTES);
                self.instruments
                    .logs_dropped_bytes
                    .add(record.dropped_bytes.unwrap_or(0), NO_ATTRIBUTES);
            }
            // With logs export off there is nothing to build, so nothing is parsed.
            EventKind::FunctionLog | EventKind::ExtensionLog if self.logger.is_some() => {
                let (time, record) = typed::<serde_json::Value>(raw)?;
                self.on_log(event.kind(), record, time)
            }
            _ => {}
        }
        Some(())
    }

    fn phase(&mut self, kind: EventKind) -> &mut Phase {
        match kind {
            EventKind::RestoreStart | EventKind::RestoreRuntimeDone | EventKind::RestoreReport => {
                &mut self.restore
            }
            _ => &mut self.init,
        }
    }

    fn invocation(&mut self, request_id: &str, tracing: Option<&TracingRecord>) -> &mut Invocation {
        if !self.invocations.contains_key(request_id) {
            while self.arrival.len() >= MAX_OPEN_INVOCATIONS {
                if let Some(old) = self.arrival.pop_front() {
                    self.invocations.remove(&old);
                }
            }
            let note = self.notes.remove(request_id);
            let header = tracing
                .and_then(|t| t.value.clone())
                .or_else(|| note.as_ref().and_then(|n| n.tracing.clone()));
            let xray = header.as_deref().and_then(xray::parse);
            let span_id = tracing
                .and_then(|t| t.span_id.as_deref())
                .and_then(|s| SpanId::from_hex(s).ok())
                .filter(|s| *s != SpanId::INVALID)
                .unwrap_or_else(random_span_id);
            self.invocations_seen += 1;
            let coldstart = self.invocations_seen == 1
                && self.init.record.initialization_type.as_deref()
                    != Some("provisioned-concurrency");
            if coldstart {
                self.instruments.coldstarts.add(1, NO_ATTRIBUTES);
            }
            self.arrival.push_back(request_id.to_string());
            self.invocations.insert(
                request_id.to_string(),
                Invocation {
                    trace_id: xray.map_or_else(random_trace_id, |x| x.trace_id),
                    span_id,
                    parent: xray.and_then(|x| x.parent),
                    flags: xray.map_or(TraceFlags::SAMPLED, |x| x.flags),
                    start: None,
                    version: None,
                    invoked_arn: note.and_then(|n| n.invoked_function_arn),
                    coldstart,
                    ended_at: None,
                    runtime_duration_ms: None,
                },
            );
        }
        self.invocations
            .get_mut(request_id)
            .expect("inserted above when missing")
    }

    fn on_start(&mut self, record: StartRecord, time: SystemTime) {
        let invocation = self.invocation(&record.request_id, record.tracing.as_ref());
        invocation.start = Some(time);
        invocation.version = record.version;
        self.current = Some(record.request_id);
    }

    fn on_runtime_done(&mut self, record: RuntimeDoneRecord, time: SystemTime) {
        let instruments = &self.instruments;
        if let Some(d) = record.metrics.duration_ms {
            instruments
                .invoke_duration
                .record(d / 1000.0, NO_ATTRIBUTES);
        }
        if let Some(bytes) = record.metrics.produced_bytes {
            instruments
                .produced_bytes
                .record(bytes as f64, NO_ATTRIBUTES);
        }
        match record.status.as_str() {
            "success" => instruments.invocations.add(1, NO_ATTRIBUTES),
            "timeout" => instruments.timeouts.add(1, NO_ATTRIBUTES),
            _ => instruments.errors.add(
                1,
                &[KeyValue::new(
                    "error.type",
                    record
                        .error_type
                        .clone()
                        .unwrap_or_else(|| record.status.clone()),
                )],
            ),
        }
        for span in &record.spans {
            let histogram = match span.name.as_str() {
                "responseLatency" => &instruments.response_latency,
                "responseDuration" => &instruments.response_duration,
                "runtimeOverhead" => &instruments.runtime_overhead,
                _ => continue,
            };
            histogram.record(span.duration_ms / 1000.0, NO_ATTRIBUTES);
        }
        if self.current.as_deref() == Some(record.request_id.as_str()) {
            self.current = None;
        }
        let invocation = self.invocation(&record.request_id, record.tracing.as_ref());
        if invocation.ended_at.is_some() {
            return; // a duplicate delivery
        }
        let start = invocation.start.unwrap_or_else(|| {
            time.checked_sub(ms(record.metrics.duration_ms.unwrap_or(0.0)))
                .unwrap_or(time)
        });
        invocation.ended_at = Some(time);
        invocation.runtime_duration_ms = record.metrics.duration_ms;
        let (trace_id, span_id, flags) =
            (invocation.trace_id, invocation.span_id, invocation.flags);
        let span = self.invocation_span(
            &record.request_id,
            start,
            time,
            &record.status,
            record.error_type.as_deref(),
            false,
        );
        self.out.spans.extend(span);
        for phase in &record.spans {
            let Some(phase_start) = parse_time(&phase.start) else {
                continue;
            };
            self.out.spans.push(self.child_span(
                (trace_id, flags),
                span_id,
                phase.name.clone(),
                phase_start,
                phase_start + ms(phase.duration_ms),
                Vec::new(),
            ));
        }
    }

    fn invocation_span(
        &self,
        request_id: &str,
        start: SystemTime,
        end: SystemTime,
        status: &str,
        error_type: Option<&str>,
        incomplete: bool,
    ) -> Option<SpanData> {
        let invocation = self.invocations.get(request_id)?;
        let mut attributes = vec![
            KeyValue::new("faas.invocation_id", request_id.to_string()),
            KeyValue::new("faas.coldstart", invocation.coldstart),
            KeyValue::new("faas.trigger", "other"),
            KeyValue::new("aws.lambda.status", status.to_string()),
        ];
        if let Some(arn) = &invocation.invoked_arn {
            attributes.push(KeyValue::new("cloud.resource_id", arn.clone()));
            attributes.push(KeyValue::new("aws.lambda.invoked_arn", arn.clone()));
        }
        if let Some(version) = &invocation.version {
            attributes.push(KeyValue::new("faas.version", version.clone()));
        }
        let status = if incomplete {
            attributes.push(KeyValue::new("aws.lambda.incomplete", true));
            Status::error("incomplete: no platform.runtimeDone before shutdown")
        } else if is_error_status(status) {
            let error = error_type.unwrap_or(status).to_string();
            attributes.push(KeyValue::new("error.type", error.clone()));
            Status::error(error)
        } else {
            Status::Unset
        };
        let mut links = SpanLinks::default();
        if invocation.coldstart {
            if let Some((trace_id, span_id)) = self.init.ids.or(self.restore.ids) {
                links.links.push(Link::new(
                    SpanContext::new(
                        trace_id,
                        span_id,
                        TraceFlags::SAMPLED,
                        false,
                        TraceState::default(),
                    ),
                    vec![KeyValue::new("aws.lambda.link", "init")],
                    0,
                ));
            }
        }
        Some(SpanData {
            span_context: SpanContext::new(
                invocation.trace_id,
                invocation.span_id,
                invocation.flags,
                false,
                TraceState::default(),
            ),
            parent_span_id: invocation.parent.unwrap_or(SpanId::INVALID),
            parent_span_is_remote: invocation.parent.is_some(),
            span_kind: SpanKind::Server,
            name: self.function_name.clone().into(),
            start_time: start,
            end_time: end.max(start),
            attributes,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links,
            status,
            instrumentation_scope: self.scope.clone(),
        })
    }

    fn child_span(
        &self,
        (trace_id, flags): (TraceId, TraceFlags),
        parent: SpanId,
        name: String,
        start: SystemTime,
        end: SystemTime,
        attributes: Vec<KeyValue>,
    ) -> SpanData {
        SpanData {
            span_context: SpanContext::new(
                trace_id,
                random_span_id(),
                flags,
                false,
                TraceState::default(),
            ),
            parent_span_id: parent,
            parent_span_is_remote: false,
            span_kind: SpanKind::Internal,
            name: name.into(),
            start_time: start,
            end_time: end.max(start),
            attributes,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: Status::Unset,
            instrumentation_scope: self.scope.clone(),
        }
    }

    fn on_report(&mut self, record: ReportRecord, time: SystemTime) {
        let m = &record.metrics;
        let instruments = &self.instruments;
        if let Some(used) = m.max_memory_used_mb {
            instruments
                .mem_usage
                .record(used as f64 * MIB, NO_ATTRIBUTES);
        }
        if let Some(size) = m.memory_size_mb {
            instruments
                .memory_size
                .record(size * 1024 * 1024, NO_ATTRIBUTES);
            if let (Some(used), true) = (m.max_memory_used_mb, size > 0) {
                instruments
                    .memory_utilization
                    .record(used as f64 / size as f64, NO_ATTRIBUTES);
            }
        }
        if let Some(billed) = m.billed_duration_ms {
            instruments
                .billed_duration
                .record(billed / 1000.0, NO_ATTRIBUTES);
            let gb = m.memory_size_mb.unwrap_or(0) as f64 / 1024.0;
            let cost = billed / 1000.0 * gb * self.pricing.per_gb_second + self.pricing.per_request;
            instruments.estimated_cost.add(cost, NO_ATTRIBUTES);
        }
        let oom = record.error_type.as_deref() == Some("Runtime.OutOfMemory")
            || (is_error_status(&record.status)
                && m.max_memory_used_mb.is_some()
                && m.max_memory_used_mb == m.memory_size_mb);
        if oom {
            instruments.out_of_memory.add(1, NO_ATTRIBUTES);
        }
        let total_ms = m.duration_ms;
        let known = self.invocations.contains_key(&record.request_id);
        let invocation = self.invocation(&record.request_id, record.tracing.as_ref());
        let (ended_at, runtime_ms) = (invocation.ended_at, invocation.runtime_duration_ms);
        let (trace_id, span_id, flags) =
            (invocation.trace_id, invocation.span_id, invocation.flags);
        match ended_at {
            Some(runtime_end) => {
                // What the report adds beyond runtimeDone is the extensions' post-runtime time.
                if let (Some(total), Some(runtime)) = (total_ms, runtime_ms) {
                    let overhead = (total - runtime).max(0.0);
                    self.instruments
                        .post_runtime_extensions_duration
                        .record(overhead / 1000.0, NO_ATTRIBUTES);
                    self.out.spans.push(self.child_span(
                        (trace_id, flags),
                        span_id,
                        "extensionOverhead".into(),
                        runtime_end,
                        runtime_end + ms(overhead),
                        vec![KeyValue::new("aws.lambda.report.duration_ms", total)],
                    ));
                }
            }
            None => {
                // No runtimeDone was seen: the report alone describes the invocation.
                let start = invocation.start.unwrap_or_else(|| {
                    time.checked_sub(ms(total_ms.unwrap_or(0.0)))
                        .unwrap_or(time)
                });
                if !known {
                    tracing::debug!(
                        request_id = record.request_id,
                        "OTLP: report without start or runtimeDone"
                    );
                }
                let span = self.invocation_span(
                    &record.request_id,
                    start,
                    time,
                    &record.status,
                    record.error_type.as_deref(),
                    false,
                );
                self.out.spans.extend(span);
            }
        }
        self.invocations.remove(&record.request_id);
        self.arrival.retain(|r| r != &record.request_id);
    }

    fn emit_phase(&mut self, restore: bool, report_time: SystemTime, incomplete: bool) {
        let function_name = self.function_name.clone();
        let scope = self.scope.clone();
        let phase = if restore {
            &mut self.restore
        } else {
            &mut self.init
        };
        if phase.emitted {
            return;
        }
        phase.emitted = true;
        let (trace_id, span_id) = phase.ids();
        let record = &phase.record;
        let duration = record.metrics.as_ref().and_then(|m| m.duration_ms);
        let start = phase
            .start
            .or_else(|| {
                duration.and_then(|d| phase.runtime_done.unwrap_or(report_time).checked_sub(ms(d)))
            })
            .unwrap_or(report_time);
        let end = phase
            .runtime_done
            .or_else(|| duration.map(|d| start + ms(d)))
            .unwrap_or(report_time);
        let mut attributes = vec![KeyValue::new("faas.name", function_name.clone())];
        let mut push = |key: &'static str, value: &Option<String>| {
            if let Some(v) = value {
                attributes.push(KeyValue::new(key, v.clone()));
            }
        };
        push(
            "aws.lambda.initialization_type",
            &record.initialization_type,
        );
        push("aws.lambda.phase", &record.phase);
        push("aws.lambda.runtime_version", &record.runtime_version);
        push(
            "aws.lambda.runtime_version_arn",
            &record.runtime_version_arn,
        );
        push("aws.lambda.status", &record.status);
        if let Some(d) = duration {
            attributes.push(KeyValue::new("aws.lambda.duration_ms", d));
        }
        let status_text = record.status.clone().unwrap_or_else(|| "success".into());
        let status = if incomplete {
            attributes.push(KeyValue::new("aws.lambda.incomplete", true));
            Status::error("incomplete: no report before shutdown")
        } else if is_error_status(&status_text) {
            let error = record.error_type.clone().unwrap_or(status_text);
            attributes.push(KeyValue::new("error.type", error.clone()));
            Status::error(error)
        } else {
            Status::Unset
        };
        let name = if restore {
            format!("{function_name} restore")
        } else {
            format!("{function_name} init")
        };
        self.out.spans.push(SpanData {
            span_context: SpanContext::new(
                trace_id,
                span_id,
                TraceFlags::SAMPLED,
                false,
                TraceState::default(),
            ),
            parent_span_id: SpanId::INVALID,
            parent_span_is_remote: false,
            span_kind: SpanKind::Server,
            name: name.into(),
            start_time: start,
            end_time: end.max(start),
            attributes,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status,
            instrumentation_scope: scope,
        });
    }

    fn on_log(&mut self, kind: EventKind, record: serde_json::Value, time: Option<SystemTime>) {
        let Some(logger) = &self.logger else {
            return;
        };
        let mut log = logger.create_log_record();
        let mut timestamp = time;
        let mut request_id = None;
        match record {
            serde_json::Value::String(text) => log.set_body(AnyValue::from(text)),
            serde_json::Value::Object(fields) => {
                let mut body = None;
                for (key, value) in fields {
                    match (key.as_str(), value) {
                        ("message" | "msg", serde_json::Value::String(m)) if body.is_none() => {
                            body = Some(m)
                        }
                        ("level", serde_json::Value::String(level)) => {
                            let (number, text) = severity(&level);
                            log.set_severity_number(number);
                            log.set_severity_text(text);
                        }
                        ("timestamp", serde_json::Value::String(ts)) => {
                            if let Some(t) = parse_time(&ts) {
                                timestamp = Some(t);
                            }
                        }
                        ("requestId", serde_json::Value::String(id)) => {
                            log.add_attribute("faas.invocation_id", id.clone());
                            request_id = Some(id);
                        }
                        (_, value) => log.add_attribute(key, json_to_any(value)),
                    }
                }
                log.set_body(AnyValue::from(body.unwrap_or_default()));
            }
            other => log.set_body(AnyValue::from(other.to_string())),
        }
        // The OTLP encoder requires an observed time: an event without a usable `time` (absent,
        // null, not RFC 3339) is observed now, so it costs its own timestamp and nothing else.
        let observed = time.unwrap_or_else(SystemTime::now);
        log.set_timestamp(timestamp.unwrap_or(observed));
        log.set_observed_timestamp(observed);
        log.add_attribute(
            "aws.lambda.log.source",
            if kind == EventKind::FunctionLog {
                "function"
            } else {
                "extension"
            },
        );
        let owner = request_id.or_else(|| self.current.clone());
        if let Some(invocation) = owner.as_deref().and_then(|r| self.invocations.get(r)) {
            log.set_trace_context(
                invocation.trace_id,
                invocation.span_id,
                Some(invocation.flags),
            );
            if let Some(r) = owner.filter(|_| {
                log.attributes_iter()
                    .all(|(k, _)| k.as_str() != "faas.invocation_id")
            }) {
                log.add_attribute("faas.invocation_id", r);
            }
        }
        self.out.logs.push(log);
    }

    /// At shutdown: spans whose end never came are exported, marked incomplete.
    pub fn finish(&mut self, now: SystemTime) {
        let open: Vec<String> = self
            .arrival
            .iter()
            .filter(|r| {
                self.invocations
                    .get(*r)
                    .is_some_and(|i| i.ended_at.is_none())
            })
            .cloned()
            .collect();
        for request_id in open {
            let start = self
                .invocations
                .get(&request_id)
                .and_then(|i| i.start)
                .unwrap_or(now);
            let span = self.invocation_span(&request_id, start, now, "incomplete", None, true);
            self.out.spans.extend(span);
            if let Some(i) = self.invocations.get_mut(&request_id) {
                i.ended_at = Some(now);
            }
        }
        for restore in [false, true] {
            let phase = if restore { &self.restore } else { &self.init };
            if phase.ids.is_some() && !phase.emitted {
                let complete = phase.runtime_done.is_some();
                self.emit_phase(restore, now, !complete);
            }
        }
    }
}

/// Fills fields of `into` that `from` knows (later events of a phase add to earlier ones).
fn merge(into: &mut PhaseRecord, from: PhaseRecord) {
    macro_rules! take {
        ($($field:ident),*) => { $( if from.$field.is_some() { into.$field = from.$field; } )* };
    }
    take!(
        initialization_type,
        phase,
        runtime_version,
        runtime_version_arn,
        status,
        error_type,
        metrics
    );
}

fn severity(level: &str) -> (Severity, &'static str) {
    match level.to_ascii_uppercase().as_str() {
        "TRACE" => (Severity::Trace, "TRACE"),
        "DEBUG" => (Severity::Debug, "DEBUG"),
        "INFO" => (Severity::Info, "INFO"),
        "WARN" | "WARNING" => (Severity::Warn, "WARN"),
        "ERROR" => (Severity::Error, "ERROR"),
        "FATAL" | "CRITICAL" => (Severity::Fatal, "FATAL"),
        _ => (Severity::Info, "INFO"),
    }
}

fn json_to_any(value: serde_json::Value) -> AnyValue {
    match value {
        serde_json::Value::String(s) => AnyValue::from(s),
        serde_json::Value::Bool(b) => AnyValue::from(b),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => AnyValue::from(i),
            None => AnyValue::from(n.as_f64().unwrap_or(0.0)),
        },
        other => AnyValue::from(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use opentelemetry::metrics::MeterProvider as _;
    use opentelemetry_sdk::metrics::SdkMeterProvider;

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
        assert!(
            matches!(&span.status, Status::Error { description } if description == "Runtime.Boom")
        );
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
}
