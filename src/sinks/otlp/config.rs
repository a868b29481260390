//! The OTLP sink's settings: the standard `OTEL_*` variables (the per-signal variable wins over
//! the general one), and the prices behind `aws.lambda.estimated_cost`.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::log_filter::LogFilter;
use super::sampling::Sampling;
use crate::config::env::Env;
use crate::config::url::{add_authorization, endpoint_url, parse_headers, redact_url};
use crate::masking::Masking;

/// OTLP wire format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    HttpProtobuf,
    HttpJson,
    /// Only in builds with the cargo feature `grpc`.
    #[cfg(feature = "grpc")]
    Grpc,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Temporality {
    Cumulative,
    Delta,
}

/// One signal's exporter settings.
#[derive(Clone)]
pub struct SignalConfig {
    pub endpoint: reqwest::Url,
    pub protocol: OtlpProtocol,
    /// Secrets: never logged.
    pub headers: Vec<(String, String)>,
    pub gzip: bool,
    pub timeout: Duration,
}

impl fmt::Debug for SignalConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignalConfig")
            .field("endpoint", &redact_url(&self.endpoint))
            .field("protocol", &self.protocol)
            .field(
                "headers",
                &format_args!("[{} redacted]", self.headers.len()),
            )
            .field("gzip", &self.gzip)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// The OpenTelemetry SDKs' default for `OTEL_METRIC_EXPORT_INTERVAL`.
pub const DEFAULT_METRIC_EXPORT_INTERVAL: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct OtlpConfig {
    pub traces: Option<SignalConfig>,
    pub metrics: Option<SignalConfig>,
    pub logs: Option<SignalConfig>,
    pub temporality: Temporality,
    /// `OTEL_METRIC_EXPORT_INTERVAL`: metrics are collected at most this often by the flushes
    /// beside the lifecycle (always at a flush the invocation waits for, and at shutdown).
    pub metric_export_interval: Duration,
    pub service_name: Option<String>,
    pub resource_attributes: Vec<(String, String)>,
    pub pricing: Pricing,
    /// Which invocations' spans leave (`OTEL_TRACES_SAMPLER`, the tail rules).
    pub sampling: Sampling,
    /// Which log lines become log records.
    pub log_filter: Arc<LogFilter>,
    /// The mask rules (shared with the raw sink).
    pub masking: Arc<Masking>,
}

/// Prices for the estimated-cost metric, in USD.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pricing {
    pub per_gb_second: f64,
    pub per_request: f64,
}

impl Pricing {
    /// Lambda's public on-demand prices (us-east-1): arm64 is 20% cheaper per GB-second.
    pub fn for_arch(arch: &str) -> Pricing {
        let per_gb_second = if arch == "aarch64" || arch == "arm64" {
            0.000_013_333_4
        } else {
            0.000_016_666_7
        };
        Pricing {
            per_gb_second,
            per_request: 0.000_000_2,
        }
    }

    /// `BRIDGE_ARCHITECTURE` picks the default GB-second price; `BRIDGE_PRICE_*` override.
    fn read(env: &mut Env) -> Pricing {
        let build = std::env::consts::ARCH;
        let architecture = env
            .parse(
                "BRIDGE_ARCHITECTURE",
                |v| match v.to_ascii_lowercase().as_str() {
                    "x86_64" | "amd64" => Some("x86_64"),
                    "arm64" | "aarch64" => Some("arm64"),
                    _ => None,
                },
                "x86_64 or arm64",
                format!("pricing as this build's architecture ({build})"),
            )
            .unwrap_or(build);
        let defaults = Pricing::for_arch(architecture);
        let mut price = |name: &str, default: f64| {
            env.parse(
                name,
                |v| v.parse::<f64>().ok().filter(|v| v.is_finite() && *v >= 0.0),
                "a non-negative decimal number (USD)",
                format!("using the default {default}"),
            )
            .unwrap_or(default)
        };
        Pricing {
            per_gb_second: price("BRIDGE_PRICE_GB_SECOND", defaults.per_gb_second),
            per_request: price("BRIDGE_PRICE_REQUEST", defaults.per_request),
        }
    }
}

