//! Init and SnapStart restore: one span each, from its start to its runtimeDone, emitted at its
//! report (or at shutdown, marked incomplete, when the report never came).

use std::time::SystemTime;

use opentelemetry::trace::{SpanId, SpanKind, Status, TraceFlags, TraceId};
use opentelemetry::KeyValue;
use opentelemetry_sdk::trace::SpanLinks;

use super::Mapper;
use crate::event::EventKind;
use crate::self_metrics::METRICS;
use crate::sinks::otlp::schema::{after, is_error_status, ms, PhaseRecord};
use crate::sinks::otlp::spans::{random_span_id, random_trace_id, Span};

/// Init or SnapStart restore: one span from start to runtimeDone, emitted at its report.
#[derive(Default)]
pub(super) struct Phase {
    pub(super) ids: Option<(TraceId, SpanId)>,
    pub(super) start: Option<SystemTime>,
    pub(super) runtime_done: Option<SystemTime>,
    pub(super) record: PhaseRecord,
    pub(super) emitted: bool,
}

impl Phase {
    pub(super) fn ids(&mut self) -> (TraceId, SpanId) {
        *self
            .ids
            .get_or_insert_with(|| (random_trace_id(), random_span_id()))
    }
}

impl Mapper {
    pub(super) fn phase(&mut self, kind: EventKind) -> &mut Phase {
        match kind {
            EventKind::RestoreStart | EventKind::RestoreRuntimeDone | EventKind::RestoreReport => {
                &mut self.restore
            }
            _ => &mut self.init,
        }
    }

    pub(super) fn emit_phase(&mut self, restore: bool, report_time: SystemTime, incomplete: bool) {
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
        // The phase is a trace of its own, with no parent: the sampler's root decides. The
        // slow rule is about invocations (an init is slower than most of them by nature).
        let failed = incomplete || is_error_status(&status_text);
        let decision = self
            .sampling
            .decide(self.sampling.head(trace_id, None), failed, None);
        METRICS.sampling_decided(decision);
        if !decision.exported() {
            return;
        }
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
}
