//! The Telemetry API's records, as its schemas (2022-12-13; 2025-01-29, which Managed Instances
//! requires and which adds `tenantId` and the report's `spans`) define them: each event's record is
//! parsed straight into its type, in one pass over the event's bytes; what does not match is not
//! mapped (and is still passed on raw by the other sinks).

use std::borrow::Cow;
use std::time::{Duration, SystemTime};

use serde::Deserialize;

/// An event whose record is parsed straight into its schema type: one pass over the bytes.
#[derive(Deserialize)]
pub(super) struct Typed<'a, R> {
    #[serde(borrow)]
    pub(super) time: Option<Cow<'a, str>>,
    pub(super) record: R,
}

/// The event's time (when it has a valid one) and its record as `R`.
pub(super) fn typed<'a, R: Deserialize<'a>>(raw: &'a [u8]) -> Option<(Option<SystemTime>, R)> {
    let event: Typed<'a, R> = serde_json::from_slice(raw).ok()?;
    Some((event.time.as_deref().and_then(parse_time), event.record))
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub(super) struct TracingRecord {
    pub(super) span_id: Option<String>,
    pub(super) value: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct StartRecord {
    pub(super) request_id: String,
    pub(super) version: Option<String>,
    pub(super) tracing: Option<TracingRecord>,
    /// Tenant isolation mode.
    pub(super) tenant_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct PhaseSpanRecord {
    pub(super) name: String,
    pub(super) start: String,
    pub(super) duration_ms: f64,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub(super) struct RuntimeDoneMetrics {
    pub(super) duration_ms: Option<f64>,
    pub(super) produced_bytes: Option<u64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct RuntimeDoneRecord {
    pub(super) request_id: String,
    pub(super) status: String,
    pub(super) error_type: Option<String>,
    #[serde(default)]
    pub(super) metrics: RuntimeDoneMetrics,
    #[serde(default)]
    pub(super) spans: Vec<PhaseSpanRecord>,
    pub(super) tracing: Option<TracingRecord>,
    pub(super) tenant_id: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub(super) struct ReportMetrics {
    pub(super) duration_ms: Option<f64>,
    pub(super) billed_duration_ms: Option<f64>,
    #[serde(rename = "memorySizeMB")]
    pub(super) memory_size_mb: Option<u64>,
    #[serde(rename = "maxMemoryUsedMB")]
    pub(super) max_memory_used_mb: Option<u64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct ReportRecord {
    pub(super) request_id: String,
    pub(super) status: String,
    pub(super) error_type: Option<String>,
    #[serde(default)]
    pub(super) metrics: ReportMetrics,
    /// Managed Instances: the runtime's phases (`responseLatency`, `responseDuration`), which
    /// the default model reports in runtimeDone.
    #[serde(default)]
    pub(super) spans: Vec<PhaseSpanRecord>,
    pub(super) tracing: Option<TracingRecord>,
    pub(super) tenant_id: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub(super) struct PhaseRecord {
    pub(super) initialization_type: Option<String>,
    pub(super) phase: Option<String>,
    pub(super) runtime_version: Option<String>,
    pub(super) runtime_version_arn: Option<String>,
    pub(super) status: Option<String>,
    pub(super) error_type: Option<String>,
    pub(super) metrics: Option<PhaseMetrics>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub(super) struct PhaseMetrics {
    pub(super) duration_ms: Option<f64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct LogsDroppedRecord {
    pub(super) dropped_records: Option<u64>,
    pub(super) dropped_bytes: Option<u64>,
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
pub(super) fn ms(duration_ms: f64) -> Duration {
    Duration::try_from_secs_f64(duration_ms.max(0.0) / 1000.0).unwrap_or_default()
}

/// `start` plus the platform's milliseconds; a sum beyond what a `SystemTime` holds stays at
/// `start` (a span of zero length) rather than panicking.
pub(super) fn after(start: SystemTime, duration_ms: f64) -> SystemTime {
    start.checked_add(ms(duration_ms)).unwrap_or(start)
}

pub(super) fn is_error_status(status: &str) -> bool {
    status != "success"
}

/// Fills fields of `into` that `from` knows (later events of a phase add to earlier ones).
pub(super) fn merge(into: &mut PhaseRecord, from: PhaseRecord) {
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
