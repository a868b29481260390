//! The delivery task: flushes the pipeline beside the lifecycle.
//!
//! The lifecycle only says what is due: [`Delivery::kick`] starts delivering what is queued and
//! returns at once (the invocation is not held), [`Delivery::flush`] delivers everything queued,
//! lets the flushes in progress finish, and answers when all are done or the deadline passed
//! (the invocation or the shutdown waits for it). Flushes run as tasks of their own, so a slow
//! endpoint's round trip does not hold back what arrives meanwhile: up to [`MAX_BACKGROUND`]
//! background flushes are in flight at once, each with what the others do not hold.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::{FlushReason, Pipeline, SinkFlush};
use crate::self_metrics::{Dropped, METRICS};

/// Background flushes in flight at most; a kick beyond them waits for one to finish.
pub const MAX_BACKGROUND: usize = 4;

enum Order {
    Kick,
    /// Deliver what is queued at this instant (or at an earlier one already asked for).
    KickAt(Instant),
    Tick,
    Flush {
        reason: FlushReason,
        deadline: Instant,
        answer: oneshot::Sender<bool>,
    },
}

/// The lifecycle's handle on the delivery task.
#[derive(Clone)]
pub struct Delivery {
    orders: mpsc::UnboundedSender<Order>,
    pipeline: Arc<Pipeline>,
}

impl Delivery {
    /// Starts the task; background flushes get `flush_timeout` each. With `drain_when_filling`,
    /// a queue past a quarter of its limits is delivered as it fills, not only when the next
    /// invocation begins (the `adaptive` policy: a function that logs faster than one
    /// invocation's flush drains would otherwise lose the oldest events to the limits).
    pub fn start(
        pipeline: Arc<Pipeline>,
        flush_timeout: Duration,
        drain_when_filling: bool,
    ) -> Delivery {
        let (orders, received) = mpsc::unbounded_channel();
        tokio::spawn(run(
            pipeline.clone(),
            received,
            flush_timeout,
            drain_when_filling,
        ));
        Delivery { orders, pipeline }
    }

    /// Starts delivering what is queued; nothing waits for it.
    pub fn kick(&self) {
        if self.pipeline.has_pending() {
            let _ = self.orders.send(Order::Kick);
        }
    }

    /// Delivers what is queued at `at`, beside the lifecycle (steady `adaptive`: once the oldest
    /// event reaches its freshness target). A kick before then delivers it sooner; an earlier
    /// `at` already asked for stands.
    pub fn kick_at(&self, at: Instant) {
        let _ = self.orders.send(Order::KickAt(at));
    }

    /// A tick of the delivery timer (Managed Instances): delivers what is queued, and what a
    /// sink still holds from earlier flushes (an export that failed or was skipped), unless the
    /// last flush beside the lifecycle delivered nothing it was offered less than a flush
    /// timeout ago (an endpoint down: each tick would encode the backlog again).
    pub fn tick(&self) {
        if self.pipeline.has_pending() || self.pipeline.sinks_have_backlog() {
            let _ = self.orders.send(Order::Tick);
        }
    }

    /// Delivers everything queued now, with the flushes in progress, by `deadline`. True when
    /// nothing is left undelivered.
    pub async fn flush(&self, reason: FlushReason, deadline: Instant) -> bool {
        let (answer, answered) = oneshot::channel();
        let order = Order::Flush {
            reason,
            deadline,
            answer,
        };
        if self.orders.send(order).is_err() {
            return false;
        }
        // The flushes in progress have deadlines of their own, which a freeze may have pushed
        // past this one: never wait beyond it.
        matches!(
            tokio::time::timeout_at(deadline, answered).await,
            Ok(Ok(true))
        )
    }
}

/// A flush that somebody waits for: answered once no flush started up to `last` is in flight.
struct Waiter {
    last: u64,
    answer: oneshot::Sender<bool>,
}

