//! Admission, in one place: who gets in and who is kept out. Capped handshakes in which the oldest
//! gives way to a new connection; a capped number of sessions; authentication of the hello against
//! the identity's policy (token, client certificate or both); and the failed-authentication guard,
//! which refuses an address that failed too often for a while.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use ncx_proto::{ErrorCode, Message, Name, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::warn;

use super::auth_guard::{AuthGuard, FailureVerdict, Who};
use super::handshakes::{Evicted, HandshakeSlot, HandshakeSlots};
use crate::config::{IdentityPolicy, ServerSettings};
use crate::ratelimit::LogLimiter;
use crate::refusal::Refusal;
use crate::tls::PeerCertificate;

/// What the TLS handshake established about the client: the credentials beside the hello.
pub(crate) struct PeerTls {
    /// Keying material for the token proof.
    pub exported: crate::auth::ExportedKey,
    /// The client certificate, verified against the client CA.
    pub cert: crate::tls::PeerCertificate,
    /// The server address the client connected to.
    pub local: SocketAddr,
}

/// A session's place among its identity's sessions and among the server's.
pub(super) struct SessionSlot {
    _own: OwnedSemaphorePermit,
    _global: OwnedSemaphorePermit,
}

/// The server's admission control.
pub(super) struct Admission {
    handshakes: Arc<HandshakeSlots>,
    max_handshakes: usize,
    max_handshakes_per_source: usize,
    sessions: Arc<Semaphore>,
    max_sessions: usize,
    /// Each identity's share of the sessions, so one identity cannot take them all.
    sessions_per_identity: RwLock<HashMap<Name, Arc<Semaphore>>>,
    max_sessions_per_identity: usize,
    /// Each identity's share of visitors, over all its sessions.
    visitors_per_identity: RwLock<HashMap<Name, Arc<Semaphore>>>,
    max_visitors_per_identity: usize,
    guard: AuthGuard,
    block: Duration,
    failures_before_block: u32,
    /// Limits warnings about refused clients and visits.
    pub refusal_log: LogLimiter,
    /// Limits the log lines of connections that never authenticated (one per connection, else).
    pub unauthenticated_log: LogLimiter,
    /// Limits warnings about evicted handshakes.
    eviction_log: LogLimiter,
    metrics: Arc<crate::metrics::ServerMetrics>,
}

impl Admission {
    pub fn new(settings: &ServerSettings, metrics: Arc<crate::metrics::ServerMetrics>) -> Self {
        Admission {
            handshakes: HandshakeSlots::new(
                settings.max_handshakes,
                settings.max_handshakes_per_source,
            ),
            max_handshakes: settings.max_handshakes,
            max_handshakes_per_source: settings.max_handshakes_per_source,
            sessions: Arc::new(Semaphore::new(settings.max_sessions)),
            max_sessions: settings.max_sessions,
            sessions_per_identity: RwLock::default(),
            max_sessions_per_identity: settings.max_sessions_per_identity,
            visitors_per_identity: RwLock::default(),
            max_visitors_per_identity: settings.max_visitors_per_identity,
            guard: AuthGuard::new(settings.auth_failures_before_block, settings.auth_block),
            block: settings.auth_block,
            failures_before_block: settings.auth_failures_before_block,
            refusal_log: LogLimiter::default(),
            unauthenticated_log: LogLimiter::default(),
            eviction_log: LogLimiter::default(),
            metrics,
        }
        .with_identities(settings.identities.iter().map(|p| &p.name))
    }

