//! Private visits: each visit substream of a visiting session (`ncx visit`) is bridged to a new
//! substream on the session of the client that offers the service.
//!
//! Nothing of a refused visit reaches the owning client: the service's existence, the visitor
//! list, the block list of the failed-authentication guard and the limits are all checked before a
//! substream to the client is opened.

use std::sync::Arc;

use ncx_proto::{ErrorCode, Message, Name};
use tokio::io::AsyncWriteExt;
use tokio::sync::OwnedSemaphorePermit;
use tracing::{debug, info, warn};

use super::auth_guard::Who;
use super::context::SessionCtx;
use super::grouped::{member_places, MAX_TRIES};
use super::groups::{Group, GroupKind};
use super::opener::{end_text, open_to_client, Early};
use super::public::Places;
use crate::audit::{AuditRecord, VisitorEnd};
use crate::framed::{write_message, MessageReader};
use crate::refusal::Refusal;
use crate::splice::{splice_metered, Substream};
use crate::timeouts::FIRST_MESSAGE;

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
    let mut sub = Substream::new(stream, ctx.mux.state().clone());
    let mut reader = MessageReader::new();
    let request = tokio::select! {
        _ = ctx.visitors.cancelled() => return,
        r = tokio::time::timeout(FIRST_MESSAGE, reader.read(&mut sub)) => r,
    };
    let (owner, service, udp) = match request {
        Ok(Ok(Message::Visit { owner, service })) => (owner, service, false),
        Ok(Ok(Message::VisitUdp { owner, service })) => (owner, service, true),
        Ok(Ok(other)) => {
            if let Some(held_back) = ctx.limits.answers_log.allow() {
                warn!(
                    held_back,
                    "a substream from the client began with message type 0x{:02x} instead of a visit",
                    other.type_byte()
                );
            }
            return;
        }
        Ok(Err(e)) => {
            debug!(error = %e, "reading a visit request failed");
            return;
        }
        Err(_) => {
            debug!("no visit request within {FIRST_MESSAGE:?}");
            return;
        }
    };
    tracing::Span::current().record("service", tracing::field::display(&service));
    let record = AuditRecord {
        service: &service,
        owner: Some(&owner),
        visitor: ctx.peer,
        identity: Some(&identity),
        started,
    };
    // Counted under the identity that offers the service, like its public visitors.
    let mut metrics = ctx.shared.metrics.visitor(owner.as_str(), service.as_str());
    // The visiting session's bytes: what its identity moved.
    metrics.meter.a_to_b.push(ctx.status.bytes_in.clone());
    metrics.meter.b_to_a.push(ctx.status.bytes_out.clone());
    let end = bridge(
        &ctx,
        sub,
        &identity,
        (&owner, &service, udp),
        &metrics.meter,
    )
    .await;
    record.emit(&end);
    metrics.ended(&end.how);
}

/// Checks the visit and joins `sub` to a substream on the owner's session.
async fn bridge(
    ctx: &Arc<SessionCtx>,
    sub: Substream,
    identity: &Name,
    (owner, service, udp): (&Name, &Name, bool),
    meter: &crate::splice::Meter,
) -> VisitorEnd {
    if let Some(group) = ctx.shared.groups.get(owner) {
        if group.kind == GroupKind::Private {
            if udp {
                let refusal = Refusal::new(
                    ErrorCode::UnknownService,
                    format!("group {owner} offers TCP services only"),
                );
                return refuse(sub, refusal).await;
            }
            return bridge_group(ctx, sub, identity, &group, service, meter).await;
        }
    }
    let (owner, _permits) = match check(ctx, identity, owner, (service, udp)) {
        Ok(ok) => ok,
        Err(refusal) => return refuse(sub, refusal).await,
    };
    // The owner's drain waits for this visitor like for its public ones.
    let _owner_visit = owner.visitors.member();
    let opened = tokio::select! {
        _ = ctx.visitors.cancelled() => return VisitorEnd::before_data("reset: the visiting session ended"),
        r = open_to_client(&owner, service, ctx.peer, ctx.local, Early::Nothing) => r,
    };
    let theirs = match opened {
        Ok((s, _)) => s,
        Err(failure) => {
            refuse(sub, failure.refusal).await;
            return VisitorEnd::before_data(failure.end);
        }
    };
    joined(ctx, sub, &owner, theirs, meter).await
}

