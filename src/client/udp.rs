//! One UDP flow the server opened: a socket of the flow's own, connected to the local service,
//! so that the service's replies come back on it and go to the right visitor. Datagrams cross the
//! substream framed as `proto/README.md` says.
//!
//! A reply that finds the flow's queue to the substream full is dropped and counted, never
//! queued without bound; the flow ends when the server ends it (idle, or the visitor's limits),
//! the session goes, or the service is withdrawn.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use ncx_proto::{encode_datagram, DatagramReader};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::ratelimit::LogLimiter;
use crate::splice::Substream;

/// Replies queued for the substream; one more is dropped.
const FLOW_QUEUE: usize = 64;

/// Opens the flow's socket: bound to any port of the local address's family and connected to
/// it, so that only its replies are read.
pub(super) async fn local_socket(local: &str) -> std::io::Result<UdpSocket> {
    let addr = tokio::net::lookup_host(local)
        .await?
        .next()
        .ok_or_else(|| std::io::Error::other(format!("{local} resolves to no address")))?;
    let any: std::net::SocketAddr = if addr.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(any).await?;
    socket.connect(addr).await?;
    Ok(socket)
}

/// Carries the flow's datagrams both ways until the server ends it or `stop`; each datagram to
/// the service starts with `prefix` (a PROXY v2 header), if given.
pub(super) async fn carry(
    socket: UdpSocket,
    prefix: Option<Vec<u8>>,
    sub: Substream,
    stop: &CancellationToken,
) {
    let socket = Arc::new(socket);
    let (mut rd, mut wr) = tokio::io::split(sub);
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(FLOW_QUEUE);
    let dropped = AtomicU64::new(0);
    let log = LogLimiter::default();
    // The service's replies, queued for the substream.
    let replies = async {
        let mut buf = vec![0u8; 65_536];
        loop {
            let n = match socket.recv(&mut buf).await {
                Ok(n) => n,
                // An ICMP error of an earlier send (the service is not listening): the flow
                // goes on, as UDP would.
                Err(e) => {
                    debug!(error = %e, "receiving from the local service");
                    continue;
                }
            };
            if tx.is_closed() {
                return;
            }
            if tx.try_send(buf[..n].to_vec()).is_err() {
                let total = dropped.fetch_add(1, Ordering::Relaxed) + 1;
                if let Some(held_back) = log.allow() {
                    warn!(
                        dropped_total = total,
                        held_back, "reply dropped: the flow's queue to the server is full"
                    );
                }
            }
        }
    };
    let writer = async {
        let mut frame = Vec::new();
        while let Some(d) = rx.recv().await {
            frame.clear();
            if encode_datagram(&d, &mut frame).is_err() {
                continue;
            }
            if wr.write_all(&frame).await.is_err() {
                return;
            }
        }
    };
    let requests = async {
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
                    Err(e) => return format!("protocol violation by the server: {e}"),
                };
                input = &input[taken..];
                if let Some(d) = d {
                    let _ = match &prefix {
                        Some(p) => socket.send(&[p.as_slice(), &d].concat()).await,
                        None => socket.send(&d).await,
                    };
                }
            }
        }
    };
    let how = tokio::select! {
        how = requests => how,
        () = replies => "reset: the substream failed".to_owned(),
        () = writer => "reset: the substream failed".to_owned(),
        _ = stop.cancelled() => "ended: the session or the service went".to_owned(),
    };
    let dropped = dropped.load(Ordering::Relaxed);
    if how.starts_with("protocol") {
        warn!(reason = %how, "UDP flow closed");
    } else if dropped > 0 {
        info!(reason = %how, dropped, "UDP flow ended");
    } else {
        debug!(reason = %how, "UDP flow ended");
    }
}
