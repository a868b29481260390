//! What the OTLP sink has mapped and not delivered yet, per signal: a bounded buffer whose front
//! is exported while more is mapped behind it.
//!
//! An export clones its batch from the front and removes it once the endpoint answered. Meanwhile
//! a flush beside the lifecycle may map more and, past the bound, drop the oldest items (counted
//! as overflow), which can be items of the batch in flight: the export then removes only what is
//! left of its own batch, never the items behind it that it did not send.

use std::collections::VecDeque;

pub(super) struct Pending<T> {
    items: VecDeque<T>,
    /// Items ever removed from the front (delivered, dropped by the bound, or rejected).
    removed: u64,
}

/// Where an export's batch started: what [`Pending::release`] needs to remove it exactly.
#[derive(Clone, Copy)]
pub(super) struct Mark(u64);

impl<T: Clone> Pending<T> {
    pub(super) fn new() -> Pending<T> {
        Pending {
            items: VecDeque::new(),
            removed: 0,
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Appends `items`, dropping the oldest beyond `max`; how many were dropped.
    pub(super) fn push_bounded(&mut self, items: Vec<T>, max: usize) -> u64 {
        self.items.extend(items);
        let excess = self.items.len().saturating_sub(max);
        self.remove_front(excess);
        excess as u64
    }

    /// Up to `n` items from the front, for one export.
    pub(super) fn front(&self, n: usize) -> (Vec<T>, Mark) {
        let batch = self.items.iter().take(n).cloned().collect();
        (batch, Mark(self.removed))
    }

    /// The export of the `n` items taken at `mark` is over (delivered, rejected or unencodable):
    /// removes what is still here of them.
    pub(super) fn release(&mut self, mark: Mark, n: usize) {
        let gone = self.removed.saturating_sub(mark.0) as usize;
        self.remove_front(n.saturating_sub(gone));
    }

    fn remove_front(&mut self, n: usize) {
        let n = n.min(self.items.len());
        self.items.drain(..n);
        self.removed += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_export_removes_only_what_is_left_of_its_batch() {
        let mut pending = Pending::new();
        pending.push_bounded((0..5).collect(), 10);
        let (batch, mark) = pending.front(3);
        assert_eq!(batch, vec![0, 1, 2]);
        // While it is in flight, the bound drops the two oldest (of the batch in flight).
        assert_eq!(pending.push_bounded((5..12).collect(), 10), 2);
        pending.release(mark, 3);
        let (rest, _) = pending.front(100);
        assert_eq!(rest, (3..12).collect::<Vec<_>>(), "nothing unsent removed");
        // Without overflow, the batch goes exactly.
        let (batch, mark) = pending.front(4);
        pending.release(mark, batch.len());
        assert_eq!(pending.front(100).0, (7..12).collect::<Vec<_>>());
    }
}
