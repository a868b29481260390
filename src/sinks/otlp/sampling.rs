//! Which invocations' spans leave: the standard `OTEL_TRACES_SAMPLER` (the parent is the X-Ray
//! header's `Sampled` flag), and the bridge's own tail rules that keep a failed or slow
//! invocation whatever the sampler said (`BRIDGE_TRACES_KEEP_ERRORS`,
//! `BRIDGE_TRACES_KEEP_SLOWER_THAN_MS`). Only spans are sampled: metrics and log records are
//! made from every event.

use opentelemetry::trace::TraceId;

use crate::config::env::Env;

/// The head decision, as the OpenTelemetry SDKs define `OTEL_TRACES_SAMPLER`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampler {
    AlwaysOn,
    AlwaysOff,
    /// Kept when the trace id's lower 64 bits, shifted right by one, are below ratio × 2⁶³: the
    /// rule of the Go and Rust SDKs' `TraceIdRatioBased`, so every environment (and a function's
    /// own SDK with the same ratio) keeps the same traces.
    TraceIdRatio(f64),
    /// The parent's decision when there is a parent (an X-Ray header), else `root`'s.
    ParentBased(Root),
}

/// The root sampler of a parent-based one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Root {
    AlwaysOn,
    AlwaysOff,
    TraceIdRatio(f64),
}

/// The sampler and the tail rules.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    pub sampler: Sampler,
    /// Keep every invocation whose status is not `success` (error, failure, timeout), and every
    /// invocation whose end was never seen (exported as incomplete).
    pub keep_errors: bool,
    /// Keep every invocation that ran longer than this (ms, the runtime's duration).
    pub keep_slower_than_ms: Option<f64>,
}

impl Default for Sampling {
    /// Every span leaves, as before sampling existed.
    fn default() -> Sampling {
        Sampling {
            sampler: Sampler::AlwaysOn,
            keep_errors: false,
            keep_slower_than_ms: None,
        }
    }
}

/// Why a span was exported or not, for the bridge's own metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// The sampler kept it.
    Sampled,
    /// The sampler left it out and no tail rule kept it.
    SampledOut,
    /// The sampler left it out; a tail rule kept it.
    KeptFailed,
    KeptSlow,
}

impl Decision {
    pub fn exported(self) -> bool {
        self != Decision::SampledOut
    }
}

fn ratio_keeps(ratio: f64, trace_id: TraceId) -> bool {
    if ratio >= 1.0 {
        return true;
    }
    if ratio <= 0.0 {
        return false;
    }
    let bound = (ratio * (1u64 << 63) as f64) as u64;
    let bytes = trace_id.to_bytes();
    let mut low = [0u8; 8];
    low.copy_from_slice(&bytes[8..]);
    (u64::from_be_bytes(low) >> 1) < bound
}

impl Sampling {
    /// Whether the spans of this trace would be sampled, from the trace id and the parent's
    /// `Sampled` flag (`None`: no X-Ray header, so no parent).
    pub fn head(&self, trace_id: TraceId, parent_sampled: Option<bool>) -> bool {
        match self.sampler {
            Sampler::AlwaysOn => true,
            Sampler::AlwaysOff => false,
            Sampler::TraceIdRatio(r) => ratio_keeps(r, trace_id),
            Sampler::ParentBased(root) => match (parent_sampled, root) {
                (Some(sampled), _) => sampled,
                (None, Root::AlwaysOn) => true,
                (None, Root::AlwaysOff) => false,
                (None, Root::TraceIdRatio(r)) => ratio_keeps(r, trace_id),
            },
        }
    }

    /// The final decision once the outcome is known (a tail decision).
    pub fn decide(&self, head: bool, failed: bool, duration_ms: Option<f64>) -> Decision {
        if head {
            Decision::Sampled
        } else if self.keep_errors && failed {
            Decision::KeptFailed
        } else if self
            .keep_slower_than_ms
            .zip(duration_ms)
            .is_some_and(|(limit, d)| d > limit)
        {
            Decision::KeptSlow
        } else {
            Decision::SampledOut
        }
    }

