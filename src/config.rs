//! Configuration from the environment, validated once at start.
//!
//! A bad value of an optional setting never breaks the function: it becomes a [`ConfigIssue`]
//! (one ERROR line naming the variable, the value and what is allowed) and that setting falls back
//! to its default or its feature is disabled. `BRIDGE_STRICT=true` turns issues into an init error.

use std::fmt;
use std::time::Duration;

use thiserror::Error;

/// Telemetry API buffering limits (SPEC: maxItems 1,000–10,000, maxBytes 262,144–1,048,576,
/// timeoutMs 25–30,000).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Buffering {
    pub max_items: u32,
    pub max_bytes: u32,
    pub timeout_ms: u32,
}

impl Default for Buffering {
    /// The shortest timeout: Lambda holds an invocation's last events for up to `timeoutMs`, and
    /// under the `end` policy the bridge waits for them before the freeze, so this is billed time.
    fn default() -> Self {
        Buffering {
            max_items: 1_000,
            max_bytes: 262_144,
            timeout_ms: 25,
        }
    }
}

/// When the pipeline flushes on an invoke. Shutdown always flushes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushPolicy {
    /// After every invocation's `platform.runtimeDone`, before the freeze.
    End,
    /// On an invoke only when the last flush is older than this.
    Periodic(Duration),
    /// Only at shutdown.
    Shutdown,
}

impl fmt::Display for FlushPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FlushPolicy::End => f.write_str("end"),
            FlushPolicy::Periodic(d) => write!(f, "periodic:{}", d.as_millis()),
            FlushPolicy::Shutdown => f.write_str("shutdown"),
        }
    }
}

/// The raw JSON sink's settings (the seed's `DISPATCH_*` variables).
#[derive(Clone)]
pub struct DispatchConfig {
    pub uri: reqwest::Url,
    pub min_batch_size: usize,
    /// `BRIDGE_DISPATCH_HEADERS`: secrets, never logged (no Debug impl prints them).
    pub headers: Vec<(String, String)>,
}

impl fmt::Debug for DispatchConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DispatchConfig")
            .field("uri", &redact_url(&self.uri))
            .field("min_batch_size", &self.min_batch_size)
            .field(
                "headers",
                &format_args!("[{} redacted]", self.headers.len()),
            )
            .finish()
    }
}

/// A URL as it may appear in logs: scheme, host, port and path; no credentials, no query.
pub fn redact_url(url: &reqwest::Url) -> String {
    let mut shown = format!("{}://{}", url.scheme(), url.host_str().unwrap_or(""));
    if let Some(port) = url.port() {
        shown.push_str(&format!(":{port}"));
    }
    shown.push_str(url.path());
    shown
}

/// A URL as written in a variable, safe to show in an error line: credentials (`user:pass@`)
/// and the query are replaced by `<redacted>`. Works on text that is not a valid URL too (the
/// case where it is shown), erring on the side of hiding.
pub fn redact_url_text(raw: &str) -> String {
    let raw = raw.trim();
    let (head, query) = match raw.find(['?', '#']) {
        Some(i) => (&raw[..i], true),
        None => (raw, false),
    };
    let authority_start = head.find("://").map_or(0, |i| i + 3);
    let mut shown = match head.rfind('@') {
        Some(at) if at >= authority_start => {
            format!("{}<redacted>@{}", &head[..authority_start], &head[at + 1..])
        }
        _ => head.to_string(),
    };
    if query {
        shown.push_str("?<redacted>");
    }
    shown
}

/// An endpoint from a variable: an absolute http(s) URL with a host. Credentials written into it
/// (`http://user:pass@host/`) are taken out of the URL, so that it never carries them into a log
/// line or a connection pool's key, and returned as the value of an HTTP Basic `Authorization`
/// header, which is what a user who wrote them expects to be sent.
fn endpoint_url(raw: &str) -> Option<(reqwest::Url, Option<String>)> {
    let mut url = reqwest::Url::parse(raw.trim()).ok()?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none_or(str::is_empty) {
        return None;
    }
    let authorization = if url.username().is_empty() && url.password().is_none() {
        None
    } else {
        use base64::Engine as _;
        let user = percent_decode(url.username())?;
        let password = percent_decode(url.password().unwrap_or(""))?;
        url.set_username("").ok()?;
        url.set_password(None).ok()?;
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        Some(format!("Basic {token}"))
    };
    Some((url, authorization))
}

/// Adds the Basic authorization taken from an endpoint's URL, unless a header already sets it.
fn add_authorization(headers: &mut Vec<(String, String)>, authorization: Option<String>) {
    if let Some(value) = authorization {
        if !headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("authorization"))
        {
            headers.push(("Authorization".into(), value));
        }
    }
}

/// Which Telemetry API streams to subscribe to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TelemetryType {
    Platform,
    Function,
    Extension,
}

