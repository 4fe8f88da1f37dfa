//! Private services: registering them, and bridging each visit substream of a visiting session
//! (`ncx visit`) to a new substream on the owning client's session.
//!
//! Nothing of a refused visit reaches the owning client: the service's existence, the visitor
//! list, the block list of the failed-authentication guard and the limits are all checked before a
//! substream to the client is opened.

use std::sync::Arc;
use std::time::Duration;

use ncx_proto::{ErrorCode, Message, Name, Text};
use tokio::io::AsyncWriteExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::{debug, info, warn};

use super::admission::FailureVerdict;
use super::registry::PrivateService;
use super::services::{end_text, open_to_client, Services};
use super::session::SessionCtx;
use crate::framed::{write_message, MessageReader};
use crate::splice::{splice, Substream};

/// How long a visiting peer may take to say which service it visits after opening a substream.
const VISIT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

impl Services {
    /// Handles one `RegisterPrivate`: records the service and who may visit it, or says why not.
    pub(super) fn register_private(&mut self, service: Name, visitors: Vec<Name>) -> Message {
        let refused = |code: ErrorCode, message: String| {
            warn!(%service, %code, reason = %message, "private service refused");
            Message::ServiceRefused {
                service: service.clone(),
                code,
                message: Text::new(message),
            }
        };
        if self.names.contains(&service) {
            return refused(
                ErrorCode::DuplicateService,
                format!("service {service} is already registered in this session"),
            );
        }
        if visitors.is_empty() {
            return refused(
                ErrorCode::NotAllowed,
                format!("private service {service} lists no visitor identities"),
            );
        }
        let entry = PrivateService {
            owner: self.identity.clone(),
            session: self.ctx.id,
            visitors: visitors.clone().into(),
            ctx: Arc::downgrade(&self.ctx),
            permits: Arc::new(Semaphore::new(
                self.ctx.shared.settings.max_visitors_per_service,
            )),
        };
        if self
            .ctx
            .shared
            .registry
            .claim_private(&service, entry)
            .is_err()
        {
            return refused(
                ErrorCode::PortInUse,
                format!("private service {service} is still held by an earlier session of this identity"),
            );
        }
        self.names.insert(service.clone());
        self.ctx
            .hold_private(self.identity.clone(), service.clone());
        info!(%service, ?visitors, "private service offered");
        Message::Registered {
            service,
            remote_port: 0,
        }
    }
}

/// Serves one visit substream that the session `ctx` (of `identity`) opened: reads which service
/// it wants, checks the visitor, joins it to a substream on the owner's session, and writes the
/// audit line when it ends.
pub(super) async fn visit(
    ctx: Arc<SessionCtx>,
    stream: yamux::Stream,
    identity: Name,
    _permit: OwnedSemaphorePermit,
) {
    let started = tokio::time::Instant::now();
    let mut sub = Substream::new(stream, ctx.handle.state().clone());
    let mut reader = MessageReader::new();
    let request = tokio::select! {
        _ = ctx.visitors_cancel.cancelled() => return,
        r = tokio::time::timeout(VISIT_REQUEST_TIMEOUT, reader.read(&mut sub)) => r,
    };
    let (owner, service) = match request {
        Ok(Ok(Message::Visit { owner, service })) => (owner, service),
        Ok(Ok(other)) => {
            warn!(
                "a substream from the client began with message type 0x{:02x} instead of a visit",
                other.type_byte()
            );
            return;
        }
        Ok(Err(e)) => {
            debug!(error = %e, "reading a visit request failed");
            return;
        }
        Err(_) => {
            debug!("no visit request within {VISIT_REQUEST_TIMEOUT:?}");
            return;
        }
    };
    tracing::Span::current().record("service", tracing::field::display(&service));
    let (bytes_in, bytes_out, end) = bridge(&ctx, sub, &identity, &owner, &service).await;
    info!(
        target: "ncx::audit",
        %service,
        %owner,
        visitor = %ctx.peer,
        %identity,
        bytes_in,
        bytes_out,
        duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        end = %end,
        "visitor connection"
    );
}

