//! Outbound visits, `ncx visit` (and `[[visits]]` of any client): local listeners whose
//! connections reach private services of other clients. Each local connection becomes a visit substream on the current
//! session: `Visit { owner, service }`, the server's `VisitorStatus`, then raw bytes.
//!
//! The listeners are bound once and outlive reconnects; a connection that arrives while the client
//! is between sessions waits for the next one (up to the time a connect and handshake may take).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use ncx_proto::{ErrorCode, Message, Name};
use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn, Instrument};

use super::error::ClientError;
pub(super) use super::target::Target;
use crate::accept::accept_until;
use crate::config::ClientSettings;
use crate::framed::{write_message, MessageReader};
use crate::ratelimit::LogLimiter;
use crate::splice::{abort, splice, SpliceEnd, Substream};
use crate::timeouts::{OPEN, VISIT_ANSWER};

/// A visit's local listener: a TCP listener, or the UDP socket of a UDP visit.
pub enum VisitListener {
    Tcp(TcpListener),
    Udp(UdpSocket),
}

impl VisitListener {
    /// The address local programs reach it at.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        match self {
            VisitListener::Tcp(l) => l.local_addr(),
            VisitListener::Udp(s) => s.local_addr(),
        }
    }
}

/// Binds every visit's listener, in the order of `settings.visits`.
pub async fn bind(settings: &ClientSettings) -> Result<Vec<VisitListener>, ClientError> {
    let mut bound = Vec::new();
    for v in &settings.visits {
        let listener = if v.udp {
            UdpSocket::bind(v.listen).await.map(VisitListener::Udp)
        } else {
            TcpListener::bind(v.listen).await.map(VisitListener::Tcp)
        };
        bound.push(listener.map_err(|source| ClientError::Listen {
            addr: v.listen,
            cause: source,
        })?);
    }
    Ok(bound)
}

/// Starts accepting on `listeners` (bound by [`bind`], one per visit). The returned tracker owns
/// the listener tasks and the connections they accept; `cancel` stops them.
pub(super) fn start(
    settings: &ClientSettings,
    listeners: Vec<VisitListener>,
    targets: watch::Receiver<Option<Target>>,
    cancel: CancellationToken,
) -> TaskTracker {
    let tracker = TaskTracker::new();
    let wait = settings.connect_timeout + settings.handshake_timeout;
    for (listener, v) in listeners.into_iter().zip(&settings.visits) {
        let target = (v.owner.clone(), v.service.clone());
        if let Ok(addr) = listener.local_addr() {
            info!(owner = %v.owner, service = %v.service, listen = %addr, "visit listener ready: connect local programs here");
        }
        let span = tracing::info_span!("visit", owner = %v.owner, service = %v.service);
        match listener {
            VisitListener::Tcp(listener) => tracker.spawn(
                accept_loop(
                    listener,
                    target,
                    targets.clone(),
                    wait,
                    cancel.clone(),
                    tracker.clone(),
                )
                .instrument(span),
            ),
            VisitListener::Udp(socket) => tracker.spawn(
                super::visit_udp::serve(
                    socket,
                    target,
                    targets.clone(),
                    wait,
                    cancel.clone(),
                    tracker.clone(),
                )
                .instrument(span),
            ),
        };
    }
    tracker
}

/// Accepts local connections for one visit until `cancel`; each is carried by its own task.
async fn accept_loop(
    listener: TcpListener,
    service: (Name, Name),
    targets: watch::Receiver<Option<Target>>,
    wait: Duration,
    cancel: CancellationToken,
    tracker: TaskTracker,
) {
    let refusal_log = Arc::new(LogLimiter::default());
    accept_until(&listener, &cancel, "a local connection", |tcp, peer| {
        let span = tracing::info_span!("local", %peer);
        tracker.spawn(
            carry(
                tcp,
                service.clone(),
                targets.clone(),
                wait,
                cancel.clone(),
                refusal_log.clone(),
            )
            .instrument(span),
        );
    })
    .await;
}

/// Carries one local connection to the private service `(owner, name)`.
async fn carry(
    tcp: TcpStream,
    (owner, service): (Name, Name),
    mut targets: watch::Receiver<Option<Target>>,
    wait: Duration,
    cancel: CancellationToken,
    refusal_log: Arc<LogLimiter>,
) {
    crate::net::tune_visitor(&tcp);
    let ready = |t: &Option<Target>| {
        t.as_ref()
            .is_some_and(|t| t.accepting.load(Ordering::SeqCst))
    };
    let target = tokio::select! {
        _ = cancel.cancelled() => return abort(tcp),
        r = tokio::time::timeout(wait, targets.wait_for(ready)) => match r {
            Ok(Ok(t)) => t.clone().expect("wait_for checked it is set"),
            Ok(Err(_)) => return abort(tcp),
            Err(_) => {
                warn!("not connected to the server within {wait:?}; local connection closed");
                return abort(tcp);
            }
        },
    };
    // Counted in the session's drain like a visitor from the server.
    let _drain = target.visitors.member();
    let session_ended = target.visitors.token().clone();
    let stream = tokio::select! {
        _ = session_ended.cancelled() => return abort(tcp),
        r = tokio::time::timeout(OPEN, target.handle.open()) => match r {
            Ok(Ok(s)) => s,
            _ => {
                warn!("no substream to the server; local connection closed");
                return abort(tcp);
            }
        },
    };
    let mut sub = Substream::new(stream, target.handle.state().clone());
    let exchange = async {
        write_message(
            &mut sub,
            &Message::Visit {
                owner: owner.clone(),
                service: service.clone(),
            },
        )
        .await
        .map_err(|e| format!("sending the visit: {e}"))?;
        MessageReader::new()
            .read(&mut sub)
            .await
            .map_err(|e| format!("reading the server's answer: {e}"))
    };
    let answer = tokio::select! {
        _ = session_ended.cancelled() => return abort(tcp),
        r = tokio::time::timeout(VISIT_ANSWER, exchange) => r,
    };
    match answer {
        Ok(Ok(Message::VisitorStatus { refusal: None })) => {}
        Ok(Ok(Message::VisitorStatus {
            refusal: Some((code, message)),
        })) => {
            if let Some(held_back) = refusal_log.allow() {
                let hint = match code {
                    ErrorCode::NotAllowed => {
                        " (the service's owner must list this identity in `visitors`)"
                    }
                    ErrorCode::UnknownService => {
                        " (is its client connected, and is the name right?)"
                    }
                    _ => "",
                };
                warn!(%code, reason = %message, held_back, "the server refused the visit{hint}; local connection closed");
            }
            return abort(tcp);
        }
        Ok(Ok(other)) => {
            warn!(
                "the server answered a visit with message type 0x{:02x}",
                other.type_byte()
            );
            return abort(tcp);
        }
        Ok(Err(e)) => {
            debug!(error = %e, "visit failed");
            return abort(tcp);
        }
        Err(_) => {
            warn!("the server did not answer the visit within {VISIT_ANSWER:?}");
            return abort(tcp);
        }
    }
    debug!("visit connected");
    let spliced = splice(tcp, sub, session_ended.cancelled()).await;
    match spliced.end {
        SpliceEnd::Finished => debug!(
            sent = spliced.from_a,
            received = spliced.from_b,
            "visit finished"
        ),
        SpliceEnd::Reset(e) => info!(reason = %e, "visit reset"),
        SpliceEnd::Cancelled => debug!("visit reset: session ended"),
    }
}
