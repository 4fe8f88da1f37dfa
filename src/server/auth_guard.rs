//! The failed-authentication guard: failures counted per address, and an address that fails too
//! often refused for a while.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Addresses tracked for failed authentication at most; beyond it, entries that are not blocked
/// are forgotten first, so the table cannot grow without bound.
const MAX_TRACKED_ADDRESSES: usize = 16_384;

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    window_start: Instant,
    blocked_until: Option<Instant>,
}

/// Counts failed authentications per address and blocks an address that fails too often.
#[derive(Debug)]
pub struct AuthGuard {
    threshold: u32,
    block: Duration,
    table: Mutex<HashMap<IpAddr, Failures>>,
}

/// The outcome of recording a failure.
#[derive(Debug, PartialEq, Eq)]
pub enum FailureVerdict {
    /// Still below the threshold.
    Counted,
    /// This failure reached the threshold: the address is now blocked.
    NowBlocked,
}

impl AuthGuard {
    /// Blocks an address for `block` after `threshold` failures within `block`.
    pub fn new(threshold: u32, block: Duration) -> Self {
        AuthGuard {
            threshold: threshold.max(1),
            block,
            table: Mutex::new(HashMap::new()),
        }
    }

    /// How much longer `ip` stays blocked, if it is.
    pub fn blocked_for(&self, ip: IpAddr) -> Option<Duration> {
        let now = Instant::now();
        let table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        table
            .get(&ip)
            .and_then(|f| f.blocked_until)
            .filter(|until| *until > now)
            .map(|until| until - now)
    }

    /// Records a failed authentication from `ip`.
    pub fn record_failure(&self, ip: IpAddr) -> FailureVerdict {
        let now = Instant::now();
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        if table.len() >= MAX_TRACKED_ADDRESSES && !table.contains_key(&ip) {
            table.retain(|_, f| f.blocked_until.is_some_and(|u| u > now));
            if table.len() >= MAX_TRACKED_ADDRESSES {
                table.clear();
            }
        }
        let f = table.entry(ip).or_insert(Failures {
            count: 0,
            window_start: now,
            blocked_until: None,
        });
        if now.duration_since(f.window_start) > self.block {
            *f = Failures {
                count: 0,
                window_start: now,
                blocked_until: None,
            };
        }
        f.count += 1;
        if f.count >= self.threshold && f.blocked_until.is_none_or(|u| u <= now) {
            f.blocked_until = Some(now + self.block);
            f.count = 0;
            f.window_start = now;
            return FailureVerdict::NowBlocked;
        }
        FailureVerdict::Counted
    }

    /// Forgets `ip`'s failures after a successful authentication.
    pub fn record_success(&self, ip: IpAddr) {
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        if table.get(&ip).is_some_and(|f| f.blocked_until.is_none()) {
            table.remove(&ip);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn address_is_blocked_after_threshold_and_released_after_the_block() {
        let g = AuthGuard::new(3, Duration::from_secs(60));
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        assert_eq!(g.record_failure(ip), FailureVerdict::Counted);
        assert_eq!(g.record_failure(ip), FailureVerdict::Counted);
        assert!(g.blocked_for(ip).is_none());
        assert_eq!(g.record_failure(ip), FailureVerdict::NowBlocked);
        assert!(g.blocked_for(ip).is_some());
        assert!(g.blocked_for(other).is_none());
        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(g.blocked_for(ip).is_none());
    }
}
