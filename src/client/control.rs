//! A connected session: the control stream (pings, go-aways) while the session's visitors are
//! served, the drain on shutdown, and the close.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use futures::FutureExt;
use ncx_proto::{ErrorCode, Message, Text};
use tokio::task::JoinHandle;
use tokio_util::compat::Compat;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::error::{ClientError, ServiceStatus};
use super::outbound;
use crate::config::ClientSettings;
use crate::drain::{Drain, DrainEnd};
use crate::framed::{write_message, MessageReader};
use crate::heartbeat::{Beat, Heartbeat};
use crate::mux::{self, SessionEnd};
use crate::refusal::Refusal;
use crate::tasks::TaskGroup;

/// Why [`Connected::run_control`] returned without an error.
pub(super) enum Served {
    /// Shutdown was asked for (and the drain is over).
    Shutdown,
    /// The server asked for a fresh session.
    Rotate,
    /// A reload came in; the session goes on after it is applied.
    Reload(Box<super::report::Request>),
}

/// An authenticated session with its services registered.
pub struct Connected {
    /// What became of each configured service.
    pub services: Vec<ServiceStatus>,
    /// The protocol version the server welcomed the session with.
    pub(super) version: u16,
    /// The services as the session's visitors are served; a reload replaces them.
    pub(super) local: tokio::sync::watch::Sender<super::inbound::LocalServices>,
    pub(super) ctrl: Compat<yamux::Stream>,
    pub(super) reader: MessageReader,
    pub(super) driver: JoinHandle<SessionEnd>,
    pub(super) session_cancel: CancellationToken,
    /// The visitors of the session, from the server and to it (`ncx visit`); a child of
    /// `session_cancel`.
    pub(super) visitors: TaskGroup,
    /// Cleared when draining: new substreams from the server are refused.
    pub(super) accepting: Arc<AtomicBool>,
    /// Opens visit substreams.
    pub(super) handle: mux::SessionHandle,
    pub(super) settings: Arc<ClientSettings>,
    /// Where the pings' round trips go.
    pub(super) rtt: crate::metrics::Rtt,
    /// The health checks' results, reported to the server as they change (version 3).
    pub(super) health: Option<tokio::sync::watch::Receiver<super::health::HealthMap>>,
    /// What this session last told the server of each service's health (absent: healthy).
    pub(super) reported: std::collections::HashMap<ncx_proto::Name, bool>,
}

impl Drop for Connected {
    /// A `Connected` dropped without [`Connected::run`] still ends its session and visitor tasks.
    fn drop(&mut self) {
        self.session_cancel.cancel();
    }
}

impl Connected {
    /// Tells the server of every registered service whose health differs from what it was told
    /// last (nothing to a server older than protocol version 3, which has no such message).
    async fn report_health(&mut self) -> Result<(), ClientError> {
        if self.version < ncx_proto::GROUP_VERSION {
            return Ok(());
        }
        let Some(map) = self.health.as_mut().map(|h| h.borrow_and_update().clone()) else {
            return Ok(());
        };
        let registered: Vec<ncx_proto::Name> = self
            .services
            .iter()
            .filter(|s| s.result.is_ok())
            .map(|s| s.name.clone())
            .collect();
        for service in registered {
            let now = map.get(&service);
            let healthy = now.is_none_or(|h| h.healthy);
            if self.reported.get(&service).copied().unwrap_or(true) == healthy {
                continue;
            }
            let msg = Message::ServiceHealth {
                service: service.clone(),
                unhealthy: (!healthy)
                    .then(|| Text::new(now.map(|h| h.reason.clone()).unwrap_or_default())),
            };
            write_message(&mut self.ctrl, &msg).await.map_err(|e| {
                ClientError::SessionLost(format!("reporting a service's health: {e}"))
            })?;
            self.reported.insert(service, healthy);
        }
        Ok(())
    }

    /// What visit substreams of this session need.
    pub(super) fn visit_target(&self) -> outbound::Target {
        outbound::Target {
            handle: self.handle.clone(),
            visitors: self.visitors.clone(),
            accepting: self.accepting.clone(),
        }
    }

