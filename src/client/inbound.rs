//! One visitor substream the server opened (inbound): read the header, connect to the local
//! service within its deadline, answer with a status, splice.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::sync::Arc;
use std::time::Duration;

use ncx_proto::{ErrorCode, Message, Name};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::ServiceSpec;
use crate::framed::{write_message, MessageReader};
use crate::mux::SessionState;
use crate::refusal::Refusal;
use crate::splice::{splice, SpliceEnd, Substream};
use crate::tasks::TaskGroup;
use crate::timeouts::FIRST_MESSAGE;

/// A service as this session serves its visitors: where they go, and the token that resets them
/// when the service was withdrawn by a reload.
pub(super) struct LocalService {
    pub spec: ServiceSpec,
    /// A child of the session's visitor token, cancelled at the drain deadline of a withdraw;
    /// each visitor of the service waits on it (one small future, where a watch and a timer of
    /// its own cost an idle visitor a few hundred bytes more). Shared by the entries a reload
    /// puts in place of this one without withdrawing the service (a new local address), so a
    /// later withdraw reaches visitors of every one of them.
    stop: CancellationToken,
}

/// The services of one session by name, as the visitors it accepts see them (replaced whole by
/// a reload).
pub(super) type LocalServices = Arc<HashMap<Name, Arc<LocalService>>>;

impl LocalService {
    /// The service `spec`, whose visitors are those of the session's `visitors` group.
    pub fn new(spec: ServiceSpec, visitors: &TaskGroup) -> Self {
        LocalService {
            spec,
            stop: visitors.token().child_token(),
        }
    }

    /// The same service with another spec; visitors of both end with a later withdraw.
    pub fn respecified(&self, spec: ServiceSpec) -> Self {
        LocalService {
            spec,
            stop: self.stop.clone(),
        }
    }

    /// The service is withdrawn: its visitors are reset at `deadline`, by a timer in the
    /// session's `visitors` group (which ends with the session, or at the deadline).
    pub fn withdraw_at(&self, deadline: Instant, visitors: &TaskGroup) {
        let stop = self.stop.clone();
        visitors.spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => stop.cancel(),
                _ = stop.cancelled() => {}
            }
        });
    }
}

/// Serves one substream the server opened for a visitor of one of `services`; `local_timeout`
/// bounds the connect to the local service, `cancel` resets the visitor, and the permit holds the
/// visitor's place under `max_visitors` until it ends.
///
/// A plain function returning a block, and the connecting boxed: this future is held for as long
/// as the visitor stays, and sized by its largest state. An `async fn` would keep a copy of every
/// argument beside the one its body moves, and the header read and the local connect, inline,
/// would make every idle visitor pay for them (2.5 KiB in all, where this is about 1 KiB).
// Not an `async fn` on purpose (see above); clippy would make it one.
#[allow(clippy::manual_async_fn)]
pub(super) fn serve_visitor(
    stream: yamux::Stream,
    state: Arc<SessionState>,
    services: LocalServices,
    local_timeout: Duration,
    cancel: CancellationToken,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    async move {
        let _permit = &permit;
        let connected = Box::pin(connect_local(
            stream,
            state,
            services,
            local_timeout,
            &cancel,
        ))
        .await;
        match connected {
            Some(Local::Tcp(tcp, sub, local)) => splice_visitor(tcp, sub, &local, &cancel).await,
            Some(Local::Udp(socket, prefix, sub, local)) => {
                // Boxed: a flow is rarer than a TCP visitor, which should not pay for its size.
                Box::pin(super::udp::carry(socket, prefix, sub, &local.stop)).await
            }
            None => {}
        }
    }
}

/// A visitor connected to its local service: a TCP connection, or a UDP flow's socket.
enum Local {
    Tcp(TcpStream, Substream, Arc<LocalService>),
    /// The socket, the PROXY v2 header each datagram to the service starts with (if it asked for
    /// one), the substream.
    Udp(
        tokio::net::UdpSocket,
        Option<Vec<u8>>,
        Substream,
        Arc<LocalService>,
    ),
}