/// Checks the visit and joins `sub` to a substream on the owner's session. Returns the bytes from
/// and to the visitor and how it ended.
async fn bridge(
    ctx: &Arc<SessionCtx>,
    mut sub: Substream,
    identity: &Name,
    owner: &Name,
    service: &Name,
) -> (u64, u64, String) {
    let peer = ctx.peer;
    let checked = check(ctx, identity, owner, service);
    let (owner, _permits) = match checked {
        Ok(ok) => ok,
        Err((code, message)) => return refuse(sub, code, message).await,
    };
    // The owner's drain waits for this visitor like for its public ones.
    let _owner_visit = owner.visitors.token();
    let opened = tokio::select! {
        _ = ctx.visitors_cancel.cancelled() => return (0, 0, "reset: the visiting session ended".into()),
        r = open_to_client(&owner, service, peer, ctx.local, None) => r,
    };
    let theirs = match opened {
        Ok((s, _)) => s,
        Err(failure) => {
            let _ = refuse(sub, failure.code, failure.message).await;
            return (0, 0, failure.end);
        }
    };
    if let Err(e) = write_message(&mut sub, &Message::VisitorStatus { refusal: None }).await {
        return (0, 0, format!("reset: answering the visitor: {e}"));
    }
    debug!("visitor connected");
    let cancel = async {
        tokio::select! {
            _ = ctx.visitors_cancel.cancelled() => {}
            _ = owner.visitors_cancel.cancelled() => {}
        }
    };
    let spliced = splice(sub, theirs, cancel).await;
    (
        spliced.from_tcp,
        spliced.from_substream,
        end_text(&spliced.end),
    )
}

type Checked = (
    Arc<SessionCtx>,
    (OwnedSemaphorePermit, OwnedSemaphorePermit),
);

/// Everything that may refuse a visit before the owner hears of it.
fn check(
    ctx: &SessionCtx,
    identity: &Name,
    owner_name: &Name,
    service: &Name,
) -> Result<Checked, (ErrorCode, String)> {
    let shared = &ctx.shared;
    let peer = ctx.peer;
    if let Some(left) = shared.auth_guard.blocked_for(peer.ip()) {
        return Err((
            ErrorCode::LimitReached,
            format!(
                "too many failed authentications from {}; try again in {} s",
                peer.ip(),
                left.as_secs().max(1)
            ),
        ));
    }
    let offline = || {
        (
            ErrorCode::UnknownService,
            format!("{owner_name} offers no private service named {service} now"),
        )
    };
    let Some(target) = shared.registry.private(owner_name, service) else {
        return Err(offline());
    };
    if !target.visitors.contains(identity) {
        if let Some(held_back) = shared.refusal_log.allow() {
            warn!(%owner_name, %service, %identity, %peer, held_back, "visit refused: the identity is not on the service's visitor list");
        }
        if shared.auth_guard.record_failure(peer.ip()) == FailureVerdict::NowBlocked {
            warn!(
                ip = %peer.ip(),
                block = ?shared.settings.auth_block,
                "blocking an address after repeated refused visits"
            );
        }
        return Err((
            ErrorCode::NotAllowed,
            format!("identity {identity} may not visit {owner_name}/{service}"),
        ));
    }
    let Some(owner) = target.ctx.upgrade() else {
        return Err(offline());
    };
    if owner.listeners_cancel.is_cancelled() {
        return Err(offline());
    }
    let session = owner.visitor_permits.clone().try_acquire_owned();
    let service_permit = target.permits.clone().try_acquire_owned();
    match (session, service_permit) {
        (Ok(a), Ok(b)) => Ok((owner, (a, b))),
        (Err(_), _) => Err((
            ErrorCode::LimitReached,
            format!(
                "the session offering {service} has reached its limit of {} visitors",
                shared.settings.max_visitors_per_session
            ),
        )),
        (_, Err(_)) => Err((
            ErrorCode::LimitReached,
            format!(
                "service {service} has reached its limit of {} visitors",
                shared.settings.max_visitors_per_service
            ),
        )),
    }
}

/// Tells the visiting peer why, closes its substream, and returns the audit fields.
async fn refuse(mut sub: Substream, code: ErrorCode, message: String) -> (u64, u64, String) {
    debug!(%code, reason = %message, "visit refused");
    let status = Message::VisitorStatus {
        refusal: Some((code, Text::new(message.as_str()))),
    };
    if write_message(&mut sub, &status).await.is_ok() {
        let _ = sub.shutdown().await;
    }
    (0, 0, format!("refused: {message} ({code})"))
}
