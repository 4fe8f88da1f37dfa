//! A reload of the server's configuration while it runs: the identities are replaced in one
//! step, and every session follows what became of its own identity (see
//! `Control::reloaded`). Everything else in the file is read at start only; a reload names
//! what changed there, for a restart to apply.

use super::*;

/// What a reload changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Reloaded {
    /// Identities that can authenticate from now on.
    pub added: Vec<ncx_proto::Name>,
    /// Identities whose sessions are being closed.
    pub removed: Vec<ncx_proto::Name>,
    /// Identities whose credentials, address or ports changed.
    pub changed: Vec<ncx_proto::Name>,
    /// Settings that differ but apply only at the next start.
    pub need_restart: Vec<&'static str>,
}

impl Server {
    /// Puts `new`'s identities in force (see the module documentation) and says what changed.
    pub fn reload(&self, new: &ServerSettings) -> Reloaded {
        let shared = &self.shared;
        let old = shared.identities();
        let mut report = Reloaded {
            need_restart: restart_only_changes(&shared.settings, new),
            ..Reloaded::default()
        };
        for policy in &new.identities {
            match old.get(&policy.name) {
                None => report.added.push(policy.name.clone()),
                Some(was) if was != policy => report.changed.push(policy.name.clone()),
                Some(_) => {}
            }
        }
        report.removed = old
            .keys()
            .filter(|name| !new.identities.iter().any(|p| &p.name == *name))
            .cloned()
            .collect();
        for list in [&mut report.added, &mut report.removed, &mut report.changed] {
            list.sort();
        }
        shared
            .admission
            .admit_identities(new.identities.iter().map(|p| &p.name));
        shared
            .identities
            .send_replace(context::identity_map(&new.identities));
        report
    }
}

/// The settings other than the identities that differ between `old` and `new`, by key name.
fn restart_only_changes(old: &ServerSettings, new: &ServerSettings) -> Vec<&'static str> {
    // Every field is named here, so a new one cannot be forgotten in the comparison below.
    let ServerSettings {
        listen: _,
        cert: _,
        client_ca: _,
        handshake_timeout: _,
        max_handshakes: _,
        max_handshakes_per_source: _,
        max_visitors_per_session: _,
        max_sessions: _,
        max_sessions_per_identity: _,
        max_services_per_session: _,
        max_visitors_per_identity: _,
        max_visitors_per_service: _,
        max_opens_in_flight: _,
        udp_idle_timeout: _,
        rotate_after_opens: _,
        timing: _,
        auth_failures_before_block: _,
        auth_block: _,
        proxy_protocol_from: _,
        fallback: _,
        websocket_path: _,
        max_fallback_connections: _,
        metrics_listen: _,
        admin_socket: _,
        identities: _,
        groups: _,
    } = old;
    let mut changed = Vec::new();
    // Debug output compares every field whatever its type; none of these holds a secret.
    macro_rules! compare {
        ($($field:ident => $key:literal),* $(,)?) => {
            $(
                if format!("{:?}", old.$field) != format!("{:?}", new.$field) {
                    changed.push($key);
                }
            )*
        };
    }
    compare!(
        listen => "listen",
        cert => "tls",
        client_ca => "tls.client_ca",
        handshake_timeout => "handshake_timeout_secs",
        max_handshakes => "max_handshakes",
        max_handshakes_per_source => "max_handshakes_per_source",
        max_visitors_per_session => "max_visitors_per_session",
        max_sessions => "max_sessions",
        max_sessions_per_identity => "max_sessions_per_identity",
        max_services_per_session => "max_services_per_session",
        max_visitors_per_identity => "max_visitors_per_identity",
        max_visitors_per_service => "max_visitors_per_service",
        max_opens_in_flight => "max_opens_in_flight",
        udp_idle_timeout => "udp_idle_timeout_secs",
        timing => "ping_interval_secs, liveness_timeout_secs or drain_timeout_secs",
        auth_failures_before_block => "auth_failures_before_block",
        auth_block => "auth_block_secs",
        proxy_protocol_from => "proxy_protocol_from",
        fallback => "fallback",
        websocket_path => "websocket_path",
        max_fallback_connections => "max_fallback_connections",
        metrics_listen => "metrics_listen",
        admin_socket => "admin_socket",
        groups => "groups",
    );
    changed
}
