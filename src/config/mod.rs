//! Configuration from the environment, validated once at start.
//!
//! A bad value of an optional setting never breaks the function: it becomes a [`ConfigIssue`]
//! (one ERROR line naming the variable, the value and what is allowed) and that setting falls back
//! to its default or its feature is disabled. `BRIDGE_STRICT=true` turns issues into an init error.
//!
//! This module holds the core (the lifecycle's and the pipeline's settings) and the reader
//! ([`env::Env`]); each output reads its own settings beside it (`sinks::raw_json::config`,
//! `sinks::otlp::config`, `self_metrics::config`), `crate::settings` reads them all in one pass,
//! and every `AWS_*` variable is read in [`lambda`].

pub mod env;
pub mod lambda;
pub mod rules;
pub mod url;

use std::fmt;
use std::time::Duration;

use thiserror::Error;

use env::Env;
use lambda::{ExecutionModel, LambdaEnv};

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
    /// While invocations come steadily, deliver beside the lifecycle (what is queued leaves as the
    /// next invocation begins, and the invocation is not held); when they are sparse (the
    /// expected gap, the oldest undelivered event's age, or the queue beyond its bound), or at
    /// the first invocation, as `End`.
    Adaptive,
    /// After every invocation's `platform.runtimeDone`, before the freeze.
    End,
    /// Default model: on an invoke only when the last flush is older than this. Managed
    /// Instances: this often, on a timer beside the lifecycle.
    Periodic(Duration),
    /// Only at shutdown.
    Shutdown,
}

impl fmt::Display for FlushPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FlushPolicy::Adaptive => f.write_str("adaptive"),
            FlushPolicy::End => f.write_str("end"),
            FlushPolicy::Periodic(d) => write!(f, "periodic:{}", d.as_millis()),
            FlushPolicy::Shutdown => f.write_str("shutdown"),
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
    /// What Lambda says about the environment (`AWS_*`).
    pub lambda: LambdaEnv,
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
    pub flush_policy: FlushPolicy,
    /// `adaptive`: the longest telemetry should wait in the environment while traffic is steady.
    pub flush_max_delay: Duration,
    /// `adaptive`, steady traffic: what is queued leaves once its oldest event is this old (or a
    /// request's worth is queued), not at every invocation. Zero: at every invocation.
    pub flush_freshness: Duration,
    pub flush_timeout: Duration,
    pub queue_max_events: usize,
    pub queue_max_bytes: usize,
    pub strict: bool,
    pub log_filter: String,
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
/// `adaptive` holds invocations that come less often than this (and delivers what waited
/// longer): fresh within a couple of seconds, and a function invoked every few seconds keeps its
/// telemetry out of the freeze at the price of `end`.
pub const DEFAULT_FLUSH_MAX_DELAY: Duration = Duration::from_millis(2_000);
/// `adaptive`, steady traffic: one request per output per second at any invocation rate, and
/// telemetry at the endpoints within about a second.
pub const DEFAULT_FLUSH_FRESHNESS: Duration = Duration::from_millis(1_000);
/// Under Managed Instances delivery runs on this timer by default: with the Telemetry API's
/// buffering window and a round trip, telemetry is at the endpoints within about a second.
pub const DEFAULT_MANAGED_INSTANCES_INTERVAL: Duration = Duration::from_millis(1_000);
/// The shortest delivery timer interval under Managed Instances.
const MIN_TIMER_INTERVAL: Duration = Duration::from_millis(100);
/// Sized for a 128 MB function: 8 MiB of queued telemetry at most, and room for two of the
/// largest POSTs Lambda sends (maxItems ≤ 10,000).
pub const DEFAULT_QUEUE_MAX_EVENTS: usize = 20_000;
pub const DEFAULT_QUEUE_MAX_BYTES: usize = 8 * 1024 * 1024;
/// The name Lambda resolves to the sandbox (where the listener binds and Lambda sends to).
pub const SANDBOX_HOST: &str = "sandbox.localdomain";

