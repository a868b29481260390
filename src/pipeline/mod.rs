//! The batching core shared by every sink.
//!
//! Events go into one bounded, append-only [`queue::Queue`] with a cursor per sink; a flush hands
//! each sink the events it has not yet taken, concurrently and under one deadline, and settles
//! what the sink reports done. One sink that is down neither holds back the others nor makes them
//! send twice; its events stay queued (within the limits) for the next flush. Flushes may overlap
//! (the [`delivery`] task runs them beside the lifecycle): each takes only what no flush in
//! progress holds.

pub mod delivery;
pub mod queue;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use crate::event::Event;
use crate::self_metrics::{FlushTrigger, SinkLabel, METRICS};
use queue::Queue;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a flush happens; sinks may batch differently (the raw sink's `DISPATCH_MIN_BATCH_SIZE`
/// does not apply at shutdown; OTLP metrics are collected on their own clock in the background).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushReason {
    /// At the end of an invocation, which waits for it (before the freeze): `end`, `periodic`.
    Invoke,
    /// At the end of an invocation `adaptive` held because its telemetry must not wait (sparse
    /// traffic, old events, a filling queue): everything goes, as at shutdown,
    /// `DISPATCH_MIN_BATCH_SIZE` notwithstanding.
    Overdue,
    /// Beside the lifecycle, while the function runs; nothing waits for it.
    Background,
    /// The last flushes, before `deadlineMs`.
    Shutdown,
}

impl From<FlushReason> for FlushTrigger {
    fn from(reason: FlushReason) -> FlushTrigger {
        match reason {
            FlushReason::Invoke | FlushReason::Overdue => FlushTrigger::Invoke,
            FlushReason::Background => FlushTrigger::Background,
            FlushReason::Shutdown => FlushTrigger::Shutdown,
        }
    }
}

/// What a sink gets for one flush.
pub struct FlushContext<'a> {
    pub reason: FlushReason,
    /// Everything must be done by then; the pipeline abandons the sink's future at this instant
    /// (except at shutdown, later by the time the process spent frozen: `crate::awake`).
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

/// A destination for events. Every sink gets every event; each flush's events in arrival order
/// (what a flush did not deliver comes first in a later one).
pub trait Sink: Send + Sync {
    /// Its label in the self-metrics and log lines.
    fn name(&self) -> SinkLabel;

    /// Called when an INVOKE arrives, before its telemetry does.
    fn note_invoke(&self, _info: &InvokeInfo) {}

    /// Delivers a prefix of `events`, reporting progress through `ctx.mark_done`.
    fn flush<'a>(&'a self, events: &'a [Event], ctx: FlushContext<'a>) -> BoxFuture<'a, ()>;

    /// Whether it holds data of its own that is not delivered yet (events it took and mapped):
    /// a flush beside the lifecycle then reaches it even with no new events.
    fn has_backlog(&self) -> bool {
        false
    }
}

/// What one flush achieved, per sink.
#[derive(Debug, Clone)]
pub struct SinkFlush {
    pub sink: SinkLabel,
    pub offered: usize,
    pub done: usize,
    pub timed_out: bool,
    pub dropped_by_overflow: u64,
}

pub struct Pipeline {
    queue: Mutex<Queue>,
    /// Signalled when a push leaves the queue past a quarter of either limit: the delivery task
    /// may then drain it without waiting for the next invocation (`delivery`).
    pub(crate) pressure: tokio::sync::Notify,
    sinks: Vec<Arc<dyn Sink>>,
    /// The sinks' self-metric series are created at the first flush, not at start-up: building
    /// the registry costs CPU that would otherwise delay the first `/event/next`.
    series_created: std::sync::Once,
}

