//! Admission control before a client is trusted: capped handshakes in which the oldest gives way to
//! a new connection, and addresses that fail authentication too often are refused for a while.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Addresses tracked for failed authentication at most; beyond it, entries that are not blocked
/// are forgotten first, so the table cannot grow without bound.
const MAX_TRACKED_ADDRESSES: usize = 16_384;

/// The handshakes in progress. When all slots are taken, a new connection takes the slot of the
/// oldest handshake, which is cancelled. A client that completes its handshake in milliseconds
/// therefore always gets through, however many idle connections an attacker holds open; the
/// attacker's connections are what gets dropped.
#[derive(Debug)]
pub struct HandshakeSlots {
    max: usize,
    queue: Mutex<VecDeque<(u64, CancellationToken)>>,
    next_id: AtomicU64,
}

/// One handshake's claim on a slot; dropping it frees the slot.
#[derive(Debug)]
pub struct HandshakeSlot {
    slots: Arc<HandshakeSlots>,
    id: u64,
    evicted: CancellationToken,
}

impl HandshakeSlots {
    /// Room for `max` handshakes at once.
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(HandshakeSlots {
            max: max.max(1),
            queue: Mutex::new(VecDeque::new()),
            next_id: AtomicU64::new(0),
        })
    }

    /// Claims a slot, evicting the oldest handshake if all are taken. Returns the slot and whether
    /// another handshake was evicted for it.
    pub fn claim(self: &Arc<Self>) -> (HandshakeSlot, bool) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let evicted = CancellationToken::new();
        let mut evicted_other = false;
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        while q.len() >= self.max {
            if let Some((_, oldest)) = q.pop_front() {
                oldest.cancel();
                evicted_other = true;
            }
        }
        q.push_back((id, evicted.clone()));
        (
            HandshakeSlot {
                slots: self.clone(),
                id,
                evicted,
            },
            evicted_other,
        )
    }

    /// Handshakes in progress.
    #[cfg(test)]
    pub fn in_progress(&self) -> usize {
        self.queue.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

impl HandshakeSlot {
    /// Completes when this handshake was evicted to make room for a newer one.
    pub async fn evicted(&self) {
        self.evicted.cancelled().await
    }
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        let mut q = self.slots.queue.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = q.iter().position(|(id, _)| *id == self.id) {
            q.remove(i);
        }
    }
}

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

    #[test]
    fn oldest_handshake_is_evicted_when_full() {
        let slots = HandshakeSlots::new(2);
        let (a, ev) = slots.claim();
        assert!(!ev);
        let (_b, ev) = slots.claim();
        assert!(!ev);
        let (_c, ev) = slots.claim();
        assert!(ev);
        assert!(a.evicted.is_cancelled());
        assert_eq!(slots.in_progress(), 2);
        drop(a);
        assert_eq!(slots.in_progress(), 2);
    }

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
