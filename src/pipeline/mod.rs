//! The batching core shared by every sink.
//!
//! Events go into one bounded, append-only [`queue::Queue`] with a cursor per sink; a flush hands
//! each sink the events it has not yet taken, concurrently and under one deadline, and advances
//! its cursor by what the sink reports done. One sink that is down neither holds back the others
//! nor makes them send twice; its events stay queued (within the limits) for the next flush.

pub mod queue;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use crate::event::Event;
use crate::self_metrics::METRICS;
use queue::Queue;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a flush happens; sinks may batch differently (the raw sink's `DISPATCH_MIN_BATCH_SIZE`
/// applies to invoke flushes only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushReason {
    Invoke,
    Shutdown,
}

/// What a sink gets for one flush.
pub struct FlushContext<'a> {
    pub reason: FlushReason,
    /// Everything must be done by then; the pipeline abandons the sink's future at this instant.
    pub deadline: Instant,
    /// The sink raises this to the number of leading events it is done with (delivered, or
    /// dropped on purpose) as it goes, so progress survives the deadline cutting it short.
    pub done: &'a AtomicUsize,
}

impl FlushContext<'_> {
    pub fn mark_done(&self, count: usize) {
        self.done.fetch_max(count, Ordering::Relaxed);
    }

    pub fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }
}

/// What the lifecycle learns from an INVOKE event that the Telemetry API does not repeat.
#[derive(Debug, Clone, Default)]
pub struct InvokeInfo {
    pub request_id: String,
    pub invoked_function_arn: Option<String>,
    /// The X-Ray header value.
    pub tracing: Option<String>,
}

/// A destination for events. Every sink gets every event, in arrival order.
pub trait Sink: Send + Sync {
    fn name(&self) -> &'static str;

    /// Called when an INVOKE arrives, before its telemetry does.
    fn note_invoke(&self, _info: &InvokeInfo) {}

    /// Delivers a prefix of `events`, reporting progress through `ctx.mark_done`.
    fn flush<'a>(&'a self, events: &'a [Event], ctx: FlushContext<'a>) -> BoxFuture<'a, ()>;
}

/// What one flush achieved, per sink.
#[derive(Debug, Clone)]
pub struct SinkFlush {
    pub sink: &'static str,
    pub offered: usize,
    pub done: usize,
    pub timed_out: bool,
    pub dropped_by_overflow: u64,
}

pub struct Pipeline {
    queue: Mutex<Queue>,
    sinks: Vec<Arc<dyn Sink>>,
    /// The sinks' self-metric series are created at the first flush, not at start-up: building
    /// the registry costs CPU that would otherwise delay the first `/event/next`.
    series_created: std::sync::Once,
}

impl Pipeline {
    pub fn new(sinks: Vec<Arc<dyn Sink>>, max_events: usize, max_bytes: usize) -> Pipeline {
        Pipeline {
            queue: Mutex::new(Queue::new(sinks.len(), max_events, max_bytes)),
            sinks,
            series_created: std::sync::Once::new(),
        }
    }

    fn queue(&self) -> MutexGuard<'_, Queue> {
        // A poisoned lock only means another thread panicked mid-push; the queue's invariants
        // hold between statements, so keep going rather than lose telemetry.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn push(&self, events: Vec<Event>) {
        let mut queue = self.queue();
        queue.push(events);
        METRICS.queue_depth_events.set(queue.len() as i64);
        METRICS.queue_depth_bytes.set(queue.bytes() as i64);
    }

    pub fn note_invoke(&self, info: &InvokeInfo) {
        for sink in &self.sinks {
            sink.note_invoke(info);
        }
    }

    /// Events queued and not yet taken by the slowest sink.
    pub fn pending(&self) -> usize {
        self.queue().len()
    }

    pub fn sink_names(&self) -> Vec<&'static str> {
        self.sinks.iter().map(|s| s.name()).collect()
    }

    /// Offers every sink its pending events, concurrently, until `deadline`.
    pub async fn flush(&self, reason: FlushReason, deadline: Instant) -> Vec<SinkFlush> {
        self.series_created.call_once(|| {
            for sink in &self.sinks {
                METRICS.init_sink(sink.name());
            }
        });
        let batches: Vec<(u64, Vec<Event>, u64)> = {
            let mut queue = self.queue();
            (0..self.sinks.len())
                .map(|i| {
                    let (start, events) = queue.pending_for(i);
                    (start, events, queue.take_dropped(i))
                })
                .collect()
        };
        let progress: Vec<AtomicUsize> =
            (0..self.sinks.len()).map(|_| AtomicUsize::new(0)).collect();
        let flushes = self.sinks.iter().zip(&batches).zip(&progress).map(
            |((sink, (_, events, _)), done)| async move {
                if events.is_empty() {
                    return false;
                }
                let ctx = FlushContext {
                    reason,
                    deadline,
                    done,
                };
                match tokio::time::timeout_at(deadline, CatchPanic(sink.flush(events, ctx))).await {
                    Ok(Ok(())) => false,
                    Ok(Err(())) => {
                        tracing::error!(
                            sink = sink.name(),
                            "sink panicked during a flush; its undelivered events stay queued"
                        );
                        false
                    }
                    Err(_) => true,
                }
            },
        );
        let timed_out = join_all(flushes).await;

        let mut queue = self.queue();
        let mut report = Vec::with_capacity(self.sinks.len());
        for (i, ((start, events, dropped), done)) in batches.iter().zip(&progress).enumerate() {
            let done = done.load(Ordering::Relaxed).min(events.len());
            queue.advance(i, *start, done);
            report.push(SinkFlush {
                sink: self.sinks[i].name(),
                offered: events.len(),
                done,
                timed_out: timed_out[i],
                dropped_by_overflow: *dropped,
            });
        }
        queue.trim();
        METRICS.queue_depth_events.set(queue.len() as i64);
        METRICS.queue_depth_bytes.set(queue.bytes() as i64);
        report
    }
}

/// Turns a panic while polling the inner future into `Err(())`: a sink's bug must never take
/// the extension (and with it the function's telemetry lifecycle) down.
pub(crate) struct CatchPanic<F>(pub(crate) F);

impl<F: Future + Unpin> Future for CatchPanic<F> {
    type Output = Result<F::Output, ()>;

    fn poll(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let inner = &mut self.0;
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            Pin::new(&mut *inner).poll(cx)
        })) {
            Ok(std::task::Poll::Ready(v)) => std::task::Poll::Ready(Ok(v)),
            Ok(std::task::Poll::Pending) => std::task::Poll::Pending,
            Err(_) => std::task::Poll::Ready(Err(())),
        }
    }
}

/// Runs futures concurrently on the current task and collects their outputs in order.
async fn join_all<F: Future>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    let mut futures: Vec<Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in futures.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *output = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().flatten().collect()
}
