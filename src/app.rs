//! Wires the pieces together at start: register, report configuration issues, build the HTTP
//! client and the sinks, the pipeline and the self-metrics, start the telemetry listener and
//! subscribe, then hand over to the `/event/next` loop (`lifecycle::event_loop`).

use std::process::ExitCode;
use std::sync::Arc;

use tokio::sync::watch;

use crate::config::url::redact_url;
use crate::config::{Config, ConfigIssue, SANDBOX_HOST};
use crate::http::LazyClient;
use crate::lifecycle::api::ErrorPhase;
use crate::lifecycle::event_loop::EventLoop;
use crate::lifecycle::{ExtensionsApi, Registration};
use crate::masking::Masking;
use crate::pipeline::{Pipeline, Sink};
use crate::self_metrics::config::SelfMetricsConfig;
use crate::self_metrics::{self, Pusher};
use crate::settings::Settings;
use crate::sinks::otlp::config::OtlpConfig;
use crate::sinks::otlp::{FunctionIdentity, OtlpSink};
use crate::sinks::raw_json::config::DispatchConfig;
use crate::sinks::raw_json::RawJsonSink;
use crate::telemetry::progress::{self, Progress};
use crate::telemetry::{listener, subscription};

/// Runs the extension until SHUTDOWN; the exit code Lambda sees.
pub async fn run(settings: Settings, issues: Vec<ConfigIssue>, extension_name: String) -> ExitCode {
    let Settings {
        core: config,
        dispatch,
        otlp,
        self_metrics,
        masking,
    } = settings;
    let model = config.lambda.model;
    if model.is_managed_instances() {
        // Never frozen there: a late timer is a starved CPU, not a freeze to forgive.
        crate::awake::assume_no_freezes();
    }
    let mut api = ExtensionsApi::new(&config.lambda.runtime_api);
    let events = model.extension_events();
    // Said before registering: a refused registration is the first thing to explain.
    tracing::info!(
        model = %model.as_str(),
        initialization_type = %config.lambda.initialization_type.as_deref().unwrap_or("?"),
        events = ?events,
        "execution model"
    );
    let registration = match api.register(&extension_name, events).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "registration failed; the extension cannot run");
            return ExitCode::from(1);
        }
    };
    tracing::info!(
        name = %extension_name,
        function = registration.function_name.as_deref().unwrap_or("?"),
        version = registration.function_version.as_deref().unwrap_or("?"),
        account_id_known = registration.account_id.is_some(),
        "registered"
    );

    for issue in &issues {
        tracing::error!("configuration: {issue}");
    }
    if config.strict && !issues.is_empty() {
        return fail_init(&api, &issues).await;
    }

    // One HTTP client (one connection pool, TLS roots loaded at most once) for every output.
    let http = Arc::new(LazyClient::for_urls(outbound_urls(
        &dispatch,
        &otlp,
        &self_metrics,
    )));
    // The raw batch is masked only when asked (it is the raw batch).
    if masking.raw && masking.is_empty() {
        tracing::warn!(
            "BRIDGE_MASK_RAW=true but no mask rule applies: the raw batch leaves unmasked"
        );
    }
    let raw_masking = (masking.raw && !masking.is_empty()).then(|| masking.clone());
    let sinks = build_sinks(&dispatch, raw_masking, &otlp, &registration, &config, &http);
    let pipeline = Arc::new(Pipeline::new(
        sinks,
        config.queue_max_events,
        config.queue_max_bytes,
    ));

    let pusher = start_self_metrics(&self_metrics, &config, &http).await;

    let (progress_tx, progress_rx) = progress::channel(model.is_managed_instances());
    let mut listen_issues = Vec::new();
    let (listener, telemetry_live) = start_telemetry(
        &config,
        &api,
        pipeline.clone(),
        progress_tx,
        &mut listen_issues,
    )
    .await;
    if config.strict && !listen_issues.is_empty() {
        return fail_init(&api, &listen_issues).await;
    }

    let mut event_loop = EventLoop::start(
        config,
        api,
        pipeline,
        progress_rx,
        (listener, telemetry_live),
        pusher,
    );
    event_loop.run().await
}

/// Every URL the bridge sends to.
fn outbound_urls<'a>(
    dispatch: &'a Option<DispatchConfig>,
    otlp: &'a Option<OtlpConfig>,
    self_metrics: &'a SelfMetricsConfig,
) -> impl Iterator<Item = &'a reqwest::Url> {
    dispatch
        .iter()
        .map(|d| &d.uri)
        .chain(otlp.iter().flat_map(|o| {
            [&o.traces, &o.metrics, &o.logs]
                .into_iter()
                .flatten()
                .map(|s| &s.endpoint)
        }))
        .chain(self_metrics.pushgateway.iter().map(|p| &p.url))
}

