//! The dashboards' numbers for a fleet, against a real Prometheus.
//!
//! A fleet of execution environments (each its own bridge process with its own log stream, i.e.
//! `faas.instance`), for three function versions of two functions, with churn (environments shut
//! down and new ones cold-start during the run), exports OTLP to one receiver and pushes its
//! self-metrics to a real Pushgateway. A real Prometheus scrapes both. The OpenTelemetry
//! Collector cannot run here, so the receiver's exposition stands in for the collector's
//! `prometheus` exporter as `deploy/otel-collector.yaml` configures it (`lambda_sim::prometheus`:
//! its naming rules, resource attributes as labels, the latest cumulative point per series, a
//! series not updated within `metric_expiration` dropped). Then every query of every panel of
//! both dashboards is evaluated through Prometheus's HTTP API and compared with what the
//! simulator sent; a panel whose number cannot be checked says why below.
//!
//! Ignored by default (it needs Debian's `prometheus` and `prometheus-pushgateway`); `.ci/run`
//! installs them and runs it with `cargo test --test fleet_dashboards -- --ignored`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{block_on, bridge_binary, dead_port, http_blocking, received_raw, start_server};
use lambda_sim::fleet::{self, FleetConfig, FleetFunction, FleetReport};
use lambda_sim::prometheus::{ExpositionServer, LiveExposition};
use lambda_sim::{Behaviour, RecordingEndpoint, SimConfig, SimReport};
use serde_json::Value;

/// The stand-in collector's `metric_expiration`, scaled down with the environments' lives: the
/// series of an environment that ended leave the exposition (Prometheus then marks them stale),
/// and so do, between two exports, those of `billing`'s environments, which export metrics only
/// at their first invocation and at shutdown, seconds apart.
const EXPIRATION: Duration = Duration::from_millis(2500);
/// Prometheus's scrape interval here.
const SCRAPE: Duration = Duration::from_secs(1);
/// Step of the range queries, and `$__interval` in them.
const STEP_S: u64 = 2;
/// The bridge's prices (x86_64) and the bucket bounds its histograms use.
const PRICE_GB_SECOND: f64 = 0.0000166667;
const PRICE_REQUEST: f64 = 0.0000002;
const DURATION_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];
const MIB: f64 = 1024.0 * 1024.0;
/// Environments alive at once; each slot runs two, one after the other.
const SLOTS: usize = 10;
const MEMORY_BUCKETS: [f64; 11] = [
    64.0 * MIB,
    128.0 * MIB,
    256.0 * MIB,
    512.0 * MIB,
    1024.0 * MIB,
    2048.0 * MIB,
    3072.0 * MIB,
    4096.0 * MIB,
    6144.0 * MIB,
    8192.0 * MIB,
    10240.0 * MIB,
];

/// A blocking GET, run off the runtime's thread so that the stand-in keeps serving scrapes.
async fn get(port: u16, path: String) -> (u16, String) {
    tokio::task::spawn_blocking(move || http_blocking(port, "GET", &path, b""))
        .await
        .unwrap_or((0, String::new()))
}

async fn wait_until_up(port: u16, path: &str) {
    for _ in 0..200 {
        if get(port, path.to_string()).await.0 == 200 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("server on port {port} did not come up");
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// A series of a query's answer: its labels and its values (one for an instant query).
#[derive(Debug, Clone)]
struct Series {
    labels: BTreeMap<String, String>,
    values: Vec<f64>,
}

struct Prometheus {
    port: u16,
}

impl Prometheus {
    async fn api(&self, path: String) -> Value {
        let (status, body) = get(self.port, path).await;
        let answer: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        assert!(
            status == 200 && answer["status"] == "success",
            "Prometheus answered {status}: {body}"
        );
        answer["data"].clone()
    }

    fn series(data: &Value) -> Vec<Series> {
        let result = data["result"].as_array().cloned().unwrap_or_default();
        result
            .iter()
            .map(|r| {
                let labels = r["metric"]
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                            .collect()
                    })
                    .unwrap_or_default();
                let points: Vec<&Value> = match r.get("values").and_then(Value::as_array) {
                    Some(values) => values.iter().collect(),
                    None => vec![&r["value"]],
                };
                let values = points
                    .iter()
                    .filter_map(|p| p[1].as_str().and_then(|v| v.parse::<f64>().ok()))
                    .collect();
                Series { labels, values }
            })
            .collect()
    }

    async fn instant(&self, expr: &str, time: f64) -> Vec<Series> {
        let data = self
            .api(format!(
                "/api/v1/query?query={}&time={time:.3}",
                percent_encode(expr)
            ))
            .await;
        Self::series(&data)
    }

    /// What Grafana's `label_values(selector, label)` lists over `[start, end]`.
    async fn label_values(&self, query: &str, start: f64, end: f64) -> BTreeSet<String> {
        let args = query
            .trim()
            .strip_prefix("label_values(")
            .and_then(|q| q.strip_suffix(')'))
            .unwrap_or_else(|| panic!("not a label_values query: {query}"));
        let (selector, label) = args
            .rsplit_once(',')
            .expect("label_values(selector, label)");
        let data = self
            .api(format!(
                "/api/v1/label/{}/values?match%5B%5D={}&start={start:.3}&end={end:.3}",
                label.trim(),
                percent_encode(selector.trim())
            ))
            .await;
        data.as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect()
    }

    async fn range(&self, expr: &str, start: f64, end: f64, step: u64) -> Vec<Series> {
        let data = self
            .api(format!(
                "/api/v1/query_range?query={}&start={start:.3}&end={end:.3}&step={step}",
                percent_encode(expr)
            ))
            .await;
        Self::series(&data)
    }
}

