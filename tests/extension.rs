//! Issue "The extension itself": the real binary against the Lambda stand-in and a real HTTP sink.

mod common;

use std::time::Duration;

use common::*;
use lambda_sim::{Behaviour, RecordingEndpoint, SimReport};

#[test]
fn registers_subscribes_and_delivers_every_event_once_unchanged_in_order() {
    block_on(async {
        let sink = RecordingEndpoint::start(Behaviour::ok())
            .await
            .expect("sink");
        let mut cfg = config(12, &[("DISPATCH_POST_URI", sink.url())]);
        cfg.error_every = Some(4);
        cfg.timeout_every = Some(7);
        cfg.function_timeout_ms = 300;
        let report = run(cfg).await;
        assert_clean(&report);

        assert_eq!(
            report.register_header("Lambda-Extension-Name"),
            Some("lambda-telemetry-bridge")
        );
        assert!(report
            .register_header("Lambda-Extension-Accept-Feature")
            .is_some_and(|v| v.contains("accountId")));
        assert_eq!(
            report.register_body,
            Some(serde_json::json!({"events": ["INVOKE", "SHUTDOWN"]}))
        );
        let sub = report.subscription_body.clone().expect("subscribed");
        assert_eq!(sub["schemaVersion"], "2022-12-13");
        assert_eq!(
            sub["types"],
            serde_json::json!(["platform", "function", "extension"])
        );
        assert_eq!(
            sub["buffering"],
            serde_json::json!({"maxItems": 1000, "maxBytes": 262144, "timeoutMs": 25})
        );
        assert_eq!(sub["destination"]["protocol"], "HTTP");
        let uri = sub["destination"]["URI"].as_str().expect("URI");
        assert!(
            uri.starts_with("http://127.0.0.1:") && !uri.contains(":9001/"),
            "{uri}"
        );

        // Exactly once, in order, byte for byte.
        let sent = report.events_sent_raw.clone();
        assert_eq!(received_raw(&sink), sent);
        assert_eq!(report.count_status("error"), 3); // 4, 8, 12 (7 is a timeout)
        assert_eq!(report.count_status("timeout"), 1);
    });
}

/// `end`'s promise (`adaptive` keeps it for sparse traffic: tests/adaptive.rs).
#[test]
fn an_invocations_events_leave_before_the_next_event_next() {
    block_on(async {
        let sink = RecordingEndpoint::start(Behaviour::ok())
            .await
            .expect("sink");
        let report = run(config(
            8,
            &[
                ("DISPATCH_POST_URI", sink.url()),
                ("BRIDGE_FLUSH", "end".into()),
            ],
        ))
        .await;
        assert_runtime_done_left_before_next(&report, &sink);
    });
}

#[test]
fn invocations_longer_than_the_flush_timeout_are_still_waited_for() {
    // The bridge waits for runtimeDone in steps (the flush timeout, at least 250 ms: app.rs); a
    // function that runs for several steps (300–900 ms here) must still have its telemetry out
    // before the next /event/next.
    block_on(async {
        let sink = RecordingEndpoint::start(Behaviour::ok())
            .await
            .expect("sink");
        let mut cfg = config(
            3,
            &[
                ("DISPATCH_POST_URI", sink.url()),
                ("BRIDGE_FLUSH_TIMEOUT_MS", "100".into()),
                ("BRIDGE_FLUSH", "end".into()),
            ],
        );
        cfg.invoke_duration_ms = 600; // ± 50 %: 300–900 ms, more than one 250 ms step
        let report = run(cfg).await;
        for invocation in &report.invocations {
            assert!(invocation.runtime_duration >= Duration::from_millis(250));
        }
        assert_runtime_done_left_before_next(&report, &sink);
    });
}

fn assert_runtime_done_left_before_next(report: &SimReport, sink: &RecordingEndpoint) {
    assert_clean(report);
    assert!(!report.invocations.is_empty());
    common::assert_runtime_done_before_next(
        report,
        &report.invocations,
        sink,
        "runtimeDone left after the next /event/next",
    );
}