    /// The public port of a registered service (0 for a private one).
    pub fn port(&self, service: &str) -> Option<u16> {
        self.services
            .iter()
            .find(|s| s.name.as_str() == service)
            .and_then(|s| s.result.as_ref().ok().copied())
    }

    /// Serves visitors until the session ends or `shutdown` fires; returns `Ok` only for a shutdown.
    ///
    /// Pings the server every `ping_interval` and gives the session up when no answer was read for
    /// `liveness_timeout`. On shutdown it sends go-away (the server releases the ports), refuses new
    /// visitors, and lets those in flight finish for up to `drain_timeout` before resetting them.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), ClientError> {
        let result = self.run_control(&shutdown, false, None).await.map(|_| ());
        self.close().await;
        result
    }

    /// The body of [`Connected::run`]. With `retiring`, the session has handed over to a newer one:
    /// it goes on serving its visitors until the server closes it, and ignores further rotation.
    /// A request from `reloads` returns [`Served::Reload`] (not while draining).
    pub(super) async fn run_control(
        &mut self,
        shutdown: &CancellationToken,
        retiring: bool,
        mut reloads: Option<&mut tokio::sync::mpsc::Receiver<super::report::Request>>,
    ) -> Result<Served, ClientError> {
        let timing = self.settings.timing;
        let mut heartbeat = Heartbeat::new(timing.ping_interval, timing.liveness_timeout);
        let mut drain: Option<Drain> = None;
        let mut server_going_away: Option<Refusal> = None;
        let gone_away = |r: Refusal| ClientError::GoneAway {
            code: r.code,
            message: r.message,
        };
        self.report_health().await?;
        loop {
            let draining = drain.is_some();
            tokio::select! {
                // A message that arrived with the connection's end (the server's reason for ending
                // it) must win over the bare end.
                biased;
                m = self.reader.read(&mut self.ctrl) => match m {
                    Ok(Message::Ping(v)) => {
                        if let Err(e) = write_message(&mut self.ctrl, &Message::Pong(v)).await {
                            return Err(ClientError::SessionLost(format!("answering a ping: {e}")));
                        }
                    }
                    Ok(Message::Pong(seq)) => {
                        if let Some(rtt) = heartbeat.answered(seq) {
                            self.rtt.observe(rtt);
                        }
                    }
                    Ok(Message::GoAway { code: ErrorCode::Rotate, .. }) if !retiring => {
                        info!("the server asks for a fresh session (stream ids running out); visitors here will finish");
                        return Ok(Served::Rotate);
                    }
                    Ok(Message::GoAway { code, message }) => {
                        if !retiring {
                            if code == ErrorCode::SessionReplaced {
                                // Not the server going away: another session of this identity
                                // took the services over, most often a second client started
                                // with the same identity.
                                warn!(reason = %message, "a newer session of this identity took over this session's services (is another client running with the same identity?); visitors in flight may finish");
                            } else {
                                info!(%code, reason = %message, "the server is going away; visitors in flight may finish");
                            }
                        }
                        server_going_away = Some(Refusal::from_wire(code, &message));
                    }
                    Ok(Message::Error { code, message }) => {
                        return Err(gone_away(Refusal::from_wire(code, &message)));
                    }
                    Ok(other) => {
                        return Err(ClientError::SessionLost(format!("unexpected message type 0x{:02x} on the control stream", other.type_byte())));
                    }
                    Err(e) => return Err(match server_going_away.take() {
                        Some(r) => gone_away(r),
                        None => ClientError::SessionLost(format!("the control stream failed: {e}")),
                    }),
                },
                Some(request) = async {
                    match reloads.as_deref_mut() {
                        Some(r) => r.recv().await,
                        None => std::future::pending().await,
                    }
                }, if !draining => return Ok(Served::Reload(Box::new(request))),
                Ok(()) = async {
                    match self.health.as_mut() {
                        Some(h) => h.changed().await,
                        None => std::future::pending().await,
                    }
                }, if !draining && !retiring => self.report_health().await?,
                _ = shutdown.cancelled(), if !draining => {
                    let bye = Message::GoAway { code: ErrorCode::ShuttingDown, message: Text::new("the client is shutting down") };
                    let _ = write_message(&mut self.ctrl, &bye).await;
                    self.accepting.store(false, Ordering::SeqCst);
                    drain = Some(Drain::start(self.visitors.tracker(), timing.drain_timeout));
                    info!(drain = ?timing.drain_timeout, "shutting down; visitors in flight may finish");
                }
                end = async { drain.expect("guarded by draining").end(self.visitors.tracker()).await }, if draining => {
                    if end == DrainEnd::DeadlinePassed {
                        info!("drain deadline passed; resetting the remaining visitors");
                    }
                    return Ok(Served::Shutdown);
                }
                end = &mut self.driver => {
                    // The server's reason may still sit in the control stream's buffer.
                    if let Some(Ok(Message::Error { code, message } | Message::GoAway { code, message })) =
                        self.reader.read(&mut self.ctrl).now_or_never()
                    {
                        return Err(gone_away(Refusal::from_wire(code, &message)));
                    }
                    if draining {
                        return Ok(Served::Shutdown);
                    }
                    if let Some(r) = server_going_away.take() {
                        return Err(gone_away(r));
                    }
                    return Err(ClientError::SessionLost(match end {
                        Ok(SessionEnd::PeerClosed) => "the server closed the connection".into(),
                        Ok(SessionEnd::Failed(e)) => format!("the connection failed: {e}"),
                        Ok(SessionEnd::Closed) => "closed".into(),
                        Ok(SessionEnd::ProtocolViolation(code)) => format!(
                            "the server broke the multiplexing protocol (yamux GoAway code {code} sent), so the connection was closed"
                        ),
                        Err(e) => format!("the session task failed: {e}"),
                    }));
                }
                beat = heartbeat.due() => match beat {
                    Beat::Silent(silent) => {
                        return Err(ClientError::SessionLost(format!(
                            "the server answered no ping for {}", crate::human::Human(silent)
                        )));
                    }
                    Beat::Ping(seq) => {
                        if let Err(e) = write_message(&mut self.ctrl, &Message::Ping(seq)).await {
                            return Err(ClientError::SessionLost(format!("sending a ping: {e}")));
                        }
                    }
                },
            }
        }
    }

    /// Ends the session: visitors are reset, the connection closed.
    pub(super) async fn close(&mut self) {
        self.visitors.stop().await;
        self.session_cancel.cancel();
        if !self.driver.is_finished() {
            let _ = (&mut self.driver).await;
        }
    }
}

