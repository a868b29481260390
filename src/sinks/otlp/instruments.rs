//! The metric instruments, named after the OpenTelemetry FaaS conventions (`faas.*`) and
//! `aws.lambda.*` beyond them, and what each platform event records in them. Measurements are
//! aggregated by the SDK until the next collection.

use opentelemetry::metrics::{Counter, Gauge, Histogram, Meter};
use opentelemetry::KeyValue;

use super::config::Pricing;
use super::schema::{
    is_error_status, LogsDroppedRecord, PhaseSpanRecord, ReportRecord, RuntimeDoneRecord,
};
use crate::masking::Masking;
use crate::self_metrics::SinkLabel;

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
/// The metric instruments, named after the OTel FaaS conventions and `aws.lambda.*` beyond them.
pub struct Instruments {
    pub(super) invoke_duration: Histogram<f64>,
    pub(super) init_duration: Histogram<f64>,
    pub(super) mem_usage: Histogram<f64>,
    pub(super) invocations: Counter<u64>,
    pub(super) coldstarts: Counter<u64>,
    pub(super) errors: Counter<u64>,
    pub(super) timeouts: Counter<u64>,
    pub(super) billed_duration: Histogram<f64>,
    pub(super) memory_size: Gauge<u64>,
    pub(super) memory_utilization: Histogram<f64>,
    pub(super) response_latency: Histogram<f64>,
    pub(super) response_duration: Histogram<f64>,
    pub(super) runtime_overhead: Histogram<f64>,
    pub(super) post_runtime_extensions_duration: Histogram<f64>,
    pub(super) produced_bytes: Histogram<f64>,
    pub(super) restore_duration: Histogram<f64>,
    pub(super) logs_dropped_records: Counter<u64>,
    pub(super) logs_dropped_bytes: Counter<u64>,
    pub(super) out_of_memory: Counter<u64>,
    pub(super) estimated_cost: Counter<f64>,
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
                "Duration of the function's handler (runtimeDone durationMs; the report's where there is no runtimeDone)",
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

    /// What `platform.runtimeDone` measures: the invocation's outcome and its response's size.
    pub(super) fn record_runtime_done(&self, record: &RuntimeDoneRecord, masking: &Masking) {
        self.record_outcome(
            &record.status,
            record.error_type.as_deref(),
            masking,
            record.metrics.duration_ms,
            &record.spans,
        );
        if let Some(bytes) = record.metrics.produced_bytes {
            self.produced_bytes.record(bytes as f64, NO_ATTRIBUTES);
        }
    }

    /// An invocation's outcome: duration, status (success, error by type, timeout: they
    /// partition all invocations) and the phases' durations. From runtimeDone, or from the
    /// report where there is none (Managed Instances).
    pub(super) fn record_outcome(
        &self,
        status: &str,
        error_type: Option<&str>,
        masking: &Masking,
        duration_ms: Option<f64>,
        spans: &[PhaseSpanRecord],
    ) {
        if let Some(d) = duration_ms {
            self.invoke_duration.record(d / 1000.0, NO_ATTRIBUTES);
        }
        match status {
            "success" => self.invocations.add(1, NO_ATTRIBUTES),
            "timeout" => self.timeouts.add(1, NO_ATTRIBUTES),
            _ => {
                // The function's own error type: text a mask rule may name, as on the span.
                let error = error_type.unwrap_or(status);
                let error = masking
                    .mask(error, SinkLabel::Otlp)
                    .unwrap_or_else(|| error.to_string());
                self.errors.add(1, &[KeyValue::new("error.type", error)]);
            }
        }
        for span in spans {
            let histogram = match span.name.as_str() {
                "responseLatency" => &self.response_latency,
                "responseDuration" => &self.response_duration,
                "runtimeOverhead" => &self.runtime_overhead,
                _ => continue,
            };
            histogram.record(span.duration_ms / 1000.0, NO_ATTRIBUTES);
        }
    }

    /// What `platform.report` measures: memory, billed duration and its estimated cost, and
    /// whether the invocation ran out of memory. Only fields that are present are recorded.
    pub(super) fn record_report(&self, record: &ReportRecord, pricing: &Pricing) {
        let m = &record.metrics;
        if let Some(used) = m.max_memory_used_mb {
            self.mem_usage.record(used as f64 * MIB, NO_ATTRIBUTES);
        }
        if let Some(size) = m.memory_size_mb {
            self.memory_size.record(size * 1024 * 1024, NO_ATTRIBUTES);
            if let (Some(used), true) = (m.max_memory_used_mb, size > 0) {
                self.memory_utilization
                    .record(used as f64 / size as f64, NO_ATTRIBUTES);
            }
        }
        if let Some(billed) = m.billed_duration_ms {
            self.billed_duration.record(billed / 1000.0, NO_ATTRIBUTES);
            let gb = m.memory_size_mb.unwrap_or(0) as f64 / 1024.0;
            let cost = billed / 1000.0 * gb * pricing.per_gb_second + pricing.per_request;
            self.estimated_cost.add(cost, NO_ATTRIBUTES);
        }
        let oom = record.error_type.as_deref() == Some("Runtime.OutOfMemory")
            || (is_error_status(&record.status)
                && m.max_memory_used_mb.is_some()
                && m.max_memory_used_mb == m.memory_size_mb);
        if oom {
            self.out_of_memory.add(1, NO_ATTRIBUTES);
        }
    }

    /// The time extensions kept the invocation open after the runtime finished.
    pub(super) fn record_post_runtime(&self, overhead_ms: f64) {
        self.post_runtime_extensions_duration
            .record(overhead_ms / 1000.0, NO_ATTRIBUTES);
    }

    /// `initReport` / `restoreReport`'s duration.
    pub(super) fn record_phase_report(&self, restore: bool, duration_ms: f64) {
        let histogram = if restore {
            &self.restore_duration
        } else {
            &self.init_duration
        };
        histogram.record(duration_ms / 1000.0, NO_ATTRIBUTES);
    }

    pub(super) fn record_logs_dropped(&self, record: &LogsDroppedRecord) {
        self.logs_dropped_records
            .add(record.dropped_records.unwrap_or(0), NO_ATTRIBUTES);
        self.logs_dropped_bytes
            .add(record.dropped_bytes.unwrap_or(0), NO_ATTRIBUTES);
    }

    pub(super) fn record_coldstart(&self) {
        self.coldstarts.add(1, NO_ATTRIBUTES);
    }
}
