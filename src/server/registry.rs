//! Who holds what on the server: the live session of each identity, the owner of each public
//! port, and the private services.
//!
//! Both maps sit behind one short-held `std` mutex; nothing awaits while holding it.
//!
//! The registry is the lowest table of the server and depends on nothing above it: it holds the
//! session of a private service as a `Weak<S>` of whatever type the server uses for a session.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use ncx_proto::Name;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// Identifies one session for the lifetime of the server process.
pub type SessionId = u64;

/// The registry's view of a live session.
#[derive(Debug, Clone)]
pub struct SessionEntry {
    /// Which session.
    pub id: SessionId,
    /// Cancelled to make it end because a newer session of the same identity took over.
    pub replace: CancellationToken,
    /// Cancelled by the session once it has released every port.
    pub ports_released: CancellationToken,
}

/// A private service as the registry holds it; `S` is the server's session type.
pub struct PrivateService<S> {
    /// The identity that offers it.
    pub owner: Name,
    /// The owner's session that registered it.
    pub session: SessionId,
    /// Who may visit it.
    pub visitors: Arc<[Name]>,
    /// The owner's session (weak: the registry never keeps a session alive).
    pub ctx: Weak<S>,
    /// Caps the service's concurrent visitors.
    pub permits: Arc<Semaphore>,
    /// Whether the owner's local service answers its health check (the client says so).
    pub healthy: Arc<std::sync::atomic::AtomicBool>,
    /// A UDP service: reached only by visits that say UDP.
    pub udp: bool,
}

// Not derived: a derive would ask for `S: Clone`, and a `Weak<S>` clones without it.
impl<S> Clone for PrivateService<S> {
    fn clone(&self) -> Self {
        PrivateService {
            owner: self.owner.clone(),
            session: self.session,
            visitors: self.visitors.clone(),
            ctx: self.ctx.clone(),
            permits: self.permits.clone(),
            healthy: self.healthy.clone(),
            udp: self.udp,
        }
    }
}

/// Which sessions take over from each other: an identity's, of one instance (`None`: the
/// identity's unnamed one). Sessions of different instances coexist.
pub type SessionKey = (Name, Option<Name>);

struct Inner<S> {
    sessions: HashMap<SessionKey, SessionEntry>,
    ports: HashMap<Port, (Name, SessionId)>,
    /// Keyed by (owner, service): names are unique per identity only.
    private: HashMap<(Name, Name), PrivateService<S>>,
}

/// The registry. One per server.
pub struct Registry<S> {
    inner: Mutex<Inner<S>>,
}

impl<S> Default for Registry<S> {
    fn default() -> Self {
        Registry {
            inner: Mutex::new(Inner {
                sessions: HashMap::new(),
                ports: HashMap::new(),
                private: HashMap::new(),
            }),
        }
    }
}

/// A public port: TCP and UDP ports of one number are different ports (a TCP and a UDP
/// service may share a number).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Port {
    Tcp(u16),
    Udp(u16),
}

impl std::fmt::Display for Port {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Port::Tcp(n) => write!(f, "{n}"),
            Port::Udp(n) => write!(f, "{n}/udp"),
        }
    }
}

/// Why a port cannot be reserved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortClaimError {
    /// Another identity holds it.
    OtherIdentity(Name),
    /// Another session of the same identity still holds it (it is being replaced).
    OtherSession,
}

impl<S> Registry<S> {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<S>> {
        // A panic while holding this lock leaves only plain maps behind, which stay consistent.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes `entry` the live session of `key` (an identity's instance) and returns the session
    /// it replaces, if any.
    pub fn install_session(&self, key: &SessionKey, entry: SessionEntry) -> Option<SessionEntry> {
        self.lock().sessions.insert(key.clone(), entry)
    }

    /// Forgets `key`'s session if it is still `id` (a newer one may have replaced it).
    pub fn remove_session(&self, key: &SessionKey, id: SessionId) {
        let mut inner = self.lock();
        if inner.sessions.get(key).is_some_and(|e| e.id == id) {
            inner.sessions.remove(key);
        }
    }

    /// Reserves `port` for `identity`'s session `id`.
    pub fn claim_port(
        &self,
        port: Port,
        identity: &Name,
        id: SessionId,
    ) -> Result<(), PortClaimError> {
        let mut inner = self.lock();
        match inner.ports.get(&port) {
            Some((owner, _)) if owner != identity => {
                Err(PortClaimError::OtherIdentity(owner.clone()))
            }
            Some((_, sid)) if *sid != id => Err(PortClaimError::OtherSession),
            _ => {
                inner.ports.insert(port, (identity.clone(), id));
                Ok(())
            }
        }
    }

    /// Whether `port` is reserved by anyone.
    pub fn is_claimed(&self, port: Port) -> bool {
        self.lock().ports.contains_key(&port)
    }

    /// Registers `entry.owner`'s private service `name`. A visitor names the owner as well as the
    /// service, so identities cannot collide or stand in for each other; only an earlier session
    /// of the same identity can still hold the name.
    pub fn claim_private(
        &self,
        name: &Name,
        entry: PrivateService<S>,
    ) -> Result<(), PortClaimError> {
        let mut inner = self.lock();
        let key = (entry.owner.clone(), name.clone());
        match inner.private.get(&key) {
            Some(held) if held.session != entry.session => Err(PortClaimError::OtherSession),
            _ => {
                inner.private.insert(key, entry);
                Ok(())
            }
        }
    }

