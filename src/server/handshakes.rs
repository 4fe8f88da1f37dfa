//! The handshakes in progress, in a bounded number of slots shared fairly between sources.
//!
//! A new connection always gets a slot, so a client that completes its handshake in milliseconds
//! gets through however many connections an attacker holds open. What gives way for it is decided
//! by source (an IPv4 address, or an IPv6 /64, which one host or one customer usually has):
//!
//! - a source already holding its share (`per_source`) gives up its own oldest handshake;
//! - otherwise, when all slots are taken, the source holding the most gives up its oldest.
//!
//! So one address churning thousands of connections a second only ever evicts its own, and a
//! legitimate client from any other address keeps its slot until it is done.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

/// Where a connection comes from, for sharing handshake slots: an IPv4 address, or the /64 of an
/// IPv6 address (an IPv4-mapped IPv6 address counts as IPv4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    V4([u8; 4]),
    V6Prefix([u8; 8]),
}

impl Source {
    pub fn of(ip: IpAddr) -> Source {
        match ip {
            IpAddr::V4(v4) => Source::V4(v4.octets()),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Source::V4(v4.octets()),
                None => Source::V6Prefix(prefix64(&v6)),
            },
        }
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::V4(o) => write!(f, "{}", std::net::Ipv4Addr::from(*o)),
            Source::V6Prefix(p) => {
                let mut o = [0u8; 16];
                o[..8].copy_from_slice(p);
                write!(f, "{}/64", Ipv6Addr::from(o))
            }
        }
    }
}

fn prefix64(v6: &Ipv6Addr) -> [u8; 8] {
    let o = v6.octets();
    [o[0], o[1], o[2], o[3], o[4], o[5], o[6], o[7]]
}

/// Who had to give way for a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Evicted {
    /// Nobody: there was a free slot within the source's share.
    None,
    /// The new connection's own source was at its share and lost its oldest handshake.
    SameSource(Source),
    /// All slots were taken; this source, which held the most, lost its oldest handshake.
    LargestSource(Source),
}

#[derive(Debug)]
struct Pending {
    id: u64,
    source: Source,
    evict: CancellationToken,
}

#[derive(Debug, Default)]
struct Table {
    /// Every handshake in progress, oldest first.
    queue: VecDeque<Pending>,
    /// Handshakes in progress per source; a source with none has no entry, so the map never holds
    /// more entries than there are slots.
    per_source: HashMap<Source, usize>,
}

impl Table {
    /// Cancels and removes the oldest handshake of `source`.
    fn evict_oldest_of(&mut self, source: Source) {
        if let Some(i) = self.queue.iter().position(|p| p.source == source) {
            if let Some(p) = self.queue.remove(i) {
                p.evict.cancel();
                self.forget(source);
            }
        }
    }

    fn forget(&mut self, source: Source) {
        if let Some(n) = self.per_source.get_mut(&source) {
            *n -= 1;
            if *n == 0 {
                self.per_source.remove(&source);
            }
        }
    }

    /// The source holding the most handshakes; of those, the one whose oldest is oldest.
    fn largest_source(&self) -> Option<Source> {
        let most = self.per_source.values().copied().max()?;
        self.queue
            .iter()
            .find(|p| self.per_source.get(&p.source) == Some(&most))
            .map(|p| p.source)
    }
}

/// The handshakes in progress: at most `max` in all and `per_source` from one source.
#[derive(Debug)]
pub struct HandshakeSlots {
    max: usize,
    per_source: usize,
    table: Mutex<Table>,
    next_id: AtomicU64,
}

/// One handshake's claim on a slot; dropping it frees the slot.
#[derive(Debug)]
pub struct HandshakeSlot {
    slots: Arc<HandshakeSlots>,
    id: u64,
    source: Source,
    evicted: CancellationToken,
}

impl HandshakeSlots {
    /// Room for `max` handshakes at once, at most `per_source` of them from one source.
    pub fn new(max: usize, per_source: usize) -> Arc<Self> {
        let max = max.max(1);
        Arc::new(HandshakeSlots {
            max,
            per_source: per_source.clamp(1, max),
            table: Mutex::new(Table::default()),
            next_id: AtomicU64::new(0),
        })
    }