    /// Gives identities that have none yet their shares of sessions and visitors (at start, and
    /// for identities a reload adds). An identity a reload removes keeps its shares: its sessions
    /// are closed, and a later reload may add it back.
    pub fn admit_identities<'a>(&self, names: impl Iterator<Item = &'a Name>) {
        let mut sessions = write(&self.sessions_per_identity);
        let mut visitors = write(&self.visitors_per_identity);
        for name in names {
            sessions
                .entry(name.clone())
                .or_insert_with(|| Arc::new(Semaphore::new(self.max_sessions_per_identity)));
            visitors
                .entry(name.clone())
                .or_insert_with(|| Arc::new(Semaphore::new(self.max_visitors_per_identity)));
        }
    }

    fn with_identities<'a>(self, names: impl Iterator<Item = &'a Name>) -> Self {
        self.admit_identities(names);
        self
    }

    /// A handshake slot for a new connection from `ip`. When its source is at its share, its own
    /// oldest handshake is evicted for it; when all slots are taken, the oldest of the source
    /// holding the most. Either is worth a (rate-limited) warning naming the source that gave way.
    pub fn claim_handshake(&self, ip: IpAddr) -> HandshakeSlot {
        let (slot, evicted) = self.handshakes.claim(ip);
        let (why, from) = match evicted {
            Evicted::None => return slot,
            Evicted::SameSource(s) => ("this address is at its share of handshake slots", s),
            Evicted::LargestSource(s) => ("all handshake slots are taken", s),
        };
        self.metrics.handshake_evicted();
        if let Some(held_back) = self.eviction_log.allow() {
            warn!(
                limit = self.max_handshakes,
                per_source = self.max_handshakes_per_source,
                evicted_from = %from,
                held_back,
                "{why}; dropped the oldest pending handshake from `evicted_from`"
            );
        }
        slot
    }

    /// Handshakes in progress (connections not yet authenticated).
    pub fn handshakes_in_progress(&self) -> usize {
        self.handshakes.total()
    }

    /// How many sessions each identity holds (retiring ones included).
    pub fn sessions_by_identity(&self) -> Vec<(Name, usize)> {
        read(&self.sessions_per_identity)
            .iter()
            .map(|(name, share)| {
                let held = self
                    .max_sessions_per_identity
                    .saturating_sub(share.available_permits());
                (name.clone(), held)
            })
            .collect()
    }

    /// A slot among `identity`'s sessions and among the server's, held for the session's life,
    /// or the refusal. The identity's share is taken first: an identity at its share is refused
    /// as such, and never uses up a slot another identity could have.
    pub fn session_slot(&self, identity: &Name) -> Result<SessionSlot, Refusal> {
        let share = read(&self.sessions_per_identity).get(identity).cloned();
        // A reload may have removed the identity since it authenticated.
        let Some(share) = share else {
            return Err(Refusal::new(
                ErrorCode::UnknownIdentity,
                format!("identity {identity} is no longer configured on this server"),
            ));
        };
        let Ok(own) = share.clone().try_acquire_owned() else {
            return Err(Refusal::new(
                ErrorCode::LimitReached,
                format!(
                    "identity {identity} holds its maximum of {} sessions on this server",
                    self.max_sessions_per_identity
                ),
            ));
        };
        let global = self.sessions.clone().try_acquire_owned().map_err(|_| {
            Refusal::new(
                ErrorCode::LimitReached,
                format!(
                    "the server holds its maximum of {} sessions",
                    self.max_sessions
                ),
            )
        })?;
        Ok(SessionSlot {
            _own: own,
            _global: global,
        })
    }

    /// `identity`'s share of visitors: every visitor of its services holds a place of it.
    pub fn identity_visitors(&self, identity: &Name) -> Option<Arc<Semaphore>> {
        read(&self.visitors_per_identity).get(identity).cloned()
    }

    /// The refusal for `who` at `ip` while that pair is blocked.
    pub fn blocked(&self, ip: IpAddr, who: &Who) -> Option<Refusal> {
        self.guard.blocked_for(ip, who).map(|left| {
            let whom = match who {
                Who::Identity(name) => format!(" for identity {name}"),
                Who::Unknown => String::new(),
            };
            Refusal::new(
                ErrorCode::LimitReached,
                format!(
                    "too many failed authentications{whom} from {ip}; try again in {} s",
                    left.as_secs().max(1)
                ),
            )
        })
    }

    /// Records a failure of `who` from `ip` (`what` names the kind, as "failed authentications" or
    /// "refused visits") and warns when it makes the pair blocked.
    pub fn record_failure(&self, ip: IpAddr, who: Who, what: &str) {
        let identity = match &who {
            Who::Identity(name) => Some(name.clone()),
            Who::Unknown => None,
        };
        if self.guard.record_failure(ip, who) == FailureVerdict::NowBlocked {
            warn!(
                %ip,
                identity = identity.as_ref().map(tracing::field::display),
                block = ?self.block,
                failures = self.failures_before_block,
                "blocking an address after repeated {what}"
            );
        }
    }

    /// A client certificate the client CA did not sign (or an expired one) is a failed
    /// authentication like a wrong token; no identity is known yet, so it counts as unknown.
    pub fn certificate_refused(&self, ip: IpAddr, error: &std::io::Error) {
        if let Some(held_back) = self.refusal_log.allow() {
            warn!(%error, held_back, "client certificate refused");
        }
        self.record_failure(ip, Who::Unknown, "failed authentications");
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
            instance,
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
        if !(MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&version) {
            return Err(Refusal::new(
                ErrorCode::VersionMismatch,
                format!(
                    "the server speaks protocol versions {MIN_PROTOCOL_VERSION} to {PROTOCOL_VERSION} and the client {version}: upgrade the older side"
                ),
            ));
        }
        if instance.is_some() && version < ncx_proto::GROUP_VERSION {
            return Err(Refusal::new(
                ErrorCode::ProtocolViolation,
                format!(
                    "an instance name needs protocol version {}; the hello says {version}",
                    ncx_proto::GROUP_VERSION
                ),
            ));
        }
        // A name that is no identity is counted apart, so probes never lock out a real identity
        // behind the same address.
        let who = if identities.contains_key(&identity) {
            Who::Identity(identity.clone())
        } else {
            Who::Unknown
        };
        if let Some(refusal) = self.blocked(peer.ip(), &who) {
            return Err(refusal);
        }
        // A certificate that is presented must be good, whatever the identity asks for (as when
        // the TLS layer refused it). Counted like a wrong token, once: the client does not retry
        // a permanent refusal.
        let result = match (&facts.cert, identities.get(&identity)) {
            (PeerCertificate::Refused(why), _) => {
                Err(Refusal::new(ErrorCode::CertificateRefused, why.clone()))
            }
            (_, None) => Err(Refusal::new(
                ErrorCode::UnknownIdentity,
                format!("the server has no identity named {identity}"),
            )),
            (_, Some(policy)) => {
                check_credentials(policy, facts, &identity, &proof).map(|()| identity)
            }
        };
        match &result {
            Ok(identity) => self.guard.record_success(peer.ip(), identity),
            Err(_) => self.record_failure(peer.ip(), who, "failed authentications"),
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
        match &facts.cert {
            PeerCertificate::Verified(Some(name)) if name == identity.as_str() => {}
            PeerCertificate::Verified(Some(name)) => {
                return Err(Refusal::new(
                    ErrorCode::CertificateRequired,
                    format!("the client certificate is for {name:?}, not for identity {identity}"),
                ))
            }
            PeerCertificate::Verified(None) => {
                return Err(Refusal::new(
                    ErrorCode::CertificateRequired,
                    format!("the client certificate names no identity (it has no common name); identity {identity} needs one from `ncx certs client {identity}`"),
                ))
            }
            PeerCertificate::None | PeerCertificate::Refused(_) => {
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

/// The shares' maps hold only semaphores, which stay consistent whatever a panicking holder did.
fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|e| e.into_inner())
}
