//! The `adaptive` flush policy (the default) and delivery beside the lifecycle, against the real
//! extension binary under the Lambda stand-in, with endpoints a network away (answers delayed).
//! Every judgement is by the order of recorded instants, not by a timer.

mod common;

use std::time::Duration;

use common::{assert_clean, assert_runtime_done_before_next, block_on, config, otlp, run, sorted};
use lambda_sim::otlp_receiver::number_value;
use lambda_sim::{Behaviour, InvocationRecord, RecordedRequest, RecordingEndpoint};
use opentelemetry_proto::tonic::metrics::v1::metric;

/// With endpoints that answer after 300 ms and a 30 ms function, every invocation after the first
/// goes back to `/event/next` before the answer to any request sent during it: the network is
/// not billed. Every event still arrives exactly once, the last ones at shutdown.
#[test]
fn slow_endpoints_are_not_waited_for_and_every_event_arrives_once() {
    block_on(async {
        let latency = Behaviour::ok().with_delay(Duration::from_millis(300));
        let sink = RecordingEndpoint::start(latency.clone())
            .await
            .expect("sink");
        let collector = RecordingEndpoint::start(latency).await.expect("collector");
        let mut cfg = config(
            12,
            &[
                ("DISPATCH_POST_URI", sink.url()),
                ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url()),
                // Delivery at every invocation (no coalescing: tests/coalescing.rs), so that
                // requests go out during most invocations.
                ("BRIDGE_FLUSH_FRESHNESS_MS", "0".into()),
            ],
        );
        cfg.invoke_duration_ms = 30;
        let report = run(cfg).await;
        assert_clean(&report);
        assert_eq!(
            sorted(&sink.received_events()),
            sorted(&report.events_sent),
            "every event exactly once"
        );
        let requests = sink.requests();
        let mut overlapped = 0;
        for pair in report.invocations[1..].windows(2) {
            let (invocation, following) = (&pair[0], &pair[1]);
            let next = invocation
                .next_called_at
                .expect("the bridge asked for the next event");
            let sent_during: Vec<&RecordedRequest> = requests
                .iter()
                .filter(|r| {
                    r.arrived_at >= invocation.invoked_at && r.arrived_at < following.invoked_at
                })
                .collect();
            for request in &sent_during {
                assert!(
                    next < request.answered_at,
                    "invocation {} waited for an answer",
                    invocation.index
                );
            }
            overlapped += usize::from(!sent_during.is_empty());
        }
        assert!(
            overlapped >= 3,
            "requests went out during only {overlapped} invocations: the test proves nothing"
        );
        // Not billed: the extension's overhead per invocation (the runtime's response → its
        // /event/next) stays far below the Telemetry API's buffering window (25 ms), which
        // waiting for each runtimeDone would cost; 10 ms is room for a debug build on a loaded
        // machine. The first invocation is held (to learn the traffic).
        let mut overheads: Vec<Duration> = report.invocations[1..]
            .iter()
            .map(|i| i.extension_overhead)
            .collect();
        overheads.sort();
        let median = overheads[overheads.len() / 2];
        assert!(
            median < Duration::from_millis(10),
            "median overhead {median:?} under steady traffic: {overheads:?}"
        );
        // The last invocation's report left at shutdown.
        let last = &report.invocations[report.invocations.len() - 1];
        let reported = sink.received_events().iter().any(|e| {
            e["type"] == "platform.report" && e["record"]["requestId"] == *last.request_id
        });
        assert!(reported, "the last invocation's report was delivered");
        common::assert_each_invocation_span_exported_once(&report, &collector);
    });
}

/// Sparse traffic with freezes (gaps longer than BRIDGE_FLUSH_MAX_DELAY_MS): each invocation is
/// held as under `end`, so its runtimeDone reaches the raw endpoint before the next `/event/next`.
#[test]
fn sparse_traffic_with_freezes_delivers_each_invocation_before_its_freeze() {
    block_on(async {
        let sink = RecordingEndpoint::start(Behaviour::ok().with_delay(Duration::from_millis(30)))
            .await
            .expect("sink");
        let mut cfg = config(
            5,
            &[
                ("DISPATCH_POST_URI", sink.url()),
                ("BRIDGE_FLUSH_MAX_DELAY_MS", "400".into()),
            ],
        );
        cfg.freeze_between_invokes = true;
        cfg.between_invokes_ms = 700;
        let report = run(cfg).await;
        assert_clean(&report);
        assert_runtime_done_before_next(
            &report,
            &report.invocations,
            &sink,
            "runtimeDone not delivered before the freeze",
        );
        assert_eq!(sorted(&sink.received_events()), sorted(&report.events_sent));
    });
}

