//! Admission, in one place: who gets in and who is kept out. Capped handshakes in which the oldest
//! gives way to a new connection; a capped number of sessions; authentication of the hello against
//! the identity's policy (token, client certificate or both); and the failed-authentication guard,
//! which refuses an address that failed too often for a while.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ncx_proto::{ErrorCode, Message, Name, PROTOCOL_VERSION};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::config::{IdentityPolicy, ServerSettings};
use crate::ratelimit::LogLimiter;
use crate::refusal::Refusal;

/// What the TLS handshake established about the client: the credentials beside the hello.
pub(crate) struct PeerTls {
    /// Keying material for the token proof.
    pub exported: crate::auth::ExportedKey,
    /// The common name of the verified client certificate, if one was presented.
    pub cert_name: Option<String>,
    /// The server address the client connected to.
    pub local: SocketAddr,
}

/// The server's admission control.
pub(super) struct Admission {
    handshakes: Arc<HandshakeSlots>,
    max_handshakes: usize,
    sessions: Arc<Semaphore>,
    max_sessions: usize,
    guard: AuthGuard,
    block: Duration,
    failures_before_block: u32,
    /// Limits warnings about refused clients and visits.
    pub refusal_log: LogLimiter,
    /// Limits warnings about evicted handshakes.
    eviction_log: LogLimiter,
}

impl Admission {
    pub fn new(settings: &ServerSettings) -> Self {
        Admission {
            handshakes: HandshakeSlots::new(settings.max_handshakes),
            max_handshakes: settings.max_handshakes,
            sessions: Arc::new(Semaphore::new(settings.max_sessions)),
            max_sessions: settings.max_sessions,
            guard: AuthGuard::new(settings.auth_failures_before_block, settings.auth_block),
            block: settings.auth_block,
            failures_before_block: settings.auth_failures_before_block,
            refusal_log: LogLimiter::default(),
            eviction_log: LogLimiter::default(),
        }
    }

    /// A handshake slot for a new connection; when all are taken the oldest handshake is evicted
    /// for it, and that is worth a (rate-limited) warning.
    pub fn claim_handshake(&self) -> HandshakeSlot {
        let (slot, evicted) = self.handshakes.claim();
        if evicted {
            if let Some(held_back) = self.eviction_log.allow() {
                warn!(
                    limit = self.max_handshakes,
                    held_back, "all handshake slots taken; dropped the oldest pending handshake"
                );
            }
        }
        slot
    }

    /// A slot among the server's sessions, held for the session's life, or the refusal.
    pub fn session_slot(&self) -> Result<OwnedSemaphorePermit, Refusal> {
        self.sessions.clone().try_acquire_owned().map_err(|_| {
            Refusal::new(
                ErrorCode::LimitReached,
                format!(
                    "the server holds its maximum of {} sessions",
                    self.max_sessions
                ),
            )
        })
    }

    /// The refusal for an address that is blocked now, if `ip` is.
    pub fn blocked(&self, ip: IpAddr) -> Option<Refusal> {
        self.guard.blocked_for(ip).map(|left| {
            Refusal::new(
                ErrorCode::LimitReached,
                format!(
                    "too many failed authentications from {ip}; try again in {} s",
                    left.as_secs().max(1)
                ),
            )
        })
    }

    /// Records a failure from `ip` (`what` names the kind, as "failed authentications" or "refused
    /// visits") and warns when it makes the address blocked.
    pub fn record_failure(&self, ip: IpAddr, what: &str) {
        if self.guard.record_failure(ip) == FailureVerdict::NowBlocked {
            warn!(
                %ip,
                block = ?self.block,
                failures = self.failures_before_block,
                "blocking an address after repeated {what}"
            );
        }
    }

    /// A client certificate the client CA did not sign (or an expired one) is a failed
    /// authentication like a wrong token.
    pub fn certificate_refused(&self, ip: IpAddr, error: &std::io::Error) {
        if let Some(held_back) = self.refusal_log.allow() {
            warn!(%error, held_back, "client certificate refused");
        }
        self.record_failure(ip, "failed authentications");
    }

    /// Checks a client's first message: a hello of this protocol version, for an identity of
    /// `identities`, with the credentials its policy asks for, from an address that is not
    /// blocked. Returns the authenticated identity.
    pub fn authenticate(
        &self,
        identities: &HashMap<Name, IdentityPolicy>,
        facts: &PeerTls,
        peer: SocketAddr,
        msg: Message,
    ) -> Result<Name, Refusal> {
        let Message::Hello {
            version,
            identity,
            proof,
        } = msg
        else {
            return Err(Refusal::new(
                ErrorCode::ProtocolViolation,
                format!(
                    "expected a hello, got message type 0x{:02x}",
                    msg.type_byte()
                ),
            ));
        };
        if version != PROTOCOL_VERSION {
            return Err(Refusal::new(
                ErrorCode::VersionMismatch,
                format!(
                    "the server speaks protocol version {PROTOCOL_VERSION} and the client {version}: upgrade the older side"
                ),
            ));
        }
        if let Some(refusal) = self.blocked(peer.ip()) {
            return Err(refusal);
        }
        let result = match identities.get(&identity) {
            None => Err(Refusal::new(
                ErrorCode::UnknownIdentity,
                format!("the server has no identity named {identity}"),
            )),
            Some(policy) => check_credentials(policy, facts, &identity, &proof).map(|()| identity),
        };
        match &result {
            Ok(_) => self.guard.record_success(peer.ip()),
            Err(_) => self.record_failure(peer.ip(), "failed authentications"),
        }
        result
    }
}

/// Checks what the identity's policy asks for: a certificate naming it, a proof of its token, or
/// both. Certificates were verified against the client CA during the TLS handshake.
fn check_credentials(
    policy: &IdentityPolicy,
    facts: &PeerTls,
    identity: &Name,
    proof: &[u8; ncx_proto::AUTH_PROOF_LEN],
) -> Result<(), Refusal> {
    if policy.auth.needs_certificate() {
        match facts.cert_name.as_deref() {
            Some(name) if name == identity.as_str() => {}
            Some(name) => {
                return Err(Refusal::new(
                    ErrorCode::CertificateRequired,
                    format!("the client certificate is for {name:?}, not for identity {identity}"),
                ))
            }
            None => {
                return Err(Refusal::new(
                    ErrorCode::CertificateRequired,
                    format!("identity {identity} must present a client certificate signed by the server's client CA"),
                ))
            }
        }
    }
    if let Some(token) = policy.auth.token() {
        if !crate::auth::verify(token, &facts.exported, identity, proof) {
            return Err(Refusal::new(
                ErrorCode::BadToken,
                format!("the token for identity {identity} is wrong"),
            ));
        }
    }
    Ok(())
}

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
