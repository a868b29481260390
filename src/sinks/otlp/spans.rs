//! Building spans. Platform events are replayed, not observed live, so every span is a
//! `SpanData` value with the platform's own timestamps and ids, built here and handed to the
//! exporter directly (the SDK's `SpanBuilder` cannot set ids or an end time).

use std::borrow::Cow;
use std::time::SystemTime;

use opentelemetry::trace::{
    Link, SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};

pub(super) fn random_trace_id() -> TraceId {
    TraceId::from_bytes(fastrand::u128(1..).to_be_bytes())
}

pub(super) fn random_span_id() -> SpanId {
    SpanId::from_bytes(fastrand::u64(1..).to_be_bytes())
}

/// What one span is made of; [`Span::build`] turns it into the exporter's `SpanData`.
pub(super) struct Span {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub flags: TraceFlags,
    /// The parent and whether it is remote (from an X-Ray header).
    pub parent: Option<(SpanId, bool)>,
    pub kind: SpanKind,
    pub name: Cow<'static, str>,
    pub start: SystemTime,
    pub end: SystemTime,
    pub attributes: Vec<KeyValue>,
    pub links: SpanLinks,
    pub status: Status,
}

impl Span {
    /// An INTERNAL child of `parent` in its trace, with a fresh span id: the phases of an
    /// invocation (`responseLatency`, …, `extensionOverhead`).
    pub fn child(
        (trace_id, flags): (TraceId, TraceFlags),
        parent: SpanId,
        name: String,
        start: SystemTime,
        end: SystemTime,
        attributes: Vec<KeyValue>,
    ) -> Span {
        Span {
            trace_id,
            span_id: random_span_id(),
            flags,
            parent: Some((parent, false)),
            kind: SpanKind::Internal,
            name: name.into(),
            start,
            end,
            attributes,
            links: SpanLinks::default(),
            status: Status::Unset,
        }
    }

    /// The exported value; an end before the start (clock skew between events) becomes the start.
    pub fn build(self, scope: &InstrumentationScope) -> SpanData {
        let (parent_span_id, parent_span_is_remote) =
            self.parent.unwrap_or((SpanId::INVALID, false));
        SpanData {
            span_context: SpanContext::new(
                self.trace_id,
                self.span_id,
                self.flags,
                false,
                TraceState::default(),
            ),
            parent_span_id,
            parent_span_is_remote,
            span_kind: self.kind,
            name: self.name,
            start_time: self.start,
            end_time: self.end.max(self.start),
            attributes: self.attributes,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: self.links,
            status: self.status,
            instrumentation_scope: scope.clone(),
        }
    }
}

/// The link from a cold start's invocation span to the init (or restore) span.
pub(super) fn link_to_init((trace_id, span_id): (TraceId, SpanId)) -> SpanLinks {
    let mut links = SpanLinks::default();
    links.links.push(Link::new(
        SpanContext::new(
            trace_id,
            span_id,
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        ),
        vec![KeyValue::new("aws.lambda.link", "init")],
        0,
    ));
    links
}
