//! Before a client's TLS: who the connection is really from. A connection from a load balancer
//! listed in `proxy_protocol_from` must begin with a PROXY protocol header (v1 or v2), and the
//! client it names is the session's peer from then on: the failed-authentication guard, the
//! handshake shares and every log line see the real client, not the balancer. Any other
//! connection is its own client, and a header it sends is just bytes that fail the TLS handshake.
//! Then, where the listener is shared, the first bytes sort the connection: on a port shared with
//! a website (`fallback`), the ClientHello tells ncx clients from the website's visitors, who are
//! passed on (`fallback.rs`); where WebSocket clients are taken (`websocket_path`), an upgrade of
//! that path becomes a session inside a WebSocket.

use std::net::SocketAddr;
use std::sync::Arc;

use ncx_proto::{read_proxy_header, ProxiedAddrs, ProxyHeaderError, WsRole, MAX_PROXY_HEADER_LEN};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn, Instrument};

use super::context::Shared;
use super::fallback::{self, Sorted};
use super::handshakes::HandshakeSlot;
use super::session;
use crate::prefixed::Prefixed;
use crate::websocket::handshake::{self, Request};
use crate::websocket::WsStream;

/// Why a trusted balancer's connection was not taken.
#[derive(Debug, thiserror::Error)]
enum HeaderFailure {
    #[error("{0}")]
    Invalid(#[from] ProxyHeaderError),
    #[error("it closed before its PROXY header was complete")]
    Closed,
    #[error("reading its PROXY header failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Takes a new connection from `peer` through to the end of its session (or, on a port shared
/// with a website, of its website connection).
pub(super) async fn arrive(
    shared: Arc<Shared>,
    mut tcp: TcpStream,
    peer: SocketAddr,
    slot: HandshakeSlot,
    cancel: CancellationToken,
) {
    let deadline = Instant::now() + shared.settings.handshake_timeout;
    let local = crate::net::local_or_unspecified(&tcp);
    let balancer = shared
        .settings
        .proxy_protocol_from
        .iter()
        .any(|c| c.contains(peer.ip()));
    if !balancer {
        let span = tracing::info_span!("session", %peer, client = tracing::field::Empty);
        let first = Vec::new();
        return sorted(shared, tcp, first, peer, local, slot, deadline, cancel)
            .instrument(span)
            .await;
    }
    let read = tokio::select! {
        _ = cancel.cancelled() => return,
        _ = slot.evicted() => {
            debug!(%peer, "PROXY header read dropped to make room for a newer connection");
            return;
        }
        r = tokio::time::timeout_at(deadline, read_header(&mut tcp)) => r,
    };
    let (header, rest) = match read {
        Ok(Ok(read)) => read,
        Ok(Err(e)) => {
            // A balancer that sends no header or a broken one is misconfigured: the operator
            // needs to know, and every connection through it fails the same way.
            if let Some(held_back) = shared.admission.unauthenticated_log.allow() {
                warn!(balancer = %peer, held_back, "refused a connection from a load balancer listed in proxy_protocol_from: {e}");
            }
            return;
        }
        Err(_) => {
            debug!(balancer = %peer, "a load balancer's PROXY header did not arrive in time");
            return;
        }
    };
    let (client, local) = header.addrs.unwrap_or((peer, local));
    // The balancer's slot stood for a connection whose client was not known yet; from here the
    // handshake counts against the client's own share.
    let slot = if client.ip() == peer.ip() {
        slot
    } else {
        shared.admission.claim_handshake(client.ip())
    };
    let span =
        tracing::info_span!("session", peer = %client, via = %peer, client = tracing::field::Empty);
    sorted(shared, tcp, rest, client, local, slot, deadline, cancel)
        .instrument(span)
        .await
}

/// Where the listener is shared (a website behind it, WebSocket clients on it), reads until the
/// first bytes say whose the connection is: passes the website's on, upgrades an ncx client's
/// WebSocket, and runs the session of every ncx client. `first` holds the bytes already read
/// after any PROXY header.
#[allow(clippy::too_many_arguments)]
async fn sorted(
    shared: Arc<Shared>,
    mut tcp: TcpStream,
    mut first: Vec<u8>,
    peer: SocketAddr,
    local: SocketAddr,
    slot: HandshakeSlot,
    deadline: Instant,
    cancel: CancellationToken,
) {
    let websocket = shared.settings.websocket_path.is_some();
    if shared.fallback.is_none() && !websocket {
        let io = Prefixed::new(first, tcp);
        return session::run(shared, io, peer, local, slot, deadline, cancel).await;
    }
    let read = tokio::select! {
        _ = cancel.cancelled() => return,
        _ = slot.evicted() => {
            debug!("handshake dropped to make room for a newer connection");
            return;
        }
        r = tokio::time::timeout_at(deadline, read_until_sorted(&mut tcp, &mut first, websocket)) => r,
    };
    let sorted = match read {
        Ok(Ok(sorted)) => sorted,
        Ok(Err(e)) => {
            return debug!(error = %e, "a connection closed before its first bytes were sorted")
        }
        Err(_) => return debug!("a connection's first bytes did not arrive in time"),
    };
    let upgrade = match (sorted, &shared.fallback) {
        (Sorted::Ncx, _) | (Sorted::Website, None) => {
            let io = Prefixed::new(first, tcp);
            return session::run(shared, io, peer, local, slot, deadline, cancel).await;
        }
        (Sorted::Website, Some(fallback)) => {
            drop(slot);
            return fallback.pass(tcp, peer, first, cancel.cancelled()).await;
        }
        (Sorted::Http, _) => upgrade_request(&shared, &first),
    };
    match upgrade {
        Some((head_len, key)) => {
            if let Err(e) = tcp.write_all(&handshake::accept_response(&key)).await {
                return debug!(error = %e, "the WebSocket upgrade could not be answered");
            }
            let rest = first.split_off(head_len);
            let io = WsStream::new(Prefixed::new(rest, tcp), WsRole::Server);
            session::run(shared, io, peer, local, slot, deadline, cancel).await
        }
        None => match &shared.fallback {
            Some(fallback) => {
                drop(slot);
                fallback.pass(tcp, peer, first, cancel.cancelled()).await
            }
            None => {
                // Not ncx's path, and no website to hand it to.
                let _ = tcp.write_all(handshake::NOT_FOUND).await;
            }
        },
    }
}

/// If `first` begins with a WebSocket upgrade of the server's `websocket_path`: the head's length
/// and the client's key.
fn upgrade_request(shared: &Shared, first: &[u8]) -> Option<(usize, String)> {
    let want = shared.settings.websocket_path.as_deref()?;
    let len = handshake::head_len(first).ok()??;
    match handshake::read_request(&first[..len]) {
        Request::Upgrade { path, key } if path.split('?').next() == Some(want) => Some((len, key)),
        _ => None,
    }
}

/// Reads into `first` until [`fallback::sort`] decides (it does within
/// [`fallback::MAX_SORT_BYTES`]) and, for plain HTTP, until the request's head is complete (or
/// past its cap).
async fn read_until_sorted(
    tcp: &mut TcpStream,
    first: &mut Vec<u8>,
    websocket: bool,
) -> std::io::Result<Sorted> {
    loop {
        let done = match fallback::sort(first, websocket) {
            Some(Sorted::Http) => handshake::head_len(first).map_or(true, |h| h.is_some()),
            Some(_) => true,
            None => false,
        };
        if done {
            return Ok(fallback::sort(first, websocket).unwrap_or(Sorted::Website));
        }
        let cap = fallback::MAX_SORT_BYTES.max(handshake::MAX_HEAD);
        let room = cap.saturating_sub(first.len());
        let mut chunk = vec![0u8; room.min(4096)];
        let n = tcp.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        first.extend_from_slice(&chunk[..n]);
    }
}

/// Reads the header, and whatever arrived after it in the same reads (the start of the client's
/// TLS), which is returned to be replayed.
async fn read_header(tcp: &mut TcpStream) -> Result<(ProxiedAddrs, Vec<u8>), HeaderFailure> {
    let mut buf = [0u8; MAX_PROXY_HEADER_LEN];
    let mut have = 0;
    loop {
        // The parser decides within MAX_PROXY_HEADER_LEN bytes, so the buffer never fills up
        // without an answer; the check keeps that a bound rather than an assumption.
        if have == buf.len() {
            return Err(ProxyHeaderError::V2TooLong(have).into());
        }
        let n = tcp.read(&mut buf[have..]).await?;
        if n == 0 {
            return Err(HeaderFailure::Closed);
        }
        have += n;
        if let Some(header) = read_proxy_header(&buf[..have])? {
            return Ok((header, buf[header.len..have].to_vec()));
        }
    }
}
