//! Log records joined to their invocation's trace: by the `requestId` a record carries, else (on
//! the default model, where one invocation runs at a time) by the invocation running now; also
//! after the invocation ended, for records that come after its report.

use std::time::SystemTime;

use opentelemetry::logs::LogRecord as _;
use opentelemetry::trace::{SpanId, TraceFlags, TraceId};
use opentelemetry_sdk::logs::SdkLogRecord;

use super::{Mapper, TENANT_ID};
use crate::event::EventKind;
use crate::self_metrics::SinkLabel;
use crate::sinks::otlp::logs;

/// What a log record needs to join an invocation that has ended.
#[derive(Clone)]
pub(super) struct LogJoin {
    pub(super) trace_id: TraceId,
    pub(super) span_id: SpanId,
    pub(super) flags: TraceFlags,
    pub(super) tenant_id: Option<String>,
}

impl Mapper {
    pub(super) fn on_log(
        &mut self,
        kind: EventKind,
        record: serde_json::Value,
        time: Option<SystemTime>,
    ) {
        let Some(logger) = &self.logger else {
            return;
        };
        if !self.log_filter.is_empty() {
            let (severity, body) = logs::peek(&record, self.log_filter.reads_body());
            if !self.log_filter.keeps(severity, &body) {
                return;
            }
        }
        let (mut log, request_id) = logs::log_record(logger, kind, record, time, &self.masking);
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
            if let Some(mut tenant) = join.tenant_id.filter(|_| !has(&log, TENANT_ID)) {
                // The invocation's tenant, masked as the record's own would have been.
                self.masking.mask_string(&mut tenant, SinkLabel::Otlp);
                log.add_attribute(TENANT_ID, tenant);
            }
            if let Some(r) = owner.filter(|_| !has(&log, "faas.invocation_id")) {
                log.add_attribute("faas.invocation_id", r);
            }
        }
        self.out.logs.push(log);
    }
}