/// What a flush task returns: its id, why it ran, when it started, what each sink did.
type FlightOutcome = (u64, FlushReason, Instant, Vec<SinkFlush>);

/// The flushes in progress.
struct Flights {
    pipeline: Arc<Pipeline>,
    flush_timeout: Duration,
    set: JoinSet<FlightOutcome>,
    /// Which flush each task is, for a task that ends without returning (a panic).
    tasks: HashMap<tokio::task::Id, (u64, FlushReason)>,
    /// Ids in flight; a waiter is answered once none up to its own is left.
    in_flight: BTreeSet<u64>,
    background: usize,
    next_id: u64,
}

impl Flights {
    /// Starts a flush; a background one's deadline is set when its task first runs (a freeze
    /// may come between the kick and then, and must not eat its time).
    fn start(&mut self, reason: FlushReason, deadline: Option<Instant>) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        let pipeline = self.pipeline.clone();
        let flush_timeout = self.flush_timeout;
        let task = self.set.spawn(async move {
            let started = Instant::now();
            let deadline = deadline.unwrap_or(started + flush_timeout);
            let report = pipeline.flush(reason, deadline).await;
            (id, reason, started, report)
        });
        self.tasks.insert(task.id(), (id, reason));
        self.in_flight.insert(id);
        if reason == FlushReason::Background {
            self.background += 1;
        }
        id
    }

    /// Starts a background flush if fewer than [`MAX_BACKGROUND`] are in flight; false if not.
    fn start_background(&mut self) -> bool {
        if self.background >= MAX_BACKGROUND {
            return false;
        }
        self.start(FlushReason::Background, None);
        true
    }

    /// Books a finished task: which flush it was, and what it returned (`None`: it panicked).
    fn finished(
        &mut self,
        joined: Result<(tokio::task::Id, FlightOutcome), tokio::task::JoinError>,
    ) -> Option<(FlushReason, Option<FlightOutcome>)> {
        let (task, outcome) = match joined {
            Ok((task, outcome)) => (task, Some(outcome)),
            Err(error) => (error.id(), None),
        };
        let (id, reason) = self.tasks.remove(&task)?;
        self.in_flight.remove(&id);
        if reason == FlushReason::Background {
            self.background -= 1;
        }
        Some((reason, outcome))
    }
}

