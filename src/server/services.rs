//! The services one session registered: public ones (a port of the server, bound through
//! `public.rs`) and private ones (a name in the registry, reached through
//! `private.rs`). Each registration is answered with `Registered` or a refusal.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ncx_proto::{AccessRules, ErrorCode, Message, Name};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::context::SessionCtx;
use super::grouped::Joining;
use super::groups::GroupKind;
use super::registry::PrivateService;
use crate::config::IdentityPolicy;
use crate::ratelimit::LogLimiter;
use crate::refusal::Refusal;

/// How long a withdraw waits for the service's listener to let go of its port. Stopping an
/// accept loop takes a wake-up, so this bound is only reached by a runtime that is stuck.
const WITHDRAW_TIMEOUT: Duration = Duration::from_secs(5);

/// One service a session registered, and whether its local service answers its health check
/// (the client says so; an unhealthy service gets no new visitors).
struct Held {
    kind: HeldKind,
    healthy: Arc<AtomicBool>,
}

enum HeldKind {
    /// A public port, served by a listener task.
    Public {
        port: u16,
        /// Stops the listener (a child of the session's listeners).
        stop: CancellationToken,
        /// Cancelled by the listener task once it has released the port.
        released: CancellationToken,
    },
    /// A name in the registry's private services.
    Private,
    /// A membership of a group.
    Group(Name),
}

/// The services of one session.
pub(super) struct Services {
    ctx: Arc<SessionCtx>,
    identity: Name,
    instance: Option<Name>,
    policy: IdentityPolicy,
    /// Every service of the session, public and private, by name.
    held: HashMap<Name, Held>,
    /// Limits warnings about refused registrations: a client may send thousands.
    refusal_log: LogLimiter,
}

impl Services {
    pub fn new(
        ctx: Arc<SessionCtx>,
        identity: Name,
        instance: Option<Name>,
        policy: IdentityPolicy,
    ) -> Self {
        Services {
            ctx,
            identity,
            instance,
            policy,
            held: HashMap::new(),
            refusal_log: LogLimiter::default(),
        }
    }

    /// The identity's policy the services are registered under.
    pub fn policy(&self) -> &IdentityPolicy {
        &self.policy
    }

    /// Whether `new` would refuse a service this session already serves: one of its ports is no
    /// longer allowed, or the ports are to be bound on another address.
    pub fn outgrown_by(&self, new: &IdentityPolicy) -> bool {
        let mut ports = self.held.values().filter_map(|h| match h.kind {
            HeldKind::Public { port, .. } => Some(port),
            HeldKind::Private | HeldKind::Group(_) => None,
        });
        let mut any = false;
        let outside = ports.any(|p| {
            any = true;
            !new.allows(p)
        });
        outside || (any && new.bind != self.policy.bind)
    }

    /// Registers later services under `new` (a reload changed what the identity may use).
    pub fn set_policy(&mut self, new: IdentityPolicy) {
        self.policy = new;
    }

    /// Handles one `Register`: binds the port and starts serving it (or joins the group), or
    /// says why not.
    pub fn register(
        &mut self,
        service: Name,
        port: u16,
        access: AccessRules,
        group: Option<Name>,
    ) -> Message {
        if let Some(group) = group {
            return self.join(Joining {
                group,
                service,
                kind: GroupKind::Public(port),
                access,
                visitors: Vec::new(),
            });
        }
        let log = &self.refusal_log;
        let refused = |r: Refusal| {
            if let Some(held_back) = log.allow() {
                warn!(%service, port, code = %r.code, reason = %r.message, held_back, "service refused");
            }
            r.to_service_refused(service.clone())
        };
        let identity_permits = match self.public_places(&service) {
            Ok(p) => p,
            Err(r) => return refused(r),
        };
        let served = super::public::start(
            &self.ctx,
            &self.identity,
            &self.policy,
            identity_permits,
            (service.clone(), port, access),
        );
        let (port, stop, released, healthy) = match served {
            Ok(s) => s,
            Err(r) => return refused(r),
        };
        self.hold_public(service, port, stop, released, healthy)
    }

    /// Handles one `RegisterUdp`: binds the UDP port under the identity's policy (a TCP service
    /// may have the same number) and serves its flows, or says why not.
    pub fn register_udp(&mut self, service: Name, port: u16, access: AccessRules) -> Message {
        let log = &self.refusal_log;
        let refused = |r: Refusal| {
            if let Some(held_back) = log.allow() {
                warn!(%service, port, code = %r.code, reason = %r.message, held_back, "UDP service refused");
            }
            r.to_service_refused(service.clone())
        };
        let identity_permits = match self.public_places(&service) {
            Ok(p) => p,
            Err(r) => return refused(r),
        };
        let served = super::udp::start(
            &self.ctx,
            &self.identity,
            &self.policy,
            identity_permits,
            (service.clone(), port, access),
        );
        let (port, stop, released, healthy) = match served {
            Ok(s) => s,
            Err(r) => return refused(r),
        };
        self.hold_public(service, port, stop, released, healthy)
    }

