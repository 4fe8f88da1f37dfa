//! One visitor substream the server opened (inbound): read the header, connect to the local
//! service within its deadline, answer with a status, splice.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::sync::Arc;
use std::time::Duration;

use ncx_proto::{ErrorCode, Message, Name};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::ServiceSpec;
use crate::framed::{write_message, MessageReader};
use crate::mux::SessionState;
use crate::refusal::Refusal;
use crate::splice::{splice, SpliceEnd, Substream};
use crate::timeouts::FIRST_MESSAGE;

/// A service as this session serves its visitors: where they go, and when they must end
/// because the service was withdrawn by a reload.
pub(super) struct LocalService {
    pub spec: ServiceSpec,
    /// Set to a deadline when the service is withdrawn: its visitors are reset then. Shared by
    /// the entries a reload puts in place of this one without withdrawing the service (a new
    /// local address), so a later withdraw reaches visitors of every one of them.
    withdrawn: Arc<watch::Sender<Option<Instant>>>,
}

/// The services of one session by name, as the visitors it accepts see them (replaced whole by
/// a reload).
pub(super) type LocalServices = Arc<HashMap<Name, Arc<LocalService>>>;

impl LocalService {
    pub fn new(spec: ServiceSpec) -> Self {
        LocalService {
            spec,
            withdrawn: Arc::new(watch::channel(None).0),
        }
    }

    /// The same service with another spec; visitors of both end with a later withdraw.
    pub fn respecified(&self, spec: ServiceSpec) -> Self {
        LocalService {
            spec,
            withdrawn: self.withdrawn.clone(),
        }
    }

    /// The service is withdrawn: its visitors are reset at `deadline`.
    pub fn withdraw_at(&self, deadline: Instant) {
        self.withdrawn.send_if_modified(|d| {
            let first = d.is_none();
            if first {
                *d = Some(deadline);
            }
            first
        });
    }

    /// Completes at the deadline of a withdraw; pending while there is none.
    fn withdrawn(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.withdrawn.subscribe();
        async move {
            let deadline = loop {
                let now = *rx.borrow_and_update();
                if let Some(d) = now {
                    break d;
                }
                if rx.changed().await.is_err() {
                    // The sender is kept by every entry of the service; gone, no withdraw comes.
                    let last = *rx.borrow();
                    match last {
                        Some(d) => break d,
                        None => std::future::pending::<()>().await,
                    }
                }
            };
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// Serves one substream the server opened for a visitor of one of `services`; `local_timeout`
/// bounds the connect to the local service, `cancel` resets the visitor, and the permit holds the
/// visitor's place under `max_visitors` until it ends.
pub(super) async fn serve_visitor(
    stream: yamux::Stream,
    state: Arc<SessionState>,
    services: LocalServices,
    local_timeout: Duration,
    cancel: CancellationToken,
    _permit: tokio::sync::OwnedSemaphorePermit,
) {
    let mut sub = Substream::new(stream, state);
    let mut reader = MessageReader::new();
    let header = tokio::select! {
        _ = cancel.cancelled() => return,
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
            return;
        }
        Ok(Err(e)) => {
            debug!(error = %e, "reading a visitor header failed");
            return;
        }
        Err(_) => {
            warn!("the server sent no visitor header within {FIRST_MESSAGE:?}");
            return;
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
        return;
    };
    drop(services);
    let spec = &local.spec;
    let connect = tokio::select! {
        _ = cancel.cancelled() => return,
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
            return;
        }
        Err(_) => {
            refuse(
                &mut sub,
                ErrorCode::LocalTimeout,
                format!("{} did not accept within {local_timeout:?}", spec.local),
            )
            .await;
            return;
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
            return;
        }
    }
    if let Err(e) = write_message(&mut sub, &Message::VisitorStatus { refusal: None }).await {
        debug!(error = %e, "could not confirm the visitor to the server");
        crate::splice::abort(tcp);
        return;
    }
    debug!(local = %spec.local, "visitor connected");
    let withdrawn = local.withdrawn();
    let mut by_withdraw = false;
    let stop = async {
        tokio::select! {
            _ = cancel.cancelled() => {}
            _ = withdrawn => by_withdraw = true,
        }
    };
    let spliced = splice(tcp, sub, stop).await;
    match spliced.end {
        SpliceEnd::Cancelled if by_withdraw => {
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
