//! The handshakes in progress, in a bounded number of slots where the oldest gives way to a new
//! connection.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

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
}
