//! One client session on the server, from the first TLS byte to the release of its last port: the
//! TLS handshake ([`run`]); the mux and the hello under the same deadline, and admission
//! ([`run_decrypted`]); then the [`Control`] loop; and finally the teardown of its ports and visitors.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ncx_proto::{Message, PROTOCOL_VERSION};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::compat::FuturesAsyncReadCompatExt;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

use super::admission::PeerTls;
use super::context::{SessionCtx, Shared};
use super::control::{refuse, Admitted, Control, Outcome};
use super::handshakes::HandshakeSlot;
use crate::framed::{write_message, MessageReader};
use crate::mux::{self, SessionEnd};

/// After refusing a client, keep the connection open this long for the refusal to be read, so
/// closing does not turn into a reset that destroys it.
const REFUSAL_LINGER: Duration = Duration::from_secs(2);

/// Streams the client opened that wait to be taken by the session task: the control stream, then
/// visit substreams. yamux lets a peer have at most 256 streams unacknowledged, so a queue of that
/// size only overflows (and resets the newest stream) if the session task stalls.
const INBOUND_QUEUE: usize = 256;

/// Runs a session from the first TLS byte to the release of its last port. `io` is the
/// connection from `peer` to the server address `local` (both as a load balancer in front
/// reported them, if one did), and `deadline` ends the handshake.
#[allow(clippy::too_many_arguments)]
pub(super) async fn run<S>(
    shared: Arc<Shared>,
    io: S,
    peer: SocketAddr,
    local: SocketAddr,
    slot: HandshakeSlot,
    deadline: Instant,
    cancel: CancellationToken,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let accept = tokio::select! {
        _ = cancel.cancelled() => return,
        _ = slot.evicted() => {
            debug!("handshake dropped to make room for a newer connection");
            return;
        }
        r = tokio::time::timeout_at(deadline, shared.acceptor.accept(crate::readahead::ReadAhead::new(io))) => r,
    };
    let tls = match accept {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            let bad_cert = e
                .get_ref()
                .and_then(|i| i.downcast_ref::<rustls::Error>())
                .is_some_and(|t| matches!(t, rustls::Error::InvalidCertificate(_)));
            if bad_cert {
                shared
                    .metrics
                    .auth_failure(ncx_proto::ErrorCode::CertificateRefused);
                shared.admission.certificate_refused(peer.ip(), &e);
            } else {
                debug!(error = %e, "TLS handshake with a client failed");
            }
            return;
        }
        Err(_) => {
            debug!("TLS handshake with a client timed out");
            return;
        }
    };
    let (_, conn) = tls.get_ref();
    if conn.alpn_protocol() != Some(ncx_proto::ALPN) {
        if let Some(held_back) = shared.admission.unauthenticated_log.allow() {
            info!(
                held_back,
                "refused a client that does not offer ALPN ncx/1 (not ncx, or a version before 1)"
            );
        }
        return;
    }
    let exported = match crate::auth::export(conn) {
        Ok(e) => e,
        Err(e) => {
            warn!(error = %e, "exporting TLS keying material failed");
            return;
        }
    };
    let facts = PeerTls {
        exported,
        cert: shared
            .client_certs
            .as_ref()
            .map_or(crate::tls::PeerCertificate::None, |c| c.check(conn)),
        local,
    };
    run_decrypted(shared, tls, facts, peer, slot, deadline, cancel).await;
}

/// Runs a session over `io`, the inside of a TLS connection that established `facts`, until its
/// last port is released. Public to the crate so the session logic can be fed arbitrary bytes
/// without TLS (the `fuzzing` feature's `Server::serve_decrypted`).
pub(crate) async fn run_decrypted<T>(
    shared: Arc<Shared>,
    io: T,
    facts: PeerTls,
    peer: SocketAddr,
    slot: HandshakeSlot,
    deadline: Instant,
    cancel: CancellationToken,
) where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (inbound_tx, mut inbound) = mpsc::channel(INBOUND_QUEUE);
    // Before the client is admitted it may open the control stream and nothing else: any other
    // stream is reset at once, so an unauthenticated peer cannot park data in streams that nobody
    // reads (yamux keeps every frame of a stream until it is read).
    let gate = Arc::new(InboundGate::default());
    let on_inbound = Box::new({
        let gate = gate.clone();
        move |stream: yamux::Stream, _: &Arc<mux::SessionState>| {
            if !gate.lets_in() {
                debug!("reset a stream the client opened before it was admitted");
                return;
            }
            if inbound_tx.try_send(stream).is_err() {
                debug!("dropped a stream the client opened beyond the control stream");
            }
        }
    });
    // The driver has its own token, cancelled only after the control loop has said goodbye and the
    // visitors are done, so a shutdown reaches the client as a reason before the connection closes.
    let driver_cancel = CancellationToken::new();
    let (handle, driver) = mux::start(io, yamux::Mode::Server, on_inbound, driver_cancel.clone());
    let driver = tokio::spawn(driver.in_current_span());
    let ctx = SessionCtx::start(shared.clone(), handle, peer, facts.local);

    let mut identity = None;
    let outcome = match admit(&ctx, &mut inbound, &gate, &facts, slot, deadline, &cancel).await {
        Ok(admitted) => {
            identity = Some((admitted.identity.clone(), admitted.instance.clone()));
            info!("client authenticated");
            Control::new(ctx.clone(), admitted, inbound, cancel)
                .run()
                .await
        }
        Err(outcome) => outcome,
    };
    match &outcome {
        Outcome::Refused => {
            // Keep the connection up so the refusal is delivered; the client closes once it has
            // read it.
            let _ = tokio::time::timeout(REFUSAL_LINGER, ctx.mux.state().ended()).await;
        }
        // A connection that never authenticated gets no line of its own: a flood of them would
        // be a flood of lines.
        Outcome::Abort(reason) if identity.is_none() => {
            if let Some(held_back) = shared.admission.unauthenticated_log.allow() {
                info!(%reason, held_back, "session ended before authentication");
            }
        }
        Outcome::Abort(reason) => info!(%reason, "session ended"),
        Outcome::Drain(reason) => info!(%reason, "session ended after its visitors finished"),
    }
    // Ports first, so a takeover can proceed, then visitors (any still running are reset), then the
    // connection itself.
    ctx.stop_services().await;
    ctx.visitors.stop().await;
    if let Some(identity) = identity {
        shared.registry.remove_session(&identity, ctx.id);
    }
    driver_cancel.cancel();
    match driver.await {
        Ok(SessionEnd::Failed(e)) => debug!(error = %e, "connection ended with an error"),
        Ok(SessionEnd::ProtocolViolation(code)) => {
            debug!(
                code,
                "the client broke the multiplexing protocol; connection closed"
            )
        }
        Ok(_) => {}
        Err(e) => warn!(error = %e, "the session driver task failed"),
    }
}

