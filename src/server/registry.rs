//! Who holds what on the server: the live session of each identity, the owner of each public
//! port, and the private services.
//!
//! Both maps sit behind one short-held `std` mutex; nothing awaits while holding it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use ncx_proto::Name;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::session::SessionCtx;

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

/// A private service as the registry holds it.
#[derive(Clone)]
pub struct PrivateService {
    /// The identity that offers it.
    pub owner: Name,
    /// The owner's session that registered it.
    pub session: SessionId,
    /// Who may visit it.
    pub visitors: Arc<[Name]>,
    /// The owner's session (weak: the registry never keeps a session alive).
    pub ctx: Weak<SessionCtx>,
    /// Caps the service's concurrent visitors.
    pub permits: Arc<Semaphore>,
}

#[derive(Default)]
struct Inner {
    sessions: HashMap<Name, SessionEntry>,
    ports: HashMap<u16, (Name, SessionId)>,
    /// Keyed by (owner, service): names are unique per identity only.
    private: HashMap<(Name, Name), PrivateService>,
}

/// The registry. One per server.
#[derive(Default)]
pub struct Registry {
    inner: Mutex<Inner>,
}

/// Why a port cannot be reserved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortClaimError {
    /// Another identity holds it.
    OtherIdentity(Name),
    /// Another session of the same identity still holds it (it is being replaced).
    OtherSession,
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding this lock leaves only plain maps behind, which stay consistent.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes `entry` the live session of `identity` and returns the session it replaces, if any.
    pub fn install_session(&self, identity: &Name, entry: SessionEntry) -> Option<SessionEntry> {
        self.lock().sessions.insert(identity.clone(), entry)
    }

    /// Forgets `identity`'s session if it is still `id` (a newer one may have replaced it).
    pub fn remove_session(&self, identity: &Name, id: SessionId) {
        let mut inner = self.lock();
        if inner.sessions.get(identity).is_some_and(|e| e.id == id) {
            inner.sessions.remove(identity);
        }
    }

    /// Reserves `port` for `identity`'s session `id`.
    pub fn claim_port(
        &self,
        port: u16,
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
    pub fn is_claimed(&self, port: u16) -> bool {
        self.lock().ports.contains_key(&port)
    }

    /// Registers `entry.owner`'s private service `name`. A visitor names the owner as well as the
    /// service, so identities cannot collide or stand in for each other; only an earlier session
    /// of the same identity can still hold the name.
    pub fn claim_private(&self, name: &Name, entry: PrivateService) -> Result<(), PortClaimError> {
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
    pub fn private(&self, owner: &Name, name: &Name) -> Option<PrivateService> {
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
    pub fn release_port(&self, port: u16, id: SessionId) {
        let mut inner = self.lock();
        if inner.ports.get(&port).is_some_and(|(_, sid)| *sid == id) {
            inner.ports.remove(&port);
        }
    }
}
