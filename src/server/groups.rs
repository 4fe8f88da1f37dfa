//! Groups: one service offered by several sessions together (several clients, or one identity
//! running on several machines), and which member a visitor goes to.
//!
//! Like the registry, this table imports nothing above it: a member's session is held as a
//! `Weak<S>` of whatever type the server uses for a session, so a member never keeps its session
//! alive, and a member whose session is gone is skipped.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use ncx_proto::{AccessRules, Name};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::config::Balance;

/// Identifies a session for the lifetime of the server process (as in the registry).
pub type SessionId = u64;

/// What a group's members offer: a public port bound once for all of them, or a private service
/// reached by visits that name the group as owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupKind {
    /// The public port the group's listener serves.
    Public(u16),
    /// Reached through visits only.
    Private,
}

/// One member: a session that registered the group's service.
pub struct Member<S> {
    /// The member's session.
    pub session: SessionId,
    pub ctx: Weak<S>,
    /// Who the member is: its identity and instance.
    pub identity: Name,
    pub instance: Option<Name>,
    /// The service's name on the member's side (what its visitor headers name).
    pub service: Name,
    /// A public member's access rules: a visitor goes only to members whose rules let it in.
    pub access: AccessRules,
    /// A private member's visitors: a visit goes only to members that list the visiting identity.
    pub visitors: Arc<[Name]>,
    /// Whether the member's local service answers its health check (the client says so).
    pub healthy: Arc<AtomicBool>,
    /// Visitors connected through this member now (for least connections).
    pub active: Arc<AtomicUsize>,
}

// Not derived: a derive would ask for `S: Clone`, and a `Weak<S>` clones without it.
impl<S> Clone for Member<S> {
    fn clone(&self) -> Self {
        Member {
            session: self.session,
            ctx: self.ctx.clone(),
            identity: self.identity.clone(),
            instance: self.instance.clone(),
            service: self.service.clone(),
            access: self.access.clone(),
            visitors: self.visitors.clone(),
            healthy: self.healthy.clone(),
            active: self.active.clone(),
        }
    }
}

impl<S> Member<S> {
    /// `identity` or `identity/instance`, for logs and status.
    pub fn who(&self) -> String {
        match &self.instance {
            Some(i) => format!("{}/{i}", self.identity),
            None => self.identity.to_string(),
        }
    }
}

/// A group with at least one member.
pub struct Group<S> {
    pub name: Name,
    pub kind: GroupKind,
    pub balance: Balance,
    /// Caps the group's concurrent visitors (the per-service limit, for the group as a whole).
    pub permits: Arc<Semaphore>,
    /// Stops the public listener (cancelled when the last member leaves).
    pub stop: CancellationToken,
    /// Limits warnings about visitors no member could take.
    pub refusals: crate::ratelimit::LogLimiter,
    members: Mutex<Vec<Member<S>>>,
    cursor: AtomicUsize,
}

impl<S> Group<S> {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Member<S>>> {
        // A panic while holding the lock leaves a plain list behind, which stays consistent.
        self.members.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The members now.
    pub fn members(&self) -> Vec<Member<S>> {
        self.lock().clone()
    }

    /// The next member for a visitor, among the live, healthy members that `fits` and that are not
    /// in `tried`: in turn, or the one with the fewest visitors.
    pub fn pick(
        &self,
        fits: impl Fn(&Member<S>) -> bool,
        tried: &[SessionId],
    ) -> Option<(Member<S>, Arc<S>)> {
        let members = self.lock();
        let n = members.len();
        if n == 0 {
            return None;
        }
        let start = self.cursor.fetch_add(1, Ordering::Relaxed) % n;
        let mut best: Option<(usize, &Member<S>, Arc<S>)> = None;
        for i in 0..n {
            let m = &members[(start + i) % n];
            if tried.contains(&m.session) || !m.healthy.load(Ordering::Relaxed) || !fits(m) {
                continue;
            }
            let Some(ctx) = m.ctx.upgrade() else { continue };
            let load = m.active.load(Ordering::Relaxed);
            match (&best, self.balance) {
                (None, _) => best = Some((load, m, ctx)),
                (Some((least, _, _)), Balance::LeastConnections) if load < *least => {
                    best = Some((load, m, ctx))
                }
                _ => {}
            }
            if self.balance == Balance::RoundRobin {
                break;
            }
        }
        best.map(|(_, m, ctx)| (m.clone(), ctx))
    }