impl TelemetryType {
    pub fn as_str(self) -> &'static str {
        match self {
            TelemetryType::Platform => "platform",
            TelemetryType::Function => "function",
            TelemetryType::Extension => "extension",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    /// `AWS_LAMBDA_RUNTIME_API`: host:port of the Extensions and Telemetry APIs.
    pub runtime_api: String,
    pub telemetry_types: Vec<TelemetryType>,
    pub buffering: Buffering,
    /// Host the listener binds to.
    pub listener_host: String,
    /// Host written into the subscription's destination URI.
    pub destination_host: String,
    /// 0 = an ephemeral port.
    pub listener_port: u16,
    /// What the listener falls back to when the configured host cannot be bound.
    pub default_listener_host: String,
    pub dispatch: Option<DispatchConfig>,
    pub flush_policy: FlushPolicy,
    pub flush_timeout: Duration,
    pub queue_max_events: usize,
    pub queue_max_bytes: usize,
    pub strict: bool,
    pub log_filter: String,
    /// `None` when no OTLP endpoint is configured or `OTEL_SDK_DISABLED=true`.
    pub otlp: Option<OtlpConfig>,
    pub pricing: Pricing,
    /// `BRIDGE_METRICS_ADDR`: serve the self-metrics at `/metrics` here (off by default).
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// `BRIDGE_PUSHGATEWAY_URL`: push the self-metrics here.
    pub pushgateway: Option<Pushgateway>,
    pub push_interval: Duration,
}

/// Where the self-metrics are pushed; credentials from the URL become `authorization`.
#[derive(Clone)]
pub struct Pushgateway {
    pub url: reqwest::Url,
    /// Secret: never logged.
    pub authorization: Option<String>,
}

impl fmt::Debug for Pushgateway {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pushgateway")
            .field("url", &redact_url(&self.url))
            .field(
                "authorization",
                &self.authorization.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

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

/// One signal's exporter settings, resolved from the standard `OTEL_EXPORTER_OTLP_*` variables
/// (the per-signal variable wins over the general one).
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

#[derive(Debug, Clone)]
pub struct OtlpConfig {
    pub traces: Option<SignalConfig>,
    pub metrics: Option<SignalConfig>,
    pub logs: Option<SignalConfig>,
    pub temporality: Temporality,
    pub service_name: Option<String>,
    pub resource_attributes: Vec<(String, String)>,
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
}

/// One rejected setting: what was wrong and what the bridge does instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    pub variable: String,
    /// The offending value, or `<redacted>` for secrets.
    pub value: String,
    pub allowed: String,
    pub consequence: String,
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid {}={:?}: expected {}; {}",
            self.variable, self.value, self.allowed, self.consequence
        )
    }
}

/// A configuration that cannot run at all (not a Lambda environment).
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("AWS_LAMBDA_RUNTIME_API is not set: the bridge must run as a Lambda extension (or under lambda-sim)")]
    MissingRuntimeApi,
}

