//! Taking a reload in a connected session: the withdraws and registrations it sends, their
//! answers read in order, and the services its visitors are served from put in place.

use std::collections::HashMap;
use std::sync::Arc;

use ncx_proto::{ErrorCode, Message, Name, Text};
use tokio::time::Instant;

use super::control::Connected;
use super::error::{ClientError, ServiceStatus};
use super::inbound::LocalService;
use super::report::ClientReloaded;
use crate::config::{ClientSettings, ServiceSpec};
use crate::framed::write_message;
use crate::refusal::Refusal;

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
        // A registration this server's protocol cannot carry is refused here, never sent.
        let (mut register, unsendable): (Vec<ServiceSpec>, Vec<ServiceSpec>) = register
            .into_iter()
            .partition(|spec| too_new(spec, self.version).is_none());
        let mut answers = self.exchange(&withdraw, &register).await?;
        for spec in unsendable {
            answers.push(Err(
                too_new(&spec, self.version).expect("partitioned as too new")
            ));
            register.push(spec);
        }

        let deadline = Instant::now() + self.settings.timing.drain_timeout;
        let mut local: HashMap<Name, Arc<LocalService>> = (**self.local.borrow()).clone();
        for name in &withdraw {
            if let Some(gone) = local.remove(name) {
                gone.withdraw_at(deadline, &self.visitors);
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
                    local.insert(
                        spec.name.clone(),
                        Arc::new(LocalService::new(spec.clone(), &self.visitors)),
                    );
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
                self.send(&registration(spec)).await?;
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
                message: Text::new("the client moves to another server"),
            }
        };
        if let Err(e) = write_message(&mut self.ctrl, &msg).await {
            tracing::debug!(error = %e, "could not announce the new session");
        }
    }
}

/// The message that registers `svc`: public or private, its own or into a group.
pub(super) fn registration(svc: &ServiceSpec) -> Message {
    if let (true, Some(visitors)) = (svc.udp, &svc.visitors) {
        return Message::RegisterPrivateUdp {
            service: svc.name.clone(),
            visitors: visitors.clone(),
        };
    }
    if svc.udp {
        return Message::RegisterUdp {
            service: svc.name.clone(),
            remote_port: svc.remote_port,
            access: svc.access.clone(),
        };
    }
    match &svc.visitors {
        Some(visitors) => Message::RegisterPrivate {
            service: svc.name.clone(),
            visitors: visitors.clone(),
            group: svc.group.clone(),
        },
        None => Message::Register {
            service: svc.name.clone(),
            remote_port: svc.remote_port,
            access: svc.access.clone(),
            group: svc.group.clone(),
        },
    }
}

/// Why `svc` cannot be registered with a server of protocol `version`, if it cannot: a group
/// and a UDP service need version 3. Such a registration is never sent (the server would take it
/// for a protocol violation and end the session).
pub(super) fn too_new(svc: &ServiceSpec, version: u16) -> Option<Refusal> {
    if svc.udp && version < ncx_proto::UDP_VERSION {
        return Some(Refusal::new(
            ErrorCode::VersionMismatch,
            format!(
                "UDP service {} needs a server of protocol version {} or newer; this one speaks {version}",
                svc.name,
                ncx_proto::UDP_VERSION
            ),
        ));
    }
    (svc.group.is_some() && version < ncx_proto::GROUP_VERSION).then(|| {
        Refusal::new(
            ErrorCode::VersionMismatch,
            format!(
                "group {} needs a server of protocol version {} or newer; this one speaks {version}",
                svc.group.as_ref().map(Name::as_str).unwrap_or_default(),
                ncx_proto::GROUP_VERSION
            ),
        )
    })
}
