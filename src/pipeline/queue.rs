//! A bounded append-only queue with one read cursor per sink.
//!
//! Sequence numbers identify events; `base` is the sequence number of the front event. A sink
//! *takes* events for a flight (several flights may be in progress at once, so a slow endpoint's
//! round trip does not hold back what arrived after it), then *settles* the flight: what it did
//! not deliver is owed to it and offered first next time. An event leaves the queue once no sink
//! can need it again, or when the limits force the oldest out, in which case each sink that had
//! not delivered it counts it as dropped.

use std::collections::VecDeque;

use tokio::time::Instant;

use crate::event::Event;

/// What one sink has taken, delivered and still owes, by sequence number.
#[derive(Debug, Default)]
struct SinkCursor {
    /// The first event never handed to the sink.
    fresh: u64,
    /// Handed out and given back undelivered, ascending: offered again before fresh events.
    owed: Vec<u64>,
    /// The lowest sequence number of each flight in progress (unique: nothing is handed out
    /// twice at once).
    in_flight: Vec<u64>,
    /// Lost to the limits before this sink delivered them, since the last `take_dropped`.
    dropped: u64,
    /// When `owed` last went from empty to not empty (a flight gave events back).
    owed_since: Option<Instant>,
}

impl SinkCursor {
    /// The lowest sequence number this sink may still need.
    fn floor(&self) -> u64 {
        let mut floor = self.fresh;
        if let Some(first) = self.owed.first() {
            floor = floor.min(*first);
        }
        for lowest in &self.in_flight {
            floor = floor.min(*lowest);
        }
        floor
    }
}

/// What sinks have not taken yet: the most any one sink has waiting, and since when the oldest
/// of it waits (its arrival, or when a flight gave it back).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Untaken {
    pub oldest_since: Option<Instant>,
    pub events: usize,
    pub bytes: usize,
}

/// Events handed to one sink for one flight: the owed ones first, then fresh ones from
/// `fresh_start` on.
#[derive(Debug)]
pub struct Taken {
    owed: Vec<u64>,
    fresh_start: u64,
    pub events: Vec<Event>,
}

impl Taken {
    fn seq(&self, index: usize) -> u64 {
        match self.owed.get(index) {
            Some(seq) => *seq,
            None => self.fresh_start + (index - self.owed.len()) as u64,
        }
    }
}

pub struct Queue {
    events: VecDeque<Event>,
    /// Each push: its first sequence number, when it arrived (for the age of the oldest
    /// undelivered event) and the bytes pushed before it (for what a sink has not taken).
    arrivals: VecDeque<(u64, Instant, u64)>,
    base: u64,
    bytes: usize,
    /// Bytes ever pushed.
    pushed_bytes: u64,
    sinks: Vec<SinkCursor>,
    max_events: usize,
    max_bytes: usize,
}

impl Queue {
    pub fn new(sinks: usize, max_events: usize, max_bytes: usize) -> Queue {
        Queue {
            events: VecDeque::new(),
            arrivals: VecDeque::new(),
            base: 0,
            bytes: 0,
            pushed_bytes: 0,
            sinks: (0..sinks).map(|_| SinkCursor::default()).collect(),
            max_events: max_events.max(1),
            max_bytes,
        }
    }

    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Past a quarter of either limit: time to deliver rather than let the limits drop events.
    pub fn filling(&self) -> bool {
        self.events.len() > self.max_events / 4 || self.bytes > self.max_bytes / 4
    }

    fn end(&self) -> u64 {
        self.base + self.events.len() as u64
    }

