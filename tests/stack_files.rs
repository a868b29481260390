//! The local observability stack's files hang together: docker-compose.yml, the Dockerfile and
//! the collector, Tempo, Prometheus and Grafana configuration it mounts (no Docker engine needed).
//!
//! Checked: every file or directory mounted exists in the repository; every published port is
//! bound to 127.0.0.1; every image tag is pinned; every service, port and URL a file refers to is
//! a compose service that listens there; the collector's pipelines use only defined components;
//! Prometheus scrapes existing services; Grafana's dashboards provider reads the mounted
//! dashboards directory; every data source a dashboard uses is provisioned.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::Value;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn yaml(path: &Path) -> Value {
    serde_yaml::from_str(&read(path))
        .unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", path.display()))
}

fn str_list(value: Option<&Value>) -> Vec<String> {
    match value {
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect(),
        Some(Value::String(s)) => vec![s.clone()],
        _ => Vec::new(),
    }
}

/// `http://host:port/path` or `host:port` → (host, port).
fn host_port(text: &str) -> Option<(String, u16)> {
    let rest = text.split_once("://").map_or(text, |(_, r)| r);
    let authority = rest.split('/').next()?;
    let (host, port) = authority.rsplit_once(':')?;
    Some((host.to_string(), port.parse().ok()?))
}

/// One service of docker-compose.yml, as far as these checks need it.
#[derive(Debug, Default)]
struct Service {
    /// Container ports it listens on (published or only exposed).
    ports: BTreeSet<u16>,
    /// Mount target in the container → host path (bind mounts only).
    binds: BTreeMap<String, PathBuf>,
    command: Vec<String>,
    environment: BTreeMap<String, String>,
}

struct Stack {
    services: BTreeMap<String, Service>,
    compose: Value,
}

impl Stack {
    fn load(problems: &mut Vec<String>) -> Stack {
        let compose = yaml(&repo().join("docker-compose.yml"));
        let declared_volumes: BTreeSet<String> = compose["volumes"]
            .as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        let mut services = BTreeMap::new();
        let Some(defs) = compose["services"].as_object() else {
            panic!("docker-compose.yml has no services");
        };
        for (name, def) in defs {
            let mut service = Service::default();
            for port in def["ports"].as_array().into_iter().flatten() {
                let target = match port {
                    Value::String(s) => {
                        let parts: Vec<&str> = s.split(':').collect();
                        if parts.len() != 3 || parts[0] != "127.0.0.1" {
                            problems.push(format!(
                                "{name}: port {s:?} is not bound to 127.0.0.1 (write \"127.0.0.1:HOST:CONTAINER\")"
                            ));
                        }
                        parts.last().map(|p| p.to_string())
                    }
                    Value::Object(m) => {
                        if m.get("host_ip").and_then(Value::as_str) != Some("127.0.0.1") {
                            problems.push(format!("{name}: port {port} has no host_ip 127.0.0.1"));
                        }
                        m.get("target").map(|t| t.to_string())
                    }
                    other => {
                        problems.push(format!(
                            "{name}: port {other} is not bound to 127.0.0.1 (write \"127.0.0.1:HOST:CONTAINER\")"
                        ));
                        None
                    }
                };
                match target
                    .as_deref()
                    .map(|t| t.split('/').next().unwrap_or(t).trim_matches('"'))
                    .and_then(|t| t.parse::<u16>().ok())
                {
                    Some(p) => {
                        service.ports.insert(p);
                    }
                    None => {
                        problems.push(format!("{name}: cannot read the container port of {port}"))
                    }
                }
            }
            for port in str_list(def.get("expose")) {
                match port.split('/').next().and_then(|p| p.parse::<u16>().ok()) {
                    Some(p) => {
                        service.ports.insert(p);
                    }
                    None => problems.push(format!("{name}: cannot read exposed port {port:?}")),
                }
            }
            for volume in def["volumes"].as_array().into_iter().flatten() {
                let Some(spec) = volume.as_str() else {
                    problems.push(format!("{name}: volume {volume}: use the short syntax"));
                    continue;
                };
                let parts: Vec<&str> = spec.split(':').collect();
                if parts.len() < 2 {
                    problems.push(format!("{name}: volume {spec:?} has no target"));
                    continue;
                }
                let (source, target) = (parts[0], parts[1]);
                if source.starts_with("./") || source.starts_with("../") || source == "." {
                    let path = repo().join(source);
                    if !path.starts_with(repo()) || source.starts_with("../") {
                        problems.push(format!("{name}: {source} is outside the repository"));
                    }
                    if !path.exists() {
                        problems.push(format!("{name}: mounts {source}, which does not exist"));
                    }
                    service.binds.insert(target.to_string(), path);
                } else if source.starts_with('/') || source.starts_with('~') {
                    problems.push(format!(
                        "{name}: mounts {source} from the host, not from the repository"
                    ));
                } else if !declared_volumes.contains(source) {
                    problems.push(format!("{name}: named volume {source} is not declared"));
                }
            }
            service.command = match &def["command"] {
                Value::String(s) => s.split_whitespace().map(str::to_string).collect(),
                other => str_list(Some(other)),
            };
            match &def["environment"] {
                Value::Object(m) => {
                    for (k, v) in m {
                        let v = match v {
                            Value::String(s) => s.clone(),
                            other => other.to_string(),
                        };
                        service.environment.insert(k.clone(), v);
                    }
                }
                Value::Array(items) => {
                    for item in items {
                        if let Some((k, v)) = item.as_str().and_then(|s| s.split_once('=')) {
                            service.environment.insert(k.to_string(), v.to_string());
                        }
                    }
                }
                _ => {}
            }
            services.insert(name.clone(), service);
        }
        Stack { services, compose }
    }

