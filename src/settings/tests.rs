//! The settings as a whole, read from maps of variables.

use super::*;
use crate::config::{Buffering, FlushPolicy, TelemetryType, SANDBOX_HOST};
use crate::sinks::otlp::config::{OtlpProtocol, Pricing, Temporality};
use std::collections::HashMap;
use std::time::Duration;

/// The settings, flattened for the assertions: the core's fields and the outputs'.
struct Loaded {
    core: Config,
    dispatch: Option<DispatchConfig>,
    otlp: Option<OtlpConfig>,
    self_metrics: SelfMetricsConfig,
}

impl std::ops::Deref for Loaded {
    type Target = Config;
    fn deref(&self) -> &Config {
        &self.core
    }
}

fn load(vars: &[(&str, &str)]) -> (Loaded, Vec<ConfigIssue>) {
    let mut map: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    map.entry("AWS_LAMBDA_RUNTIME_API".into())
        .or_insert_with(|| "127.0.0.1:9001".into());
    let (s, issues) = Settings::from_lookup(|k| map.get(k).cloned()).expect("runtime api set");
    let loaded = Loaded {
        core: s.core,
        dispatch: s.dispatch,
        otlp: s.otlp,
        self_metrics: s.self_metrics,
    };
    (loaded, issues)
}

#[test]
fn defaults_are_valid_and_quick() {
    let (cfg, issues) = load(&[]);
    assert!(issues.is_empty());
    assert_eq!(cfg.buffering.timeout_ms, 25);
    assert_eq!(cfg.flush_policy, FlushPolicy::Adaptive);
    assert_eq!(cfg.listener_host, "sandbox.localdomain");
    assert_eq!(cfg.listener_port, 0);
    assert!(cfg.dispatch.is_none());
    assert_eq!(cfg.telemetry_types.len(), 3);
}

#[test]
fn out_of_range_buffering_falls_back_with_an_issue() {
    let (cfg, issues) = load(&[
        ("BRIDGE_BUFFER_TIMEOUT_MS", "5"),
        ("BRIDGE_BUFFER_MAX_ITEMS", "lots"),
    ]);
    assert_eq!(cfg.buffering, Buffering::default());
    assert_eq!(issues.len(), 2);
    let text = issues[0].to_string();
    assert!(text.contains("BRIDGE_BUFFER_MAX_ITEMS") || text.contains("BRIDGE_BUFFER_TIMEOUT_MS"));
    assert!(issues
        .iter()
        .any(|i| i.variable == "BRIDGE_BUFFER_TIMEOUT_MS" && i.allowed.contains("25 to 30000")));
}

#[test]
fn bad_dispatch_uri_disables_the_raw_sink() {
    let (cfg, issues) = load(&[("DISPATCH_POST_URI", "not a url")]);
    assert!(cfg.dispatch.is_none());
    assert_eq!(issues[0].variable, "DISPATCH_POST_URI");
    assert!(issues[0].consequence.contains("disabled"));
}

#[test]
fn dispatch_headers_are_parsed_and_never_shown() {
    let (cfg, issues) = load(&[
        (
            "DISPATCH_POST_URI",
            "https://user:pw@example.com/ingest?key=s3cret",
        ),
        ("BRIDGE_DISPATCH_HEADERS", "x-api-key=top%20secret,other=1"),
    ]);
    assert!(issues.is_empty());
    let dispatch = cfg.dispatch.expect("dispatch configured");
    assert_eq!(
        dispatch.headers,
        vec![
            ("x-api-key".to_string(), "top secret".to_string()),
            ("other".to_string(), "1".to_string()),
            // user:pw, taken out of the URL and sent as Basic authorization.
            (
                "Authorization".to_string(),
                "Basic dXNlcjpwdw==".to_string()
            ),
        ]
    );
    assert_eq!(
        dispatch.uri.as_str(),
        "https://example.com/ingest?key=s3cret"
    );
    let shown = format!("{dispatch:?}");
    assert!(!shown.contains("top secret") && !shown.contains("s3cret") && !shown.contains("pw"));
    let (_, issues) = load(&[
        ("DISPATCH_POST_URI", "http://x/"),
        ("BRIDGE_DISPATCH_HEADERS", "novalue-secret"),
    ]);
    assert_eq!(issues[0].value, "<redacted>");
}

