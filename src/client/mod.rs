//! `ncx client`: dials the server once, authenticates, registers services, and splices every
//! visitor substream the server opens to the local service.
//!
//! - `mod.rs`: [`Client`] and what runs beside its sessions ([`run`]): visit listeners, metrics,
//!   the admin socket.
//! - `error.rs`: why a client could not connect or lost its session, and what became of a service.
//! - `admin.rs`: what the client answers on its admin socket (`ncx status`, `ncx ctl reload`).
//! - `apply.rs`: a reload taken in a connected session (withdraws, registrations, answers).
//! - `connect.rs`: TLS, the hello and the registrations ([`Client::connect`]).
//! - `dial.rs`: reaching the server: TCP, directly or through a proxy, and the WebSocket.
//! - `control.rs`: a connected session's control stream, drain and close ([`Connected::run`]).
//! - `inbound.rs`: one visitor substream the server opened, from header to splice.
//! - `reload.rs`: a reload (SIGHUP, `ncx ctl reload`): what changed, and taking it in a session.
//! - `report.rs`: a reload's request to the loop and its report of what changed.
//! - `retiring.rs`: sessions that rotated and serve their last visitors, at most two at once.
//! - `several.rs`: several servers in mode `all`: a loop per server, visits through any session.
//! - `health.rs`: the health checks of services, which sessions report to their servers.
//! - `sessions.rs`: the reconnect loop: one session after another, reloads taken between and in them.
//! - `retry.rs`: when to try again: backoff, the quick retry after a session, the takeover pause.
//! - `outbound.rs`: local listeners whose connections reach private services of other clients
//!   (`ncx visit`), each through a visit substream this client opens.

mod admin;
mod apply;
mod connect;
mod control;
mod dial;
mod error;
mod health;
mod inbound;
mod outbound;
mod reload;
mod report;
mod retiring;
mod retry;
mod sessions;
mod several;
mod target;
mod udp;
mod visit_udp;

use std::sync::Arc;

use ncx_proto::ErrorCode;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

use crate::config::ClientSettings;
use control::Served;
use retiring::{Retiring, MAX_RETIRING};
use retry::{jitter, Retry};

pub use control::Connected;
pub use error::{ClientError, ServiceStatus};
pub use reload::{reloads, Reloader, Reloads, Reread};
pub use report::ClientReloaded;

pub use retry::{BACKOFF_RESET_AFTER, QUICK_RETRY};

/// A configured client.
#[derive(Clone)]
pub struct Client {
    settings: Arc<ClientSettings>,
    connector: TlsConnector,
    /// The proxy the server is reached through, if any, and the TLS configuration for it when it
    /// is an `https://` one.
    proxy: Option<(crate::proxy::Chosen, Option<Arc<rustls::ClientConfig>>)>,
    /// The outer TLS of a `wss://` WebSocket transport (ALPN http/1.1, the system's CAs and
    /// `websocket_ca`).
    web_tls: Option<Arc<rustls::ClientConfig>>,
    /// The Prometheus series (served when `metrics_listen` is set).
    metrics: Arc<crate::metrics::ClientMetrics>,
    /// What `ncx status` shows (served when `admin_socket` is set).
    status: Arc<std::sync::Mutex<crate::admin::ClientStatus>>,
    /// The health checks, whose results every session reports to its server; a reload changes
    /// which run.
    health: Option<Arc<health::HealthMonitor>>,
}

