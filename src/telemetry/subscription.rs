//! The Telemetry API subscription request body.

use serde_json::json;

use crate::config::Config;

/// The `PUT /telemetry` body for a listener reached as `host:port`.
pub fn subscription_body(config: &Config, host: &str, port: u16) -> Vec<u8> {
    let types: Vec<&str> = config.telemetry_types.iter().map(|t| t.as_str()).collect();
    json!({
        "schemaVersion": config.lambda.model.telemetry_schema(),
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