impl Config {
    /// The core settings; `Err` when this is not a Lambda environment at all.
    pub fn read(env: &mut Env) -> Result<Config, ConfigError> {
        let lambda = LambdaEnv::read(env).ok_or(ConfigError::MissingRuntimeApi)?;
        let all_types = vec![
            TelemetryType::Platform,
            TelemetryType::Function,
            TelemetryType::Extension,
        ];
        let telemetry_types = env
            .parse(
                "BRIDGE_TELEMETRY_TYPES",
                parse_types,
                "a comma-separated subset of platform,function,extension",
                "subscribing to platform,function,extension",
            )
            .unwrap_or(all_types);
        let defaults = Buffering::default();
        let buffering = Buffering {
            max_items: env.ranged("BRIDGE_BUFFER_MAX_ITEMS", 1_000, 10_000, defaults.max_items),
            max_bytes: env.ranged(
                "BRIDGE_BUFFER_MAX_BYTES",
                262_144,
                1_048_576,
                defaults.max_bytes,
            ),
            timeout_ms: env.ranged("BRIDGE_BUFFER_TIMEOUT_MS", 25, 30_000, defaults.timeout_ms),
        };
        let default_listener_host = if lambda.sam_local {
            "0.0.0.0"
        } else {
            SANDBOX_HOST
        };
        let listener_host = env
            .parse(
                "BRIDGE_LISTENER_ADDR",
                |v| valid_host(v).then(|| v.to_string()),
                "an IP address or a host name",
                format!("listening on {default_listener_host}"),
            )
            .unwrap_or_else(|| default_listener_host.to_string());
        // Lambda reaches a listener on every interface by the sandbox's name.
        let destination_host = if listener_host == "0.0.0.0" || listener_host == "::" {
            SANDBOX_HOST.to_string()
        } else {
            listener_host.clone()
        };
        let listener_port = env
            .parse(
                "BRIDGE_LISTENER_PORT",
                |v| v.parse::<u16>().ok().filter(|p| *p != 9001),
                "a TCP port 0-65535 other than 9001 (reserved by Lambda)",
                "listening on an ephemeral port",
            )
            .unwrap_or(0);
        let flush_policy = flush_policy(env, lambda.model);
        let flush_max_delay = Duration::from_millis(u64::from(env.ranged(
            "BRIDGE_FLUSH_MAX_DELAY_MS",
            1,
            3_600_000,
            DEFAULT_FLUSH_MAX_DELAY.as_millis() as u32,
        )));
        let flush_freshness = flush_freshness(env, flush_max_delay);
        let flush_timeout = Duration::from_millis(u64::from(env.ranged(
            "BRIDGE_FLUSH_TIMEOUT_MS",
            1,
            60_000,
            DEFAULT_FLUSH_TIMEOUT.as_millis() as u32,
        )));
        let queue_max_events = env.ranged(
            "BRIDGE_QUEUE_MAX_EVENTS",
            1,
            10_000_000,
            DEFAULT_QUEUE_MAX_EVENTS as u32,
        ) as usize;
        let queue_max_bytes = env.ranged(
            "BRIDGE_QUEUE_MAX_BYTES",
            65_536,
            u32::MAX,
            DEFAULT_QUEUE_MAX_BYTES as u32,
        ) as usize;
        let strict = env.flag("BRIDGE_STRICT", false, "not strict");
        let log_filter = env
            .parse(
                "BRIDGE_LOG",
                |v| valid_log_filter(v).then(|| v.to_string()),
                "a level (off, error, warn, info, debug, trace) or a comma-separated target=level list",
                "logging at info",
            )
            .unwrap_or_else(|| "info".to_string());
        Ok(Config {
            lambda,
            telemetry_types,
            buffering,
            listener_host,
            destination_host,
            listener_port,
            default_listener_host: default_listener_host.to_string(),
            flush_policy,
            flush_max_delay,
            flush_freshness,
            flush_timeout,
            queue_max_events,
            queue_max_bytes,
            strict,
            log_filter,
        })
    }