/// A choice of the dashboards' `Function` and `Version` variables.
#[derive(Debug, Clone)]
struct Selection {
    function: &'static str,
    version: &'static str,
}

/// Whether a value of a Grafana variable (`.*` for All, `(a|b)` for several, or one value)
/// selects `value`.
fn selects(variable: &str, value: &str) -> bool {
    variable == ".*"
        || variable == value
        || variable
            .strip_prefix('(')
            .and_then(|v| v.strip_suffix(')'))
            .is_some_and(|v| v.split('|').any(|one| one == value))
}

impl Selection {
    fn matches(&self, f: &FleetFunction) -> bool {
        selects(self.function, &f.name) && selects(self.version, &f.version)
    }

    fn substitute(&self, expr: &str, range_s: u64, interval_s: u64) -> String {
        expr.replace("$function", self.function)
            .replace("$version", self.version)
            // The Pushgateway job: what every bridge of the fleet pushed.
            .replace("$job", "lambda-telemetry-bridge")
            .replace("$__range", &format!("{range_s}s"))
            .replace("$__interval_ms", &(interval_s * 1000).to_string())
            .replace("$__rate_interval", &format!("{interval_s}s"))
            .replace("$__interval", &format!("{interval_s}s"))
    }
}

/// What the simulator sent, for one selection.
#[derive(Debug, Default)]
struct Sent {
    environments: usize,
    success: usize,
    errors_by_type: BTreeMap<String, usize>,
    timeouts: usize,
    durations_s: Vec<f64>,
    billed_s: Vec<f64>,
    memory_size: f64,
    used_bytes: Vec<f64>,
    utilisation: Vec<f64>,
    cost: f64,
    init_s: Vec<f64>,
    extension_overhead_s: Vec<f64>,
    events_by_type: BTreeMap<String, usize>,
    telemetry_posts: usize,
}

impl Sent {
    fn invocations(&self) -> usize {
        self.success + self.errors_by_type.values().sum::<usize>() + self.timeouts
    }

    fn add(&mut self, report: &SimReport) {
        self.environments += 1;
        let mut runtime_ms: BTreeMap<String, f64> = BTreeMap::new();
        for event in &report.events_sent {
            let record = &event["record"];
            let kind = event["type"].as_str().unwrap_or("");
            *self.events_by_type.entry(kind.to_string()).or_insert(0) += 1;
            match kind {
                "platform.runtimeDone" => {
                    let ms = record["metrics"]["durationMs"]
                        .as_f64()
                        .expect("durationMs");
                    runtime_ms.insert(record["requestId"].as_str().unwrap_or("").into(), ms);
                    self.durations_s.push(ms / 1000.0);
                    match record["status"].as_str() {
                        Some("success") => self.success += 1,
                        Some("timeout") => self.timeouts += 1,
                        Some(other) => {
                            let error = record["errorType"].as_str().unwrap_or(other);
                            *self.errors_by_type.entry(error.to_string()).or_insert(0) += 1;
                        }
                        None => panic!("a runtimeDone without status"),
                    }
                }
                "platform.report" => {
                    let m = &record["metrics"];
                    let billed = m["billedDurationMs"].as_f64().expect("billed");
                    let size = m["memorySizeMB"].as_f64().expect("memory size");
                    let used = m["maxMemoryUsedMB"].as_f64().expect("memory used");
                    self.billed_s.push(billed / 1000.0);
                    self.memory_size = self.memory_size.max(size * MIB);
                    self.used_bytes.push(used * MIB);
                    self.utilisation.push(used / size);
                    self.cost += billed / 1000.0 * size / 1024.0 * PRICE_GB_SECOND + PRICE_REQUEST;
                    if let Some(runtime) =
                        runtime_ms.get(record["requestId"].as_str().unwrap_or(""))
                    {
                        let total = m["durationMs"].as_f64().expect("durationMs");
                        self.extension_overhead_s
                            .push((total - runtime).max(0.0) / 1000.0);
                    }
                }
                "platform.initReport" => {
                    let ms = record["metrics"]["durationMs"].as_f64().expect("init");
                    self.init_s.push(ms / 1000.0);
                }
                _ => {}
            }
        }
        self.telemetry_posts += report
            .telemetry_posts
            .iter()
            .filter(|p| p.status.is_some_and(|s| (200..300).contains(&s)))
            .count();
    }
}

/// The function's log lines, in turn: one below `info`, one with an email address, one plain.
fn log_records() -> Vec<Value> {
    vec![
        serde_json::json!({"level": "DEBUG", "message": "cache miss"}),
        serde_json::json!({"level": "INFO", "message": "receipt sent to jane.doe@example.com"}),
        serde_json::json!("plain text line\n"),
    ]
}

