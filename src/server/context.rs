//! What the tasks of the server share ([`Shared`]) and what the tasks of one session share
//! ([`SessionCtx`]): the session's control loop, its public ports' accept loops, its visitors and
//! the private visits bridged into it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use ncx_proto::Name;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::admission::Admission;
use super::fallback::Fallback;
use super::groups::Groups;
use super::registry::{Registry, SessionEntry, SessionId};
use crate::config::{IdentityPolicy, ServerSettings};
use crate::mux::SessionHandle;
use crate::ratelimit::LogLimiter;
use crate::tasks::TaskGroup;

/// The configured identities by name, as one snapshot: a reload replaces it whole.
pub(super) type Identities = Arc<HashMap<Name, IdentityPolicy>>;

/// State shared by every task of one server.
pub(super) struct Shared {
    pub settings: ServerSettings,
    /// The identities in force; sessions watch it to follow a reload.
    pub identities: tokio::sync::watch::Sender<Identities>,
    pub acceptor: TlsAcceptor,
    /// Verifies client certificates after the handshake, when the server has a client CA.
    pub client_certs: Option<crate::tls::ClientCertCheck>,
    pub registry: Registry<SessionCtx>,
    /// Handshake slots, session slots and the failed-authentication guard.
    pub admission: Admission,
    /// The website that connections other than ncx clients are passed to, if the port is shared.
    pub fallback: Option<Fallback>,
    /// The Prometheus series (kept whether or not an endpoint serves them: they cost a few
    /// atomic adds).
    pub metrics: Arc<crate::metrics::ServerMetrics>,
    /// Every session that exists, for `ncx status` (weak: this never keeps one alive).
    pub live: Mutex<HashMap<SessionId, std::sync::Weak<SessionCtx>>>,
    /// The groups with members now.
    pub groups: Groups<SessionCtx>,
    /// The public groups' accept loops and their visitors until a member takes each.
    pub group_tasks: TaskGroup,
    next_session: AtomicU64,
}

impl Shared {
    pub fn new(
        settings: ServerSettings,
        acceptor: TlsAcceptor,
        client_certs: Option<crate::tls::ClientCertCheck>,
    ) -> Self {
        let identities = tokio::sync::watch::Sender::new(identity_map(&settings.identities));
        let metrics = Arc::new(crate::metrics::ServerMetrics::default());
        Shared {
            admission: Admission::new(&settings, metrics.clone()),
            metrics,
            fallback: settings
                .fallback
                .clone()
                .map(|to| Fallback::new(to, settings.max_fallback_connections)),
            settings,
            identities,
            acceptor,
            client_certs,
            registry: Registry::default(),
            live: Mutex::new(HashMap::new()),
            groups: Groups::default(),
            group_tasks: TaskGroup::new(),
            next_session: AtomicU64::new(1),
        }
    }

    /// The identities in force now.
    pub fn identities(&self) -> Identities {
        self.identities.borrow().clone()
    }

    /// A new session id, never used before by this server.
    pub fn new_session_id(&self) -> SessionId {
        self.next_session.fetch_add(1, Ordering::Relaxed)
    }

    /// The metrics as a scrape sees them, with the gauges read from the admission first.
    pub fn render_metrics(&self) -> String {
        self.metrics
            .set_handshakes(self.admission.handshakes_in_progress());
        for (identity, sessions) in self.admission.sessions_by_identity() {
            self.metrics.set_sessions(identity.as_str(), sessions);
        }
        self.metrics.render()
    }

    /// How many sessions have begun so far.
    pub fn sessions_started(&self) -> u64 {
        self.next_session.load(Ordering::Relaxed) - 1
    }
}

/// `policies` by name.
pub(super) fn identity_map(policies: &[IdentityPolicy]) -> Identities {
    Arc::new(
        policies
            .iter()
            .map(|p| (p.name.clone(), p.clone()))
            .collect(),
    )
}

/// Everything one session's tasks share.
pub(super) struct SessionCtx {
    pub shared: Arc<Shared>,
    pub id: SessionId,
    /// Opens substreams to the client.
    pub mux: SessionHandle,
    /// The client's address.
    pub peer: SocketAddr,
    /// The server address the client connected to.
    pub local: SocketAddr,
    /// The accept loops of the session's public ports; empty once every port is released.
    pub listeners: TaskGroup,
    /// The session's visitors, public and private; cancelling resets them.
    pub visitors: TaskGroup,
    /// The caps on the session's visitors.
    pub limits: VisitorLimits,
    /// When to ask the client for a fresh session.
    pub rotation: Rotation,
    /// How a newer session of the same identity takes this one's place.
    pub takeover: Takeover,
    /// Private services this session registered, as (owner, name), released with its ports.
    private_names: Mutex<Vec<(Name, Name)>>,
    /// The groups this session joined, left with its ports.
    groups_joined: Mutex<Vec<Name>>,
    /// What `ncx status` shows of the session.
    pub status: SessionStatus,
}

/// What `ncx status` shows of one session, kept up to date by its tasks.
#[derive(Debug)]
pub(super) struct SessionStatus {
    pub since: std::time::SystemTime,
    /// Set once the client has authenticated.
    pub identity: std::sync::OnceLock<Name>,
    /// The instance it named, if any (set with the identity).
    pub instance: std::sync::OnceLock<Option<Name>>,
    /// The services registered: public with their port, private without.
    pub services: Mutex<Vec<(Name, Option<u16>)>>,
    /// Bytes from and to the session's visitors, counted as they move.
    pub bytes_in: prometheus_client::metrics::counter::Counter,
    pub bytes_out: prometheus_client::metrics::counter::Counter,
    /// The last ping's round trip, in microseconds (0: none yet).
    pub rtt_micros: AtomicU64,
}

