//! `ncx client`: dials the server once, authenticates, registers services, and splices every
//! visitor substream the server opens to the local service.
//!
//! - `mod.rs`: [`Client`] and the reconnect loop ([`run`]).
//! - `error.rs`: why a client could not connect or lost its session, and what became of a service.
//! - `connect.rs`: TLS, the hello and the registrations ([`Client::connect`]).
//! - `dial.rs`: reaching the server: TCP, directly or through a proxy, and the WebSocket.
//! - `control.rs`: a connected session's control stream, drain and close ([`Connected::run`]).
//! - `inbound.rs`: one visitor substream the server opened, from header to splice.
//! - `retiring.rs`: sessions that rotated and serve their last visitors, at most two at once.
//! - `retry.rs`: when to try again: backoff, the quick retry after a session, the takeover pause.
//! - `outbound.rs`: local listeners whose connections reach private services of other clients
//!   (`ncx visit`), each through a visit substream this client opens.

mod connect;
mod control;
mod dial;
mod error;
mod inbound;
mod outbound;
mod retiring;
mod retry;

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
        Ok(Client {
            settings: Arc::new(settings),
            connector: TlsConnector::from(Arc::new(tls)),
            proxy,
            web_tls,
            metrics: Arc::default(),
        })
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

/// Connects and serves until `shutdown`, reconnecting with exponential backoff and jitter after
/// every loss. Returns an error only for a permanent refusal (bad token, unknown identity, version
/// mismatch, server certificate refused), which retrying cannot fix.
pub async fn run(settings: ClientSettings, shutdown: CancellationToken) -> Result<(), ClientError> {
    let listeners = outbound::bind(&settings).await?;
    run_bound(settings, listeners, shutdown).await
}

pub use outbound::bind as bind_visits;

/// [`run`] with the visit listeners already bound (by [`bind_visits`]), so a caller can learn
/// their addresses first.
pub async fn run_bound(
    settings: ClientSettings,
    visit_listeners: Vec<tokio::net::TcpListener>,
    shutdown: CancellationToken,
) -> Result<(), ClientError> {
    let backoff_cfg = settings.reconnect;
    let client = Client::new(settings)?;
    let metrics = match client.settings.metrics_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|cause| ClientError::Listen { addr, cause })?,
        ),
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
    let endpoint = metrics.map(|listener| {
        tokio::spawn(crate::metrics::endpoint::serve(
            listener,
            client.metrics_source(),
            listeners_cancel.clone(),
        ))
    });
    let result = run_sessions(&client, backoff_cfg, &targets, &shutdown).await;
    listeners_cancel.cancel();
    listeners.close();
    listeners.wait().await;
    if let Some(endpoint) = endpoint {
        // It ends when cancelled; a panic in it is already reported by the runtime.
        let _ = endpoint.await;
    }
    result
}

/// The reconnect loop of [`run`]; publishes each session for the visit listeners in `targets`.
async fn run_sessions(
    client: &Client,
    backoff_cfg: crate::config::Backoff,
    targets: &tokio::sync::watch::Sender<Option<outbound::Target>>,
    shutdown: &CancellationToken,
) -> Result<(), ClientError> {
    let mut retry = Retry::new(backoff_cfg);
    // Sessions that handed over to a newer one and serve their last visitors.
    let mut retiring = Retiring::new(MAX_RETIRING);
    let server = &client.settings.server;
    let mut first = true;
    let result = loop {
        // How long the session was up, if one was.
        let mut lived = None;
        let err = tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            r = client.connect() => match r {
                Ok(mut connected) => {
                    info!("connected to the server");
                    client.metrics.connected(true);
                    let state = format!("connected to {server}");
                    if std::mem::take(&mut first) {
                        crate::notify::ready(&state);
                    } else {
                        crate::notify::status(&state);
                    }
                    connected.log_services();
                    let up = Instant::now();
                    targets.send_replace(Some(connected.visit_target()));
                    let served = connected.run_control(shutdown, false).await;
                    targets.send_replace(None);
                    client.metrics.connected(false);
                    lived = Some(up.elapsed());
                    match served {
                        Ok(Served::Shutdown) => {
                            connected.close().await;
                            break Ok(());
                        }
                        Ok(Served::Rotate) => {
                            retiring.retire(shutdown, |stop| async move {
                                if let Err(e) = connected.run_control(&stop, true).await {
                                    debug!(error = %e, "retired session ended");
                                }
                                connected.close().await;
                            }.in_current_span());
                            retry.after_rotation();
                            continue;
                        }
                        Err(e) => {
                            connected.close().await;
                            e
                        }
                    }
                }
                Err(e) => e,
            },
        };
        if err.is_permanent() {
            break Err(err);
        }
        let base = if let ClientError::GoneAway {
            code: ErrorCode::SessionReplaced,
            ..
        } = err
        {
            warn!("another client with the same identity took over this client's services; two clients must not share an identity");
            retry.after_replaced()
        } else {
            match lived {
                Some(lived) => retry.after_session(lived),
                None => retry.after_failed_attempt(),
            }
        };
        let pause = jitter(base);
        client.metrics.reconnecting();
        warn!(error = %err, retry_in = %crate::human::Human(pause), "not connected; retrying");
        let state = format!("not connected to {server} ({err}); retrying");
        if std::mem::take(&mut first) {
            crate::notify::ready(&state);
        } else {
            crate::notify::status(&state);
        }
        tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            _ = tokio::time::sleep(pause) => {}
        }
    };
    retiring.wait().await;
    result
}