/// Reads the visitor header, connects to the local service and confirms the visitor; `None`
/// when the visitor was refused (the server was told why) or the session is going.
async fn connect_local(
    stream: yamux::Stream,
    state: Arc<SessionState>,
    services: LocalServices,
    local_timeout: Duration,
    cancel: &CancellationToken,
) -> Option<Local> {
    let mut sub = Substream::new(stream, state);
    let mut reader = MessageReader::new();
    let header = tokio::select! {
        _ = cancel.cancelled() => return None,
        r = tokio::time::timeout(FIRST_MESSAGE, reader.read(&mut sub)) => r,
    };
    let (service, visitor, public) = match header {
        Ok(Ok(Message::VisitorHeader {
            service,
            visitor,
            public,
        })) => (service, visitor, public),
        Ok(Ok(other)) => {
            warn!(
                "the server opened a substream with message type 0x{:02x} instead of a visitor header",
                other.type_byte()
            );
            return None;
        }
        Ok(Err(e)) => {
            debug!(error = %e, "reading a visitor header failed");
            return None;
        }
        Err(_) => {
            warn!("the server sent no visitor header within {FIRST_MESSAGE:?}");
            return None;
        }
    };
    let span = tracing::Span::current();
    span.record("service", service.as_str());
    span.record("peer", tracing::field::display(visitor));

    let Some(local) = services.get(&service).cloned() else {
        refuse(
            &mut sub,
            ErrorCode::UnknownService,
            format!("no service named {service}"),
        )
        .await;
        return None;
    };
    drop(services);
    let spec = &local.spec;
    if spec.udp {
        let socket = match super::udp::local_socket(&spec.local).await {
            Ok(s) => s,
            Err(e) => {
                refuse(
                    &mut sub,
                    ErrorCode::LocalError,
                    format!("a UDP socket for {}: {e}", spec.local),
                )
                .await;
                return None;
            }
        };
        if let Err(e) = write_message(&mut sub, &Message::VisitorStatus { refusal: None }).await {
            debug!(error = %e, "could not confirm the UDP flow to the server");
            return None;
        }
        debug!(local = %spec.local, "UDP flow connected");
        // With the PROXY protocol, each datagram to the service carries the visitor's address.
        let prefix = spec
            .proxy_protocol
            .map(|_| ncx_proto::proxy_header_udp(visitor, public));
        return Some(Local::Udp(socket, prefix, sub, local));
    }
    let connect = tokio::select! {
        _ = cancel.cancelled() => return None,
        r = tokio::time::timeout(local_timeout, TcpStream::connect(&spec.local)) => r,
    };
    let mut tcp = match connect {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) => {
            let code = if e.kind() == ErrorKind::ConnectionRefused {
                ErrorCode::LocalRefused
            } else {
                ErrorCode::LocalError
            };
            refuse(&mut sub, code, format!("connecting to {}: {e}", spec.local)).await;
            return None;
        }
        Err(_) => {
            refuse(
                &mut sub,
                ErrorCode::LocalTimeout,
                format!("{} did not accept within {local_timeout:?}", spec.local),
            )
            .await;
            return None;
        }
    };
    crate::net::tune_visitor(&tcp);
    if let Some(version) = spec.proxy_protocol {
        // The service learns the visitor's real address before any of the visitor's bytes.
        let header = ncx_proto::proxy_header(version, visitor, public);
        if let Err(e) = tcp.write_all(&header).await {
            refuse(
                &mut sub,
                ErrorCode::LocalError,
                format!("sending the PROXY header to {}: {e}", spec.local),
            )
            .await;
            crate::splice::abort(tcp);
            return None;
        }
    }
    if let Err(e) = write_message(&mut sub, &Message::VisitorStatus { refusal: None }).await {
        debug!(error = %e, "could not confirm the visitor to the server");
        crate::splice::abort(tcp);
        return None;
    }
    Some(Local::Tcp(tcp, sub, local))
}

/// Splices a connected visitor until it ends, the session goes (`cancel`) or its service is
/// withdrawn, and logs how it ended.
async fn splice_visitor(
    tcp: TcpStream,
    sub: Substream,
    local: &LocalService,
    cancel: &CancellationToken,
) {
    let spec = &local.spec;
    debug!(local = %spec.local, "visitor connected");
    // The service's token is a child of `cancel`: it ends the visitor on either.
    let stop = &local.stop;
    let spliced = splice(tcp, sub, stop.cancelled()).await;
    match spliced.end {
        SpliceEnd::Cancelled if !cancel.is_cancelled() => {
            info!("visitor reset: its service was withdrawn by a reload and the drain deadline passed")
        }
        SpliceEnd::Finished => debug!(
            bytes_to_service = spliced.from_b,
            bytes_from_service = spliced.from_a,
            "visitor finished"
        ),
        SpliceEnd::Reset(e) => info!(reason = %e, "visitor reset"),
        SpliceEnd::Cancelled => debug!("visitor reset: session ended"),
    }
}

/// Tells the server why the visitor cannot be served, logs it, and closes the substream cleanly.
async fn refuse(sub: &mut Substream, code: ErrorCode, message: String) {
    let refusal = Refusal::new(code, message);
    warn!(code = %refusal.code, reason = %refusal.message, "visitor refused");
    if write_message(sub, &refusal.to_visitor_status())
        .await
        .is_ok()
    {
        let _ = sub.shutdown().await;
    }
}
