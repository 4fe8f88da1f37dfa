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

use ncx_proto::{ErrorCode, Message, Name, Text};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::{info, warn};

use super::control::Connected;
use super::error::{ClientError, ServiceStatus};
use super::inbound::LocalService;
use crate::config::{ClientSettings, ServiceSpec};
use crate::framed::write_message;
use crate::refusal::Refusal;

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

/// A reload for the client's loop, and where its outcome goes.
pub(super) struct Request {
    pub settings: ClientSettings,
    pub answer: oneshot::Sender<Result<ClientReloaded, String>>,
}

/// What a reload changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientReloaded {
    /// Services registered that were not configured before.
    pub added: Vec<Name>,
    /// Services withdrawn.
    pub removed: Vec<Name>,
    /// Services whose settings changed.
    pub changed: Vec<Name>,
    /// Settings of the connection that changed: the client opened a new session for them.
    pub new_session: Vec<&'static str>,
    /// Settings that changed but apply only at the next start.
    pub need_restart: Vec<&'static str>,
    /// Services the server refused in this reload, with why.
    pub refused: Vec<String>,
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
        super::Client::new(settings.clone()).map_err(|e| e.to_string())?;
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

/// What became of a reload the client took while connected.
pub(super) enum Taken {
    /// Applied in the session, which goes on.
    InSession,
    /// The settings in force changed so that a new session is needed. `leaving`: it goes to
    /// another server, so the old session ends (drain deadline) instead of waiting for a takeover.
    NewSession { leaving: bool },
    /// The session failed while taking it; the next one uses the new settings.
    Lost(ClientError),
}

/// Takes `request` into `client` and its `connected` session: in place when only services
/// changed, else by asking for a new session. Answers the request.
pub(super) async fn take(
    client: &mut super::Client,
    connected: &mut Connected,
    request: Request,
) -> Taken {
    let Request { settings, answer } = request;
    let mut report = plan(&client.settings, &settings);
    match client.with_settings(settings.clone()) {
        Ok(next) => *client = next,
        Err(e) => {
            let _ = answer.send(Err(e.to_string()));
            return Taken::InSession;
        }
    }
    let services_changed =
        !(report.added.is_empty() && report.removed.is_empty() && report.changed.is_empty());
    let withdraws = connected.version >= ncx_proto::WITHDRAW_VERSION;
    if report.new_session.is_empty() && (withdraws || !services_changed) {
        let taken = match connected.apply(&report, &settings).await {
            Ok(refused) => {
                report.refused = refused;
                Taken::InSession
            }
            Err(e) => Taken::Lost(e),
        };
        report.log();
        let _ = answer.send(Ok(report));
        return taken;
    }
    if report.new_session.is_empty() {
        report
            .new_session
            .push("services (the server cannot withdraw one: protocol version 1)");
    }
    let leaving = report.new_session.contains(&"server");
    connected.announce_new_session(!leaving).await;
    report.log();
    let _ = answer.send(Ok(report));
    Taken::NewSession { leaving }
}

impl Reloads {
    /// Another [`Reloader`] for the same client.
    pub fn reloader(&self) -> Reloader {
        self.reloader.clone()
    }
}

