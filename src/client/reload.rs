//! A reload of the client (SIGHUP, `ncx ctl reload`): what changed between the settings in force
//! and the ones re-read, and how a connected session takes the change without dropping the
//! visitors it does not concern.
//!
//! Services are changed in place: a removed one is withdrawn (its port released at once, its
//! visitors reset after the drain deadline), an added one registered, a changed one withdrawn and
//! registered again (or only given its new local address, when that is all that changed).
//! Settings of the connection itself (server, identity, token, certificates, proxy, transport,
//! timeouts) take a new session; the old one keeps its visitors until they end.

use std::collections::HashMap;
use std::sync::Arc;

use ncx_proto::Name;
use tokio::sync::{mpsc, oneshot};

use super::report::{ClientReloaded, Request};
use crate::config::{ClientSettings, ServiceSpec};

/// Reloads waiting for the client to take them: one runs at a time, a few more may queue.
const QUEUED_RELOADS: usize = 4;

/// Re-reads the client's configuration the way it was read at start (the file and the flags).
pub type Reread = Arc<dyn Fn() -> Result<ClientSettings, String> + Send + Sync>;

/// Asks a running client to reload; cloned for each place a reload comes from.
#[derive(Clone)]
pub struct Reloader {
    requests: mpsc::Sender<Request>,
    reread: Reread,
}

/// The receiving end of [`Reloader`], handed to [`super::run_reloading`].
pub struct Reloads {
    pub(super) requests: mpsc::Receiver<Request>,
    pub(super) reloader: Reloader,
}

/// Makes the pair: the [`Reloader`] to ask with, and the [`Reloads`] the client takes them from.
pub fn reloads(reread: Reread) -> (Reloader, Reloads) {
    let (tx, rx) = mpsc::channel(QUEUED_RELOADS);
    let reloader = Reloader {
        requests: tx,
        reread,
    };
    (
        reloader.clone(),
        Reloads {
            requests: rx,
            reloader,
        },
    )
}

impl Reloader {
    /// Re-reads the configuration and has the client take it; the error is the configuration's
    /// (FILE:LINE:COL), and then the configuration in force stays.
    pub async fn reload(&self) -> Result<ClientReloaded, String> {
        crate::notify::reloading();
        let result = self.reload_inner().await;
        if let Err(e) = &result {
            tracing::error!("reload refused; the configuration in force stays: {e}");
        }
        crate::notify::ready("reloaded");
        result
    }

    async fn reload_inner(&self) -> Result<ClientReloaded, String> {
        let settings = (self.reread)()?;
        let (answer, outcome) = oneshot::channel();
        let request = Request { settings, answer };
        self.requests
            .send(request)
            .await
            .map_err(|_| "the client is stopping".to_owned())?;
        outcome
            .await
            .map_err(|_| "the client stopped before it took the reload".to_owned())?
    }
}

impl Reloads {
    /// Another [`Reloader`] for the same client.
    pub fn reloader(&self) -> Reloader {
        self.reloader.clone()
    }
}

/// The difference between the settings in force and the new ones.
pub(super) fn plan(old: &ClientSettings, new: &ClientSettings) -> ClientReloaded {
    let before: HashMap<&Name, &ServiceSpec> = old.services.iter().map(|s| (&s.name, s)).collect();
    let after: HashMap<&Name, &ServiceSpec> = new.services.iter().map(|s| (&s.name, s)).collect();
    let mut r = ClientReloaded {
        added: new
            .services
            .iter()
            .filter(|s| !before.contains_key(&s.name))
            .map(|s| s.name.clone())
            .collect(),
        removed: old
            .services
            .iter()
            .filter(|s| !after.contains_key(&s.name))
            .map(|s| s.name.clone())
            .collect(),
        changed: new
            .services
            .iter()
            .filter(|s| before.get(&s.name).is_some_and(|o| *o != *s))
            .map(|s| s.name.clone())
            .collect(),
        ..Default::default()
    };
    let mut session = |key: &'static str, same: bool| {
        if !same {
            r.new_session.push(key);
        }
    };
    session(
        "server",
        old.server == new.server && old.websocket == new.websocket,
    );
    session("server_name", old.server_name == new.server_name);
    session("trust", same_trust(&old.trust, &new.trust));
    session("identity", old.identity == new.identity);
    session("token", old.token == new.token);
    session(
        "client_cert",
        format!("{:?}", old.client_cert) == format!("{:?}", new.client_cert),
    );
    session(
        "proxy",
        old.proxy == new.proxy && old.proxy_ca == new.proxy_ca,
    );
    session(
        "timeouts",
        old.connect_timeout == new.connect_timeout
            && old.handshake_timeout == new.handshake_timeout
            && old.local_connect_timeout == new.local_connect_timeout
            && old.timing == new.timing,
    );
    session("max_visitors", old.max_visitors == new.max_visitors);
    session(
        "exit_on_forward_failure",
        old.exit_on_forward_failure == new.exit_on_forward_failure,
    );
    let mut restart = |key: &'static str, same: bool| {
        if !same {
            r.need_restart.push(key);
        }
    };
    restart("metrics_listen", old.metrics_listen == new.metrics_listen);
    restart("admin_socket", old.admin_socket == new.admin_socket);
    restart("visit", old.visits == new.visits);
    r
}