    /// `owner`'s private service `name`, if it is registered.
    pub fn private(&self, owner: &Name, name: &Name) -> Option<PrivateService<S>> {
        self.lock()
            .private
            .get(&(owner.clone(), name.clone()))
            .cloned()
    }

    /// Removes `owner`'s private service `name` if session `id` registered it.
    pub fn release_private(&self, owner: &Name, name: &Name, id: SessionId) {
        let mut inner = self.lock();
        let key = (owner.clone(), name.clone());
        if inner.private.get(&key).is_some_and(|p| p.session == id) {
            inner.private.remove(&key);
        }
    }

    /// Releases `port` if session `id` holds it.
    pub fn release_port(&self, port: Port, id: SessionId) {
        let mut inner = self.lock();
        if inner.ports.get(&port).is_some_and(|(_, sid)| *sid == id) {
            inner.ports.remove(&port);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> Name {
        Name::new(s).unwrap()
    }

    fn entry(id: SessionId) -> SessionEntry {
        SessionEntry {
            id,
            replace: CancellationToken::new(),
            ports_released: CancellationToken::new(),
        }
    }

    fn private(owner: &str, session: SessionId, ctx: &Arc<u32>) -> PrivateService<u32> {
        PrivateService {
            owner: name(owner),
            session,
            visitors: vec![name("alice")].into(),
            ctx: Arc::downgrade(ctx),
            permits: Arc::new(Semaphore::new(1)),
            healthy: Default::default(),
            udp: false,
        }
    }

    #[test]
    fn a_port_belongs_to_one_identity_and_one_session_at_a_time() {
        let r = Registry::<()>::default();
        let (a, b) = (name("a"), name("b"));
        assert_eq!(r.claim_port(Port::Tcp(7000), &a, 1), Ok(()));
        // The same session may claim it again; a register that fails to bind releases it.
        assert_eq!(r.claim_port(Port::Tcp(7000), &a, 1), Ok(()));
        assert_eq!(
            r.claim_port(Port::Tcp(7000), &b, 2),
            Err(PortClaimError::OtherIdentity(a.clone()))
        );
        assert_eq!(
            r.claim_port(Port::Tcp(7000), &a, 3),
            Err(PortClaimError::OtherSession)
        );
        assert!(r.is_claimed(Port::Tcp(7000)));
        // Only the holder releases it.
        r.release_port(Port::Tcp(7000), 3);
        assert!(r.is_claimed(Port::Tcp(7000)));
        r.release_port(Port::Tcp(7000), 1);
        assert!(!r.is_claimed(Port::Tcp(7000)));
        assert_eq!(r.claim_port(Port::Tcp(7000), &b, 2), Ok(()));
        // The UDP port of the same number is another port.
        assert_eq!(r.claim_port(Port::Udp(7000), &a, 1), Ok(()));
    }

    #[test]
    fn a_newer_session_replaces_the_older_and_only_the_current_one_is_removed() {
        let r = Registry::<()>::default();
        let a = (name("a"), None);
        assert!(r.install_session(&a, entry(1)).is_none());
        let old = r
            .install_session(&a, entry(2))
            .expect("session 1 is replaced");
        assert_eq!(old.id, 1);
        // The replaced session ending late must not remove its successor.
        r.remove_session(&a, 1);
        let current = r
            .install_session(&a, entry(3))
            .expect("session 2 is still there");
        assert_eq!(current.id, 2);
        r.remove_session(&a, 3);
        assert!(r.install_session(&a, entry(4)).is_none());
        // Another instance of the identity is another session: neither replaces the other.
        let pc2 = (name("a"), Some(name("pc2")));
        assert!(r.install_session(&pc2, entry(5)).is_none());
        assert_eq!(r.install_session(&a, entry(6)).map(|e| e.id), Some(4));
        assert_eq!(r.install_session(&pc2, entry(7)).map(|e| e.id), Some(5));
    }

    #[test]
    fn private_services_are_named_by_owner_and_held_weakly() {
        let r = Registry::<u32>::default();
        let ctx = Arc::new(7u32);
        let rdp = name("rdp");
        assert!(r.claim_private(&rdp, private("office", 1, &ctx)).is_ok());
        // Another identity's service of the same name is another service.
        assert!(r.claim_private(&rdp, private("home", 2, &ctx)).is_ok());
        // An earlier session of the owner still holds it: a newer one must wait.
        assert_eq!(
            r.claim_private(&rdp, private("office", 3, &ctx)).err(),
            Some(PortClaimError::OtherSession)
        );
        let found = r.private(&name("office"), &rdp).expect("registered");
        assert_eq!(found.session, 1);
        assert_eq!(found.ctx.upgrade().as_deref(), Some(&7));
        // The registry never keeps a session alive.
        drop(ctx);
        assert!(r
            .private(&name("office"), &rdp)
            .unwrap()
            .ctx
            .upgrade()
            .is_none());
        r.release_private(&name("office"), &rdp, 3);
        assert!(r.private(&name("office"), &rdp).is_some());
        r.release_private(&name("office"), &rdp, 1);
        assert!(r.private(&name("office"), &rdp).is_none());
        assert!(r.private(&name("home"), &rdp).is_some());
    }
}
