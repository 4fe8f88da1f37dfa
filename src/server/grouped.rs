//! Services in groups, as sessions join them and visitors reach them: a session's registration
//! into a group (the group's port is bound by the first member and stays while any member lives),
//! the group's accept loop, and each visitor's way to a member. A member that cannot take a visitor
//! (its session died, its client could not connect, it is at a limit) is passed over for the next
//! one, with the visitor's first bytes kept and forwarded again, so a member going away costs no
//! visitor that another member could serve.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use ncx_proto::{AccessRules, ErrorCode, Name};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::OwnedSemaphorePermit;
use tracing::{debug, info, warn, Instrument};

use super::context::{SessionCtx, Shared};
use super::groups::{Group, GroupKind, JoinError, Member, NewGroup};
use super::opener::{end_text, open_to_client, Early};
use super::ports::bind;
use crate::accept::accept_until;
use crate::audit::{AuditRecord, VisitorEnd};
use crate::config::GroupPolicy;
use crate::refusal::Refusal;
use crate::splice::{abort, splice_metered};

/// Members a visitor is offered to, at most, before it is refused.
pub(super) const MAX_TRIES: usize = 8;

/// What a session asks for when it registers a service into a group.
pub(super) struct Joining {
    pub group: Name,
    pub service: Name,
    /// `Public(port)` (0: the group's port, whatever it is) or `Private`.
    pub kind: GroupKind,
    pub access: AccessRules,
    pub visitors: Vec<Name>,
}

/// Joins `ctx`'s session (of `identity` and `instance`) to a group. Returns the group's public
/// port (0 for a private group) and the member's health flag.
pub(super) fn join(
    ctx: &Arc<SessionCtx>,
    identity: &Name,
    instance: &Option<Name>,
    joining: Joining,
) -> Result<(u16, Arc<AtomicBool>), Refusal> {
    let shared = &ctx.shared;
    let Joining {
        group,
        service,
        kind,
        access,
        visitors,
    } = joining;
    let Some(policy) = shared.settings.groups.iter().find(|g| g.name == group) else {
        return Err(Refusal::new(
            ErrorCode::NotAllowed,
            format!("the server has no group named {group}"),
        ));
    };
    if !policy.admits(identity) {
        return Err(Refusal::new(
            ErrorCode::NotAllowed,
            format!("identity {identity} may not join group {group}"),
        ));
    }
    if kind == GroupKind::Private && visitors.is_empty() {
        return Err(Refusal::new(
            ErrorCode::NotAllowed,
            format!("private service {service} lists no visitor identities"),
        ));
    }
    let healthy = Arc::new(AtomicBool::new(true));
    let member = Member {
        session: ctx.id,
        ctx: Arc::downgrade(ctx),
        identity: identity.clone(),
        instance: instance.clone(),
        service: service.clone(),
        access,
        visitors: visitors.into(),
        healthy: healthy.clone(),
        active: Arc::new(AtomicUsize::new(0)),
    };
    let mut listener = None;
    let joined = shared.groups.join(&group, Some(kind), member, || {
        let (kind, bound) = match kind {
            GroupKind::Private => (GroupKind::Private, None),
            GroupKind::Public(port) => {
                let (l, port) = bind_group_port(policy, port)?;
                (GroupKind::Public(port), Some(l))
            }
        };
        listener = bound;
        Ok::<_, Refusal>(NewGroup {
            kind,
            balance: policy.balance,
            max_visitors: shared.settings.max_visitors_per_service,
            stop: shared.group_tasks.token().child_token(),
        })
    })?;
    let (group, new) = joined.map_err(|e| match e {
        JoinError::OtherService(s) => Refusal::new(
            ErrorCode::NotAllowed,
            format!("group {group} serves service {s}; a member must register that name"),
        ),
        JoinError::OtherKind => Refusal::new(
            ErrorCode::NotAllowed,
            format!("group {group}'s members offer it as the first one did, public or private"),
        ),
        JoinError::OtherPort(p) => Refusal::new(
            ErrorCode::PortInUse,
            format!("group {group} serves port {p}; ask for {p} or for any port (0)"),
        ),
        JoinError::AlreadyMember => Refusal::new(
            ErrorCode::DuplicateService,
            format!("this session is a member of group {group} already"),
        ),
    })?;
    ctx.joined(group.name.clone());
    let port = match group.kind {
        GroupKind::Public(port) => port,
        GroupKind::Private => 0,
    };
    if let Some(listener) = listener.filter(|_| new) {
        info!(group = %group.name, %service, port, bind = %policy.bind, "group's port open");
        let span = tracing::info_span!("group", group = %group.name, port);
        shared
            .group_tasks
            .spawn(accept_group_visitors(shared.clone(), group.clone(), listener).instrument(span));
    }
    info!(group = %group.name, %service, members = group.members().len(), "joined the group");
    Ok((port, healthy))
}