impl Client {
    /// Builds the TLS configuration and chooses the proxy (the configured one, or what the
    /// environment names for the server), saying which.
    pub fn new(settings: ClientSettings) -> Result<Self, ClientError> {
        let tls = crate::tls::client_config(&settings.trust, settings.client_cert.as_ref())?;
        let (host, _) = crate::proxy::host_and_port(&settings.server);
        let chosen = crate::proxy::choose(&settings.proxy, &host, |k| std::env::var(k).ok())
            .map_err(|message| {
                ClientError::Proxy(crate::proxy::ProxyFailure {
                    message,
                    permanent: true,
                })
            })?;
        let proxy = match chosen {
            None => None,
            Some(chosen) => {
                info!(proxy = %chosen.url, from = %chosen.from, "reaching the server through a proxy");
                let tls = match chosen.url.scheme {
                    crate::proxy::Scheme::Https => Some(crate::proxy::proxy_tls_config(
                        settings.proxy_ca.as_deref(),
                    )?),
                    _ => None,
                };
                Some((chosen, tls))
            }
        };
        let web_tls = match &settings.websocket {
            Some(ws) if ws.url.secure => {
                let base = crate::proxy::proxy_tls_config(ws.ca.as_deref())?;
                let mut config = (*base).clone();
                config.alpn_protocols = vec![b"http/1.1".to_vec()];
                Some(Arc::new(config))
            }
            _ => None,
        };
        if let Some(ws) = &settings.websocket {
            info!(url = %ws.url, "reaching the server through a WebSocket");
        }
        let settings_for_status = settings.clone();
        Ok(Client {
            settings: Arc::new(settings),
            connector: TlsConnector::from(Arc::new(tls)),
            proxy,
            web_tls,
            metrics: Arc::default(),
            status: Arc::new(std::sync::Mutex::new(initial_status(&settings_for_status))),
            health: None,
        })
    }

    /// A client for `settings` that keeps this one's metrics, status and health checks (a
    /// reload).
    fn with_settings(&self, settings: ClientSettings) -> Result<Self, ClientError> {
        let mut next = Client::new(settings)?;
        next.metrics = self.metrics.clone();
        next.status = self.status.clone();
        next.health = self.health.clone();
        Ok(next)
    }

    /// Runs the health checks of the services in force (after a reload).
    fn check_health(&self) {
        if let Some(monitor) = &self.health {
            monitor.set(&self.settings.services);
        }
    }

    /// A client of one of the servers, with this one's metrics and health checks and a status
    /// of its own.
    fn for_server(&self, server: &str) -> Result<Self, ClientError> {
        let mut next = Client::new(self.settings.for_server(server))?;
        next.metrics = self.metrics.clone();
        next.health = self.health.clone();
        Ok(next)
    }