impl Default for SessionStatus {
    fn default() -> Self {
        SessionStatus {
            since: std::time::SystemTime::now(),
            identity: std::sync::OnceLock::new(),
            instance: std::sync::OnceLock::new(),
            services: Mutex::new(Vec::new()),
            bytes_in: Default::default(),
            bytes_out: Default::default(),
            rtt_micros: AtomicU64::new(0),
        }
    }
}

/// The caps on one session's visitors.
pub(super) struct VisitorLimits {
    /// Concurrent visitors of the session.
    pub visitors: Arc<Semaphore>,
    /// Substreams opened and not yet answered by the client.
    pub opens_in_flight: Arc<Semaphore>,
    /// Limits warnings about visitors refused at a limit.
    pub log: LogLimiter,
    /// Limits warnings about what the client answered for its visitors (one per visitor, else:
    /// the audit line has every one).
    pub answers_log: LogLimiter,
}

/// Counts the substreams a session opened, and says when to ask for a fresh one before yamux
/// runs out of stream ids.
pub(super) struct Rotation {
    opens: AtomicU64,
    threshold: u64,
    due: CancellationToken,
}

impl Rotation {
    fn new(threshold: u64) -> Self {
        Rotation {
            opens: AtomicU64::new(0),
            threshold,
            due: CancellationToken::new(),
        }
    }

    /// Counts one substream opened.
    pub fn opened(&self) {
        if self.opens.fetch_add(1, Ordering::Relaxed) + 1 >= self.threshold {
            self.due.cancel();
        }
    }

    /// Substreams opened so far.
    pub fn opens(&self) -> u64 {
        self.opens.load(Ordering::Relaxed)
    }

    /// Completes once the session should rotate.
    pub async fn due(&self) {
        self.due.cancelled().await
    }
}

/// The two signals of a takeover, shared with the registry.
#[derive(Debug, Clone, Default)]
pub(super) struct Takeover {
    /// Cancelled by a newer session of the same identity that takes over.
    pub replace: CancellationToken,
    /// Cancelled by this session once it has released every port.
    pub ports_released: CancellationToken,
}

impl Drop for SessionCtx {
    fn drop(&mut self) {
        self.shared
            .live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
    }
}

impl SessionCtx {
    /// A new session's context, listed among the server's live sessions.
    pub fn start(
        shared: Arc<Shared>,
        mux: SessionHandle,
        peer: SocketAddr,
        local: SocketAddr,
    ) -> Arc<Self> {
        let ctx = Arc::new(SessionCtx::new(shared, mux, peer, local));
        ctx.shared
            .live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(ctx.id, Arc::downgrade(&ctx));
        ctx
    }

    fn new(shared: Arc<Shared>, mux: SessionHandle, peer: SocketAddr, local: SocketAddr) -> Self {
        let settings = &shared.settings;
        SessionCtx {
            id: shared.new_session_id(),
            mux,
            peer,
            local,
            listeners: TaskGroup::new(),
            visitors: TaskGroup::new(),
            limits: VisitorLimits {
                visitors: Arc::new(Semaphore::new(settings.max_visitors_per_session)),
                opens_in_flight: Arc::new(Semaphore::new(settings.max_opens_in_flight)),
                log: LogLimiter::default(),
                answers_log: LogLimiter::default(),
            },
            rotation: Rotation::new(settings.rotate_after_opens),
            takeover: Takeover::default(),
            private_names: Mutex::new(Vec::new()),
            groups_joined: Mutex::new(Vec::new()),
            status: SessionStatus::default(),
            shared,
        }
    }

    /// This session as the registry records it.
    pub fn entry(&self) -> SessionEntry {
        SessionEntry {
            id: self.id,
            replace: self.takeover.replace.clone(),
            ports_released: self.takeover.ports_released.clone(),
        }
    }

    /// Records a registered service for `ncx status`.
    pub fn record_service(&self, service: &Name, port: Option<u16>) {
        self.status
            .services
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((service.clone(), port));
    }

    /// Takes a withdrawn service off what `ncx status` shows.
    pub fn forget_service(&self, service: &Name) {
        self.status
            .services
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(name, _)| name != service);
    }

    /// Releases one private service now (the client withdrew it).
    pub fn release_private(&self, owner: &Name, name: &Name) {
        self.private_names
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(o, n)| !(o == owner && n == name));
        self.shared.registry.release_private(owner, name, self.id);
    }

    /// Remembers a private service to release when the session's services stop.
    pub fn hold_private(&self, owner: Name, name: Name) {
        self.private_names
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((owner, name));
    }

    /// Remembers a group joined, to leave when the session's services stop.
    pub fn joined(&self, group: Name) {
        self.groups_joined
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(group);
    }

    /// Leaves one group now (the client withdrew its service).
    pub fn leave(&self, group: &Name) {
        self.groups_joined
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|g| g != group);
        self.shared.groups.leave(group, self.id);
    }

    /// Whether the session stopped offering its services (it is going away).
    pub fn services_stopped(&self) -> bool {
        self.listeners.is_cancelled()
    }

    /// Stops accepting on the session's public ports and waits until every one is released;
    /// withdraws its private services. Then a newer session may take the ports.
    pub async fn stop_services(&self) {
        self.listeners.stop().await;
        let private =
            std::mem::take(&mut *self.private_names.lock().unwrap_or_else(|e| e.into_inner()));
        for (owner, name) in private {
            self.shared.registry.release_private(&owner, &name, self.id);
        }
        // New visitors of its groups go to the other members from now on.
        let groups =
            std::mem::take(&mut *self.groups_joined.lock().unwrap_or_else(|e| e.into_inner()));
        for group in groups {
            self.shared.groups.leave(&group, self.id);
        }
        self.takeover.ports_released.cancel();
    }
}
