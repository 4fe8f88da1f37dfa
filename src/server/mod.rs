//! `ncx server`: accepts clients, authenticates them, and exposes their services on public ports.
//!
//! From the top down (each file imports only files below it):
//! - `mod.rs`: [`Server`] and its accept loop; every connection's handshake runs in its own task.
//! - `front.rs`: what comes before TLS: the PROXY header of a trusted load balancer, and on a
//!   shared listener, sorting by the first bytes (the ClientHello, a WebSocket upgrade).
//! - `fallback.rs`: that sorting, and passing the website's connections to the web server.
//! - `session.rs`: one session from TLS to teardown: the hello, admission, the control loop.
//! - `control.rs`: the control loop of an admitted session, with its phase.
//! - `services.rs`: the services a session registered, public and private.
//! - `public.rs`: binding public ports and accepting their visitors.
//! - `private.rs`: bridging visits of `ncx visit` sessions to the owning client.
//! - `grouped.rs`: services in groups: joining one, its port, and each visitor's way to a member;
//!   `groups.rs`: the table of groups and their members; depends on nothing above.
//! - `opener.rs`: the substream opener that public visitors and private visits share.
//! - `context.rs`: what the tasks of the server and of one session share.
//! - `admission.rs`: handshake and session slots, authentication, the failed-authentication guard,
//!   on `handshakes.rs` (slots where the oldest handshake gives way) and `auth_guard.rs`
//!   (failures counted per address).
//! - `registry.rs`: which session and which ports each identity holds; depends on nothing above.

mod admission;
mod auth_guard;
mod context;
mod control;
mod fallback;
mod front;
mod grouped;
mod groups;
mod handshakes;
mod opener;
mod ports;
mod private;
mod public;
mod registry;
mod reload;
mod services;
mod session;
mod status;
mod udp;

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;
#[cfg(feature = "fuzzing")]
use tracing::Instrument;

use crate::accept::accept_until;
use crate::config::ServerSettings;
use crate::tls::{Fingerprint, ServerIdentity, TlsError};
use context::Shared;
pub use reload::Reloaded;

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
        let (tls, client_certs) =
            crate::tls::server_config(identity, settings.client_ca.as_deref())?;
        Ok(Server {
            shared: Arc::new(Shared::new(
                settings,
                TlsAcceptor::from(Arc::new(tls)),
                client_certs,
            )),
            fingerprint,
        })
    }

    /// How many sessions have begun (authenticated or not) since the server was built.
    pub fn sessions_started(&self) -> u64 {
        self.shared.sessions_started()
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
        let slot = self.shared.admission.claim_handshake(peer.ip());
        let deadline = tokio::time::Instant::now() + self.shared.settings.handshake_timeout;
        session::run_decrypted(
            self.shared.clone(),
            io,
            admission::PeerTls {
                exported: crate::auth::ExportedKey(exported),
                cert: crate::tls::PeerCertificate::None,
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

    /// What the metrics endpoint serves for this server: its series, and always ready (it
    /// serves only while the server runs).
    pub fn metrics_source(&self) -> crate::metrics::endpoint::Source {
        let shared = self.shared.clone();
        crate::metrics::endpoint::Source {
            render: Arc::new(move || shared.render_metrics()),
            ready: Arc::new(|| true),
        }
    }

    /// The fingerprint of the server's certificate, which clients pin.
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    /// Accepts clients on `listener` until `shutdown` fires, then ends every session (visitors are
    /// reset, ports released) and returns once every task it started has finished.
    pub async fn run(&self, listener: TcpListener, shutdown: CancellationToken) {
        let sessions = TaskTracker::new();
        if let Ok(addr) = listener.local_addr() {
            info!(%addr, fingerprint = %self.fingerprint, "server listening");
        }
        accept_until(&listener, &shutdown, "a client", |tcp, peer| {
            crate::net::tune_tunnel(&tcp);
            let slot = self.shared.admission.claim_handshake(peer.ip());
            sessions.spawn(front::arrive(
                self.shared.clone(),
                tcp,
                peer,
                slot,
                shutdown.child_token(),
            ));
        })
        .await;
        drop(listener);
        sessions.close();
        sessions.wait().await;
        // Every member left with its session, so every group's port is closing already.
        self.shared.group_tasks.stop().await;
        info!("server stopped");
    }
}
