//! One client session on the server: TLS, hello and authentication under one deadline, takeover of
//! the identity's previous session, then the control stream until the session ends.

use std::pin::pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use ncx_proto::{ErrorCode, Message, Name, Text, PROTOCOL_VERSION};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_util::compat::{Compat, FuturesAsyncReadCompatExt};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::registry::{SessionEntry, SessionId};
use super::services::Services;
use super::Shared;
use crate::framed::{write_message, MessageReader, ReadError};
use crate::session::{self as yamux_session, SessionEnd, SessionHandle};

/// After refusing a client, keep the connection open this long for the refusal to be read, so
/// closing does not turn into a reset that destroys it.
const REFUSAL_LINGER: Duration = Duration::from_secs(2);

/// How long a new session waits for the session it replaces to release its ports.
const TAKEOVER_TIMEOUT: Duration = Duration::from_secs(5);

/// Streams the client may open that wait to be taken by the session task. Only the control stream
/// is expected in this version; more are refused.
const INBOUND_QUEUE: usize = 4;

type Control = Compat<yamux::Stream>;

/// Why a session ended before or during the control exchange.
#[derive(Debug, thiserror::Error)]
enum Refusal {
    #[error("{code}: {message}")]
    Refused { code: ErrorCode, message: String },
    #[error("{0}")]
    Gone(String),
}

fn refuse(code: ErrorCode, message: impl Into<String>) -> Refusal {
    Refusal::Refused {
        code,
        message: message.into(),
    }
}

/// Everything one session's tasks share.
pub(super) struct SessionCtx {
    pub shared: Arc<Shared>,
    pub id: SessionId,
    pub handle: SessionHandle,
    /// Cancels the session's listeners and visitors.
    pub services_cancel: CancellationToken,
    /// Owns the listeners and visitor tasks.
    pub tracker: TaskTracker,
    /// Caps concurrent visitors of the session.
    pub visitors: Arc<Semaphore>,
}

/// Runs a session from the first TLS byte to the release of its last port.
pub(super) async fn run(
    shared: Arc<Shared>,
    tcp: TcpStream,
    permit: OwnedSemaphorePermit,
    cancel: CancellationToken,
) {
    let deadline = tokio::time::Instant::now() + shared.settings.handshake_timeout;
    let accept = tokio::select! {
        _ = cancel.cancelled() => return,
        r = tokio::time::timeout_at(deadline, shared.acceptor.accept(tcp)) => r,
    };
    let tls = match accept {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            info!(error = %e, "TLS handshake with a client failed");
            return;
        }
        Err(_) => {
            info!("TLS handshake with a client timed out");
            return;
        }
    };
    let (_, conn) = tls.get_ref();
    if conn.alpn_protocol() != Some(ncx_proto::ALPN) {
        info!("refused a client that does not offer ALPN ncx/1 (not ncx, or a version before 1)");
        return;
    }
    let exported = match crate::auth::export(conn) {
        Ok(e) => e,
        Err(e) => {
            warn!(error = %e, "exporting TLS keying material failed");
            return;
        }
    };

    let (inbound_tx, mut inbound_rx) = mpsc::channel(INBOUND_QUEUE);
    let on_inbound = Box::new(move |stream: yamux::Stream| {
        if inbound_tx.try_send(stream).is_err() {
            debug!("dropped a stream the client opened beyond the control stream");
        }
    });
    // The driver has its own token, cancelled only after the control task has said goodbye, so a
    // shutdown reaches the client as a reason before the connection closes.
    let driver_cancel = CancellationToken::new();
    let (handle, driver) =
        yamux_session::start(tls, yamux::Mode::Server, on_inbound, driver_cancel.clone());
    let mut driver = pin!(driver);

    let id = shared.next_session.fetch_add(1, Ordering::Relaxed);
    let ctx = Arc::new(SessionCtx {
        shared: shared.clone(),
        id,
        handle,
        services_cancel: cancel.child_token(),
        tracker: TaskTracker::new(),
        visitors: Arc::new(Semaphore::new(shared.settings.max_visitors_per_session)),
    });
    let replace = CancellationToken::new();
    let done = CancellationToken::new();
    let mut identity: Option<Name> = None;
    // Set once the driver future has completed; a completed future must not be polled again.
    let mut driver_done = false;

    let outcome = {
        let control = control(
            &ctx,
            &mut inbound_rx,
            &exported,
            deadline,
            permit,
            &replace,
            &done,
            &cancel,
            &mut identity,
        );
        tokio::select! {
            end = &mut driver => { driver_done = true; Err(Refusal::Gone(match end {
                SessionEnd::PeerClosed => "the client closed the connection".into(),
                SessionEnd::Failed(e) => format!("the connection failed: {e}"),
                SessionEnd::Closed => "closed".into(),
            })) },
            r = control => r,
        }
    };
    match &outcome {
        Ok(()) => info!("session ended"),
        Err(Refusal::Refused { code, message }) if identity.is_none() => {
            warn!(%code, reason = %message, "client refused");
            // Keep driving so the refusal is delivered; the client closes once it has read it.
            if !driver_done {
                driver_done = tokio::time::timeout(REFUSAL_LINGER, &mut driver)
                    .await
                    .is_ok();
            }
        }
        Err(e) => info!(reason = %e, "session ended"),
    }
    // Ports and visitors go first (visitors are reset), then the connection itself.
    ctx.services_cancel.cancel();
    ctx.tracker.close();
    ctx.tracker.wait().await;
    driver_cancel.cancel();
    if !driver_done {
        driver.await;
    }
    if let Some(identity) = identity {
        shared.registry.remove_session(&identity, id);
    }
    done.cancel();
}

