//! Where the bridge's own metrics go: `BRIDGE_METRICS_ADDR`, `BRIDGE_PUSHGATEWAY_URL`,
//! `BRIDGE_PUSH_INTERVAL_MS`, `BRIDGE_PUSHGATEWAY_STALE_AFTER_MS`.

use std::fmt;
use std::time::Duration;

use crate::config::env::Env;
use crate::config::url::{endpoint_url, redact_url};

#[derive(Debug, Clone, Default)]
pub struct SelfMetricsConfig {
    /// Serve the self-metrics at `/metrics` here (off by default).
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Push the self-metrics here.
    pub pushgateway: Option<Pushgateway>,
    pub push_interval: Duration,
    /// Delete this job's Pushgateway groups last pushed longer ago than this
    /// (`BRIDGE_PUSHGATEWAY_STALE_AFTER_MS`; `None`: never).
    pub stale_after: Option<Duration>,
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

impl SelfMetricsConfig {
    pub fn read(env: &mut Env) -> SelfMetricsConfig {
        SelfMetricsConfig {
            metrics_addr: env.parse(
                "BRIDGE_METRICS_ADDR",
                |v| v.parse().ok(),
                "ip:port, e.g. 127.0.0.1:9464",
                "the /metrics endpoint is disabled",
            ),
            pushgateway: env.parse_url(
                "BRIDGE_PUSHGATEWAY_URL",
                |v| endpoint_url(v).map(|(url, authorization)| Pushgateway { url, authorization }),
                "an absolute http:// or https:// URL",
                "pushing self-metrics is disabled",
            ),
            push_interval: Duration::from_millis(u64::from(env.ranged(
                "BRIDGE_PUSH_INTERVAL_MS",
                1,
                86_400_000,
                60_000,
            ))),
            stale_after: Some(u64::from(env.ranged(
                "BRIDGE_PUSHGATEWAY_STALE_AFTER_MS",
                0,
                604_800_000,
                900_000,
            )))
            .filter(|ms| *ms > 0)
            .map(Duration::from_millis),
        }
    }
}