    /// A problem unless `host:port` is a compose service listening on that port.
    fn check_target(&self, place: &str, host: &str, port: u16, problems: &mut Vec<String>) {
        match self.services.get(host) {
            None => problems.push(format!("{place}: {host}:{port}: no compose service {host}")),
            Some(s) if !s.ports.contains(&port) => problems.push(format!(
                "{place}: {host}:{port}: service {host} neither publishes nor exposes port {port} \
                 (it has {:?})",
                s.ports
            )),
            Some(_) => {}
        }
    }

    /// A problem unless the URL's host is this machine's wildcard or a service with that port.
    /// `own` is the service whose configuration holds the address (for a listen address).
    fn check_address(&self, place: &str, own: &str, address: &str, problems: &mut Vec<String>) {
        let Some((host, port)) = host_port(address) else {
            problems.push(format!("{place}: cannot read host:port of {address:?}"));
            return;
        };
        let host = host.trim_matches(|c| c == '[' || c == ']');
        if ["0.0.0.0", "::", "", "localhost", "127.0.0.1"].contains(&host) {
            self.check_target(place, own, port, problems);
        } else {
            self.check_target(place, host, port, problems);
        }
    }

    fn service(&self, name: &str) -> &Service {
        self.services
            .get(name)
            .unwrap_or_else(|| panic!("docker-compose.yml has no service {name}"))
    }

    /// The repository file mounted at `target` in service `name`.
    fn mounted(&self, name: &str, target: &str, problems: &mut Vec<String>) -> Option<PathBuf> {
        let found = self.service(name).binds.get(target).cloned();
        if found.is_none() {
            problems.push(format!(
                "{name}: nothing of the repository is mounted at {target}"
            ));
        }
        found.filter(|p| p.exists())
    }

    /// The value of a `--flag=value` or `-flag=value` or `--flag value` argument of `name`.
    fn flag(&self, name: &str, flag: &str) -> Option<String> {
        let command = &self.service(name).command;
        command.iter().enumerate().find_map(|(i, arg)| {
            let bare = arg.trim_start_matches('-');
            if let Some(v) = bare.strip_prefix(flag).and_then(|r| r.strip_prefix('=')) {
                Some(v.to_string())
            } else if bare == flag && arg.starts_with('-') {
                command.get(i + 1).cloned()
            } else {
                None
            }
        })
    }
}

fn report(problems: Vec<String>) {
    assert!(problems.is_empty(), "\n  {}\n", problems.join("\n  "));
}