#[test]
fn sam_local_listens_everywhere_but_subscribes_to_the_sandbox_name() {
    let (cfg, _) = load(&[("AWS_SAM_LOCAL", "true")]);
    assert_eq!(cfg.listener_host, "0.0.0.0");
    assert_eq!(cfg.destination_host, "sandbox.localdomain");
    let (cfg, _) = load(&[("BRIDGE_LISTENER_ADDR", "127.0.0.1")]);
    assert_eq!(cfg.destination_host, "127.0.0.1");
}

#[test]
fn otlp_follows_the_standard_variables() {
    let (cfg, issues) = load(&[]);
    assert!(cfg.otlp.is_none() && issues.is_empty());
    let (cfg, issues) = load(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/"),
        (
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "https://traces.example/custom",
        ),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
        ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "http/protobuf"),
        ("OTEL_EXPORTER_OTLP_HEADERS", "api-key=secret1,x=1"),
        ("OTEL_EXPORTER_OTLP_METRICS_HEADERS", "api-key=secret2"),
        ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
        ("OTEL_LOGS_EXPORTER", "none"),
        ("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", "delta"),
    ]);
    assert!(issues.is_empty(), "{issues:?}");
    let otlp = cfg.otlp.expect("otlp on");
    let traces = otlp.traces.expect("traces");
    assert_eq!(traces.endpoint.as_str(), "https://traces.example/custom");
    assert_eq!(traces.protocol, OtlpProtocol::HttpJson);
    assert!(traces.gzip);
    let metrics = otlp.metrics.expect("metrics");
    assert_eq!(
        metrics.endpoint.as_str(),
        "http://collector:4318/v1/metrics"
    );
    assert_eq!(metrics.protocol, OtlpProtocol::HttpProtobuf);
    assert!(metrics
        .headers
        .contains(&("api-key".into(), "secret2".into())));
    assert!(metrics.headers.contains(&("x".into(), "1".into())));
    assert!(!format!("{metrics:?}").contains("secret"));
    assert!(otlp.logs.is_none());
    assert_eq!(otlp.temporality, Temporality::Delta);
    let (cfg, _) = load(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
        ("OTEL_SDK_DISABLED", "true"),
    ]);
    assert!(cfg.otlp.is_none());
    let (cfg, issues) = load(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
    ]);
    assert!(cfg.otlp.is_none());
    assert_eq!(
        issues.len(),
        1,
        "one line for the one bad value: {issues:?}"
    );
    assert!(issues[0].consequence.contains("traces"));
    assert!(issues[0].consequence.contains("logs"));
}

#[test]
fn credentials_in_urls_never_reach_an_issue_and_become_basic_auth() {
    for variable in [
        "DISPATCH_POST_URI",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "BRIDGE_PUSHGATEWAY_URL",
    ] {
        for raw in [
            "ftp://user:PASSWORD@collector:4318/",
            "http://user:PASSWORD@",
            "user:PASSWORD@host",
            "http://coll ector:4318/?token=PASSWORD",
            "http://user:PASS?WORD@host",
            "http://user:PASS#WORD@bad host",
        ] {
            let (_, issues) = load(&[(variable, raw)]);
            assert_eq!(issues.len(), 1, "{variable}={raw}: {issues:?}");
            let line = issues[0].to_string();
            assert!(!line.contains("PASS"), "{line}");
            assert!(line.contains(variable), "{line}");
        }
    }
    let (cfg, issues) = load(&[
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "http://u%40x:p%3Aw@collector:4318",
        ),
        (
            "OTEL_EXPORTER_OTLP_LOGS_HEADERS",
            "authorization=Bearer%20t",
        ),
        ("BRIDGE_PUSHGATEWAY_URL", "http://a:b@gateway:9091"),
    ]);
    assert!(issues.is_empty(), "{issues:?}");
    let otlp = cfg.otlp.expect("otlp on");
    let traces = otlp.traces.expect("traces");
    assert_eq!(traces.endpoint.as_str(), "http://collector:4318/v1/traces");
    // "u@x:p:w", percent-decoded, in base64.
    assert_eq!(
        traces.headers,
        vec![(
            "Authorization".to_string(),
            "Basic dUB4OnA6dw==".to_string()
        )]
    );
    // An explicit header wins over the URL's credentials.
    let logs = otlp.logs.expect("logs");
    assert_eq!(
        logs.headers,
        vec![("authorization".to_string(), "Bearer t".to_string())]
    );
    let gateway = cfg.self_metrics.pushgateway.expect("gateway");
    assert_eq!(gateway.url.as_str(), "http://gateway:9091/");
    assert_eq!(gateway.authorization.as_deref(), Some("Basic YTpi"));
    assert!(!format!("{gateway:?}").contains("YTpi"));
}