    pub fn push(&mut self, events: Vec<Event>) {
        if self.sinks.is_empty() || events.is_empty() {
            return; // no sink: nothing to keep
        }
        self.arrivals
            .push_back((self.end(), Instant::now(), self.pushed_bytes));
        for event in events {
            self.bytes += event.size();
            self.pushed_bytes += event.size() as u64;
            self.events.push_back(event);
        }
        while self.events.len() > self.max_events
            || (self.bytes > self.max_bytes && self.events.len() > 1)
        {
            self.pop_front();
        }
        // Cursors behind the new front lost those events.
        let base = self.base;
        for sink in &mut self.sinks {
            if sink.fresh < base {
                sink.dropped += base - sink.fresh;
                sink.fresh = base;
            }
            let lost = sink.owed.partition_point(|seq| *seq < base);
            if lost > 0 {
                sink.dropped += lost as u64;
                sink.owed.drain(..lost);
            }
        }
    }

    fn pop_front(&mut self) {
        if let Some(event) = self.events.pop_front() {
            self.bytes -= event.size();
            self.base += 1;
            while self.arrivals.len() > 1 && self.arrivals[1].0 <= self.base {
                self.arrivals.pop_front();
            }
        }
    }

    /// Whether sink `i` has anything to take.
    pub fn has_pending_for(&self, i: usize) -> bool {
        let sink = &self.sinks[i];
        !sink.owed.is_empty() || sink.fresh.max(self.base) < self.end()
    }

    /// Hands sink `i` everything it owes and has not taken yet, for one flight; `None` when there
    /// is nothing. Settle the flight with [`Queue::settle`].
    pub fn take(&mut self, i: usize) -> Option<Taken> {
        if !self.has_pending_for(i) {
            return None;
        }
        let base = self.base;
        let end = self.end();
        let sink = &mut self.sinks[i];
        let owed = std::mem::take(&mut sink.owed);
        sink.owed_since = None;
        let fresh_start = sink.fresh.max(base);
        let mut events = Vec::with_capacity(owed.len() + (end - fresh_start) as usize);
        events.extend(
            owed.iter()
                .map(|seq| self.events[(seq - base) as usize].clone()),
        );
        events.extend(self.events.range((fresh_start - base) as usize..).cloned());
        sink.fresh = end;
        let taken = Taken {
            owed,
            fresh_start,
            events,
        };
        sink.in_flight.push(taken.seq(0));
        Some(taken)
    }

    /// Sink `i` delivered the first `done` events of `taken` (or dropped them on purpose); the
    /// rest are owed to it.
    pub fn settle(&mut self, i: usize, taken: &Taken, done: usize) {
        let base = self.base;
        let sink = &mut self.sinks[i];
        if let Some(at) = sink.in_flight.iter().position(|s| *s == taken.seq(0)) {
            sink.in_flight.swap_remove(at);
        }
        let done = done.min(taken.events.len());
        if done == taken.events.len() {
            return;
        }
        let returned: Vec<u64> = (done..taken.events.len()).map(|k| taken.seq(k)).collect();
        let lost = returned.iter().filter(|seq| **seq < base).count();
        sink.dropped += lost as u64;
        if sink.owed.is_empty() {
            sink.owed_since = Some(Instant::now());
        }
        sink.owed
            .extend(returned.into_iter().filter(|seq| *seq >= base));
        if sink.owed.is_empty() {
            sink.owed_since = None;
        }
        sink.owed.sort_unstable();
        sink.owed.dedup();
    }

    /// Events dropped by overflow before sink `i` delivered them, since the last call.
    pub fn take_dropped(&mut self, i: usize) -> u64 {
        std::mem::take(&mut self.sinks[i].dropped)
    }

    /// When the oldest event some sink has not delivered arrived.
    pub fn oldest_undelivered_since(&self) -> Option<Instant> {
        let floor = self
            .sinks
            .iter()
            .map(SinkCursor::floor)
            .min()?
            .max(self.base);
        if floor >= self.end() {
            return None;
        }
        self.arrival_of(floor).map(|(when, _)| when)
    }

    /// When the push holding `seq` arrived, and the bytes pushed before it.
    fn arrival_of(&self, seq: u64) -> Option<(Instant, u64)> {
        let at = self.arrivals.partition_point(|(first, _, _)| *first <= seq);
        self.arrivals
            .get(at.saturating_sub(1))
            .map(|(_, when, before)| (*when, *before))
    }