impl ClientReloaded {
    /// The log lines of a reload the client took, before its services are listed again.
    pub(super) fn log(&self) {
        let names = |v: &[Name]| match v {
            [] => "none".to_owned(),
            v => v.iter().map(Name::to_string).collect::<Vec<_>>().join(","),
        };
        info!(
            added = %names(&self.added),
            removed = %names(&self.removed),
            changed = %names(&self.changed),
            new_session = %if self.new_session.is_empty() { "no".to_owned() } else { self.new_session.join(",") },
            "configuration reloaded"
        );
        if !self.need_restart.is_empty() {
            warn!(
                settings = %self.need_restart.join(", "),
                "these settings changed but apply only at the next start"
            );
        }
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
    session("server", old.server == new.server && old.websocket == new.websocket);
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

/// Whether the server must see a change of the service: its public side (port, access rules,
/// private or public, visitors), rather than only where its visitors go locally.
fn seen_by_server(old: &ServiceSpec, new: &ServiceSpec) -> bool {
    old.remote_port != new.remote_port || old.access != new.access || old.visitors != new.visitors
}

impl Connected {
    /// Takes new services into this session without touching the others: withdraws the removed
    /// and re-registers the changed ones, registers the added ones, and puts the new local
    /// addresses in place. Visitors of a withdrawn service get `drain_timeout`, then are reset.
    /// Returns the refusals, as `NAME: why`.
    pub(super) async fn apply(
        &mut self,
        plan: &ClientReloaded,
        new: &ClientSettings,
    ) -> Result<Vec<String>, ClientError> {
        let old: HashMap<Name, ServiceSpec> = self
            .settings
            .services
            .iter()
            .map(|s| (s.name.clone(), s.clone()))
            .collect();
        let wanted: HashMap<&Name, &ServiceSpec> =
            new.services.iter().map(|s| (&s.name, s)).collect();
        let mut withdraw: Vec<Name> = plan.removed.clone();
        let mut register: Vec<ServiceSpec> = plan
            .added
            .iter()
            .filter_map(|n| wanted.get(n).map(|s| (*s).clone()))
            .collect();
        for name in &plan.changed {
            let (Some(before), Some(after)) = (old.get(name), wanted.get(name)) else {
                continue;
            };
            let registered = self.port(name.as_str()).is_some();
            if seen_by_server(before, after) || !registered {
                if registered {
                    withdraw.push(name.clone());
                }
                let mut spec = (*after).clone();
                // A service on a port the server picked keeps that port if it still asks for any.
                if spec.remote_port == 0 && before.remote_port == 0 && spec.visitors.is_none() {
                    spec.remote_port = self.port(name.as_str()).unwrap_or(0);
                }
                register.push(spec);
            }
        }
        let answers = self.exchange(&withdraw, &register).await?;

        let deadline = Instant::now() + self.settings.timing.drain_timeout;
        let mut local: HashMap<Name, Arc<LocalService>> = (**self.local.borrow()).clone();
        for name in &withdraw {
            if let Some(gone) = local.remove(name) {
                gone.withdraw_at(deadline);
            }
        }
        for name in &plan.changed {
            if let (Some(entry), Some(spec)) = (local.get(name).cloned(), wanted.get(name)) {
                local.insert(name.clone(), Arc::new(entry.respecified((*spec).clone())));
            }
        }
        let mut refused = Vec::new();
        let mut results: HashMap<Name, Result<u16, Refusal>> = self
            .services
            .drain(..)
            .map(|s| (s.name, s.result))
            .collect();
        for name in &withdraw {
            results.remove(name);
        }
        for (spec, answer) in register.iter().zip(answers) {
            match &answer {
                Ok(_) => {
                    local.insert(spec.name.clone(), Arc::new(LocalService::new(spec.clone())));
                }
                Err(r) => refused.push(format!("{}: {}", spec.name, r.message)),
            }
            results.insert(spec.name.clone(), answer);
        }
        self.local.send_replace(Arc::new(local));
        self.services = new
            .services
            .iter()
            .filter_map(|s| {
                results.remove(&s.name).map(|result| ServiceStatus {
                    name: s.name.clone(),
                    result,
                })
            })
            .collect();
        self.settings = Arc::new(new.clone());
        Ok(refused)
    }

    /// Sends the withdraws, then the registrations, and reads their answers in order (answering
    /// pings meanwhile) within the handshake deadline. Returns each registration's answer.
    async fn exchange(
        &mut self,
        withdraw: &[Name],
        register: &[ServiceSpec],
    ) -> Result<Vec<Result<u16, Refusal>>, ClientError> {
        let deadline = Instant::now() + self.settings.handshake_timeout;
        let exchanged = async {
            for name in withdraw {
                let msg = Message::Withdraw {
                    service: name.clone(),
                };
                self.send(&msg).await?;
            }
            for spec in register {
                self.send(&super::connect::registration(spec)).await?;
            }
            let mut answers = Vec::with_capacity(register.len());
            let total = withdraw.len() + register.len();
            let mut done = 0;
            while done < total {
                let msg = self.reader.read(&mut self.ctrl).await.map_err(|e| {
                    ClientError::SessionLost(format!("reading the answers to a reload: {e}"))
                })?;
                let withdrawing = done < withdraw.len();
                let (service, answer) = match msg {
                    Message::Ping(v) => {
                        self.send(&Message::Pong(v)).await?;
                        continue;
                    }
                    Message::Pong(_) => continue,
                    Message::Withdrawn { service } if withdrawing => (service, None),
                    Message::Registered {
                        service,
                        remote_port,
                    } if !withdrawing => (service, Some(Ok(remote_port))),
                    Message::ServiceRefused {
                        service,
                        code,
                        message,
                    } if !withdrawing => (service, Some(Err(Refusal::from_wire(code, &message)))),
                    Message::GoAway { code, message } | Message::Error { code, message } => {
                        return Err(ClientError::GoneAway {
                            code,
                            message: Refusal::from_wire(code, &message).message,
                        })
                    }
                    other => {
                        return Err(ClientError::Protocol(format!(
                            "unexpected message type 0x{:02x} while the server took a reload",
                            other.type_byte()
                        )))
                    }
                };
                let asked = if withdrawing {
                    &withdraw[done]
                } else {
                    &register[done - withdraw.len()].name
                };
                if service != *asked {
                    return Err(ClientError::Protocol(format!(
                        "the server answered for service {service} where {asked} was next"
                    )));
                }
                answers.extend(answer);
                done += 1;
            }
            Ok(answers)
        };
        match tokio::time::timeout_at(deadline, exchanged).await {
            Ok(r) => r,
            Err(_) => Err(ClientError::Timeout {
                stage: "the server's answers to a reload",
                after: self.settings.handshake_timeout,
            }),
        }
    }

    async fn send(&mut self, msg: &Message) -> Result<(), ClientError> {
        write_message(&mut self.ctrl, msg)
            .await
            .map_err(|e| ClientError::SessionLost(format!("sending a reload to the server: {e}")))
    }

    /// Tells the server that this client's next session takes over from this one (`GoAway`
    /// with `Rotate`), or, when the next session goes to another server, that this one ends.
    pub(super) async fn announce_new_session(&mut self, same_server: bool) {
        let msg = if same_server {
            Message::GoAway {
                code: ErrorCode::Rotate,
                message: Text::new("the client reloaded; its new session follows"),
            }
        } else {
            Message::GoAway {
                code: ErrorCode::ShuttingDown,
                message: Text::new("the client reloaded and moves to another server"),
            }
        };
        if let Err(e) = write_message(&mut self.ctrl, &msg).await {
            tracing::debug!(error = %e, "could not announce the new session");
        }
    }
}
