//! Building log records: a function or extension log line (text, or a JSON record) as an OTLP
//! log record with its body, severity, time and fields.

use std::time::SystemTime;

use opentelemetry::logs::{AnyValue, LogRecord as _, Logger as _, Severity};
use opentelemetry_sdk::logs::{SdkLogRecord, SdkLogger};

use super::attributes::TENANT_ID;
use super::schema::parse_time;
use crate::event::EventKind;

/// The log record, and the `requestId` the record names (if any), which joins it to its
/// invocation's trace.
pub(super) fn log_record(
    logger: &SdkLogger,
    kind: EventKind,
    record: serde_json::Value,
    time: Option<SystemTime>,
) -> (SdkLogRecord, Option<String>) {
    let mut log = logger.create_log_record();
    let mut timestamp = time;
    let mut request_id = None;
    match record {
        serde_json::Value::String(text) => log.set_body(AnyValue::from(text)),
        serde_json::Value::Object(fields) => {
            // A record without a text message is its own body, as a key-value list (its fields
            // are also attributes, as for every JSON record): an empty body would hide it in
            // every log view.
            let has_message = ["message", "msg"]
                .iter()
                .any(|k| fields.get(*k).is_some_and(serde_json::Value::is_string));
            let structured =
                (!has_message).then(|| structured(serde_json::Value::Object(fields.clone())));
            let mut body = None;
            for (key, value) in fields {
                match (key.as_str(), value) {
                    ("message" | "msg", serde_json::Value::String(m)) if body.is_none() => {
                        body = Some(m)
                    }
                    ("level", serde_json::Value::String(level)) => {
                        let (number, text) = severity(&level);
                        log.set_severity_number(number);
                        log.set_severity_text(text);
                    }
                    ("timestamp", serde_json::Value::String(ts)) => {
                        if let Some(t) = parse_time(&ts) {
                            timestamp = Some(t);
                        }
                    }
                    ("requestId", serde_json::Value::String(id)) => {
                        log.add_attribute("faas.invocation_id", id.clone());
                        request_id = Some(id);
                    }
                    ("tenantId", serde_json::Value::String(tenant)) => {
                        log.add_attribute(TENANT_ID, tenant)
                    }
                    (_, value) => log.add_attribute(key, json_to_any(value)),
                }
            }
            match (body, structured) {
                (Some(text), _) => log.set_body(AnyValue::from(text)),
                (None, Some(record)) => log.set_body(record),
                (None, None) => log.set_body(AnyValue::from(String::new())),
            }
        }
        other => log.set_body(AnyValue::from(other.to_string())),
    }
    // The OTLP encoder requires an observed time: an event without a usable `time` (absent,
    // null, not RFC 3339) is observed now, so it costs its own timestamp and nothing else.
    let observed = time.unwrap_or_else(SystemTime::now);
    log.set_timestamp(timestamp.unwrap_or(observed));
    log.set_observed_timestamp(observed);
    log.add_attribute(
        "aws.lambda.log.source",
        if kind == EventKind::FunctionLog {
            "function"
        } else {
            "extension"
        },
    );
    (log, request_id)
}

fn severity(level: &str) -> (Severity, &'static str) {
    match level.to_ascii_uppercase().as_str() {
        "TRACE" => (Severity::Trace, "TRACE"),
        "DEBUG" => (Severity::Debug, "DEBUG"),
        "INFO" => (Severity::Info, "INFO"),
        "WARN" | "WARNING" => (Severity::Warn, "WARN"),
        "ERROR" => (Severity::Error, "ERROR"),
        "FATAL" | "CRITICAL" => (Severity::Fatal, "FATAL"),
        _ => (Severity::Info, "INFO"),
    }
}

/// A JSON value as an OTLP value, objects and arrays kept as structures (a log body).
fn structured(value: serde_json::Value) -> AnyValue {
    match value {
        serde_json::Value::Object(fields) => AnyValue::Map(Box::new(
            fields
                .into_iter()
                .map(|(k, v)| (opentelemetry::Key::from(k), structured(v)))
                .collect(),
        )),
        serde_json::Value::Array(items) => {
            AnyValue::ListAny(Box::new(items.into_iter().map(structured).collect()))
        }
        serde_json::Value::Null => AnyValue::from(String::new()),
        other => json_to_any(other),
    }
}

fn json_to_any(value: serde_json::Value) -> AnyValue {
    match value {
        serde_json::Value::String(s) => AnyValue::from(s),
        serde_json::Value::Bool(b) => AnyValue::from(b),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => AnyValue::from(i),
            None => AnyValue::from(n.as_f64().unwrap_or(0.0)),
        },
        other => AnyValue::from(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::logs::LoggerProvider as _;
    use opentelemetry_sdk::logs::SdkLoggerProvider;

    fn body_of(record: &str) -> Option<AnyValue> {
        let provider = SdkLoggerProvider::builder().build();
        let logger = provider.logger("test");
        let record = serde_json::from_str(record).expect("json");
        let (log, _) = log_record(&logger, EventKind::FunctionLog, record, None);
        log.body().cloned()
    }

    #[test]
    fn a_json_record_with_a_message_has_it_as_body() {
        let body = body_of(r#"{"level":"INFO","message":"hello","n":1}"#);
        assert_eq!(body, Some(AnyValue::from("hello".to_string())));
    }

    #[test]
    fn a_json_record_without_a_message_is_its_own_structured_body() {
        let body = body_of(r#"{"level":"ERROR","order":{"id":7,"items":["a","b"]},"ok":false}"#);
        let Some(AnyValue::Map(map)) = body else {
            panic!("not a key-value list: {body:?}");
        };
        assert_eq!(
            map.get(&opentelemetry::Key::from("level")),
            Some(&AnyValue::from("ERROR".to_string()))
        );
        assert_eq!(
            map.get(&opentelemetry::Key::from("ok")),
            Some(&AnyValue::from(false))
        );
        let Some(AnyValue::Map(order)) = map.get(&opentelemetry::Key::from("order")) else {
            panic!("nested object not kept as a structure: {map:?}");
        };
        assert_eq!(
            order.get(&opentelemetry::Key::from("items")),
            Some(&AnyValue::ListAny(Box::new(vec![
                AnyValue::from("a".to_string()),
                AnyValue::from("b".to_string())
            ])))
        );
    }
}
