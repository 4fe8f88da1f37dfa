//! The control loop of an admitted session: registrations, pings, visit substreams and go-aways,
//! in one [`Control`] whose [`Phase`] says what the session still does, until it ends with an
//! [`Outcome`].
//!
//! Kept as one piece of about 550 lines: the events, their handlers and the phase they move
//! between are one state machine, and every handler reads or changes the same phase. What a
//! reload means for a session is in `control/reloaded.rs`, as methods of the same `Control`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use ncx_proto::{ErrorCode, Message, Name, Text};
use tokio::sync::mpsc;
use tokio_util::compat::Compat;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

use super::admission::SessionSlot;
use super::context::SessionCtx;
use super::services::Services;
use crate::drain::{Drain, DrainEnd};
use crate::framed::{write_message, MessageReader, ReadError};
use crate::heartbeat::{Beat, Heartbeat};
use crate::refusal::Refusal;

mod reloaded;

/// How long a new session waits for the session it replaces to release its ports.
const TAKEOVER_TIMEOUT: Duration = Duration::from_secs(5);

/// The drain of a session that rotated: its visitors may take as long as they like (liveness still
/// ends the session if the client vanishes).
const UNBOUNDED_DRAIN: Duration = Duration::MAX;

/// The control stream: the first substream, opened by the client.
pub(super) type ControlStream = Compat<yamux::Stream>;

/// How a session ended, which decides the teardown.
pub(super) enum Outcome {
    /// Refused before authentication: the reason was sent; linger so it is read.
    Refused,
    /// Ends now: visitors are reset.
    Abort(String),
    /// Go-away was sent: visitors may finish until the drain deadline.
    Drain(String),
}

/// What the session still does.
enum Phase {
    /// Serving: registrations are accepted.
    Serving,
    /// This side asked the client to rotate to a fresh session; serving until it does.
    RotationAsked,
    /// The client said it goes away: its ports are released, registrations refused.
    ClientLeaving {
        /// Whether this side had asked it to rotate before.
        rotation_asked: bool,
    },
    /// This side sent a go-away: its visitors finish until the drain's deadline.
    Draining {
        /// The deadline.
        drain: Drain,
        /// Why the session goes away, for the log line that ends it.
        reason: String,
        /// Whether a newer session took over before the client announced it (the client's
        /// go-away `Rotate` races its new session, which comes on another connection): the
        /// announcement, arriving now, lifts the deadline as it would have before.
        replaced_unannounced: bool,
    },
}

impl Phase {
    fn is_draining(&self) -> bool {
        matches!(self, Phase::Draining { .. })
    }

    fn rotation_asked(&self) -> bool {
        matches!(
            self,
            Phase::RotationAsked
                | Phase::ClientLeaving {
                    rotation_asked: true
                }
        )
    }

    fn accepts_registrations(&self) -> bool {
        matches!(self, Phase::Serving | Phase::RotationAsked)
    }

    fn replaced_unannounced(&self) -> bool {
        matches!(
            self,
            Phase::Draining {
                replaced_unannounced: true,
                ..
            }
        )
    }
}

/// What woke the control loop.
enum Event {
    /// The connection ended.
    Ended,
    /// A newer session of the same identity took over.
    Replaced,
    /// The session used most of its stream ids.
    RotationDue,
    /// The server shuts down.
    ShuttingDown,
    /// A reload changed the identities.
    Reloaded,
    /// The drain ended.
    Drained(DrainEnd),
    /// The ping schedule fired.
    Beat(Beat),
    /// The client opened a visit substream.
    Visit(yamux::Stream),
    /// A message (or a failure) on the control stream.
    Message(Result<Message, ReadError>),
}

/// The control loop of one authenticated session.
pub(super) struct Control {
    ctx: Arc<SessionCtx>,
    ctrl: ControlStream,
    reader: MessageReader,
    /// Substreams the client opens after the control stream: visits.
    inbound: mpsc::Receiver<yamux::Stream>,
    identity: Name,
    /// Which instance of the identity this is (version 3); a takeover is per instance.
    instance: Option<Name>,
    services: Services,
    heartbeat: Heartbeat,
    phase: Phase,
    /// Whether the session became the identity's live session (at its first registration).
    live: bool,
    /// The server's shutdown.
    shutdown: CancellationToken,
    /// The identities in force, to follow a reload.
    identities: tokio::sync::watch::Receiver<super::context::Identities>,
    /// The session's place among the server's sessions, held until the loop ends.
    _slot: SessionSlot,
}

