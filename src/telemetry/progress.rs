//! The one meeting point between the listener and the lifecycle: which requests' `runtimeDone`
//! and `report` events have arrived, and which started invocations have not reported yet. A
//! `watch` channel, so waiting needs no polling.

use std::collections::{HashSet, VecDeque};

use tokio::sync::watch;

/// How many recent request ids are remembered; more than enough, since the lifecycle only ever
/// waits for the current invocation (or the last one at shutdown).
const REMEMBERED: usize = 64;
/// Invocations started and not reported that are tracked at most (Managed Instances runs many at
/// once; beyond this the set is cleared rather than grown: shutdown then waits for none).
const OPEN_TRACKED: usize = 4096;

#[derive(Debug, Default, Clone)]
pub struct Progress {
    runtime_done: VecDeque<String>,
    reported: VecDeque<String>,
    /// Started (`platform.start`) and not yet reported.
    open: HashSet<String>,
}

impl Progress {
    pub fn runtime_done(&self, request_id: &str) -> bool {
        self.runtime_done.iter().any(|r| r == request_id)
    }

    pub fn reported(&self, request_id: &str) -> bool {
        self.reported.iter().any(|r| r == request_id)
    }

    /// Invocations whose `platform.start` arrived and whose `platform.report` did not.
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
}

pub fn channel() -> (watch::Sender<Progress>, watch::Receiver<Progress>) {
    watch::channel(Progress::default())
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
        for id in starts {
            if p.open.len() >= OPEN_TRACKED {
                p.open.clear();
            }
            p.open.insert(id);
        }
        for id in &reports {
            p.open.remove(id);
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
        let (tx, rx) = channel();
        record(&tx, ids(&["a", "b", "c"]), vec![], ids(&["b"]));
        assert_eq!(rx.borrow().open_invocations(), 2);
        record(&tx, vec![], ids(&["a"]), ids(&["a", "c"]));
        assert_eq!(rx.borrow().open_invocations(), 0);
        assert!(rx.borrow().reported("c"));
        assert!(rx.borrow().runtime_done("a"));
    }

    #[test]
    fn a_start_alone_wakes_nobody() {
        let (tx, mut rx) = channel();
        rx.mark_unchanged();
        record(&tx, ids(&["a"]), vec![], vec![]);
        assert!(!rx.has_changed().unwrap_or(true));
        record(&tx, vec![], vec![], ids(&["a"]));
        assert!(rx.has_changed().unwrap_or(false));
    }
}