/// Function log events of `function`'s environments whose record is `record` (with the fields
/// the simulator adds), and the environments and invocations of that function.
fn function_lines(fleet: &FleetReport, function: &str, message: &str) -> usize {
    fleet
        .environments
        .iter()
        .filter(|e| e.spec.function.name == function)
        .flat_map(|e| e.report().expect("a report").events_sent.clone())
        .filter(|e| e["type"] == "function" && e["record"]["message"] == message)
        .count()
}

/// Sampling decisions the bridges of `function` took: one per invocation and one per init.
fn decisions(fleet: &FleetReport, function: &str) -> usize {
    fleet
        .environments
        .iter()
        .filter(|e| e.spec.function.name == function)
        .map(|e| e.report().expect("a report").invocations.len() + 1)
        .sum()
}

fn sent(fleet: &FleetReport, selection: &Selection) -> Sent {
    let mut sent = Sent::default();
    for environment in &fleet.environments {
        if selection.matches(&environment.spec.function) {
            sent.add(environment.report().expect("a report"));
        }
    }
    sent
}

/// The bucket `[lower, upper]` holding the `q` quantile of `values` (`histogram_quantile`
/// interpolates inside it).
fn quantile_bucket(values: &[f64], q: f64, bounds: &[f64]) -> (f64, f64) {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((q * sorted.len() as f64).ceil() as usize).max(1);
    let value = sorted[rank - 1];
    let mut lower = 0.0;
    for bound in bounds {
        if value <= *bound {
            return (lower, *bound);
        }
        lower = *bound;
    }
    (lower, lower) // the +Inf bucket: Prometheus answers its lower bound
}

fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len() as f64
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9_f64.max(b.abs() * 1e-6)
}

/// One query of a dashboard: where it is and its PromQL.
struct PanelQuery {
    dashboard: String,
    panel: String,
    ref_id: String,
    expr: String,
}

fn panel_queries(file: &str) -> Vec<PanelQuery> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("dashboards")
        .join(file);
    let text = std::fs::read_to_string(&path).expect("a dashboard");
    let dashboard: Value = serde_json::from_str(&text).expect("JSON");
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            out.push(PanelQuery {
                dashboard: file.to_string(),
                panel: panel["title"].as_str().unwrap_or("?").to_string(),
                ref_id: target["refId"].as_str().unwrap_or("?").to_string(),
                expr: target["expr"].as_str().expect("expr").to_string(),
            });
        }
    }
    out
}

/// A dashboard variable's query.
fn variable_query(file: &str, name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("dashboards")
        .join(file);
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("a dashboard")).expect("JSON");
    let variable = dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["name"] == name)
        .unwrap_or_else(|| panic!("{file}: no variable {name}"));
    match &variable["query"] {
        Value::String(q) => q.clone(),
        q => q["query"].as_str().expect("a query").to_string(),
    }
}

/// The sum of every value of every series (a count per interval, summed over the graph).
fn total(series: &[Series]) -> f64 {
    series.iter().flat_map(|s| s.values.iter()).sum()
}

fn only(series: &[Series], what: &str) -> f64 {
    assert_eq!(
        series.len(),
        1,
        "{what}: one series expected, got {series:?}"
    );
    assert_eq!(series[0].values.len(), 1, "{what}: {series:?}");
    series[0].values[0]
}

fn by_label(series: &[Series], label: &str, scale: f64) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for s in series {
        let key = s.labels.get(label).cloned().unwrap_or_default();
        *out.entry(key).or_insert(0.0) += s.values.iter().sum::<f64>() * scale;
    }
    out
}

fn as_f64(counts: &BTreeMap<String, usize>) -> BTreeMap<String, f64> {
    counts.iter().map(|(k, v)| (k.clone(), *v as f64)).collect()
}

fn assert_within(what: &str, got: f64, (lower, upper): (f64, f64)) {
    assert!(
        got >= lower - 1e-9 && got <= upper + 1e-9,
        "{what}: {got} is outside the bucket [{lower}, {upper}] holding the simulated value"
    );
}