#[test]
fn values_that_used_to_pass_silently_are_issues() {
    let cases: &[(&str, &str)] = &[
        ("BRIDGE_LOG", "warning"),
        ("BRIDGE_LOG", "verbose"),
        ("BRIDGE_LOG", "garbage["),
        ("BRIDGE_LOG", "999"),
        ("BRIDGE_LOG", "hyper=loud"),
        ("BRIDGE_LISTENER_ADDR", "not a host!"),
        ("BRIDGE_LISTENER_ADDR", "-bad.example"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://"),
        ("BRIDGE_ARCHITECTURE", "mips"),
        ("OTEL_SDK_DISABLED", "maybe"),
    ];
    for (variable, value) in cases {
        let (cfg, issues) = load(&[
            (variable, value),
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://collector/v1/traces",
            ),
        ]);
        assert_eq!(issues.len(), 1, "{variable}={value}: {issues:?}");
        assert_eq!(issues[0].variable, *variable);
        match *variable {
            "BRIDGE_LOG" => assert_eq!(cfg.log_filter, "info"),
            "BRIDGE_LISTENER_ADDR" => assert_eq!(cfg.listener_host, SANDBOX_HOST),
            "OTEL_EXPORTER_OTLP_ENDPOINT" => {
                let otlp = cfg.otlp.expect("traces keep their own endpoint");
                assert!(otlp.metrics.is_none() && otlp.logs.is_none());
            }
            "OTEL_SDK_DISABLED" => assert!(cfg.otlp.is_some()),
            _ => {}
        }
    }
    for good in [
        "debug",
        "WARN",
        "info,hyper=off",
        "lambda_telemetry_bridge=trace",
    ] {
        let (cfg, issues) = load(&[("BRIDGE_LOG", good)]);
        assert!(issues.is_empty(), "{good}: {issues:?}");
        assert!(cfg
            .log_filter
            .parse::<tracing_subscriber::filter::Targets>()
            .is_ok());
    }
    for good in ["127.0.0.1", "::1", "sandbox.localdomain", "0.0.0.0"] {
        let (_, issues) = load(&[("BRIDGE_LISTENER_ADDR", good)]);
        assert!(issues.is_empty(), "{good}: {issues:?}");
    }
    let (cfg, issues) = load(&[
        ("BRIDGE_ARCHITECTURE", "aarch64"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
    ]);
    assert!(issues.is_empty());
    assert_eq!(cfg.otlp.expect("on").pricing, Pricing::for_arch("arm64"));
}

#[test]
fn pricing_defaults_follow_the_architecture() {
    assert!(Pricing::for_arch("aarch64").per_gb_second < Pricing::for_arch("x86_64").per_gb_second);
    let (cfg, issues) = load(&[
        ("BRIDGE_PRICE_GB_SECOND", "0.5"),
        ("BRIDGE_PRICE_REQUEST", "-1"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
    ]);
    assert_eq!(cfg.otlp.expect("on").pricing.per_gb_second, 0.5);
    assert_eq!(issues.len(), 1);
    // Checked (and reported) with OTLP output off too.
    let (_, issues) = load(&[("BRIDGE_PRICE_REQUEST", "-1")]);
    assert_eq!(issues.len(), 1);
}

#[test]
fn types_and_port_are_validated() {
    let (cfg, issues) = load(&[
        ("BRIDGE_TELEMETRY_TYPES", "platform, function"),
        ("BRIDGE_LISTENER_PORT", "9001"),
    ]);
    assert_eq!(
        cfg.telemetry_types,
        vec![TelemetryType::Platform, TelemetryType::Function]
    );
    assert_eq!(cfg.listener_port, 0);
    assert_eq!(issues.len(), 1);
    let (_, issues) = load(&[("BRIDGE_TELEMETRY_TYPES", "platform,metrics")]);
    assert_eq!(issues[0].variable, "BRIDGE_TELEMETRY_TYPES");
}

#[test]
fn managed_instances_is_detected_and_flushes_on_a_timer() {
    use crate::config::lambda::ExecutionModel;
    let mi = ("AWS_LAMBDA_INITIALIZATION_TYPE", "lambda-managed-instances");
    let (c, issues) = load(&[mi]);
    assert!(issues.is_empty());
    assert_eq!(c.lambda.model, ExecutionModel::ManagedInstances);
    assert_eq!(
        c.flush_policy,
        FlushPolicy::Periodic(std::time::Duration::from_millis(1_000))
    );
    let (c, issues) = load(&[mi, ("BRIDGE_FLUSH", "periodic:250")]);
    assert!(issues.is_empty());
    assert_eq!(
        c.flush_policy,
        FlushPolicy::Periodic(std::time::Duration::from_millis(250))
    );
    let (c, issues) = load(&[mi, ("BRIDGE_FLUSH", "adaptive")]);
    assert!(issues.is_empty());
    assert_eq!(
        c.flush_policy,
        FlushPolicy::Periodic(std::time::Duration::from_millis(1_000))
    );
    // `end` has no meaning there: one issue naming the variable, and the default.
    let (c, issues) = load(&[mi, ("BRIDGE_FLUSH", "end")]);
    assert_eq!(issues.len(), 1);
    assert_eq!(issues[0].variable, "BRIDGE_FLUSH");
    assert!(issues[0].to_string().contains("Managed Instances"));
    assert!(issues[0].to_string().contains("periodic:1000"));
    assert_eq!(
        c.flush_policy,
        FlushPolicy::Periodic(std::time::Duration::from_millis(1_000))
    );
    let (c, issues) = load(&[mi, ("BRIDGE_FLUSH", "periodic:5")]);
    assert_eq!(issues.len(), 1);
    assert!(issues[0].to_string().contains("periodic:100"));
    assert_eq!(
        c.flush_policy,
        FlushPolicy::Periodic(std::time::Duration::from_millis(100))
    );
    // The default model is unchanged: adaptive by default, end accepted.
    for init in ["on-demand", "snap-start", "provisioned-concurrency"] {
        let (c, issues) = load(&[
            ("AWS_LAMBDA_INITIALIZATION_TYPE", init),
            ("BRIDGE_FLUSH", "end"),
        ]);
        assert!(issues.is_empty());
        assert_eq!(c.lambda.model, ExecutionModel::Default);
        assert_eq!(c.flush_policy, FlushPolicy::End);
    }
    assert_eq!(load(&[]).0.flush_policy, FlushPolicy::Adaptive);
}

#[test]
fn the_freshness_target_defaults_to_a_second_and_stays_within_the_max_delay() {
    let (c, issues) = load(&[]);
    assert!(issues.is_empty(), "{issues:?}");
    assert_eq!(c.flush_freshness, Duration::from_millis(1_000));
    let (c, issues) = load(&[("BRIDGE_FLUSH_FRESHNESS_MS", "0")]);
    assert!(issues.is_empty(), "{issues:?}");
    assert_eq!(c.flush_freshness, Duration::ZERO);
    // Beyond BRIDGE_FLUSH_MAX_DELAY_MS telemetry is overdue anyway: one issue, the max delay.
    let (c, issues) = load(&[
        ("BRIDGE_FLUSH_FRESHNESS_MS", "5000"),
        ("BRIDGE_FLUSH_MAX_DELAY_MS", "3000"),
    ]);
    assert_eq!(c.flush_freshness, Duration::from_millis(3_000));
    assert_eq!(issues.len(), 1, "{issues:?}");
    assert_eq!(issues[0].variable, "BRIDGE_FLUSH_FRESHNESS_MS");
    // A max delay under the default target lowers the default with it, silently.
    let (c, issues) = load(&[("BRIDGE_FLUSH_MAX_DELAY_MS", "400")]);
    assert!(issues.is_empty(), "{issues:?}");
    assert_eq!(c.flush_freshness, Duration::from_millis(400));
    let (_, issues) = load(&[("BRIDGE_FLUSH_FRESHNESS_MS", "soon")]);
    assert_eq!(issues[0].variable, "BRIDGE_FLUSH_FRESHNESS_MS");
}
