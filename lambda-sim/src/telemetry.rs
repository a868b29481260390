//! Lambda's side of the Telemetry API: the buffer every generated event goes into, and the task that
//! delivers it in batches to the subscribed destination, honouring the subscription's buffering
//! limits (maxItems, maxBytes, timeoutMs) the way Lambda does.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::Notify;

use super::events;
use super::TelemetryPost;

/// Retries after a failed POST (so 1 + this many attempts per batch).
pub const RETRIES: u32 = 3;
/// Pause between two attempts of the same batch.
pub const RETRY_BACKOFF: Duration = Duration::from_millis(50);

/// What a successful `PUT /telemetry` asked for.
#[derive(Debug, Clone)]
pub struct Subscription {
    /// Destination URI, as given.
    pub uri: String,
    /// Subscribed categories: `platform`, `function`, `extension`.
    pub types: Vec<String>,
    /// Buffering: maxItems.
    pub max_items: usize,
    /// Buffering: maxBytes.
    pub max_bytes: usize,
    /// Buffering: timeoutMs.
    pub timeout: Duration,
}

#[derive(Debug)]
pub(crate) struct Entry {
    pub value: Value,
    pub event_type: String,
    pub raw: Vec<u8>,
    pub emitted_at: Instant,
    pub delivered_at: Option<Instant>,
    /// Of a subscribed type (or emitted while nobody was subscribed yet).
    pub eligible: bool,
    pub dropped: bool,
}

/// What the hub dropped from its records under a history limit.
#[derive(Debug, Clone, Default)]
pub(crate) struct Pruned {
    /// Eligible events.
    pub events: usize,
    /// Those per type.
    pub by_type: BTreeMap<String, usize>,
    /// Those never delivered.
    pub undelivered: usize,
    /// POST attempts.
    pub posts: usize,
    /// Those not answered with 2xx.
    pub failed_posts: usize,
}

#[derive(Debug, Default)]
struct Inner {
    entries: VecDeque<Entry>,
    /// Emission number of `entries[0]` (entries before it were pruned).
    base: usize,
    /// Emission numbers of eligible entries not yet taken by a batch, in emission order.
    queue: VecDeque<usize>,
    sub: Option<Subscription>,
    subscribed_at: Option<Instant>,
    posts: Vec<TelemetryPost>,
    force: bool,
    in_flight: bool,
    /// The sandbox is frozen: no new POST starts (one in flight just hangs until the thaw).
    paused: bool,
    stopped: bool,
    /// Keep about this many entries and posts (finished ones are pruned, oldest first).
    limit: Option<usize>,
    pruned: Pruned,
}

impl Inner {
    /// The entry with emission number `i` (which must not have been pruned: only finished
    /// entries are, and those are in no queue or batch).
    fn entry(&self, i: usize) -> &Entry {
        &self.entries[i - self.base]
    }

    fn entry_mut(&mut self, i: usize) -> &mut Entry {
        let base = self.base;
        &mut self.entries[i - base]
    }

    /// Under a limit, drops the oldest finished entries beyond it, and old posts, counting them.
    fn prune(&mut self) {
        let Some(limit) = self.limit else { return };
        let subscribed = self.sub.is_some();
        while self.entries.len() > limit {
            let finished = self.entries.front().is_some_and(|e| {
                e.delivered_at.is_some() || e.dropped || (subscribed && !e.eligible)
            });
            if !finished {
                break;
            }
            if let Some(e) = self.entries.pop_front() {
                self.base += 1;
                if e.eligible {
                    self.pruned.events += 1;
                    *self.pruned.by_type.entry(e.event_type).or_insert(0) += 1;
                    if e.delivered_at.is_none() {
                        self.pruned.undelivered += 1;
                    }
                }
            }
        }
        let limit = limit.max(1);
        if self.posts.len() >= 2 * limit {
            let excess = self.posts.len() - limit;
            for p in self.posts.drain(..excess) {
                self.pruned.posts += 1;
                if !p.status.is_some_and(|s| (200..300).contains(&s)) {
                    self.pruned.failed_posts += 1;
                }
            }
        }
    }
}