#[allow(clippy::too_many_arguments)]
async fn control(
    ctx: &Arc<SessionCtx>,
    inbound: &mut mpsc::Receiver<yamux::Stream>,
    exported: &crate::auth::ExportedKey,
    deadline: tokio::time::Instant,
    permit: OwnedSemaphorePermit,
    replace: &CancellationToken,
    done: &CancellationToken,
    cancel: &CancellationToken,
    identity_out: &mut Option<Name>,
) -> Result<(), Refusal> {
    let shared = &ctx.shared;
    let mut reader = MessageReader::new();
    let hello = async {
        let stream = inbound
            .recv()
            .await
            .ok_or_else(|| Refusal::Gone("the connection closed before the hello".into()))?;
        let mut ctrl = stream.compat();
        let msg = reader
            .read(&mut ctrl)
            .await
            .map_err(|e| Refusal::Gone(format!("reading the hello: {e}")))?;
        Ok::<_, Refusal>((ctrl, msg))
    };
    let (mut ctrl, msg) = tokio::select! {
        _ = cancel.cancelled() => return Err(Refusal::Gone("the server is shutting down".into())),
        r = tokio::time::timeout_at(deadline, hello) => match r {
            Ok(r) => r?,
            Err(_) => return Err(Refusal::Gone("the client did not say hello in time".into())),
        },
    };
    let identity = match authenticate(shared, exported, msg) {
        Ok(identity) => identity,
        Err(Refusal::Refused { code, message }) => {
            send_error(&mut ctrl, code, &message).await;
            return Err(Refusal::Refused { code, message });
        }
        Err(e) => return Err(e),
    };
    tracing::Span::current().record("client", identity.as_str());
    write_message(
        &mut ctrl,
        &Message::Welcome {
            version: PROTOCOL_VERSION,
        },
    )
    .await
    .map_err(|e| Refusal::Gone(format!("sending welcome: {e}")))?;
    drop(permit);

    // Takeover: a client must never be locked out by its own stale session.
    let entry = SessionEntry {
        id: ctx.id,
        replace: replace.clone(),
        done: done.clone(),
    };
    if let Some(old) = shared.registry.install_session(&identity, entry) {
        info!(
            old_session = old.id,
            "taking over from the identity's previous session"
        );
        old.replace.cancel();
        if tokio::time::timeout(TAKEOVER_TIMEOUT, old.done.cancelled())
            .await
            .is_err()
        {
            warn!(
                old_session = old.id,
                "the previous session did not release its ports in time"
            );
        }
    }
    *identity_out = Some(identity.clone());
    info!("client authenticated");

    let policy = shared
        .identities
        .get(&identity)
        .expect("authenticate only returns configured identities");
    let mut services = Services::new(ctx.clone(), identity.clone(), policy.clone());
    loop {
        let msg = tokio::select! {
            _ = replace.cancelled() => {
                send_error(&mut ctrl, ErrorCode::SessionReplaced, "a newer session of this identity took over").await;
                return Err(Refusal::Gone("replaced by a newer session of the same identity".into()));
            }
            _ = cancel.cancelled() => {
                send_error(&mut ctrl, ErrorCode::ShuttingDown, "the server is shutting down").await;
                return Ok(());
            }
            m = reader.read(&mut ctrl) => m,
        };
        let reply = match msg {
            Ok(Message::Register {
                service,
                remote_port,
            }) => services.register(service, remote_port),
            Ok(Message::Ping(v)) => Message::Pong(v),
            Ok(Message::Pong(_)) => continue,
            Ok(Message::Error { code, message }) => {
                return Err(Refusal::Gone(format!(
                    "the client ended the session: {code}: {message}"
                )))
            }
            Ok(other) => {
                let text = format!(
                    "unexpected message type 0x{:02x} on the control stream",
                    other.type_byte()
                );
                send_error(&mut ctrl, ErrorCode::ProtocolViolation, &text).await;
                return Err(Refusal::Gone(text));
            }
            Err(ReadError::Closed) => return Ok(()),
            Err(ReadError::Invalid(e)) => {
                let text = format!("malformed control frame: {e}");
                send_error(&mut ctrl, ErrorCode::ProtocolViolation, &text).await;
                return Err(Refusal::Gone(text));
            }
            Err(e) => return Err(Refusal::Gone(format!("reading the control stream: {e}"))),
        };
        if let Err(e) = write_message(&mut ctrl, &reply).await {
            return Err(Refusal::Gone(format!("writing the control stream: {e}")));
        }
    }
}