    /// Claims a slot for a connection from `ip`, evicting a handshake if needed (see the module
    /// documentation for which). Returns the slot and who gave way for it.
    pub fn claim(self: &Arc<Self>, ip: IpAddr) -> (HandshakeSlot, Evicted) {
        let source = Source::of(ip);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let evicted = CancellationToken::new();
        let mut t = self.table.lock().unwrap_or_else(|e| e.into_inner());
        let mine = t.per_source.get(&source).copied().unwrap_or(0);
        let gave_way = if mine >= self.per_source {
            t.evict_oldest_of(source);
            Evicted::SameSource(source)
        } else if t.queue.len() >= self.max {
            match t.largest_source() {
                Some(largest) => {
                    t.evict_oldest_of(largest);
                    Evicted::LargestSource(largest)
                }
                None => Evicted::None,
            }
        } else {
            Evicted::None
        };
        t.queue.push_back(Pending {
            id,
            source,
            evict: evicted.clone(),
        });
        *t.per_source.entry(source).or_insert(0) += 1;
        (
            HandshakeSlot {
                slots: self.clone(),
                id,
                source,
                evicted,
            },
            gave_way,
        )
    }

    /// Handshakes in progress, in all.
    pub fn total(&self) -> usize {
        self.table
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .queue
            .len()
    }

    /// Handshakes in progress, in all and from `ip`'s source.
    #[cfg(test)]
    pub fn in_progress(&self, ip: IpAddr) -> (usize, usize) {
        let t = self.table.lock().unwrap_or_else(|e| e.into_inner());
        (
            t.queue.len(),
            t.per_source.get(&Source::of(ip)).copied().unwrap_or(0),
        )
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
        let mut t = self.slots.table.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = t.queue.iter().position(|p| p.id == self.id) {
            t.queue.remove(i);
            t.forget(self.source);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_source_at_its_share_evicts_its_own_oldest() {
        let slots = HandshakeSlots::new(8, 2);
        let (legit, _) = slots.claim(ip("192.0.2.1"));
        let (a1, ev) = slots.claim(ip("198.51.100.7"));
        assert_eq!(ev, Evicted::None);
        let (_a2, _) = slots.claim(ip("198.51.100.7"));
        let (_a3, ev) = slots.claim(ip("198.51.100.7"));
        assert_eq!(ev, Evicted::SameSource(Source::of(ip("198.51.100.7"))));
        assert!(a1.evicted.is_cancelled());
        assert!(!legit.evicted.is_cancelled());
        assert_eq!(slots.in_progress(ip("198.51.100.7")), (3, 2));
    }

    #[test]
    fn when_full_the_largest_source_gives_way() {
        let slots = HandshakeSlots::new(4, 3);
        let (legit, _) = slots.claim(ip("192.0.2.1"));
        let attacker: Vec<_> = (0..3).map(|_| slots.claim(ip("198.51.100.7")).0).collect();
        let (_other, ev) = slots.claim(ip("203.0.113.5"));
        assert_eq!(ev, Evicted::LargestSource(Source::of(ip("198.51.100.7"))));
        assert!(attacker[0].evicted.is_cancelled());
        assert!(!legit.evicted.is_cancelled());
        assert_eq!(slots.in_progress(ip("192.0.2.1")), (4, 1));
    }

    #[test]
    fn dropping_a_slot_frees_it_and_forgets_an_idle_source() {
        let slots = HandshakeSlots::new(2, 2);
        let (a, _) = slots.claim(ip("192.0.2.1"));
        drop(a);
        assert_eq!(slots.in_progress(ip("192.0.2.1")), (0, 0));
        assert!(slots.table.lock().unwrap().per_source.is_empty());
        // An evicted slot dropped later does not count twice.
        let (b, _) = slots.claim(ip("192.0.2.1"));
        let (_c, _) = slots.claim(ip("192.0.2.1"));
        let (_d, ev) = slots.claim(ip("192.0.2.1"));
        assert!(matches!(ev, Evicted::SameSource(_)));
        drop(b);
        assert_eq!(slots.in_progress(ip("192.0.2.1")), (2, 2));
    }

    #[test]
    fn ipv6_shares_by_64_and_mapped_ipv4_counts_as_ipv4() {
        assert_eq!(
            Source::of(ip("2001:db8:1:2::1")),
            Source::of(ip("2001:db8:1:2:ffff::9"))
        );
        assert_ne!(
            Source::of(ip("2001:db8:1:2::1")),
            Source::of(ip("2001:db8:1:3::1"))
        );
        assert_eq!(
            Source::of(ip("::ffff:192.0.2.1")),
            Source::of(ip("192.0.2.1"))
        );
    }
}