    /// Handles one `RegisterPrivate`: records the service and who may visit it (or joins the
    /// group), or says why not.
    pub fn register_private(
        &mut self,
        service: Name,
        visitors: Vec<Name>,
        group: Option<Name>,
        udp: bool,
    ) -> Message {
        if let Some(group) = group {
            return self.join(Joining {
                group,
                service,
                kind: GroupKind::Private,
                access: AccessRules::default(),
                visitors,
            });
        }
        let log = &self.refusal_log;
        let refused = |r: Refusal| {
            if let Some(held_back) = log.allow() {
                warn!(%service, code = %r.code, reason = %r.message, held_back, "private service refused");
            }
            r.to_service_refused(service.clone())
        };
        if let Err(r) = self.may_register(&service) {
            return refused(r);
        }
        if visitors.is_empty() {
            return refused(Refusal::new(
                ErrorCode::NotAllowed,
                format!("private service {service} lists no visitor identities"),
            ));
        }
        let healthy = Arc::new(AtomicBool::new(true));
        let entry = PrivateService {
            owner: self.identity.clone(),
            healthy: healthy.clone(),
            udp,
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
            return refused(Refusal::new(
                ErrorCode::PortInUse,
                format!("private service {service} is still held by an earlier session of this identity"),
            ));
        }
        self.held.insert(
            service.clone(),
            Held {
                kind: HeldKind::Private,
                healthy,
            },
        );
        self.ctx
            .hold_private(self.identity.clone(), service.clone());
        info!(%service, ?visitors, "private service offered");
        self.ctx.record_service(&service, None);
        Message::Registered {
            service,
            remote_port: 0,
        }
    }

    /// Handles one `Withdraw`: stops offering the service and releases its port (awaited, so
    /// the client may register the name again at once) or its private name. Visitors already
    /// connected stay: the client ends them. A name this session does not hold is answered the
    /// same way, since it is not offered afterwards either.
    pub async fn withdraw(&mut self, service: Name) -> Message {
        match self.held.remove(&service).map(|h| h.kind) {
            Some(HeldKind::Public {
                port,
                stop,
                released,
            }) => {
                stop.cancel();
                if tokio::time::timeout(WITHDRAW_TIMEOUT, released.cancelled())
                    .await
                    .is_err()
                {
                    warn!(%service, port, "the withdrawn service's listener did not stop in time");
                }
                info!(%service, port, "service withdrawn by the client; port released");
            }
            Some(HeldKind::Private) => {
                self.ctx.release_private(&self.identity, &service);
                info!(%service, "private service withdrawn by the client");
            }
            Some(HeldKind::Group(group)) => {
                self.ctx.leave(&group);
                info!(%service, %group, "service withdrawn by the client; left the group");
            }
            None => debug!(%service, "withdraw of a service this session does not hold"),
        }
        self.ctx.forget_service(&service);
        Message::Withdrawn { service }
    }

    /// Joins a group (see `grouped.rs`), answering as a registration.
    fn join(&mut self, joining: Joining) -> Message {
        let service = joining.service.clone();
        let group = joining.group.clone();
        let refused = |r: Refusal, log: &crate::ratelimit::LogLimiter| {
            if let Some(held_back) = log.allow() {
                warn!(%service, %group, code = %r.code, reason = %r.message, held_back, "service refused");
            }
            r.to_service_refused(service.clone())
        };
        if let Err(r) = self.may_register(&service) {
            return refused(r, &self.refusal_log);
        }
        match super::grouped::join(&self.ctx, &self.identity, &self.instance, joining) {
            Ok((port, healthy)) => {
                self.held.insert(
                    service.clone(),
                    Held {
                        kind: HeldKind::Group(group),
                        healthy,
                    },
                );
                self.ctx
                    .record_service(&service, (port != 0).then_some(port));
                Message::Registered {
                    service,
                    remote_port: port,
                }
            }
            Err(r) => refused(r, &self.refusal_log),
        }
    }

    /// Handles one `ServiceHealth`: the service gets new visitors again, or none until it is
    /// reported healthy (a group's go to its other members).
    pub fn health(&mut self, service: &Name, unhealthy: Option<&ncx_proto::Text>) {
        let Some(held) = self.held.get(service) else {
            debug!(%service, "health report for a service this session does not hold");
            return;
        };
        let healthy = unhealthy.is_none();
        if held.healthy.swap(healthy, Ordering::Relaxed) != healthy {
            match unhealthy {
                None => {
                    info!(%service, "the client reports the service healthy again; it gets visitors")
                }
                Some(reason) => {
                    warn!(%service, %reason, "the client reports the service unhealthy; it gets no new visitors")
                }
            }
        }
    }

    /// What every public registration checks first: the session may register the name, and the
    /// identity (still configured) has its visitor places, which are returned.
    fn public_places(&self, service: &Name) -> Result<Arc<Semaphore>, Refusal> {
        self.may_register(service)?;
        self.ctx
            .shared
            .admission
            .identity_visitors(&self.identity)
            .ok_or_else(|| {
                Refusal::new(
                    ErrorCode::UnknownIdentity,
                    format!("identity {} is no longer configured", self.identity),
                )
            })
    }

    /// Records a public service (TCP or UDP) now served on `port`, and answers its registration.
    fn hold_public(
        &mut self,
        service: Name,
        port: u16,
        stop: CancellationToken,
        released: CancellationToken,
        healthy: Arc<AtomicBool>,
    ) -> Message {
        let kind = HeldKind::Public {
            port,
            stop,
            released,
        };
        self.held.insert(service.clone(), Held { kind, healthy });
        self.ctx.record_service(&service, Some(port));
        Message::Registered {
            service,
            remote_port: port,
        }
    }

    /// A service name is registered at most once per session, public or private, and a session
    /// registers at most `max_services_per_session` services.
    fn may_register(&self, service: &Name) -> Result<(), Refusal> {
        let max = self.ctx.shared.settings.max_services_per_session;
        if self.held.len() >= max {
            return Err(Refusal::new(
                ErrorCode::LimitReached,
                format!("this session registered its maximum of {max} services"),
            ));
        }
        if self.held.contains_key(service) {
            return Err(Refusal::new(
                ErrorCode::DuplicateService,
                format!("service {service} is already registered in this session"),
            ));
        }
        Ok(())
    }
}