/// A POST in flight when Lambda freezes the environment (SIGSTOP) for longer than the flush
/// timeout: the endpoint answers during the freeze (it runs on a thread of its own, so the
/// freeze's blocking sleep does not stop it); after the thaw the bridge reads that answer,
/// waiting in its socket, instead of cutting the request at its expired deadline and sending
/// the events again.
#[test]
fn a_post_in_flight_across_a_freeze_is_delivered_once() {
    let sink_thread =
        common::EndpointThread::start(Behaviour::ok().with_delay(Duration::from_millis(400)));
    let sink = &sink_thread.endpoint;
    let freezes = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let recorded = freezes.clone();
    block_on(async {
        let mut cfg = config(
            6,
            &[
                ("DISPATCH_POST_URI", sink.url()),
                ("BRIDGE_FLUSH_TIMEOUT_MS", "1000".into()),
                // Steady by the bridge's judgement, although the freezes make the gaps long.
                ("BRIDGE_FLUSH_MAX_DELAY_MS", "600000".into()),
                (
                    "BRIDGE_LOG",
                    "info,lambda_telemetry_bridge::awake=debug".into(),
                ),
            ],
        );
        cfg.invoke_duration_ms = 20;
        cfg.freeze_between_invokes = true;
        cfg.progress = Some(Box::new(move |_: &InvocationRecord| {
            // Frozen here (SIGSTOP), with a POST out: longer than the flush timeout.
            let from = std::time::Instant::now();
            std::thread::sleep(Duration::from_millis(1_600));
            recorded
                .lock()
                .expect("lock")
                .push((from, std::time::Instant::now()));
        }));
        let report = run(cfg).await;
        assert_clean(&report);
        let out = &report.extension_output;
        assert!(
            out.contains("a timer fired after a freeze"),
            "no request was in flight across a freeze: the test proves nothing\n{out}"
        );
        // The case itself: a request sent before a freeze and answered during it.
        let freezes = freezes.lock().expect("lock").clone();
        let answered_while_frozen = sink.requests().iter().any(|r| {
            freezes.iter().any(|(from, to)| {
                r.arrived_at < *from && *from < r.answered_at && r.answered_at < *to
            })
        });
        assert!(
            answered_while_frozen,
            "no request was answered during a freeze: the test proves nothing"
        );
        assert_eq!(
            sorted(&sink.received_events()),
            sorted(&report.events_sent),
            "each event once\n{out}"
        );
        assert!(!out.contains("delivery failed"), "{out}");
    });
}

/// Metrics leave on their own clock: with OTEL_METRIC_EXPORT_INTERVAL=300 over ~1.5 s of steady
/// invocations, fewer exports than invocations and more than the shutdown's one; with delta
/// temporality the exported points sum to exactly the invocations sent.
#[test]
fn metrics_leave_on_their_interval_and_at_shutdown_and_sum_to_what_was_sent() {
    block_on(async {
        let collector = RecordingEndpoint::start(Behaviour::ok())
            .await
            .expect("collector");
        let invocations = 40;
        let mut cfg = config(
            invocations,
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url()),
                ("OTEL_METRIC_EXPORT_INTERVAL", "300".into()),
                // Background flushes (which collect metrics when due) more often than that.
                ("BRIDGE_FLUSH_FRESHNESS_MS", "100".into()),
                (
                    "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE",
                    "delta".into(),
                ),
            ],
        );
        cfg.invoke_duration_ms = 40;
        let report = run(cfg).await;
        assert_clean(&report);
        let exports = collector
            .requests()
            .iter()
            .filter(|r| r.path == "/v1/metrics")
            .count();
        assert!(
            exports >= 3 && exports < invocations / 2,
            "{exports} metric exports for {invocations} invocations"
        );
        // On the interval: consecutive exports at least 200 ms apart (100 ms for a late timer, the
        // encoding and the request), but for two (the first invocation's, held to learn the
        // traffic, and the shutdown's, which come when they must), and at least two gaps that
        // long. An interval of half the one asked for fails here.
        let arrivals: Vec<std::time::Instant> = collector
            .requests()
            .iter()
            .filter(|r| r.path == "/v1/metrics")
            .map(|r| r.arrived_at)
            .collect();
        let gaps: Vec<Duration> = arrivals.windows(2).map(|w| w[1] - w[0]).collect();
        let short = gaps
            .iter()
            .filter(|g| **g < Duration::from_millis(300 - 100))
            .count();
        assert!(short <= 2, "exports closer than the interval: {gaps:?}");
        assert!(
            gaps.len() >= short + 2,
            "too few exports to judge: {gaps:?}"
        );
        let invoked: f64 = otlp::metrics(&collector)
            .iter()
            .filter(|(_, m)| m.name == "faas.invocations")
            .map(|(_, m)| match &m.data {
                Some(metric::Data::Sum(s)) => s.data_points.iter().map(number_value).sum(),
                _ => 0.0,
            })
            .sum();
        assert_eq!(invoked, invocations as f64);
    });
}