/// `name:tag` with a real tag (or a digest), not `latest`.
fn check_pinned(place: &str, image: &str, problems: &mut Vec<String>) {
    if image.contains("@sha256:") {
        return;
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.split_once(':') {
        Some((_, tag)) if !tag.is_empty() && tag != "latest" && !tag.contains('$') => {}
        _ => problems.push(format!("{place}: image {image:?} is not pinned to a tag")),
    }
}

#[test]
fn compose_mounts_ports_and_images() {
    let mut problems = Vec::new();
    let stack = Stack::load(&mut problems);
    let names: BTreeSet<&String> = stack.services.keys().collect();
    for expected in [
        "otel-collector",
        "tempo",
        "prometheus",
        "pushgateway",
        "grafana",
        "raw-json-mock",
        "lambda-sim",
    ] {
        if !stack.services.contains_key(expected) {
            problems.push(format!("no service {expected}"));
        }
    }
    for (name, def) in stack.compose["services"].as_object().unwrap() {
        match (def["image"].as_str(), def.get("build")) {
            (Some(image), _) => check_pinned(name, image, &mut problems),
            (None, Some(_)) => {}
            (None, None) => problems.push(format!("{name}: neither image nor build")),
        }
        if let Some(build) = def.get("build") {
            let (context, dockerfile) = match build {
                Value::String(c) => (c.clone(), "Dockerfile".to_string()),
                Value::Object(m) => (
                    m.get("context")
                        .and_then(Value::as_str)
                        .unwrap_or(".")
                        .to_string(),
                    m.get("dockerfile")
                        .and_then(Value::as_str)
                        .unwrap_or("Dockerfile")
                        .to_string(),
                ),
                _ => (".".into(), "Dockerfile".into()),
            };
            let path = repo().join(&context).join(&dockerfile);
            if !path.is_file() {
                problems.push(format!(
                    "{name}: builds from {}, which does not exist",
                    path.display()
                ));
            }
        }
        for dependency in match &def["depends_on"] {
            Value::Object(m) => m.keys().cloned().collect(),
            other => str_list(Some(other)),
        } {
            if !names.contains(&dependency) {
                problems.push(format!(
                    "{name}: depends on {dependency}, which is no service"
                ));
            }
        }
    }
    // Addresses in the environment: a listen address (`*_ADDR`) must be a port of the service
    // itself; a URL naming another service must be one of its ports.
    for (name, service) in &stack.services {
        for (key, value) in &service.environment {
            let place = format!("{name}: {key}");
            if key.ends_with("_ADDR") {
                stack.check_address(&place, name, value, &mut problems);
            } else if value.contains("://") {
                if let Some((host, port)) = host_port(value) {
                    if stack.services.contains_key(&host) {
                        stack.check_target(&place, &host, port, &mut problems);
                    }
                }
            }
        }
    }
    report(problems);
}

/// The binaries the images of this repository run are `[[bin]]` targets of the workspace's
/// crates, built and copied by the Dockerfile, whose base images are pinned.
#[test]
fn dockerfile_builds_what_compose_runs() {
    let mut problems = Vec::new();
    // docker-compose.yml's own problems are reported by compose_mounts_ports_and_images.
    let stack = Stack::load(&mut Vec::new());
    let dockerfile = read(&repo().join("Dockerfile"));
    let mut bins = BTreeSet::new();
    let mut in_bin = false;
    // The workspace's members, each of which the Dockerfile must copy for Cargo to build.
    let members = ["lambda-sim", "bridge-bench"];
    for member in members {
        if !dockerfile.contains(&format!("COPY {member} ")) {
            problems.push(format!(
                "the Dockerfile does not copy the workspace member {member}/"
            ));
        }
    }
    let manifests = std::iter::once(repo().join("Cargo.toml"))
        .chain(members.iter().map(|m| repo().join(m).join("Cargo.toml")))
        .map(|p| read(&p))
        .collect::<Vec<_>>()
        .join("\n");
    for line in manifests.lines().map(str::trim) {
        if line.starts_with('[') {
            in_bin = line == "[[bin]]";
        } else if in_bin {
            if let Some(v) = line
                .strip_prefix("name")
                .map(str::trim)
                .and_then(|r| r.strip_prefix('='))
            {
                bins.insert(v.trim().trim_matches('"').to_string());
            }
        }
    }
    let mut built = BTreeSet::new();
    let mut words = dockerfile.split_whitespace().peekable();
    while let Some(word) = words.next() {
        if word == "FROM" {
            let image = words.next().unwrap_or_default();
            if !image.starts_with("--") {
                check_pinned("Dockerfile", image, &mut problems);
            }
        }
        if word == "--bin" {
            if let Some(bin) = words.next() {
                built.insert(bin.to_string());
            }
        }
    }
    for bin in &built {
        if !bins.contains(bin) {
            problems.push(format!(
                "Dockerfile builds --bin {bin}, which Cargo.toml does not declare"
            ));
        }
    }
    for (name, def) in stack.compose["services"].as_object().unwrap() {
        if def.get("build").is_none() {
            continue;
        }
        match stack.service(name).command.first() {
            Some(program) if built.contains(program) => {}
            other => problems.push(format!(
                "{name}: runs {other:?}, which the Dockerfile does not build (it builds {built:?})"
            )),
        }
    }
    if !built.contains("lambda-telemetry-bridge") {
        problems.push("the Dockerfile does not build the bridge that lambda-sim starts".into());
    }
    report(problems);
}

const COMPONENT_KINDS: [&str; 4] = ["receivers", "processors", "exporters", "connectors"];

#[test]
fn collector_pipelines_use_defined_components() {
    let mut problems = Vec::new();
    // docker-compose.yml's own problems are reported by compose_mounts_ports_and_images.
    let stack = Stack::load(&mut Vec::new());
    let config_path = stack
        .flag("otel-collector", "config")
        .unwrap_or_else(|| "/etc/otelcol-contrib/config.yaml".into());
    let Some(path) = stack.mounted("otel-collector", &config_path, &mut problems) else {
        return report(problems);
    };
    let config = yaml(&path);
    let defined = |kind: &str| -> BTreeSet<String> {
        config[kind]
            .as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    };
    let connectors = defined("connectors");
    let mut used: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    let pipelines = config["service"]["pipelines"].as_object();
    if pipelines.is_none_or(|p| p.is_empty()) {
        problems.push("collector: no pipelines".into());
    }
    for (pipeline, def) in pipelines.into_iter().flatten() {
        let signal = pipeline.split('/').next().unwrap_or(pipeline);
        if !["traces", "metrics", "logs", "profiles"].contains(&signal) {
            problems.push(format!("collector: pipeline {pipeline}: unknown signal"));
        }
        for kind in ["receivers", "processors", "exporters"] {
            let names = str_list(def.get(kind));
            if kind != "processors" && names.is_empty() {
                problems.push(format!("collector: pipeline {pipeline} has no {kind}"));
            }
            for name in names {
                // A connector is an exporter of one pipeline and a receiver of another.
                let ok = defined(kind).contains(&name)
                    || (kind != "processors" && connectors.contains(&name));
                if !ok {
                    problems.push(format!(
                        "collector: pipeline {pipeline} uses {kind} {name}, which is not defined"
                    ));
                }
                used.entry(kind).or_default().insert(name);
            }
        }
    }
    for kind in COMPONENT_KINDS {
        for name in defined(kind) {
            let in_use = used.get(kind).is_some_and(|u| u.contains(&name))
                || (kind == "connectors"
                    && ["receivers", "exporters"]
                        .iter()
                        .all(|k| used.get(k).is_some_and(|u| u.contains(&name))));
            if !in_use {
                problems.push(format!(
                    "collector: {kind} {name} is defined but in no pipeline"
                ));
            }
        }
    }
    let extensions = defined("extensions");
    for name in str_list(config["service"].get("extensions")) {
        if !extensions.contains(&name) {
            problems.push(format!("collector: extension {name} is not defined"));
        }
    }
    // Every address: listen addresses are the collector's ports, others compose services.
    for kind in ["receivers", "exporters", "extensions"] {
        for (name, def) in config[kind].as_object().into_iter().flatten() {
            let mut endpoints = Vec::new();
            collect_endpoints(def, &mut endpoints);
            for endpoint in endpoints {
                let place = format!("collector: {kind} {name}");
                stack.check_address(&place, "otel-collector", &endpoint, &mut problems);
            }
        }
    }
    // What the dashboards depend on: resource attributes as labels, Prometheus on :8889.
    let prometheus = config["exporters"]["prometheus"].clone();
    if prometheus["resource_to_telemetry_conversion"]["enabled"] != Value::Bool(true) {
        problems.push("collector: exporters.prometheus.resource_to_telemetry_conversion.enabled must be true (faas_name, faas_version labels)".into());
    }
    for exporter in ["prometheus", "debug"] {
        if !defined("exporters").contains(exporter) {
            problems.push(format!("collector: no {exporter} exporter"));
        }
    }
    report(problems);
}

fn collect_endpoints(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("endpoint", Value::String(s)) => out.push(s.clone()),
                    _ => collect_endpoints(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_endpoints(v, out)),
        _ => {}
    }
}

