//! Who holds what on the server: the live session of each identity and the owner of each public
//! port.
//!
//! Both maps sit behind one short-held `std` mutex; nothing awaits while holding it.

use std::collections::HashMap;
use std::sync::Mutex;

use ncx_proto::Name;
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

#[derive(Debug, Default)]
struct Inner {
    sessions: HashMap<Name, SessionEntry>,
    ports: HashMap<u16, (Name, SessionId)>,
}

/// The registry. One per server.
#[derive(Debug, Default)]
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

    /// Releases `port` if session `id` holds it.
    pub fn release_port(&self, port: u16, id: SessionId) {
        let mut inner = self.lock();
        if inner.ports.get(&port).is_some_and(|(_, sid)| *sid == id) {
            inner.ports.remove(&port);
        }
    }
}
