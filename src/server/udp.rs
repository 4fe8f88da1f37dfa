//! UDP services: a public UDP port whose visitors are flows. Each visitor address (a flow) gets a
//! substream of its own to the client, carrying the flow's datagrams framed as
//! `proto/README.md` says; the client sends each to the local service from a socket of the flow's
//! own, so replies go back to the right visitor.
//!
//! A flow ends with its service (withdrawn, or the session draining): UDP has no request in
//! flight to finish, and a visitor that sends again starts a new flow wherever the service is.
//!
//! UDP stays UDP: a datagram that finds its flow's queue full (the substream is not taking data
//! fast enough) is dropped and counted, never queued without bound, so no flow and no other
//! stream of the session waits for it. A flow ends after `udp_idle_timeout` without a datagram
//! either way. Flows count as visitors against the same limits as TCP visitors (identity,
//! session, service), and the service's access rules are checked for every new source address.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ncx_proto::{encode_datagram, AccessRules, DatagramReader, Name};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

use super::context::SessionCtx;
use super::opener::{open_to_client, Early};
use super::ports::bind_port;
use super::public::{spawn_public, Places, Started};
use super::registry::Port;
use crate::audit::{AuditRecord, VisitorEnd};
use crate::config::IdentityPolicy;
use crate::ratelimit::LogLimiter;
use crate::refusal::Refusal;

/// Datagrams queued for a flow's substream; one more is dropped. Enough for a burst of a game or
/// a VPN while the substream's window opens, small enough that a stalled flow holds little.
const FLOW_QUEUE: usize = 64;

/// The largest UDP payload a socket can receive, with room to tell an oversized one.
const RECV_BUF: usize = 65_536;

/// One public UDP service as its socket serves it.
pub(super) struct UdpPublic {
    pub service: Name,
    pub port: u16,
    /// Checked for every new flow (a flow is one source address).
    pub access: AccessRules,
    pub identity: Name,
    /// The identity's visitor places, shared by all its sessions.
    pub identity_permits: Arc<Semaphore>,
    /// Stops the service.
    pub stop: CancellationToken,
    /// While the client reports the local service unhealthy, new flows are refused.
    pub healthy: Arc<AtomicBool>,
}

/// Binds the UDP port of `service` (`port`, or with 0 any the policy allows) for `ctx`'s session
/// and serves it in the session's listeners.
pub(super) fn start(
    ctx: &Arc<SessionCtx>,
    identity: &Name,
    policy: &IdentityPolicy,
    identity_permits: Arc<Semaphore>,
    (service, port, access): (Name, u16, AccessRules),
) -> Result<Started, Refusal> {
    let (socket, port) = bind_port::<UdpSocket>(ctx, identity, policy, port)?;
    info!(%service, addr = %SocketAddr::new(policy.bind, port), "UDP service exposed");
    let span = tracing::info_span!("service", %service, port, udp = true);
    Ok(spawn_public(ctx, port, span, |stop, healthy| {
        serve_udp(
            ctx.clone(),
            socket,
            UdpPublic {
                service,
                port,
                access,
                identity: identity.clone(),
                identity_permits,
                stop,
                healthy,
            },
        )
    }))
}

/// The flows of one service, by visitor address.
type Flows = Arc<Mutex<HashMap<SocketAddr, mpsc::Sender<Vec<u8>>>>>;

fn lock(flows: &Flows) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, mpsc::Sender<Vec<u8>>>> {
    flows.lock().unwrap_or_else(|e| e.into_inner())
}