/// Binds the group's port: `port`, or with 0 the first free one of its ranges.
fn bind_group_port(policy: &GroupPolicy, port: u16) -> Result<(TcpListener, u16), Refusal> {
    if policy.ports.is_empty() {
        return Err(Refusal::new(
            ErrorCode::PortNotAllowed,
            format!(
                "group {} has no ports on the server: it can be offered privately only",
                policy.name
            ),
        ));
    }
    if port != 0 && !policy.allows(port) {
        return Err(Refusal::new(
            ErrorCode::PortNotAllowed,
            format!(
                "port {port} is outside the ports of group {} ({})",
                policy.name,
                policy.ports_text()
            ),
        ));
    }
    let candidates: Vec<u16> = if port != 0 {
        vec![port]
    } else {
        policy
            .ports
            .iter()
            .flat_map(|r| r.0.clone())
            .take(512)
            .collect()
    };
    let mut last = None;
    for p in candidates {
        match bind(policy.bind, p) {
            Ok(l) => return Ok((l, p)),
            Err(e) => last = Some((p, e)),
        }
    }
    let (p, e) = last.expect("a group with ports has candidates");
    let code = if e.kind() == std::io::ErrorKind::AddrInUse {
        ErrorCode::PortInUse
    } else {
        ErrorCode::BindFailed
    };
    Err(Refusal::new(
        code,
        format!(
            "binding {}:{p} for group {} failed: {e}",
            policy.bind, policy.name
        ),
    ))
}

/// Accepts the visitors of a public group until its last member leaves (or the server stops).
async fn accept_group_visitors(
    shared: Arc<Shared>,
    group: Arc<Group<SessionCtx>>,
    listener: TcpListener,
) {
    let stop = group.stop.clone();
    accept_until(&listener, &stop, "a visitor", |tcp, peer| {
        // As for a session's own port: nothing of a refused visitor reaches a client.
        if !group.admits(peer.ip()) {
            if let Some(held_back) = shared.admission.refusal_log.allow() {
                warn!(%peer, held_back, "visitor refused by the access rules of every member");
            }
            abort(tcp);
            return;
        }
        let Ok(place) = group.permits.clone().try_acquire_owned() else {
            if let Some(held_back) = shared.admission.refusal_log.allow() {
                warn!(%peer, limit = shared.settings.max_visitors_per_service, held_back, "visitor refused: the group has reached its visitor limit");
            }
            abort(tcp);
            return;
        };
        let span = tracing::info_span!("visitor", %peer, service = tracing::field::Empty);
        shared.group_tasks.spawn(visitor(group.clone(), tcp, peer, place).instrument(span));
    })
    .await;
    drop(listener);
    info!("group's port released: its last member left");
}

/// One visitor of a public group: offered to members in turn until one takes it.
async fn visitor(
    group: Arc<Group<SessionCtx>>,
    mut tcp: TcpStream,
    peer: SocketAddr,
    _place: OwnedSemaphorePermit,
) {
    crate::net::tune_visitor(&tcp);
    let public = crate::net::local_or_unspecified(&tcp);
    let started = tokio::time::Instant::now();
    let mut tried = Vec::new();
    // The visitor's first bytes, forwarded to each member tried until one takes it.
    let mut kept = Vec::new();
    while tried.len() < MAX_TRIES {
        let Some((member, ctx)) = group.pick(|m| m.access.permits(peer.ip()), &tried) else {
            break;
        };
        tried.push(member.session);
        let Some(places) = member_places(&ctx, &member) else {
            debug!(member = %member.who(), "member at a visitor limit; trying another");
            continue;
        };
        // The member's drain waits for this visitor like for its own.
        let _in_member = ctx.visitors.member();
        let opened = tokio::select! {
            _ = ctx.visitors.cancelled() => continue,
            r = Box::pin(open_to_client(&ctx, &member.service, peer, public, Early::Kept(&mut tcp, &mut kept))) => r,
        };
        let (sub, early) = match opened {
            Ok(o) => o,
            Err(failure) => {
                info!(member = %member.who(), reason = %failure.refusal, "a member could not take the visitor; trying another");
                continue;
            }
        };
        drop(kept);
        tracing::Span::current().record("service", member.service.as_str());
        debug!(member = %member.who(), "visitor connected");
        let mut metrics = ctx
            .shared
            .metrics
            .visitor(member.identity.as_str(), member.service.as_str());
        metrics.meter.a_to_b.push(ctx.status.bytes_in.clone());
        metrics.meter.b_to_a.push(ctx.status.bytes_out.clone());
        metrics.meter.a_to_b_before(early);
        let record = AuditRecord {
            service: &member.service,
            owner: None,
            visitor: peer,
            identity: Some(&member.identity),
            started,
        };
        member.active.fetch_add(1, Ordering::Relaxed);
        let spliced =
            splice_metered(tcp, sub, ctx.visitors.cancelled(), metrics.meter.clone()).await;
        member.active.fetch_sub(1, Ordering::Relaxed);
        drop(places);
        let end = VisitorEnd {
            bytes_in: early + spliced.from_a,
            bytes_out: spliced.from_b,
            how: end_text(&spliced.end),
        };
        record.emit(&end);
        metrics.ended(&end.how);
        return;
    }
    if let Some(held_back) = group.refusals.allow() {
        warn!(group = %group.name, tried = tried.len(), held_back, "visitor refused: no member of the group could take it");
    }
    abort(tcp);
}

/// The visitor's places under the member's identity's and session's limits (the group's own
/// limit, in place of a service's, is held from the accept on).
pub(super) fn member_places(
    ctx: &SessionCtx,
    member: &Member<SessionCtx>,
) -> Option<(OwnedSemaphorePermit, OwnedSemaphorePermit)> {
    let identity = ctx.shared.admission.identity_visitors(&member.identity)?;
    let own = identity.try_acquire_owned().ok()?;
    let session = ctx.limits.visitors.clone().try_acquire_owned().ok()?;
    Some((own, session))
}
