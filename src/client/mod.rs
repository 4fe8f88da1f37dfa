//! `ncx client`: dials the server once, authenticates, registers services, and splices every
//! visitor substream the server opens to the local service.
//!
//! - `mod.rs`: connecting ([`Client::connect`]), the control stream ([`Connected::run`]) and the
//!   reconnect loop ([`run`]).
//! - [`visitor`]: one substream from header to splice.
//! - [`visit`]: local listeners whose connections reach private services of other clients
//!   (`ncx visit`).

mod visit;
mod visitor;

use std::collections::HashMap;

use futures::FutureExt;
use std::sync::Arc;
use std::time::Duration;

use ncx_proto::{ErrorCode, Message, Name, Text, PROTOCOL_VERSION};
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_rustls::TlsConnector;
use tokio_util::compat::{Compat, FuturesAsyncReadCompatExt};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn, Instrument};

use crate::config::{ClientSettings, ServiceSpec};
use crate::framed::{write_message, MessageReader, ReadError};
use crate::session::{self, SessionEnd};
use crate::tls::{ServerTrust, TlsError};

/// A session that lived this long resets the backoff to its initial value.
pub const BACKOFF_RESET_AFTER: Duration = Duration::from_secs(60);

/// Why the client could not connect, or why its session ended.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The TCP connection to the server failed.
    #[error("connecting to the server at {addr}: {source}")]
    Connect {
        /// The server address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// A deadline passed.
    #[error("{stage} timed out after {after:?}")]
    Timeout {
        /// What was being done.
        stage: &'static str,
        /// The deadline.
        after: Duration,
    },
    /// TLS failed; the text names the cause in plain words.
    #[error("{0}")]
    Tls(String),
    /// The server refused this client.
    #[error("the server refused this client: {message} ({code})")]
    Refused {
        /// Why, for programs.
        code: ErrorCode,
        /// Why, for people.
        message: String,
    },
    /// The server broke the protocol or the connection failed mid-exchange.
    #[error("{0}")]
    Protocol(String),
    /// Every service was refused, so the session has nothing to do.
    #[error("the server refused every service: {0}")]
    NoServices(String),
    /// The session ended after it was established.
    #[error("the session ended: {0}")]
    SessionLost(String),
    /// The server sent go-away and closed the session.
    #[error("the server closed the session: {message} ({code})")]
    GoneAway {
        /// Why, for programs.
        code: ErrorCode,
        /// Why, for people.
        message: String,
    },
    /// Building the TLS configuration failed.
    #[error(transparent)]
    Config(#[from] TlsError),
    /// A visit's local listener could not be bound.
    #[error("listening on {addr} for a visit: {source}")]
    Listen {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

impl ClientError {
    /// Whether retrying cannot help until the configuration changes (bad token, unknown identity,
    /// version mismatch, server certificate refused).
    pub fn is_permanent(&self) -> bool {
        match self {
            ClientError::Refused { code, .. } => code.is_permanent(),
            ClientError::Tls(_) | ClientError::Config(_) | ClientError::Listen { .. } => true,
            _ => false,
        }
    }
}

/// Why [`Connected::serve`] returned without an error.
enum Served {
    /// Shutdown was asked for (and the drain is over).
    Shutdown,
    /// The server asked for a fresh session.
    Rotate,
}

/// The outcome of registering one service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceStatus {
    /// The service.
    pub name: Name,
    /// The public port, or the refusal.
    pub result: Result<u16, (ErrorCode, String)>,
}

/// A configured client.
#[derive(Clone)]
pub struct Client {
    settings: Arc<ClientSettings>,
    connector: TlsConnector,
}

/// An authenticated session with its services registered.
pub struct Connected {
    /// What became of each configured service.
    pub services: Vec<ServiceStatus>,
    ctrl: Compat<yamux::Stream>,
    reader: MessageReader,
    driver: JoinHandle<SessionEnd>,
    session_cancel: CancellationToken,
    visitors_cancel: CancellationToken,
    tracker: TaskTracker,
    /// Cleared when draining: new substreams from the server are refused.
    accepting: Arc<AtomicBool>,
    /// Opens visit substreams.
    handle: session::SessionHandle,
    settings: Arc<ClientSettings>,
}

impl Client {
    /// Builds the TLS configuration.
    pub fn new(settings: ClientSettings) -> Result<Self, ClientError> {
        let tls = crate::tls::client_config(&settings.trust, settings.client_cert.as_ref())?;
        Ok(Client {
            settings: Arc::new(settings),
            connector: TlsConnector::from(Arc::new(tls)),
        })
    }

    /// Connects, authenticates and registers every service. Returns once each service has an
    /// answer; visitors are served from then on, by tasks the returned [`Connected`] owns.
    pub async fn connect(&self) -> Result<Connected, ClientError> {
        let s = &self.settings;
        let tcp = match tokio::time::timeout(s.connect_timeout, TcpStream::connect(&s.server)).await
        {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(source)) => {
                return Err(ClientError::Connect {
                    addr: s.server.clone(),
                    source,
                })
            }
            Err(_) => {
                return Err(ClientError::Timeout {
                    stage: "connecting to the server",
                    after: s.connect_timeout,
                })
            }
        };
        crate::net::tune_tunnel(&tcp);
        if matches!(s.trust, ServerTrust::InsecureSkipVerify) {
            warn!("server verification is disabled (insecure_skip_verify): anyone on the network path can impersonate the server");
        }
        let deadline = tokio::time::Instant::now() + s.handshake_timeout;
        let hs_timeout = || ClientError::Timeout {
            stage: "the handshake with the server",
            after: s.handshake_timeout,
        };
        let tls = match tokio::time::timeout_at(
            deadline,
            self.connector.connect(s.server_name.clone(), tcp),
        )
        .await
        {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                return Err(ClientError::Tls(crate::tls::explain_handshake_error(
                    &e, &s.trust,
                )))
            }
            Err(_) => return Err(hs_timeout()),
        };
        let (_, conn) = tls.get_ref();
        if conn.alpn_protocol() != Some(ncx_proto::ALPN) {
            return Err(ClientError::Tls(
                "the server did not agree to protocol ncx/1 (protocol version mismatch: upgrade the older side)".into(),
            ));
        }
        let exported = crate::auth::export(conn)
            .map_err(|e| ClientError::Tls(format!("exporting TLS keying material: {e}")))?;

        let session_cancel = CancellationToken::new();
        let visitors_cancel = session_cancel.child_token();
        let tracker = TaskTracker::new();
        let services: Arc<HashMap<Name, ServiceSpec>> = Arc::new(
            s.services
                .iter()
                .map(|svc| (svc.name.clone(), svc.clone()))
                .collect(),
        );
        let accepting = Arc::new(AtomicBool::new(true));
        let on_inbound: session::InboundHandler = {
            let accepting = accepting.clone();
            let tracker = tracker.clone();
            let cancel = visitors_cancel.clone();
            let services = services.clone();
            let local_timeout = s.local_connect_timeout;
            Box::new(
                move |stream: yamux::Stream, state: &Arc<session::SessionState>| {
                    if !accepting.load(Ordering::SeqCst) {
                        // Draining: dropping the stream resets it, and the server resets the visitor.
                        return;
                    }
                    tracker.spawn(
                        visitor::serve(
                            stream,
                            state.clone(),
                            services.clone(),
                            local_timeout,
                            cancel.clone(),
                        )
                        .instrument(tracing::info_span!(
                            "visitor",
                            service = tracing::field::Empty,
                            peer = tracing::field::Empty
                        )),
                    );
                },
            )
        };
        let (handle, driver) =
            session::start(tls, yamux::Mode::Client, on_inbound, session_cancel.clone());
        let driver = tokio::spawn(driver.in_current_span());

        let mut connected = Connected {
            services: Vec::new(),
            ctrl: match tokio::time::timeout_at(deadline, handle.open()).await {
                Ok(Ok(stream)) => stream.compat(),
                Ok(Err(_)) => {
                    return Err(ClientError::Protocol(
                        "the session closed before the control stream opened".into(),
                    ))
                }
                Err(_) => return Err(hs_timeout()),
            },
            reader: MessageReader::new(),
            driver,
            session_cancel,
            visitors_cancel,
            tracker,
            accepting,
            handle,
            settings: self.settings.clone(),
        };
        let result = tokio::time::timeout_at(
            deadline,
            connected.hello(
                &s.identity,
                s.token.as_ref(),
                &exported,
                &s.services,
                server_host(&s.server),
            ),
        )
        .await;
        match result {
            Ok(Ok(())) => Ok(connected),
            Ok(Err(e)) => {
                connected.close().await;
                Err(e)
            }
            Err(_) => {
                connected.close().await;
                Err(hs_timeout())
            }
        }
    }
}

