//! UDP visits (`[[visits]]` with `protocol = "udp"`): a local UDP port whose senders reach a
//! private UDP service of another client. Each local sender (address and port) is a flow with a
//! visit substream of its own, `VisitUdp { owner, service }`, the server's `VisitorStatus`, then
//! the flow's datagrams framed both ways; replies go back to the sender they belong to.
//!
//! As on the server, a datagram that finds its flow's queue full is dropped and counted, and a
//! flow ends after [`IDLE`] without a datagram either way (or with the session).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ncx_proto::{encode_datagram, DatagramReader, Message, Name};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn, Instrument};

use super::target::Target;
use crate::framed::{write_message, MessageReader};
use crate::ratelimit::LogLimiter;
use crate::splice::Substream;
use crate::timeouts::{OPEN, VISIT_ANSWER};

/// Datagrams queued for a flow's substream; one more is dropped.
const FLOW_QUEUE: usize = 64;

/// A flow without a datagram either way for this long ends: the server's default for its own
/// flows (`udp_idle_timeout_secs`).
pub const IDLE: Duration = crate::config::DEFAULT_UDP_IDLE_TIMEOUT;

/// Flows at once on one visit's port; a new sender beyond them is dropped.
const MAX_FLOWS: usize = 1024;

type Flows = Arc<Mutex<HashMap<SocketAddr, mpsc::Sender<Vec<u8>>>>>;

fn lock(flows: &Flows) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, mpsc::Sender<Vec<u8>>>> {
    flows.lock().unwrap_or_else(|e| e.into_inner())
}

/// Serves one UDP visit's local port until `cancel`.
pub(super) async fn serve(
    socket: UdpSocket,
    target: (Name, Name),
    targets: watch::Receiver<Option<Target>>,
    wait: Duration,
    cancel: CancellationToken,
    tracker: TaskTracker,
) {
    let socket = Arc::new(socket);
    let flows: Flows = Arc::default();
    let log = Arc::new(LogLimiter::default());
    let dropped = AtomicU64::new(0);
    let mut buf = vec![0u8; 65_536];
    loop {
        let (n, from) = tokio::select! {
            _ = cancel.cancelled() => return,
            r = socket.recv_from(&mut buf) => match r {
                Ok(got) => got,
                Err(e) => {
                    debug!(error = %e, "receiving on the visit's UDP port");
                    continue;
                }
            },
        };
        let existing = lock(&flows).get(&from).cloned();
        if let Some(tx) = existing {
            match tx.try_send(buf[..n].to_vec()) {
                Ok(()) => continue,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    let total = dropped.fetch_add(1, Ordering::Relaxed) + 1;
                    if let Some(held_back) = log.allow() {
                        warn!(%from, dropped_total = total, held_back, "datagram dropped: its flow's queue is full");
                    }
                    continue;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    lock(&flows).remove(&from);
                }
            }
        }
        if lock(&flows).len() >= MAX_FLOWS {
            if let Some(held_back) = log.allow() {
                warn!(%from, held_back, "datagram dropped: the visit has {MAX_FLOWS} flows already");
            }
            continue;
        }
        let (tx, rx) = mpsc::channel(FLOW_QUEUE);
        let _ = tx.try_send(buf[..n].to_vec());
        lock(&flows).insert(from, tx);
        let flow = Flow {
            socket: socket.clone(),
            from,
            target: target.clone(),
            flows: flows.clone(),
            log: log.clone(),
        };
        let span = tracing::info_span!("local", peer = %from, udp = true);
        tracker.spawn(
            flow.run(rx, targets.clone(), wait, cancel.clone())
                .instrument(span),
        );
    }
}

/// One local sender's flow.
struct Flow {
    socket: Arc<UdpSocket>,
    from: SocketAddr,
    target: (Name, Name),
    flows: Flows,
    log: Arc<LogLimiter>,
}

impl Flow {
    async fn run(
        self,
        rx: mpsc::Receiver<Vec<u8>>,
        targets: watch::Receiver<Option<Target>>,
        wait: Duration,
        cancel: CancellationToken,
    ) {
        let how = self.carry(rx, targets, wait, &cancel).await;
        debug!(reason = %how, "UDP visit flow ended");
        let mut flows = lock(&self.flows);
        if flows.get(&self.from).is_some_and(|tx| tx.is_closed()) {
            flows.remove(&self.from);
        }
    }

