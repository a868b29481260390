//! The raw JSON sink: POSTs events to `DISPATCH_POST_URI` as a JSON array, each event's bytes
//! exactly as Lambda sent them, each once across all POSTs; in arrival order within a flush, and
//! across flushes when one runs at a time (`end`, `periodic`, `shutdown`; under `adaptive` a
//! flush that overlapped another or was retried may arrive after a newer one).

pub mod config;

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use reqwest::header::{HeaderMap, HeaderValue, CONTENT_TYPE};

use crate::config::url::redact_url;
use crate::event::Event;
use crate::http::{
    header_map, post_with_retry, Delivered, Endpoint, HttpError, LazyClient, PostError,
};
use crate::masking::Masking;
use crate::pipeline::{BoxFuture, FlushContext, FlushReason, Sink};
use crate::self_metrics::{Dropped, Failure, SinkLabel, METRICS};
use config::DispatchConfig;

/// Upper bound of one POST body; larger backlogs go in several POSTs.
const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

pub struct RawJsonSink {
    endpoint: Endpoint,
    shown_url: String,
    headers: HeaderMap,
    min_batch_size: usize,
    /// `BRIDGE_MASK_RAW`: the events' strings masked before they leave.
    masking: Option<Arc<Masking>>,
    client: Arc<LazyClient>,
}

const SINK: SinkLabel = SinkLabel::RawJson;

impl RawJsonSink {
    pub fn new(
        config: &DispatchConfig,
        masking: Option<Arc<Masking>>,
        client: Arc<LazyClient>,
    ) -> Result<RawJsonSink, HttpError> {
        Ok(RawJsonSink {
            endpoint: Endpoint::new(config.uri.clone()),
            shown_url: redact_url(&config.uri),
            headers: {
                let mut headers = header_map(&config.headers, "BRIDGE_DISPATCH_HEADERS")?;
                headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                headers
            },
            min_batch_size: config.min_batch_size,
            masking,
            client,
        })
    }

    async fn deliver(&self, events: &[Event], ctx: FlushContext<'_>) {
        // The seed's rule: dispatch only when more than the minimum are waiting (at shutdown and
        // when telemetry is overdue, everything goes).
        let batching = matches!(ctx.reason, FlushReason::Invoke | FlushReason::Background);
        if events.is_empty() || (batching && events.len() <= self.min_batch_size) {
            tracing::debug!(
                waiting = events.len(),
                min = self.min_batch_size,
                "raw JSON: batch below DISPATCH_MIN_BATCH_SIZE, kept for later"
            );
            return;
        }
        let client = match self.client.get() {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "raw JSON: no HTTP client; events stay queued");
                return;
            }
        };
        // Masked copies of the events that a rule changed; the others are shared as they are.
        let masked: Option<Vec<Event>> = self.masking.as_ref().map(|masking| {
            events
                .iter()
                .map(|e| match masking.mask_json(e.raw(), SINK) {
                    Some(bytes) => Event::new(Bytes::from(bytes), e.kind()),
                    None => e.clone(),
                })
                .collect()
        });
        let events = masked.as_deref().unwrap_or(events);
        let mut done = 0;
        while done < events.len() {
            let (body, count) = encode_array(&events[done..]);
            let size = body.len();
            match post_with_retry(
                client,
                &self.endpoint,
                &self.headers,
                body,
                ctx.deadline,
                ctx.remaining(),
            )
            .await
            {
                Ok(Delivered { attempts, .. }) => {
                    METRICS.request_delivered(SINK, size as u64);
                    METRICS.items_delivered(SINK, count as u64);
                    METRICS.retried(SINK, u64::from(attempts - 1));
                    tracing::debug!(
                        events = count,
                        bytes = size,
                        attempts,
                        "raw JSON: batch delivered"
                    );
                }
                Err(PostError::Rejected(status)) => {
                    METRICS.failed(SINK, Failure::Rejected);
                    METRICS.dropped(SINK, Dropped::Rejected, count as u64);
                    tracing::error!(
                        status = status.as_u16(),
                        endpoint = %self.shown_url,
                        events = count,
                        "raw JSON: endpoint rejected the batch; dropped (not retried)"
                    );
                }
                Err(e @ PostError::GaveUp { attempts, .. }) => {
                    METRICS.failed(SINK, Failure::GaveUp);
                    METRICS.retried(SINK, u64::from(attempts.saturating_sub(1)));
                    tracing::warn!(
                        endpoint = %self.shown_url,
                        events = events.len() - done,
                        error = %e,
                        "raw JSON: delivery failed; events stay queued for the next flush"
                    );
                    return;
                }
            }
            done += count;
            ctx.mark_done(done);
        }
    }
}

impl Sink for RawJsonSink {
    fn name(&self) -> SinkLabel {
        SINK
    }

    fn flush<'a>(&'a self, events: &'a [Event], ctx: FlushContext<'a>) -> BoxFuture<'a, ()> {
        Box::pin(self.deliver(events, ctx))
    }
}

/// `[` + events joined by `,` + `]`, stopping before [`MAX_BODY_BYTES`] (at least one event).
pub fn encode_array(events: &[Event]) -> (Bytes, usize) {
    let mut size = 2;
    let mut count = 0;
    for event in events {
        let next = size + event.size() + usize::from(count > 0);
        if count > 0 && next > MAX_BODY_BYTES {
            break;
        }
        size = next;
        count += 1;
    }
    let mut body = BytesMut::with_capacity(size);
    body.put_u8(b'[');
    for (i, event) in events[..count].iter().enumerate() {
        if i > 0 {
            body.put_u8(b',');
        }
        body.put_slice(event.raw());
    }
    body.put_u8(b']');
    (body.freeze(), count)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventKind;

    #[test]
    fn array_is_the_events_joined() {
        let events = vec![
            Event::new(Bytes::from_static(b"{\"a\":1}"), EventKind::Unknown),
            Event::new(Bytes::from_static(b" \"x\" "), EventKind::Unknown),
        ];
        let (body, n) = encode_array(&events);
        assert_eq!(n, 2);
        assert_eq!(&body[..], b"[{\"a\":1}, \"x\" ]");
    }

    #[test]
    fn big_backlogs_are_split() {
        let big = Bytes::from(vec![b'1'; MAX_BODY_BYTES / 2]);
        let events: Vec<Event> = (0..3)
            .map(|_| Event::new(big.clone(), EventKind::Unknown))
            .collect();
        let (body, n) = encode_array(&events);
        assert_eq!(n, 1);
        assert!(body.len() <= MAX_BODY_BYTES);
    }
}