impl Drop for Connected {
    /// A `Connected` dropped without [`Connected::run`] still ends its session and visitor tasks.
    fn drop(&mut self) {
        self.session_cancel.cancel();
    }
}

/// Turns a read failure during the handshake into the most useful error: a TLS alert from the server
/// (for example a refused client certificate) says more than "connection reset" or "the stream
/// ended".
///
/// In TLS 1.3 the client's handshake is complete before the server has checked the client's
/// certificate, so a refusal only shows up as an alert at the first read, the welcome. yamux reads
/// that alert as the end of every stream; the session state keeps the TLS error it hid.
fn read_failure(stage: &str, e: ReadError, state: &session::SessionState) -> ClientError {
    use rustls::AlertDescription as A;
    let direct = match &e {
        ReadError::Io(io) => io
            .get_ref()
            .and_then(|i| i.downcast_ref::<rustls::Error>())
            .cloned(),
        _ => None,
    };
    let Some(tls) = direct.or_else(|| state.tls_failure()) else {
        return ClientError::Protocol(format!("{stage}: {e}"));
    };
    match tls {
        rustls::Error::AlertReceived(
            alert @ (A::BadCertificate
            | A::UnknownCA
            | A::CertificateExpired
            | A::CertificateRevoked
            | A::CertificateUnknown
            | A::UnsupportedCertificate
            | A::CertificateRequired
            | A::AccessDenied
            | A::DecryptError),
        ) => ClientError::Tls(format!(
            "the server rejected this client's certificate ({alert:?}): use a certificate from `ncx certs client NAME` signed by the CA the server has as tls.client_ca, still valid, with `cert` and `key`"
        )),
        other => ClientError::Tls(format!("the server ended TLS while {stage}: {other}")),
    }
}

