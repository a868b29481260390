//! An invocation's events and what they make: its span (at runtimeDone, or at the report where
//! there is no runtimeDone, as under Managed Instances), the platform's phases as its children,
//! the extensions' overhead after the runtime, and the measurements of each event.

use std::time::SystemTime;

use opentelemetry::trace::{SpanId, SpanKind, Status, TraceFlags, TraceId};
use opentelemetry::KeyValue;
use opentelemetry_sdk::trace::{SpanData, SpanLinks};

use super::{Mapper, TENANT_ID};
use crate::sinks::otlp::schema::{
    after, is_error_status, ms, parse_time, PhaseSpanRecord, ReportRecord, RuntimeDoneRecord,
    StartRecord,
};
use crate::sinks::otlp::spans::{link_to_init, Span};

impl Mapper {
    pub(super) fn on_start(&mut self, record: StartRecord, time: SystemTime) {
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

    pub(super) fn on_runtime_done(&mut self, record: RuntimeDoneRecord, time: SystemTime) {
        if self.already_ended(&record.request_id) {
            return;
        }
        self.instruments.record_runtime_done(&record, &self.masking);
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
        self.emit_ended(
            &record.request_id,
            (start, time),
            &record.status,
            record.error_type.as_deref(),
            record.metrics.duration_ms,
            &record.spans,
        );
    }

    /// An ended invocation's span and its phases as children, unless the sampling decision,
    /// taken here from its outcome, leaves them out (then they are never built).
    fn emit_ended(
        &mut self,
        request_id: &str,
        (start, end): (SystemTime, SystemTime),
        status: &str,
        error_type: Option<&str>,
        duration_ms: Option<f64>,
        phases: &[PhaseSpanRecord],
    ) {
        if !self.exported(request_id, is_error_status(status), duration_ms) {
            return;
        }
        let Some(invocation) = self.invocations.get(request_id) else {
            return;
        };
        let (trace, span_id) = ((invocation.trace_id, invocation.flags), invocation.span_id);
        let span = self.invocation_span(request_id, start, end, status, error_type, false);
        self.out.spans.extend(span);
        self.phase_children(trace, span_id, phases);
    }

    /// The platform's phases of an invocation (`responseLatency`, …) as children of its span.
    pub(super) fn phase_children(
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

    pub(super) fn invocation_span(
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

    pub(super) fn on_report(&mut self, record: ReportRecord, time: SystemTime) {
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
        // Decided at runtimeDone; the extensions' overhead follows its invocation's span.
        let exported = invocation.exported.unwrap_or(true);
        match ended_at {
            Some(runtime_end) => {
                // What the report adds beyond runtimeDone is the extensions' post-runtime time.
                if let (Some(total), Some(runtime)) = (total_ms, runtime_ms) {
                    let overhead = (total - runtime).max(0.0);
                    self.instruments.record_post_runtime(overhead);
                    if exported {
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
            }
            None => {
                // No runtimeDone was seen (there is none under Managed Instances): the report
                // describes the invocation, its outcome and its phases.
                self.instruments.record_outcome(
                    &record.status,
                    record.error_type.as_deref(),
                    &self.masking,
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
                self.emit_ended(
                    &record.request_id,
                    (start, end),
                    &record.status,
                    record.error_type.as_deref(),
                    total_ms,
                    &record.spans,
                );
            }
        }
        self.end(&record.request_id);
        self.forget_arrival(&record.request_id);
    }

    fn forget_arrival(&mut self, request_id: &str) {
        if let Some(at) = self.arrival.iter().position(|r| r == request_id) {
            self.arrival.remove(at);
        }
    }
}