#[test]
fn tempo_listens_where_it_is_reached() {
    let mut problems = Vec::new();
    // docker-compose.yml's own problems are reported by compose_mounts_ports_and_images.
    let stack = Stack::load(&mut Vec::new());
    let config_path = stack
        .flag("tempo", "config.file")
        .unwrap_or_else(|| "/etc/tempo.yaml".into());
    let Some(path) = stack.mounted("tempo", &config_path, &mut problems) else {
        return report(problems);
    };
    let config = yaml(&path);
    match config["server"]["http_listen_port"].as_u64() {
        Some(port) => stack.check_target(
            "tempo: server.http_listen_port",
            "tempo",
            port as u16,
            &mut problems,
        ),
        None => problems.push("tempo: no server.http_listen_port".into()),
    }
    let mut endpoints = Vec::new();
    collect_endpoints(&config["distributor"]["receivers"], &mut endpoints);
    if endpoints.is_empty() {
        problems.push("tempo: no distributor receiver endpoint".into());
    }
    for endpoint in endpoints {
        stack.check_address(
            "tempo: distributor receiver",
            "tempo",
            &endpoint,
            &mut problems,
        );
    }
    report(problems);
}

#[test]
fn prometheus_scrapes_existing_services() {
    let mut problems = Vec::new();
    // docker-compose.yml's own problems are reported by compose_mounts_ports_and_images.
    let stack = Stack::load(&mut Vec::new());
    let config_path = stack
        .flag("prometheus", "config.file")
        .unwrap_or_else(|| "/etc/prometheus/prometheus.yml".into());
    let Some(path) = stack.mounted("prometheus", &config_path, &mut problems) else {
        return report(problems);
    };
    let config = yaml(&path);
    let mut jobs = BTreeSet::new();
    let mut targets = BTreeSet::new();
    for job in config["scrape_configs"].as_array().into_iter().flatten() {
        let name = job["job_name"].as_str().unwrap_or("?").to_string();
        if !jobs.insert(name.clone()) {
            problems.push(format!("prometheus: job {name} twice"));
        }
        for static_config in job["static_configs"].as_array().into_iter().flatten() {
            for target in str_list(static_config.get("targets")) {
                let place = format!("prometheus: job {name}");
                match host_port(&target) {
                    Some((host, port)) => {
                        stack.check_target(&place, &host, port, &mut problems);
                        targets.insert((host, port));
                    }
                    None => problems.push(format!("{place}: target {target:?} is not host:port")),
                }
            }
        }
    }
    // The three sources the issue names: the collector's exporter, the bridge, the Pushgateway.
    let collector_port = stack
        .flag("otel-collector", "config")
        .and_then(|c| stack.service("otel-collector").binds.get(&c).cloned())
        .and_then(|p| {
            yaml(&p)["exporters"]["prometheus"]["endpoint"]
                .as_str()
                .and_then(host_port)
        })
        .map(|(_, p)| p);
    let bridge_port = stack
        .service("lambda-sim")
        .environment
        .get("BRIDGE_METRICS_ADDR")
        .and_then(|a| host_port(a))
        .map(|(_, p)| p);
    let pushgateway_port = stack
        .service("lambda-sim")
        .environment
        .get("BRIDGE_PUSHGATEWAY_URL")
        .and_then(|a| host_port(a))
        .map(|(_, p)| p);
    for (what, service, port) in [
        (
            "the collector's prometheus exporter",
            "otel-collector",
            collector_port,
        ),
        (
            "the bridge's BRIDGE_METRICS_ADDR",
            "lambda-sim",
            bridge_port,
        ),
        (
            "the Pushgateway lambda-sim pushes to",
            "pushgateway",
            pushgateway_port,
        ),
    ] {
        match port {
            Some(p) if targets.contains(&(service.to_string(), p)) => {}
            Some(p) => problems.push(format!("prometheus does not scrape {what} ({service}:{p})")),
            None => problems.push(format!("cannot tell the port of {what}")),
        }
    }
    report(problems);
}

