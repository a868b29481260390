//! Telemetry API events → OpenTelemetry spans, metric measurements and log records: the state
//! kept between events and what each event does with it. The records' types are in [`schema`],
//! the instruments in [`instruments`], span and log building in [`spans`] and [`logs`].
//!
//! State is kept per request id, so events split across POSTs or thaws (start and runtimeDone in
//! different batches, report in the next thaw) still make complete spans, with the trace context
//! of the X-Ray header. Under Lambda Managed Instances invocations overlap and have no
//! runtimeDone: each span runs from its start to its report, log records join their invocation
//! only through the `requestId` they carry, and there are no cold starts.
//!
//! [`schema`]: super::schema
//! [`instruments`]: super::instruments
//! [`spans`]: super::spans
//! [`logs`]: super::logs

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, SystemTime};

use opentelemetry::logs::LogRecord as _;
use opentelemetry::metrics::Meter;
use opentelemetry::trace::{SpanId, SpanKind, Status, TraceFlags, TraceId};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_sdk::logs::{SdkLogRecord, SdkLogger};
use opentelemetry_sdk::trace::{SpanData, SpanLinks};

use super::config::Pricing;
use super::instruments::Instruments;
use super::logs;
use super::schema::{
    after, is_error_status, merge, ms, parse_time, typed, LogsDroppedRecord, PhaseRecord,
    PhaseSpanRecord, ReportRecord, RuntimeDoneRecord, StartRecord, TracingRecord,
};
use super::spans::{link_to_init, random_span_id, random_trace_id, Span};
use super::xray;
use crate::event::{Event, EventKind};
use crate::pipeline::InvokeInfo;

/// Invocations remembered while waiting for their later events: far more than can be in flight
/// (one at a time on the default model; Managed Instances runs tens per vCPU). Beyond this, or
/// past [`MAX_OPEN_AGE`], the oldest is let go, its span exported as incomplete if it had none.
const MAX_OPEN_INVOCATIONS: usize = 4096;
/// Lambda's longest function timeout; Managed Instances does not enforce one, so an invocation
/// whose report never comes is closed after this (by the time of the events that follow).
const MAX_OPEN_AGE: Duration = Duration::from_secs(15 * 60);
/// Ended invocations remembered, so that an event delivered again (a batch Lambda retried) makes
/// no second span and counts nothing twice, and, under Managed Instances, for log records that
/// arrive after their report (several invocations end close together there).
const RECENTLY_ENDED: usize = 256;
const RECENTLY_ENDED_DEFAULT_MODEL: usize = 16;
/// `initializationType` of Lambda Managed Instances.
const MANAGED_INSTANCES: &str = "lambda-managed-instances";
/// The invocation span's and its log records' tenant attribute. No OpenTelemetry convention
/// names Lambda's tenant isolation yet; this follows the `aws.lambda.*` names used here.
pub const TENANT_ID: &str = "aws.lambda.tenant.id";

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
    tenant_id: Option<String>,
    /// Set when the invocation span has been emitted (at runtimeDone).
    ended_at: Option<SystemTime>,
    runtime_duration_ms: Option<f64>,
}

/// What a log record needs to join an invocation that has ended.
#[derive(Clone)]
struct LogJoin {
    trace_id: TraceId,
    span_id: SpanId,
    flags: TraceFlags,
    tenant_id: Option<String>,
}

impl From<&Invocation> for LogJoin {
    fn from(i: &Invocation) -> LogJoin {
        LogJoin {
            trace_id: i.trace_id,
            span_id: i.span_id,
            flags: i.flags,
            tenant_id: i.tenant_id.clone(),
        }
    }
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
    /// The invocation running now (started, no runtimeDone yet), for log lines without requestId
    /// (default model only: under Managed Instances several run at once).
    current: Option<String>,
    /// Lambda Managed Instances (from the environment, or from `platform.initStart`).
    managed_instances: bool,
    /// Ended invocations, for log records that come after their report.
    recently_ended: HashMap<String, LogJoin>,
    ended_order: VecDeque<String>,
    /// Events whose record did not match the schema (passed on by other sinks anyway).
    pub unmappable: u64,
    out: Mapped,
}