#[test]
fn min_batch_size_keeps_the_seeds_meaning() {
    block_on(async {
        // More than the whole run: nothing leaves on an invoke, everything at shutdown.
        let sink = RecordingEndpoint::start(Behaviour::ok())
            .await
            .expect("sink");
        let report = run(config(
            5,
            &[
                ("DISPATCH_POST_URI", sink.url()),
                ("DISPATCH_MIN_BATCH_SIZE", "1000".into()),
            ],
        ))
        .await;
        assert_clean(&report);
        let requests = sink.requests();
        assert_eq!(requests.len(), 1, "one POST, at shutdown");
        assert!(requests[0].arrived_at >= report.shutdown_at.expect("shutdown"));
        assert_eq!(sink.received_events(), report.events_sent);

        // A small minimum: every invoke-time POST carries more than that many events.
        let sink = RecordingEndpoint::start(Behaviour::ok())
            .await
            .expect("sink");
        let report = run(config(
            10,
            &[
                ("DISPATCH_POST_URI", sink.url()),
                ("DISPATCH_MIN_BATCH_SIZE", "12".into()),
                // At every invocation (not coalesced), so that invoke-time POSTs happen.
                ("BRIDGE_FLUSH_FRESHNESS_MS", "0".into()),
            ],
        ))
        .await;
        assert_clean(&report);
        let shutdown_at = report.shutdown_at.expect("shutdown");
        let requests = sink.requests();
        assert!(requests.len() >= 2);
        for r in requests.iter().filter(|r| r.arrived_at < shutdown_at) {
            let n = r
                .body_json()
                .and_then(|b| b.as_array().map(Vec::len))
                .unwrap_or(0);
            assert!(n > 12, "an invoke-time POST carried only {n} events");
        }
        assert_eq!(sink.received_events(), report.events_sent);
    });
}

#[test]
fn shutdown_drains_the_last_report_and_exits_zero_in_time() {
    block_on(async {
        let sink = RecordingEndpoint::start(Behaviour::ok())
            .await
            .expect("sink");
        let mut cfg = config(3, &[("DISPATCH_POST_URI", sink.url())]);
        cfg.shutdown_deadline_ms = 1500;
        let report = run(cfg).await;
        assert_clean(&report);
        let last = &report.invocations.last().expect("invocations").request_id;
        let received = sink.received_events();
        assert!(received
            .iter()
            .any(|e| e["type"] == "platform.report" && request_id(e) == Some(last.as_str())));
        // In time from the bridge's side: done 250 ms before deadlineMs (the simulator would kill
        // it only at the deadline), plus what an exit needs to be seen on a loaded machine (120 ms).
        let took = report.shutdown_duration.expect("exited");
        assert!(
            took <= Duration::from_millis(1500 - 250 + 120),
            "shutdown took {took:?} (deadline 1500 ms, margin 250 ms)"
        );
        assert!(!report.killed);
        assert_eq!(report.exit_code, Some(0));
    });
}

#[test]
fn a_bad_value_is_reported_once_and_the_rest_keeps_working() {
    block_on(async {
        let sink = RecordingEndpoint::start(Behaviour::ok())
            .await
            .expect("sink");
        let report = run(config(
            3,
            &[
                ("DISPATCH_POST_URI", sink.url()),
                ("BRIDGE_BUFFER_TIMEOUT_MS", "5".into()),
                ("BRIDGE_FLUSH", "sometimes".into()),
            ],
        ))
        .await;
        assert_clean(&report);
        let out = &report.extension_output;
        let lines: Vec<&str> = out
            .lines()
            .filter(|l| l.contains("BRIDGE_BUFFER_TIMEOUT_MS"))
            .collect();
        assert_eq!(lines.len(), 1, "{out}");
        assert!(
            lines[0].contains("ERROR")
                && lines[0].contains("\"5\"")
                && lines[0].contains("25 to 30000"),
            "{}",
            lines[0]
        );
        assert!(
            out.lines().any(|l| l.contains("ERROR")
                && l.contains("BRIDGE_FLUSH")
                && l.contains("periodic:<ms>")),
            "{out}"
        );
        let sub = report.subscription_body.clone().expect("subscribed");
        assert_eq!(sub["buffering"]["timeoutMs"], 25);
        assert_eq!(sink.received_events(), report.events_sent);
    });
}

#[test]
fn strict_mode_turns_a_bad_value_into_an_init_error() {
    block_on(async {
        let cfg = config(
            1,
            &[
                ("BRIDGE_STRICT", "true".into()),
                ("BRIDGE_BUFFER_MAX_ITEMS", "5".into()),
            ],
        );
        let report = match lambda_sim::run(cfg).await {
            Ok(report) => report,
            Err(lambda_sim::SimError::InitFailed { report, .. }) => *report,
            Err(e) => panic!("unexpected: {e}"),
        };
        let error = report
            .init_errors
            .first()
            .expect("an init error was reported");
        assert_eq!(
            error.error_type.as_deref(),
            Some("Extension.InvalidConfiguration")
        );
        let message = error
            .body
            .as_ref()
            .and_then(|b| b["errorMessage"].as_str())
            .unwrap_or("");
        assert!(message.contains("BRIDGE_BUFFER_MAX_ITEMS"), "{message}");
    });
}