impl Connected {
    /// Logs each service's outcome: its public address, that it is offered privately, or why the
    /// server refused it. Called once the session is up, after "connected to the server".
    /// Each service as `ncx status` shows it: `NAME -> PUBLIC ADDRESS`, private, or refused.
    pub fn service_lines(&self) -> Vec<String> {
        let host = server_host(&self.settings.server);
        self.services
            .iter()
            .map(|st| match &st.result {
                Ok(0) => format!("{} (private)", st.name),
                Ok(port) => format!("{} -> {host}:{port}", st.name),
                Err(r) => format!("{} refused: {}", st.name, r.message),
            })
            .collect()
    }

    pub fn log_services(&self) {
        let host = server_host(&self.settings.server);
        for st in &self.services {
            match &st.result {
                Ok(0) => {
                    info!(service = %st.name, "private service offered; listed identities reach it with `ncx visit`")
                }
                Ok(port) => {
                    info!(service = %st.name, public = %format!("{host}:{port}"), "service available")
                }
                Err(r) => {
                    warn!(service = %st.name, code = %r.code, reason = %r.message, "service refused by the server")
                }
            }
        }
    }
}

/// The host part of `HOST:PORT` (brackets kept for IPv6), to print a service's public address.
fn server_host(server: &str) -> &str {
    server.rsplit_once(':').map_or(server, |(h, _)| h)
}