    /// `OTEL_TRACES_SAMPLER`, `OTEL_TRACES_SAMPLER_ARG` and the tail rules; a bad value is an
    /// issue and the default (every span leaves) is used for that setting.
    pub fn read(env: &mut Env) -> Sampling {
        let ratio_var = "OTEL_TRACES_SAMPLER_ARG";
        let name = env.parse(
            "OTEL_TRACES_SAMPLER",
            |v| {
                let v = v.to_ascii_lowercase();
                [
                    "always_on",
                    "always_off",
                    "traceidratio",
                    "parentbased_always_on",
                    "parentbased_always_off",
                    "parentbased_traceidratio",
                ]
                .into_iter()
                .find(|known| *known == v)
            },
            "always_on, always_off, traceidratio, parentbased_always_on, parentbased_always_off \
             or parentbased_traceidratio (jaeger_remote and xray are not supported)",
            "every invocation's spans are exported (always_on)",
        );
        let wants_ratio = matches!(name, Some("traceidratio" | "parentbased_traceidratio"));
        let ratio = if wants_ratio {
            env.parse(
                ratio_var,
                |v| v.parse::<f64>().ok().filter(|r| (0.0..=1.0).contains(r)),
                "a ratio from 0 to 1",
                "using 1.0 (every trace)",
            )
            .unwrap_or(1.0)
        } else {
            1.0
        };
        let sampler = match name {
            None | Some("always_on") => Sampler::AlwaysOn,
            Some("always_off") => Sampler::AlwaysOff,
            Some("traceidratio") => Sampler::TraceIdRatio(ratio),
            Some("parentbased_always_on") => Sampler::ParentBased(Root::AlwaysOn),
            Some("parentbased_always_off") => Sampler::ParentBased(Root::AlwaysOff),
            Some(_) => Sampler::ParentBased(Root::TraceIdRatio(ratio)),
        };
        let keep_errors = env.flag(
            "BRIDGE_TRACES_KEEP_ERRORS",
            false,
            "failed invocations are sampled like the others",
        );
        let keep_slower_than_ms = env.parse(
            "BRIDGE_TRACES_KEEP_SLOWER_THAN_MS",
            |v| {
                v.parse::<f64>()
                    .ok()
                    .filter(|ms| ms.is_finite() && *ms >= 0.0)
            },
            "a non-negative number of milliseconds",
            "slow invocations are sampled like the others",
        );
        Sampling {
            sampler,
            keep_errors,
            keep_slower_than_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(low: u64) -> TraceId {
        let mut bytes = [0u8; 16];
        bytes[0] = 0x5f;
        bytes[8..].copy_from_slice(&low.to_be_bytes());
        TraceId::from_bytes(bytes)
    }

    #[test]
    fn the_ratio_is_decided_by_the_trace_ids_lower_bits() {
        let quarter = Sampling {
            sampler: Sampler::TraceIdRatio(0.25),
            ..Sampling::default()
        };
        // Lower 64 bits >> 1 below 2^61 are kept; the upper 64 bits do not matter.
        assert!(quarter.head(id((1u64 << 62) - 2), None));
        assert!(!quarter.head(id(1u64 << 62), None));
        assert!(!quarter.head(id(u64::MAX), None));
        assert!(quarter.head(id(0), Some(false)), "not parent-based");
        let none = Sampling {
            sampler: Sampler::TraceIdRatio(0.0),
            ..Sampling::default()
        };
        assert!(!none.head(id(0), None));
    }

    #[test]
    fn parent_based_follows_the_parent_and_else_the_root() {
        let s = Sampling {
            sampler: Sampler::ParentBased(Root::AlwaysOff),
            ..Sampling::default()
        };
        assert!(s.head(id(u64::MAX), Some(true)));
        assert!(!s.head(id(0), Some(false)));
        assert!(!s.head(id(0), None));
        let s = Sampling {
            sampler: Sampler::ParentBased(Root::TraceIdRatio(0.5)),
            ..Sampling::default()
        };
        assert!(s.head(id(0), None));
        assert!(!s.head(id(u64::MAX), None));
        assert!(s.head(id(u64::MAX), Some(true)));
    }

    #[test]
    fn tail_rules_keep_failures_and_slow_invocations() {
        let s = Sampling {
            sampler: Sampler::AlwaysOff,
            keep_errors: true,
            keep_slower_than_ms: Some(100.0),
        };
        assert_eq!(s.decide(false, true, Some(1.0)), Decision::KeptFailed);
        assert_eq!(s.decide(false, false, Some(100.5)), Decision::KeptSlow);
        assert_eq!(s.decide(false, false, Some(100.0)), Decision::SampledOut);
        assert_eq!(s.decide(false, false, None), Decision::SampledOut);
        assert_eq!(s.decide(true, false, None), Decision::Sampled);
    }

    fn read(vars: &[(&str, &str)]) -> (Sampling, Vec<String>) {
        crate::config::env::read_from(vars, Sampling::read)
    }

    #[test]
    fn settings_are_read_as_the_sdks_define_them() {
        assert_eq!(read(&[]), (Sampling::default(), vec![]));
        let (s, issues) = read(&[
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.1"),
            ("BRIDGE_TRACES_KEEP_ERRORS", "true"),
            ("BRIDGE_TRACES_KEEP_SLOWER_THAN_MS", "2500"),
        ]);
        assert!(issues.is_empty());
        assert_eq!(s.sampler, Sampler::ParentBased(Root::TraceIdRatio(0.1)));
        assert!(s.keep_errors);
        assert_eq!(s.keep_slower_than_ms, Some(2500.0));
        let (s, issues) = read(&[
            ("OTEL_TRACES_SAMPLER", "traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "1.5"),
        ]);
        assert_eq!(s.sampler, Sampler::TraceIdRatio(1.0));
        assert_eq!(issues, vec!["OTEL_TRACES_SAMPLER_ARG".to_string()]);
        let (s, issues) = read(&[
            ("OTEL_TRACES_SAMPLER", "xray"),
            ("BRIDGE_TRACES_KEEP_SLOWER_THAN_MS", "-1"),
        ]);
        assert_eq!(s, Sampling::default());
        assert_eq!(
            issues,
            vec![
                "OTEL_TRACES_SAMPLER".to_string(),
                "BRIDGE_TRACES_KEEP_SLOWER_THAN_MS".to_string()
            ]
        );
    }
}