fn authenticate(
    shared: &Shared,
    exported: &crate::auth::ExportedKey,
    msg: Message,
) -> Result<Name, Refusal> {
    let Message::Hello {
        version,
        identity,
        proof,
    } = msg
    else {
        return Err(refuse(
            ErrorCode::ProtocolViolation,
            format!(
                "expected a hello, got message type 0x{:02x}",
                msg.type_byte()
            ),
        ));
    };
    if version != PROTOCOL_VERSION {
        return Err(refuse(
            ErrorCode::VersionMismatch,
            format!(
                "the server speaks protocol version {PROTOCOL_VERSION} and the client {version}: upgrade the older side"
            ),
        ));
    }
    let Some(policy) = shared.identities.get(&identity) else {
        return Err(refuse(
            ErrorCode::UnknownIdentity,
            format!("the server has no identity named {identity}"),
        ));
    };
    if !crate::auth::verify(&policy.token, exported, &identity, &proof) {
        return Err(refuse(
            ErrorCode::BadToken,
            format!("the token for identity {identity} is wrong"),
        ));
    }
    Ok(identity)
}

async fn send_error(ctrl: &mut Control, code: ErrorCode, message: &str) {
    let msg = Message::Error {
        code,
        message: Text::new(message),
    };
    if let Err(e) = write_message(ctrl, &msg).await {
        debug!(error = %e, "could not tell the client why");
    }
    let _ = tokio::io::AsyncWriteExt::shutdown(ctrl).await;
}