/// The sinks the settings ask for, each said once at info (its endpoints redacted); one that
/// cannot be built is an ERROR line and left out, the others run.
fn build_sinks(
    dispatch: &Option<DispatchConfig>,
    raw_masking: Option<Arc<Masking>>,
    otlp: &Option<OtlpConfig>,
    registration: &Registration,
    config: &Config,
    http: &Arc<LazyClient>,
) -> Vec<Arc<dyn Sink>> {
    let mut sinks: Vec<Arc<dyn Sink>> = Vec::new();
    match dispatch {
        Some(dispatch) => match RawJsonSink::new(dispatch, raw_masking.clone(), http.clone()) {
            Ok(sink) => {
                tracing::info!(
                    endpoint = %redact_url(&dispatch.uri),
                    min_batch_size = dispatch.min_batch_size,
                    masked = raw_masking.is_some(),
                    "raw JSON sink enabled"
                );
                sinks.push(Arc::new(sink));
            }
            Err(e) => tracing::error!(error = %e, "raw JSON sink disabled"),
        },
        None => tracing::info!(
            "DISPATCH_POST_URI is not set: raw JSON events are discarded after the other sinks took them"
        ),
    }
    match otlp {
        Some(otlp) => {
            let identity = FunctionIdentity::new(registration, &config.lambda);
            tracing::info!(
                traces = otlp
                    .traces
                    .as_ref()
                    .map(|s| redact_url(&s.endpoint))
                    .unwrap_or_else(|| "off".into()),
                metrics = otlp
                    .metrics
                    .as_ref()
                    .map(|s| redact_url(&s.endpoint))
                    .unwrap_or_else(|| "off".into()),
                logs = otlp
                    .logs
                    .as_ref()
                    .map(|s| redact_url(&s.endpoint))
                    .unwrap_or_else(|| "off".into()),
                "OTLP sink enabled"
            );
            sinks.push(Arc::new(OtlpSink::new(
                otlp.clone(),
                &identity,
                http.clone(),
            )));
        }
        None => tracing::info!(
            "no OTEL_EXPORTER_OTLP_*ENDPOINT set (or OTEL_SDK_DISABLED=true): OTLP output is off"
        ),
    }
    sinks
}

/// `/metrics` when `BRIDGE_METRICS_ADDR` is set, and the Pushgateway pusher when one is configured.
async fn start_self_metrics(
    self_metrics: &SelfMetricsConfig,
    config: &Config,
    http: &Arc<LazyClient>,
) -> Option<Arc<tokio::sync::Mutex<Pusher>>> {
    if let Some(addr) = self_metrics.metrics_addr {
        match self_metrics::serve(addr).await {
            Ok(bound) => tracing::info!(addr = %bound, "self-metrics served at /metrics"),
            Err(e) => {
                tracing::error!(addr = %addr, error = %e, "BRIDGE_METRICS_ADDR: cannot listen; /metrics disabled")
            }
        }
    }
    self_metrics.pushgateway.as_ref().map(|gateway| {
        let instance = config
            .lambda
            .log_stream
            .clone()
            .unwrap_or_else(|| format!("pid-{}", std::process::id()));
        let pusher = Pusher::new(gateway, &instance, self_metrics.push_interval, http.clone());
        if let Some(stale_after) = self_metrics.stale_after {
            spawn_stale_group_cleanup(
                gateway.clone(),
                pusher.headers.clone(),
                instance,
                stale_after,
                http.clone(),
            );
        }
        Arc::new(tokio::sync::Mutex::new(pusher))
    })
}

