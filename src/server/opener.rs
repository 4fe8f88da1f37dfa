//! The substream opener that public visitors and private visits share: a new substream to the
//! owning client, the visitor header, the visitor's first bytes right behind it, and the client's
//! answer.

use std::net::SocketAddr;

use ncx_proto::{ErrorCode, Message, Name};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::warn;

use super::context::SessionCtx;
use crate::framed::{write_message, MessageReader};
use crate::refusal::Refusal;
use crate::splice::{SpliceEnd, Substream};
use crate::timeouts::{CLIENT_ANSWER, OPEN};

/// Most bytes of a visitor forwarded before the client's answer. Well below yamux's initial window
/// of 256 KiB, so forwarding them never waits for the client to read.
const EARLY_DATA: usize = 64 * 1024;

/// Bytes of a visitor read at a time before the client's answer.
const EARLY_READ: usize = 16 * 1024;

/// How a splice ended, in the words of the audit log.
pub(super) fn end_text(end: &SpliceEnd) -> String {
    match end {
        SpliceEnd::Finished => "finished".to_owned(),
        SpliceEnd::Reset(e) => format!("reset: {e}"),
        SpliceEnd::Cancelled => "reset: session ended".to_owned(),
    }
}

/// Why a visitor could not be connected to its service.
pub(super) struct OpenFailure {
    /// What to tell a visiting peer (private services).
    pub refusal: Refusal,
    /// How the visitor ended, for the audit log.
    pub end: String,
}

impl OpenFailure {
    fn new(code: ErrorCode, message: impl Into<String>, end: impl Into<String>) -> Self {
        OpenFailure {
            refusal: Refusal::new(code, message),
            end: end.into(),
        }
    }
}

/// What the opener does with a visitor's first bytes.
pub(super) enum Early<'a> {
    /// Nothing to forward (a private visit: its bytes follow the answer).
    Nothing,
    /// Forward them from the visitor's connection while the client connects.
    From(&'a mut TcpStream),
    /// The same, keeping them in the buffer, whose bytes (read for an earlier member of a group
    /// that could not take the visitor) are forwarded first: the visitor moves to another member
    /// with nothing lost.
    Kept(&'a mut TcpStream, &'a mut Vec<u8>),
}