/// An authenticated session, as admission hands it to the control loop.
pub(super) struct Admitted {
    pub ctrl: ControlStream,
    pub reader: MessageReader,
    pub identity: Name,
    pub instance: Option<Name>,
    pub slot: SessionSlot,
}

impl Control {
    pub fn new(
        ctx: Arc<SessionCtx>,
        admitted: Admitted,
        inbound: mpsc::Receiver<yamux::Stream>,
        shutdown: CancellationToken,
    ) -> Self {
        let shared = &ctx.shared;
        let mut identities = shared.identities.subscribe();
        let policy = identities
            .borrow_and_update()
            .get(&admitted.identity)
            .cloned();
        // A reload removed the identity between its authentication and now: the first event
        // closes the session as a reload does, with a policy that grants nothing until then.
        let policy = policy.unwrap_or_else(|| {
            identities.mark_changed();
            crate::config::IdentityPolicy {
                name: admitted.identity.clone(),
                auth: crate::config::ClientAuth::Certificate,
                bind: std::net::Ipv4Addr::UNSPECIFIED.into(),
                ports: Vec::new(),
            }
        });
        let timing = shared.settings.timing;
        Control {
            services: Services::new(
                ctx.clone(),
                admitted.identity.clone(),
                admitted.instance.clone(),
                policy,
            ),
            heartbeat: Heartbeat::new(timing.ping_interval, timing.liveness_timeout),
            ctx,
            ctrl: admitted.ctrl,
            reader: admitted.reader,
            inbound,
            identity: admitted.identity,
            instance: admitted.instance,
            phase: Phase::Serving,
            live: false,
            shutdown,
            identities,
            _slot: admitted.slot,
        }
    }

    /// Runs until the session ends, and says how it did.
    pub async fn run(mut self) -> Outcome {
        loop {
            let event = self.next_event().await;
            if let Some(outcome) = self.handle(event).await {
                return outcome;
            }
        }
    }

    async fn next_event(&mut self) -> Event {
        let state = self.ctx.mux.state().clone();
        let draining = self.phase.is_draining();
        let drain = match &self.phase {
            Phase::Draining { drain, .. } => Some(*drain),
            _ => None,
        };
        let rotation_open = !self.phase.rotation_asked() && !draining;
        tokio::select! {
            biased;
            _ = state.ended() => Event::Ended,
            _ = self.ctx.takeover.replace.cancelled(), if !draining => Event::Replaced,
            _ = self.ctx.rotation.due(), if rotation_open => Event::RotationDue,
            _ = self.shutdown.cancelled(), if !draining => Event::ShuttingDown,
            Ok(()) = self.identities.changed() => Event::Reloaded,
            end = async { drain.expect("guarded by is_draining").end(self.ctx.visitors.tracker()).await }, if draining => Event::Drained(end),
            beat = self.heartbeat.due() => Event::Beat(beat),
            Some(stream) = self.inbound.recv() => Event::Visit(stream),
            m = self.reader.read(&mut self.ctrl) => Event::Message(m),
        }
    }

    /// Handles one event; `Some` ends the session.
    async fn handle(&mut self, event: Event) -> Option<Outcome> {
        let timing = self.ctx.shared.settings.timing;
        match event {
            Event::Ended => Some(Outcome::Abort(match &self.phase {
                Phase::Draining { reason, .. } => reason.clone(),
                _ => "the connection ended".into(),
            })),
            Event::Replaced => {
                // After a rotation the client is alive and its visitors (a remote desktop, say) may
                // last for hours: they keep this session until they end. Otherwise the takeover
                // usually means this session's client is gone, and the drain deadline applies.
                let announced = self.phase.rotation_asked();
                let drain = if announced {
                    UNBOUNDED_DRAIN
                } else {
                    timing.drain_timeout
                };
                self.go_away(
                    ErrorCode::SessionReplaced,
                    "a newer session of this identity took over",
                )
                .await;
                self.begin_drain(drain, "replaced by a newer session of the same identity")
                    .await;
                if let Phase::Draining {
                    replaced_unannounced,
                    ..
                } = &mut self.phase
                {
                    *replaced_unannounced = !announced;
                }
                None
            }
            Event::RotationDue => {
                // The client opens a fresh session, which takes over the ports (and so ends this one
                // through the takeover path) while visitors here finish.
                info!(
                    opens = self.ctx.rotation.opens(),
                    "asking the client to rotate to a fresh session before yamux runs out of stream ids"
                );
                self.ask_rotation("this session used most of its stream ids; open a new one")
                    .await;
                None
            }
            Event::ShuttingDown => {
                self.go_away(ErrorCode::ShuttingDown, "the server is shutting down")
                    .await;
                self.begin_drain(timing.drain_timeout, "the server is shutting down")
                    .await;
                None
            }
            Event::Reloaded => self.reloaded().await,
            Event::Drained(end) => {
                let reason = match std::mem::replace(&mut self.phase, Phase::Serving) {
                    Phase::Draining { reason, .. } => reason,
                    _ => String::new(),
                };
                Some(match end {
                    DrainEnd::Finished => Outcome::Drain(reason),
                    DrainEnd::DeadlinePassed => Outcome::Abort(format!(
                        "{reason}; drain deadline passed, remaining visitors reset"
                    )),
                })
            }
            Event::Beat(Beat::Silent(silent)) => {
                warn!(silent_for = %crate::human::Human(silent), "the client answered no ping in time; closing its session");
                Some(Outcome::Abort("the client stopped answering pings".into()))
            }
            Event::Beat(Beat::Ping(seq)) => {
                if let Err(e) = write_message(&mut self.ctrl, &Message::Ping(seq)).await {
                    return Some(Outcome::Abort(format!("sending a ping: {e}")));
                }
                None
            }
            Event::Visit(stream) => {
                self.visit(stream);
                None
            }
            Event::Message(msg) => self.message(msg).await,
        }
    }

