//! Splits a Telemetry API POST body into events without copying or re-serialising them.
//!
//! The body is parsed once into borrowed `RawValue`s; each event becomes a zero-copy slice of
//! the body. Only `type` (and `record.requestId` for the events the lifecycle waits on) is
//! read, and no byte after them. Elements that are not well-formed events are still passed on
//! raw, and counted.

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
    /// Lambda sends at most the subscription's `maxItems` events in one POST. Each element costs
    /// its bookkeeping (~60 bytes) beyond its bytes, so an array of tiny elements, which Lambda
    /// never sends, would cost memory out of proportion to its size: it is refused unread.
    #[error("more than {max_items} elements (the subscription's maxItems)")]
    TooManyElements { max_items: usize },
}

/// Collects the array's elements as borrowed raw values, at most `max` of them: parsing stops
/// (with an error, noted in `overflow`) at the first element beyond, before it is allocated for.
struct BoundedVisitor<'o> {
    max: usize,
    overflow: &'o std::cell::Cell<bool>,
}

impl<'de> serde::de::Visitor<'de> for BoundedVisitor<'_> {
    type Value = Vec<&'de RawValue>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON array")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(self.max));
        while let Some(item) = seq.next_element::<&'de RawValue>()? {
            if items.len() == self.max {
                self.overflow.set(true);
                return Err(serde::de::Error::custom("too many elements"));
            }
            items.push(item);
        }
        Ok(items)
    }
}

/// The events of one POST, and what the lifecycle needs to know about them.
#[derive(Debug, Default)]
pub struct ParsedBatch {
    pub events: Vec<Event>,
    /// Request ids of `platform.start` events, in order (only when asked for: Managed
    /// Instances, where shutdown waits for every started invocation).
    pub starts: Vec<String>,
    /// Request ids of `platform.runtimeDone` events, in order.
    pub runtime_done: Vec<String>,
    /// Request ids of `platform.report` events, in order.
    pub reports: Vec<String>,
    /// Elements that were not an object with a string `type` (passed on raw anyway).
    pub malformed: usize,
}

/// A string borrowed from the event when it has no escapes (type names, keys, request ids
/// always), owned otherwise. (`Cow<str>`'s own `Deserialize` always copies.)
struct Text<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Text<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct TextVisitor;
        impl<'de> serde::de::Visitor<'de> for TextVisitor {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(v.to_string())))
            }
        }
        d.deserialize_str(TextVisitor)
    }
}

#[derive(Deserialize)]
struct RequestRecord<'a> {
    #[serde(borrow, rename = "requestId")]
    request_id: Cow<'a, str>,
}

/// What the lifecycle needs of one event: its type, and the request id of the events it waits
/// on. Read from the event's head and no further: Lambda writes `time`, `type`, `record` in that
/// order, so for most events (log lines) parsing stops after `type`, a few dozen bytes in, instead
/// of reading the whole record (the sinks that need it parse it themselves).
#[derive(Default)]
struct Head<'a> {
    kind: Option<EventKind>,
    /// `Some(None)`: wanted but absent or not a request record.
    request_id: Option<Option<Cow<'a, str>>>,
}

/// Returned by the visitor to stop reading an event once its head is known.
const HEAD_READ: &str = "head read";

struct HeadVisitor<'h, 'a> {
    head: &'h mut Head<'a>,
    starts: bool,
}

impl HeadVisitor<'_, '_> {
    fn wants_request_id(&self, kind: EventKind) -> bool {
        matches!(kind, EventKind::RuntimeDone | EventKind::Report)
            || (self.starts && kind == EventKind::Start)
    }
}

impl<'de> serde::de::Visitor<'de> for HeadVisitor<'_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an event object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        use serde::de::Error as _;
        // A record before the type (not Lambda's order): kept until the type says if it matters.
        let mut early_record: Option<&'de RawValue> = None;
        while let Some(Text(key)) = map.next_key::<Text<'de>>()? {
            match key.as_ref() {
                "type" if self.head.kind.is_none() => {
                    let Text(kind) = map.next_value::<Text<'de>>()?;
                    let kind = EventKind::from_type(&kind);
                    self.head.kind = Some(kind);
                    if !self.wants_request_id(kind) {
                        return Err(A::Error::custom(HEAD_READ));
                    }
                    if let Some(record) = early_record {
                        self.head.request_id = Some(request_id_of(record));
                        return Err(A::Error::custom(HEAD_READ));
                    }
                }
                "record" if self.head.kind.is_some() => {
                    let record = map.next_value::<Option<RequestRecord<'de>>>();
                    self.head.request_id = Some(record.ok().flatten().map(|r| r.request_id));
                    return Err(A::Error::custom(HEAD_READ));
                }
                "record" => early_record = Some(map.next_value::<&'de RawValue>()?),
                _ => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
        if self.head.kind.is_some_and(|k| self.wants_request_id(k)) {
            self.head.request_id = Some(early_record.and_then(request_id_of));
        }
        Ok(())
    }
}

