//! Issue "Control what leaves", sampling: `OTEL_TRACES_SAMPLER` with the X-Ray header's `Sampled`
//! flag as the parent, ratio decisions by trace id, the tail rules that keep failed and slow
//! invocations, and metrics and log records made from every event whatever the sampler says.
//! The real binary under the Lambda stand-in, OTLP decoded with the protobuf definitions.

mod common;

use std::collections::{BTreeSet, HashMap};

use common::otlp::attr_str;
use common::*;
use lambda_sim::otlp_receiver::hex;
use lambda_sim::{Behaviour, RecordingEndpoint, SimConfig, SimReport};
use opentelemetry_proto::tonic::trace::v1::span;

struct Run {
    report: SimReport,
    collector: RecordingEndpoint,
    gateway: RecordingEndpoint,
}

async fn run_sampled(
    invocations: usize,
    extra: &[(&str, &str)],
    tweak: impl FnOnce(&mut SimConfig),
) -> Run {
    let collector = RecordingEndpoint::start(Behaviour::ok())
        .await
        .expect("collector");
    let gateway = RecordingEndpoint::start(Behaviour::ok())
        .await
        .expect("pushgateway");
    let mut env = vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url()),
        ("BRIDGE_PUSHGATEWAY_URL", gateway.url()),
        ("BRIDGE_PUSH_INTERVAL_MS", "3600000".to_string()),
    ];
    env.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
    let mut cfg = config(invocations, &env);
    tweak(&mut cfg);
    let report = run(cfg).await;
    assert_clean(&report);
    Run {
        report,
        collector,
        gateway,
    }
}

/// The 32 hex digits of the trace id in an X-Ray header, and its `Sampled` flag.
fn xray(header: &str) -> (String, bool) {
    let mut trace = String::new();
    let mut sampled = true;
    for part in header.split(';') {
        if let Some(root) = part.strip_prefix("Root=1-") {
            trace = root.replace('-', "");
        }
        if part == "Sampled=0" {
            sampled = false;
        }
    }
    (trace, sampled)
}

impl Run {
    /// Per request id: (trace id, Sampled flag), from the `platform.start` events sent.
    fn traces(&self) -> HashMap<String, (String, bool)> {
        self.report
            .events_sent
            .iter()
            .filter(|e| e["type"] == "platform.start")
            .map(|e| {
                let header = e["record"]["tracing"]["value"]
                    .as_str()
                    .expect("an X-Ray header");
                (request_id(e).expect("requestId").to_string(), xray(header))
            })
            .collect()
    }

    /// The request ids whose invocation span was exported (each at most once).
    fn exported(&self) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        for (_, s) in otlp::spans(&self.collector) {
            if s.kind == span::SpanKind::Server as i32 {
                if let Some(rid) = attr_str(&s.attributes, "faas.invocation_id") {
                    assert!(out.insert(rid.to_string()), "{rid} exported twice");
                }
            }
        }
        out
    }

    fn requests(&self) -> BTreeSet<String> {
        self.report
            .invocations
            .iter()
            .map(|i| i.request_id.clone())
            .collect()
    }

    /// Every span is in the trace of an exported invocation, or is the init span; each kept
    /// invocation has at least `phases` children.
    fn assert_children_follow_their_invocation(&self, phases: usize) {
        let traces = self.traces();
        let kept: BTreeSet<String> = self
            .exported()
            .iter()
            .map(|rid| traces[rid].0.clone())
            .collect();
        let mut children = 0;
        for (_, s) in otlp::spans(&self.collector) {
            if s.name.ends_with(" init") {
                continue;
            }
            assert!(
                kept.contains(&hex(&s.trace_id)),
                "span {} of a sampled-out trace was exported",
                s.name
            );
            children += usize::from(s.kind == span::SpanKind::Internal as i32);
        }
        assert!(
            children >= phases * kept.len(),
            "each kept invocation has its phases ({children} children for {} invocations)",
            kept.len()
        );
    }

    /// Metrics and log records are made from every event: counts and sums equal what was sent.
    fn assert_metrics_and_logs_whole(&self) {
        otlp::assert_invocation_metrics_whole(&self.collector, &self.report);

        // Every function log line leaves, on its invocation's trace, sampled or not.
        let traces = self.traces();
        let lines = self
            .report
            .events_sent
            .iter()
            .filter(|e| e["type"] == "function")
            .count();
        let logs = otlp::logs(&self.collector);
        assert_eq!(logs.len(), lines, "every function log line exported");
        for (_, log) in &logs {
            if let Some(rid) = attr_str(&log.attributes, "faas.invocation_id") {
                assert_eq!(
                    hex(&log.trace_id),
                    traces[rid].0,
                    "log of {rid} on its trace"
                );
            }
        }
    }

    fn decisions(&self, decision: &str) -> f64 {
        let pushed = last_push(&self.gateway);
        metric_value(
            &pushed,
            &format!("bridge_sampling_decisions_total{{decision=\"{decision}\"}}"),
        )
        .unwrap_or_else(|| panic!("decision {decision} in the pushed self metrics:\n{pushed}"))
    }
}