/// The event buffer shared by the driver, the control plane and the delivery task.
#[derive(Debug, Default)]
pub(crate) struct TelemetryHub {
    inner: Mutex<Inner>,
    notify: Notify,
}

enum Next {
    Send(Vec<usize>, String),
    WaitUntil(Instant),
    Wait,
    Stop,
}

impl TelemetryHub {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A hub that keeps only about `limit` events and POST records (see
    /// `SimConfig::history_limit`); what it drops is counted in [`pruned`](Self::pruned).
    pub fn with_history_limit(limit: Option<usize>) -> TelemetryHub {
        let hub = TelemetryHub::default();
        hub.lock().limit = limit;
        hub
    }

    /// The subscription's destination port, once subscribed.
    pub fn destination_port(&self) -> Option<u16> {
        let uri = self.lock().sub.as_ref()?.uri.clone();
        crate::parse_http_uri(&uri).ok().map(|(_, port)| port)
    }

    /// What was dropped from the records so far.
    pub fn pruned(&self) -> Pruned {
        self.lock().pruned.clone()
    }

    /// Buffers one event (already shaped like the AWS schema).
    pub fn emit(&self, value: Value) {
        let event_type = value
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let mut inner = self.lock();
        // Written as Lambda might write it, not as serde_json would (see encode_like_lambda).
        let n = inner.base + inner.entries.len();
        let raw = events::encode_like_lambda(&value, n);
        let eligible = match &inner.sub {
            Some(sub) => sub.types.iter().any(|t| t == events::category(&event_type)),
            None => true,
        };
        let index = inner.base + inner.entries.len();
        inner.entries.push_back(Entry {
            value,
            event_type,
            raw,
            emitted_at: Instant::now(),
            delivered_at: None,
            eligible,
            dropped: false,
        });
        if eligible {
            inner.queue.push_back(index);
        }
        inner.prune();
        drop(inner);
        self.notify.notify_one();
    }

    /// Starts (or replaces) the subscription: from now on, events go to `sub.uri`. Events of
    /// types the subscription does not ask for are left out of the stream.
    pub fn subscribe(&self, sub: Subscription) {
        let mut inner = self.lock();
        let inner = &mut *inner;
        for e in inner.entries.iter_mut() {
            if e.delivered_at.is_none() && !e.dropped {
                e.eligible = sub
                    .types
                    .iter()
                    .any(|t| t == events::category(&e.event_type));
            }
        }
        let (entries, base) = (&inner.entries, inner.base);
        inner.queue.retain(|&i| entries[i - base].eligible);
        inner.sub = Some(sub);
        inner.subscribed_at = Some(Instant::now());
        self.notify.notify_one();
    }

    /// Asks the delivery task to send whatever is buffered now, regardless of the buffering limits.
    pub fn force_flush(&self) {
        self.lock().force = true;
        self.notify.notify_one();
    }

    /// Forces delivery and waits until the buffer is empty and no POST is in flight, or `timeout`.
    /// Returns whether the buffer was drained.
    pub async fn flush(&self, timeout: Duration) -> bool {
        self.force_flush();
        self.wait_until(timeout, |inner| {
            if inner.sub.is_none() {
                Some(false)
            } else {
                (inner.queue.is_empty() && !inner.in_flight).then_some(true)
            }
        })
        .await
    }

    /// Waits (at most `timeout`) for a POST in flight to be answered: the extension may answer
    /// its last POST just before it exits, and that answer must still be counted. Returns
    /// whether nothing is in flight any more.
    pub async fn settle(&self, timeout: Duration) -> bool {
        self.wait_until(timeout, |inner| (!inner.in_flight).then_some(true))
            .await
    }

    /// Polls the state until `verdict` gives one, or `timeout` (false).
    async fn wait_until(
        &self,
        timeout: Duration,
        verdict: impl Fn(&Inner) -> Option<bool>,
    ) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(result) = verdict(&self.lock()) {
                return result;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Pauses (frozen sandbox) or resumes delivery.
    pub fn set_paused(&self, paused: bool) {
        self.lock().paused = paused;
        self.notify.notify_one();
    }

    /// Stops the delivery task at its next step.
    pub fn stop(&self) {
        self.lock().stopped = true;
        self.notify.notify_one();
    }

    /// Takes the recorded state out (for the report): the entries and posts not pruned.
    pub fn take(&self) -> (Vec<Entry>, Vec<TelemetryPost>) {
        let mut inner = self.lock();
        (
            Vec::from(std::mem::take(&mut inner.entries)),
            std::mem::take(&mut inner.posts),
        )
    }

    fn next_step(&self) -> Next {
        let mut inner = self.lock();
        if inner.stopped {
            return Next::Stop;
        }
        if inner.paused {
            return Next::Wait;
        }
        let Some(sub) = inner.sub.clone() else {
            return Next::Wait;
        };
        let Some(&head) = inner.queue.front() else {
            inner.force = false;
            return Next::Wait;
        };
        let subscribed_at = inner.subscribed_at.unwrap_or_else(Instant::now);
        let started = inner.entry(head).emitted_at.max(subscribed_at);
        let due = started + sub.timeout;

        // Count what is buffered, up to the point where a limit is reached.
        let mut take = 0usize;
        let mut bytes = 0usize;
        let mut full = false;
        for &i in inner.queue.iter() {
            take += 1;
            bytes += inner.entry(i).raw.len();
            if take >= sub.max_items || bytes >= sub.max_bytes {
                full = true;
                break;
            }
        }
        if !(full || inner.force || Instant::now() >= due) {
            return Next::WaitUntil(due);
        }
        let batch: Vec<usize> = inner.queue.drain(..take).collect();
        inner.in_flight = true;
        Next::Send(batch, sub.uri)
    }

    fn body(&self, batch: &[usize]) -> Vec<u8> {
        let inner = self.lock();
        let mut body = Vec::with_capacity(
            2 + batch
                .iter()
                .map(|&i| inner.entry(i).raw.len() + 1)
                .sum::<usize>(),
        );
        body.push(b'[');
        for (n, &i) in batch.iter().enumerate() {
            if n > 0 {
                body.push(b',');
            }
            body.extend_from_slice(&inner.entry(i).raw);
        }
        body.push(b']');
        body
    }

    fn record_post(&self, post: TelemetryPost) {
        let mut inner = self.lock();
        inner.posts.push(post);
        inner.prune();
    }

    fn finish_batch(&self, batch: &[usize], delivered_at: Option<Instant>) {
        let mut inner = self.lock();
        for &i in batch {
            match delivered_at {
                Some(at) => inner.entry_mut(i).delivered_at = Some(at),
                None => inner.entry_mut(i).dropped = true,
            }
        }
        inner.in_flight = false;
        inner.prune();
    }
}

/// The delivery task: sequential POSTs of JSON arrays to the subscribed destination.
pub(crate) async fn deliver(
    hub: Arc<TelemetryHub>,
    client: reqwest::Client,
    post_timeout: Duration,
) {
    loop {
        let notified = hub.notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let (batch, uri) = match hub.next_step() {
            Next::Stop => return,
            Next::Wait => {
                notified.await;
                continue;
            }
            Next::WaitUntil(due) => {
                tokio::select! {
                    _ = &mut notified => {}
                    _ = tokio::time::sleep_until(due.into()) => {}
                }
                continue;
            }
            Next::Send(batch, uri) => (batch, uri),
        };
        let body = hub.body(&batch);
        let mut delivered_at = None;
        for attempt in 0..=RETRIES {
            if attempt > 0 {
                tokio::time::sleep(RETRY_BACKOFF).await;
            }
            let sent_at = Instant::now();
            let result = client
                .post(&uri)
                .header("content-type", "application/json")
                .timeout(post_timeout)
                .body(body.clone())
                .send()
                .await;
            let answered_at = Instant::now();
            let (status, error) = match result {
                Ok(resp) => {
                    let status = resp.status();
                    // Read the body so the connection can be reused; its content does not matter.
                    let _ = resp.bytes().await;
                    (Some(status.as_u16()), None)
                }
                Err(e) => (None, Some(error_chain(&e))),
            };
            let ok = status.is_some_and(|s| (200..300).contains(&s));
            hub.record_post(TelemetryPost {
                events: batch.len(),
                bytes: body.len(),
                attempt: attempt + 1,
                status,
                error,
                sent_at,
                answered_at,
            });
            if ok {
                delivered_at = Some(answered_at);
                break;
            }
        }
        hub.finish_batch(&batch, delivered_at);
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Behaviour, RecordingEndpoint};
    use serde_json::json;

    fn sub(uri: String, types: &[&str], max_items: usize, timeout_ms: u64) -> Subscription {
        Subscription {
            uri,
            types: types.iter().map(|s| s.to_string()).collect(),
            max_items,
            max_bytes: 262_144,
            timeout: Duration::from_millis(timeout_ms),
        }
    }

    fn ev(ty: &str, n: usize) -> Value {
        json!({"time": "2024-01-01T00:00:00.000Z", "type": ty, "record": {"n": n}})
    }

    async fn setup(
        behaviour: Behaviour,
    ) -> Result<(Arc<TelemetryHub>, RecordingEndpoint, JoinGuard), String> {
        let ep = RecordingEndpoint::start(behaviour)
            .await
            .map_err(|e| e.to_string())?;
        let hub = Arc::new(TelemetryHub::default());
        let client = crate::driver::http_client().map_err(|e| e.to_string())?;
        let task = tokio::spawn(deliver(hub.clone(), client, Duration::from_secs(5)));
        Ok((hub, ep, JoinGuard(task)))
    }

    struct JoinGuard(tokio::task::JoinHandle<()>);
    impl Drop for JoinGuard {
        fn drop(&mut self) {
            self.0.abort();
        }
    }

    #[tokio::test]
    async fn waits_for_the_timeout_then_sends_one_batch() -> Result<(), String> {
        let (hub, ep, _g) = setup(Behaviour::ok()).await?;
        // The batch's timeout may count from its first event, buffered before the subscription.
        let t0 = Instant::now();
        hub.emit(ev("platform.initStart", 0));
        hub.emit(ev("function", 1));
        hub.subscribe(sub(ep.url(), &["platform", "function"], 1000, 100));
        hub.emit(ev("platform.start", 2));
        assert!(ep.wait_for_requests(1, Duration::from_secs(2)).await);
        let reqs = ep.requests();
        // Nothing was sent before the subscription: the events buffered before it came in the
        // same, first, batch (a positive check, where a sleep could only pass falsely).
        assert_eq!(reqs.len(), 1);
        assert!(reqs[0].arrived_at.duration_since(t0) >= Duration::from_millis(95));
        assert_eq!(reqs[0].header("content-type"), Some("application/json"));
        assert_eq!(
            ep.received_events(),
            vec![
                ev("platform.initStart", 0),
                ev("function", 1),
                ev("platform.start", 2)
            ]
        );
        // The endpoint records the request before its answer reaches the delivery task:
        // wait until the hub has nothing in flight before reading its bookkeeping.
        assert!(hub.settle(Duration::from_secs(2)).await);
        let (entries, posts) = hub.take();
        assert!(entries.iter().all(|e| e.delivered_at.is_some()));
        assert_eq!(posts.len(), 1);
        assert_eq!(posts[0].status, Some(200));
        Ok(())
    }

    #[tokio::test]
    async fn max_items_cuts_batches() -> Result<(), String> {
        let (hub, ep, _g) = setup(Behaviour::ok()).await?;
        hub.subscribe(sub(ep.url(), &["platform"], 1000, 30_000));
        for n in 0..2500 {
            hub.emit(ev("platform.start", n));
        }
        assert!(ep.wait_for_requests(2, Duration::from_secs(5)).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let sizes: Vec<usize> = ep
            .requests()
            .iter()
            .filter_map(|r| r.body_json())
            .filter_map(|v| v.as_array().map(Vec::len))
            .collect();
        assert_eq!(
            sizes,
            vec![1000, 1000],
            "the rest waits for the 30 s timeout"
        );
        assert!(hub.flush(Duration::from_secs(5)).await);
        assert_eq!(ep.received_events().len(), 2500);
        Ok(())
    }

    #[tokio::test]
    async fn unsubscribed_types_are_left_out() -> Result<(), String> {
        let (hub, ep, _g) = setup(Behaviour::ok()).await?;
        hub.emit(ev("function", 0));
        hub.emit(ev("platform.initStart", 1));
        hub.subscribe(sub(ep.url(), &["platform"], 1000, 25));
        hub.emit(ev("function", 2));
        hub.emit(ev("platform.start", 3));
        assert!(hub.flush(Duration::from_secs(2)).await);
        assert_eq!(
            ep.received_events(),
            vec![ev("platform.initStart", 1), ev("platform.start", 3)]
        );
        let (entries, _) = hub.take();
        let eligible: Vec<bool> = entries.iter().map(|e| e.eligible).collect();
        assert_eq!(eligible, vec![false, true, false, true]);
        Ok(())
    }

    #[tokio::test]
    async fn retries_then_drops() -> Result<(), String> {
        let (hub, ep, _g) = setup(Behaviour::fail_first(2, 500)).await?;
        hub.subscribe(sub(ep.url(), &["platform"], 1000, 25));
        hub.emit(ev("platform.start", 0));
        assert!(hub.flush(Duration::from_secs(2)).await);
        ep.set_behaviour(Behaviour::always(503));
        hub.emit(ev("platform.start", 1));
        assert!(hub.flush(Duration::from_secs(2)).await);
        let (entries, posts) = hub.take();
        let statuses: Vec<Option<u16>> = posts.iter().map(|p| p.status).collect();
        assert_eq!(
            statuses,
            vec![
                Some(500),
                Some(500),
                Some(200),
                Some(503),
                Some(503),
                Some(503),
                Some(503)
            ]
        );
        assert!(entries[0].delivered_at.is_some());
        assert!(entries[1].delivered_at.is_none() && entries[1].dropped);
        assert_eq!(ep.received_events(), vec![ev("platform.start", 0)]);
        Ok(())
    }

    #[tokio::test]
    async fn history_limit_prunes_finished_entries() -> Result<(), String> {
        let ep = RecordingEndpoint::start(Behaviour::ok())
            .await
            .map_err(|e| e.to_string())?;
        let hub = Arc::new(TelemetryHub::with_history_limit(Some(5)));
        let client = crate::driver::http_client().map_err(|e| e.to_string())?;
        let _g = JoinGuard(tokio::spawn(deliver(
            hub.clone(),
            client,
            Duration::from_secs(5),
        )));
        hub.subscribe(sub(ep.url(), &["platform"], 1000, 25));
        for n in 0..40 {
            hub.emit(ev(
                if n % 4 == 0 {
                    "function"
                } else {
                    "platform.start"
                },
                n,
            ));
            if n % 7 == 0 {
                assert!(hub.flush(Duration::from_secs(2)).await);
            }
        }
        assert!(hub.flush(Duration::from_secs(2)).await);
        let expected: Vec<Value> = (0..40)
            .filter(|n| n % 4 != 0)
            .map(|n| ev("platform.start", n))
            .collect();
        assert_eq!(ep.received_events(), expected, "delivery is unaffected");
        let pruned = hub.pruned();
        let (entries, posts) = hub.take();
        assert!(entries.len() <= 5, "{}", entries.len());
        let kept = entries.iter().filter(|e| e.eligible).count();
        assert_eq!(pruned.events + kept, 30);
        assert_eq!(pruned.by_type.get("platform.start"), Some(&pruned.events));
        assert_eq!(pruned.undelivered, 0);
        assert!(posts.len() < 10 && pruned.posts + posts.len() >= 6);
        Ok(())
    }

    #[tokio::test]
    async fn connection_errors_are_recorded() -> Result<(), String> {
        let (hub, ep, _g) = setup(Behaviour::ok()).await?;
        let url = ep.url();
        drop(ep);
        tokio::time::sleep(Duration::from_millis(10)).await;
        hub.subscribe(sub(url, &["platform"], 1000, 25));
        hub.emit(ev("platform.start", 0));
        assert!(hub.flush(Duration::from_secs(3)).await);
        let (entries, posts) = hub.take();
        assert_eq!(posts.len(), 1 + RETRIES as usize);
        assert!(posts
            .iter()
            .all(|p| p.status.is_none() && p.error.is_some()));
        assert!(entries[0].dropped);
        Ok(())
    }
}
