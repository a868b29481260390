//! A bounded append-only queue with one read cursor per sink.
//!
//! Sequence numbers identify events; `base` is the sequence number of the front event. An event
//! leaves the queue once every sink's cursor has passed it, or when the limits force the oldest
//! out, in which case each sink that had not taken it counts it as dropped.

use std::collections::VecDeque;

use crate::event::Event;

pub struct Queue {
    events: VecDeque<Event>,
    base: u64,
    bytes: usize,
    cursors: Vec<u64>,
    dropped: Vec<u64>,
    max_events: usize,
    max_bytes: usize,
}

impl Queue {
    pub fn new(sinks: usize, max_events: usize, max_bytes: usize) -> Queue {
        Queue {
            events: VecDeque::new(),
            base: 0,
            bytes: 0,
            cursors: vec![0; sinks],
            dropped: vec![0; sinks],
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

    pub fn push(&mut self, events: Vec<Event>) {
        if self.cursors.is_empty() {
            return; // no sink: nothing to keep
        }
        for event in events {
            self.bytes += event.size();
            self.events.push_back(event);
        }
        while self.events.len() > self.max_events
            || (self.bytes > self.max_bytes && self.events.len() > 1)
        {
            self.pop_front();
        }
        // Cursors behind the new front lost those events.
        for (cursor, dropped) in self.cursors.iter_mut().zip(self.dropped.iter_mut()) {
            if *cursor < self.base {
                *dropped += self.base - *cursor;
                *cursor = self.base;
            }
        }
    }

    fn pop_front(&mut self) {
        if let Some(event) = self.events.pop_front() {
            self.bytes -= event.size();
            self.base += 1;
        }
    }

    /// The events sink `i` has not taken yet, with the sequence number of the first.
    pub fn pending_for(&self, i: usize) -> (u64, Vec<Event>) {
        let cursor = self.cursors[i].max(self.base);
        let skip = (cursor - self.base) as usize;
        (cursor, self.events.iter().skip(skip).cloned().collect())
    }

    /// Sink `i` is done with `count` events starting at sequence number `start`.
    pub fn advance(&mut self, i: usize, start: u64, count: usize) {
        let end = start + count as u64;
        if end > self.cursors[i] {
            self.cursors[i] = end;
        }
    }

    /// Events dropped by overflow before sink `i` took them, since the last call.
    pub fn take_dropped(&mut self, i: usize) -> u64 {
        std::mem::take(&mut self.dropped[i])
    }

    /// Releases events every sink has passed.
    pub fn trim(&mut self) {
        let min = self.cursors.iter().copied().min().unwrap_or(self.base);
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
        let (start, a) = q.pending_for(0);
        assert_eq!(a.len(), 3);
        q.advance(0, start, 3);
        q.trim();
        assert_eq!(q.len(), 3, "sink 1 has not taken them yet");
        q.push(vec![ev(3)]);
        let (start0, a) = q.pending_for(0);
        assert_eq!(numbers(&a), vec![r#"{"n":3}"#]);
        let (start1, b) = q.pending_for(1);
        assert_eq!(b.len(), 4);
        q.advance(0, start0, 1);
        q.advance(1, start1, 2);
        q.trim();
        assert_eq!(q.len(), 2);
        let (_, b) = q.pending_for(1);
        assert_eq!(numbers(&b), vec![r#"{"n":2}"#, r#"{"n":3}"#]);
    }

    #[test]
    fn overflow_drops_the_oldest_and_counts_per_sink() {
        let mut q = Queue::new(2, 3, 1 << 20);
        q.push((0..2).map(ev).collect());
        let (s, _) = q.pending_for(0);
        q.advance(0, s, 2);
        q.push((2..5).map(ev).collect());
        assert_eq!(q.len(), 3);
        assert_eq!(q.take_dropped(0), 0, "sink 0 had taken events 0 and 1");
        assert_eq!(q.take_dropped(1), 2);
        assert_eq!(q.take_dropped(1), 0);
        let (_, b) = q.pending_for(1);
        assert_eq!(numbers(&b)[0], r#"{"n":2}"#);
    }

    #[test]
    fn byte_limit_is_enforced() {
        let mut q = Queue::new(1, 100, 20);
        q.push((0..5).map(ev).collect());
        assert!(q.bytes() <= 20);
        assert_eq!(q.take_dropped(0), 3);
    }
}
