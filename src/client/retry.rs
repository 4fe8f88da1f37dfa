//! When the client tries again: exponential backoff between failed attempts, a quick first retry
//! after a session that was up (a restarted server is back within a second, as `ssh -R` is), and a
//! long pause when another client took this identity's services.

use std::time::Duration;

use tokio::time::Instant;

use crate::config::Backoff;

/// A session that lived this long resets the backoff to its initial value.
pub const BACKOFF_RESET_AFTER: Duration = Duration::from_secs(60);

/// The first retry after a session that was up. A server that restarts is usually listening again
/// within a second; the configured initial backoff (1 s by default) would land just before it
/// listens and then wait twice as long.
pub const QUICK_RETRY: Duration = Duration::from_millis(250);

/// How often the quick retry may be used: once per this long, so a server whose sessions die at
/// once after they start is not hammered four times a second by every client.
pub const QUICK_RETRY_EVERY: Duration = BACKOFF_RESET_AFTER;

/// The reconnect schedule of one client.
#[derive(Debug)]
pub(super) struct Retry {
    cfg: Backoff,
    /// The pause after the next failed attempt.
    next: Duration,
    /// When the quick retry was last used.
    last_quick: Option<Instant>,
}

impl Retry {
    pub fn new(cfg: Backoff) -> Self {
        Retry {
            next: cfg.initial,
            cfg,
            last_quick: None,
        }
    }

    /// The pause after an attempt that never got a session up.
    pub fn after_failed_attempt(&mut self) -> Duration {
        let pause = self.next;
        self.next = (self.next * 2).min(self.cfg.max);
        pause
    }

    /// The pause after a session that was up for `lived` ended.
    pub fn after_session(&mut self, lived: Duration) -> Duration {
        if lived >= BACKOFF_RESET_AFTER {
            self.next = self.cfg.initial;
        }
        let now = Instant::now();
        if self
            .last_quick
            .is_none_or(|t| now.duration_since(t) >= QUICK_RETRY_EVERY)
        {
            self.last_quick = Some(now);
            return QUICK_RETRY.min(self.cfg.initial);
        }
        self.after_failed_attempt()
    }

    /// The pause after another client with the same identity took over: coming back at once would
    /// take the services back and start a tug of war.
    pub fn after_replaced(&mut self) -> Duration {
        self.next = self.cfg.max;
        self.after_failed_attempt()
    }

    /// A rotation: the new session follows at once, and the schedule starts over.
    pub fn after_rotation(&mut self) {
        self.next = self.cfg.initial;
    }
}

/// `base` ± 20%, so that many clients cut off together do not return together.
pub(super) fn jitter(base: Duration) -> Duration {
    let mut b = [0u8; 2];
    let _ = aws_lc_rs::rand::fill(&mut b);
    let r = f64::from(u16::from_le_bytes(b)) / f64::from(u16::MAX); // 0..=1
    base.mul_f64(0.8 + 0.4 * r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Backoff {
        Backoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(30),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn failed_attempts_double_up_to_the_maximum() {
        let mut r = Retry::new(cfg());
        let pauses: Vec<u64> = (0..7).map(|_| r.after_failed_attempt().as_secs()).collect();
        assert_eq!(pauses, [1, 2, 4, 8, 16, 30, 30]);
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_retry_after_a_session_is_quick_then_the_backoff_goes_on() {
        let mut r = Retry::new(cfg());
        assert_eq!(r.after_failed_attempt(), Duration::from_secs(1));
        assert_eq!(r.after_session(Duration::from_secs(5)), QUICK_RETRY);
        // The server is not back yet: the backoff continues where it was.
        assert_eq!(r.after_failed_attempt(), Duration::from_secs(2));
        // A second short session within the minute: no second quick retry.
        assert_eq!(
            r.after_session(Duration::from_secs(5)),
            Duration::from_secs(4)
        );
        tokio::time::advance(QUICK_RETRY_EVERY).await;
        assert_eq!(r.after_session(Duration::from_secs(5)), QUICK_RETRY);
    }

    #[tokio::test(start_paused = true)]
    async fn a_long_session_resets_the_backoff() {
        let mut r = Retry::new(cfg());
        for _ in 0..5 {
            r.after_failed_attempt();
        }
        assert_eq!(r.after_session(BACKOFF_RESET_AFTER), QUICK_RETRY);
        assert_eq!(r.after_failed_attempt(), Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_takeover_waits_the_longest_and_a_rotation_starts_over() {
        let mut r = Retry::new(cfg());
        assert_eq!(r.after_replaced(), Duration::from_secs(30));
        r.after_rotation();
        assert_eq!(r.after_failed_attempt(), Duration::from_secs(1));
    }

    #[test]
    fn jitter_stays_within_a_fifth() {
        for _ in 0..1000 {
            let j = jitter(QUICK_RETRY);
            assert!(
                j >= QUICK_RETRY.mul_f64(0.8) && j <= QUICK_RETRY.mul_f64(1.2),
                "{j:?}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_small_initial_backoff_is_not_slowed_by_the_quick_retry() {
        let mut r = Retry::new(Backoff {
            initial: Duration::from_millis(50),
            max: Duration::from_secs(1),
        });
        assert_eq!(r.after_session(Duration::ZERO), Duration::from_millis(50));
    }
}
