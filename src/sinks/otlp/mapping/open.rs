//! The invocations remembered between their events, by request id: created by the first event
//! that names one, let go of when their report came, or when too many or too old are open (their
//! span then exported as incomplete), and remembered a while after they ended for late log
//! records and events delivered again.

use std::time::SystemTime;

use opentelemetry::trace::{SpanId, TraceFlags, TraceId};

use super::log_join::LogJoin;
use super::{
    Mapper, MAX_OPEN_AGE, MAX_OPEN_INVOCATIONS, RECENTLY_ENDED, RECENTLY_ENDED_DEFAULT_MODEL,
};
use crate::self_metrics::METRICS;
use crate::sinks::otlp::schema::TracingRecord;
use crate::sinks::otlp::spans::{random_span_id, random_trace_id};
use crate::sinks::otlp::xray;

pub(super) struct Invocation {
    pub(super) trace_id: TraceId,
    pub(super) span_id: SpanId,
    pub(super) parent: Option<SpanId>,
    pub(super) flags: TraceFlags,
    pub(super) start: Option<SystemTime>,
    pub(super) version: Option<String>,
    pub(super) invoked_arn: Option<String>,
    pub(super) coldstart: bool,
    pub(super) tenant_id: Option<String>,
    /// Set when the invocation span has been emitted (at runtimeDone).
    pub(super) ended_at: Option<SystemTime>,
    /// The sampler's decision, from the trace id and the X-Ray header's `Sampled` flag.
    pub(super) head_sampled: bool,
    /// Whether its spans leave, decided once its outcome is known (`None` until then).
    pub(super) exported: Option<bool>,
    pub(super) runtime_duration_ms: Option<f64>,
}

/// What a log record that comes after its invocation ended needs of it.
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

impl Mapper {
    pub(super) fn invocation(
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
            let trace_id = xray.map_or_else(random_trace_id, |x| x.trace_id);
            let head_sampled = self
                .sampling
                .head(trace_id, xray.map(|x| x.flags.is_sampled()));
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
                    trace_id,
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
                    head_sampled,
                    exported: None,
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
    pub(super) fn let_go_of_stale(&mut self, now: SystemTime) {
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
    pub(super) fn end(&mut self, request_id: &str) {
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

    /// Whether an invocation's spans leave, decided at its first call (when its outcome is
    /// known: `failed`, the runtime's duration) and remembered for its later spans. Counted once
    /// per invocation in the bridge's own metrics.
    pub(super) fn exported(
        &mut self,
        request_id: &str,
        failed: bool,
        duration_ms: Option<f64>,
    ) -> bool {
        let sampling = self.sampling;
        let Some(invocation) = self.invocations.get_mut(request_id) else {
            return true;
        };
        if let Some(exported) = invocation.exported {
            return exported;
        }
        let decision = sampling.decide(invocation.head_sampled, failed, duration_ms);
        METRICS.sampling_decided(decision);
        invocation.exported = Some(decision.exported());
        decision.exported()
    }

    /// Exports the span of an invocation whose end was not seen, marked incomplete.
    pub(super) fn close_incomplete(&mut self, request_id: &str, now: SystemTime) {
        let start = self
            .invocations
            .get(request_id)
            .and_then(|i| i.start)
            .unwrap_or(now);
        // An end never seen is kept as a failure is (a crash or a timeout, most likely).
        if self.exported(request_id, true, None) {
            let span = self.invocation_span(request_id, start, now, "incomplete", None, true);
            self.out.spans.extend(span);
        }
        if let Some(i) = self.invocations.get_mut(request_id) {
            i.ended_at = Some(now);
        }
    }

    /// An event of an invocation that has already ended: delivered again (or, under Managed
    /// Instances, a report after the invocation was let go as incomplete). It is not mapped.
    pub(super) fn already_ended(&self, request_id: &str) -> bool {
        let ended = self.recently_ended.contains_key(request_id);
        if ended {
            tracing::debug!(
                request_id,
                "OTLP: an event of an ended invocation; not mapped again"
            );
        }
        ended
    }
}