    /// Whether any member would take a visitor from `ip` (a public group).
    pub fn admits(&self, ip: IpAddr) -> bool {
        self.lock().iter().any(|m| m.access.permits(ip))
    }
}

/// What [`Groups::join`] answers when `create` did not fail: the group and whether it is new, or
/// why the member cannot join.
pub type Joined<S> = Result<(Arc<Group<S>>, bool), JoinError>;

/// Why a session could not join a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JoinError {
    /// The group serves another service name.
    OtherService(Name),
    /// The group is public and the member private, or the other way round.
    OtherKind,
    /// The group's public port is another one.
    OtherPort(u16),
    /// This session is a member already.
    AlreadyMember,
}

/// Every group of the server. One per server.
pub struct Groups<S> {
    inner: Mutex<HashMap<Name, Arc<Group<S>>>>,
}

impl<S> Default for Groups<S> {
    fn default() -> Self {
        Groups {
            inner: Mutex::new(HashMap::new()),
        }
    }
}

/// A group to create when the first member joins: its kind (with the port already bound), how
/// it spreads visitors, and the token that stops its listener.
pub struct NewGroup {
    pub kind: GroupKind,
    pub balance: Balance,
    pub max_visitors: usize,
    pub stop: CancellationToken,
}

impl<S> Groups<S> {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Name, Arc<Group<S>>>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The group named `name`, if it has members.
    pub fn get(&self, name: &Name) -> Option<Arc<Group<S>>> {
        self.lock().get(name).cloned()
    }

    /// Every group, for status.
    pub fn all(&self) -> Vec<Arc<Group<S>>> {
        self.lock().values().cloned().collect()
    }

    /// Adds `member` to the group `name`, which must serve `member.service` as `kind`. When there
    /// is no such group yet, `create` makes one (a public one binds its port there), and the
    /// answer says it is new, so that the caller starts its listener.
    pub fn join<E>(
        &self,
        name: &Name,
        kind_wanted: Option<GroupKind>,
        member: Member<S>,
        create: impl FnOnce() -> Result<NewGroup, E>,
    ) -> Result<Joined<S>, E> {
        let mut inner = self.lock();
        if let Some(group) = inner.get(name) {
            let mut members = group.lock();
            if let Some(first) = members.first() {
                if first.service != member.service {
                    return Ok(Err(JoinError::OtherService(first.service.clone())));
                }
            }
            match (group.kind, kind_wanted) {
                (GroupKind::Public(_), Some(GroupKind::Private))
                | (GroupKind::Private, Some(GroupKind::Public(_))) => {
                    return Ok(Err(JoinError::OtherKind))
                }
                (GroupKind::Public(p), Some(GroupKind::Public(want))) if want != 0 && want != p => {
                    return Ok(Err(JoinError::OtherPort(p)))
                }
                _ => {}
            }
            if members.iter().any(|m| m.session == member.session) {
                return Ok(Err(JoinError::AlreadyMember));
            }
            members.push(member);
            drop(members);
            return Ok(Ok((group.clone(), false)));
        }
        let new = create()?;
        let group = Arc::new(Group {
            name: name.clone(),
            kind: new.kind,
            balance: new.balance,
            permits: Arc::new(Semaphore::new(new.max_visitors)),
            stop: new.stop,
            refusals: crate::ratelimit::LogLimiter::default(),
            members: Mutex::new(vec![member]),
            cursor: AtomicUsize::new(0),
        });
        inner.insert(name.clone(), group.clone());
        Ok(Ok((group, true)))
    }