    pub fn subscribes_to(&self, kind: TelemetryType) -> bool {
        self.telemetry_types.contains(&kind)
    }
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

/// `BRIDGE_FLUSH` for the execution model. Under Managed Instances no invocation ends where the
/// extension can see it (no INVOKE, no freeze): delivery runs on a timer, `periodic:<ms>` sets
/// it, `adaptive` (the default) means its default interval, and `end` is refused.
/// `BRIDGE_FLUSH_FRESHNESS_MS`: at most `BRIDGE_FLUSH_MAX_DELAY_MS`, beyond which telemetry is
/// overdue and held for anyway.
fn flush_freshness(env: &mut Env, max_delay: Duration) -> Duration {
    let default = DEFAULT_FLUSH_FRESHNESS.min(max_delay);
    let freshness = Duration::from_millis(u64::from(env.ranged(
        "BRIDGE_FLUSH_FRESHNESS_MS",
        0,
        3_600_000,
        default.as_millis() as u32,
    )));
    if freshness > max_delay {
        env.issue(
            "BRIDGE_FLUSH_FRESHNESS_MS",
            freshness.as_millis().to_string(),
            format!(
                "0 to BRIDGE_FLUSH_MAX_DELAY_MS ({} ms)",
                max_delay.as_millis()
            ),
            format!("using {} ms", max_delay.as_millis()),
        );
        return max_delay;
    }
    freshness
}

fn flush_policy(env: &mut Env, model: ExecutionModel) -> FlushPolicy {
    let managed = model.is_managed_instances();
    let default = if managed {
        FlushPolicy::Periodic(DEFAULT_MANAGED_INSTANCES_INTERVAL)
    } else {
        FlushPolicy::Adaptive
    };
    let allowed = if managed {
        "adaptive, periodic:<ms> (ms ≥ 100) or shutdown under Lambda Managed Instances (no \
         invocation end reaches an extension there)"
    } else {
        "adaptive, end, periodic:<ms> (ms ≥ 1) or shutdown"
    };
    let parsed = env.parse(
        "BRIDGE_FLUSH",
        parse_flush_policy,
        allowed,
        format!("using {default}"),
    );
    match parsed {
        None => default,
        Some(FlushPolicy::Adaptive) if managed => default,
        Some(policy @ FlushPolicy::End) if managed => {
            env.issue(
                "BRIDGE_FLUSH",
                policy.to_string(),
                allowed,
                format!("using {default}"),
            );
            default
        }
        // A timer that fires every few milliseconds would spend the CPU it is meant to save.
        Some(policy @ FlushPolicy::Periodic(every)) if managed && every < MIN_TIMER_INTERVAL => {
            let floor = FlushPolicy::Periodic(MIN_TIMER_INTERVAL);
            env.issue(
                "BRIDGE_FLUSH",
                policy.to_string(),
                allowed,
                format!("using {floor}"),
            );
            floor
        }
        Some(policy) => policy,
    }
}

fn parse_flush_policy(raw: &str) -> Option<FlushPolicy> {
    let raw = raw.trim();
    match raw.to_ascii_lowercase().as_str() {
        "adaptive" => Some(FlushPolicy::Adaptive),
        "end" => Some(FlushPolicy::End),
        "shutdown" => Some(FlushPolicy::Shutdown),
        other => {
            let ms: u64 = other.strip_prefix("periodic:")?.trim().parse().ok()?;
            (ms >= 1).then(|| FlushPolicy::Periodic(Duration::from_millis(ms)))
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flush_policies_parse() {
        assert_eq!(parse_flush_policy("end"), Some(FlushPolicy::End));
        assert_eq!(parse_flush_policy("Adaptive"), Some(FlushPolicy::Adaptive));
        assert_eq!(parse_flush_policy("SHUTDOWN"), Some(FlushPolicy::Shutdown));
        assert_eq!(
            parse_flush_policy("periodic:250"),
            Some(FlushPolicy::Periodic(Duration::from_millis(250)))
        );
        assert_eq!(parse_flush_policy("periodic:0"), None);
        assert_eq!(parse_flush_policy("periodic"), None);
        assert_eq!(parse_flush_policy("sometimes"), None);
    }
}