/// Serves one public UDP port until `stop`, then releases it. Flows in flight end with the
/// session's visitors.
pub(super) async fn serve_udp(ctx: Arc<SessionCtx>, socket: UdpSocket, public: UdpPublic) {
    let UdpPublic {
        service,
        port,
        access,
        identity,
        identity_permits,
        stop,
        healthy,
    } = public;
    let socket = Arc::new(socket);
    let flows: Flows = Arc::default();
    let service_permits = Arc::new(Semaphore::new(ctx.shared.settings.max_visitors_per_service));
    let dropped = Arc::new(AtomicU64::new(0));
    let refused_log = LogLimiter::default();
    let mut buf = vec![0u8; RECV_BUF];
    loop {
        let (n, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            r = socket.recv_from(&mut buf) => match r {
                Ok(got) => got,
                // An ICMP error of an earlier send (some systems report them here): not ours
                // to act on.
                Err(e) => {
                    debug!(error = %e, "receiving on the UDP port");
                    continue;
                }
            },
        };
        let datagram = buf[..n].to_vec();
        let existing = lock(&flows).get(&peer).cloned();
        if let Some(tx) = existing {
            match tx.try_send(datagram) {
                Ok(()) => continue,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    ctx.shared
                        .metrics
                        .udp_dropped(identity.as_str(), service.as_str());
                    let total = dropped.fetch_add(1, Ordering::Relaxed) + 1;
                    if let Some(held_back) = refused_log.allow() {
                        warn!(%peer, dropped_total = total, held_back, "datagram dropped: its flow's queue is full");
                    }
                    continue;
                }
                // The flow just ended: this datagram starts a new one.
                Err(mpsc::error::TrySendError::Closed(d)) => {
                    lock(&flows).remove(&peer);
                    let _ = d;
                }
            }
        }
        if !access.permits(peer.ip()) {
            if let Some(held_back) = refused_log.allow() {
                warn!(%peer, held_back, "datagram refused by the service's access rules");
            }
            continue;
        }
        if !healthy.load(Ordering::Relaxed) {
            if let Some(held_back) = refused_log.allow() {
                warn!(%peer, held_back, "datagram refused: the client reports the service unhealthy");
            }
            continue;
        }
        let settings = &ctx.shared.settings;
        let permits = identity_permits
            .clone()
            .try_acquire_owned()
            .map_err(|_| ("identity", settings.max_visitors_per_identity))
            .and_then(|i| {
                ctx.limits
                    .visitors
                    .clone()
                    .try_acquire_owned()
                    .map(|s| (i, s))
                    .map_err(|_| ("session", settings.max_visitors_per_session))
            })
            .and_then(|(i, s)| {
                service_permits
                    .clone()
                    .try_acquire_owned()
                    .map(|v| (i, s, v))
                    .map_err(|_| ("service", settings.max_visitors_per_service))
            });
        let places = match permits {
            Ok(p) => p,
            Err((which, limit)) => {
                if let Some(held_back) = ctx.limits.log.allow() {
                    warn!(%peer, limit, held_back, "new UDP flow refused: the {which} has reached its visitor limit");
                }
                continue;
            }
        };
        let (tx, rx) = mpsc::channel(FLOW_QUEUE);
        let _ = tx.try_send(buf[..n].to_vec());
        lock(&flows).insert(peer, tx);
        let span = tracing::info_span!("flow", %peer);
        let flow = Flow {
            ctx: ctx.clone(),
            socket: socket.clone(),
            peer,
            service: service.clone(),
            identity: identity.clone(),
            flows: flows.clone(),
            places,
            stop: stop.clone(),
        };
        ctx.visitors.spawn(flow.run(rx).instrument(span));
    }
    drop(socket);
    ctx.shared.registry.release_port(Port::Udp(port), ctx.id);
    debug!("UDP port released");
}

/// One flow: a visitor address of a UDP service and its substream.
struct Flow {
    ctx: Arc<SessionCtx>,
    socket: Arc<UdpSocket>,
    peer: SocketAddr,
    service: Name,
    identity: Name,
    flows: Flows,
    places: Places,
    /// The service's stop: a flow has no request in flight to finish, so it ends with the
    /// service (withdrawn, the session draining or gone).
    stop: CancellationToken,
}

