//! Log records joined to their invocation's trace: by the `requestId` a record carries, else (on
//! the default model, where one invocation runs at a time) by the invocation running now; also
//! after the invocation ended, for records that come after its report.

use std::time::SystemTime;

use opentelemetry::logs::LogRecord as _;
use opentelemetry::trace::{SpanId, TraceFlags, TraceId};
use opentelemetry_sdk::logs::SdkLogRecord;

use super::{Mapper, TENANT_ID};
use crate::event::EventKind;
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
}
