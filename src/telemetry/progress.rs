//! The one meeting point between the listener and the lifecycle: which requests' `runtimeDone`
//! and `report` events have arrived. A `watch` channel, so waiting needs no polling.

use std::collections::VecDeque;

use tokio::sync::watch;

/// How many recent request ids are remembered; more than enough, since the lifecycle only ever
/// waits for the current invocation (or the last one at shutdown).
const REMEMBERED: usize = 64;

#[derive(Debug, Default, Clone)]
pub struct Progress {
    runtime_done: VecDeque<String>,
    reported: VecDeque<String>,
}

impl Progress {
    pub fn runtime_done(&self, request_id: &str) -> bool {
        self.runtime_done.iter().any(|r| r == request_id)
    }

    pub fn reported(&self, request_id: &str) -> bool {
        self.reported.iter().any(|r| r == request_id)
    }

    fn remember(list: &mut VecDeque<String>, ids: Vec<String>) {
        for id in ids {
            if list.len() == REMEMBERED {
                list.pop_front();
            }
            list.push_back(id);
        }
    }
}

pub fn channel() -> (watch::Sender<Progress>, watch::Receiver<Progress>) {
    watch::channel(Progress::default())
}

/// Records what one accepted POST contained, waking waiters only if something changed.
pub fn record(tx: &watch::Sender<Progress>, runtime_done: Vec<String>, reports: Vec<String>) {
    if runtime_done.is_empty() && reports.is_empty() {
        return; // nothing a waiter could be waiting for
    }
    tx.send_modify(|p| {
        Progress::remember(&mut p.runtime_done, runtime_done);
        Progress::remember(&mut p.reported, reports);
    });
}