impl OtlpConfig {
    /// Reads the standard OpenTelemetry exporter variables. OTLP output is on when an endpoint
    /// is configured (inside Lambda there is no collector at localhost unless a user runs one).
    pub fn read(env: &mut Env, masking: &Arc<Masking>) -> Option<OtlpConfig> {
        // Read first, so that their issues are reported whether or not OTLP is on.
        let pricing = Pricing::read(env);
        let sampling = Sampling::read(env);
        let log_filter = Arc::new(LogFilter::read(env));
        let disabled = env.flag(
            "OTEL_SDK_DISABLED",
            false,
            "taken as false (OTLP output stays on)",
        );
        if disabled {
            return None;
        }
        // The base is checked once (a signal's path is appended to it, which would turn
        // `http://` into the valid-looking `http:///v1/traces`, host `v1`).
        let base = env.parse_url(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            |v| endpoint_url(v).map(|_| v.to_string()),
            "an absolute http:// or https:// URL",
            "OTLP output is off for every signal without its own endpoint",
        );
        let temporality = env
            .parse(
                "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE",
                |v| match v.to_ascii_lowercase().as_str() {
                    "cumulative" => Some(Temporality::Cumulative),
                    "delta" | "lowmemory" => Some(Temporality::Delta),
                    _ => None,
                },
                "cumulative, delta or lowmemory",
                "using cumulative",
            )
            .unwrap_or(Temporality::Cumulative);
        let metric_export_interval = Duration::from_millis(u64::from(env.ranged(
            "OTEL_METRIC_EXPORT_INTERVAL",
            1,
            u32::MAX,
            DEFAULT_METRIC_EXPORT_INTERVAL.as_millis() as u32,
        )));
        let traces = signal(env, base.as_deref(), "TRACES", "traces");
        let metrics = signal(env, base.as_deref(), "METRICS", "metrics");
        let logs = signal(env, base.as_deref(), "LOGS", "logs");
        if traces.is_none() && metrics.is_none() && logs.is_none() {
            return None;
        }
        let resource_attributes = env
            .parse(
                "OTEL_RESOURCE_ATTRIBUTES",
                parse_headers,
                "comma-separated key=value pairs (values percent-encoded)",
                "ignoring them",
            )
            .unwrap_or_default();
        Some(OtlpConfig {
            traces,
            metrics,
            logs,
            temporality,
            metric_export_interval,
            service_name: env.get("OTEL_SERVICE_NAME"),
            resource_attributes,
            pricing,
            sampling,
            log_filter,
            masking: masking.clone(),
        })
    }
}

/// Resolves one signal's settings; `None` when the signal is off or has no endpoint.
fn signal(env: &mut Env, base: Option<&str>, upper: &str, path: &str) -> Option<SignalConfig> {
    let own = |suffix: &str| format!("OTEL_EXPORTER_OTLP_{upper}_{suffix}");
    // The signal's own variable, else the general one.
    let pick = |env: &Env, suffix: &str| -> String {
        if env.get(&own(suffix)).is_some() {
            own(suffix)
        } else {
            format!("OTEL_EXPORTER_OTLP_{suffix}")
        }
    };
    let exporter = env.parse(
        &format!("OTEL_{upper}_EXPORTER"),
        |v| match v.to_ascii_lowercase().as_str() {
            "otlp" => Some(true),
            "none" => Some(false),
            _ => None,
        },
        "otlp or none",
        "using otlp",
    );
    if exporter == Some(false) {
        return None;
    }
    let protocol_var = pick(env, "PROTOCOL");
    let protocol = match env.get(&protocol_var) {
        None => OtlpProtocol::HttpProtobuf,
        Some(_) => env.parse(
            &protocol_var,
            |v| match v {
                "http/protobuf" => Some(OtlpProtocol::HttpProtobuf),
                "http/json" => Some(OtlpProtocol::HttpJson),
                #[cfg(feature = "grpc")]
                "grpc" => Some(OtlpProtocol::Grpc),
                _ => None,
            },
            if cfg!(feature = "grpc") {
                "http/protobuf, http/json or grpc"
            } else {
                "http/protobuf or http/json (grpc needs a build with the cargo feature `grpc`)"
            },
            format!("OTLP {path} are disabled"),
        )?,
    };
    let (endpoint, authorization) = if env.get(&own("ENDPOINT")).is_some() {
        env.parse_url(
            &own("ENDPOINT"),
            endpoint_url,
            "an absolute http:// or https:// URL",
            format!("OTLP {path} are disabled"),
        )?
    } else {
        let base = base?.trim();
        let endpoint = match protocol {
            // gRPC names the service, not a path: the base endpoint is used as it is.
            #[cfg(feature = "grpc")]
            OtlpProtocol::Grpc => base.to_string(),
            _ => format!("{}/v1/{path}", base.trim_end_matches('/')),
        };
        endpoint_url(&endpoint)?
    };
    let mut headers: Vec<(String, String)> = Vec::new();
    for variable in ["OTEL_EXPORTER_OTLP_HEADERS".to_string(), own("HEADERS")] {
        if env.get(&variable).is_none() {
            continue;
        }
        let pairs = env.parse_secret(
            &variable,
            parse_headers,
            "comma-separated key=value pairs (values may be percent-encoded)",
            format!("OTLP {path} are disabled (the collector would reject us)"),
        )?;
        for (k, v) in pairs {
            headers.retain(|(hk, _)| !hk.eq_ignore_ascii_case(&k));
            headers.push((k, v));
        }
    }
    add_authorization(&mut headers, authorization);
    let gzip = env
        .parse(
            &pick(env, "COMPRESSION"),
            |v| match v.to_ascii_lowercase().as_str() {
                "gzip" => Some(true),
                "none" => Some(false),
                _ => None,
            },
            "gzip or none",
            "sending uncompressed",
        )
        .unwrap_or(false);
    let timeout = env
        .parse(
            &pick(env, "TIMEOUT"),
            |v| v.parse::<u64>().ok().filter(|ms| *ms > 0),
            "a positive number of milliseconds",
            "using 10000",
        )
        .map_or(Duration::from_secs(10), Duration::from_millis);
    Some(SignalConfig {
        endpoint,
        protocol,
        headers,
        gzip,
        timeout,
    })
}
