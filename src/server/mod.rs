//! `ncx server`: accepts clients, authenticates them, and exposes their services on public ports.
//!
//! - `mod.rs`: the accept loop; every connection's handshake runs in its own task, capped in number.
//! - [`session`]: one task per client session: handshake, authentication, takeover, control stream.
//! - [`services`]: binding public ports under the identity's policy and serving their visitors.
//! - [`private`]: private services, and bridging visits from `ncx visit` sessions to their owners.
//! - [`registry`]: which session and which ports each identity holds.
//! - [`admission`]: handshake slots and the failed-authentication guard.

mod admission;
mod private;
mod registry;
mod services;
mod session;

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use ncx_proto::Name;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::ratelimit::LogLimiter;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn, Instrument};

use crate::config::{IdentityPolicy, ServerSettings};
use crate::tls::{Fingerprint, ServerIdentity, TlsError};

/// Pause after a failed `accept` (for example EMFILE) so the loop backs off instead of spinning.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// State shared by every task of one server.
struct Shared {
    settings: ServerSettings,
    identities: HashMap<Name, IdentityPolicy>,
    acceptor: TlsAcceptor,
    registry: registry::Registry,
    next_session: AtomicU64,
    /// Caps client sessions.
    sessions: Arc<Semaphore>,
    /// Handshakes in progress.
    handshakes: Arc<admission::HandshakeSlots>,
    /// Failed authentications per address.
    auth_guard: admission::AuthGuard,
    /// Limits warnings about refused clients.
    refusal_log: LogLimiter,
    /// Limits warnings about evicted handshakes.
    eviction_log: LogLimiter,
}

/// A configured server, ready to run on a listener.
#[derive(Clone)]
pub struct Server {
    shared: Arc<Shared>,
    fingerprint: Fingerprint,
}

impl Server {
    /// Builds the TLS configuration and the identity table.
    pub fn new(settings: ServerSettings, identity: ServerIdentity) -> Result<Self, TlsError> {
        let fingerprint = identity.fingerprint();
        let tls = crate::tls::server_config(identity, settings.client_ca.as_deref())?;
        let settings_max_sessions = settings.max_sessions;
        let settings_max_handshakes = settings.max_handshakes;
        let auth_threshold = settings.auth_failures_before_block;
        let auth_block = settings.auth_block;
        let identities = settings
            .identities
            .iter()
            .map(|p| (p.name.clone(), p.clone()))
            .collect();
        Ok(Server {
            shared: Arc::new(Shared {
                settings,
                identities,
                acceptor: TlsAcceptor::from(Arc::new(tls)),
                registry: registry::Registry::default(),
                next_session: AtomicU64::new(1),
                sessions: Arc::new(Semaphore::new(settings_max_sessions)),
                handshakes: admission::HandshakeSlots::new(settings_max_handshakes),
                auth_guard: admission::AuthGuard::new(auth_threshold, auth_block),
                refusal_log: LogLimiter::default(),
                eviction_log: LogLimiter::default(),
            }),
            fingerprint,
        })
    }

    /// How many sessions have begun (authenticated or not) since the server was built.
    pub fn sessions_started(&self) -> u64 {
        self.shared
            .next_session
            .load(std::sync::atomic::Ordering::Relaxed)
            - 1
    }

    /// Serves one session over `io`, which stands for the inside of a TLS connection from `peer`
    /// with exported keying material `exported`: everything after the TLS handshake, exactly as for
    /// a real client. Returns once the session has ended and released its ports. For fuzzing and
    /// tests, which feed the session logic bytes without TLS.
    #[cfg(feature = "fuzzing")]
    #[doc(hidden)]
    pub async fn serve_decrypted<T>(
        &self,
        io: T,
        peer: std::net::SocketAddr,
        exported: [u8; ncx_proto::AUTH_PROOF_LEN],
        shutdown: CancellationToken,
    ) where
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (slot, _) = self.shared.handshakes.claim();
        let deadline = tokio::time::Instant::now() + self.shared.settings.handshake_timeout;
        session::serve(
            self.shared.clone(),
            io,
            session::PeerTls {
                exported: crate::auth::ExportedKey(exported),
                cert_name: None,
                local: std::net::SocketAddr::from(([0, 0, 0, 0], 0)),
            },
            peer,
            slot,
            deadline,
            shutdown,
        )
        .instrument(tracing::info_span!("session", %peer, client = tracing::field::Empty))
        .await;
    }

    /// The fingerprint of the server's certificate, which clients pin.
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    /// Accepts clients on `listener` until `shutdown` fires, then ends every session (visitors are
    /// reset, ports released) and returns once every task it started has finished.
    pub async fn run(&self, listener: TcpListener, shutdown: CancellationToken) {
        let tracker = TaskTracker::new();
        if let Ok(addr) = listener.local_addr() {
            info!(%addr, fingerprint = %self.fingerprint, "server listening");
        }
        loop {
            let (tcp, peer) = tokio::select! {
                _ = shutdown.cancelled() => break,
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        warn!(error = %e, "accepting a client failed; backing off");
                        tokio::select! {
                            _ = shutdown.cancelled() => break,
                            _ = tokio::time::sleep(ACCEPT_ERROR_BACKOFF) => continue,
                        }
                    }
                },
            };
            crate::net::tune_tunnel(&tcp);
            let (slot, evicted) = self.shared.handshakes.claim();
            if evicted {
                if let Some(held_back) = self.shared.eviction_log.allow() {
                    warn!(
                        limit = self.shared.settings.max_handshakes,
                        held_back,
                        "all handshake slots taken; dropped the oldest pending handshake"
                    );
                }
            }
            let span = tracing::info_span!("session", %peer, client = tracing::field::Empty);
            tracker.spawn(
                session::run(self.shared.clone(), tcp, peer, slot, shutdown.child_token())
                    .instrument(span),
            );
        }
        drop(listener);
        tracker.close();
        tracker.wait().await;
        info!("server stopped");
    }
}