/// A visit of a private group: the members that list the visiting identity are tried in turn
/// until one's client connects to its service.
async fn bridge_group(
    ctx: &Arc<SessionCtx>,
    sub: Substream,
    identity: &Name,
    group: &Group<SessionCtx>,
    service: &Name,
    meter: &crate::splice::Meter,
) -> VisitorEnd {
    let shared = &ctx.shared;
    let peer = ctx.peer;
    let who = Who::Identity(identity.clone());
    if let Some(refusal) = shared.admission.blocked(peer.ip(), &who) {
        return refuse(sub, refusal).await;
    }
    let members = group.members();
    if members.first().map(|m| &m.service) != Some(service) {
        let refusal = Refusal::new(
            ErrorCode::UnknownService,
            format!(
                "group {} offers no private service named {service}",
                group.name
            ),
        );
        return refuse(sub, refusal).await;
    }
    if !members.iter().any(|m| m.visitors.contains(identity)) {
        if let Some(held_back) = shared.admission.refusal_log.allow() {
            warn!(group = %group.name, %service, %identity, %peer, held_back, "visit refused: the identity is on no member's visitor list");
        }
        shared
            .admission
            .record_failure(peer.ip(), who, "refused visits");
        let refusal = Refusal::new(
            ErrorCode::NotAllowed,
            format!("identity {identity} may not visit {}/{service}", group.name),
        );
        return refuse(sub, refusal).await;
    }
    let Ok(_place) = group.permits.clone().try_acquire_owned() else {
        let refusal = Refusal::new(
            ErrorCode::LimitReached,
            format!(
                "group {} has reached its limit of {} visitors",
                group.name, shared.settings.max_visitors_per_service
            ),
        );
        return refuse(sub, refusal).await;
    };
    let mut tried = Vec::new();
    let mut last = None;
    while tried.len() < MAX_TRIES {
        let Some((member, owner)) = group.pick(|m| m.visitors.contains(identity), &tried) else {
            break;
        };
        tried.push(member.session);
        if owner.services_stopped() {
            continue;
        }
        let Some(_places) = member_places(&owner, &member) else {
            continue;
        };
        let _owner_visit = owner.visitors.member();
        let opened = tokio::select! {
            _ = ctx.visitors.cancelled() => return VisitorEnd::before_data("reset: the visiting session ended"),
            r = open_to_client(&owner, &member.service, ctx.peer, ctx.local, Early::Nothing) => r,
        };
        match opened {
            Ok((theirs, _)) => {
                debug!(member = %member.who(), "visit taken by a member of the group");
                member
                    .active
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let end = joined(ctx, sub, &owner, theirs, meter).await;
                member
                    .active
                    .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                return end;
            }
            Err(failure) => {
                info!(member = %member.who(), reason = %failure.refusal, "a member could not take the visit; trying another");
                last = Some(failure.refusal);
            }
        }
    }
    let refusal = last.unwrap_or_else(|| {
        Refusal::new(
            ErrorCode::UnknownService,
            format!("no member of group {} can take the visit now", group.name),
        )
    });
    refuse(sub, refusal).await
}

/// Tells the visiting peer it is connected and joins its substream to the owner's.
async fn joined(
    ctx: &Arc<SessionCtx>,
    mut sub: Substream,
    owner: &Arc<SessionCtx>,
    theirs: Substream,
    meter: &crate::splice::Meter,
) -> VisitorEnd {
    if let Err(e) = write_message(&mut sub, &Message::VisitorStatus { refusal: None }).await {
        return VisitorEnd::before_data(format!("reset: answering the visitor: {e}"));
    }
    debug!("visitor connected");
    let cancel = async {
        tokio::select! {
            _ = ctx.visitors.cancelled() => {}
            _ = owner.visitors.cancelled() => {}
        }
    };
    let spliced = splice_metered(sub, theirs, cancel, meter.clone()).await;
    VisitorEnd {
        bytes_in: spliced.from_a,
        bytes_out: spliced.from_b,
        how: end_text(&spliced.end),
    }
}