    /// What the sinks have not taken yet (owed events included). Bytes are counted by push: a
    /// sink's cursor sits at a push's start except after the limits dropped events.
    pub fn untaken(&self) -> Untaken {
        let end = self.end();
        let mut untaken = Untaken::default();
        for sink in &self.sinks {
            let fresh = sink.fresh.max(self.base);
            let mut oldest = sink.owed_since;
            let mut events = sink.owed.len();
            let mut bytes = 0;
            if fresh < end {
                if let Some((when, before)) = self.arrival_of(fresh) {
                    oldest = Some(oldest.map_or(when, |o| o.min(when)));
                    bytes = (self.pushed_bytes - before) as usize;
                }
                events += (end - fresh) as usize;
            }
            for seq in &sink.owed {
                bytes += self.events[(seq - self.base) as usize].size();
            }
            untaken.events = untaken.events.max(events);
            untaken.bytes = untaken.bytes.max(bytes);
            untaken.oldest_since = match (untaken.oldest_since, oldest) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        untaken
    }

    /// Releases events no sink can need again.
    pub fn trim(&mut self) {
        let min = self
            .sinks
            .iter()
            .map(SinkCursor::floor)
            .min()
            .unwrap_or(self.base);
        while self.base < min && !self.events.is_empty() {
            self.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventKind;
    use bytes::Bytes;

    fn ev(n: usize) -> Event {
        Event::new(Bytes::from(format!("{{\"n\":{n}}}")), EventKind::Unknown)
    }

    fn numbers(events: &[Event]) -> Vec<String> {
        events
            .iter()
            .map(|e| String::from_utf8_lossy(e.raw()).into_owned())
            .collect()
    }

    #[test]
    fn each_sink_sees_every_event_once() {
        let mut q = Queue::new(2, 100, 1 << 20);
        q.push((0..3).map(ev).collect());
        let a = q.take(0).expect("three events");
        assert_eq!(a.events.len(), 3);
        q.settle(0, &a, 3);
        q.trim();
        assert_eq!(q.len(), 3, "sink 1 has not taken them yet");
        q.push(vec![ev(3)]);
        let a = q.take(0).expect("one new event");
        assert_eq!(numbers(&a.events), vec![r#"{"n":3}"#]);
        let b = q.take(1).expect("four events");
        assert_eq!(b.events.len(), 4);
        q.settle(0, &a, 1);
        q.settle(1, &b, 2);
        q.trim();
        assert_eq!(q.len(), 2);
        let b = q.take(1).expect("the two owed");
        assert_eq!(numbers(&b.events), vec![r#"{"n":2}"#, r#"{"n":3}"#]);
        assert!(q.take(0).is_none());
    }

    /// Two flights in progress for one sink: the second takes only what arrived after the first
    /// was taken; what the first did not deliver is offered again (before fresh events), once.
    #[test]
    fn concurrent_flights_take_disjoint_events_and_failures_are_owed() {
        let mut q = Queue::new(1, 100, 1 << 20);
        q.push((0..3).map(ev).collect());
        let first = q.take(0).expect("first flight");
        q.push((3..5).map(ev).collect());
        let second = q.take(0).expect("second flight");
        assert_eq!(numbers(&second.events), vec![r#"{"n":3}"#, r#"{"n":4}"#]);
        assert!(
            q.take(0).is_none(),
            "nothing left to take while both are out"
        );
        q.settle(0, &second, 2);
        q.trim();
        assert_eq!(q.len(), 5, "the first flight may still need its events");
        q.settle(0, &first, 1);
        q.trim();
        q.push(vec![ev(5)]);
        let retry = q.take(0).expect("the owed two, then the fresh one");
        assert_eq!(
            numbers(&retry.events),
            vec![r#"{"n":1}"#, r#"{"n":2}"#, r#"{"n":5}"#]
        );
        q.settle(0, &retry, 3);
        q.trim();
        assert_eq!(q.len(), 0);
        assert_eq!(q.take_dropped(0), 0);
    }

    #[test]
    fn the_oldest_undelivered_event_is_dated_by_its_push() {
        let mut q = Queue::new(1, 100, 1 << 20);
        assert!(q.oldest_undelivered_since().is_none());
        q.push((0..2).map(ev).collect());
        let first_push = q.oldest_undelivered_since().expect("two undelivered");
        std::thread::sleep(std::time::Duration::from_millis(5));
        q.push((2..4).map(ev).collect());
        assert_eq!(q.oldest_undelivered_since(), Some(first_push));
        let taken = q.take(0).expect("four");
        q.settle(0, &taken, 2);
        q.trim();
        let second_push = q.oldest_undelivered_since().expect("two owed");
        assert!(second_push > first_push);
        let taken = q.take(0).expect("two");
        q.settle(0, &taken, 2);
        q.trim();
        assert!(q.oldest_undelivered_since().is_none());
    }

    #[test]
    fn untaken_counts_what_the_most_behind_sink_has_not_taken_and_since_when() {
        let mut q = Queue::new(2, 100, 1 << 20);
        assert_eq!(q.untaken(), Untaken::default());
        q.push((0..2).map(ev).collect());
        let first_push = q.untaken().oldest_since.expect("two untaken");
        std::thread::sleep(std::time::Duration::from_millis(5));
        q.push((2..5).map(ev).collect());
        let all = q.untaken();
        assert_eq!((all.events, all.bytes), (5, 5 * 7));
        assert_eq!(all.oldest_since, Some(first_push));
        // Sink 0 takes everything; sink 1 still has all five.
        let taken = q.take(0).expect("five");
        assert_eq!(q.untaken(), all);
        let other = q.take(1).expect("five");
        q.settle(1, &other, 5);
        assert_eq!(
            q.untaken(),
            Untaken::default(),
            "all taken (one flight out)"
        );
        // What a flight gives back is untaken again, dated from its return.
        q.settle(0, &taken, 3);
        let owed = q.untaken();
        assert_eq!((owed.events, owed.bytes), (2, 2 * 7));
        assert!(owed.oldest_since.expect("owed") > first_push);
        let retry = q.take(0).expect("the two owed");
        q.settle(0, &retry, 2);
        assert_eq!(q.untaken(), Untaken::default());
    }

    #[test]
    fn overflow_drops_the_oldest_and_counts_per_sink() {
        let mut q = Queue::new(2, 3, 1 << 20);
        q.push((0..2).map(ev).collect());
        let taken = q.take(0).expect("two");
        q.settle(0, &taken, 2);
        q.push((2..5).map(ev).collect());
        assert_eq!(q.len(), 3);
        assert_eq!(q.take_dropped(0), 0, "sink 0 had taken events 0 and 1");
        assert_eq!(q.take_dropped(1), 2);
        assert_eq!(q.take_dropped(1), 0);
        let b = q.take(1).expect("three");
        assert_eq!(numbers(&b.events)[0], r#"{"n":2}"#);
    }

    #[test]
    fn owed_events_lost_to_overflow_are_counted() {
        let mut q = Queue::new(1, 3, 1 << 20);
        q.push((0..3).map(ev).collect());
        let taken = q.take(0).expect("three");
        q.settle(0, &taken, 0);
        q.push((3..5).map(ev).collect());
        assert_eq!(q.take_dropped(0), 2, "two owed events pushed out");
        let retry = q.take(0).expect("one owed, two fresh");
        assert_eq!(
            numbers(&retry.events),
            vec![r#"{"n":2}"#, r#"{"n":3}"#, r#"{"n":4}"#]
        );
    }

    #[test]
    fn byte_limit_is_enforced() {
        let mut q = Queue::new(1, 100, 20);
        q.push((0..5).map(ev).collect());
        assert!(q.bytes() <= 20);
        assert_eq!(q.take_dropped(0), 3);
    }
}
