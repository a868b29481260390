//! The one meeting point between the listener and the lifecycle: which requests' `runtimeDone`
//! and `report` events have arrived, and (under Managed Instances, where shutdown waits for
//! them) which started invocations have not reported yet. A `watch` channel, so waiting needs no
//! polling.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

/// How many recent request ids are remembered; more than enough, since the lifecycle only ever
/// waits for the current invocation (or the last one at shutdown).
const REMEMBERED: usize = 64;
/// Invocations started and not reported that are tracked at most (Managed Instances runs many
/// at once; beyond this the oldest is forgotten).
const OPEN_TRACKED: usize = 4096;
/// An invocation started this long ago whose report never came is forgotten: shutdown does not
/// wait for it (Lambda's longest function timeout; Managed Instances enforces none).
const OPEN_AT_MOST: Duration = Duration::from_secs(15 * 60);

#[derive(Debug, Default, Clone)]
pub struct Progress {
    runtime_done: VecDeque<String>,
    reported: VecDeque<String>,
    /// Whether `open` is kept (Managed Instances).
    track_open: bool,
    /// Started (`platform.start`) and not yet reported, with when the start arrived.
    open: HashMap<String, Instant>,
}

impl Progress {
    pub fn runtime_done(&self, request_id: &str) -> bool {
        self.runtime_done.iter().any(|r| r == request_id)
    }

    pub fn reported(&self, request_id: &str) -> bool {
        self.reported.iter().any(|r| r == request_id)
    }

    /// Whether started invocations are tracked (Managed Instances).
    pub fn tracks_open(&self) -> bool {
        self.track_open
    }

    /// Invocations whose `platform.start` arrived and whose `platform.report` did not (always 0
    /// unless tracked).
    pub fn open_invocations(&self) -> usize {
        self.open.len()
    }

    fn remember(list: &mut VecDeque<String>, ids: &[String]) {
        for id in ids {
            if list.len() == REMEMBERED {
                list.pop_front();
            }
            list.push_back(id.clone());
        }
    }

    /// Notes starts (a start of an invocation already reported, or already open, is a duplicate
    /// delivery) and forgets what is too old or too many; how many invocations are new.
    fn open(&mut self, starts: Vec<String>, now: Instant) -> u64 {
        let mut new = 0;
        self.open
            .retain(|_, since| now.saturating_duration_since(*since) < OPEN_AT_MOST);
        for id in starts {
            if self.reported(&id) || self.open.contains_key(&id) {
                continue;
            }
            new += 1;
            if self.open.len() >= OPEN_TRACKED {
                let oldest = self
                    .open
                    .iter()
                    .min_by_key(|(_, since)| **since)
                    .map(|(id, _)| id.clone());
                if let Some(oldest) = oldest {
                    self.open.remove(&oldest);
                }
            }
            self.open.insert(id, now);
        }
        new
    }
}

/// The channel; with `track_open`, the invocations started and not reported are kept.
pub fn channel(track_open: bool) -> (watch::Sender<Progress>, watch::Receiver<Progress>) {
    watch::channel(Progress {
        track_open,
        ..Progress::default()
    })
}

/// Records what one accepted POST contained, waking waiters only if something they wait for
/// changed: a runtimeDone or report arrived (a start alone wakes nobody).
pub fn record(
    tx: &watch::Sender<Progress>,
    starts: Vec<String>,
    runtime_done: Vec<String>,
    reports: Vec<String>,
) {
    if starts.is_empty() && runtime_done.is_empty() && reports.is_empty() {
        return;
    }
    tx.send_if_modified(|p| {
        if p.track_open {
            // No INVOKE reaches the extension there: the invocations it handles are counted as
            // their starts arrive.
            let new = p.open(starts, Instant::now());
            crate::self_metrics::METRICS.invocations.inc_by(new);
            for id in &reports {
                p.open.remove(id);
            }
        }
        Progress::remember(&mut p.runtime_done, &runtime_done);
        Progress::remember(&mut p.reported, &reports);
        !runtime_done.is_empty() || !reports.is_empty()
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn open_invocations_are_those_started_and_not_reported() {
        let (tx, rx) = channel(true);
        record(&tx, ids(&["a", "b", "c"]), vec![], ids(&["b"]));
        assert_eq!(rx.borrow().open_invocations(), 2);
        record(&tx, vec![], ids(&["a"]), ids(&["a", "c"]));
        assert_eq!(rx.borrow().open_invocations(), 0);
        assert!(rx.borrow().reported("c"));
        assert!(rx.borrow().runtime_done("a"));
        // A start delivered again after its report does not open it again.
        record(&tx, ids(&["c"]), vec![], vec![]);
        assert_eq!(rx.borrow().open_invocations(), 0);
    }

    #[test]
    fn open_invocations_are_not_tracked_on_the_default_model() {
        let (tx, rx) = channel(false);
        record(&tx, ids(&["a"]), vec![], vec![]);
        assert_eq!(rx.borrow().open_invocations(), 0);
    }

    #[test]
    fn a_start_alone_wakes_nobody() {
        let (tx, mut rx) = channel(true);
        rx.mark_unchanged();
        record(&tx, ids(&["a"]), vec![], vec![]);
        assert!(!rx.has_changed().unwrap_or(true));
        record(&tx, vec![], vec![], ids(&["a"]));
        assert!(rx.has_changed().unwrap_or(false));
    }

    #[test]
    fn an_invocation_open_too_long_is_forgotten() {
        let mut progress = Progress {
            track_open: true,
            ..Progress::default()
        };
        let then = Instant::now();
        progress.open(ids(&["lost"]), then);
        progress.open(ids(&["new"]), then + OPEN_AT_MOST + Duration::from_secs(1));
        assert_eq!(progress.open_invocations(), 1);
        assert!(progress.open.contains_key("new"));
    }
}
