//! Splits a Telemetry API POST body into events without copying or re-serialising them.
//!
//! The body is parsed once into borrowed `RawValue`s; each event becomes a zero-copy slice of
//! the body. Only `type` (and `record.requestId` for the two events the lifecycle waits on) is
//! read. Elements that are not well-formed events are still passed on raw, and counted.

use std::borrow::Cow;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;
use thiserror::Error;

use crate::event::{Event, EventKind};

#[derive(Debug, Error)]
pub enum BatchError {
    #[error("body is not a JSON array of events: {0}")]
    NotAnArray(#[source] serde_json::Error),
}

/// The events of one POST, and what the lifecycle needs to know about them.
#[derive(Debug, Default)]
pub struct ParsedBatch {
    pub events: Vec<Event>,
    /// Request ids of `platform.runtimeDone` events, in order.
    pub runtime_done: Vec<String>,
    /// Request ids of `platform.report` events, in order.
    pub reports: Vec<String>,
    /// Elements that were not an object with a string `type` (passed on raw anyway).
    pub malformed: usize,
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow, rename = "type")]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    record: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct RequestRecord<'a> {
    #[serde(borrow, rename = "requestId")]
    request_id: Cow<'a, str>,
}

pub fn parse_batch(body: &Bytes) -> Result<ParsedBatch, BatchError> {
    let items: Vec<&RawValue> = serde_json::from_slice(body).map_err(BatchError::NotAnArray)?;
    let base = body.as_ptr() as usize;
    let mut batch = ParsedBatch {
        events: Vec::with_capacity(items.len()),
        ..ParsedBatch::default()
    };
    for item in items {
        let text = item.get();
        // `RawValue` borrows from `body`, so its offset locates the event's bytes in it.
        let start = text.as_ptr() as usize - base;
        let raw = body.slice(start..start + text.len());
        let kind = match serde_json::from_str::<Envelope>(text) {
            Ok(envelope) => {
                let kind = EventKind::from_type(&envelope.kind);
                if matches!(kind, EventKind::RuntimeDone | EventKind::Report) {
                    match envelope
                        .record
                        .and_then(|r| serde_json::from_str::<RequestRecord>(r.get()).ok())
                    {
                        Some(record) if kind == EventKind::RuntimeDone => {
                            batch.runtime_done.push(record.request_id.into_owned())
                        }
                        Some(record) => batch.reports.push(record.request_id.into_owned()),
                        None => batch.malformed += 1,
                    }
                }
                kind
            }
            Err(_) => {
                batch.malformed += 1;
                EventKind::Unknown
            }
        };
        batch.events.push(Event::new(raw, kind));
    }
    Ok(batch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_keep_their_exact_bytes() {
        let body = Bytes::from_static(
            br#"[ {"time":"2022-10-12T00:00:00.000Z","type":"platform.start","record":{"requestId":"a","version":"$LATEST"}},
  {"type" : "function", "record":"hello \u00e9 \"quoted\""} ,{"type":"platform.runtimeDone","record":{"status":"success","requestId":"r\u0031"}}]"#,
        );
        let batch = parse_batch(&body).expect("valid batch");
        assert_eq!(batch.events.len(), 3);
        assert_eq!(
            batch.events[1].raw(),
            br#"{"type" : "function", "record":"hello \u00e9 \"quoted\""}"#
        );
        assert_eq!(batch.events[0].kind(), EventKind::Start);
        assert_eq!(batch.events[2].kind(), EventKind::RuntimeDone);
        assert_eq!(batch.runtime_done, vec!["r1".to_string()]);
        assert_eq!(batch.malformed, 0);
    }

    #[test]
    fn odd_elements_pass_through_and_are_counted() {
        let body = Bytes::from_static(
            br#"[1,"text",{"no":"type"},{"type":"platform.report","record":"not an object"},{"type":"brand.new","record":{}}]"#,
        );
        let batch = parse_batch(&body).expect("an array");
        assert_eq!(batch.events.len(), 5);
        assert_eq!(batch.malformed, 4);
        assert_eq!(batch.events[4].kind(), EventKind::Unknown);
        assert_eq!(
            batch.events[4].raw(),
            br#"{"type":"brand.new","record":{}}"#
        );
    }

    #[test]
    fn non_arrays_and_broken_json_are_rejected() {
        for body in [&b"{}"[..], b"not json", b"[{\"type\":", b"", b"[\"\xff\"]"] {
            assert!(parse_batch(&Bytes::copy_from_slice(body)).is_err());
        }
    }
}