#[test]
fn without_a_dispatch_uri_one_info_line_says_events_are_discarded() {
    block_on(async {
        let report = run(config(2, &[])).await;
        assert_clean(&report);
        let said: Vec<&str> = report
            .extension_output
            .lines()
            .filter(|l| l.contains("DISPATCH_POST_URI is not set"))
            .collect();
        assert_eq!(said.len(), 1);
        assert!(said[0].contains("INFO"));
    });
}

#[test]
fn shutdown_policy_sends_only_at_shutdown_and_periodic_skips_invokes() {
    block_on(async {
        let sink = RecordingEndpoint::start(Behaviour::ok())
            .await
            .expect("sink");
        let report = run(config(
            5,
            &[
                ("DISPATCH_POST_URI", sink.url()),
                ("BRIDGE_FLUSH", "shutdown".into()),
            ],
        ))
        .await;
        assert_clean(&report);
        let shutdown_at = report.shutdown_at.expect("shutdown");
        assert!(sink.requests().iter().all(|r| r.arrived_at >= shutdown_at));
        assert_eq!(sink.received_events(), report.events_sent);

        let sink = RecordingEndpoint::start(Behaviour::ok())
            .await
            .expect("sink");
        let report = run(config(
            6,
            &[
                ("DISPATCH_POST_URI", sink.url()),
                ("BRIDGE_FLUSH", "periodic:60000".into()),
            ],
        ))
        .await;
        assert_clean(&report);
        // The period counts from start and is not over within the run: no invoke flushes.
        let shutdown_at = report.shutdown_at.expect("shutdown");
        assert!(sink.requests().iter().all(|r| r.arrived_at >= shutdown_at));
        assert_eq!(sink.received_events(), report.events_sent);
    });
}

#[test]
fn freezes_between_invocations_lose_and_duplicate_nothing() {
    block_on(async {
        let sink = RecordingEndpoint::start(Behaviour::ok())
            .await
            .expect("sink");
        let mut cfg = config(6, &[("DISPATCH_POST_URI", sink.url())]);
        cfg.freeze_between_invokes = true;
        cfg.between_invokes_ms = 30;
        let report = run(cfg).await;
        assert_clean(&report);
        assert_eq!(sink.received_events(), report.events_sent);
    });
}

/// Lambda refuses the Telemetry API subscription: one ERROR line says no telemetry will arrive,
/// and the bridge goes on serving the lifecycle without holding any invocation for a
/// runtimeDone that cannot come (each would otherwise wait until its deadline), then exits 0 in
/// time at SHUTDOWN.
#[test]
fn a_refused_subscription_is_one_error_and_the_lifecycle_goes_on() {
    block_on(async {
        let sink = RecordingEndpoint::start(Behaviour::ok())
            .await
            .expect("sink");
        let mut cfg = config(4, &[("DISPATCH_POST_URI", sink.url())]);
        cfg.refuse_subscription = Some(500);
        cfg.shutdown_deadline_ms = 1500;
        let report = run(cfg).await;
        let out = &report.extension_output;
        assert_eq!(report.exit_code, Some(0), "{out}");
        assert!(!report.killed);
        assert_eq!(report.subscribe_status, Some(500));
        let errors: Vec<&str> = out.lines().filter(|l| l.contains("ERROR")).collect();
        assert_eq!(errors.len(), 1, "{out}");
        assert!(
            errors[0].contains("telemetry subscription failed")
                && errors[0].contains("no telemetry will arrive"),
            "{out}"
        );
        // Nothing held: the function's own timeout is 3 s, a wait for runtimeDone would reach it
        // (500 ms is room for a loaded machine).
        assert_eq!(report.invocations.len(), 4);
        for invocation in &report.invocations {
            assert!(
                invocation.extension_overhead < Duration::from_millis(500),
                "invocation {} held {:?}",
                invocation.index,
                invocation.extension_overhead
            );
        }
        let took = report.shutdown_duration.expect("exited");
        assert!(
            took <= Duration::from_millis(1500 - 250 + 120),
            "shutdown took {took:?}"
        );
        assert!(sink.requests().is_empty(), "no telemetry, nothing sent");
    });
}
