//! Issue "local observability stack", part 1: the bridge's own Prometheus metrics, scraped from its
//! `/metrics` endpoint during a run and pushed to a (recording) Pushgateway at shutdown.

mod common;

use std::sync::{Arc, Mutex};

use common::*;
use lambda_sim::{Behaviour, RecordingEndpoint};

#[test]
fn metrics_endpoint_and_pushgateway_show_the_bridges_work() {
    block_on(async {
        let sink = RecordingEndpoint::start(Behaviour::ok())
            .await
            .expect("sink");
        let gateway = RecordingEndpoint::start(Behaviour::ok())
            .await
            .expect("pushgateway");
        let port = dead_port();
        let scraped = Arc::new(Mutex::new(String::new()));
        let mut cfg = config(
            6,
            &[
                ("DISPATCH_POST_URI", sink.url()),
                ("BRIDGE_METRICS_ADDR", format!("127.0.0.1:{port}")),
                ("BRIDGE_PUSHGATEWAY_URL", gateway.url()),
                ("BRIDGE_PUSH_INTERVAL_MS", "3600000".into()),
                // Every invocation flushes at its end: the counts below follow from that.
                ("BRIDGE_FLUSH", "end".into()),
            ],
        );
        let into = scraped.clone();
        cfg.progress = Some(Box::new(move |inv| {
            if inv.index == 4 {
                let (status, body) = http_blocking(port, "GET", "/metrics", b"");
                *into.lock().expect("lock") = if status == 200 {
                    body
                } else {
                    format!("HTTP {status}")
                };
            }
        }));
        let report = run(cfg).await;
        assert_clean(&report);

        let text = scraped.lock().expect("lock").clone();
        assert!(text.contains("# TYPE"), "{text}");
        // Scraped after the fifth invocation's /event/next: five INVOKEs handled, five starts
        // received (each before its runtimeDone, which the invoke waited for), five invoke flushes.
        assert_eq!(
            metric_value(&text, "bridge_invocations_total"),
            Some(5.0),
            "{text}"
        );
        assert_eq!(
            metric_value(
                &text,
                "bridge_events_received_total{type=\"platform.start\"}"
            ),
            Some(5.0)
        );
        assert!(
            metric_value(&text, "bridge_sink_events_sent_total{sink=\"raw_json\"}")
                .is_some_and(|v| v > 0.0)
        );
        assert_eq!(
            metric_value(
                &text,
                "bridge_flush_duration_seconds_count{reason=\"invoke\"}"
            ),
            Some(5.0)
        );
        assert!(metric_value(&text, "bridge_listener_posts_total").is_some_and(|v| v > 0.0));
        assert!(text.contains("bridge_queue_depth_events"));

        // Pushed at the first invoke flush (interval not yet started) and at shutdown.
        let pushes: Vec<_> = gateway.requests();
        assert_eq!(pushes.len(), 2, "{} pushes", pushes.len());
        for p in &pushes {
            assert_eq!(p.method, "PUT");
            assert!(
                p.path
                    .starts_with("/metrics/job/lambda-telemetry-bridge/instance@base64/"),
                "{}",
                p.path
            );
        }
        let last = String::from_utf8(pushes.last().expect("a push").body.clone()).expect("text");
        assert_eq!(metric_value(&last, "bridge_invocations_total"), Some(6.0));
        let sent =
            metric_value(&last, "bridge_sink_events_sent_total{sink=\"raw_json\"}").expect("sent");
        // The shutdown push follows the final flush: it counts every event delivered.
        assert_eq!(sent as usize, sink.received_events().len());
    });
}