    /// Takes session `session` out of the group `name`. When it was the last member, the group
    /// is gone: its listener is told to stop (and releases the port).
    pub fn leave(&self, name: &Name, session: SessionId) {
        let mut inner = self.lock();
        let Some(group) = inner.get(name).cloned() else {
            return;
        };
        let mut members = group.lock();
        members.retain(|m| m.session != session);
        if members.is_empty() {
            drop(members);
            inner.remove(name);
            group.stop.cancel();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> Name {
        Name::new(s).unwrap()
    }

    fn member(session: SessionId, ctx: &Arc<u32>) -> Member<u32> {
        Member {
            session,
            ctx: Arc::downgrade(ctx),
            identity: name("office"),
            instance: Some(name(&format!("pc{session}"))),
            service: name("web"),
            access: AccessRules::default(),
            visitors: Arc::from(Vec::new()),
            healthy: Arc::new(AtomicBool::new(true)),
            active: Arc::new(AtomicUsize::new(0)),
        }
    }

    fn public(balance: Balance) -> Result<NewGroup, ()> {
        Ok(NewGroup {
            kind: GroupKind::Public(8080),
            balance,
            max_visitors: 10,
            stop: CancellationToken::new(),
        })
    }

    #[test]
    fn members_take_turns_and_the_unhealthy_the_tried_and_the_gone_are_skipped() {
        let groups = Groups::<u32>::default();
        let g = name("web");
        let (a, b, c) = (Arc::new(1), Arc::new(2), Arc::new(3));
        let want = Some(GroupKind::Public(0));
        let (group, new) = groups
            .join(&g, want, member(1, &a), || public(Balance::RoundRobin))
            .unwrap()
            .unwrap();
        assert!(new);
        for (id, ctx) in [(2, &b), (3, &c)] {
            let (_, new) = groups
                .join(&g, want, member(id, ctx), || -> Result<NewGroup, ()> {
                    unreachable!()
                })
                .unwrap()
                .unwrap();
            assert!(!new);
        }
        let picks: Vec<_> = (0..6)
            .map(|_| group.pick(|_| true, &[]).unwrap().0.session)
            .collect();
        for id in 1..=3 {
            assert_eq!(picks.iter().filter(|&&p| p == id).count(), 2, "{picks:?}");
        }
        group.members()[1].healthy.store(false, Ordering::Relaxed);
        drop(c);
        for _ in 0..6 {
            assert_eq!(group.pick(|_| true, &[]).unwrap().0.session, 1);
        }
        assert!(group.pick(|_| true, &[1]).is_none());
        assert!(group.pick(|m| m.session != 1, &[]).is_none());
    }

    #[test]
    fn least_connections_goes_to_the_least_loaded() {
        let groups = Groups::<u32>::default();
        let g = name("web");
        let (a, b) = (Arc::new(1), Arc::new(2));
        groups
            .join(&g, None, member(1, &a), || {
                public(Balance::LeastConnections)
            })
            .unwrap()
            .unwrap();
        let (group, _) = groups
            .join(&g, None, member(2, &b), || -> Result<NewGroup, ()> {
                unreachable!()
            })
            .unwrap()
            .unwrap();
        group.members()[0].active.store(5, Ordering::Relaxed);
        for _ in 0..4 {
            assert_eq!(group.pick(|_| true, &[]).unwrap().0.session, 2);
        }
    }

    #[test]
    fn joining_checks_the_service_the_kind_and_the_port_and_the_last_to_leave_stops_it() {
        let groups = Groups::<u32>::default();
        let g = name("web");
        let (a, b) = (Arc::new(1), Arc::new(2));
        let (group, _) = groups
            .join(&g, Some(GroupKind::Public(8080)), member(1, &a), || {
                public(Balance::RoundRobin)
            })
            .unwrap()
            .unwrap();
        let mut other = member(2, &b);
        other.service = name("api");
        assert_eq!(
            groups
                .join(&g, None, other, || -> Result<NewGroup, ()> {
                    unreachable!()
                })
                .unwrap()
                .err(),
            Some(JoinError::OtherService(name("web")))
        );
        let join = |kind| {
            groups.join(&g, kind, member(2, &b), || -> Result<NewGroup, ()> {
                unreachable!()
            })
        };
        assert_eq!(
            join(Some(GroupKind::Public(9090))).unwrap().err(),
            Some(JoinError::OtherPort(8080))
        );
        assert_eq!(
            join(Some(GroupKind::Private)).unwrap().err(),
            Some(JoinError::OtherKind)
        );
        assert!(join(Some(GroupKind::Public(8080))).unwrap().is_ok());
        assert_eq!(
            join(Some(GroupKind::Public(0))).unwrap().err(),
            Some(JoinError::AlreadyMember)
        );
        groups.leave(&g, 1);
        assert!(!group.stop.is_cancelled());
        assert!(groups.get(&g).is_some());
        groups.leave(&g, 2);
        assert!(group.stop.is_cancelled());
        assert!(groups.get(&g).is_none());
    }
}