impl Mapper {
    pub fn new(
        function_name: String,
        scope: InstrumentationScope,
        meter: &Meter,
        logger: Option<SdkLogger>,
        pricing: Pricing,
        managed_instances: bool,
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
            managed_instances,
            recently_ended: HashMap::new(),
            ended_order: VecDeque::new(),
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
                if record.initialization_type.as_deref() == Some(MANAGED_INSTANCES) {
                    self.managed_instances = true;
                }
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
                    self.instruments.record_phase_report(restore, d);
                }
                let phase = self.phase(event.kind());
                merge(&mut phase.record, record);
                let end = time?;
                self.emit_phase(restore, end, false);
            }
            EventKind::LogsDropped => {
                let (_, record) = typed::<LogsDroppedRecord>(raw)?;
                self.instruments.record_logs_dropped(&record);
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

    fn invocation(
        &mut self,
        request_id: &str,
        tracing: Option<&TracingRecord>,
        time: SystemTime,
    ) -> &mut Invocation {
        if !self.invocations.contains_key(request_id) {
            self.let_go_of_stale(time);
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
            // Managed Instances has no cold starts: environments are started ahead of traffic.
            let coldstart = self.invocations_seen == 1
                && !self.managed_instances
                && self.init.record.initialization_type.as_deref()
                    != Some("provisioned-concurrency");
            if coldstart {
                self.instruments.record_coldstart();
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
                    tenant_id: None,
                    ended_at: None,
                    runtime_duration_ms: None,
                },
            );
        }
        self.invocations
            .get_mut(request_id)
            .expect("inserted above when missing")
    }

    /// Lets go of the oldest invocations while there are too many, or while the oldest started
    /// longer than [`MAX_OPEN_AGE`] before `now` (an event's time): a report that never comes
    /// costs a span marked incomplete, not memory.
    fn let_go_of_stale(&mut self, now: SystemTime) {
        while let Some(oldest) = self.arrival.front() {
            let stale = self
                .invocations
                .get(oldest)
                .and_then(|i| i.start)
                .is_some_and(|start| {
                    now.duration_since(start)
                        .is_ok_and(|age| age > MAX_OPEN_AGE)
                });
            if self.arrival.len() < MAX_OPEN_INVOCATIONS && !stale {
                return;
            }
            let Some(request_id) = self.arrival.pop_front() else {
                return;
            };
            let open = self
                .invocations
                .get(&request_id)
                .is_some_and(|i| i.ended_at.is_none());
            if open {
                self.close_incomplete(&request_id, now);
            }
            self.end(&request_id);
        }
    }

    /// Forgets an invocation, keeping what its late log records need.
    fn end(&mut self, request_id: &str) {
        let Some(invocation) = self.invocations.remove(request_id) else {
            return;
        };
        let keep = if self.managed_instances {
            RECENTLY_ENDED
        } else {
            RECENTLY_ENDED_DEFAULT_MODEL
        };
        while self.ended_order.len() >= keep {
            match self.ended_order.pop_front() {
                Some(old) => self.recently_ended.remove(&old),
                None => break,
            };
        }
        self.recently_ended
            .insert(request_id.to_string(), LogJoin::from(&invocation));
        self.ended_order.push_back(request_id.to_string());
    }

    /// Exports the span of an invocation whose end was not seen, marked incomplete.
    fn close_incomplete(&mut self, request_id: &str, now: SystemTime) {
        let start = self
            .invocations
            .get(request_id)
            .and_then(|i| i.start)
            .unwrap_or(now);
        let span = self.invocation_span(request_id, start, now, "incomplete", None, true);
        self.out.spans.extend(span);
        if let Some(i) = self.invocations.get_mut(request_id) {
            i.ended_at = Some(now);
        }
    }

    /// An event of an invocation that has already ended: delivered again (or, under Managed
    /// Instances, a report after the invocation was let go as incomplete). It is not mapped.
    fn already_ended(&self, request_id: &str) -> bool {
        let ended = self.recently_ended.contains_key(request_id);
        if ended {
            tracing::debug!(
                request_id,
                "OTLP: an event of an ended invocation; not mapped again"
            );
        }
        ended
    }

    fn on_start(&mut self, record: StartRecord, time: SystemTime) {
        if self.already_ended(&record.request_id) {
            return;
        }
        let invocation = self.invocation(&record.request_id, record.tracing.as_ref(), time);
        invocation.start = Some(time);
        invocation.version = record.version;
        if record.tenant_id.is_some() {
            invocation.tenant_id = record.tenant_id;
        }
        self.current = Some(record.request_id);
    }

    fn on_runtime_done(&mut self, record: RuntimeDoneRecord, time: SystemTime) {
        if self.already_ended(&record.request_id) {
            return;
        }
        self.instruments.record_runtime_done(&record);
        if self.current.as_deref() == Some(record.request_id.as_str()) {
            self.current = None;
        }
        let invocation = self.invocation(&record.request_id, record.tracing.as_ref(), time);
        if invocation.ended_at.is_some() {
            return; // a duplicate delivery
        }
        if record.tenant_id.is_some() {
            invocation.tenant_id = record.tenant_id.clone();
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
        self.phase_children((trace_id, flags), span_id, &record.spans);
    }

    /// The platform's phases of an invocation (`responseLatency`, …) as children of its span.
    fn phase_children(
        &mut self,
        trace: (TraceId, TraceFlags),
        parent: SpanId,
        phases: &[PhaseSpanRecord],
    ) {
        for phase in phases {
            let Some(phase_start) = parse_time(&phase.start) else {
                continue;
            };
            let child = Span::child(
                trace,
                parent,
                phase.name.clone(),
                phase_start,
                after(phase_start, phase.duration_ms),
                Vec::new(),
            );
            self.out.spans.push(child.build(&self.scope));
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
            KeyValue::new("faas.trigger", "other"),
            KeyValue::new("aws.lambda.status", status.to_string()),
        ];
        if !self.managed_instances {
            attributes.push(KeyValue::new("faas.coldstart", invocation.coldstart));
        }
        if let Some(tenant) = &invocation.tenant_id {
            attributes.push(KeyValue::new(TENANT_ID, tenant.clone()));
        }
        if let Some(arn) = &invocation.invoked_arn {
            attributes.push(KeyValue::new("cloud.resource_id", arn.clone()));
            attributes.push(KeyValue::new("aws.lambda.invoked_arn", arn.clone()));
        }
        if let Some(version) = &invocation.version {
            attributes.push(KeyValue::new("faas.version", version.clone()));
        }
        let status = if incomplete {
            attributes.push(KeyValue::new("aws.lambda.incomplete", true));
            Status::error("incomplete: the invocation's end (platform.runtimeDone or platform.report) was not seen")
        } else if is_error_status(status) {
            let error = error_type.unwrap_or(status).to_string();
            attributes.push(KeyValue::new("error.type", error.clone()));
            Status::error(error)
        } else {
            Status::Unset
        };
        let links = match (invocation.coldstart, self.init.ids.or(self.restore.ids)) {
            (true, Some(init)) => link_to_init(init),
            _ => SpanLinks::default(),
        };
        let span = Span {
            trace_id: invocation.trace_id,
            span_id: invocation.span_id,
            flags: invocation.flags,
            parent: invocation.parent.map(|parent| (parent, true)),
            kind: SpanKind::Server,
            name: self.function_name.clone().into(),
            start,
            end,
            attributes,
            links,
            status,
        };
        Some(span.build(&self.scope))
    }

    fn on_report(&mut self, record: ReportRecord, time: SystemTime) {
        if self.already_ended(&record.request_id) {
            return;
        }
        self.instruments.record_report(&record, &self.pricing);
        let total_ms = record.metrics.duration_ms;
        let known = self.invocations.contains_key(&record.request_id);
        let invocation = self.invocation(&record.request_id, record.tracing.as_ref(), time);
        if record.tenant_id.is_some() {
            invocation.tenant_id = record.tenant_id.clone();
        }
        let (ended_at, runtime_ms) = (invocation.ended_at, invocation.runtime_duration_ms);
        let (trace_id, span_id, flags) =
            (invocation.trace_id, invocation.span_id, invocation.flags);
        let started = invocation.start;
        match ended_at {
            Some(runtime_end) => {
                // What the report adds beyond runtimeDone is the extensions' post-runtime time.
                if let (Some(total), Some(runtime)) = (total_ms, runtime_ms) {
                    let overhead = (total - runtime).max(0.0);
                    self.instruments.record_post_runtime(overhead);
                    let child = Span::child(
                        (trace_id, flags),
                        span_id,
                        "extensionOverhead".into(),
                        runtime_end,
                        after(runtime_end, overhead),
                        vec![KeyValue::new("aws.lambda.report.duration_ms", total)],
                    );
                    self.out.spans.push(child.build(&self.scope));
                }
            }
            None => {
                // No runtimeDone was seen (there is none under Managed Instances): the report
                // describes the invocation, its outcome and its phases.
                self.instruments.record_outcome(
                    &record.status,
                    record.error_type.as_deref(),
                    total_ms,
                    &record.spans,
                );
                let start = started.unwrap_or_else(|| {
                    time.checked_sub(ms(total_ms.unwrap_or(0.0)))
                        .unwrap_or(time)
                });
                if !known {
                    tracing::debug!(
                        request_id = record.request_id,
                        "OTLP: report without start or runtimeDone"
                    );
                }
                // The report may be written a while after the invocation ended: its duration,
                // not its time, says when that was.
                let end = match (started, total_ms) {
                    (Some(start), Some(total)) => after(start, total),
                    _ => time,
                };
                let span = self.invocation_span(
                    &record.request_id,
                    start,
                    end,
                    &record.status,
                    record.error_type.as_deref(),
                    false,
                );
                self.out.spans.extend(span);
                self.phase_children((trace_id, flags), span_id, &record.spans);
            }
        }
        self.end(&record.request_id);
        if let Some(at) = self.arrival.iter().position(|r| r == &record.request_id) {
            self.arrival.remove(at);
        }
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
            .or_else(|| duration.map(|d| after(start, d)))
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
        let span = Span {
            trace_id,
            span_id,
            flags: TraceFlags::SAMPLED,
            parent: None,
            kind: SpanKind::Server,
            name: name.into(),
            start,
            end,
            attributes,
            links: SpanLinks::default(),
            status,
        };
        self.out.spans.push(span.build(&scope));
    }

    fn on_log(&mut self, kind: EventKind, record: serde_json::Value, time: Option<SystemTime>) {
        let Some(logger) = &self.logger else {
            return;
        };
        let (mut log, request_id) = logs::log_record(logger, kind, record, time);
        // "The invocation running now" is ambiguous when several run at once: under Managed
        // Instances only the record's own requestId joins it to an invocation.
        let owner = request_id.or_else(|| {
            (!self.managed_instances)
                .then(|| self.current.clone())
                .flatten()
        });
        let join = owner.as_deref().and_then(|r| {
            self.invocations
                .get(r)
                .map(LogJoin::from)
                .or_else(|| self.recently_ended.get(r).cloned())
        });
        if let Some(join) = join {
            log.set_trace_context(join.trace_id, join.span_id, Some(join.flags));
            let has = |log: &SdkLogRecord, key: &str| {
                log.attributes_iter().any(|(k, _)| k.as_str() == key)
            };
            if let Some(tenant) = join.tenant_id.filter(|_| !has(&log, TENANT_ID)) {
                log.add_attribute(TENANT_ID, tenant);
            }
            if let Some(r) = owner.filter(|_| !has(&log, "faas.invocation_id")) {
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
            self.close_incomplete(&request_id, now);
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

#[cfg(test)]
mod tests;
