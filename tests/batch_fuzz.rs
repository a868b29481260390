//! Property-based fuzzing of the Telemetry API batch parser (the listener's only parsing).

use bytes::Bytes;
use lambda_telemetry_bridge::telemetry::batch::parse_batch;
use proptest::prelude::*;
use serde_json::{json, Value};

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        // Exactly representable fractions: serde_json's default float parsing is not round-trip exact.
        any::<i32>().prop_map(|n| json!(f64::from(n) / 4.0)),
        ".{0,40}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(".{0,8}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn event() -> impl Strategy<Value = Value> {
    let kind = prop_oneof![
        Just("platform.start".to_string()),
        Just("platform.runtimeDone".to_string()),
        Just("platform.report".to_string()),
        Just("function".to_string()),
        Just("extension".to_string()),
        "[a-z.]{1,20}",
    ];
    prop_oneof![
        (kind, json_value(), ".{0,12}").prop_map(|(kind, record, rid)| {
            let record = match record {
                Value::Object(mut m) => {
                    m.insert("requestId".into(), Value::String(rid));
                    Value::Object(m)
                }
                other => other,
            };
            json!({"time": "2026-01-01T00:00:00.000Z", "type": kind, "record": record})
        }),
        json_value(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse_batch(&Bytes::from(body), usize::MAX, true);
    }

    #[test]
    fn every_element_is_kept_byte_for_byte(events in prop::collection::vec(event(), 0..20), pretty in any::<bool>()) {
        let array = Value::Array(events.clone());
        let text = if pretty { serde_json::to_string_pretty(&array) } else { serde_json::to_string(&array) }
            .expect("serialisable");
        let batch = parse_batch(&Bytes::from(text.clone()), usize::MAX, true).expect("a JSON array parses");
        prop_assert_eq!(batch.events.len(), events.len());
        for (parsed, original) in batch.events.iter().zip(&events) {
            let raw = std::str::from_utf8(parsed.raw()).expect("utf-8");
            prop_assert!(text.contains(raw));
            let back: Value = serde_json::from_str(raw).expect("each slice is valid JSON");
            prop_assert_eq!(&back, original);
            if !pretty {
                prop_assert_eq!(raw, serde_json::to_string(original).expect("json"));
            }
        }
    }

    #[test]
    fn truncated_arrays_are_rejected_not_half_taken(events in prop::collection::vec(event(), 1..10), cut in 1usize..64) {
        let text = serde_json::to_string(&Value::Array(events)).expect("json");
        let cut = text.len().saturating_sub(cut).max(1);
        if let Some(prefix) = text.get(..cut) {
            prop_assert!(parse_batch(&Bytes::from(prefix.to_string()), usize::MAX, true).is_err());
        }
    }
}
