//! Connecting: dial the server, TLS with the configured trust, the yamux session, the hello and
//! the registration of every service, all under the handshake deadline.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use ncx_proto::{ErrorCode, Message, Name, PROTOCOL_VERSION};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_rustls::client::TlsStream;
use tokio_util::compat::FuturesAsyncReadCompatExt;
use tracing::{warn, Instrument};

use crate::readahead::ReadAhead;

use super::apply::{registration, too_new};
use super::control::Connected;
use super::error::{ClientError, ServiceStatus};
use super::inbound::{self, LocalService, LocalServices};
use super::Client;
use crate::config::ServiceSpec;
use crate::framed::{write_message, MessageReader, ReadError};
use crate::mux;
use crate::proxy::Transport;
use crate::ratelimit::LogLimiter;
use crate::refusal::Refusal;
use crate::tasks::TaskGroup;
use crate::tls::ServerTrust;

impl Client {
    /// Connects, authenticates and registers every service. Returns once each service has an
    /// answer; visitors are served from then on, by tasks the returned [`Connected`] owns.
    pub async fn connect(&self) -> Result<Connected, ClientError> {
        let s = &self.settings;
        let tcp = self.dial().await?;
        let deadline = Instant::now() + s.handshake_timeout;
        let hs_timeout = || ClientError::Timeout {
            stage: "the handshake with the server",
            after: s.handshake_timeout,
        };
        let (tls, exported) = match tokio::time::timeout_at(deadline, self.tls(tcp)).await {
            Ok(r) => r?,
            Err(_) => return Err(hs_timeout()),
        };

        let session_cancel = tokio_util::sync::CancellationToken::new();
        let visitors = TaskGroup::child_of(&session_cancel);
        let accepting = Arc::new(AtomicBool::new(true));
        let (local, local_rx) = tokio::sync::watch::channel(Arc::new(
            s.services
                .iter()
                .map(|svc| {
                    (
                        svc.name.clone(),
                        Arc::new(LocalService::new(svc.clone(), &visitors)),
                    )
                })
                .collect(),
        ));
        let inbound = Inbound {
            accepting: accepting.clone(),
            visitors: visitors.clone(),
            services: local_rx,
            local_timeout: s.local_connect_timeout,
            permits: Arc::new(Semaphore::new(s.max_visitors)),
            limit: s.max_visitors,
            limit_log: LogLimiter::default(),
        };
        let (handle, driver) = mux::start(
            tls,
            yamux::Mode::Client,
            Box::new(move |stream, state| inbound.accept(stream, state)),
            session_cancel.clone(),
        );
        let driver = tokio::spawn(driver.in_current_span());
        let ctrl = match tokio::time::timeout_at(deadline, handle.open()).await {
            Ok(Ok(stream)) => stream.compat(),
            Ok(Err(_)) => {
                session_cancel.cancel();
                return Err(ClientError::Protocol(
                    "the session closed before the control stream opened".into(),
                ));
            }
            Err(_) => {
                session_cancel.cancel();
                return Err(hs_timeout());
            }
        };
        let mut connected = Connected {
            services: Vec::new(),
            version: PROTOCOL_VERSION,
            local,
            ctrl,
            reader: MessageReader::new(),
            driver,
            session_cancel,
            visitors,
            accepting,
            handle,
            settings: self.settings.clone(),
            rtt: self.metrics.rtt(),
            health: self.health.as_ref().map(|m| m.subscribe()),
            reported: HashMap::new(),
        };
        let greeted = async {
            connected.hello(s.token.as_ref(), &exported).await?;
            connected.register(&s.services).await
        };
        match tokio::time::timeout_at(deadline, greeted).await {
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
    /// TLS over `tcp` with the configured trust, ALPN `ncx/1` agreed, and the keying material the
    /// token proof is bound to.
    async fn tls(
        &self,
        tcp: Transport,
    ) -> Result<(TlsStream<ReadAhead<Transport>>, crate::auth::ExportedKey), ClientError> {
        let s = &self.settings;
        if matches!(s.trust, ServerTrust::InsecureSkipVerify) {
            warn!("server verification is disabled (insecure_skip_verify): anyone on the network path can impersonate the server");
        }
        let tls = self
            .connector
            .connect(s.server_name.clone(), ReadAhead::new(tcp))
            .await
            .map_err(|e| {
                let text = crate::tls::explain_handshake_error(&e, &s.trust);
                if crate::tls::handshake_error_is_permanent(&e) {
                    ClientError::Tls(text)
                } else {
                    ClientError::Handshake(text)
                }
            })?;
        let (_, conn) = tls.get_ref();
        if conn.alpn_protocol() != Some(ncx_proto::ALPN) {
            return Err(ClientError::Tls(crate::tls::explain_alpn(
                conn.alpn_protocol(),
            )));
        }
        let exported = crate::auth::export(conn)
            .map_err(|e| ClientError::Tls(format!("exporting TLS keying material: {e}")))?;
        Ok((tls, exported))
    }
}

/// Takes the substreams the server opens, one per visitor, while the session accepts visitors.
struct Inbound {
    /// Cleared when draining: new substreams from the server are refused.
    accepting: Arc<AtomicBool>,
    visitors: TaskGroup,
    /// The session's services, replaced whole by a reload.
    services: tokio::sync::watch::Receiver<LocalServices>,
    local_timeout: std::time::Duration,
    /// Caps the visitors the server may have open through this client.
    permits: Arc<Semaphore>,
    limit: usize,
    limit_log: LogLimiter,
}

impl Inbound {
    /// Called by the mux driver for every substream the server opens; must not block.
    fn accept(&self, stream: yamux::Stream, state: &Arc<mux::SessionState>) {
        if !self.accepting.load(Ordering::SeqCst) {
            // Draining: dropping the stream resets it, and the server resets the visitor.
            return;
        }
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            if let Some(held_back) = self.limit_log.allow() {
                warn!(
                    limit = self.limit,
                    held_back,
                    "the server opened more visitors than max_visitors; reset the newest"
                );
            }
            return;
        };
        let span = tracing::info_span!(
            "visitor",
            service = tracing::field::Empty,
            peer = tracing::field::Empty
        );
        self.visitors.spawn(
            inbound::serve_visitor(
                stream,
                state.clone(),
                self.services.borrow().clone(),
                self.local_timeout,
                self.visitors.token().clone(),
                permit,
            )
            .instrument(span),
        );
    }
}

impl Connected {
    /// Sends the hello with the token's proof and waits for the welcome.
    async fn hello(
        &mut self,
        token: Option<&crate::auth::Token>,
        exported: &crate::auth::ExportedKey,
    ) -> Result<(), ClientError> {
        let identity = &self.settings.identity;
        let hello = Message::Hello {
            version: PROTOCOL_VERSION,
            identity: identity.clone(),
            // An identity that authenticates by certificate alone has no token; the server ignores
            // the proof then.
            proof: token.map_or([0; ncx_proto::AUTH_PROOF_LEN], |t| {
                crate::auth::prove(t, exported, identity)
            }),
            instance: self.settings.instance.clone(),
        };
        write_message(&mut self.ctrl, &hello)
            .await
            .map_err(|e| ClientError::Protocol(format!("sending the hello: {e}")))?;
        match self.reader.read(&mut self.ctrl).await {
            Ok(Message::Welcome { version })
                if (ncx_proto::MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&version) =>
            {
                self.version = version;
                Ok(())
            }
            Ok(Message::Welcome { version }) => Err(ClientError::Protocol(format!(
                "the server welcomed this client with protocol version {version}, which it does not speak (it speaks {} to {PROTOCOL_VERSION})",
                ncx_proto::MIN_PROTOCOL_VERSION
            ))),
            Ok(Message::Error { code, message }) => {
                let mut message = message.to_string();
                // Which token was wrong is the first thing to check.
                if code == ErrorCode::BadToken {
                    if let Some(from) = &self.settings.token_source {
                        message.push_str(&format!("; the token came from {from}"));
                    }
                }
                if code == ErrorCode::ProtocolViolation && self.settings.instance.is_some() {
                    message.push_str(&format!(
                        " (an instance name needs a server of protocol version {} or newer)",
                        ncx_proto::GROUP_VERSION
                    ));
                }
                Err(ClientError::Refused { code, message })
            }
            Ok(other) => Err(ClientError::Protocol(format!(
                "the server answered the hello with message type 0x{:02x}",
                other.type_byte()
            ))),
            Err(e) => Err(read_failure(
                "waiting for the server's welcome",
                e,
                self.handle.state(),
            )),
        }
    }