/// Whether two trusts verify the same servers (the roots compared by their contents).
fn same_trust(a: &crate::tls::ServerTrust, b: &crate::tls::ServerTrust) -> bool {
    use crate::tls::ServerTrust as T;
    match (a, b) {
        (T::Pinned(x), T::Pinned(y)) => x == y,
        (T::InsecureSkipVerify, T::InsecureSkipVerify) => true,
        (T::Ca { roots: x, .. }, T::Ca { roots: y, .. }) => {
            format!("{:?}", x.roots) == format!("{:?}", y.roots)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Token;
    use crate::tls::ServerTrust;

    fn name(s: &str) -> Name {
        Name::new(s).unwrap()
    }

    fn svc(n: &str, local: &str, port: u16) -> ServiceSpec {
        ServiceSpec {
            name: name(n),
            local: local.into(),
            remote_port: port,
            access: Default::default(),
            proxy_protocol: None,
            visitors: None,
            group: None,
            health: None,
            udp: false,
        }
    }

    fn settings(token: &str, services: Vec<ServiceSpec>) -> ClientSettings {
        ClientSettings::new(
            "127.0.0.1:7835".into(),
            rustls::pki_types::ServerName::try_from("localhost").unwrap(),
            ServerTrust::InsecureSkipVerify,
            name("a"),
            Token::new(token),
            services,
        )
    }

    #[test]
    fn the_same_settings_change_nothing() {
        let s = settings("t", vec![svc("web", "127.0.0.1:80", 0)]);
        assert_eq!(plan(&s, &s.clone()), ClientReloaded::default());
    }

    #[test]
    fn services_are_added_removed_and_changed_by_name_in_the_new_order() {
        let old = settings(
            "t",
            vec![
                svc("keep", "127.0.0.1:1", 0),
                svc("gone", "127.0.0.1:2", 0),
                svc("local", "127.0.0.1:3", 0),
                svc("port", "127.0.0.1:4", 0),
            ],
        );
        let new = settings(
            "t",
            vec![
                svc("port", "127.0.0.1:4", 4444),
                svc("new", "127.0.0.1:5", 0),
                svc("local", "127.0.0.1:33", 0),
                svc("keep", "127.0.0.1:1", 0),
            ],
        );
        let r = plan(&old, &new);
        assert_eq!(r.added, vec![name("new")]);
        assert_eq!(r.removed, vec![name("gone")]);
        assert_eq!(r.changed, vec![name("port"), name("local")]);
        assert!(
            r.new_session.is_empty() && r.need_restart.is_empty(),
            "{r:?}"
        );
    }

    #[test]
    fn connection_settings_take_a_new_session_and_listeners_a_restart() {
        let old = settings("t", Vec::new());
        let mut new = settings("other", Vec::new());
        new.handshake_timeout += std::time::Duration::from_secs(1);
        new.server = "127.0.0.1:7836".into();
        new.metrics_listen = Some("127.0.0.1:9100".parse().unwrap());
        let r = plan(&old, &new);
        assert_eq!(r.new_session, vec!["server", "token", "timeouts"]);
        assert_eq!(r.need_restart, vec!["metrics_listen"]);
        assert!(r.added.is_empty() && r.removed.is_empty() && r.changed.is_empty());
    }
}