/// Which streams the client may open: the control stream first, and others only once it is
/// admitted.
#[derive(Default)]
struct InboundGate {
    control_taken: AtomicBool,
    admitted: AtomicBool,
}

impl InboundGate {
    /// Whether a stream the client just opened may be taken.
    fn lets_in(&self) -> bool {
        self.admitted.load(Ordering::SeqCst) || !self.control_taken.swap(true, Ordering::SeqCst)
    }

    /// The client is admitted: its visit substreams are taken from now on.
    fn admit(&self) {
        self.admitted.store(true, Ordering::SeqCst);
    }
}

/// Reads the hello on the control stream before `deadline` and lets admission judge it; answers
/// with a welcome, or with the refusal.
async fn admit(
    ctx: &SessionCtx,
    inbound: &mut mpsc::Receiver<yamux::Stream>,
    gate: &InboundGate,
    facts: &PeerTls,
    slot: HandshakeSlot,
    deadline: Instant,
    cancel: &CancellationToken,
) -> Result<Admitted, Outcome> {
    let shared = &ctx.shared;
    let mut reader = MessageReader::new();
    let hello = async {
        let stream = inbound
            .recv()
            .await
            .ok_or("the connection closed before the hello")?;
        let mut ctrl = stream.compat();
        match reader.read(&mut ctrl).await {
            Ok(msg) => Ok((ctrl, msg)),
            Err(_) => Err("the client sent no valid hello"),
        }
    };
    let (mut ctrl, msg) = tokio::select! {
        _ = cancel.cancelled() => return Err(Outcome::Abort("the server is shutting down".into())),
        _ = slot.evicted() => return Err(Outcome::Abort("handshake dropped to make room for a newer connection".into())),
        r = tokio::time::timeout_at(deadline, hello) => match r {
            Ok(Ok(r)) => r,
            Ok(Err(reason)) => return Err(Outcome::Abort(reason.into())),
            Err(_) => return Err(Outcome::Abort("the client did not say hello in time".into())),
        },
    };
    // The session speaks the lower of the two versions (admission refuses one out of range).
    let (version, instance) = match &msg {
        Message::Hello {
            version, instance, ..
        } => ((*version).min(PROTOCOL_VERSION), instance.clone()),
        _ => (PROTOCOL_VERSION, None),
    };
    let admission = &shared.admission;
    let identity = match admission.authenticate(&shared.identities(), facts, ctx.peer, msg) {
        Ok(identity) => identity,
        Err(refusal) => {
            shared.metrics.auth_failure(refusal.code);
            if let Some(held_back) = admission.refusal_log.allow() {
                warn!(code = %refusal.code, reason = %refusal.message, held_back, "client refused");
            }
            refuse(&mut ctrl, &refusal).await;
            return Err(Outcome::Refused);
        }
    };
    let who = match &instance {
        Some(instance) => format!("{identity}/{instance}"),
        None => identity.to_string(),
    };
    tracing::Span::current().record("client", who.as_str());
    let _ = ctx.status.identity.set(identity.clone());
    let _ = ctx.status.instance.set(instance.clone());
    let session_slot = match admission.session_slot(&identity) {
        Ok(s) => s,
        Err(refusal) => {
            shared.metrics.auth_failure(refusal.code);
            warn!(reason = %refusal.message, "client refused");
            refuse(&mut ctrl, &refusal).await;
            return Err(Outcome::Refused);
        }
    };
    // Open before the welcome leaves: a client may open a visit the moment it reads it.
    gate.admit();
    let welcome = Message::Welcome { version };
    if let Err(e) = write_message(&mut ctrl, &welcome).await {
        return Err(Outcome::Abort(format!("sending welcome: {e}")));
    }
    drop(slot);
    Ok(Admitted {
        ctrl,
        reader,
        identity,
        instance,
        slot: session_slot,
    })
}
