//! Every setting of the bridge, read in one pass over the environment: the core ([`Config`]) and
//! each output's own, which live beside the output. One pass, so that every bad value is one
//! issue and `BRIDGE_STRICT` sees them all.

use std::sync::Arc;

use crate::config::env::Env;
use crate::config::{Config, ConfigError, ConfigIssue};
use crate::masking::Masking;
use crate::self_metrics::config::SelfMetricsConfig;
use crate::sinks::otlp::config::OtlpConfig;
use crate::sinks::raw_json::config::DispatchConfig;

#[derive(Debug, Clone)]
pub struct Settings {
    pub core: Config,
    /// The raw JSON sink; `None` without `DISPATCH_POST_URI`.
    pub dispatch: Option<DispatchConfig>,
    /// `None` when no OTLP endpoint is configured or `OTEL_SDK_DISABLED=true`.
    pub otlp: Option<OtlpConfig>,
    pub self_metrics: SelfMetricsConfig,
    /// Mask rules for both outputs (the raw batch only with `BRIDGE_MASK_RAW`).
    pub masking: Arc<Masking>,
}

impl Settings {
    /// Reads the process environment.
    pub fn from_env() -> Result<(Settings, Vec<ConfigIssue>), ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads settings through `lookup` (the environment, or a map in tests).
    pub fn from_lookup(
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<(Settings, Vec<ConfigIssue>), ConfigError> {
        let mut env = Env::new(&lookup);
        let core = Config::read(&mut env)?;
        let dispatch = DispatchConfig::read(&mut env);
        let masking = Arc::new(Masking::read(&mut env));
        let settings = Settings {
            core,
            dispatch,
            otlp: OtlpConfig::read(&mut env, &masking),
            self_metrics: SelfMetricsConfig::read(&mut env),
            masking,
        };
        Ok((settings, env.into_issues()))
    }
}

#[cfg(test)]
mod tests;