#[test]
#[ignore = "needs the prometheus and prometheus-pushgateway binaries (installed by .ci/run)"]
fn every_dashboard_panel_shows_what_a_churning_fleet_did() {
    block_on(async {
        let collector = Arc::new(
            RecordingEndpoint::start(Behaviour::ok())
                .await
                .expect("collector"),
        );
        let sink = Arc::new(
            RecordingEndpoint::start(Behaviour::ok())
                .await
                .expect("sink"),
        );
        // The billing function's raw endpoint refuses every batch (400): its bridges drop each
        // one, counted, so that the failure and drop panels have a number to be right about.
        let rejecting = Arc::new(
            RecordingEndpoint::start(Behaviour::always(400))
                .await
                .expect("a rejecting raw endpoint"),
        );
        let exposition = {
            let collector = collector.clone();
            let live = LiveExposition::new(EXPIRATION);
            ExpositionServer::start(move || live.render(&collector))
                .await
                .expect("the collector's stand-in")
        };
        let gateway_port = dead_port();
        let _gateway = start_server(
            "prometheus-pushgateway",
            &[
                format!("--web.listen-address=127.0.0.1:{gateway_port}"),
                // In memory only: Debian's default persistence file is shared by every instance.
                "--persistence.file=".to_string(),
            ],
        );
        let prom_port = dead_port();
        let dir = std::env::temp_dir().join(format!("ltb-fleet-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let config_file = dir.join("prometheus.yml");
        std::fs::write(
            &config_file,
            format!(
                "global:\n  scrape_interval: {}s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: otel-collector\n    static_configs:\n      - targets: ['{}']\n  - job_name: pushgateway\n    honor_labels: true\n    static_configs:\n      - targets: ['127.0.0.1:{gateway_port}']\n",
                SCRAPE.as_secs(),
                exposition.addr
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
        wait_until_up(prom_port, "/-/ready").await;
        wait_until_up(gateway_port, "/-/ready").await;
        let prometheus = Prometheus { port: prom_port };
        // Prometheus hands targets to its scrapers a few seconds after it starts: the fleet
        // starts once both targets have been scraped, so that no environment ends unseen.
        let mut scraped = false;
        for _ in 0..100 {
            if prometheus.instant("up", unix_now()).await.len() == 2 {
                scraped = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert!(
            scraped,
            "Prometheus did not scrape its two targets within 20 s"
        );
        // Whole seconds, so that range queries' steps fall on the same instants as the tiles.
        let started = unix_now().floor() - 1.0;

        let (raw_url, otlp_url, rejecting_url) = (sink.url(), collector.url(), rejecting.url());
        let gateway_url = format!("http://127.0.0.1:{gateway_port}");
        let fleet = fleet::run(FleetConfig {
            slots: SLOTS,
            functions: vec![
                FleetFunction::new("orders", "1"),
                FleetFunction::new("billing", "7"),
                FleetFunction::new("orders", "2"),
                FleetFunction::new("billing", "7"),
            ],
            invocations: 2 * SLOTS * 6,
            lifetime: 6,
            stagger: Duration::from_millis(250),
            // The two functions differ in memory, duration and pace, so that a query that mixed
            // them up, or dropped one, would show it.
            template: Box::new(move |spec| {
                let orders = spec.function.name == "orders";
                SimConfig {
                    extension_path: bridge_binary(),
                    extension_env: vec![
                        (
                            "DISPATCH_POST_URI".into(),
                            if orders { &raw_url } else { &rejecting_url }.clone(),
                        ),
                        ("OTEL_EXPORTER_OTLP_ENDPOINT".into(), otlp_url.clone()),
                        (
                            "OTEL_METRIC_EXPORT_INTERVAL".into(),
                            if orders { "500" } else { "60000" }.into(),
                        ),
                        ("BRIDGE_PUSHGATEWAY_URL".into(), gateway_url.clone()),
                        ("BRIDGE_ARCHITECTURE".into(), "x86_64".into()),
                    ]
                    .into_iter()
                    // What leaves: orders filters its DEBUG lines and masks emails, billing
                    // samples every span out (the filter, mask and sampling panels' numbers).
                    .chain(if orders {
                        vec![
                            ("BRIDGE_LOGS_MIN_SEVERITY".into(), "info".into()),
                            ("BRIDGE_MASK_PRESETS".into(), "emails".into()),
                        ]
                    } else {
                        vec![("OTEL_TRACES_SAMPLER".into(), "always_off".into())]
                    })
                    .collect(),
                    log_records: log_records(),
                    memory_mb: if orders { 256 } else { 128 },
                    runtime_init_ms: 60,
                    invoke_duration_ms: if orders { 40 } else { 150 },
                    between_invokes_ms: if orders { 60 } else { 600 },
                    error_every: Some(4),
                    out_of_memory_every: Some(5),
                    timeout_every: Some(6),
                    function_timeout_ms: 300,
                    ..SimConfig::default()
                }
            }),
            ..FleetConfig::default()
        })
        .await;
        assert!(fleet.clean(), "{:?}", fleet.unclean);
        assert_eq!(fleet.invocations(), 2 * SLOTS * 6);
        assert_eq!(
            fleet.environments_started(),
            2 * SLOTS,
            "churn: two per slot"
        );
        assert!(
            fleet.max_alive >= SLOTS - 1,
            "environments overlapped: {}",
            fleet.max_alive
        );
        let events: usize = fleet.events_sent();
        // Each orders environment's events once at the raw endpoint (as a multiset: the
        // environments overlap), and each billing one's refused, once, at the other.
        let raw_of = |name: &str| {
            let mut raw: Vec<String> = fleet
                .environments
                .iter()
                .filter(|e| e.spec.function.name == name)
                .flat_map(|e| e.report().expect("a report").events_sent_raw.clone())
                .collect();
            raw.sort();
            raw
        };
        let mut delivered = received_raw(&sink);
        delivered.sort();
        assert_eq!(delivered, raw_of("orders"), "the orders events, each once");
        let mut refused: Vec<String> = rejecting
            .requests()
            .iter()
            .flat_map(|r| {
                serde_json::from_slice::<Vec<Box<serde_json::value::RawValue>>>(&r.body)
                    .expect("JSON arrays")
                    .into_iter()
                    .map(|i| i.get().to_string())
            })
            .collect();
        refused.sort();
        let billing_events = raw_of("billing");
        assert_eq!(
            refused, billing_events,
            "the billing events, each refused once"
        );
        let (rejected_batches, rejected_events) =
            (rejecting.requests().len(), billing_events.len());
        assert!(rejected_batches > 0 && delivered.len() + rejected_events == events);

        // Let Prometheus scrape the last exports and pushes (a few scrape intervals), then
        // evaluate at a whole second.
        tokio::time::sleep(SCRAPE * 4).await;
        let end = unix_now().floor();
        let range_s = (end - started) as u64 + 1;
        let steps_end = started + (range_s.div_ceil(STEP_S) * STEP_S) as f64;

        // The variables, as Grafana asks for them: both functions, the versions of each, the job.
        let values = |v: &[&str]| {
            v.iter()
                .map(|s| s.to_string())
                .collect::<BTreeSet<String>>()
        };
        for (file, variable, function, expected) in [
            (
                "lambda-overview.json",
                "function",
                ".*",
                values(&["billing", "orders"]),
            ),
            (
                "lambda-overview.json",
                "version",
                ".*",
                values(&["1", "2", "7"]),
            ),
            (
                "lambda-overview.json",
                "version",
                "orders",
                values(&["1", "2"]),
            ),
            ("lambda-overview.json", "version", "billing", values(&["7"])),
            (
                "bridge-health.json",
                "job",
                ".*",
                values(&["lambda-telemetry-bridge"]),
            ),
        ] {
            let query = variable_query(file, variable).replace("$function", function);
            let got = prometheus.label_values(&query, started, end).await;
            assert_eq!(got, expected, "{file} > variable {variable} ({query})");
        }

        // All, one function, one version of it, the other function, and both chosen one by one
        // (Grafana writes several values as a regex alternation).
        let selections = [
            Selection {
                function: ".*",
                version: ".*",
            },
            Selection {
                function: "orders",
                version: ".*",
            },
            Selection {
                function: "orders",
                version: "2",
            },
            Selection {
                function: "billing",
                version: ".*",
            },
            Selection {
                function: "(orders|billing)",
                version: "(1|7)",
            },
        ];
        let mut checked = BTreeSet::new();
        for selection in &selections {
            let expected = sent(&fleet, selection);
            assert!(expected.environments > 0, "{selection:?} selects nothing");
            let what = |q: &PanelQuery| {
                format!("{} > {} {} {selection:?}", q.dashboard, q.panel, q.ref_id)
            };
            for query in panel_queries("lambda-overview.json") {
                let name = what(&query);
                // Over the whole range, as a stat panel shows it (and a graph's whole span).
                let whole = selection.substitute(&query.expr, range_s, range_s);
                let at_end = prometheus.instant(&whole, end).await;
                // As a graph draws it: one point per interval, the intervals tiling the run.
                let tiled = prometheus
                    .range(
                        &selection.substitute(&query.expr, range_s, STEP_S),
                        started + STEP_S as f64,
                        steps_end,
                        STEP_S,
                    )
                    .await;
                let success = expected.success as f64;
                let timeouts = expected.timeouts as f64;
                let errors = as_f64(&expected.errors_by_type);
                match (query.panel.as_str(), query.ref_id.as_str()) {
                    ("Invocations in range", _) => {
                        assert_eq!(only(&at_end, &name), expected.invocations() as f64, "{name}")
                    }
                    ("Failed share", _) => {
                        let failed = expected.invocations() - expected.success;
                        let share = failed as f64 / expected.invocations() as f64;
                        assert!(close(only(&at_end, &name), share), "{name}: {at_end:?} vs {share}");
                    }
                    ("Cold starts in range", _) => {
                        assert_eq!(only(&at_end, &name), expected.environments as f64, "{name}: one per environment")
                    }
                    ("Invoke duration p95", _) => {
                        assert_within(
                            &name,
                            only(&at_end, &name),
                            quantile_bucket(&expected.durations_s, 0.95, &DURATION_BUCKETS),
                        );
                        // The buckets the quantile is read from, exactly: the panel's own sum.
                        let buckets = whole
                            .strip_prefix("histogram_quantile(0.95, ")
                            .and_then(|e| e.strip_suffix(')'))
                            .expect("histogram_quantile(0.95, <buckets>)");
                        let got = prometheus.instant(buckets, end).await;
                        assert!(!got.is_empty(), "{name}: no buckets");
                        for series in &got {
                            let le = series.labels["le"].parse::<f64>().unwrap_or(f64::INFINITY);
                            let below = expected.durations_s.iter().filter(|d| **d <= le).count();
                            assert_eq!(only(std::slice::from_ref(series), &name), below as f64, "{name}: bucket le={le}");
                        }
                    }
                    ("Memory size", _) => assert_eq!(only(&at_end, &name), expected.memory_size, "{name}"),
                    ("Cost in range", _) => {
                        assert!(close(only(&at_end, &name), expected.cost), "{name}: {at_end:?} vs {}", expected.cost)
                    }
                    ("Invocations", "A") => {
                        assert!(close(total(&at_end) * range_s as f64, success), "{name}");
                        assert!(close(total(&tiled) * STEP_S as f64, success), "{name}: per interval {tiled:?}");
                    }
                    ("Invocations", "B") => {
                        let got = by_label(&tiled, "error_type", STEP_S as f64);
                        assert_eq!(round(&got), errors, "{name}");
                        for (k, v) in got {
                            assert!(close(v, errors[&k]), "{name}: {k} {v}");
                        }
                    }
                    ("Invocations", "C") | ("Errors and timeouts", "B") => {
                        let scale = if query.panel == "Invocations" { STEP_S as f64 } else { 1.0 };
                        assert!(close(total(&tiled) * scale, timeouts), "{name}: {tiled:?} vs {timeouts}");
                    }
                    ("Errors and timeouts", "A") => {
                        assert_eq!(by_label(&tiled, "error_type", 1.0), errors, "{name}");
                        assert_eq!(by_label(&at_end, "error_type", 1.0), errors, "{name} (whole range)");
                    }
                    ("Invoke duration p50 / p95 / p99", r) => {
                        let q = match r { "A" => 0.5, "B" => 0.95, _ => 0.99 };
                        assert_within(&name, only(&at_end, &name), quantile_bucket(&expected.durations_s, q, &DURATION_BUCKETS));
                    }
                    ("Cold starts", _) => {
                        assert_eq!(total(&tiled), expected.environments as f64, "{name}: per interval");
                    }
                    ("Init duration", "A") => {
                        assert!(close(only(&at_end, &name), mean(&expected.init_s)), "{name}: {at_end:?}")
                    }
                    ("Init duration", _) => assert_within(
                        &name,
                        only(&at_end, &name),
                        quantile_bucket(&expected.init_s, 0.99, &DURATION_BUCKETS),
                    ),
                    ("Memory used vs memory size", "A") => {
                        assert_eq!(only(&at_end, &name), expected.memory_size, "{name}")
                    }
                    ("Memory used vs memory size", "B") => {
                        assert!(close(only(&at_end, &name), mean(&expected.used_bytes)), "{name}")
                    }
                    ("Memory used vs memory size", _) => assert_within(
                        &name,
                        only(&at_end, &name),
                        quantile_bucket(&expected.used_bytes, 0.99, &MEMORY_BUCKETS),
                    ),
                    ("Memory utilisation", _) => {
                        assert!(close(only(&at_end, &name), mean(&expected.utilisation)), "{name}")
                    }
                    ("Billed duration vs invoke duration", "A") => {
                        assert!(close(only(&at_end, &name), mean(&expected.billed_s)), "{name}")
                    }
                    ("Billed duration vs invoke duration", "B") => assert_within(
                        &name,
                        only(&at_end, &name),
                        quantile_bucket(&expected.billed_s, 0.99, &DURATION_BUCKETS),
                    ),
                    ("Billed duration vs invoke duration", _) => {
                        assert!(close(only(&at_end, &name), mean(&expected.durations_s)), "{name}")
                    }
                    ("Estimated cost", _) => {
                        // USD per hour at each interval's rate, summed back to USD.
                        let usd = total(&tiled) * STEP_S as f64 / 3600.0;
                        assert!(close(usd, expected.cost), "{name}: {usd} vs {}", expected.cost);
                    }
                    (panel, r) => panic!("{name}: no check for this panel ({panel} {r}); add one, or say why it cannot be checked"),
                }
                checked.insert(format!(
                    "{} > {} {}",
                    query.dashboard, query.panel, query.ref_id
                ));
            }
        }

        // A stat over a range that starts mid-run, environments alive across its start: the
        // subtraction of what they had counted before it is what makes the number right. It
        // must equal the graph's intervals after that point, and differ from the naive sum.
        let step = STEP_S as f64;
        let mid = started + ((end - started) / 2.0 / step).floor() * step;
        let later_end = mid + ((end - mid) / step).floor() * step;
        let later_s = (later_end - mid) as u64;
        let all = &selections[0];
        let queries = panel_queries("lambda-overview.json");
        let expr = |panel: &str| -> Vec<String> {
            queries
                .iter()
                .filter(|q| q.panel == panel)
                .map(|q| q.expr.clone())
                .collect()
        };
        for (stat, graph, per_second, unit) in [
            ("Invocations in range", "Invocations", true, 1.0),
            ("Cold starts in range", "Cold starts", false, 1.0),
            ("Cost in range", "Estimated cost", true, 1.0 / 3600.0),
        ] {
            let stat_value = only(
                &prometheus
                    .instant(&all.substitute(&expr(stat)[0], later_s, later_s), later_end)
                    .await,
                stat,
            );
            let mut intervals = 0.0;
            for e in expr(graph) {
                let tiled = prometheus
                    .range(
                        &all.substitute(&e, later_s, STEP_S),
                        mid + step,
                        later_end,
                        STEP_S,
                    )
                    .await;
                intervals += total(&tiled) * if per_second { step } else { 1.0 } * unit;
            }
            assert!(
                close(stat_value, intervals),
                "{stat} over the last {later_s} s: {stat_value}, its graph's intervals: {intervals}"
            );
        }
        let naive = |name: &str| format!("(sum(last_over_time({name}[{later_s}s])) or vector(0))");
        let naive_invocations = only(
            &prometheus
                .instant(
                    &format!(
                        "{} + {} + {}",
                        naive("faas_invocations_total"),
                        naive("faas_errors_total"),
                        naive("faas_timeouts_total")
                    ),
                    later_end,
                )
                .await,
            "naive",
        );
        let stat_later = only(
            &prometheus
                .instant(
                    &all.substitute(&expr("Invocations in range")[0], later_s, later_s),
                    later_end,
                )
                .await,
            "invocations later",
        );
        assert!(
            stat_later < naive_invocations,
            "no environment was alive across the middle of the run: the check above proves nothing"
        );

        // The bridges' own metrics, pushed by every environment at its shutdown.
        let everything = sent(&fleet, &selections[0]);
        let spans_received = lambda_sim::otlp_receiver::decode_traces(&collector.requests()).len();
        let logs_received = lambda_sim::otlp_receiver::decode_logs(&collector.requests()).len();
        let metric_exports = lambda_sim::otlp_receiver::accepted(
            &collector.requests(),
            lambda_sim::otlp_receiver::Signal::Metrics,
        )
        .count();
        let raw_requests = sink.requests();
        let collector_requests = collector.requests();
        let accepted_requests =
            |signal| lambda_sim::otlp_receiver::accepted(&collector_requests, signal).count();
        let accepted_bytes = |signal| -> usize {
            lambda_sim::otlp_receiver::accepted(&collector_requests, signal)
                .map(|r| r.body.len())
                .sum()
        };
        let raw_posts = raw_requests.iter().filter(|r| r.succeeded()).count() as f64;
        for query in panel_queries("bridge-health.json") {
            let name = format!("{} > {} {}", query.dashboard, query.panel, query.ref_id);
            let whole = selections[0].substitute(&query.expr, range_s, range_s);
            let at_end = prometheus.instant(&whole, end).await;
            let tiled = prometheus
                .range(
                    &selections[0].substitute(&query.expr, range_s, STEP_S),
                    started + STEP_S as f64,
                    steps_end,
                    STEP_S,
                )
                .await;
            match (query.panel.as_str(), query.ref_id.as_str()) {
                ("Invocations handled", _) => {
                    assert_eq!(only(&at_end, &name), everything.invocations() as f64, "{name}")
                }
                ("Events received", _) => assert_eq!(only(&at_end, &name), events as f64, "{name}"),
                // The billing bridges' refused batches: one failure each (a 400 is not retried)
                // and their events dropped as rejected; nothing else failed.
                ("Items dropped", _) => {
                    assert_eq!(total(&at_end), rejected_events as f64, "{name}");
                    // A time series (per interval) sums to the same; a stat panel's whole-range
                    // query has no intervals to sum.
                    if query.expr.contains("$__interval") {
                        assert_eq!(total(&tiled), rejected_events as f64, "{name}: per interval");
                    }
                    if query.expr.contains("by (sink, reason)") {
                        let by_reason = by_label(&tiled, "reason", 1.0);
                        assert_eq!(by_reason.get("rejected"), Some(&(rejected_events as f64)), "{name}: {by_reason:?}");
                        let by_sink = by_label(&tiled, "sink", 1.0);
                        assert_eq!(by_sink.get("raw_json"), Some(&(rejected_events as f64)), "{name}: {by_sink:?}");
                    }
                }
                ("Sink failures", _) | ("Failures and retries", "A") => {
                    assert_eq!(total(&at_end), rejected_batches as f64, "{name}");
                    if query.expr.contains("$__interval") {
                        assert_eq!(total(&tiled), rejected_batches as f64, "{name}: per interval");
                    }
                    if query.expr.contains("by (sink, reason)") {
                        let by_reason = by_label(&tiled, "reason", 1.0);
                        assert_eq!(by_reason.get("rejected"), Some(&(rejected_batches as f64)), "{name}: {by_reason:?}");
                    }
                }
                ("Failures and retries", _) => {
                    assert!(!at_end.is_empty(), "{name}: no answer (the series exist at 0)");
                    assert_eq!(total(&at_end), 0.0, "{name}: a 400 is not retried");
                    assert_eq!(total(&tiled), 0.0, "{name}: per interval");
                }
                ("Queue depth", _) => {
                    assert!(!at_end.is_empty(), "{name}: no answer");
                    assert_eq!(total(&at_end), 0.0, "{name}: drained at every shutdown");
                }
                // The bridge's own timing of its flushes: nothing the simulator sent says what
                // it should be. Checked only to be a duration.
                ("Flush duration p99", _) | ("Flush duration", _) => {
                    let durations: Vec<f64> = at_end.iter().flat_map(|s| s.values.clone()).filter(|v| !v.is_nan()).collect();
                    assert!(!durations.is_empty(), "{name}: no flush duration");
                    for value in durations {
                        assert!((0.0..=10.0).contains(&value), "{name}: {value}");
                    }
                }
                ("Events received by type", _) => {
                    let mut got = round(&by_label(&tiled, "type", STEP_S as f64));
                    got.retain(|_, v| *v != 0.0);
                    assert_eq!(got, as_f64(&everything.events_by_type), "{name}");
                }
                ("Telemetry API POSTs and rejections", "A") => assert!(
                    close(total(&tiled) * STEP_S as f64, everything.telemetry_posts as f64),
                    "{name}: {} vs {}",
                    total(&tiled) * STEP_S as f64,
                    everything.telemetry_posts
                ),
                ("Telemetry API POSTs and rejections", _) => assert_eq!(total(&at_end), 0.0, "{name}"),
                ("Items sent per sink", _) => {
                    let sent = by_label(&tiled, "sink", STEP_S as f64);
                    for (sink, expected) in [
                        ("raw_json", delivered.len()),
                        ("otlp_traces", spans_received),
                        ("otlp_logs", logs_received),
                        ("otlp_metrics", metric_exports),
                    ] {
                        let got = sent.get(sink).copied();
                        assert!(got.is_some_and(|g| close(g, expected as f64)), "{name}: {sink} {got:?} vs {expected}");
                    }
                }
                ("Requests per sink", _) => {
                    let requests = by_label(&tiled, "sink", STEP_S as f64);
                    for (sink, expected) in [
                        ("raw_json", raw_posts),
                        ("otlp_traces", accepted_requests(lambda_sim::otlp_receiver::Signal::Traces) as f64),
                        ("otlp_logs", accepted_requests(lambda_sim::otlp_receiver::Signal::Logs) as f64),
                        ("otlp_metrics", metric_exports as f64),
                    ] {
                        let got = requests.get(sink).copied();
                        assert!(got.is_some_and(|g| close(g, expected)), "{name}: {sink} {got:?} vs {expected}");
                    }
                }
                // Bytes: the bridge counts the bodies it sent, which the raw endpoint received.
                ("Bytes sent per sink", _) => {
                    let raw_bytes: usize = raw_requests.iter().filter(|r| r.succeeded()).map(|r| r.body.len()).sum();
                    let sent = by_label(&tiled, "sink", STEP_S as f64);
                    for (sink, expected) in [
                        ("raw_json", raw_bytes),
                        ("otlp_traces", accepted_bytes(lambda_sim::otlp_receiver::Signal::Traces)),
                        ("otlp_logs", accepted_bytes(lambda_sim::otlp_receiver::Signal::Logs)),
                        ("otlp_metrics", accepted_bytes(lambda_sim::otlp_receiver::Signal::Metrics)),
                    ] {
                        let got = sent.get(sink).copied();
                        assert!(got.is_some_and(|g| close(g, expected as f64)), "{name}: {sink} {got:?} vs {expected}");
                    }
                }
                ("Log lines filtered and text masked", "A") => {
                    let got = round(&by_label(&tiled, "rule", 1.0));
                    let debug = function_lines(&fleet, "orders", "cache miss") as f64;
                    assert!(debug > 0.0);
                    assert_eq!(got, BTreeMap::from([("min_severity".to_string(), debug)]), "{name}");
                }
                ("Log lines filtered and text masked", _) => {
                    let got = round(&by_label(&tiled, "sink", 1.0));
                    let emails = function_lines(&fleet, "orders", "receipt sent to jane.doe@example.com") as f64;
                    assert!(emails > 0.0);
                    assert_eq!(
                        got,
                        BTreeMap::from([("otlp".to_string(), emails), ("raw_json".to_string(), 0.0)]),
                        "{name}"
                    );
                }
                ("Trace sampling decisions", _) => {
                    let mut got = round(&by_label(&tiled, "decision", 1.0));
                    got.retain(|_, v| *v != 0.0);
                    assert_eq!(
                        got,
                        BTreeMap::from([
                            ("sampled".to_string(), decisions(&fleet, "orders") as f64),
                            ("sampled_out".to_string(), decisions(&fleet, "billing") as f64),
                        ]),
                        "{name}"
                    );
                }
                ("Extension overhead per invocation (as Lambda reports it)", r) => {
                    let q = if r == "A" { 0.5 } else { 0.99 };
                    assert_within(&name, only(&at_end, &name), quantile_bucket(&everything.extension_overhead_s, q, &DURATION_BUCKETS));
                }
                // In a fleet no bridge is scraped (each environment pushes): the `bridge` job of
                // the local stack does not exist here, the other two are up.
                ("Scrape targets up", _) => {
                    let up = by_label(&at_end, "job", 1.0);
                    assert_eq!(up.get("otel-collector"), Some(&1.0), "{name}: {up:?}");
                    assert_eq!(up.get("pushgateway"), Some(&1.0), "{name}: {up:?}");
                }
                (panel, r) => panic!("{name}: no check for this panel ({panel} {r}); add one, or say why it cannot be checked"),
            }
            checked.insert(name);
        }
        eprintln!("checked {} panel queries: {checked:#?}", checked.len());
        // What Prometheus holds in memory for the run (every environment's series until its
        // head block is compacted).
        let (_, own) = get(prom_port, "/metrics".into()).await;
        let head = own
            .lines()
            .find(|l| l.starts_with("prometheus_tsdb_head_series "))
            .unwrap_or("prometheus_tsdb_head_series ?");
        let mut exposition = lambda_sim::prometheus::Exposition::new();
        exposition.add_requests(&collector.requests());
        eprintln!(
            "{} environments; {head}; the stand-in exposed {} series in all",
            fleet.environments_started(),
            exposition.series_ever()
        );
        let _ = std::fs::remove_dir_all(&dir);
    });
}

fn round(values: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    values.iter().map(|(k, v)| (k.clone(), v.round())).collect()
}