impl Pipeline {
    pub fn new(sinks: Vec<Arc<dyn Sink>>, max_events: usize, max_bytes: usize) -> Pipeline {
        Pipeline {
            queue: Mutex::new(Queue::new(sinks.len(), max_events, max_bytes)),
            pressure: tokio::sync::Notify::new(),
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
        if queue.filling() {
            self.pressure.notify_one();
        }
    }

    /// Whether the queue is past a quarter of either limit.
    pub fn filling(&self) -> bool {
        self.queue().filling()
    }

    pub fn note_invoke(&self, info: &InvokeInfo) {
        for sink in &self.sinks {
            sink.note_invoke(info);
        }
    }

    /// Events queued that some sink has not delivered yet.
    pub fn pending(&self) -> usize {
        self.queue().len()
    }

    /// Whether any sink has events to take.
    pub fn has_pending(&self) -> bool {
        let queue = self.queue();
        (0..self.sinks.len()).any(|i| queue.has_pending_for(i))
    }

    /// Whether a sink holds undelivered data of its own (see [`Sink::has_backlog`]).
    pub fn sinks_have_backlog(&self) -> bool {
        self.sinks.iter().any(|s| s.has_backlog())
    }

    /// When the oldest event some sink has not delivered arrived.
    pub fn oldest_undelivered_since(&self) -> Option<Instant> {
        self.queue().oldest_undelivered_since()
    }

    /// What the sinks have not taken yet, and since when (see [`queue::Queue::untaken`]).
    pub fn untaken(&self) -> queue::Untaken {
        self.queue().untaken()
    }

    pub fn sink_names(&self) -> Vec<&'static str> {
        self.sinks.iter().map(|s| s.name().as_str()).collect()
    }