/// The owner's session and the visitor's places in its limits (the owner identity's, the
/// session's and the service's).
type Checked = (Arc<SessionCtx>, Places);

/// Everything that may refuse a visit before the owner hears of it.
fn check(
    ctx: &SessionCtx,
    identity: &Name,
    owner_name: &Name,
    (service, udp): (&Name, bool),
) -> Result<Checked, Refusal> {
    let shared = &ctx.shared;
    let peer = ctx.peer;
    let who = Who::Identity(identity.clone());
    if let Some(refusal) = shared.admission.blocked(peer.ip(), &who) {
        return Err(refusal);
    }
    let offline = || {
        Refusal::new(
            ErrorCode::UnknownService,
            format!("{owner_name} offers no private service named {service} now"),
        )
    };
    let Some(target) = shared.registry.private(owner_name, service) else {
        return Err(offline());
    };
    if !target.visitors.contains(identity) {
        if let Some(held_back) = shared.admission.refusal_log.allow() {
            warn!(%owner_name, %service, %identity, %peer, held_back, "visit refused: the identity is not on the service's visitor list");
        }
        shared
            .admission
            .record_failure(peer.ip(), who, "refused visits");
        return Err(Refusal::new(
            ErrorCode::NotAllowed,
            format!("identity {identity} may not visit {owner_name}/{service}"),
        ));
    }
    if target.udp != udp {
        let (is, say) = if target.udp {
            ("a UDP", "with protocol = \"udp\"")
        } else {
            ("a TCP", "without protocol = \"udp\"")
        };
        return Err(Refusal::new(
            ErrorCode::UnknownService,
            format!("{owner_name}/{service} is {is} service: visit it {say}"),
        ));
    }
    let Some(owner) = target.ctx.upgrade() else {
        return Err(offline());
    };
    if !target.healthy.load(std::sync::atomic::Ordering::Relaxed) {
        return Err(Refusal::new(
            ErrorCode::LocalError,
            format!("the client of {owner_name} reports {service} unhealthy"),
        ));
    }
    if owner.services_stopped() {
        return Err(offline());
    }
    // The owner has shares as long as it has a session (a removed identity keeps them).
    let Some(owner_share) = shared.admission.identity_visitors(owner_name) else {
        return Err(offline());
    };
    let own = owner_share.try_acquire_owned();
    let session = owner.limits.visitors.clone().try_acquire_owned();
    let service_permit = target.permits.clone().try_acquire_owned();
    match (own, session, service_permit) {
        (Ok(i), Ok(a), Ok(b)) => Ok((owner, (i, a, b))),
        (Err(_), _, _) => Err(Refusal::new(
            ErrorCode::LimitReached,
            format!(
                "{owner_name} has reached its limit of {} visitors",
                shared.settings.max_visitors_per_identity
            ),
        )),
        (_, Err(_), _) => Err(Refusal::new(
            ErrorCode::LimitReached,
            format!(
                "the session offering {service} has reached its limit of {} visitors",
                shared.settings.max_visitors_per_session
            ),
        )),
        (_, _, Err(_)) => Err(Refusal::new(
            ErrorCode::LimitReached,
            format!(
                "service {service} has reached its limit of {} visitors",
                shared.settings.max_visitors_per_service
            ),
        )),
    }
}

/// Tells the visiting peer why, closes its substream, and returns the audit fields.
async fn refuse(mut sub: Substream, refusal: Refusal) -> VisitorEnd {
    debug!(code = %refusal.code, reason = %refusal.message, "visit refused");
    if write_message(&mut sub, &refusal.to_visitor_status())
        .await
        .is_ok()
    {
        let _ = sub.shutdown().await;
    }
    VisitorEnd::before_data(format!("refused: {refusal}"))
}