pub const DEFAULT_FLUSH_TIMEOUT: Duration = Duration::from_millis(1_000);
/// Sized for a 128 MB function: 8 MiB of queued telemetry at most, and room for two of the
/// largest POSTs Lambda sends (maxItems ≤ 10,000).
pub const DEFAULT_QUEUE_MAX_EVENTS: usize = 20_000;
pub const DEFAULT_QUEUE_MAX_BYTES: usize = 8 * 1024 * 1024;
/// The name Lambda resolves to the sandbox (where the listener binds and Lambda sends to).
pub const SANDBOX_HOST: &str = "sandbox.localdomain";

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<(Config, Vec<ConfigIssue>), ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads settings through `lookup` (the environment, or a map in tests).
    pub fn from_lookup(
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<(Config, Vec<ConfigIssue>), ConfigError> {
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let runtime_api = get("AWS_LAMBDA_RUNTIME_API").ok_or(ConfigError::MissingRuntimeApi)?;
        let mut issues = Vec::new();

        let telemetry_types = match get("BRIDGE_TELEMETRY_TYPES") {
            None => vec![
                TelemetryType::Platform,
                TelemetryType::Function,
                TelemetryType::Extension,
            ],
            Some(raw) => parse_types(&raw).unwrap_or_else(|| {
                issues.push(ConfigIssue {
                    variable: "BRIDGE_TELEMETRY_TYPES".into(),
                    value: raw,
                    allowed: "a comma-separated subset of platform,function,extension".into(),
                    consequence: "subscribing to platform,function,extension".into(),
                });
                vec![
                    TelemetryType::Platform,
                    TelemetryType::Function,
                    TelemetryType::Extension,
                ]
            }),
        };

        let defaults = Buffering::default();
        let buffering = Buffering {
            max_items: ranged(
                &get,
                &mut issues,
                "BRIDGE_BUFFER_MAX_ITEMS",
                1_000,
                10_000,
                defaults.max_items,
            ),
            max_bytes: ranged(
                &get,
                &mut issues,
                "BRIDGE_BUFFER_MAX_BYTES",
                262_144,
                1_048_576,
                defaults.max_bytes,
            ),
            timeout_ms: ranged(
                &get,
                &mut issues,
                "BRIDGE_BUFFER_TIMEOUT_MS",
                25,
                30_000,
                defaults.timeout_ms,
            ),
        };

        let sam_local = get("AWS_SAM_LOCAL").is_some_and(|v| v.eq_ignore_ascii_case("true"));
        let default_listener_host = if sam_local { "0.0.0.0" } else { SANDBOX_HOST };
        let configured_host = get("BRIDGE_LISTENER_ADDR").and_then(|raw| {
            let host = raw.trim();
            if valid_host(host) {
                return Some(host.to_string());
            }
            issues.push(ConfigIssue {
                variable: "BRIDGE_LISTENER_ADDR".into(),
                value: raw.clone(),
                allowed: "an IP address or a host name".into(),
                consequence: format!("listening on {default_listener_host}"),
            });
            None
        });
        let (listener_host, destination_host) = match configured_host {
            Some(host) => {
                let destination = if host == "0.0.0.0" || host == "::" {
                    SANDBOX_HOST.to_string()
                } else {
                    host.clone()
                };
                (host, destination)
            }
            None if sam_local => ("0.0.0.0".to_string(), SANDBOX_HOST.to_string()),
            None => (SANDBOX_HOST.to_string(), SANDBOX_HOST.to_string()),
        };
        let listener_port = match get("BRIDGE_LISTENER_PORT") {
            None => 0,
            Some(raw) => match raw.trim().parse::<u16>() {
                Ok(port) if port != 9001 => port,
                _ => {
                    issues.push(ConfigIssue {
                        variable: "BRIDGE_LISTENER_PORT".into(),
                        value: raw,
                        allowed: "a TCP port 0-65535 other than 9001 (reserved by Lambda)".into(),
                        consequence: "listening on an ephemeral port".into(),
                    });
                    0
                }
            },
        };

        let dispatch = parse_dispatch(&get, &mut issues);

        let flush_policy = match get("BRIDGE_FLUSH") {
            None => FlushPolicy::End,
            Some(raw) => parse_flush_policy(&raw).unwrap_or_else(|| {
                issues.push(ConfigIssue {
                    variable: "BRIDGE_FLUSH".into(),
                    value: raw,
                    allowed: "end, periodic:<ms> (ms ≥ 1) or shutdown".into(),
                    consequence: "using end".into(),
                });
                FlushPolicy::End
            }),
        };
        let flush_timeout = Duration::from_millis(u64::from(ranged(
            &get,
            &mut issues,
            "BRIDGE_FLUSH_TIMEOUT_MS",
            1,
            60_000,
            DEFAULT_FLUSH_TIMEOUT.as_millis() as u32,
        )));
        let queue_max_events = ranged(
            &get,
            &mut issues,
            "BRIDGE_QUEUE_MAX_EVENTS",
            1,
            10_000_000,
            DEFAULT_QUEUE_MAX_EVENTS as u32,
        ) as usize;
        let queue_max_bytes = ranged(
            &get,
            &mut issues,
            "BRIDGE_QUEUE_MAX_BYTES",
            65_536,
            u32::MAX,
            DEFAULT_QUEUE_MAX_BYTES as u32,
        ) as usize;

        let strict = match get("BRIDGE_STRICT") {
            None => false,
            Some(raw) => match parse_bool(&raw) {
                Some(b) => b,
                None => {
                    issues.push(ConfigIssue {
                        variable: "BRIDGE_STRICT".into(),
                        value: raw,
                        allowed: "true or false".into(),
                        consequence: "not strict".into(),
                    });
                    false
                }
            },
        };
        let log_filter = match get("BRIDGE_LOG") {
            None => "info".to_string(),
            Some(raw) if valid_log_filter(&raw) => raw.trim().to_string(),
            Some(raw) => {
                issues.push(ConfigIssue {
                    variable: "BRIDGE_LOG".into(),
                    value: raw,
                    allowed: "a level (off, error, warn, info, debug, trace) or a comma-separated target=level list".into(),
                    consequence: "logging at info".into(),
                });
                "info".to_string()
            }
        };
        let otlp = parse_otlp(&get, &mut issues);
        let metrics_addr = get("BRIDGE_METRICS_ADDR").and_then(|raw| {
            match raw.trim().parse::<std::net::SocketAddr>() {
                Ok(addr) => Some(addr),
                Err(_) => {
                    issues.push(ConfigIssue {
                        variable: "BRIDGE_METRICS_ADDR".into(),
                        value: raw,
                        allowed: "ip:port, e.g. 127.0.0.1:9464".into(),
                        consequence: "the /metrics endpoint is disabled".into(),
                    });
                    None
                }
            }
        });
        let pushgateway = get("BRIDGE_PUSHGATEWAY_URL").and_then(|raw| match endpoint_url(&raw) {
            Some((url, authorization)) => Some(Pushgateway { url, authorization }),
            None => {
                issues.push(ConfigIssue {
                    variable: "BRIDGE_PUSHGATEWAY_URL".into(),
                    value: redact_url_text(&raw),
                    allowed: "an absolute http:// or https:// URL".into(),
                    consequence: "pushing self-metrics is disabled".into(),
                });
                None
            }
        });
        let push_interval = Duration::from_millis(u64::from(ranged(
            &get,
            &mut issues,
            "BRIDGE_PUSH_INTERVAL_MS",
            1,
            86_400_000,
            60_000,
        )));
        let architecture = match get("BRIDGE_ARCHITECTURE") {
            None => std::env::consts::ARCH.to_string(),
            Some(raw) => match raw.trim().to_ascii_lowercase().as_str() {
                "x86_64" | "amd64" => "x86_64".to_string(),
                "arm64" | "aarch64" => "arm64".to_string(),
                _ => {
                    issues.push(ConfigIssue {
                        variable: "BRIDGE_ARCHITECTURE".into(),
                        value: raw,
                        allowed: "x86_64 or arm64".into(),
                        consequence: format!(
                            "pricing as this build's architecture ({})",
                            std::env::consts::ARCH
                        ),
                    });
                    std::env::consts::ARCH.to_string()
                }
            },
        };
        let mut pricing = Pricing::for_arch(&architecture);
        pricing.per_gb_second = price(
            &get,
            &mut issues,
            "BRIDGE_PRICE_GB_SECOND",
            pricing.per_gb_second,
        );
        pricing.per_request = price(
            &get,
            &mut issues,
            "BRIDGE_PRICE_REQUEST",
            pricing.per_request,
        );

        let issues = merge_issues(issues);
        Ok((
            Config {
                runtime_api,
                telemetry_types,
                buffering,
                listener_host,
                destination_host,
                listener_port,
                default_listener_host: default_listener_host.to_string(),
                dispatch,
                flush_policy,
                flush_timeout,
                queue_max_events,
                queue_max_bytes,
                strict,
                log_filter,
                otlp,
                pricing,
                metrics_addr,
                pushgateway,
                push_interval,
            },
            issues,
        ))
    }

    pub fn subscribes_to(&self, kind: TelemetryType) -> bool {
        self.telemetry_types.contains(&kind)
    }
}

