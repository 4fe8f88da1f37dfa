//! The one task that owns and drives a yamux connection.
//!
//! yamux 0.14 does all socket I/O inside `poll_next_inbound`, so exactly one task must own the
//! `Connection` and keep polling it, even on a side that only opens streams. Other tasks ask that
//! task for new outbound streams through a bounded channel with a oneshot reply ([`SessionHandle`]).
//!
//! yamux reports a lost connection to its streams only as a clean EOF. To let a splice tell "the
//! peer finished" from "the session died", the socket under yamux is wrapped in [`WatchedIo`], which
//! marks the session dead *before* yamux sees the failure and wakes the streams; the driver marks it
//! dead too whenever it stops. See [`SessionState::is_dead`].
//!
//! yamux answers a peer's protocol violation (a frame for a stream that cannot exist, a stream id
//! of the wrong parity, a window overflow) by sending a GoAway with an error code and then goes on
//! serving. A malformed frame must end that session, so [`WatchedIo`] also follows the frames
//! yamux writes ([`FrameWatch`]); once one is a GoAway with an error code, the driver closes the
//! connection ([`SessionEnd::ProtocolViolation`]).

mod join;
mod state;

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

pub use state::{FrameWatch, SessionState, WatchedIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot};
use tokio_util::compat::TokioAsyncReadCompatExt;
use tokio_util::sync::CancellationToken;

/// yamux's stream limit on both sides. Exceeding it kills the whole session, so opens are gated
/// well below it (see [`crate::server`]'s per-session visitor limit).
pub const MAX_YAMUX_STREAMS: usize = 16_384;

/// Data frames are split at this size. About 64 KiB measured fastest through TLS here
/// (ARCHITECTURE.md, "Measured facts the code relies on") and stays far below the 1 MiB frame-body
/// limit a yamux peer enforces. It is 12 bytes short of 64 KiB so that a full frame, its 12-byte
/// header joined to its body ([`join`]), is exactly four full TLS records of 16 KiB: with a 64 KiB
/// body every frame ended in a record of 12 bytes.
pub const SPLIT_SEND_SIZE: usize = 64 * 1024 - state::FRAME_HEADER;

/// yamux's fixed initial per-stream window (256 KiB); its setters require the connection window to
/// cover every stream's initial window.
const YAMUX_STREAM_WINDOW: usize = 256 * 1024;

/// Receive window shared by all streams of a session beyond their initial 256 KiB each: what a
/// busy stream's window may grow by. How far one grows is the patched yamux's window policy
/// (`patches/README.md`): the rate its reader consumes at times the path's minimum round-trip time,
/// plus a queue allowance of at most 6 ms of that rate and two credit steps of 1 ms of it (16–64
/// KiB each), at most 16 MiB per stream. So a stream fills a long path while a keystroke on another
/// stream waits behind only those few milliseconds, and a slow or idle stream gives its share back. 32 MiB fills 1 Gbit/s at 250 ms for one stream, or 100 Mbit/s at
/// 100 ms for twenty at once; it is also the most a session's streams together can hold beyond
/// their initial windows.
pub const SHARED_WINDOW_BUDGET: usize = 32 * 1024 * 1024;

/// Open requests that may wait for the driver at once; callers beyond it wait for a slot.
const OPEN_QUEUE: usize = 64;

/// Driver events handled per wake-up before yielding to other tasks.
const EVENTS_PER_POLL: usize = 64;

/// How long a locally closed session may take to send its GoAway and close the socket.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// The yamux configuration both peers use.
pub fn yamux_config() -> yamux::Config {
    let mut cfg = yamux::Config::default();
    // The window setter asserts it covers max_num_streams × 256 KiB, so it goes first.
    cfg.set_max_connection_receive_window(Some(
        MAX_YAMUX_STREAMS * YAMUX_STREAM_WINDOW + SHARED_WINDOW_BUDGET,
    ));
    cfg.set_max_num_streams(MAX_YAMUX_STREAMS);
    cfg.set_split_send_size(SPLIT_SEND_SIZE);
    cfg
}

/// The session is gone; no stream can be opened on it.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the session is closed")]
pub struct SessionClosed;

/// How a session's driver ended.
#[derive(Debug)]
pub enum SessionEnd {
    /// Closed locally (cancelled) and the close completed or timed out.
    Closed,
    /// The peer closed the connection.
    PeerClosed,
    /// The connection failed.
    Failed(yamux::ConnectionError),
    /// The peer broke the yamux protocol; this side sent GoAway with this error code and closed.
    ProtocolViolation(u32),
}

/// A cheap handle to a running session: opens streams and reads its state.
#[derive(Debug, Clone)]
pub struct SessionHandle {
    open_tx: mpsc::Sender<oneshot::Sender<yamux::Stream>>,
    state: Arc<SessionState>,
}