    /// Asks the client for a fresh session (GoAway `Rotate` with `why`), which takes over the
    /// ports (ending this one through the takeover) while visitors here finish.
    async fn ask_rotation(&mut self, why: &str) {
        self.go_away(ErrorCode::Rotate, why).await;
        self.phase = match self.phase {
            Phase::ClientLeaving { .. } => Phase::ClientLeaving {
                rotation_asked: true,
            },
            _ => Phase::RotationAsked,
        };
    }

    /// Sends nothing more but a drain: the session's services stop (a newer session may take the
    /// ports), and its visitors get `timeout` to finish.
    async fn begin_drain(&mut self, timeout: Duration, reason: &str) {
        self.ctx.stop_services().await;
        self.phase = Phase::Draining {
            drain: Drain::start(self.ctx.visitors.tracker(), timeout),
            reason: reason.into(),
            replaced_unannounced: false,
        };
    }

    /// A visit substream (`ncx visit`), counted against the session's visitor limit before a task
    /// exists for it.
    fn visit(&self, stream: yamux::Stream) {
        let ctx = &self.ctx;
        if ctx.services_stopped() {
            return; // going away: dropping the stream resets it
        }
        match ctx.limits.visitors.clone().try_acquire_owned() {
            Ok(permit) => {
                let span = tracing::info_span!("visit", service = tracing::field::Empty);
                ctx.visitors.spawn(
                    super::private::visit(ctx.clone(), stream, self.identity.clone(), permit)
                        .instrument(span),
                );
            }
            Err(_) => {
                if let Some(held_back) = ctx.limits.log.allow() {
                    warn!(
                        limit = ctx.shared.settings.max_visitors_per_session,
                        held_back, "visit refused: the session has reached its visitor limit"
                    );
                }
            }
        }
    }

