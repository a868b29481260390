//! Building log records: a function or extension log line (text, or a JSON record) as an OTLP
//! log record with its body, severity, time and fields, its text masked by the mask rules.

use std::time::SystemTime;

use opentelemetry::logs::{AnyValue, LogRecord as _, Logger as _, Severity};
use opentelemetry_sdk::logs::{SdkLogRecord, SdkLogger};

use super::attributes::TENANT_ID;
use super::log_filter::{json_severity, text_severity};
use super::schema::parse_time;
use crate::event::EventKind;
use crate::masking::Masking;
use crate::self_metrics::SinkLabel;

const OTLP: SinkLabel = SinkLabel::Otlp;

/// What the log filters look at in a line before its record is built: its severity (`None`:
/// no level known) and, when `with_body`, the body's text (a JSON record without a message:
/// the record as JSON).
pub(super) fn peek(record: &serde_json::Value, with_body: bool) -> (Option<Severity>, String) {
    let body = |text: &str| {
        if with_body {
            text.to_string()
        } else {
            String::new()
        }
    };
    match record {
        serde_json::Value::String(text) => (text_severity(text).map(|s| s.0), body(text)),
        serde_json::Value::Object(fields) => {
            let level = fields.get("level").and_then(json_severity).map(|s| s.0);
            let message = ["message", "msg"]
                .iter()
                .find_map(|k| fields.get(*k).and_then(serde_json::Value::as_str));
            let text = match message {
                Some(m) => body(m),
                None if with_body => record.to_string(),
                None => String::new(),
            };
            (level, text)
        }
        other if with_body => (None, other.to_string()),
        _ => (None, String::new()),
    }
}

/// The log record, and the `requestId` the record names (if any), which joins it to its
/// invocation's trace.
pub(super) fn log_record(
    logger: &SdkLogger,
    kind: EventKind,
    record: serde_json::Value,
    time: Option<SystemTime>,
    masking: &Masking,
) -> (SdkLogRecord, Option<String>) {
    let mut log = logger.create_log_record();
    let mut timestamp = time;
    let mut request_id = None;
    let mask = |mut text: String| {
        masking.mask_string(&mut text, OTLP);
        text
    };
    match record {
        serde_json::Value::String(text) => {
            if let Some((number, name)) = text_severity(&text) {
                log.set_severity_number(number);
                log.set_severity_text(name);
            }
            log.set_body(AnyValue::from(mask(text)))
        }
        serde_json::Value::Object(fields) => {
            // A record without a text message is its own body, as a key-value list (its fields
            // are also attributes, as for every JSON record): an empty body would hide it in
            // every log view.
            let has_message = ["message", "msg"]
                .iter()
                .any(|k| fields.get(*k).is_some_and(serde_json::Value::is_string));
            let structured = (!has_message)
                .then(|| structured(serde_json::Value::Object(fields.clone()), masking));
            let mut body = None;
            for (key, value) in fields {
                match (key.as_str(), value) {
                    ("message" | "msg", serde_json::Value::String(m)) if body.is_none() => {
                        body = Some(m)
                    }
                    ("level", level) => match json_severity(&level) {
                        Some((number, text)) => {
                            log.set_severity_number(number);
                            log.set_severity_text(text);
                        }
                        // Not a level OTLP knows: kept as it was written, with no severity.
                        None => log.add_attribute("level", json_to_any(level, masking)),
                    },
                    ("timestamp", serde_json::Value::String(ts)) => {
                        if let Some(t) = parse_time(&ts) {
                            timestamp = Some(t);
                        }
                    }
                    // The join key to the invocation's trace, Lambda's own id: not masked (nor
                    // on the spans), so that a rule cannot cut a log line from its trace.
                    ("requestId", serde_json::Value::String(id)) => {
                        log.add_attribute("faas.invocation_id", id.clone());
                        request_id = Some(id);
                    }
                    ("tenantId", serde_json::Value::String(tenant)) => {
                        log.add_attribute(TENANT_ID, mask(tenant))
                    }
                    (_, value) => log.add_attribute(mask(key), json_to_any(value, masking)),
                }
            }
            match (body, structured) {
                (Some(text), _) => log.set_body(AnyValue::from(mask(text))),
                (None, Some(record)) => log.set_body(record),
                (None, None) => log.set_body(AnyValue::from(String::new())),
            }
        }
        other => log.set_body(AnyValue::from(mask(other.to_string()))),
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

/// A JSON value as an OTLP value, objects and arrays kept as structures (a log body).
fn structured(value: serde_json::Value, masking: &Masking) -> AnyValue {
    match value {
        serde_json::Value::Object(fields) => AnyValue::Map(Box::new(
            fields
                .into_iter()
                .map(|(k, v)| {
                    let mut key = k;
                    masking.mask_string(&mut key, OTLP);
                    (opentelemetry::Key::from(key), structured(v, masking))
                })
                .collect(),
        )),
        serde_json::Value::Array(items) => AnyValue::ListAny(Box::new(
            items.into_iter().map(|v| structured(v, masking)).collect(),
        )),
        serde_json::Value::Null => AnyValue::from(String::new()),
        other => json_to_any(other, masking),
    }
}

/// A field's value as an attribute: strings masked; objects and arrays as their JSON text,
/// masked too (a nested field is text a reader sees); an integer that a rule matches (a card
/// number written as a number) becomes the masked text.
fn json_to_any(value: serde_json::Value, masking: &Masking) -> AnyValue {
    let mask = |mut text: String| {
        masking.mask_string(&mut text, OTLP);
        text
    };
    match value {
        serde_json::Value::String(s) => AnyValue::from(mask(s)),
        serde_json::Value::Bool(b) => AnyValue::from(b),
        serde_json::Value::Number(n) => {
            if !masking.is_empty() && (n.is_u64() || n.is_i64()) {
                if let Some(masked) = masking.mask(&n.to_string(), OTLP) {
                    return AnyValue::from(masked);
                }
            }
            match n.as_i64() {
                Some(i) => AnyValue::from(i),
                None => AnyValue::from(n.as_f64().unwrap_or(0.0)),
            }
        }
        other => AnyValue::from(mask(other.to_string())),
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
        let (log, _) = log_record(
            &logger,
            EventKind::FunctionLog,
            record,
            None,
            &Masking::default(),
        );
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