fn price(
    get: &impl Fn(&str) -> Option<String>,
    issues: &mut Vec<ConfigIssue>,
    variable: &'static str,
    default: f64,
) -> f64 {
    let Some(raw) = get(variable) else {
        return default;
    };
    match raw.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => v,
        _ => {
            issues.push(ConfigIssue {
                variable: variable.into(),
                value: raw,
                allowed: "a non-negative decimal number (USD)".into(),
                consequence: format!("using the default {default}"),
            });
            default
        }
    }
}

/// Reads the standard OpenTelemetry exporter variables. OTLP output is on when an endpoint is
/// configured (inside Lambda there is no collector at localhost unless a user runs one).
fn parse_otlp(
    get: &impl Fn(&str) -> Option<String>,
    issues: &mut Vec<ConfigIssue>,
) -> Option<OtlpConfig> {
    if let Some(raw) = get("OTEL_SDK_DISABLED") {
        match parse_bool(&raw) {
            Some(true) => return None,
            Some(false) => {}
            None => issues.push(ConfigIssue {
                variable: "OTEL_SDK_DISABLED".into(),
                value: raw,
                allowed: "true or false".into(),
                consequence: "taken as false (OTLP output stays on)".into(),
            }),
        }
    }
    // The base is checked once (a signal's path is appended to it, which would turn `http://`
    // into the valid-looking `http:///v1/traces`, host `v1`).
    let base = get("OTEL_EXPORTER_OTLP_ENDPOINT").and_then(|raw| {
        if endpoint_url(&raw).is_some() {
            return Some(raw);
        }
        issues.push(ConfigIssue {
            variable: "OTEL_EXPORTER_OTLP_ENDPOINT".into(),
            value: redact_url_text(&raw),
            allowed: "an absolute http:// or https:// URL".into(),
            consequence: "OTLP output is off for every signal without its own endpoint".into(),
        });
        None
    });
    let temporality = match get("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE") {
        None => Temporality::Cumulative,
        Some(raw) => match raw.trim().to_ascii_lowercase().as_str() {
            "cumulative" => Temporality::Cumulative,
            "delta" | "lowmemory" => Temporality::Delta,
            _ => {
                issues.push(ConfigIssue {
                    variable: "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE".into(),
                    value: raw,
                    allowed: "cumulative, delta or lowmemory".into(),
                    consequence: "using cumulative".into(),
                });
                Temporality::Cumulative
            }
        },
    };
    let traces = signal(get, issues, base.as_deref(), "TRACES", "traces");
    let metrics = signal(get, issues, base.as_deref(), "METRICS", "metrics");
    let logs = signal(get, issues, base.as_deref(), "LOGS", "logs");
    if traces.is_none() && metrics.is_none() && logs.is_none() {
        return None;
    }
    let resource_attributes = match get("OTEL_RESOURCE_ATTRIBUTES") {
        None => Vec::new(),
        Some(raw) => parse_headers(&raw).unwrap_or_else(|| {
            issues.push(ConfigIssue {
                variable: "OTEL_RESOURCE_ATTRIBUTES".into(),
                value: raw,
                allowed: "comma-separated key=value pairs (values percent-encoded)".into(),
                consequence: "ignoring them".into(),
            });
            Vec::new()
        }),
    };
    Some(OtlpConfig {
        traces,
        metrics,
        logs,
        temporality,
        service_name: get("OTEL_SERVICE_NAME"),
        resource_attributes,
    })
}

