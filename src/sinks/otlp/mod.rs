//! The OpenTelemetry sink: spans, metrics and logs over OTLP/HTTP.
//!
//! Events are mapped as they are flushed ([`mapping`]); spans and log records wait in bounded
//! buffers until an export succeeds, metrics are aggregated by the SDK and collected at every
//! flush something waits for and at most every `OTEL_METRIC_EXPORT_INTERVAL` otherwise (a
//! `ManualReader`: no background thread, nothing runs while Lambda is frozen).
//! The opentelemetry-otlp exporters encode; [`transport`] sends within the flush deadline.

mod attributes;
pub mod config;
mod exporters;
mod instruments;
pub mod log_filter;
mod logs;
pub mod mapping;
mod pending;
pub mod resource;
pub mod sampling;
mod schema;
mod spans;
pub mod transport;
pub mod xray;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, SystemTime};

use opentelemetry::logs::LoggerProvider as _;
use opentelemetry::metrics::MeterProvider as _;
use opentelemetry::InstrumentationScope;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::logs::{LogBatch, LogExporter as _, SdkLogRecord, SdkLoggerProvider};
use opentelemetry_sdk::metrics::data::ResourceMetrics;
use opentelemetry_sdk::metrics::exporter::PushMetricExporter as _;
use opentelemetry_sdk::metrics::reader::MetricReader;
use opentelemetry_sdk::metrics::{InstrumentKind, ManualReader, Pipeline, SdkMeterProvider};
use opentelemetry_sdk::trace::{SpanData, SpanExporter as _};
use opentelemetry_sdk::Resource;
use tokio::time::Instant;

use crate::event::Event;
use crate::http::LazyClient;
use crate::pipeline::{BoxFuture, CatchPanic, FlushContext, FlushReason, InvokeInfo, Sink};
use crate::self_metrics::{Dropped, Failure, SinkLabel, METRICS};
use config::{OtlpConfig, Temporality};
use exporters::Exporters;
use mapping::Mapper;
use pending::{Mark, Pending};
pub use resource::{build_resource, FunctionIdentity};
use transport::Outcome;

/// Sink labels of the self-metrics, one per signal.
const TRACES: SinkLabel = SinkLabel::OtlpTraces;
const METRIC_SINK: SinkLabel = SinkLabel::OtlpMetrics;
const LOGS: SinkLabel = SinkLabel::OtlpLogs;

/// Spans and log records kept for retry at most; beyond this the oldest are dropped and counted.
const MAX_PENDING_SPANS: usize = 20_000;
const MAX_PENDING_LOGS: usize = 20_000;
/// Delta-temporality collections kept for retry (a cumulative one is superseded by the next).
const MAX_PENDING_METRICS: usize = 32;
/// Per OTLP request.
const MAX_SPANS_PER_EXPORT: usize = 2_000;
const MAX_LOGS_PER_EXPORT: usize = 2_000;

/// Shares the SDK's manual reader between the meter provider and the flush path.
#[derive(Debug, Clone)]
struct SharedReader(Arc<ManualReader>);

impl MetricReader for SharedReader {
    fn register_pipeline(&self, pipeline: Weak<Pipeline>) {
        self.0.register_pipeline(pipeline)
    }
    fn collect(&self, rm: &mut ResourceMetrics) -> OTelSdkResult {
        self.0.collect(rm)
    }
    fn force_flush(&self) -> OTelSdkResult {
        self.0.force_flush()
    }
    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }
    fn temporality(&self, kind: InstrumentKind) -> opentelemetry_sdk::metrics::Temporality {
        self.0.temporality(kind)
    }
}

/// The OTLP sink. Its SDK state (resource, meter and logger providers, instruments, exporters)
/// is built at the first flush: ~0.6 ms of CPU that would otherwise delay the first
/// `/event/next`, i.e. the cold start.
pub struct OtlpSink {
    config: OtlpConfig,
    identity: FunctionIdentity,
    http: Arc<LazyClient>,
    state: OnceLock<OtlpState>,
    /// INVOKE details that arrived before the state existed.
    early_notes: Mutex<Vec<InvokeInfo>>,
}

impl OtlpSink {
    pub fn new(config: OtlpConfig, identity: &FunctionIdentity, http: Arc<LazyClient>) -> OtlpSink {
        OtlpSink {
            config,
            identity: identity.clone(),
            http,
            state: OnceLock::new(),
            early_notes: Mutex::new(Vec::new()),
        }
    }

