//! The services one session registered: public ones (a port of the server, bound through
//! `public.rs`) and private ones (a name in the registry, reached through
//! `private.rs`). Each registration is answered with `Registered` or a refusal.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;

use ncx_proto::{AccessRules, ErrorCode, Message, Name};
use tokio::sync::Semaphore;
use tracing::{info, warn, Instrument};

use super::context::SessionCtx;
use super::public::{accept_visitors, bind_port};
use super::registry::PrivateService;
use crate::config::IdentityPolicy;
use crate::ratelimit::LogLimiter;
use crate::refusal::Refusal;

/// The services of one session.
pub(super) struct Services {
    ctx: Arc<SessionCtx>,
    identity: Name,
    policy: IdentityPolicy,
    /// Every service name of the session, public and private.
    names: HashSet<Name>,
    /// The public ports bound for its services.
    ports: Vec<u16>,
    /// Limits warnings about refused registrations: a client may send thousands.
    refusal_log: LogLimiter,
}

impl Services {
    pub fn new(ctx: Arc<SessionCtx>, identity: Name, policy: IdentityPolicy) -> Self {
        Services {
            ctx,
            identity,
            policy,
            names: HashSet::new(),
            ports: Vec::new(),
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
        !self.ports.is_empty()
            && (new.bind != self.policy.bind || self.ports.iter().any(|p| !new.allows(*p)))
    }

    /// Registers later services under `new` (a reload changed what the identity may use).
    pub fn set_policy(&mut self, new: IdentityPolicy) {
        self.policy = new;
    }

    /// Handles one `Register`: binds the port and starts serving it, or says why not.
    pub fn register(&mut self, service: Name, port: u16, access: AccessRules) -> Message {
        let log = &self.refusal_log;
        let refused = |r: Refusal| {
            if let Some(held_back) = log.allow() {
                warn!(%service, port, code = %r.code, reason = %r.message, held_back, "service refused");
            }
            r.to_service_refused(service.clone())
        };
        if let Err(r) = self.may_register(&service) {
            return refused(r);
        }
        let Some(identity_permits) = self.ctx.shared.admission.identity_visitors(&self.identity)
        else {
            return refused(Refusal::new(
                ErrorCode::UnknownIdentity,
                format!("identity {} is no longer configured", self.identity),
            ));
        };
        let (listener, port) = match bind_port(&self.ctx, &self.identity, &self.policy, port) {
            Ok(b) => b,
            Err(r) => return refused(r),
        };
        self.ports.push(port);
        self.names.insert(service.clone());
        let addr = SocketAddr::new(self.policy.bind, port);
        if access.is_open() {
            info!(%service, %addr, "service exposed");
        } else {
            info!(%service, %addr, allow = ?access.allow, deny = ?access.deny, "service exposed to the allowed addresses");
        }
        let span = tracing::info_span!("service", %service, port);
        self.ctx.listeners.spawn(
            accept_visitors(
                self.ctx.clone(),
                listener,
                service.clone(),
                port,
                access,
                identity_permits,
                self.identity.clone(),
            )
            .instrument(span),
        );
        self.ctx.record_service(&service, Some(port));
        Message::Registered {
            service,
            remote_port: port,
        }
    }

    /// Handles one `RegisterPrivate`: records the service and who may visit it, or says why not.
    pub fn register_private(&mut self, service: Name, visitors: Vec<Name>) -> Message {
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
            return refused(Refusal::new(
                ErrorCode::PortInUse,
                format!("private service {service} is still held by an earlier session of this identity"),
            ));
        }
        self.names.insert(service.clone());
        self.ctx
            .hold_private(self.identity.clone(), service.clone());
        info!(%service, ?visitors, "private service offered");
        self.ctx.record_service(&service, None);
        Message::Registered {
            service,
            remote_port: 0,
        }
    }

    /// A service name is registered at most once per session, public or private, and a session
    /// registers at most `max_services_per_session` services.
    fn may_register(&self, service: &Name) -> Result<(), Refusal> {
        let max = self.ctx.shared.settings.max_services_per_session;
        if self.names.len() >= max {
            return Err(Refusal::new(
                ErrorCode::LimitReached,
                format!("this session registered its maximum of {max} services"),
            ));
        }
        if self.names.contains(service) {
            return Err(Refusal::new(
                ErrorCode::DuplicateService,
                format!("service {service} is already registered in this session"),
            ));
        }
        Ok(())
    }
}
