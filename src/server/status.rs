//! What `ncx status` shows of the server: every authenticated session, read from the live list.

use std::sync::atomic::Ordering;

use super::*;
use crate::admin::{epoch_secs, GroupStatus, ServerStatus, SessionStatus};

impl Server {
    /// The server and its authenticated sessions (retiring ones included), oldest first.
    pub fn status(&self) -> ServerStatus {
        let live: Vec<_> = self
            .shared
            .live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter_map(std::sync::Weak::upgrade)
            .collect();
        let max_visitors = self.shared.settings.max_visitors_per_session;
        let mut sessions: Vec<SessionStatus> = live
            .iter()
            .filter_map(|ctx| {
                let identity = match (ctx.status.identity.get()?, ctx.status.instance.get()) {
                    (identity, Some(Some(instance))) => format!("{identity}/{instance}"),
                    (identity, _) => identity.to_string(),
                };
                let services = ctx
                    .status
                    .services
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .iter()
                    .map(|(name, port)| match port {
                        Some(port) => format!("{name}:{port}"),
                        None => format!("{name} (private)"),
                    })
                    .collect();
                let rtt = ctx.status.rtt_micros.load(Ordering::Relaxed);
                Some(SessionStatus {
                    identity,
                    address: ctx.peer.to_string(),
                    since: epoch_secs(ctx.status.since),
                    services,
                    visitors: max_visitors.saturating_sub(ctx.limits.visitors.available_permits()),
                    bytes_in: ctx.status.bytes_in.get(),
                    bytes_out: ctx.status.bytes_out.get(),
                    rtt_ms: (rtt > 0).then(|| rtt as f64 / 1000.0),
                })
            })
            .collect();
        sessions.sort_by(|a, b| (a.since, &a.identity).cmp(&(b.since, &b.identity)));
        let mut groups: Vec<GroupStatus> = self
            .shared
            .groups
            .all()
            .iter()
            .map(|g| {
                let members = g.members();
                GroupStatus {
                    name: g.name.to_string(),
                    service: members
                        .first()
                        .map(|m| m.service.to_string())
                        .unwrap_or_default(),
                    port: match g.kind {
                        groups::GroupKind::Public(p) => Some(p),
                        groups::GroupKind::Private => None,
                    },
                    balance: g.balance.to_string(),
                    members: members
                        .iter()
                        .map(|m| {
                            if m.healthy.load(Ordering::Relaxed) {
                                m.who()
                            } else {
                                format!("{} (unhealthy)", m.who())
                            }
                        })
                        .collect(),
                }
            })
            .collect();
        groups.sort_by(|a, b| a.name.cmp(&b.name));
        ServerStatus {
            kind: "server".into(),
            listen: self.shared.settings.listen.to_string(),
            fingerprint: self.fingerprint.to_string(),
            sessions,
            groups,
        }
    }
}