fn request_id_of(record: &RawValue) -> Option<Cow<'_, str>> {
    serde_json::from_str::<RequestRecord>(record.get())
        .ok()
        .map(|r| r.request_id)
}

/// The head of one event (see [`Head`]); `kind` is `None` when it is not an object with a string
/// `type`.
fn read_head(text: &str, starts: bool) -> Head<'_> {
    let mut head = Head::default();
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let visitor = HeadVisitor {
        head: &mut head,
        starts,
    };
    // Stopping early is an error by serde's rules; what was read is in `head` either way.
    let _ = serde::Deserializer::deserialize_map(&mut deserializer, visitor);
    head
}

/// Splits `body`, a JSON array of at most `max_items` elements; with `starts`, also reads the
/// request ids of `platform.start` events.
pub fn parse_batch(
    body: &Bytes,
    max_items: usize,
    starts: bool,
) -> Result<ParsedBatch, BatchError> {
    let overflow = std::cell::Cell::new(false);
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let visitor = BoundedVisitor {
        max: max_items,
        overflow: &overflow,
    };
    let items = serde::Deserializer::deserialize_seq(&mut deserializer, visitor)
        .and_then(|items| deserializer.end().map(|()| items))
        .map_err(|e| match overflow.get() {
            true => BatchError::TooManyElements { max_items },
            false => BatchError::NotAnArray(e),
        })?;
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
        let head = read_head(text, starts);
        let kind = match head.kind {
            Some(kind) => {
                if let Some(request_id) = head.request_id {
                    let ids = match kind {
                        EventKind::Start => &mut batch.starts,
                        EventKind::RuntimeDone => &mut batch.runtime_done,
                        _ => &mut batch.reports,
                    };
                    match request_id {
                        Some(id) => ids.push(id.into_owned()),
                        None => batch.malformed += 1,
                    }
                }
                kind
            }
            None => {
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
        let batch = parse_batch(&body, 1000, true).expect("valid batch");
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

    /// The head is found in any field order, with escapes, and with the record first.
    #[test]
    fn the_head_is_read_in_any_order() {
        let body = Bytes::from_static(
            br#"[{"record":{"requestId":"early","status":"success"},"time":"x","type":"platform.runtimeDone"},
  {"type":"platform.rep\u006frt","record":{"status":"success","requestId":"esc\u0061ped"}},
  {"time":"x","type":"platform.start","record":{"requestId":"not-read"}},
  {"type":"platform.report","extra":[1,{"a":2}],"record":{"metrics":{},"requestId":"after-extra"}},
  {"type":"platform.runtimeDone"}]"#,
        );
        let batch = parse_batch(&body, 1000, false).expect("valid batch");
        let kinds: Vec<EventKind> = batch.events.iter().map(Event::kind).collect();
        assert_eq!(
            kinds,
            [
                EventKind::RuntimeDone,
                EventKind::Report,
                EventKind::Start,
                EventKind::Report,
                EventKind::RuntimeDone
            ]
        );
        assert_eq!(batch.runtime_done, vec!["early".to_string()]);
        assert_eq!(batch.reports, vec!["escaped", "after-extra"]);
        assert!(batch.starts.is_empty(), "starts not asked for");
        assert_eq!(batch.malformed, 1, "a runtimeDone without a record");
    }

    #[test]
    fn odd_elements_pass_through_and_are_counted() {
        let body = Bytes::from_static(
            br#"[1,"text",{"no":"type"},{"type":"platform.report","record":"not an object"},{"type":"brand.new","record":{}}]"#,
        );
        let batch = parse_batch(&body, 1000, true).expect("an array");
        assert_eq!(batch.events.len(), 5);
        assert_eq!(batch.malformed, 4);
        assert_eq!(batch.events[4].kind(), EventKind::Unknown);
        assert_eq!(
            batch.events[4].raw(),
            br#"{"type":"brand.new","record":{}}"#
        );
    }

    #[test]
    fn more_elements_than_max_items_are_refused() {
        let body = |n: usize| Bytes::from(format!("[{}]", vec!["1"; n].join(",")));
        assert_eq!(
            parse_batch(&body(3), 3, true)
                .expect("at the limit")
                .events
                .len(),
            3
        );
        for n in [4, 5, 1000] {
            assert!(matches!(
                parse_batch(&body(n), 3, true),
                Err(BatchError::TooManyElements { max_items: 3 })
            ));
        }
        assert_eq!(
            parse_batch(&body(0), 3, true).expect("empty").events.len(),
            0
        );
    }

    #[test]
    fn non_arrays_and_broken_json_are_rejected() {
        for body in [&b"{}"[..], b"not json", b"[{\"type\":", b"", b"[\"\xff\"]"] {
            assert!(parse_batch(&Bytes::copy_from_slice(body), 1000, true).is_err());
        }
    }
}