async fn run(
    pipeline: Arc<Pipeline>,
    mut orders: mpsc::UnboundedReceiver<Order>,
    flush_timeout: Duration,
    drain_when_filling: bool,
) {
    let mut flights = Flights {
        pipeline: pipeline.clone(),
        flush_timeout,
        set: JoinSet::new(),
        tasks: HashMap::new(),
        in_flight: BTreeSet::new(),
        background: 0,
        next_id: 0,
    };
    // After a background flush that delivered nothing it was offered (an endpoint down), a
    // filling queue does not start another at once: each would re-encode the whole backlog.
    let mut pressure_paused_until: Option<Instant> = None;
    // Once the shutdown drain began, nothing starts beside it.
    let mut draining = false;
    let mut kick_waiting = false;
    let mut waiters: Vec<Waiter> = Vec::new();
    // A kick asked for later (`kick_at`): one timer, moved rather than made anew each time.
    let mut kick_due: Option<Instant> = None;
    let kick_timer = tokio::time::sleep_until(Instant::now());
    tokio::pin!(kick_timer);
    loop {
        tokio::select! {
            () = &mut kick_timer, if kick_due.is_some() && !draining => {
                kick_due = None;
                if pipeline.has_pending() && !flights.start_background() {
                    kick_waiting = true;
                }
            }
            // While paused, the next INVOKE's kick still delivers.
            () = pipeline.pressure.notified(), if drain_when_filling && !draining => {
                start_unless_paused(&mut flights, pressure_paused_until, &mut kick_waiting);
            }
            order = orders.recv() => match order {
                Some(Order::Kick | Order::KickAt(_) | Order::Tick) if draining => {}
                Some(Order::KickAt(at)) => {
                    if kick_due.is_none_or(|due| at < due) {
                        kick_due = Some(at);
                        kick_timer.as_mut().reset(at);
                    }
                }
                Some(Order::Tick) => {
                    start_unless_paused(&mut flights, pressure_paused_until, &mut kick_waiting);
                }
                Some(Order::Kick) => {
                    // It takes everything: what a later kick was asked for included.
                    kick_due = None;
                    if !flights.start_background() {
                        kick_waiting = true;
                    }
                }
                Some(Order::Flush { reason, deadline, answer }) => {
                    kick_due = None;
                    if reason == FlushReason::Shutdown {
                        draining = true;
                        kick_waiting = false;
                    }
                    let last = flights.start(reason, Some(deadline));
                    waiters.push(Waiter { last, answer });
                }
                None => return,
            },
            Some(joined) = flights.set.join_next_with_id(), if !flights.set.is_empty() => {
                let Some((reason, outcome)) = flights.finished(joined) else { continue };
                match &outcome {
                    Some((_, _, started, report)) => {
                        record(reason, *started, report);
                        let offered: usize = report.iter().map(|s| s.offered).sum();
                        let done: usize = report.iter().map(|s| s.done).sum();
                        pressure_paused_until = (reason == FlushReason::Background
                            && offered > 0
                            && done == 0)
                            .then(|| Instant::now() + flush_timeout);
                    }
                    // The pipeline catches sinks' panics; this is a bug of its own.
                    None => tracing::error!(?reason, "a flush task failed"),
                }
                if kick_waiting && !draining && pipeline.has_pending() && flights.start_background() {
                    kick_waiting = false;
                }
                let oldest = flights.in_flight.first().copied().unwrap_or(u64::MAX);
                let (due, waiting): (Vec<Waiter>, Vec<Waiter>) =
                    waiters.drain(..).partition(|w| w.last < oldest);
                waiters = waiting;
                if !due.is_empty() {
                    let complete = pipeline.pending() == 0;
                    for waiter in due {
                        let _ = waiter.answer.send(complete);
                    }
                }
            }
        }
    }
}

/// Starts a background flush unless the pause after one that delivered nothing still runs; a
/// flush that cannot start now (all in flight) starts when one ends.
fn start_unless_paused(flights: &mut Flights, paused_until: Option<Instant>, waiting: &mut bool) {
    let paused = paused_until.is_some_and(|until| Instant::now() < until);
    if !paused && !flights.start_background() {
        *waiting = true;
    }
}

/// Self-metrics and log lines for one finished flush.
fn record(reason: FlushReason, started: Instant, report: &[SinkFlush]) {
    METRICS.flushed(reason.into(), started.elapsed().as_secs_f64());
    let mut dropped = Vec::new();
    for sink in report {
        if sink.dropped_by_overflow > 0 {
            METRICS.dropped(sink.sink, Dropped::Overflow, sink.dropped_by_overflow);
            dropped.push(format!("{}={}", sink.sink, sink.dropped_by_overflow));
        }
        if sink.timed_out {
            tracing::warn!(
                sink = %sink.sink,
                delivered = sink.done,
                pending = sink.offered - sink.done,
                ?reason,
                "flush deadline reached; the rest stays queued"
            );
        }
        tracing::debug!(
            sink = %sink.sink,
            offered = sink.offered,
            done = sink.done,
            ?reason,
            "flushed"
        );
    }
    if !dropped.is_empty() {
        tracing::warn!(
            dropped = %dropped.join(","),
            "queue full (BRIDGE_QUEUE_MAX_EVENTS / BRIDGE_QUEUE_MAX_BYTES): oldest events dropped"
        );
    }
    tracing::debug!(
        elapsed_us = started.elapsed().as_micros() as u64,
        ?reason,
        "flush finished"
    );
}