    /// Registers every service and waits for every answer (answering pings meanwhile). Fails only
    /// when the server refuses them all.
    async fn register(&mut self, services: &[ServiceSpec]) -> Result<(), ClientError> {
        let mut answers: HashMap<Name, Result<u16, Refusal>> = HashMap::new();
        for svc in services {
            if let Some(refusal) = too_new(svc, self.version) {
                answers.insert(svc.name.clone(), Err(refusal));
                continue;
            }
            write_message(&mut self.ctrl, &registration(svc))
                .await
                .map_err(|e| ClientError::Protocol(format!("registering services: {e}")))?;
        }
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
                }) => (service, Err(Refusal::from_wire(code, &message))),
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
        let refused = || {
            self.services
                .iter()
                .filter_map(|s| {
                    s.result
                        .as_ref()
                        .err()
                        .map(|r| format!("{}: {}", s.name, r.message))
                })
                .collect::<Vec<_>>()
                .join("; ")
        };
        if self.settings.exit_on_forward_failure && self.services.iter().any(|s| s.result.is_err())
        {
            return Err(ClientError::ServiceRefused { reasons: refused() });
        }
        if !self.services.is_empty() && self.services.iter().all(|s| s.result.is_err()) {
            let reasons = refused();
            // Retrying cannot help when every refusal is one only the server's configuration
            // changes (at 8354efb such a client retried forever).
            let permanent = self.services.iter().all(|s| {
                s.result.as_ref().is_err_and(|r| {
                    matches!(r.code, ErrorCode::PortNotAllowed | ErrorCode::NotAllowed)
                })
            });
            return Err(ClientError::NoServices { reasons, permanent });
        }
        Ok(())
    }
}

/// Turns a read failure during the handshake into the most useful error: a TLS alert from the server
/// (for example a refused client certificate) says more than "connection reset" or "the stream
/// ended".
///
/// In TLS 1.3 the client's handshake is complete before the server has checked the client's
/// certificate, so a refusal by the TLS layer (a server that does not defer the check, or a
/// certificate whose signature is bad) only shows up as an alert at the first read, the welcome. yamux reads
/// that alert as the end of every stream; the session state keeps the TLS error it hid.
fn read_failure(stage: &str, e: ReadError, state: &mux::SessionState) -> ClientError {
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
        // After the handshake, a DecryptError alert is how some timings show the same refusal.
        rustls::Error::AlertReceived(alert)
            if crate::tls::refuses_certificate(alert) || alert == A::DecryptError =>
        {
            ClientError::Tls(
            "the server rejected this client's certificate during the TLS handshake: use a certificate from `ncx certs client NAME` signed by the CA the server has as tls.client_ca, still valid, with `cert` and `key`".to_owned()
        )
        }
        other => ClientError::Handshake(format!("the server ended TLS while {stage}: {other}")),
    }
}