/// Resolves one signal's settings; `None` when the signal is off or has no endpoint.
fn signal(
    get: &impl Fn(&str) -> Option<String>,
    issues: &mut Vec<ConfigIssue>,
    base: Option<&str>,
    upper: &'static str,
    path: &str,
) -> Option<SignalConfig> {
    let var = |suffix: &str| format!("OTEL_EXPORTER_OTLP_{upper}_{suffix}");
    let exporter_var = format!("OTEL_{upper}_EXPORTER");
    match get(&exporter_var).map(|v| v.trim().to_ascii_lowercase()) {
        None => {}
        Some(v) if v == "otlp" => {}
        Some(v) if v == "none" => return None,
        Some(v) => {
            issues.push(ConfigIssue {
                variable: exporter_var,
                value: v,
                allowed: "otlp or none".into(),
                consequence: "using otlp".into(),
            });
        }
    }
    let pick = |suffix: &str| -> Option<(String, String)> {
        match get(&var(suffix)) {
            Some(v) => Some((var(suffix), v)),
            None => get(&format!("OTEL_EXPORTER_OTLP_{suffix}"))
                .map(|v| (format!("OTEL_EXPORTER_OTLP_{suffix}"), v)),
        }
    };
    let protocol = match pick("PROTOCOL") {
        None => OtlpProtocol::HttpProtobuf,
        Some((name, raw)) => match raw.trim() {
            "http/protobuf" => OtlpProtocol::HttpProtobuf,
            "http/json" => OtlpProtocol::HttpJson,
            #[cfg(feature = "grpc")]
            "grpc" => OtlpProtocol::Grpc,
            _ => {
                issues.push(ConfigIssue {
                    variable: name,
                    value: raw,
                    allowed: if cfg!(feature = "grpc") {
                        "http/protobuf, http/json or grpc".into()
                    } else {
                        "http/protobuf or http/json (grpc needs a build with the cargo feature `grpc`)"
                            .into()
                    },
                    consequence: format!("OTLP {path} are disabled"),
                });
                return None;
            }
        },
    };
    let (endpoint_var, raw_endpoint) = match get(&var("ENDPOINT")) {
        Some(e) => (var("ENDPOINT"), e.trim().to_string()),
        None => {
            let base = base?.trim();
            let endpoint = match protocol {
                // gRPC names the service, not a path: the base endpoint is used as it is.
                #[cfg(feature = "grpc")]
                OtlpProtocol::Grpc => base.to_string(),
                _ => format!("{}/v1/{path}", base.trim_end_matches('/')),
            };
            ("OTEL_EXPORTER_OTLP_ENDPOINT".to_string(), endpoint)
        }
    };
    let (endpoint, authorization) = match endpoint_url(&raw_endpoint) {
        Some(parsed) => parsed,
        None => {
            issues.push(ConfigIssue {
                variable: endpoint_var,
                value: redact_url_text(&raw_endpoint),
                allowed: "an absolute http:// or https:// URL".into(),
                consequence: format!("OTLP {path} are disabled"),
            });
            return None;
        }
    };
    let mut headers = Vec::new();
    for suffix_var in ["OTEL_EXPORTER_OTLP_HEADERS".to_string(), var("HEADERS")] {
        if let Some(raw) = get(&suffix_var) {
            match parse_headers(&raw) {
                Some(pairs) => {
                    for (k, v) in pairs {
                        headers.retain(|(hk, _): &(String, String)| !hk.eq_ignore_ascii_case(&k));
                        headers.push((k, v));
                    }
                }
                None => {
                    issues.push(ConfigIssue {
                        variable: suffix_var,
                        value: "<redacted>".into(),
                        allowed: "comma-separated key=value pairs (values may be percent-encoded)"
                            .into(),
                        consequence: format!(
                            "OTLP {path} are disabled (the collector would reject us)"
                        ),
                    });
                    return None;
                }
            }
        }
    }
    add_authorization(&mut headers, authorization);
    let gzip = match pick("COMPRESSION") {
        None => false,
        Some((name, raw)) => match raw.trim().to_ascii_lowercase().as_str() {
            "gzip" => true,
            "none" | "" => false,
            _ => {
                issues.push(ConfigIssue {
                    variable: name,
                    value: raw,
                    allowed: "gzip or none".into(),
                    consequence: "sending uncompressed".into(),
                });
                false
            }
        },
    };
    let timeout = match pick("TIMEOUT") {
        None => Duration::from_secs(10),
        Some((name, raw)) => match raw.trim().parse::<u64>() {
            Ok(ms) if ms > 0 => Duration::from_millis(ms),
            _ => {
                issues.push(ConfigIssue {
                    variable: name,
                    value: raw,
                    allowed: "a positive number of milliseconds".into(),
                    consequence: "using 10000".into(),
                });
                Duration::from_secs(10)
            }
        },
    };
    Some(SignalConfig {
        endpoint,
        protocol,
        headers,
        gzip,
        timeout,
    })
}

fn parse_types(raw: &str) -> Option<Vec<TelemetryType>> {
    let mut types = Vec::new();
    for part in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let kind = match part.to_ascii_lowercase().as_str() {
            "platform" => TelemetryType::Platform,
            "function" => TelemetryType::Function,
            "extension" => TelemetryType::Extension,
            _ => return None,
        };
        if !types.contains(&kind) {
            types.push(kind);
        }
    }
    (!types.is_empty()).then_some(types)
}

fn parse_flush_policy(raw: &str) -> Option<FlushPolicy> {
    let raw = raw.trim();
    match raw.to_ascii_lowercase().as_str() {
        "end" => Some(FlushPolicy::End),
        "shutdown" => Some(FlushPolicy::Shutdown),
        other => {
            let ms: u64 = other.strip_prefix("periodic:")?.trim().parse().ok()?;
            (ms >= 1).then(|| FlushPolicy::Periodic(Duration::from_millis(ms)))
        }
    }
}

pub(crate) fn parse_bool(raw: &str) -> Option<bool> {
    match raw.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Some(true),
        "false" | "0" | "no" | "off" => Some(false),
        _ => None,
    }
}

/// One line per bad value: a general `OTEL_EXPORTER_OTLP_*` variable is read once per signal,
/// so its issue would otherwise be reported three times.
fn merge_issues(issues: Vec<ConfigIssue>) -> Vec<ConfigIssue> {
    let mut merged: Vec<ConfigIssue> = Vec::with_capacity(issues.len());
    for issue in issues {
        match merged
            .iter_mut()
            .find(|m| m.variable == issue.variable && m.value == issue.value)
        {
            Some(m) if m.consequence.contains(&issue.consequence) => {}
            Some(m) => {
                m.consequence.push_str("; ");
                m.consequence.push_str(&issue.consequence);
            }
            None => merged.push(issue),
        }
    }
    merged
}