    /// Offers every sink what it has not taken yet (what it owes first), concurrently, until
    /// `deadline`. Flushes may run at the same time: each takes only what the others do not hold.
    pub async fn flush(&self, reason: FlushReason, deadline: Instant) -> Vec<SinkFlush> {
        self.series_created.call_once(|| {
            for sink in &self.sinks {
                METRICS.init_sink(sink.name());
            }
        });
        let batches: Vec<(Option<queue::Taken>, u64)> = {
            let mut queue = self.queue();
            (0..self.sinks.len())
                .map(|i| (queue.take(i), queue.take_dropped(i)))
                .collect()
        };
        let progress: Vec<AtomicUsize> =
            (0..self.sinks.len()).map(|_| AtomicUsize::new(0)).collect();
        let flushes = self.sinks.iter().zip(&batches).zip(&progress).map(
            |((sink, (taken, _)), done)| async move {
                // A flush something waits for also reaches a sink with nothing new: it may hold
                // data of its own (OTLP's mapped spans, logs and metrics) to send before a freeze.
                let events: &[Event] = match taken {
                    Some(taken) => &taken.events,
                    None if reason == FlushReason::Background && !sink.has_backlog() => {
                        return false
                    }
                    None => &[],
                };
                let ctx = FlushContext {
                    reason,
                    deadline,
                    done,
                };
                // Building the sink's future runs its code too (OTLP builds its SDK state there):
                // a panic then must not take the flush down before it settles what it took.
                let delivery = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    sink.flush(events, ctx)
                })) {
                    Ok(future) => CatchPanic(future),
                    Err(_) => {
                        tracing::error!(
                            sink = %sink.name(),
                            "sink panicked starting a flush; its events stay queued"
                        );
                        return false;
                    }
                };
                // No freeze comes after SHUTDOWN, and Lambda kills at its deadline: a hard cut.
                let outcome = if reason == FlushReason::Shutdown {
                    tokio::time::timeout_at(deadline, delivery).await.ok()
                } else {
                    crate::awake::timeout_at(deadline, delivery).await.ok()
                };
                match outcome {
                    Some(Ok(())) => false,
                    Some(Err(())) => {
                        tracing::error!(
                            sink = %sink.name(),
                            "sink panicked during a flush; its undelivered events stay queued"
                        );
                        false
                    }
                    None => true,
                }
            },
        );
        let timed_out = join_all(flushes).await;

        let mut queue = self.queue();
        let mut report = Vec::with_capacity(self.sinks.len());
        for (i, ((taken, dropped), done)) in batches.iter().zip(&progress).enumerate() {
            let offered = taken.as_ref().map_or(0, |t| t.events.len());
            let done = done.load(Ordering::Relaxed).min(offered);
            if let Some(taken) = taken {
                queue.settle(i, taken, done);
            }
            report.push(SinkFlush {
                sink: self.sinks[i].name(),
                offered,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventKind;
    use bytes::Bytes;

    /// What a test sink does with the events it is offered.
    #[derive(Clone, Copy)]
    enum Behaviour {
        /// Delivers everything.
        Deliver,
        /// Delivers this many, then panics.
        PanicAfter(usize),
        /// Delivers this many, then never finishes.
        StallAfter(usize),
    }

    struct TestSink {
        label: SinkLabel,
        behaviour: Mutex<Behaviour>,
        /// Every event delivered, in order (its bytes).
        delivered: Mutex<Vec<Vec<u8>>>,
        /// Every batch offered (its events' bytes).
        offered: Mutex<Vec<Vec<Vec<u8>>>>,
    }

    impl TestSink {
        fn new(label: SinkLabel, behaviour: Behaviour) -> Arc<TestSink> {
            Arc::new(TestSink {
                label,
                behaviour: Mutex::new(behaviour),
                delivered: Mutex::new(Vec::new()),
                offered: Mutex::new(Vec::new()),
            })
        }

        fn delivered(&self) -> Vec<Vec<u8>> {
            self.delivered.lock().expect("lock").clone()
        }

        fn offered(&self) -> Vec<Vec<Vec<u8>>> {
            self.offered.lock().expect("lock").clone()
        }

        fn set(&self, behaviour: Behaviour) {
            *self.behaviour.lock().expect("lock") = behaviour;
        }
    }

    impl Sink for TestSink {
        fn name(&self) -> SinkLabel {
            self.label
        }

        fn flush<'a>(&'a self, events: &'a [Event], ctx: FlushContext<'a>) -> BoxFuture<'a, ()> {
            let behaviour = *self.behaviour.lock().expect("lock");
            Box::pin(async move {
                self.offered
                    .lock()
                    .expect("lock")
                    .push(events.iter().map(|e| e.raw().to_vec()).collect());
                let deliverable = match behaviour {
                    Behaviour::Deliver => events.len(),
                    Behaviour::PanicAfter(n) | Behaviour::StallAfter(n) => n.min(events.len()),
                };
                for (i, event) in events[..deliverable].iter().enumerate() {
                    self.delivered
                        .lock()
                        .expect("lock")
                        .push(event.raw().to_vec());
                    ctx.mark_done(i + 1);
                    tokio::task::yield_now().await;
                }
                match behaviour {
                    Behaviour::Deliver => {}
                    Behaviour::PanicAfter(_) => panic!("a sink bug"),
                    Behaviour::StallAfter(_) => std::future::pending::<()>().await,
                }
            })
        }
    }

    fn events(range: std::ops::Range<usize>) -> Vec<Event> {
        range
            .map(|i| {
                Event::new(
                    Bytes::from(format!(r#"{{"type":"function","record":"{i}"}}"#)),
                    EventKind::FunctionLog,
                )
            })
            .collect()
    }

    fn raw(range: std::ops::Range<usize>) -> Vec<Vec<u8>> {
        events(range).iter().map(|e| e.raw().to_vec()).collect()
    }

    fn pipeline(sinks: &[&Arc<TestSink>]) -> Pipeline {
        let sinks = sinks
            .iter()
            .map(|s| (*s).clone() as Arc<dyn Sink>)
            .collect();
        Pipeline::new(sinks, 1000, 1 << 20)
    }

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(5)
    }

    #[tokio::test]
    async fn every_sink_gets_every_event_once_in_order() {
        let (a, b) = (
            TestSink::new(SinkLabel::RawJson, Behaviour::Deliver),
            TestSink::new(SinkLabel::Otlp, Behaviour::Deliver),
        );
        let pipeline = pipeline(&[&a, &b]);
        pipeline.push(events(0..3));
        pipeline.flush(FlushReason::Invoke, soon()).await;
        pipeline.push(events(3..5));
        let report = pipeline.flush(FlushReason::Invoke, soon()).await;
        for sink in [&a, &b] {
            assert_eq!(sink.delivered(), raw(0..5));
        }
        assert_eq!(report[0].offered, 2);
        assert_eq!(report[0].done, 2);
        assert_eq!(pipeline.pending(), 0);
    }

    #[tokio::test]
    async fn a_panicking_sink_keeps_its_cursor_and_the_other_sink_delivers() {
        let good = TestSink::new(SinkLabel::RawJson, Behaviour::Deliver);
        let buggy = TestSink::new(SinkLabel::Otlp, Behaviour::PanicAfter(2));
        let pipeline = pipeline(&[&good, &buggy]);
        pipeline.push(events(0..5));
        let report = pipeline.flush(FlushReason::Invoke, soon()).await;
        assert_eq!(good.delivered(), raw(0..5));
        assert_eq!((report[0].done, report[1].done), (5, 2));
        assert!(!report[1].timed_out);
        // The 3 events the buggy sink did not take stay queued for it, and only for it.
        assert_eq!(pipeline.pending(), 3);
        buggy.set(Behaviour::Deliver);
        let report = pipeline.flush(FlushReason::Invoke, soon()).await;
        assert_eq!(buggy.offered()[1], raw(2..5));
        assert_eq!(buggy.delivered(), raw(0..5));
        assert_eq!((report[0].offered, report[1].offered), (0, 3));
        assert_eq!(
            good.offered()
                .iter()
                .filter(|batch| !batch.is_empty())
                .count(),
            1,
            "nothing offered twice to the good sink"
        );
        assert_eq!(pipeline.pending(), 0);
    }

    /// A flush something waits for reaches every sink, with nothing new too (OTLP sends what it
    /// mapped earlier then); one beside the lifecycle does not bother a sink with nothing new.
    #[tokio::test]
    async fn only_flushes_something_waits_for_reach_a_sink_with_nothing_new() {
        let sink = TestSink::new(SinkLabel::RawJson, Behaviour::Deliver);
        let pipeline = pipeline(&[&sink]);
        pipeline.flush(FlushReason::Background, soon()).await;
        assert!(sink.offered().is_empty());
        for reason in [FlushReason::Overdue, FlushReason::Shutdown] {
            pipeline.flush(reason, soon()).await;
        }
        assert_eq!(sink.offered(), vec![Vec::<Vec<u8>>::new(); 2]);
    }

    #[tokio::test]
    async fn a_stuck_sink_is_cut_at_the_deadline_and_keeps_what_it_did() {
        let good = TestSink::new(SinkLabel::RawJson, Behaviour::Deliver);
        let stuck = TestSink::new(SinkLabel::Otlp, Behaviour::StallAfter(1));
        let pipeline = pipeline(&[&good, &stuck]);
        pipeline.push(events(0..4));
        let deadline = Instant::now() + Duration::from_millis(50);
        let report = pipeline.flush(FlushReason::Invoke, deadline).await;
        assert!(Instant::now() >= deadline);
        assert!(report[1].timed_out && !report[0].timed_out);
        assert_eq!((report[0].done, report[1].done), (4, 1));
        assert_eq!(good.delivered(), raw(0..4));
        stuck.set(Behaviour::Deliver);
        pipeline.flush(FlushReason::Shutdown, soon()).await;
        assert_eq!(stuck.offered()[1], raw(1..4));
        assert_eq!(stuck.delivered(), raw(0..4));
        assert_eq!(pipeline.pending(), 0);
    }
}