impl Connected {
    async fn hello(
        &mut self,
        identity: &Name,
        token: Option<&crate::auth::Token>,
        exported: &crate::auth::ExportedKey,
        services: &[ServiceSpec],
        host: &str,
    ) -> Result<(), ClientError> {
        let hello = Message::Hello {
            version: PROTOCOL_VERSION,
            identity: identity.clone(),
            // An identity that authenticates by certificate alone has no token; the server ignores
            // the proof then.
            proof: token.map_or([0; ncx_proto::AUTH_PROOF_LEN], |t| {
                crate::auth::prove(t, exported, identity)
            }),
        };
        write_message(&mut self.ctrl, &hello)
            .await
            .map_err(|e| ClientError::Protocol(format!("sending the hello: {e}")))?;
        match self.reader.read(&mut self.ctrl).await {
            Ok(Message::Welcome { .. }) => {}
            Ok(Message::Error { code, message }) => {
                return Err(ClientError::Refused {
                    code,
                    message: message.to_string(),
                })
            }
            Ok(other) => {
                return Err(ClientError::Protocol(format!(
                    "the server answered the hello with message type 0x{:02x}",
                    other.type_byte()
                )))
            }
            Err(e) => {
                return Err(read_failure(
                    "waiting for the server's welcome",
                    e,
                    self.handle.state(),
                ))
            }
        }
        for svc in services {
            let reg = match &svc.visitors {
                Some(visitors) => Message::RegisterPrivate {
                    service: svc.name.clone(),
                    visitors: visitors.clone(),
                },
                None => Message::Register {
                    service: svc.name.clone(),
                    remote_port: svc.remote_port,
                    access: svc.access.clone(),
                },
            };
            write_message(&mut self.ctrl, &reg)
                .await
                .map_err(|e| ClientError::Protocol(format!("registering services: {e}")))?;
        }
        let mut answers: HashMap<Name, Result<u16, (ErrorCode, String)>> = HashMap::new();
        while answers.len() < services.len() {
            let (name, result) = match self.reader.read(&mut self.ctrl).await {
                Ok(Message::Registered {
                    service,
                    remote_port,
                }) => (service, Ok(remote_port)),
                Ok(Message::ServiceRefused {
                    service,
                    code,
                    message,
                }) => (service, Err((code, message.to_string()))),
                Ok(Message::Ping(v)) => {
                    write_message(&mut self.ctrl, &Message::Pong(v))
                        .await
                        .map_err(|e| ClientError::Protocol(format!("answering a ping: {e}")))?;
                    continue;
                }
                Ok(Message::Error { code, message }) => {
                    return Err(ClientError::Refused {
                        code,
                        message: message.to_string(),
                    })
                }
                Ok(other) => {
                    return Err(ClientError::Protocol(format!(
                        "unexpected message type 0x{:02x} while registering services",
                        other.type_byte()
                    )))
                }
                Err(e) => return Err(read_failure("registering services", e, self.handle.state())),
            };
            if !services.iter().any(|s| s.name == name) || answers.contains_key(&name) {
                return Err(ClientError::Protocol(format!(
                    "the server answered for service {name}, which was not asked for or answered twice"
                )));
            }
            answers.insert(name, result);
        }
        self.services = services
            .iter()
            .map(|svc| ServiceStatus {
                name: svc.name.clone(),
                result: answers
                    .remove(&svc.name)
                    .expect("every service was answered"),
            })
            .collect();
        for st in &self.services {
            match &st.result {
                Ok(0) => {
                    info!(service = %st.name, "private service offered; listed identities reach it with `ncx visit`")
                }
                Ok(port) => {
                    info!(service = %st.name, public = %format!("{host}:{port}"), "service available")
                }
                Err((code, msg)) => {
                    warn!(service = %st.name, %code, reason = %msg, "service refused by the server")
                }
            }
        }
        if !self.services.is_empty() && self.services.iter().all(|s| s.result.is_err()) {
            let reasons = self
                .services
                .iter()
                .filter_map(|s| {
                    s.result
                        .as_ref()
                        .err()
                        .map(|(_, m)| format!("{}: {m}", s.name))
                })
                .collect::<Vec<_>>()
                .join("; ");
            return Err(ClientError::NoServices(reasons));
        }
        Ok(())
    }

