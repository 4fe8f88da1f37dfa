//! The one drain, used by both ends: after a go-away, no new visitor is taken, and those in flight
//! may finish until a deadline; whatever is left then is reset.

use std::time::Duration;

use tokio::time::Instant;
use tokio_util::task::TaskTracker;

/// A drain in progress.
#[derive(Debug, Clone, Copy)]
pub struct Drain {
    deadline: Instant,
}

/// How a drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainEnd {
    /// Every visitor finished.
    Finished,
    /// The deadline passed with visitors still running; the caller resets them.
    DeadlinePassed,
}

impl Drain {
    /// Starts draining `visitors`: the tracker is closed, so it counts down to empty, and the
    /// visitors get `timeout` to finish.
    pub fn start(visitors: &TaskTracker, timeout: Duration) -> Self {
        visitors.close();
        Drain {
            deadline: Instant::now()
                .checked_add(timeout)
                .unwrap_or_else(far_future),
        }
    }

    /// Completes when every visitor finished or the deadline passed, whichever comes first (both
    /// at once count as finished). Cancel-safe.
    pub async fn end(&self, visitors: &TaskTracker) -> DrainEnd {
        tokio::select! {
            biased;
            _ = visitors.wait() => DrainEnd::Finished,
            _ = tokio::time::sleep_until(self.deadline) => DrainEnd::DeadlinePassed,
        }
    }
}

/// A deadline no drain reaches (about 30 years), for a timeout too large to add to now.
fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365 * 30)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn finishes_when_the_last_visitor_does() {
        let visitors = TaskTracker::new();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
        visitors.spawn(async move {
            let _ = done_rx.await;
        });
        let drain = Drain::start(&visitors, Duration::from_secs(30));
        let started = Instant::now();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(3)).await;
            let _ = done_tx.send(());
        });
        assert_eq!(drain.end(&visitors).await, DrainEnd::Finished);
        assert_eq!(started.elapsed(), Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_at_the_deadline() {
        let visitors = TaskTracker::new();
        visitors.spawn(std::future::pending::<()>());
        let drain = Drain::start(&visitors, Duration::from_secs(30));
        let started = Instant::now();
        assert_eq!(drain.end(&visitors).await, DrainEnd::DeadlinePassed);
        assert_eq!(started.elapsed(), Duration::from_secs(30));
    }

    #[tokio::test(start_paused = true)]
    async fn no_visitors_finishes_at_once_and_a_huge_timeout_does_not_overflow() {
        let visitors = TaskTracker::new();
        let drain = Drain::start(&visitors, Duration::MAX);
        assert_eq!(drain.end(&visitors).await, DrainEnd::Finished);
    }
}
