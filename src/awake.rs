//! Timeouts that do not count the time the environment spent frozen.
//!
//! Lambda freezes the whole process between invocations, and a delivery that runs beside the
//! lifecycle may be in flight when it does: the endpoint answers while the process is frozen, and
//! the answer waits in the socket. The monotonic clock runs on through a freeze, so after the thaw
//! an ordinary timer has long expired and would cut the exchange just before it reads that answer;
//! the batch would then be sent again (a duplicate). A timer here that fires later than the CPU
//! share can explain means the process was not running: the exchange gets its budget again,
//! counted from the thaw, once per wait: time really spent waiting stays within twice the budget.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// A timer firing this much after its instant was not delayed by scheduling: at a 128 MB
/// function's CPU share (7.2 % of a core, a 100 ms quota period) a runnable process waits at most
/// ~93 ms for its turn.
pub const FREEZE_EVIDENCE: Duration = Duration::from_millis(250);

/// False under Lambda Managed Instances, which never freezes an environment: there a late timer
/// is a starved CPU, and the exchange gets no second budget.
static FREEZES_POSSIBLE: AtomicBool = AtomicBool::new(true);

/// The process runs where it is never frozen (Managed Instances): late timers are not forgiven.
pub fn assume_no_freezes() {
    FREEZES_POSSIBLE.store(false, Ordering::Relaxed);
}

/// Whether a timer or a sleep that ended `late` after its instant shows that the process was
/// frozen meanwhile.
pub fn looks_frozen(late: Duration) -> bool {
    shows_freeze(late, FREEZES_POSSIBLE.load(Ordering::Relaxed))
}

fn shows_freeze(late: Duration, freezes_possible: bool) -> bool {
    freezes_possible && late >= FREEZE_EVIDENCE
}

/// The budget ran out while the process was running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed;

/// Runs `future` for at most `budget` of time in which the process was not frozen.
pub async fn timeout<F: Future>(budget: Duration, future: F) -> Result<F::Output, Elapsed> {
    timeout_at(Instant::now() + budget, future).await
}

/// Runs `future` until `deadline`, extended past a freeze as described in the module's comment:
/// once (a second late timer is not forgiven), by the budget the deadline had at the start.
pub async fn timeout_at<F: Future>(deadline: Instant, future: F) -> Result<F::Output, Elapsed> {
    let budget = deadline.saturating_duration_since(Instant::now());
    let mut future = std::pin::pin!(future);
    let mut expires = deadline;
    let mut forgiven = false;
    loop {
        match tokio::time::timeout_at(expires, &mut future).await {
            Ok(output) => return Ok(output),
            Err(_) => {
                let now = Instant::now();
                if forgiven || !looks_frozen(now.saturating_duration_since(expires)) {
                    return Err(Elapsed);
                }
                forgiven = true;
                tracing::debug!(
                    late_ms = now.duration_since(expires).as_millis() as u64,
                    "a timer fired after a freeze; the exchange in flight gets its time again"
                );
                expires = now + budget;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_ordinary_timeout_still_cuts() {
        let started = Instant::now();
        let result = timeout(Duration::from_millis(30), std::future::pending::<()>()).await;
        assert_eq!(result, Err(Elapsed));
        assert!(started.elapsed() < FREEZE_EVIDENCE + Duration::from_millis(30));
    }

    #[test]
    fn a_late_timer_shows_a_freeze_only_where_freezes_happen() {
        assert!(shows_freeze(Duration::from_millis(400), true));
        assert!(!shows_freeze(Duration::from_millis(100), true));
        assert!(!shows_freeze(Duration::from_millis(400), false));
    }

    #[tokio::test]
    async fn a_future_that_finishes_in_time_is_not_cut() {
        let result = timeout(Duration::from_secs(5), async { 7 }).await;
        assert_eq!(result, Ok(7));
    }

    /// A blocked thread stands in for a freeze: no timer fires while it is blocked, and both the
    /// exchange's timer and the peer's answer (a task whose timer also fell inside the freeze, as
    /// hyper's connection task reading the answer would) come due at the thaw, the exchange's
    /// first. The answer is then read, not cut.
    #[tokio::test(flavor = "current_thread")]
    async fn a_freeze_past_the_deadline_does_not_cut_the_exchange() {
        let (answer, answered) = tokio::sync::oneshot::channel::<u8>();
        let exchange = async move { answered.await.ok() };
        let guarded = tokio::spawn(timeout(Duration::from_millis(50), exchange));
        let peer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(150)).await;
            let _ = answer.send(1);
        });
        tokio::task::yield_now().await;
        std::thread::sleep(Duration::from_millis(500));
        let result = guarded.await.expect("task");
        peer.await.expect("peer");
        assert_eq!(result, Ok(Some(1)));
    }
}
