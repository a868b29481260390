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
//! This file routes each event to its part: [`open`] (the invocations remembered between their
//! events), [`invocation_spans`] (an invocation's span and measurements), [`phases`] (init and
//! restore), [`log_join`] (log records on their invocation's trace).
//!
//! [`schema`]: super::schema
//! [`instruments`]: super::instruments
//! [`spans`]: super::spans
//! [`logs`]: super::logs

mod invocation_spans;
mod log_join;
mod open;
mod phases;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use opentelemetry::metrics::Meter;
use opentelemetry::trace::Status;
use opentelemetry::{InstrumentationScope, Value};
use opentelemetry_sdk::logs::{SdkLogRecord, SdkLogger};
use opentelemetry_sdk::trace::SpanData;

pub(super) use super::attributes::TENANT_ID;
use super::config::Pricing;
use super::instruments::Instruments;
use super::log_filter::LogFilter;
use super::sampling::Sampling;
use super::schema::{
    merge, typed, LogsDroppedRecord, PhaseRecord, ReportRecord, RuntimeDoneRecord, StartRecord,
};
use crate::event::{Event, EventKind};
use crate::masking::Masking;
use crate::pipeline::InvokeInfo;
use crate::self_metrics::SinkLabel;
use log_join::LogJoin;
use open::Invocation;
use phases::Phase;

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
    sampling: Sampling,
    log_filter: Arc<LogFilter>,
    masking: Arc<Masking>,
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
        sampling: Sampling,
        managed_instances: bool,
    ) -> Mapper {
        Mapper {
            function_name,
            scope,
            instruments: Instruments::new(meter),
            logger,
            pricing,
            sampling,
            log_filter: Arc::default(),
            masking: Arc::default(),
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

    /// Log filters and mask rules (the default: every line kept, nothing masked).
    pub fn with_log_rules(mut self, log_filter: Arc<LogFilter>, masking: Arc<Masking>) -> Mapper {
        self.log_filter = log_filter;
        self.masking = masking;
        self
    }

    /// What was mapped since the last call; the spans' text attributes masked (the log
    /// records were masked as they were built).
    pub fn take(&mut self) -> Mapped {
        let mut out = std::mem::take(&mut self.out);
        if !self.masking.is_empty() {
            for span in &mut out.spans {
                if let Status::Error { description } = &span.status {
                    if let Some(masked) = self.masking.mask(description, SinkLabel::Otlp) {
                        span.status = Status::error(masked);
                    }
                }
                for attribute in &mut span.attributes {
                    // Lambda's request id is the join key of the invocation's log records: a
                    // rule must not cut them apart (it is not masked on the records either).
                    if attribute.key.as_str() == "faas.invocation_id" {
                        continue;
                    }
                    if let Value::String(text) = &attribute.value {
                        if let Some(masked) = self.masking.mask(text.as_str(), SinkLabel::Otlp) {
                            attribute.value = Value::from(masked);
                        }
                    }
                }
            }
        }
        out
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
