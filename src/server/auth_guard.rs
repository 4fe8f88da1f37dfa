//! The failed-authentication guard: failures counted per address and identity, and a pair that
//! fails too often refused for a while.
//!
//! Counting per address alone punished neighbours: everyone behind one office NAT or CGNAT address
//! was locked out by one identity's refused visits or by a stranger's probes. So failures count per
//! (address, identity), which still slows brute force against one identity, and probes of names
//! that are no identity (and certificates refused before any name is known) count per address
//! under [`Who::Unknown`], a budget of their own that never blocks a known identity.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use ncx_proto::Name;
use tokio::time::Instant;

/// Whose failures: a configured identity's, or those of names that are none (and of certificates
/// refused before a name was known).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Who {
    /// A configured identity.
    Identity(Name),
    /// No configured identity.
    Unknown,
}

/// (address, identity) pairs tracked for failed authentication at most; beyond it, entries that
/// are not blocked are forgotten first, so the table cannot grow without bound.
const MAX_TRACKED: usize = 16_384;

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    window_start: Instant,
    blocked_until: Option<Instant>,
}

/// Counts failed authentications per (address, identity) and blocks a pair that fails too often.
#[derive(Debug)]
pub struct AuthGuard {
    threshold: u32,
    block: Duration,
    table: Mutex<HashMap<(IpAddr, Who), Failures>>,
}

/// The outcome of recording a failure.
#[derive(Debug, PartialEq, Eq)]
pub enum FailureVerdict {
    /// Still below the threshold.
    Counted,
    /// This failure reached the threshold: the pair is now blocked.
    NowBlocked,
}

impl AuthGuard {
    /// Blocks a pair for `block` after `threshold` failures within `block`.
    pub fn new(threshold: u32, block: Duration) -> Self {
        AuthGuard {
            threshold: threshold.max(1),
            block,
            table: Mutex::new(HashMap::new()),
        }
    }

    /// How much longer `who` stays blocked at `ip`, if it is.
    pub fn blocked_for(&self, ip: IpAddr, who: &Who) -> Option<Duration> {
        let now = Instant::now();
        let table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        table
            .get(&(ip, who.clone()))
            .and_then(|f| f.blocked_until)
            .filter(|until| *until > now)
            .map(|until| until - now)
    }

    /// Records a failed authentication of `who` from `ip`.
    pub fn record_failure(&self, ip: IpAddr, who: Who) -> FailureVerdict {
        let now = Instant::now();
        let key = (ip, who);
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        if table.len() >= MAX_TRACKED && !table.contains_key(&key) {
            table.retain(|_, f| f.blocked_until.is_some_and(|u| u > now));
            if table.len() >= MAX_TRACKED {
                table.clear();
            }
        }
        let f = table.entry(key).or_insert(Failures {
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

    /// Forgets `identity`'s failures at `ip` after it authenticated.
    pub fn record_success(&self, ip: IpAddr, identity: &Name) {
        let key = (ip, Who::Identity(identity.clone()));
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        if table.get(&key).is_some_and(|f| f.blocked_until.is_none()) {
            table.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> Who {
        Who::Identity(Name::new("alice").unwrap())
    }

    #[tokio::test(start_paused = true)]
    async fn a_pair_is_blocked_after_threshold_and_released_after_the_block() {
        let g = AuthGuard::new(3, Duration::from_secs(60));
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        assert_eq!(g.record_failure(ip, alice()), FailureVerdict::Counted);
        assert_eq!(g.record_failure(ip, alice()), FailureVerdict::Counted);
        assert!(g.blocked_for(ip, &alice()).is_none());
        assert_eq!(g.record_failure(ip, alice()), FailureVerdict::NowBlocked);
        assert!(g.blocked_for(ip, &alice()).is_some());
        assert!(g.blocked_for(other, &alice()).is_none());
        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(g.blocked_for(ip, &alice()).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn neighbours_behind_one_address_are_not_punished() {
        let g = AuthGuard::new(2, Duration::from_secs(60));
        let nat: IpAddr = "198.51.100.7".parse().unwrap();
        let bob = Who::Identity(Name::new("bob").unwrap());
        for _ in 0..2 {
            g.record_failure(nat, bob.clone());
            g.record_failure(nat, Who::Unknown);
        }
        assert!(g.blocked_for(nat, &bob).is_some());
        assert!(g.blocked_for(nat, &Who::Unknown).is_some());
        assert!(
            g.blocked_for(nat, &alice()).is_none(),
            "alice did nothing wrong"
        );
        // A success forgets only its own identity's count.
        g.record_failure(nat, alice());
        g.record_success(nat, &Name::new("alice").unwrap());
        g.record_failure(nat, alice());
        assert!(g.blocked_for(nat, &alice()).is_none());
    }
}