const GRAFANA_DATASOURCES: &str = "/etc/grafana/provisioning/datasources";
const GRAFANA_DASHBOARDS: &str = "/etc/grafana/provisioning/dashboards";

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    files
}

/// Every `datasource` a dashboard names: its uid (or legacy name), where it is.
fn datasource_refs(value: &Value, place: &str, out: &mut Vec<(String, String)>) {
    match value {
        Value::Object(m) => {
            let here = match m.get("title").and_then(Value::as_str) {
                Some(t) => format!("{place} > {t}"),
                None => place.to_string(),
            };
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("datasource", Value::Object(ds)) => {
                        if let Some(uid) = ds.get("uid").and_then(Value::as_str) {
                            out.push((uid.to_string(), here.clone()));
                        }
                    }
                    ("datasource", Value::String(name)) => out.push((name.clone(), here.clone())),
                    ("url", Value::String(url)) if url.contains("/explore") => {
                        // A link to Explore names its data sources in the (encoded) panes.
                        let decoded = percent_decode(url);
                        for key in ["\"uid\":\"", "\"datasource\":\""] {
                            for part in decoded.split(key).skip(1) {
                                if let Some(uid) = part.split('"').next() {
                                    out.push((uid.to_string(), format!("{here} (link)")));
                                }
                            }
                        }
                    }
                    _ => {}
                }
                datasource_refs(v, &here, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|v| datasource_refs(v, place, out)),
        _ => {}
    }
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&text[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn grafana_provisions_the_datasources_and_dashboards_it_uses() {
    let mut problems = Vec::new();
    // docker-compose.yml's own problems are reported by compose_mounts_ports_and_images.
    let stack = Stack::load(&mut Vec::new());
    let grafana = stack.service("grafana");

    // Data sources: uids, and URLs that are compose services.
    let mut provisioned = BTreeSet::new();
    if let Some(dir) = stack.mounted("grafana", GRAFANA_DATASOURCES, &mut problems) {
        for file in yaml_files(&dir) {
            let config = yaml(&file);
            for ds in config["datasources"].as_array().into_iter().flatten() {
                let name = ds["name"].as_str().unwrap_or("?");
                match ds["uid"].as_str() {
                    Some(uid) => {
                        provisioned.insert(uid.to_string());
                        provisioned.insert(name.to_string());
                    }
                    None => problems.push(format!("grafana: data source {name} has no uid")),
                }
                if let Some(url) = ds["url"].as_str() {
                    match host_port(url) {
                        Some((host, port)) => stack.check_target(
                            &format!("grafana: data source {name}"),
                            &host,
                            port,
                            &mut problems,
                        ),
                        None => problems.push(format!(
                            "grafana: data source {name}: URL {url:?} has no port"
                        )),
                    }
                }
                // References between data sources (e.g. Tempo's service map → Prometheus).
                let mut refs = Vec::new();
                collect_uid_refs(&ds["jsonData"], &mut refs);
                for uid in refs {
                    if !provisioned.contains(&uid) && !declared_uid(&dir, &uid) {
                        problems.push(format!("grafana: data source {name} refers to uid {uid}, which is not provisioned"));
                    }
                }
            }
        }
    }
    for uid in ["prometheus", "tempo"] {
        if !provisioned.contains(uid) {
            problems.push(format!("grafana: no data source with uid {uid}"));
        }
    }

    // Dashboard providers: each path is a mount of a directory of the repository with dashboards.
    let mut dashboard_dirs = Vec::new();
    if let Some(dir) = stack.mounted("grafana", GRAFANA_DASHBOARDS, &mut problems) {
        let providers: Vec<Value> = yaml_files(&dir)
            .iter()
            .flat_map(|f| yaml(f)["providers"].as_array().cloned().unwrap_or_default())
            .collect();
        if providers.is_empty() {
            problems.push("grafana: no dashboard provider".into());
        }
        for provider in providers {
            let name = provider["name"].as_str().unwrap_or("?");
            let Some(path) = provider["options"]["path"].as_str() else {
                problems.push(format!(
                    "grafana: dashboard provider {name} has no options.path"
                ));
                continue;
            };
            match grafana.binds.get(path.trim_end_matches('/')) {
                Some(host) if host.is_dir() => dashboard_dirs.push(host.clone()),
                Some(host) => problems.push(format!(
                    "grafana: dashboard provider {name} reads {path}, mounted from {}, which is no directory",
                    host.display()
                )),
                None => problems.push(format!(
                    "grafana: dashboard provider {name} reads {path}, where nothing is mounted"
                )),
            }
        }
    }
    if !dashboard_dirs.contains(&repo().join("./dashboards"))
        && !dashboard_dirs.contains(&repo().join("dashboards"))
    {
        problems.push("grafana: no dashboard provider reads ./dashboards".into());
    }
    if let Some(home) = grafana
        .environment
        .get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
    {
        let found = grafana.binds.iter().any(|(target, host)| {
            Path::new(home)
                .strip_prefix(target)
                .is_ok_and(|rest| host.join(rest).is_file())
        });
        if !found {
            problems.push(format!(
                "grafana: the home dashboard {home} is not a mounted file"
            ));
        }
    }

    // Every dashboard: valid JSON, a uid, and only provisioned data sources.
    let builtin = ["-- Grafana --", "grafana", "-- Mixed --", "-- Dashboard --"];
    let mut uids = BTreeSet::new();
    for dir in dashboard_dirs {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .expect("a dashboards directory")
            .map(|e| e.expect("a directory entry").path())
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect();
        files.sort();
        if files.is_empty() {
            problems.push(format!("grafana: {} holds no dashboard", dir.display()));
        }
        for file in files {
            let name = file.file_name().unwrap().to_string_lossy().into_owned();
            let dashboard: Value = match serde_json::from_str(&read(&file)) {
                Ok(d) => d,
                Err(e) => {
                    problems.push(format!("{name}: not JSON: {e}"));
                    continue;
                }
            };
            match dashboard["uid"].as_str() {
                Some(uid) if uids.insert(uid.to_string()) => {}
                Some(uid) => problems.push(format!("{name}: uid {uid} is used twice")),
                None => problems.push(format!("{name}: no uid")),
            }
            if dashboard["schemaVersion"].as_u64().is_none() {
                problems.push(format!("{name}: no schemaVersion"));
            }
            let mut refs = Vec::new();
            datasource_refs(&dashboard, &name, &mut refs);
            if refs.is_empty() {
                problems.push(format!("{name}: uses no data source"));
            }
            for (uid, place) in refs {
                if !provisioned.contains(&uid) && !builtin.contains(&uid.as_str()) {
                    problems.push(format!("{place}: data source {uid:?} is not provisioned"));
                }
            }
        }
    }
    report(problems);
}

fn collect_uid_refs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("datasourceUid", Value::String(uid)) => out.push(uid.clone()),
                    _ => collect_uid_refs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_uid_refs(v, out)),
        _ => {}
    }
}