    /// What visit substreams of this session need.
    fn visit_target(&self) -> visit::Target {
        visit::Target {
            handle: self.handle.clone(),
            tracker: self.tracker.clone(),
            cancel: self.visitors_cancel.clone(),
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
        let result = self.serve(&shutdown, false).await.map(|_| ());
        self.close().await;
        result
    }

    /// The body of [`Connected::run`]. With `retiring`, the session has handed over to a newer one:
    /// it goes on serving its visitors until the server closes it, and ignores further rotation.
    async fn serve(
        &mut self,
        shutdown: &CancellationToken,
        retiring: bool,
    ) -> Result<Served, ClientError> {
        let timing = self.settings.timing;
        let mut ping =
            tokio::time::interval_at(Instant::now() + timing.ping_interval, timing.ping_interval);
        ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut ping_seq: u64 = 0;
        let mut last_pong = Instant::now();
        let mut drain_deadline: Option<Instant> = None;
        let mut server_going_away: Option<(ErrorCode, String)> = None;
        let result = loop {
            let deadline = drain_deadline.unwrap_or_else(Instant::now);
            tokio::select! {
                // A message that arrived with the connection's end (the server's reason for ending
                // it) must win over the bare end.
                biased;
                m = self.reader.read(&mut self.ctrl) => match m {
                    Ok(Message::Ping(v)) => {
                        if let Err(e) = write_message(&mut self.ctrl, &Message::Pong(v)).await {
                            break Err(ClientError::SessionLost(format!("answering a ping: {e}")));
                        }
                    }
                    Ok(Message::Pong(_)) => last_pong = Instant::now(),
                    Ok(Message::GoAway { code: ErrorCode::Rotate, .. }) if !retiring => {
                        info!("the server asks for a fresh session (stream ids running out); visitors here will finish");
                        break Ok(Served::Rotate);
                    }
                    Ok(Message::GoAway { code, message }) => {
                        if !retiring {
                            info!(%code, reason = %message, "the server is going away; visitors in flight may finish");
                        }
                        server_going_away = Some((code, message.to_string()));
                    }
                    Ok(Message::Error { code, message }) => {
                        break Err(ClientError::GoneAway { code, message: message.to_string() });
                    }
                    Ok(other) => {
                        break Err(ClientError::SessionLost(format!("unexpected message type 0x{:02x} on the control stream", other.type_byte())));
                    }
                    Err(e) => break Err(match server_going_away.take() {
                        Some((code, message)) => ClientError::GoneAway { code, message },
                        None => ClientError::SessionLost(format!("the control stream failed: {e}")),
                    }),
                },
                _ = shutdown.cancelled(), if drain_deadline.is_none() => {
                    let bye = Message::GoAway { code: ErrorCode::ShuttingDown, message: Text::new("the client is shutting down") };
                    let _ = write_message(&mut self.ctrl, &bye).await;
                    self.accepting.store(false, Ordering::SeqCst);
                    self.tracker.close();
                    drain_deadline = Some(Instant::now() + timing.drain_timeout);
                    info!(drain = ?timing.drain_timeout, "shutting down; visitors in flight may finish");
                }
                _ = self.tracker.wait(), if drain_deadline.is_some() => break Ok(Served::Shutdown),
                _ = tokio::time::sleep_until(deadline), if drain_deadline.is_some() => {
                    info!("drain deadline passed; resetting the remaining visitors");
                    break Ok(Served::Shutdown);
                }
                end = &mut self.driver => {
                    // The server's reason may still sit in the control stream's buffer.
                    if let Some(Ok(Message::Error { code, message } | Message::GoAway { code, message })) =
                        self.reader.read(&mut self.ctrl).now_or_never()
                    {
                        break Err(ClientError::GoneAway { code, message: message.to_string() });
                    }
                    if drain_deadline.is_some() {
                        break Ok(Served::Shutdown);
                    }
                    if let Some((code, message)) = server_going_away.take() {
                        break Err(ClientError::GoneAway { code, message });
                    }
                    break Err(ClientError::SessionLost(match end {
                        Ok(SessionEnd::PeerClosed) => "the server closed the connection".into(),
                        Ok(SessionEnd::Failed(e)) => format!("the connection failed: {e}"),
                        Ok(SessionEnd::Closed) => "closed".into(),
                        Err(e) => format!("the session task failed: {e}"),
                    }));
                }
                _ = ping.tick() => {
                    if last_pong.elapsed() > timing.liveness_timeout {
                        break Err(ClientError::SessionLost(format!(
                            "the server answered no ping for {:?}", last_pong.elapsed()
                        )));
                    }
                    ping_seq += 1;
                    if let Err(e) = write_message(&mut self.ctrl, &Message::Ping(ping_seq)).await {
                        break Err(ClientError::SessionLost(format!("sending a ping: {e}")));
                    }
                }
            }
        };
        result
    }

    /// Ends the session: visitors are reset, the connection closed.
    async fn close(&mut self) {
        self.visitors_cancel.cancel();
        self.tracker.close();
        self.tracker.wait().await;
        self.session_cancel.cancel();
        if !self.driver.is_finished() {
            let _ = (&mut self.driver).await;
        }
    }
}

/// The host part of `HOST:PORT` (brackets kept for IPv6), to print a service's public address.
fn server_host(server: &str) -> &str {
    server.rsplit_once(':').map_or(server, |(h, _)| h)
}

/// Connects and serves until `shutdown`, reconnecting with exponential backoff and jitter after
/// every loss. Returns an error only for a permanent refusal (bad token, unknown identity, version
/// mismatch, server certificate refused), which retrying cannot fix.
pub async fn run(settings: ClientSettings, shutdown: CancellationToken) -> Result<(), ClientError> {
    let listeners = visit::bind(&settings).await?;
    run_bound(settings, listeners, shutdown).await
}

pub use visit::bind as bind_visits;

/// [`run`] with the visit listeners already bound (by [`bind_visits`]), so a caller can learn
/// their addresses first.
pub async fn run_bound(
    settings: ClientSettings,
    visit_listeners: Vec<tokio::net::TcpListener>,
    shutdown: CancellationToken,
) -> Result<(), ClientError> {
    let backoff_cfg = settings.reconnect;
    let client = Client::new(settings)?;
    // Visit listeners live across reconnects; each connection goes through whichever session is
    // current.
    let (targets, targets_rx) = tokio::sync::watch::channel(None);
    let listeners_cancel = shutdown.child_token();
    let listeners = visit::start(
        &client.settings,
        visit_listeners,
        targets_rx,
        listeners_cancel.clone(),
    );
    let result = run_sessions(&client, backoff_cfg, &targets, &shutdown).await;
    listeners_cancel.cancel();
    listeners.close();
    listeners.wait().await;
    result
}

/// The reconnect loop of [`run`]; publishes each session for the visit listeners in `targets`.
async fn run_sessions(
    client: &Client,
    backoff_cfg: crate::config::Backoff,
    targets: &tokio::sync::watch::Sender<Option<visit::Target>>,
    shutdown: &CancellationToken,
) -> Result<(), ClientError> {
    let mut backoff = backoff_cfg.initial;
    // Sessions that handed over to a newer one and serve their last visitors.
    let retiring = TaskTracker::new();
    let result = loop {
        let started = Instant::now();
        let err = tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            r = client.connect() => match r {
                Ok(mut connected) => {
                    info!("connected to the server");
                    targets.send_replace(Some(connected.visit_target()));
                    let served = connected.serve(shutdown, false).await;
                    targets.send_replace(None);
                    match served {
                        Ok(Served::Shutdown) => {
                            connected.close().await;
                            break Ok(());
                        }
                        Ok(Served::Rotate) => {
                            let shutdown = shutdown.clone();
                            retiring.spawn(async move {
                                if let Err(e) = connected.serve(&shutdown, true).await {
                                    debug!(error = %e, "retired session ended");
                                }
                                connected.close().await;
                            }.in_current_span());
                            backoff = backoff_cfg.initial;
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
        if started.elapsed() >= BACKOFF_RESET_AFTER {
            backoff = backoff_cfg.initial;
        }
        if let ClientError::GoneAway {
            code: ErrorCode::SessionReplaced,
            ..
        } = err
        {
            // Another client with this identity took over. Coming back at once would take the
            // services back and start a tug of war; come back slowly and say so.
            backoff = backoff_cfg.max;
            warn!("another client with the same identity took over this client's services; two clients must not share an identity");
        }
        let pause = jitter(backoff);
        warn!(error = %err, retry_in = ?pause, "not connected; retrying");
        tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            _ = tokio::time::sleep(pause) => {}
        }
        backoff = (backoff * 2).min(backoff_cfg.max);
    };
    retiring.close();
    retiring.wait().await;
    result
}

/// `base` ± 20%, so that many clients cut off together do not return together.
fn jitter(base: Duration) -> Duration {
    let mut b = [0u8; 2];
    let _ = aws_lc_rs::rand::fill(&mut b);
    let r = f64::from(u16::from_le_bytes(b)) / f64::from(u16::MAX); // 0..=1
    base.mul_f64(0.8 + 0.4 * r)
}
