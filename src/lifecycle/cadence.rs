//! The `adaptive` flush policy's judgement: does this invocation wait for its telemetry to leave?
//!
//! While invocations come steadily, what is queued leaves beside the lifecycle as each one
//! begins, and nothing is held: an invocation's events leave during the next one. That is only
//! right while the next one is near: the environment freezes between invocations, and telemetry
//! waits frozen with it. So an invocation is held (flushed at its end, as `end` does) when the
//! next one is not expected soon, and whenever the bridge cannot tell.

use std::time::Duration;

use tokio::time::Instant;

/// Weight of the newest gap in the estimate: two long gaps in a row are enough to call traffic
/// sparse, one short one does not undo that.
const NEWEST_GAP_WEIGHT: f64 = 0.5;

/// Why an invocation is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// Nothing is known about the traffic yet (and the init telemetry should not wait).
    FirstInvocation,
    /// The expected gap to the next invocation is longer than the bound.
    SparseTraffic,
    /// Something queued has waited longer than the bound already.
    OldTelemetry,
    /// The queue is past a quarter of its limits.
    QueueFilling,
}

impl Hold {
    pub fn as_str(self) -> &'static str {
        match self {
            Hold::FirstInvocation => "first invocation",
            Hold::SparseTraffic => "sparse traffic",
            Hold::OldTelemetry => "old telemetry",
            Hold::QueueFilling => "queue filling",
        }
    }
}

/// What the queue looks like when an invocation begins.
#[derive(Debug, Clone, Copy)]
pub struct QueueState {
    pub oldest_undelivered_since: Option<Instant>,
    /// Past a quarter of either of its limits.
    pub filling: bool,
}

/// The gaps between invocations, estimated from the recent ones.
#[derive(Debug)]
pub struct Cadence {
    max_delay: Duration,
    last_invoke: Option<Instant>,
    /// A moving average of the time between consecutive INVOKEs.
    expected_gap: Option<Duration>,
}

impl Cadence {
    pub fn new(max_delay: Duration) -> Cadence {
        Cadence {
            max_delay,
            last_invoke: None,
            expected_gap: None,
        }
    }

    pub fn expected_gap(&self) -> Option<Duration> {
        self.expected_gap
    }

    /// An INVOKE arrived at `now`: updates the estimate and says whether this invocation must be
    /// held (`None`: deliver beside the lifecycle and do not wait).
    pub fn on_invoke(&mut self, now: Instant, queue: QueueState) -> Option<Hold> {
        let first = self.last_invoke.is_none();
        if let Some(last) = self.last_invoke {
            let gap = now.saturating_duration_since(last);
            self.expected_gap = Some(match self.expected_gap {
                None => gap,
                Some(expected) => {
                    expected.mul_f64(1.0 - NEWEST_GAP_WEIGHT) + gap.mul_f64(NEWEST_GAP_WEIGHT)
                }
            });
        }
        self.last_invoke = Some(now);
        if first {
            return Some(Hold::FirstInvocation);
        }
        if self.expected_gap.is_some_and(|gap| gap > self.max_delay) {
            return Some(Hold::SparseTraffic);
        }
        if queue
            .oldest_undelivered_since
            .is_some_and(|since| now.saturating_duration_since(since) > self.max_delay)
        {
            return Some(Hold::OldTelemetry);
        }
        if queue.filling {
            return Some(Hold::QueueFilling);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUND: Duration = Duration::from_secs(2);

    fn empty() -> QueueState {
        QueueState {
            oldest_undelivered_since: None,
            filling: false,
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn steady_traffic_is_not_held_after_the_first_invocation() {
        let mut cadence = Cadence::new(BOUND);
        let t0 = Instant::now();
        assert_eq!(cadence.on_invoke(t0, empty()), Some(Hold::FirstInvocation));
        for i in 1..20 {
            assert_eq!(cadence.on_invoke(t0 + ms(60 * i), empty()), None);
        }
        assert_eq!(cadence.expected_gap(), Some(ms(60)));
    }

    #[test]
    fn sparse_traffic_is_held_from_its_first_gap() {
        let mut cadence = Cadence::new(BOUND);
        let t0 = Instant::now();
        cadence.on_invoke(t0, empty());
        for i in 1..5 {
            assert_eq!(
                cadence.on_invoke(t0 + ms(3_050 * i), empty()),
                Some(Hold::SparseTraffic)
            );
        }
    }

    #[test]
    fn traffic_that_slows_down_is_held_by_the_age_of_what_waits_then_by_the_estimate() {
        let mut cadence = Cadence::new(BOUND);
        let t0 = Instant::now();
        let mut now = t0;
        cadence.on_invoke(now, empty());
        for _ in 0..10 {
            now += ms(50);
            cadence.on_invoke(now, empty());
        }
        // The last steady invocation's events wait through the first long gap.
        let queued_at = now + ms(80);
        now += ms(3_000);
        let waiting = QueueState {
            oldest_undelivered_since: Some(queued_at),
            ..empty()
        };
        assert_eq!(cadence.on_invoke(now, waiting), Some(Hold::OldTelemetry));
        now += ms(3_000);
        assert_eq!(cadence.on_invoke(now, empty()), Some(Hold::SparseTraffic));
    }

    #[test]
    fn a_filling_queue_is_held() {
        let mut cadence = Cadence::new(BOUND);
        let t0 = Instant::now();
        cadence.on_invoke(t0, empty());
        let full = QueueState {
            filling: true,
            ..empty()
        };
        assert_eq!(
            cadence.on_invoke(t0 + ms(50), full),
            Some(Hold::QueueFilling)
        );
    }
}