/// Whether any data source file in `dir` declares `uid` (a reference may precede its target).
fn declared_uid(dir: &Path, uid: &str) -> bool {
    yaml_files(dir).iter().any(|f| {
        yaml(f)["datasources"]
            .as_array()
            .is_some_and(|ds| ds.iter().any(|d| d["uid"].as_str() == Some(uid)))
    })
}

#[test]
fn the_checks_catch_what_they_should() {
    assert_eq!(host_port("http://tempo:3200"), Some(("tempo".into(), 3200)));
    assert_eq!(
        host_port("otel-collector:8889"),
        Some(("otel-collector".into(), 8889))
    );
    assert_eq!(host_port("0.0.0.0:9464"), Some(("0.0.0.0".into(), 9464)));
    assert_eq!(
        host_port("http://raw-json-mock:8080/"),
        Some(("raw-json-mock".into(), 8080))
    );
    assert_eq!(host_port("http://prometheus"), None);
    let mut problems = Vec::new();
    check_pinned("x", "prom/prometheus:v3.14.0", &mut problems);
    check_pinned("x", "localhost:5000/image@sha256:abcd", &mut problems);
    assert!(problems.is_empty(), "{problems:?}");
    for bad in [
        "prom/prometheus",
        "prom/prometheus:latest",
        "localhost:5000/image",
        "a/b:${TAG}",
    ] {
        let mut problems = Vec::new();
        check_pinned("x", bad, &mut problems);
        assert_eq!(problems.len(), 1, "{bad} passed");
    }
    assert_eq!(
        percent_decode("%7B%22uid%22%3A%22tempo%22%7D"),
        r#"{"uid":"tempo"}"#
    );
    assert_eq!(percent_decode("a%2"), "a%2");
}