/// `BRIDGE_LOG`: a level, or `target=level` directives, as tracing's `Targets` takes them, but
/// strictly: its parser takes a misspelt level (`warning`) for a target name and then turns
/// every line off, ERRORs included.
fn valid_log_filter(raw: &str) -> bool {
    let level = |l: &str| {
        matches!(
            l.trim().to_ascii_lowercase().as_str(),
            "off" | "error" | "warn" | "info" | "debug" | "trace"
        )
    };
    let target = |t: &str| {
        let t = t.trim();
        !t.is_empty()
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_:-".contains(&b))
    };
    let mut directives = raw
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .peekable();
    directives.peek().is_some()
        && directives.all(|d| match d.split_once('=') {
            Some((t, l)) => target(t) && level(l),
            None => level(d),
        })
}

/// An IP address or a DNS name (letters, digits, hyphens, dot-separated labels).
fn valid_host(host: &str) -> bool {
    if host.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

fn ranged(
    get: &impl Fn(&str) -> Option<String>,
    issues: &mut Vec<ConfigIssue>,
    variable: &'static str,
    min: u32,
    max: u32,
    default: u32,
) -> u32 {
    let Some(raw) = get(variable) else {
        return default;
    };
    match raw.trim().parse::<u32>() {
        Ok(v) if (min..=max).contains(&v) => v,
        _ => {
            issues.push(ConfigIssue {
                variable: variable.into(),
                value: raw,
                allowed: format!("an integer from {min} to {max}"),
                consequence: format!("using the default {default}"),
            });
            default
        }
    }
}

fn parse_dispatch(
    get: &impl Fn(&str) -> Option<String>,
    issues: &mut Vec<ConfigIssue>,
) -> Option<DispatchConfig> {
    let raw_uri = get("DISPATCH_POST_URI")?;
    let (uri, authorization) = match endpoint_url(&raw_uri) {
        Some(parsed) => parsed,
        None => {
            issues.push(ConfigIssue {
                variable: "DISPATCH_POST_URI".into(),
                value: redact_url_text(&raw_uri),
                allowed: "an absolute http:// or https:// URL".into(),
                consequence: "the raw JSON sink is disabled".into(),
            });
            return None;
        }
    };
    let min_batch_size = match get("DISPATCH_MIN_BATCH_SIZE") {
        None => 0,
        Some(raw) => match raw.trim().parse::<usize>() {
            Ok(n) => n,
            Err(_) => {
                issues.push(ConfigIssue {
                    variable: "DISPATCH_MIN_BATCH_SIZE".into(),
                    value: raw,
                    allowed: "a non-negative integer".into(),
                    consequence: "using 0 (dispatch at every flush)".into(),
                });
                0
            }
        },
    };
    let mut headers = match get("BRIDGE_DISPATCH_HEADERS") {
        None => Vec::new(),
        Some(raw) => match parse_headers(&raw) {
            Some(h) => h,
            None => {
                issues.push(ConfigIssue {
                    variable: "BRIDGE_DISPATCH_HEADERS".into(),
                    value: "<redacted>".into(),
                    allowed: "comma-separated key=value pairs (values may be percent-encoded)"
                        .into(),
                    consequence: "the raw JSON sink is disabled (its endpoint would reject us)"
                        .into(),
                });
                return None;
            }
        },
    };
    add_authorization(&mut headers, authorization);
    Some(DispatchConfig {
        uri,
        min_batch_size,
        headers,
    })
}

/// Parses the W3C-baggage-like `key=value,key2=value2` list that `OTEL_EXPORTER_OTLP_HEADERS` uses.
pub fn parse_headers(raw: &str) -> Option<Vec<(String, String)>> {
    let mut out = Vec::new();
    for pair in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=')?;
        let key = key.trim();
        let value = percent_decode(value.trim())?;
        let valid_name = !key.is_empty()
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        let valid_value = value
            .bytes()
            .all(|b| b == b'\t' || (0x20..0x7f).contains(&b));
        if !valid_name || !valid_value {
            return None;
        }
        out.push((key.to_string(), value));
    }
    Some(out)
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn load(vars: &[(&str, &str)]) -> (Config, Vec<ConfigIssue>) {
        let mut map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        map.entry("AWS_LAMBDA_RUNTIME_API".into())
            .or_insert_with(|| "127.0.0.1:9001".into());
        Config::from_lookup(|k| map.get(k).cloned()).expect("runtime api set")
    }

    #[test]
    fn defaults_are_valid_and_quick() {
        let (cfg, issues) = load(&[]);
        assert!(issues.is_empty());
        assert_eq!(cfg.buffering.timeout_ms, 25);
        assert_eq!(cfg.flush_policy, FlushPolicy::End);
        assert_eq!(cfg.listener_host, "sandbox.localdomain");
        assert_eq!(cfg.listener_port, 0);
        assert!(cfg.dispatch.is_none());
        assert_eq!(cfg.telemetry_types.len(), 3);
    }

    #[test]
    fn out_of_range_buffering_falls_back_with_an_issue() {
        let (cfg, issues) = load(&[
            ("BRIDGE_BUFFER_TIMEOUT_MS", "5"),
            ("BRIDGE_BUFFER_MAX_ITEMS", "lots"),
        ]);
        assert_eq!(cfg.buffering, Buffering::default());
        assert_eq!(issues.len(), 2);
        let text = issues[0].to_string();
        assert!(
            text.contains("BRIDGE_BUFFER_MAX_ITEMS") || text.contains("BRIDGE_BUFFER_TIMEOUT_MS")
        );
        assert!(
            issues
                .iter()
                .any(|i| i.variable == "BRIDGE_BUFFER_TIMEOUT_MS"
                    && i.allowed.contains("25 to 30000"))
        );
    }

    #[test]
    fn flush_policies_parse() {
        assert_eq!(parse_flush_policy("end"), Some(FlushPolicy::End));
        assert_eq!(parse_flush_policy("SHUTDOWN"), Some(FlushPolicy::Shutdown));
        assert_eq!(
            parse_flush_policy("periodic:250"),
            Some(FlushPolicy::Periodic(Duration::from_millis(250)))
        );
        assert_eq!(parse_flush_policy("periodic:0"), None);
        assert_eq!(parse_flush_policy("periodic"), None);
        assert_eq!(parse_flush_policy("sometimes"), None);
    }

    #[test]
    fn bad_dispatch_uri_disables_the_raw_sink() {
        let (cfg, issues) = load(&[("DISPATCH_POST_URI", "not a url")]);
        assert!(cfg.dispatch.is_none());
        assert_eq!(issues[0].variable, "DISPATCH_POST_URI");
        assert!(issues[0].consequence.contains("disabled"));
    }

    #[test]
    fn dispatch_headers_are_parsed_and_never_shown() {
        let (cfg, issues) = load(&[
            (
                "DISPATCH_POST_URI",
                "https://user:pw@example.com/ingest?key=s3cret",
            ),
            ("BRIDGE_DISPATCH_HEADERS", "x-api-key=top%20secret,other=1"),
        ]);
        assert!(issues.is_empty());
        let dispatch = cfg.dispatch.expect("dispatch configured");
        assert_eq!(
            dispatch.headers,
            vec![
                ("x-api-key".to_string(), "top secret".to_string()),
                ("other".to_string(), "1".to_string()),
                // user:pw, taken out of the URL and sent as Basic authorization.
                (
                    "Authorization".to_string(),
                    "Basic dXNlcjpwdw==".to_string()
                ),
            ]
        );
        assert_eq!(
            dispatch.uri.as_str(),
            "https://example.com/ingest?key=s3cret"
        );
        let shown = format!("{dispatch:?}");
        assert!(
            !shown.contains("top secret") && !shown.contains("s3cret") && !shown.contains("pw")
        );
        let (_, issues) = load(&[
            ("DISPATCH_POST_URI", "http://x/"),
            ("BRIDGE_DISPATCH_HEADERS", "novalue-secret"),
        ]);
        assert_eq!(issues[0].value, "<redacted>");
    }

    #[test]
    fn sam_local_listens_everywhere_but_subscribes_to_the_sandbox_name() {
        let (cfg, _) = load(&[("AWS_SAM_LOCAL", "true")]);
        assert_eq!(cfg.listener_host, "0.0.0.0");
        assert_eq!(cfg.destination_host, "sandbox.localdomain");
        let (cfg, _) = load(&[("BRIDGE_LISTENER_ADDR", "127.0.0.1")]);
        assert_eq!(cfg.destination_host, "127.0.0.1");
    }

    #[test]
    fn otlp_follows_the_standard_variables() {
        let (cfg, issues) = load(&[]);
        assert!(cfg.otlp.is_none() && issues.is_empty());
        let (cfg, issues) = load(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "https://traces.example/custom",
            ),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "api-key=secret1,x=1"),
            ("OTEL_EXPORTER_OTLP_METRICS_HEADERS", "api-key=secret2"),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
            ("OTEL_LOGS_EXPORTER", "none"),
            ("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", "delta"),
        ]);
        assert!(issues.is_empty(), "{issues:?}");
        let otlp = cfg.otlp.expect("otlp on");
        let traces = otlp.traces.expect("traces");
        assert_eq!(traces.endpoint.as_str(), "https://traces.example/custom");
        assert_eq!(traces.protocol, OtlpProtocol::HttpJson);
        assert!(traces.gzip);
        let metrics = otlp.metrics.expect("metrics");
        assert_eq!(
            metrics.endpoint.as_str(),
            "http://collector:4318/v1/metrics"
        );
        assert_eq!(metrics.protocol, OtlpProtocol::HttpProtobuf);
        assert!(metrics
            .headers
            .contains(&("api-key".into(), "secret2".into())));
        assert!(metrics.headers.contains(&("x".into(), "1".into())));
        assert!(!format!("{metrics:?}").contains("secret"));
        assert!(otlp.logs.is_none());
        assert_eq!(otlp.temporality, Temporality::Delta);
        let (cfg, _) = load(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
            ("OTEL_SDK_DISABLED", "true"),
        ]);
        assert!(cfg.otlp.is_none());
        let (cfg, issues) = load(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ]);
        assert!(cfg.otlp.is_none());
        assert_eq!(
            issues.len(),
            1,
            "one line for the one bad value: {issues:?}"
        );
        assert!(issues[0].consequence.contains("traces"));
        assert!(issues[0].consequence.contains("logs"));
    }

    #[test]
    fn credentials_in_urls_never_reach_an_issue_and_become_basic_auth() {
        for variable in [
            "DISPATCH_POST_URI",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "BRIDGE_PUSHGATEWAY_URL",
        ] {
            for raw in [
                "ftp://user:PASSWORD@collector:4318/",
                "http://user:PASSWORD@",
                "user:PASSWORD@host",
                "http://coll ector:4318/?token=PASSWORD",
            ] {
                let (_, issues) = load(&[(variable, raw)]);
                assert_eq!(issues.len(), 1, "{variable}={raw}: {issues:?}");
                let line = issues[0].to_string();
                assert!(!line.contains("PASSWORD"), "{line}");
                assert!(line.contains(variable), "{line}");
            }
        }
        let (cfg, issues) = load(&[
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                "http://u%40x:p%3Aw@collector:4318",
            ),
            (
                "OTEL_EXPORTER_OTLP_LOGS_HEADERS",
                "authorization=Bearer%20t",
            ),
            ("BRIDGE_PUSHGATEWAY_URL", "http://a:b@gateway:9091"),
        ]);
        assert!(issues.is_empty(), "{issues:?}");
        let otlp = cfg.otlp.expect("otlp on");
        let traces = otlp.traces.expect("traces");
        assert_eq!(traces.endpoint.as_str(), "http://collector:4318/v1/traces");
        // "u@x:p:w", percent-decoded, in base64.
        assert_eq!(
            traces.headers,
            vec![(
                "Authorization".to_string(),
                "Basic dUB4OnA6dw==".to_string()
            )]
        );
        // An explicit header wins over the URL's credentials.
        let logs = otlp.logs.expect("logs");
        assert_eq!(
            logs.headers,
            vec![("authorization".to_string(), "Bearer t".to_string())]
        );
        let gateway = cfg.pushgateway.expect("gateway");
        assert_eq!(gateway.url.as_str(), "http://gateway:9091/");
        assert_eq!(gateway.authorization.as_deref(), Some("Basic YTpi"));
        assert!(!format!("{gateway:?}").contains("YTpi"));
    }

    #[test]
    fn values_that_used_to_pass_silently_are_issues() {
        let cases: &[(&str, &str)] = &[
            ("BRIDGE_LOG", "warning"),
            ("BRIDGE_LOG", "verbose"),
            ("BRIDGE_LOG", "garbage["),
            ("BRIDGE_LOG", "999"),
            ("BRIDGE_LOG", "hyper=loud"),
            ("BRIDGE_LISTENER_ADDR", "not a host!"),
            ("BRIDGE_LISTENER_ADDR", "-bad.example"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://"),
            ("BRIDGE_ARCHITECTURE", "mips"),
            ("OTEL_SDK_DISABLED", "maybe"),
        ];
        for (variable, value) in cases {
            let (cfg, issues) = load(&[
                (variable, value),
                (
                    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                    "http://collector/v1/traces",
                ),
            ]);
            assert_eq!(issues.len(), 1, "{variable}={value}: {issues:?}");
            assert_eq!(issues[0].variable, *variable);
            match *variable {
                "BRIDGE_LOG" => assert_eq!(cfg.log_filter, "info"),
                "BRIDGE_LISTENER_ADDR" => assert_eq!(cfg.listener_host, SANDBOX_HOST),
                "OTEL_EXPORTER_OTLP_ENDPOINT" => {
                    let otlp = cfg.otlp.expect("traces keep their own endpoint");
                    assert!(otlp.metrics.is_none() && otlp.logs.is_none());
                }
                "OTEL_SDK_DISABLED" => assert!(cfg.otlp.is_some()),
                _ => {}
            }
        }
        for good in [
            "debug",
            "WARN",
            "info,hyper=off",
            "lambda_telemetry_bridge=trace",
        ] {
            let (cfg, issues) = load(&[("BRIDGE_LOG", good)]);
            assert!(issues.is_empty(), "{good}: {issues:?}");
            assert!(cfg
                .log_filter
                .parse::<tracing_subscriber::filter::Targets>()
                .is_ok());
        }
        for good in ["127.0.0.1", "::1", "sandbox.localdomain", "0.0.0.0"] {
            let (_, issues) = load(&[("BRIDGE_LISTENER_ADDR", good)]);
            assert!(issues.is_empty(), "{good}: {issues:?}");
        }
        let (cfg, issues) = load(&[("BRIDGE_ARCHITECTURE", "aarch64")]);
        assert!(issues.is_empty());
        assert_eq!(cfg.pricing, Pricing::for_arch("arm64"));
    }

    #[test]
    fn pricing_defaults_follow_the_architecture() {
        assert!(
            Pricing::for_arch("aarch64").per_gb_second < Pricing::for_arch("x86_64").per_gb_second
        );
        let (cfg, issues) = load(&[
            ("BRIDGE_PRICE_GB_SECOND", "0.5"),
            ("BRIDGE_PRICE_REQUEST", "-1"),
        ]);
        assert_eq!(cfg.pricing.per_gb_second, 0.5);
        assert_eq!(issues.len(), 1);
    }

    #[test]
    fn types_and_port_are_validated() {
        let (cfg, issues) = load(&[
            ("BRIDGE_TELEMETRY_TYPES", "platform, function"),
            ("BRIDGE_LISTENER_PORT", "9001"),
        ]);
        assert_eq!(
            cfg.telemetry_types,
            vec![TelemetryType::Platform, TelemetryType::Function]
        );
        assert_eq!(cfg.listener_port, 0);
        assert_eq!(issues.len(), 1);
        let (_, issues) = load(&[("BRIDGE_TELEMETRY_TYPES", "platform,metrics")]);
        assert_eq!(issues[0].variable, "BRIDGE_TELEMETRY_TYPES");
    }
}
