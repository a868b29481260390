//! The opentelemetry-otlp exporters, one per configured signal, built at the first flush with
//! the bridge's own HTTP client plugged in (see [`transport`](super::transport)).

use std::collections::HashMap;
use std::sync::Arc;

use opentelemetry_otlp::{Compression, Protocol, RetryPolicy, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::logs::LogExporter as _;
use opentelemetry_sdk::trace::SpanExporter as _;
use opentelemetry_sdk::Resource;

use super::config::{OtlpConfig, OtlpProtocol, SignalConfig, Temporality};
use super::transport::{DeadlineClient, SharedClient};
use super::{LOGS, METRIC_SINK, TRACES};
use crate::http::LazyClient;
use crate::self_metrics::{SinkLabel, METRICS};

pub(super) struct Exporters {
    pub traces: Option<(opentelemetry_otlp::SpanExporter, Arc<DeadlineClient>)>,
    pub metrics: Option<(opentelemetry_otlp::MetricExporter, Arc<DeadlineClient>)>,
    pub logs: Option<(opentelemetry_otlp::LogExporter, Arc<DeadlineClient>)>,
}

impl Exporters {
    /// Builds each configured signal's exporter, with the bridge's HTTP client plugged in.
    pub(super) fn build(
        config: &OtlpConfig,
        resource: &Resource,
        http: &Arc<LazyClient>,
    ) -> Result<Exporters, String> {
        fn http_config<B: WithHttpConfig + WithExportConfig>(
            builder: B,
            signal: &SignalConfig,
            http: &Arc<LazyClient>,
            sink: SinkLabel,
        ) -> (B, Arc<DeadlineClient>) {
            let client = DeadlineClient::new(http.clone(), signal, sink);
            let headers: HashMap<String, String> = signal.headers.iter().cloned().collect();
            let builder = builder
                .with_endpoint(signal.endpoint.as_str())
                .with_protocol(match signal.protocol {
                    OtlpProtocol::HttpJson => Protocol::HttpJson,
                    _ => Protocol::HttpBinary,
                })
                .with_timeout(signal.timeout)
                .with_headers(headers)
                .with_retry_policy(RetryPolicy::disabled())
                .with_http_client(SharedClient(client.clone()));
            let builder = if signal.gzip {
                builder.with_compression(Compression::Gzip)
            } else {
                builder
            };
            (builder, client)
        }
        /// gRPC (tonic): the exporter's own channel; the flush deadline still bounds it (the
        /// pipeline abandons a flush at its deadline), but failures cannot be told apart, so every
        /// failed batch is kept for the next flush.
        #[cfg(feature = "grpc")]
        fn tonic_config<B: opentelemetry_otlp::WithTonicConfig + WithExportConfig>(
            builder: B,
            signal: &SignalConfig,
        ) -> Result<B, String> {
            let headers = crate::http::header_map(&signal.headers, "OTEL_EXPORTER_OTLP_HEADERS")
                .map_err(|e| e.to_string())?;
            let builder = builder
                .with_endpoint(signal.endpoint.as_str())
                .with_protocol(Protocol::Grpc)
                .with_timeout(signal.timeout)
                .with_metadata(
                    opentelemetry_otlp::tonic_types::metadata::MetadataMap::from_headers(headers),
                );
            Ok(if signal.gzip {
                builder.with_compression(Compression::Gzip)
            } else {
                builder
            })
        }
        for (configured, sink) in [
            (config.traces.is_some(), TRACES),
            (config.metrics.is_some(), METRIC_SINK),
            (config.logs.is_some(), LOGS),
        ] {
            if configured {
                METRICS.init_sink(sink);
            }
        }
        let temporality = match config.temporality {
            Temporality::Cumulative => opentelemetry_sdk::metrics::Temporality::Cumulative,
            Temporality::Delta => opentelemetry_sdk::metrics::Temporality::Delta,
        };
        // One arm per transport; the builders differ in type, hence the macro.
        macro_rules! exporter {
            ($signal:expr, $sink:expr, $what:literal, $builder:expr $(, $extra:ident($arg:expr))?) => {
                match $signal {
                    None => None,
                    #[cfg(feature = "grpc")]
                    Some(signal) if signal.protocol == OtlpProtocol::Grpc => {
                        let builder = tonic_config($builder.with_tonic() $(.$extra($arg))?, signal)?;
                        let exporter = builder.build().map_err(|e| format!("{} exporter: {e}", $what))?;
                        Some((exporter, DeadlineClient::new(http.clone(), signal, $sink)))
                    }
                    Some(signal) => {
                        let (builder, client) =
                            http_config($builder.with_http() $(.$extra($arg))?, signal, http, $sink);
                        let exporter = builder.build().map_err(|e| format!("{} exporter: {e}", $what))?;
                        Some((exporter, client))
                    }
                }
            };
        }
        let mut traces = exporter!(
            &config.traces,
            TRACES,
            "traces",
            opentelemetry_otlp::SpanExporter::builder()
        );
        if let Some((exporter, _)) = &mut traces {
            exporter.set_resource(resource);
        }
        let metrics = exporter!(
            &config.metrics,
            METRIC_SINK,
            "metrics",
            opentelemetry_otlp::MetricExporter::builder(),
            with_temporality(temporality)
        );
        let mut logs = exporter!(
            &config.logs,
            LOGS,
            "logs",
            opentelemetry_otlp::LogExporter::builder()
        );
        if let Some((exporter, _)) = &mut logs {
            exporter.set_resource(resource);
        }
        Ok(Exporters {
            traces,
            metrics,
            logs,
        })
    }
}
