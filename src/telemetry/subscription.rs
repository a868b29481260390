//! The Telemetry API subscription request body.

use serde_json::json;

use crate::config::Config;

/// The schema on the default model (what the mapping was written against).
pub const SCHEMA_VERSION: &str = "2022-12-13";
/// The schema Lambda Managed Instances requires (it refuses older versions with 400).
pub const MANAGED_INSTANCES_SCHEMA_VERSION: &str = "2025-01-29";

/// The `PUT /telemetry` body for a listener reached as `host:port`.
pub fn subscription_body(config: &Config, host: &str, port: u16) -> Vec<u8> {
    let types: Vec<&str> = config.telemetry_types.iter().map(|t| t.as_str()).collect();
    json!({
        "schemaVersion": if config.lambda.model.is_managed_instances() {
            MANAGED_INSTANCES_SCHEMA_VERSION
        } else {
            SCHEMA_VERSION
        },
        "types": types,
        "buffering": {
            "maxItems": config.buffering.max_items,
            "maxBytes": config.buffering.max_bytes,
            "timeoutMs": config.buffering.timeout_ms,
        },
        "destination": {
            "protocol": "HTTP",
            "URI": format!("http://{host}:{port}/"),
        },
    })
    .to_string()
    .into_bytes()
}