/// A held invocation (sparse traffic, frozen between invocations) exports its metrics before the
/// freeze that follows it, whatever `OTEL_METRIC_EXPORT_INTERVAL` says (the default, 60 s): each
/// invocation's count is at the collector before its next `/event/next`.
#[test]
fn a_held_invocation_exports_its_metrics_before_the_freeze_that_follows() {
    block_on(async {
        let collector = RecordingEndpoint::start(Behaviour::ok())
            .await
            .expect("collector");
        let mut cfg = config(
            4,
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url()),
                ("BRIDGE_FLUSH_MAX_DELAY_MS", "400".into()),
            ],
        );
        cfg.freeze_between_invokes = true;
        cfg.between_invokes_ms = 700;
        let report = run(cfg).await;
        assert_clean(&report);
        // Each export's faas.invocations (cumulative: the count so far), with its arrival.
        let exports: Vec<(std::time::Instant, f64)> = collector
            .requests()
            .iter()
            .filter(|r| r.path == "/v1/metrics")
            .map(|r| {
                let counted: f64 =
                    lambda_sim::otlp_receiver::decode_metrics(std::slice::from_ref(r))
                        .iter()
                        .filter(|(_, m)| m.name == "faas.invocations")
                        .map(|(_, m)| match &m.data {
                            Some(metric::Data::Sum(s)) => {
                                s.data_points.iter().map(number_value).sum()
                            }
                            _ => 0.0,
                        })
                        .sum();
                (r.arrived_at, counted)
            })
            .collect();
        for invocation in &report.invocations {
            let next = invocation.next_called_at.expect("next called");
            let counted = exports
                .iter()
                .filter(|(at, _)| *at < next)
                .map(|(_, n)| *n)
                .fold(0.0, f64::max);
            assert_eq!(
                counted,
                (invocation.index + 1) as f64,
                "invocation {}: its count had not left before its freeze",
                invocation.index
            );
        }
    });
}

/// An endpoint failing (500) for the first invocations, then recovering, under `adaptive`: what
/// the failed flushes left is sent again, and each event arrives exactly once (not necessarily in
/// order: a retried batch may arrive after a newer one that overlapped it).
#[test]
fn a_failing_then_recovering_endpoint_gets_each_event_once() {
    block_on(async {
        let sink = std::sync::Arc::new(
            RecordingEndpoint::start(Behaviour::always(500).with_delay(Duration::from_millis(20)))
                .await
                .expect("sink"),
        );
        let mut cfg = config(
            10,
            &[
                ("DISPATCH_POST_URI", sink.url()),
                ("BRIDGE_FLUSH_TIMEOUT_MS", "300".into()),
            ],
        );
        cfg.invoke_duration_ms = 30;
        let recovering = sink.clone();
        cfg.progress = Some(Box::new(move |inv: &InvocationRecord| {
            if inv.index == 4 {
                recovering.set_behaviour(Behaviour::ok());
            }
        }));
        let report = run(cfg).await;
        assert_clean(&report);
        let failures = sink.requests().iter().filter(|r| r.status == 500).count();
        assert!(failures >= 2, "{failures} failed POSTs");
        assert_eq!(sorted(&sink.received_events()), sorted(&report.events_sent));
    });
}