#[test]
fn by_default_every_invocation_has_its_span_whatever_sampled_says() {
    block_on(async {
        let run = run_sampled(12, &[], |c| c.unsampled_every = Some(2)).await;
        assert!(run.traces().values().any(|(_, sampled)| !sampled));
        assert_eq!(run.exported(), run.requests());
        run.assert_metrics_and_logs_whole();
        assert_eq!(
            run.decisions("sampled"),
            13.0,
            "12 invocations and the init"
        );
        assert_eq!(run.decisions("sampled_out"), 0.0);
    });
}

#[test]
fn parent_based_exports_exactly_the_invocations_the_header_sampled() {
    block_on(async {
        let run = run_sampled(
            24,
            &[("OTEL_TRACES_SAMPLER", "parentbased_always_on")],
            |c| c.unsampled_every = Some(3),
        )
        .await;
        let sampled: BTreeSet<String> = run
            .traces()
            .into_iter()
            .filter(|(_, (_, sampled))| *sampled)
            .map(|(rid, _)| rid)
            .collect();
        assert_eq!(sampled.len(), 16);
        assert_eq!(run.exported(), sampled);
        run.assert_children_follow_their_invocation(3);
        run.assert_metrics_and_logs_whole();
        // The init span has no parent: the root sampler (always on) keeps it.
        assert!(otlp::spans(&run.collector)
            .iter()
            .any(|(_, s)| s.name == "sim-function init"));
        assert_eq!(run.decisions("sampled_out"), 8.0);
        assert_eq!(run.decisions("sampled"), 17.0);
    });
}

/// The SDKs' rule, written out: kept when the trace id's lower 64 bits, shifted right by one,
/// are below 0.25 × 2⁶³, i.e. when the first hex digit of the lower half is 0–3.
fn a_quarter_keeps(trace: &str) -> bool {
    matches!(trace.as_bytes()[16], b'0'..=b'3')
}