impl SessionHandle {
    /// Opens a new outbound stream. yamux sends nothing until the stream is first written to.
    ///
    /// Cancel-safe: a caller that gives up (for example through a timeout) leaves a closed oneshot
    /// behind, which the driver skips instead of handing it a stream.
    pub async fn open(&self) -> Result<yamux::Stream, SessionClosed> {
        let (tx, rx) = oneshot::channel();
        self.open_tx.send(tx).await.map_err(|_| SessionClosed)?;
        rx.await.map_err(|_| SessionClosed)
    }

    /// The session's shared state.
    pub fn state(&self) -> &Arc<SessionState> {
        &self.state
    }
}

/// Called by the driver for every stream the peer opens, with the session's state. It must not
/// block: spawn, or hand over through a non-blocking send.
pub type InboundHandler = Box<dyn FnMut(yamux::Stream, &Arc<SessionState>) + Send>;

/// Starts a session over `io` and returns its handle and the driver future. The caller spawns the
/// driver on a task it owns; the driver runs until `cancel` fires (then closes the session cleanly)
/// or the connection ends, and marks the session dead before it returns.
pub fn start<T>(
    io: T,
    mode: yamux::Mode,
    on_inbound: InboundHandler,
    cancel: CancellationToken,
) -> (SessionHandle, impl Future<Output = SessionEnd> + Send)
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let state = Arc::new(SessionState::default());
    let (open_tx, open_rx) = mpsc::channel(OPEN_QUEUE);
    // yamux writes a frame's 12-byte header and its body separately; the join writer hands them
    // to TLS together, so a frame's header shares a record and a system call with its body.
    let io = WatchedIo::new(join::JoinWriter::new(io), state.clone()).compat();
    let conn = yamux::Connection::new(io, yamux_config(), mode);
    let handle = SessionHandle {
        open_tx,
        state: state.clone(),
    };
    let driver = drive(conn, open_rx, on_inbound, cancel, state);
    (handle, driver)
}

async fn drive<T>(
    mut conn: yamux::Connection<T>,
    mut open_rx: mpsc::Receiver<oneshot::Sender<yamux::Stream>>,
    mut on_inbound: InboundHandler,
    cancel: CancellationToken,
    state: Arc<SessionState>,
) -> SessionEnd
where
    T: futures::AsyncRead + futures::AsyncWrite + Unpin,
{
    let mut cancelled = pin!(cancel.cancelled());
    // The open request the driver is currently trying to satisfy.
    let mut waiting: Option<oneshot::Sender<yamux::Stream>> = None;
    let end = std::future::poll_fn(|cx| {
        if cancelled.as_mut().poll(cx).is_ready() {
            return Poll::Ready(None);
        }
        for _ in 0..EVENTS_PER_POLL {
            let mut progressed = false;
            if waiting.is_none() {
                if let Poll::Ready(Some(tx)) = open_rx.poll_recv(cx) {
                    waiting = Some(tx);
                }
            }
            // A caller that gave up must not receive the next stream (it would be dropped, and
            // reset, instead of reaching a live caller).
            if waiting.as_ref().is_some_and(|tx| tx.is_closed()) {
                waiting = None;
                progressed = true;
            }
            if waiting.is_some() {
                match conn.poll_new_outbound(cx) {
                    Poll::Ready(Ok(stream)) => {
                        if let Some(tx) = waiting.take() {
                            // If the caller left in the meantime the stream is dropped unused.
                            let _ = tx.send(stream);
                        }
                        progressed = true;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Some(SessionEnd::Failed(e))),
                    Poll::Pending => {}
                }
            }
            match conn.poll_next_inbound(cx) {
                Poll::Ready(Some(Ok(stream))) => {
                    on_inbound(stream, &state);
                    progressed = true;
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(SessionEnd::Failed(e))),
                Poll::Ready(None) => return Poll::Ready(Some(SessionEnd::PeerClosed)),
                Poll::Pending => {}
            }
            // yamux has told the peer it broke the protocol, and would go on serving it.
            if let Some(code) = state.violation() {
                return Poll::Ready(Some(SessionEnd::ProtocolViolation(code)));
            }
            if !progressed {
                return Poll::Pending;
            }
        }
        // Budget used up while still making progress: let other tasks run, then continue.
        cx.waker().wake_by_ref();
        Poll::Pending
    })
    .await;
    state.mark_dead();
    open_rx.close();
    let end = match end {
        Some(SessionEnd::ProtocolViolation(code)) => {
            close(&mut conn).await;
            SessionEnd::ProtocolViolation(code)
        }
        Some(end) => end,
        None => {
            close(&mut conn).await;
            SessionEnd::Closed
        }
    };
    state.ended.cancel();
    end
}

/// Sends yamux's GoAway and closes the socket, bounded in time.
async fn close<T>(conn: &mut yamux::Connection<T>)
where
    T: futures::AsyncRead + futures::AsyncWrite + Unpin,
{
    let _ = tokio::time::timeout(
        CLOSE_TIMEOUT,
        std::future::poll_fn(|cx| conn.poll_close(cx)),
    )
    .await;
}