    /// Handles one message on the control stream; `Some` ends the session.
    async fn message(&mut self, msg: Result<Message, ReadError>) -> Option<Outcome> {
        let registers = matches!(
            msg,
            Ok(Message::Register { .. }
                | Message::RegisterPrivate { .. }
                | Message::RegisterUdp { .. }
                | Message::RegisterPrivateUdp { .. })
        );
        if registers && !self.live && self.phase.accepts_registrations() {
            self.live = true;
            self.take_over().await;
        }
        let reply = match msg {
            Ok(
                Message::Register { service, .. }
                | Message::RegisterPrivate { service, .. }
                | Message::RegisterUdp { service, .. }
                | Message::RegisterPrivateUdp { service, .. },
            ) if !self.phase.accepts_registrations() => Message::ServiceRefused {
                service,
                code: ErrorCode::ShuttingDown,
                message: Text::new("the session is going away"),
            },
            Ok(Message::Register {
                service,
                remote_port,
                access,
                group,
            }) => self.services.register(service, remote_port, access, group),
            Ok(Message::RegisterPrivate {
                service,
                visitors,
                group,
            }) => self
                .services
                .register_private(service, visitors, group, false),
            Ok(Message::RegisterPrivateUdp { service, visitors }) => self
                .services
                .register_private(service, visitors, None, true),
            Ok(Message::RegisterUdp {
                service,
                remote_port,
                access,
            }) => self.services.register_udp(service, remote_port, access),
            Ok(Message::ServiceHealth { service, unhealthy }) => {
                self.services.health(&service, unhealthy.as_ref());
                return None;
            }
            Ok(Message::Withdraw { service }) => self.services.withdraw(service).await,
            Ok(Message::Ping(v)) => Message::Pong(v),
            Ok(Message::Pong(seq)) => {
                if let Some(rtt) = self.heartbeat.answered(seq) {
                    self.ctx.shared.metrics.rtt().observe(rtt);
                    let micros = u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX).max(1);
                    self.ctx.status.rtt_micros.store(micros, Ordering::Relaxed);
                }
                return None;
            }
            Ok(Message::GoAway {
                code: ErrorCode::Rotate,
                message,
            }) if self.phase.accepts_registrations() => {
                // The client reloads its connection: its new session takes over as after a
                // rotation this side asked for, and the visitors here finish without a deadline.
                info!(reason = %message, "the client announces a new session; its ports and visitors stay until that session takes over");
                self.phase = Phase::RotationAsked;
                return None;
            }
            Ok(Message::GoAway {
                code: ErrorCode::Rotate,
                message,
            }) if self.phase.replaced_unannounced() => {
                // The same announcement, overtaken by the new session it announces.
                info!(reason = %message, "the client announces a new session, which has taken over already; the visitors here finish without a deadline");
                if let Phase::Draining {
                    drain,
                    replaced_unannounced,
                    ..
                } = &mut self.phase
                {
                    *drain = Drain::start(self.ctx.visitors.tracker(), UNBOUNDED_DRAIN);
                    *replaced_unannounced = false;
                }
                return None;
            }
            Ok(Message::GoAway { code, message }) => {
                info!(%code, reason = %message, "the client is going away; releasing its ports");
                // A go-away after this side's own leaves the drain as it is.
                if !self.phase.is_draining() {
                    self.phase = Phase::ClientLeaving {
                        rotation_asked: self.phase.rotation_asked(),
                    };
                }
                self.ctx.stop_services().await;
                return None;
            }
            Ok(Message::Error { code, message }) => {
                return Some(Outcome::Abort(format!(
                    "the client ended the session: {message} ({code})"
                )))
            }
            Ok(other) => {
                let text = format!(
                    "unexpected message type 0x{:02x} on the control stream",
                    other.type_byte()
                );
                refuse(
                    &mut self.ctrl,
                    &Refusal::new(ErrorCode::ProtocolViolation, text.as_str()),
                )
                .await;
                return Some(Outcome::Abort(text));
            }
            Err(ReadError::Closed) => {
                return Some(Outcome::Abort(
                    "the client closed the control stream".into(),
                ))
            }
            Err(ReadError::Invalid(e)) => {
                let text = format!("malformed control frame: {e}");
                refuse(
                    &mut self.ctrl,
                    &Refusal::new(ErrorCode::ProtocolViolation, text.as_str()),
                )
                .await;
                return Some(Outcome::Abort(text));
            }
            Err(e) => return Some(Outcome::Abort(format!("reading the control stream: {e}"))),
        };
        if let Err(e) = write_message(&mut self.ctrl, &reply).await {
            return Some(Outcome::Abort(format!("writing the control stream: {e}")));
        }
        None
    }

    /// Makes this session the identity's live session. A client must never be locked out by its
    /// own stale session: the previous one is told to go away and its ports are awaited. Done at
    /// the first registration, so a session that only visits (`ncx visit`) never displaces the
    /// identity's client.
    async fn take_over(&self) {
        let registry = &self.ctx.shared.registry;
        let key = (self.identity.clone(), self.instance.clone());
        if let Some(old) = registry.install_session(&key, self.ctx.entry()) {
            info!(
                old_session = old.id,
                "taking over from the identity's previous session"
            );
            old.replace.cancel();
            if tokio::time::timeout(TAKEOVER_TIMEOUT, old.ports_released.cancelled())
                .await
                .is_err()
            {
                warn!(
                    old_session = old.id,
                    "the previous session did not release its ports in time"
                );
            }
        }
    }

    async fn go_away(&mut self, code: ErrorCode, message: &str) {
        let msg = Message::GoAway {
            code,
            message: Text::new(message),
        };
        if let Err(e) = write_message(&mut self.ctrl, &msg).await {
            debug!(error = %e, "could not send go-away");
        }
    }
}

/// Tells the client why its session ends (the `Error` message) and closes the control stream.
pub(super) async fn refuse(ctrl: &mut ControlStream, refusal: &Refusal) {
    if let Err(e) = write_message(ctrl, &refusal.to_error()).await {
        debug!(error = %e, "could not tell the client why");
    }
    let _ = tokio::io::AsyncWriteExt::shutdown(ctrl).await;
}