    fn state(&self) -> &OtlpState {
        self.state.get_or_init(|| {
            let state = OtlpState::new(self.config.clone(), &self.identity, self.http.clone());
            let mut mapper = lock(&state.mapper);
            for note in lock(&self.early_notes).drain(..) {
                mapper.note_invoke(&note);
            }
            drop(mapper);
            state
        })
    }
}

struct OtlpState {
    config: OtlpConfig,
    resource: Resource,
    scope: InstrumentationScope,
    mapper: Mutex<Mapper>,
    reader: Arc<ManualReader>,
    _meter_provider: SdkMeterProvider,
    _logger_provider: Option<SdkLoggerProvider>,
    http: Arc<LazyClient>,
    exporters: OnceLock<Result<Exporters, String>>,
    spans: Mutex<Pending<SpanData>>,
    logs: Mutex<Pending<SdkLogRecord>>,
    metrics: Mutex<VecDeque<ResourceMetrics>>,
    /// When metrics were last collected (background flushes collect on this clock).
    metrics_collected_at: Mutex<Option<Instant>>,
    /// Exports send the fronts of the buffers and drain what was delivered: flushes that overlap
    /// export one after the other (each sends what the one before left).
    exporting: tokio::sync::Mutex<()>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl OtlpState {
    fn new(config: OtlpConfig, identity: &FunctionIdentity, http: Arc<LazyClient>) -> OtlpState {
        let pricing = config.pricing;
        let resource = build_resource(identity, &config);
        let scope = InstrumentationScope::builder(env!("CARGO_PKG_NAME"))
            .with_version(env!("CARGO_PKG_VERSION"))
            .build();
        let temporality = match config.temporality {
            Temporality::Cumulative => opentelemetry_sdk::metrics::Temporality::Cumulative,
            Temporality::Delta => opentelemetry_sdk::metrics::Temporality::Delta,
        };
        let reader = Arc::new(
            ManualReader::builder()
                .with_temporality(temporality)
                .build(),
        );
        let meter_provider = SdkMeterProvider::builder()
            .with_resource(resource.clone())
            .with_reader(SharedReader(reader.clone()))
            .build();
        let meter = meter_provider.meter_with_scope(scope.clone());
        let logger_provider = config.logs.as_ref().map(|_| {
            SdkLoggerProvider::builder()
                .with_resource(resource.clone())
                .build()
        });
        let logger = logger_provider
            .as_ref()
            .map(|p| p.logger_with_scope(scope.clone()));
        let function_name = identity
            .function_name
            .clone()
            .unwrap_or_else(|| "lambda".into());
        OtlpState {
            mapper: Mutex::new(
                Mapper::new(
                    function_name,
                    scope.clone(),
                    &meter,
                    logger,
                    pricing,
                    config.sampling,
                    identity.managed_instances,
                )
                .with_log_rules(config.log_filter.clone(), config.masking.clone()),
            ),
            config,
            resource,
            scope,
            reader,
            _meter_provider: meter_provider,
            _logger_provider: logger_provider,
            http,
            exporters: OnceLock::new(),
            spans: Mutex::new(Pending::new()),
            logs: Mutex::new(Pending::new()),
            metrics: Mutex::new(VecDeque::new()),
            metrics_collected_at: Mutex::new(None),
            exporting: tokio::sync::Mutex::new(()),
        }
    }

    /// Metrics are collected at every flush something waits for (so that nothing is left in the
    /// environment at a freeze that follows), and at most every `OTEL_METRIC_EXPORT_INTERVAL`
    /// by the flushes beside the lifecycle: numbers nobody reads per invocation need not cost
    /// CPU on every one.
    fn metrics_due(&self, reason: FlushReason) -> bool {
        let mut collected_at = lock(&self.metrics_collected_at);
        let due = reason != FlushReason::Background
            || collected_at.is_none_or(|at| at.elapsed() >= self.config.metric_export_interval);
        if due {
            *collected_at = Some(Instant::now());
        }
        due
    }

    fn exporters(&self) -> Result<&Exporters, &str> {
        self.exporters
            .get_or_init(|| Exporters::build(&self.config, &self.resource, &self.http))
            .as_ref()
            .map_err(|e| e.as_str())
    }

    /// Maps the new events; at shutdown also closes what never ended.
    fn map(&self, events: &[Event], reason: FlushReason) {
        let mut mapper = lock(&self.mapper);
        for event in events {
            // A bug the schema's tolerance did not foresee costs this event's mapping, not the
            // sink: the event is passed over (counted) and the rest are mapped.
            let mapped =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| mapper.map(event)));
            if mapped.is_err() {
                METRICS.dropped(SinkLabel::Otlp, Dropped::Unencodable, 1);
                tracing::error!(
                    kind = event.kind().label(),
                    "OTLP: mapping this event panicked; it is not mapped"
                );
            }
        }
        if reason == FlushReason::Shutdown {
            mapper.finish(SystemTime::now());
        }
        let mapped = mapper.take();
        drop(mapper);
        if self.config.traces.is_some() {
            let dropped = lock(&self.spans).push_bounded(mapped.spans, MAX_PENDING_SPANS);
            if dropped > 0 {
                METRICS.dropped(TRACES, Dropped::Overflow, dropped);
                tracing::warn!(dropped, "OTLP: span buffer full; oldest spans dropped");
            }
        }
        if self.config.logs.is_some() {
            let dropped = lock(&self.logs).push_bounded(mapped.logs, MAX_PENDING_LOGS);
            if dropped > 0 {
                METRICS.dropped(LOGS, Dropped::Overflow, dropped);
                tracing::warn!(dropped, "OTLP: log buffer full; oldest records dropped");
            }
        }
        if self.config.metrics.is_some() && self.metrics_due(reason) {
            let mut rm = ResourceMetrics::default();
            match self.reader.collect(&mut rm) {
                Ok(()) if rm.scope_metrics().any(|s| s.metrics().next().is_some()) => {
                    let mut pending = lock(&self.metrics);
                    if self.config.temporality == Temporality::Cumulative {
                        pending.clear(); // the new collection includes everything before it
                    }
                    if pending.len() == MAX_PENDING_METRICS {
                        pending.pop_front();
                        tracing::warn!("OTLP: metric backlog full; oldest collection dropped");
                    }
                    pending.push_back(rm);
                }
                Ok(()) => {}
                Err(e) => tracing::warn!(error = %e, "OTLP: metric collection failed"),
            }
        }
    }

    async fn export_spans(&self, deadline: Instant) {
        let Ok(Exporters {
            traces: Some((exporter, client)),
            ..
        }) = self.exporters()
        else {
            return;
        };
        loop {
            let (batch, mark) = lock(&self.spans).front(MAX_SPANS_PER_EXPORT);
            if batch.is_empty() {
                return;
            }
            let n = batch.len();
            client.set_deadline(deadline);
            let Some(result) = self
                .guarded(TRACES, (mark, n), &self.spans, exporter.export(batch))
                .await
            else {
                continue;
            };
            if !self.settle(
                TRACES,
                result,
                client.take_outcome(),
                (mark, n),
                &self.spans,
            ) {
                return;
            }
        }
    }

    async fn export_logs(&self, deadline: Instant) {
        let Ok(Exporters {
            logs: Some((exporter, client)),
            ..
        }) = self.exporters()
        else {
            return;
        };
        loop {
            let (batch, mark) = lock(&self.logs).front(MAX_LOGS_PER_EXPORT);
            if batch.is_empty() {
                return;
            }
            let n = batch.len();
            let pairs: Vec<(&SdkLogRecord, &InstrumentationScope)> =
                batch.iter().map(|r| (r, &self.scope)).collect();
            client.set_deadline(deadline);
            let export = exporter.export(LogBatch::new(&pairs));
            let Some(result) = self.guarded(LOGS, (mark, n), &self.logs, export).await else {
                continue;
            };
            if !self.settle(LOGS, result, client.take_outcome(), (mark, n), &self.logs) {
                return;
            }
        }
    }

    async fn export_metrics(&self, deadline: Instant) {
        let Ok(Exporters {
            metrics: Some((exporter, client)),
            ..
        }) = self.exporters()
        else {
            return;
        };
        loop {
            // Export the oldest collection in place (ResourceMetrics is not Clone).
            let Some(rm) = lock(&self.metrics).pop_front() else {
                return;
            };
            client.set_deadline(deadline);
            let Ok(result) = CatchPanic(Box::pin(exporter.export(&rm))).await else {
                // Dropped, or it would fail the same way at every flush.
                METRICS.dropped(METRIC_SINK, Dropped::Unencodable, 1);
                tracing::error!("OTLP metrics: the exporter panicked on this collection; dropped");
                continue;
            };
            match (result, client.take_outcome()) {
                (Ok(()), _) => {
                    METRICS.items_delivered(METRIC_SINK, 1);
                }
                (Err(e), Some(Outcome::Rejected(status))) => {
                    METRICS.failed(METRIC_SINK, Failure::Rejected);
                    METRICS.dropped(METRIC_SINK, Dropped::Rejected, 1);
                    tracing::error!(status, endpoint = %self.endpoint(METRIC_SINK), error = %e, "OTLP metrics rejected; dropped");
                }
                (Err(e), _) => {
                    METRICS.failed(METRIC_SINK, Failure::GaveUp);
                    tracing::warn!(endpoint = %self.endpoint(METRIC_SINK), error = %e, "OTLP metrics not delivered; kept for the next flush");
                    let mut pending = lock(&self.metrics);
                    if self.config.temporality == Temporality::Delta || pending.is_empty() {
                        pending.push_front(rm);
                    }
                    return;
                }
            }
        }
    }

    fn endpoint(&self, sink: SinkLabel) -> String {
        let config = match sink {
            TRACES => &self.config.traces,
            METRIC_SINK => &self.config.metrics,
            _ => &self.config.logs,
        };
        config
            .as_ref()
            .map(|s| crate::config::url::redact_url(&s.endpoint))
            .unwrap_or_default()
    }

    /// Runs one export of the first `n` pending items, isolating a panic in the encoder: that
    /// batch is dropped (counted, one ERROR line) instead of being retried at every flush, where
    /// it would stop the signal for good. `None` when it panicked.
    async fn guarded<T: Clone>(
        &self,
        sink: SinkLabel,
        (mark, n): (Mark, usize),
        pending: &Mutex<Pending<T>>,
        export: impl std::future::Future<Output = OTelSdkResult>,
    ) -> Option<OTelSdkResult> {
        match CatchPanic(Box::pin(export)).await {
            Ok(result) => Some(result),
            Err(()) => {
                lock(pending).release(mark, n);
                METRICS.dropped(sink, Dropped::Unencodable, n as u64);
                tracing::error!(
                    sink = %sink,
                    items = n,
                    "OTLP: the exporter panicked encoding this batch; dropped"
                );
                None
            }
        }
    }

    /// Books one export's result against a pending buffer; true to continue with the next batch.
    fn settle<T: Clone>(
        &self,
        sink: SinkLabel,
        result: OTelSdkResult,
        outcome: Option<Outcome>,
        (mark, n): (Mark, usize),
        pending: &Mutex<Pending<T>>,
    ) -> bool {
        match (result, outcome) {
            (Ok(()), _) => {
                lock(pending).release(mark, n);
                METRICS.items_delivered(sink, n as u64);
                tracing::debug!(sink = %sink, items = n, "OTLP export delivered");
                true
            }
            (Err(e), Some(Outcome::Rejected(status))) => {
                lock(pending).release(mark, n);
                METRICS.failed(sink, Failure::Rejected);
                METRICS.dropped(sink, Dropped::Rejected, n as u64);
                tracing::error!(sink = %sink, status, endpoint = %self.endpoint(sink), items = n, error = %e, "OTLP export rejected; batch dropped (not retried)");
                true
            }
            (Err(e), _) => {
                METRICS.failed(sink, Failure::GaveUp);
                tracing::warn!(sink = %sink, endpoint = %self.endpoint(sink), items = n, error = %e, "OTLP export failed; kept for the next flush");
                false
            }
        }
    }

    async fn deliver(&self, events: &[Event], ctx: FlushContext<'_>) {
        self.map(events, ctx.reason);
        // Mapped events are this sink's to keep from here on (in its own bounded buffers).
        ctx.mark_done(events.len());
        if let Err(e) = self.exporters() {
            tracing::error!(
                error = e,
                "OTLP exporters could not be built; nothing is exported"
            );
            return;
        }
        // A flush beside the lifecycle does not queue behind an export in progress (its round
        // trip would hold this flush, and with it the raw sink's next one, in flight): what it
        // mapped leaves with the next export. A flush something waits for does wait.
        let _exporting = if ctx.reason == FlushReason::Background {
            match self.exporting.try_lock() {
                Ok(guard) => guard,
                Err(_) => return,
            }
        } else {
            self.exporting.lock().await
        };
        tokio::join!(
            self.export_spans(ctx.deadline),
            self.export_metrics(ctx.deadline),
            self.export_logs(ctx.deadline)
        );
    }
}

impl Sink for OtlpSink {
    fn name(&self) -> SinkLabel {
        SinkLabel::Otlp
    }

    fn note_invoke(&self, info: &InvokeInfo) {
        match self.state.get() {
            Some(state) => lock(&state.mapper).note_invoke(info),
            None => lock(&self.early_notes).push(info.clone()),
        }
    }

    fn flush<'a>(&'a self, events: &'a [Event], ctx: FlushContext<'a>) -> BoxFuture<'a, ()> {
        Box::pin(self.state().deliver(events, ctx))
    }

    fn has_backlog(&self) -> bool {
        self.state.get().is_some_and(|state| {
            !lock(&state.spans).is_empty()
                || !lock(&state.logs).is_empty()
                || !lock(&state.metrics).is_empty()
        })
    }
}