/// Once per environment, a second after start (init is done by then, so it costs init nothing;
/// it runs beside the lifecycle, on no invocation's path): the Pushgateway groups of ended
/// environments are deleted (`self_metrics::stale_groups`).
fn spawn_stale_group_cleanup(
    gateway: self_metrics::config::Pushgateway,
    headers: reqwest::header::HeaderMap,
    own: String,
    stale_after: std::time::Duration,
    http: Arc<LazyClient>,
) {
    tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        let client = match http.get() {
            Ok(client) => client,
            Err(e) => {
                tracing::warn!(error = %e, "Pushgateway: stale groups not deleted");
                return;
            }
        };
        let endpoint = redact_url(&gateway.url);
        match self_metrics::stale_groups::delete_stale(
            client,
            &gateway,
            &headers,
            &own,
            stale_after,
        )
        .await
        {
            Ok(cleanup) if cleanup.deleted + cleanup.failed + cleanup.left > 0 => tracing::info!(
                endpoint = %endpoint,
                deleted = cleanup.deleted,
                failed = cleanup.failed,
                left_for_later = cleanup.left,
                stale_after_ms = stale_after.as_millis() as u64,
                "Pushgateway: groups of ended environments deleted"
            ),
            Ok(_) => tracing::debug!("Pushgateway: no stale group"),
            Err(error) => tracing::warn!(
                endpoint = %endpoint,
                error,
                "Pushgateway: stale groups not deleted"
            ),
        }
    });
}

/// `BRIDGE_STRICT=true` and a setting was invalid: an init error reported to Lambda, exit 1.
async fn fail_init(api: &ExtensionsApi, issues: &[ConfigIssue]) -> ExitCode {
    let message = issues
        .iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join("; ");
    if let Err(e) = api
        .report_error(ErrorPhase::Init, "InvalidConfiguration", &message)
        .await
    {
        tracing::error!(error = %e, "could not report the init error");
    }
    ExitCode::from(1)
}

/// Binds the listener and subscribes; returns the listener and whether telemetry will arrive.
/// Failure here degrades the bridge (no telemetry) but never fails the function's init.
async fn start_telemetry(
    config: &Config,
    api: &ExtensionsApi,
    pipeline: Arc<Pipeline>,
    progress_tx: watch::Sender<Progress>,
    issues: &mut Vec<ConfigIssue>,
) -> (Option<listener::Listener>, bool) {
    let Some(bound) = bind_listener(config, issues).await else {
        return (None, false);
    };
    // Lambda reaches a listener on a fallback host by the sandbox's name.
    let destination = if bound.host == config.listener_host {
        config.destination_host.as_str()
    } else {
        SANDBOX_HOST
    };
    let body = subscription::subscription_body(config, destination, bound.local_addr.port());
    let listener = listener::start(bound, &config.buffering, pipeline, progress_tx);
    let live = match api.subscribe_telemetry(body).await {
        Ok(status) => {
            tracing::info!(
                listener = %listener.local_addr,
                status = status.as_u16(),
                types = ?config.telemetry_types.iter().map(|t| t.as_str()).collect::<Vec<_>>(),
                max_items = config.buffering.max_items,
                max_bytes = config.buffering.max_bytes,
                timeout_ms = config.buffering.timeout_ms,
                flush = %config.flush_policy,
                "subscribed to the Telemetry API"
            );
            true
        }
        Err(e) => {
            tracing::error!(error = %e, "telemetry subscription failed; no telemetry will arrive");
            false
        }
    };
    (Some(listener), live)
}

/// Binds the configured host and port; a port that is taken or a host that cannot be bound is an
/// issue naming its variable (an init error under `BRIDGE_STRICT`), and the listener falls back
/// (a taken port to an ephemeral one, a host it cannot bind to the default host, keeping the
/// port), so telemetry still flows.
async fn bind_listener(
    config: &Config,
    issues: &mut Vec<ConfigIssue>,
) -> Option<listener::BoundSocket> {
    let mut host = config.listener_host.clone();
    let mut port = config.listener_port;
    loop {
        let error = match listener::bind(&host, port).await {
            Ok(socket) => return Some(socket),
            Err(e) => e,
        };
        let in_use = error.kind() == std::io::ErrorKind::AddrInUse;
        let issue = if in_use && port != 0 {
            let issue = ConfigIssue {
                variable: "BRIDGE_LISTENER_PORT".into(),
                value: port.to_string(),
                allowed: format!("a port free on {host} ({error})"),
                consequence: "listening on an ephemeral port".into(),
            };
            port = 0;
            issue
        } else if host != config.default_listener_host {
            let issue = ConfigIssue {
                variable: "BRIDGE_LISTENER_ADDR".into(),
                value: host.clone(),
                allowed: format!("an address of this host ({error})"),
                consequence: format!("listening on {}", config.default_listener_host),
            };
            host = config.default_listener_host.clone();
            issue
        } else {
            tracing::error!(error = %error, "telemetry disabled");
            return None;
        };
        tracing::error!("configuration: {issue}");
        issues.push(issue);
    }
}