/// Opens a substream to the client of `ctx` for a visitor of `service` from `peer` (which reached
/// the server at `public`), sends the visitor header and waits for the client's answer. Returns
/// the substream, ready for raw bytes, once the client is connected to its local service, and how
/// many of the visitor's bytes were forwarded already.
///
/// With `early` taken from the visitor's connection, up to [`EARLY_DATA`] bytes of it are
/// forwarded right behind the header instead of after the answer: the client reads them only once
/// connected to its service (and drops them if it cannot connect).
pub(super) async fn open_to_client(
    ctx: &SessionCtx,
    service: &Name,
    peer: SocketAddr,
    public: SocketAddr,
    early: Early<'_>,
) -> Result<(Substream, u64), OpenFailure> {
    let (mut early, mut kept) = match early {
        Early::Nothing => (None, None),
        Early::From(tcp) => (Some(tcp), None),
        Early::Kept(tcp, kept) => (Some(tcp), Some(kept)),
    };
    let cancel = ctx.visitors.token();
    let ended = || {
        OpenFailure::new(
            ErrorCode::ShuttingDown,
            "the service's session ended",
            "reset: session ended",
        )
    };
    let _waiting = ctx.shared.metrics.open_waiting();
    // An open is "in flight" until the client answers; yamux stalls beyond 256 such streams.
    let in_flight = tokio::select! {
        _ = cancel.cancelled() => return Err(ended()),
        r = tokio::time::timeout(OPEN, ctx.limits.opens_in_flight.clone().acquire_owned()) => r,
    };
    let Ok(Ok(in_flight)) = in_flight else {
        if let Some(held_back) = ctx.limits.log.allow() {
            warn!(
                held_back,
                "visitor refused: {} substreams await the client's answer",
                ctx.shared.settings.max_opens_in_flight
            );
        }
        return Err(OpenFailure::new(
            ErrorCode::LimitReached,
            "too many visitors are waiting for the service's client",
            "refused: too many substreams await the client",
        ));
    };
    let stream = tokio::select! {
        _ = cancel.cancelled() => return Err(ended()),
        r = tokio::time::timeout(OPEN, ctx.mux.open()) => match r {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(OpenFailure::new(ErrorCode::ShuttingDown, "the service's session ended", format!("reset: no substream: {e}"))),
            Err(_) => {
                warn!("no substream for the visitor within {OPEN:?}");
                return Err(OpenFailure::new(ErrorCode::LimitReached, "the service's client is too busy", "refused: no substream in time"));
            }
        },
    };
    ctx.rotation.opened();
    let mut sub = Substream::new(stream, ctx.mux.state().clone());
    let header = Message::VisitorHeader {
        service: service.clone(),
        visitor: peer,
        public,
    };
    if let Err(e) = write_message(&mut sub, &header).await {
        return Err(OpenFailure::new(
            ErrorCode::ShuttingDown,
            "the service's session ended",
            format!("reset: sending the visitor header: {e}"),
        ));
    }
    // While the client connects to its service, the visitor's first bytes already cross the
    // tunnel (they wait in the substream until the client splices), saving a round trip.
    let deadline = tokio::time::Instant::now() + CLIENT_ANSWER;
    let mut reader = MessageReader::new();
    let mut early_buf = Vec::new();
    let mut early_sent = 0usize;
    if let Some(replay) = kept.as_deref().filter(|k| !k.is_empty()) {
        let sent = async {
            sub.write_all(replay).await?;
            sub.flush().await
        };
        if sent.await.is_err() {
            return Err(OpenFailure::new(
                ErrorCode::ShuttingDown,
                "the service's session ended",
                "reset: forwarding the visitor's first bytes",
            ));
        }
        early_sent = replay.len();
        if early_sent >= EARLY_DATA {
            early = None;
        }
    }
    let status = loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return Err(ended()),
            r = tokio::time::timeout_at(deadline, reader.read(&mut sub)) => {
                break r.map(|r| r.map_err(|e| format!("reading the client's answer: {e}")));
            }
            r = read_early(&mut early, &mut early_buf) => match r {
                Ok(n) if n > 0 => {
                    early_sent += n;
                    if let Some(kept) = kept.as_mut() {
                        kept.extend_from_slice(&early_buf[..n]);
                    }
                    let sent = async {
                        sub.write_all(&early_buf[..n]).await?;
                        sub.flush().await
                    };
                    if sent.await.is_err() || early_sent >= EARLY_DATA {
                        // The client's answer says what went wrong, or the rest waits for it.
                        early = None;
                    }
                }
                // End or failure of the visitor: the splice sees it again and passes it on.
                _ => early = None,
            },
        }
    };
    drop(in_flight);
    let broken =
        |end: String| OpenFailure::new(ErrorCode::Internal, "the service's client failed", end);
    match status {
        Ok(Ok(Message::VisitorStatus { refusal: None })) => Ok((sub, early_sent as u64)),
        Ok(Ok(Message::VisitorStatus {
            refusal: Some((code, message)),
        })) => {
            if let Some(held_back) = ctx.limits.answers_log.allow() {
                warn!(%code, reason = %message, held_back, "the client could not reach the local service; visitor closed");
            }
            Err(OpenFailure::new(
                code,
                message.as_str(),
                format!("refused by the client: {message} ({code})"),
            ))
        }
        Ok(Ok(other)) => {
            if let Some(held_back) = ctx.limits.answers_log.allow() {
                warn!(
                    held_back,
                    "the client answered a visitor header with message type 0x{:02x}",
                    other.type_byte()
                );
            }
            Err(broken("reset: protocol violation by the client".into()))
        }
        Ok(Err(e)) => Err(broken(format!("reset: {e}"))),
        Err(_) => {
            if let Some(held_back) = ctx.limits.answers_log.allow() {
                warn!(
                    held_back,
                    "the client did not answer the visitor header within {CLIENT_ANSWER:?}"
                );
            }
            Err(OpenFailure::new(
                ErrorCode::LocalTimeout,
                "the service's client did not answer in time",
                "refused: the client did not answer in time",
            ))
        }
    }
}

/// Reads what the visitor has sent so far (at most [`EARLY_READ`] bytes at a time); never
/// completes once `early` is `None`.
async fn read_early(
    early: &mut Option<&mut TcpStream>,
    buf: &mut Vec<u8>,
) -> std::io::Result<usize> {
    match early {
        Some(tcp) => {
            if buf.is_empty() {
                buf.resize(EARLY_READ, 0);
            }
            tcp.read(buf).await
        }
        None => std::future::pending().await,
    }
}