#[test]
fn a_ratio_keeps_the_same_traces_in_every_environment() {
    block_on(async {
        const N: usize = 2000;
        let quick = |c: &mut SimConfig| {
            c.trace_seed = Some(21);
            c.invoke_duration_ms = 1;
            c.log_lines_per_invoke = 0;
        };
        let env = [
            ("OTEL_TRACES_SAMPLER", "traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
            ("OTEL_LOGS_EXPORTER", "none"),
        ];
        let first = run_sampled(N, &env, quick).await;
        let second = run_sampled(N, &env, quick).await;
        let kept_traces = |run: &Run| -> BTreeSet<String> {
            let traces = run.traces();
            run.exported()
                .iter()
                .map(|rid| traces[rid].0.clone())
                .collect()
        };
        let (a, b) = (kept_traces(&first), kept_traces(&second));
        assert_eq!(a, b, "two environments keep the same traces");
        let predicted: BTreeSet<String> = first
            .traces()
            .into_values()
            .map(|(trace, _)| trace)
            .filter(|t| a_quarter_keeps(t))
            .collect();
        assert_eq!(a, predicted, "exactly the traces the ratio rule keeps");
        // 25 % of 2,000 ± 4.5 standard deviations of the binomial (σ ≈ 19.4).
        let kept = a.len() as f64;
        assert!((413.0..=587.0).contains(&kept), "{kept} of {N} kept");
        first.assert_children_follow_their_invocation(3);
    });
}

#[test]
fn failed_and_slow_invocations_are_kept_at_ratio_zero() {
    block_on(async {
        let run = run_sampled(
            30,
            &[
                ("OTEL_TRACES_SAMPLER", "traceidratio"),
                ("OTEL_TRACES_SAMPLER_ARG", "0"),
                ("BRIDGE_TRACES_KEEP_ERRORS", "true"),
                ("BRIDGE_TRACES_KEEP_SLOWER_THAN_MS", "12"),
            ],
            |c| {
                c.invoke_duration_ms = 10;
                c.error_every = Some(4);
                c.timeout_every = Some(7);
                c.function_timeout_ms = 100;
            },
        )
        .await;
        let done: Vec<(String, bool, f64)> = run
            .report
            .events_sent
            .iter()
            .filter(|e| e["type"] == "platform.runtimeDone")
            .map(|e| {
                (
                    request_id(e).expect("requestId").to_string(),
                    e["record"]["status"] != "success",
                    e["record"]["metrics"]["durationMs"].as_f64().unwrap_or(0.0),
                )
            })
            .collect();
        let failed = done.iter().filter(|d| d.1).count();
        let slow_only = done.iter().filter(|d| !d.1 && d.2 > 12.0).count();
        assert!(failed >= 8, "errors and timeouts among the invocations");
        assert!(slow_only > 0, "some successful invocations ran over 12 ms");
        let expected: BTreeSet<String> = done
            .iter()
            .filter(|(_, failed, ms)| *failed || *ms > 12.0)
            .map(|d| d.0.clone())
            .collect();
        assert_eq!(run.exported(), expected);
        run.assert_children_follow_their_invocation(3);
        run.assert_metrics_and_logs_whole();
        assert!(
            !otlp::spans(&run.collector)
                .iter()
                .any(|(_, s)| s.name.ends_with(" init")),
            "a successful init is sampled out at ratio 0"
        );
        assert_eq!(run.decisions("kept_failed"), failed as f64);
        assert_eq!(run.decisions("kept_slow"), slow_only as f64);
        assert_eq!(
            run.decisions("sampled_out"),
            (30 - expected.len() + 1) as f64,
            "the rest, and the init"
        );
    });
}

#[test]
fn a_bad_sampler_is_one_error_and_every_span_still_leaves() {
    block_on(async {
        let run = run_sampled(
            4,
            &[
                ("OTEL_TRACES_SAMPLER", "jaeger_remote"),
                ("BRIDGE_TRACES_KEEP_SLOWER_THAN_MS", "soon"),
            ],
            |c| c.capture_output = true,
        )
        .await;
        let out = &run.report.extension_output;
        for variable in ["OTEL_TRACES_SAMPLER", "BRIDGE_TRACES_KEEP_SLOWER_THAN_MS"] {
            let lines = out
                .lines()
                .filter(|l| l.contains("ERROR") && l.contains(variable))
                .count();
            assert_eq!(lines, 1, "one ERROR naming {variable}:\n{out}");
        }
        assert_eq!(run.exported(), run.requests());

        // Under BRIDGE_STRICT the same value is an init error.
        let mut cfg = config(
            1,
            &[
                ("BRIDGE_STRICT", "true".into()),
                ("OTEL_TRACES_SAMPLER", "jaeger_remote".into()),
            ],
        );
        cfg.capture_output = true;
        let report = match lambda_sim::run(cfg).await {
            Ok(report) => report,
            Err(lambda_sim::SimError::InitFailed { report, .. }) => *report,
            Err(e) => panic!("unexpected: {e}"),
        };
        let error = report.init_errors.first().expect("an init error");
        assert_eq!(
            error.error_type.as_deref(),
            Some("Extension.InvalidConfiguration")
        );
    });
}

#[test]
fn managed_instances_sample_at_the_report() {
    block_on(async {
        let run = run_sampled(
            24,
            &[
                ("OTEL_TRACES_SAMPLER", "parentbased_always_off"),
                ("BRIDGE_TRACES_KEEP_ERRORS", "true"),
            ],
            |c| {
                c.managed_instances = Some(4);
                c.unsampled_every = Some(2);
                c.error_every = Some(5);
            },
        )
        .await;
        let traces = run.traces();
        let failed: BTreeSet<String> = run
            .report
            .events_sent
            .iter()
            .filter(|e| e["type"] == "platform.report" && e["record"]["status"] != "success")
            .map(|e| request_id(e).expect("requestId").to_string())
            .collect();
        assert!(!failed.is_empty());
        let expected: BTreeSet<String> = traces
            .iter()
            .filter(|(rid, (_, sampled))| *sampled || failed.contains(*rid))
            .map(|(rid, _)| rid.clone())
            .collect();
        assert!(expected.len() < 24);
        assert_eq!(run.exported(), expected);
        run.assert_children_follow_their_invocation(2);
    });
}