    /// The client's state as `ncx status` shows it.
    pub fn status(&self) -> crate::admin::ClientStatus {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn set_status(&self, change: impl FnOnce(&mut crate::admin::ClientStatus)) {
        let mut status = self.status.lock().unwrap_or_else(|e| e.into_inner());
        change(&mut status);
        status.since = crate::admin::epoch_secs(std::time::SystemTime::now());
    }

    /// What the metrics endpoint serves for this client: its series, and ready while a session
    /// is up.
    pub fn metrics_source(&self) -> crate::metrics::endpoint::Source {
        let render = self.metrics.clone();
        let ready = self.metrics.clone();
        crate::metrics::endpoint::Source {
            render: Arc::new(move || render.render()),
            ready: Arc::new(move || ready.is_ready()),
        }
    }
}

/// What `ncx status` says before the first attempt.
fn initial_status(settings: &ClientSettings) -> crate::admin::ClientStatus {
    use crate::tls::ServerTrust;
    crate::admin::ClientStatus {
        kind: "client".into(),
        server: settings.server.clone(),
        identity: settings.identity.to_string(),
        server_verified_by: match &settings.trust {
            ServerTrust::Pinned(pins) if pins.len() == 1 => {
                format!("its pinned fingerprint {}", pins[0])
            }
            ServerTrust::Pinned(pins) => {
                format!(
                    "one of its pinned fingerprints {}",
                    crate::tls::pin_list(pins)
                )
            }
            ServerTrust::Ca { path, .. } => format!("the CA in {}", path.display()),
            ServerTrust::InsecureSkipVerify => "nothing (insecure_skip_verify)".into(),
        },
        since: crate::admin::epoch_secs(std::time::SystemTime::now()),
        visits: settings
            .visits
            .iter()
            .map(|v| format!("{}/{} on {}", v.owner, v.service, v.listen))
            .collect(),
        ..Default::default()
    }
}

/// Connects and serves until `shutdown`, reconnecting with exponential backoff and jitter after
/// every loss. Returns an error only for a permanent refusal (bad token, unknown identity, version
/// mismatch, server certificate refused), which retrying cannot fix.
pub async fn run(settings: ClientSettings, shutdown: CancellationToken) -> Result<(), ClientError> {
    let listeners = outbound::bind(&settings).await?;
    run_bound(settings, listeners, shutdown).await
}

pub use outbound::{bind as bind_visits, VisitListener};

/// [`run`] taking reloads from `reloads` (made by [`reloads`]): SIGHUP and `ncx ctl reload`.
pub async fn run_reloading(
    settings: ClientSettings,
    reloads: Reloads,
    shutdown: CancellationToken,
) -> Result<(), ClientError> {
    let listeners = outbound::bind(&settings).await?;
    run_inner(settings, listeners, Some(reloads), shutdown).await
}

/// [`run`] with the visit listeners already bound (by [`bind_visits`]), so a caller can learn
/// their addresses first.
pub async fn run_bound(
    settings: ClientSettings,
    visit_listeners: Vec<VisitListener>,
    shutdown: CancellationToken,
) -> Result<(), ClientError> {
    run_inner(settings, visit_listeners, None, shutdown).await
}

async fn run_inner(
    settings: ClientSettings,
    visit_listeners: Vec<VisitListener>,
    reloads: Option<Reloads>,
    shutdown: CancellationToken,
) -> Result<(), ClientError> {
    let mut client = Client::new(settings)?;
    let metrics =
        match client.settings.metrics_listen {
            Some(addr) => Some(tokio::net::TcpListener::bind(addr).await.map_err(|e| {
                ClientError::Endpoint(format!("binding metrics_listen {addr}: {e}"))
            })?),
            None => None,
        };
    // Visit listeners live across reconnects; each connection goes through whichever session is
    // current.
    let (targets, targets_rx) = tokio::sync::watch::channel(None);
    let listeners_cancel = shutdown.child_token();
    let listeners = outbound::start(
        &client.settings,
        visit_listeners,
        targets_rx,
        listeners_cancel.clone(),
    );
    let health = health::HealthMonitor::new(&listeners_cancel);
    health.set(&client.settings.services);
    client.health = Some(health.clone());
    let several = client.settings.servers.len() > 1
        && client.settings.server_mode == crate::config::ServerMode::All;
    let board = if several {
        several::StatusBoard::default()
    } else {
        several::StatusBoard::single(client.status.clone())
    };
    let admin = match &client.settings.admin_socket {
        Some(path) => {
            let listener = crate::admin::bind(path)
                .await
                .map_err(|e| ClientError::Endpoint(format!("{e:#}")))?;
            let handler = admin::handler(board.clone(), reloads.as_ref().map(Reloads::reloader));
            Some(tokio::spawn(crate::admin::serve(
                listener,
                path.clone(),
                handler,
                listeners_cancel.clone(),
            )))
        }
        None => None,
    };
    let endpoint = metrics.map(|listener| {
        tokio::spawn(crate::metrics::endpoint::serve(
            listener,
            client.metrics_source(),
            listeners_cancel.clone(),
        ))
    });
    let requests = reloads.map(|r| r.requests);
    let result = if several {
        several::run_all(client, requests, &targets, &shutdown, &board).await
    } else {
        sessions::run_sessions(client, requests, &targets, &shutdown).await
    };
    listeners_cancel.cancel();
    health.stop().await;
    listeners.close();
    listeners.wait().await;
    if let Some(endpoint) = endpoint {
        // It ends when cancelled; a panic in it is already reported by the runtime.
        let _ = endpoint.await;
    }
    if let Some(admin) = admin {
        let _ = admin.await;
    }
    result
}
