//! The bridge's self-metrics against the real servers: a Prometheus scraping its `/metrics`
//! endpoint under the simulator, and a Pushgateway it pushes to. Ignored by default (they need
//! Debian's `prometheus` and `prometheus-pushgateway`); `.ci/run` installs them and runs these
//! with `cargo test --test prometheus -- --ignored`.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use lambda_sim::{Behaviour, RecordingEndpoint};

/// The servers these tests start take a port found free a moment before: one test at a time, so
/// that two cannot pick the same one (and one talk to the other's server).
static ONE_SERVER_AT_A_TIME: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_SERVER_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A real Pushgateway on a free port, up, in memory only (Debian's default persistence file is
/// shared by every instance, so groups of other runs would come back).
fn start_pushgateway() -> (u16, Server) {
    let port = dead_port();
    let gateway = start_server(
        "prometheus-pushgateway",
        &[
            format!("--web.listen-address=127.0.0.1:{port}"),
            "--persistence.file=".to_string(),
        ],
    );
    wait_until_up(port, "/-/ready");
    (port, gateway)
}

/// A GET on loopback: the body of a 200 answer.
fn get(port: u16, path: &str) -> Option<String> {
    let (status, body) = http_blocking(port, "GET", path, b"");
    (status == 200).then_some(body)
}

fn wait_until_up(port: u16, path: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if get(port, path).is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("server on port {port} did not come up");
}

#[test]
#[ignore = "needs the prometheus binary (installed by .ci/run)"]
fn a_real_prometheus_scrapes_the_bridges_self_metrics() {
    let _one = one_at_a_time();
    let metrics_port = dead_port();
    let prom_port = dead_port();
    let dir = std::env::temp_dir().join(format!("ltb-prom-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let config_file = dir.join("prometheus.yml");
    std::fs::write(
        &config_file,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: bridge\n    static_configs:\n      - targets: ['127.0.0.1:{metrics_port}']\n"
        ),
    )
    .expect("config");
    let _prometheus = start_server(
        "prometheus",
        &[
            format!("--config.file={}", config_file.display()),
            format!("--storage.tsdb.path={}", dir.join("data").display()),
            format!("--web.listen-address=127.0.0.1:{prom_port}"),
        ],
    );
    wait_until_up(prom_port, "/-/ready");

    let answer = Arc::new(Mutex::new(String::new()));
    let into = answer.clone();
    block_on(async {
        let sink = RecordingEndpoint::start(Behaviour::ok())
            .await
            .expect("sink");
        let mut cfg = config(
            60,
            &[
                ("DISPATCH_POST_URI", sink.url()),
                ("BRIDGE_METRICS_ADDR", format!("127.0.0.1:{metrics_port}")),
            ],
        );
        cfg.between_invokes_ms = 100;
        cfg.progress = Some(Box::new(move |inv| {
            // Late in the run, ask Prometheus (bounded: at most ~10 s) what it scraped.
            if inv.index != 40 {
                return;
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Some(body) = get(prom_port, "/api/v1/query?query=bridge_invocations_total") {
                    if body.contains("\"bridge_invocations_total\"") {
                        *into.lock().expect("lock") = body;
                        return;
                    }
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }));
        let report = run(cfg).await;
        assert_clean(&report);
    });
    let body = answer.lock().expect("lock").clone();
    assert!(body.contains("\"status\":\"success\""), "{body}");
    assert!(body.contains("\"job\":\"bridge\""), "{body}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
#[ignore = "needs the prometheus-pushgateway binary (installed by .ci/run)"]
fn the_bridge_pushes_to_a_real_pushgateway() {
    let _one = one_at_a_time();
    let (port, _gateway) = start_pushgateway();
    let output = block_on(async {
        let sink = RecordingEndpoint::start(Behaviour::ok())
            .await
            .expect("sink");
        let report = run(config(
            5,
            &[
                ("DISPATCH_POST_URI", sink.url()),
                ("BRIDGE_PUSHGATEWAY_URL", format!("http://127.0.0.1:{port}")),
            ],
        ))
        .await;
        assert_clean(&report);
        report.extension_output
    });
    let exposed = get(port, "/metrics").expect("pushgateway metrics");
    let line = exposed
        .lines()
        .find(|l| l.starts_with("bridge_invocations_total{"))
        .unwrap_or_else(|| panic!("no pushed series; the bridge said:\n{output}"));
    assert!(line.contains("job=\"lambda-telemetry-bridge\""), "{line}");
    assert!(line.ends_with(" 5"), "{line}");
}

/// The groups of ended environments do not pile up: with `BRIDGE_PUSHGATEWAY_STALE_AFTER_MS=3000`,
/// a bridge deletes its job's group last pushed 5 s before it started, and keeps a group pushed
/// just before it, another job's old group, and its own.
#[test]
#[ignore = "needs the prometheus-pushgateway binary (installed by .ci/run)"]
fn a_bridge_deletes_its_jobs_stale_pushgateway_groups_and_nothing_else() {
    let _one = one_at_a_time();
    let (port, _gateway) = start_pushgateway();
    let push = |path: &str| {
        // Not a bridge_* name: a Pushgateway refuses a push whose series has another type or
        // help than the same name in another group, which would refuse the bridge's own pushes.
        let (status, _) = http_blocking(port, "PUT", path, b"stand_in_series 3\n");
        assert!((200..300).contains(&status), "push to {path}: {status}");
    };
    push("/metrics/job/lambda-telemetry-bridge/instance/ended-environment");
    push("/metrics/job/another-job/instance/ended-environment");
    std::thread::sleep(Duration::from_secs(5));
    push("/metrics/job/lambda-telemetry-bridge/instance/live-environment");
    let output = block_on(async {
        let sink = RecordingEndpoint::start(Behaviour::ok())
            .await
            .expect("sink");
        let mut cfg = config(
            6,
            &[
                ("DISPATCH_POST_URI", sink.url()),
                ("BRIDGE_PUSHGATEWAY_URL", format!("http://127.0.0.1:{port}")),
                ("BRIDGE_PUSHGATEWAY_STALE_AFTER_MS", "3000".into()),
            ],
        );
        // The cleanup runs a second after start: the bridge lives past it.
        cfg.between_invokes_ms = 300;
        let report = run(cfg).await;
        assert_clean(&report);
        report.extension_output
    });
    let exposed = get(port, "/metrics").expect("pushgateway metrics");
    let groups: Vec<&str> = exposed
        .lines()
        .filter(|l| l.starts_with("push_time_seconds{"))
        .collect();
    let has = |instance: &str, job: &str| {
        groups.iter().any(|l| {
            l.contains(&format!("instance=\"{instance}\"")) && l.contains(&format!("job=\"{job}\""))
        })
    };
    assert!(
        !has("ended-environment", "lambda-telemetry-bridge"),
        "the stale group is still there: {groups:?}\n{output}"
    );
    assert!(
        has("live-environment", "lambda-telemetry-bridge"),
        "{groups:?}"
    );
    assert!(has("ended-environment", "another-job"), "{groups:?}");
    assert_eq!(
        groups
            .iter()
            .filter(|l| l.contains("job=\"lambda-telemetry-bridge\""))
            .count(),
        2,
        "the live group and the bridge's own: {groups:?}"
    );
    assert!(
        output.contains("groups of ended environments deleted") && output.contains("deleted=1"),
        "{output}"
    );
}