    async fn carry(
        &self,
        mut rx: mpsc::Receiver<Vec<u8>>,
        mut targets: watch::Receiver<Option<Target>>,
        wait: Duration,
        cancel: &CancellationToken,
    ) -> String {
        let ready = |t: &Option<Target>| {
            t.as_ref()
                .is_some_and(|t| t.accepting.load(Ordering::SeqCst))
        };
        let target = tokio::select! {
            _ = cancel.cancelled() => return "stopped".into(),
            r = tokio::time::timeout(wait, targets.wait_for(ready)) => match r {
                Ok(Ok(t)) => t.clone().expect("wait_for checked it is set"),
                Ok(Err(_)) => return "stopped".into(),
                Err(_) => {
                    warn!("not connected to the server within {wait:?}; datagrams dropped");
                    return "not connected".into();
                }
            },
        };
        let _drain = target.visitors.member();
        let session_ended = target.visitors.token().clone();
        let Ok(Ok(stream)) = tokio::time::timeout(OPEN, target.handle.open()).await else {
            return "no substream to the server".into();
        };
        let sub = Substream::new(stream, target.handle.state().clone());
        let sub = match self.ask(sub).await {
            Ok(sub) => sub,
            Err(why) => {
                rx.close();
                return why;
            }
        };
        let start = Instant::now();
        let last = AtomicU64::new(0);
        let touch = || {
            let ms = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
            last.store(ms, Ordering::Relaxed);
        };
        let (mut rd, mut wr) = tokio::io::split(sub);
        let up = async {
            let mut frame = Vec::new();
            while let Some(d) = rx.recv().await {
                touch();
                frame.clear();
                if encode_datagram(&d, &mut frame).is_ok() && wr.write_all(&frame).await.is_err() {
                    return "reset: the substream failed".to_owned();
                }
            }
            "stopped".to_owned()
        };
        let down = async {
            let mut reader = DatagramReader::new();
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                let n = match rd.read(&mut buf).await {
                    Ok(0) => return "ended by the server".to_owned(),
                    Ok(n) => n,
                    Err(e) => return format!("reset: {e}"),
                };
                let mut input = &buf[..n];
                while !input.is_empty() {
                    let (taken, d) = match reader.feed(input) {
                        Ok(r) => r,
                        Err(e) => return format!("protocol violation: {e}"),
                    };
                    input = &input[taken..];
                    if let Some(d) = d {
                        touch();
                        let _ = self.socket.send_to(&d, self.from).await;
                    }
                }
            }
        };
        let idle = async {
            loop {
                let at = start + Duration::from_millis(last.load(Ordering::Relaxed)) + IDLE;
                if Instant::now() >= at {
                    return "idle".to_owned();
                }
                tokio::time::sleep_until(at).await;
            }
        };
        tokio::select! {
            how = up => how,
            how = down => how,
            how = idle => how,
            _ = session_ended.cancelled() => "the session ended".to_owned(),
            // A flow has no request in flight to finish: it ends with the visit.
            _ = cancel.cancelled() => "stopped".to_owned(),
        }
    }

    /// Sends the visit and reads the server's answer: the substream, ready for datagrams, or
    /// why not.
    async fn ask(&self, mut sub: Substream) -> Result<Substream, String> {
        let (owner, service) = &self.target;
        let exchange = async {
            write_message(
                &mut sub,
                &Message::VisitUdp {
                    owner: owner.clone(),
                    service: service.clone(),
                },
            )
            .await
            .map_err(|e| format!("sending the visit: {e}"))?;
            MessageReader::new()
                .read(&mut sub)
                .await
                .map_err(|e| format!("reading the server's answer: {e}"))
        };
        match tokio::time::timeout(VISIT_ANSWER, exchange).await {
            Ok(Ok(Message::VisitorStatus { refusal: None })) => Ok(sub),
            Ok(Ok(Message::VisitorStatus {
                refusal: Some((code, message)),
            })) => {
                if let Some(held_back) = self.log.allow() {
                    warn!(%code, reason = %message, held_back, "the server refused the UDP visit; datagrams dropped");
                }
                Err(format!("refused: {message}"))
            }
            Ok(Ok(other)) => Err(format!(
                "the server answered with message type 0x{:02x}",
                other.type_byte()
            )),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(format!("no answer within {VISIT_ANSWER:?}")),
        }
    }
}
