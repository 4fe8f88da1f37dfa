//! Warnings at a limited rate: a flood of bad connections must not become a flood of log lines.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// How often a rate-limited warning may be logged by default.
pub const DEFAULT_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Lets one event through per interval and counts the ones it holds back.
#[derive(Debug)]
pub struct LogLimiter {
    interval: Duration,
    state: Mutex<(Option<Instant>, u64)>,
}

impl LogLimiter {
    /// A limiter letting one event through per `interval`.
    pub fn new(interval: Duration) -> Self {
        LogLimiter {
            interval,
            state: Mutex::new((None, 0)),
        }
    }

    /// `Some(held_back)` if this event may be logged, `None` if it must be held back. `held_back`
    /// is how many were held back since the last one, or `None` for none: logged as a field, an
    /// `Option` appears only when it is `Some`, so lines do not carry a useless `held_back=0`.
    pub fn allow(&self) -> Option<Option<u64>> {
        let now = Instant::now();
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (last, suppressed) = &mut *state;
        if last.is_none_or(|l| now.duration_since(l) >= self.interval) {
            *last = Some(now);
            let n = std::mem::take(suppressed);
            Some((n > 0).then_some(n))
        } else {
            *suppressed += 1;
            None
        }
    }
}

impl Default for LogLimiter {
    fn default() -> Self {
        LogLimiter::new(DEFAULT_LOG_INTERVAL)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn one_event_per_interval_with_a_count_of_the_rest() {
        let l = LogLimiter::new(Duration::from_secs(10));
        assert_eq!(l.allow(), Some(None));
        assert_eq!(l.allow(), None);
        assert_eq!(l.allow(), None);
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(l.allow(), Some(Some(2)));
        assert_eq!(l.allow(), None);
    }
}