/// A function that logs more per invocation than a quarter of the queue holds, invoked back to
/// back: under `adaptive` the queue is delivered as it fills (and the next invocation is held),
/// so the limits drop nothing.
#[test]
fn a_queue_filling_faster_than_invocations_end_is_drained_not_dropped() {
    block_on(async {
        let sink = RecordingEndpoint::start(Behaviour::ok().with_delay(Duration::from_millis(20)))
            .await
            .expect("sink");
        let mut cfg = config(
            8,
            &[
                ("DISPATCH_POST_URI", sink.url()),
                ("BRIDGE_QUEUE_MAX_EVENTS", "1000".into()),
            ],
        );
        cfg.log_lines_per_invoke = 600;
        cfg.invoke_duration_ms = 20;
        let report = run(cfg).await;
        assert_clean(&report);
        let out = &report.extension_output;
        assert!(!out.contains("queue full"), "{out}");
        assert_eq!(
            sorted(&sink.received_events()),
            sorted(&report.events_sent),
            "{out}"
        );
    });
}

/// `DISPATCH_MIN_BATCH_SIZE` does not hold back telemetry that `adaptive` found overdue: an
/// invocation held for sparse traffic sends its events before its freeze even below the minimum,
/// rather than holding every invocation for nothing until the shutdown. (The first invocation,
/// held to learn the traffic, keeps the seed's rule, as under `end`.)
#[test]
fn overdue_telemetry_leaves_below_the_minimum_batch_size() {
    block_on(async {
        let sink = RecordingEndpoint::start(Behaviour::ok())
            .await
            .expect("sink");
        let mut cfg = config(
            4,
            &[
                ("DISPATCH_POST_URI", sink.url()),
                ("DISPATCH_MIN_BATCH_SIZE", "1000".into()),
                ("BRIDGE_FLUSH_MAX_DELAY_MS", "300".into()),
            ],
        );
        cfg.freeze_between_invokes = true;
        cfg.between_invokes_ms = 500;
        let report = run(cfg).await;
        assert_clean(&report);
        assert_runtime_done_before_next(
            &report,
            &report.invocations[1..],
            &sink,
            "waited for a full batch",
        );
    });
}

/// At most four background flushes in flight: against an endpoint that answers after a second,
/// with a delivery asked for at every invocation (`BRIDGE_FLUSH_FRESHNESS_MS=0`) and invocations
/// every ~35 ms, the raw endpoint never has more than four requests open at once before the
/// shutdown, and does reach four (the bound is what stops it).
#[test]
fn at_most_four_background_flushes_are_in_flight() {
    block_on(async {
        let sink =
            RecordingEndpoint::start(Behaviour::ok().with_delay(Duration::from_millis(1000)))
                .await
                .expect("sink");
        let mut cfg = config(
            30,
            &[
                ("DISPATCH_POST_URI", sink.url()),
                ("BRIDGE_FLUSH_FRESHNESS_MS", "0".into()),
                ("BRIDGE_FLUSH_TIMEOUT_MS", "3000".into()),
            ],
        );
        cfg.invoke_duration_ms = 30;
        cfg.shutdown_deadline_ms = 8000;
        let report = run(cfg).await;
        assert_clean(&report);
        let shutdown = report.shutdown_at.expect("SHUTDOWN handed over");
        // The most requests open at once, from their arrivals and answers (the shutdown's own
        // flush is not a background one, so only requests sent before SHUTDOWN count).
        let requests: Vec<_> = sink
            .requests()
            .into_iter()
            .filter(|r| r.arrived_at < shutdown)
            .collect();
        let most_open = requests
            .iter()
            .map(|r| {
                requests
                    .iter()
                    .filter(|o| o.arrived_at <= r.arrived_at && r.arrived_at < o.answered_at)
                    .count()
            })
            .max()
            .unwrap_or(0);
        assert_eq!(most_open, 4, "{} requests before SHUTDOWN", requests.len());
        assert_eq!(sorted(&sink.received_events()), sorted(&report.events_sent));
    });
}
