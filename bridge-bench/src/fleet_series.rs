//! `--fleet`: how many series the collector's Prometheus exporter exposes for a churning fleet
//! (`deploy/otel-collector.yaml`: one series set per environment, a series leaving the
//! exposition `metric_expiration` after its environment's last export), measured on the
//! exporter's stand-in (`lambda_sim::prometheus`) while the fleet runs.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lambda_sim::fleet::{self, FleetConfig, FleetFunction};
use lambda_sim::prometheus::Exposition;
use lambda_sim::{Behaviour, RecordingEndpoint, SimConfig};

/// The exporter's `metric_expiration`, scaled down with the environments' lives (seconds here,
/// minutes in production).
const EXPIRATION: Duration = Duration::from_secs(2);
const SAMPLE_EVERY: Duration = Duration::from_millis(500);

pub async fn run(bridge: &Path, quick: bool) -> Result<(), String> {
    let collector = Arc::new(
        RecordingEndpoint::start(Behaviour::ok())
            .await
            .map_err(|e| e.to_string())?,
    );
    let sink = RecordingEndpoint::start(Behaviour::ok())
        .await
        .map_err(|e| e.to_string())?;
    // Environments live about 4.5 s (40 invocations 100 ms apart), longer than the expiration,
    // as in production (minutes to hours, against 15 minutes).
    let (slots, lifetime, invocations) = if quick { (3, 4, 24) } else { (4, 40, 960) };
    eprintln!(
        "bridge-bench --fleet: {slots} environments at once, {lifetime} invocations each, \
         {invocations} in all; metric_expiration {} s",
        EXPIRATION.as_secs()
    );
    let (raw, otlp, bridge) = (sink.url(), collector.url(), bridge.to_path_buf());
    let sampled = collector.clone();
    let most = Arc::new(AtomicUsize::new(0));
    let most_seen = most.clone();
    let sampler = tokio::spawn(async move {
        loop {
            tokio::time::sleep(SAMPLE_EVERY).await;
            let mut exposition = Exposition::new();
            exposition.add_requests(&sampled.requests());
            let now = exposition.series_count(Instant::now(), EXPIRATION);
            most_seen.fetch_max(now, Ordering::Relaxed);
        }
    });
    let started = Instant::now();
    let report = fleet::run(FleetConfig {
        slots,
        functions: vec![
            FleetFunction::new("orders", "1"),
            FleetFunction::new("billing", "1"),
        ],
        invocations,
        lifetime,
        stagger: Duration::from_millis(300),
        template: Box::new(move |_| SimConfig {
            extension_path: bridge.clone(),
            extension_env: vec![
                ("DISPATCH_POST_URI".into(), raw.clone()),
                ("OTEL_EXPORTER_OTLP_ENDPOINT".into(), otlp.clone()),
                ("OTEL_METRIC_EXPORT_INTERVAL".into(), "1000".into()),
            ],
            runtime_init_ms: 50,
            between_invokes_ms: 100,
            error_every: Some(5),
            ..SimConfig::default()
        }),
        ..FleetConfig::default()
    })
    .await;
    let elapsed = started.elapsed();
    // The peak over the run, including what the last environments left.
    tokio::time::sleep(SAMPLE_EVERY * 2).await;
    sampler.abort();
    let most_exposed = most.load(Ordering::Relaxed);
    let mut exposition = Exposition::new();
    exposition.add_requests(&collector.requests());
    let ever = exposition.series_ever();
    let environments = report.environments_started();
    if !report.clean() {
        return Err(format!(
            "the fleet did not run cleanly: {:?}",
            report.unclean
        ));
    }
    let per_environment = ever as f64 / environments.max(1) as f64;
    println!(
        "fleet run                          {:.1} s",
        elapsed.as_secs_f64()
    );
    println!(
        "environments started               {environments} (at most {} at once)",
        report.max_alive
    );
    println!("series per environment             {per_environment:.0}");
    println!("series exposed, most at one time   {most_exposed}");
    println!(
        "  = environments                   {:.1} (alive, or ended within metric_expiration)",
        most_exposed as f64 / per_environment
    );
    println!("series ever exposed (no expiry)    {ever}");
    Ok(())
}