impl Flow {
    async fn run(self, rx: mpsc::Receiver<Vec<u8>>) {
        let mut metrics = self
            .ctx
            .shared
            .metrics
            .visitor(self.identity.as_str(), self.service.as_str());
        metrics.meter.a_to_b.push(self.ctx.status.bytes_in.clone());
        metrics.meter.b_to_a.push(self.ctx.status.bytes_out.clone());
        let record = AuditRecord {
            service: &self.service,
            owner: None,
            visitor: self.peer,
            identity: None,
            started: Instant::now(),
        };
        let end = self.carry(rx, &metrics.meter).await;
        // This flow's entry goes; a newer flow of the same address may have replaced it already,
        // whose sender is still open.
        {
            let mut flows = lock(&self.flows);
            if flows.get(&self.peer).is_some_and(|tx| tx.is_closed()) {
                flows.remove(&self.peer);
            }
        }
        record.emit(&end);
        metrics.ended(&end.how);
        drop(self.places);
    }

    /// Opens the substream and carries datagrams both ways until the flow is idle, the client
    /// ends it, or the session goes.
    async fn carry(
        &self,
        mut rx: mpsc::Receiver<Vec<u8>>,
        meter: &crate::splice::Meter,
    ) -> VisitorEnd {
        let public = self
            .socket
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let opened = Box::pin(open_to_client(
            &self.ctx,
            &self.service,
            self.peer,
            public,
            Early::Nothing,
        ))
        .await;
        let sub = match opened {
            Ok((sub, _)) => sub,
            Err(failure) => {
                rx.close();
                return VisitorEnd::before_data(failure.end);
            }
        };
        debug!("UDP flow connected");
        let idle = self.ctx.shared.settings.udp_idle_timeout;
        let start = Instant::now();
        // Milliseconds since `start` of the last datagram either way.
        let last = AtomicU64::new(0);
        let touch = || {
            let ms = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
            last.store(ms, Ordering::Relaxed);
        };
        let (mut rd, mut wr) = tokio::io::split(sub);
        let (bytes_in, bytes_out) = (AtomicU64::new(0), AtomicU64::new(0));
        let up = async {
            let mut frame = Vec::new();
            while let Some(d) = rx.recv().await {
                touch();
                frame.clear();
                if encode_datagram(&d, &mut frame).is_err() {
                    continue;
                }
                if wr.write_all(&frame).await.is_err() {
                    return "reset: the substream failed".to_owned();
                }
                bytes_in.fetch_add(d.len() as u64, Ordering::Relaxed);
                meter.a_to_b_before(d.len() as u64);
            }
            "finished".to_owned()
        };
        let down = async {
            let mut reader = DatagramReader::new();
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                let n = match rd.read(&mut buf).await {
                    Ok(0) => return "finished: the client ended the flow".to_owned(),
                    Ok(n) => n,
                    Err(e) => return format!("reset: {e}"),
                };
                let mut input = &buf[..n];
                while !input.is_empty() {
                    let (taken, d) = match reader.feed(input) {
                        Ok(r) => r,
                        Err(e) => return format!("reset: protocol violation by the client: {e}"),
                    };
                    input = &input[taken..];
                    if let Some(d) = d {
                        touch();
                        bytes_out.fetch_add(d.len() as u64, Ordering::Relaxed);
                        meter.b_to_a_moved(d.len() as u64);
                        let _ = self.socket.send_to(&d, self.peer).await;
                    }
                }
            }
        };
        let idle_out = async {
            loop {
                let since = Duration::from_millis(last.load(Ordering::Relaxed));
                let at = start + since + idle;
                if Instant::now() >= at {
                    return "finished: idle".to_owned();
                }
                tokio::time::sleep_until(at).await;
            }
        };
        let how = tokio::select! {
            how = up => how,
            how = down => how,
            how = idle_out => how,
            _ = self.stop.cancelled() => "finished: the service stopped".to_owned(),
            _ = self.ctx.visitors.cancelled() => "reset: session ended".to_owned(),
        };
        VisitorEnd {
            bytes_in: bytes_in.load(Ordering::Relaxed),
            bytes_out: bytes_out.load(Ordering::Relaxed),
            how,
        }
    }
}
