//! What the tasks of one session can see of it ([`SessionState`]), and the watched socket under
//! yamux that keeps that state true ([`WatchedIo`], with the [`FrameWatch`] on what yamux writes).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::CancellationToken;

/// What every task working on one session can see of it.
#[derive(Debug, Default)]
pub struct SessionState {
    dead: AtomicBool,
    /// Cancelled when the driver has stopped.
    pub(super) ended: CancellationToken,
    /// The TLS error that ended the session, if one did. yamux turns a failed socket into a plain
    /// end of every stream; this keeps the reason (for example the server's alert refusing a client
    /// certificate, which TLS 1.3 only delivers at the first read).
    tls_failure: std::sync::Mutex<Option<rustls::Error>>,
    /// The error code of a GoAway this side sent because the peer broke the protocol (0: none).
    violation: std::sync::atomic::AtomicU32,
}

impl SessionState {
    /// Whether the session ended in a way that may have cut streams short: the socket failed or
    /// reached EOF, the driver stopped, or the session was closed locally. Set before any stream can
    /// observe the EOF that results, so a stream that reads EOF and then finds this `false` was
    /// finished cleanly by its peer.
    pub fn is_dead(&self) -> bool {
        self.dead.load(Ordering::SeqCst)
    }

    pub(super) fn mark_dead(&self) {
        self.dead.store(true, Ordering::SeqCst);
    }

    /// The TLS error that ended the session, if one did.
    pub fn tls_failure(&self) -> Option<rustls::Error> {
        self.tls_failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn record(&self, e: &io::Error) {
        if let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
            self.tls_failure
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get_or_insert_with(|| tls.clone());
        }
        self.mark_dead();
    }

    /// The error code of the GoAway this side sent for a protocol violation of the peer, if it did.
    pub fn violation(&self) -> Option<u32> {
        match self.violation.load(Ordering::SeqCst) {
            0 => None,
            code => Some(code),
        }
    }

    /// Completes once the driver has stopped (for any reason). Can be awaited any number of times.
    pub async fn ended(&self) {
        self.ended.cancelled().await
    }
}

/// The socket under yamux, watched: EOF or an error in either direction marks the session dead
/// before yamux (and through it, any stream) learns of it, and the frames yamux writes are followed
/// for a GoAway with an error code.
pub struct WatchedIo<T> {
    inner: T,
    state: Arc<SessionState>,
    written: FrameWatch,
}

impl<T> WatchedIo<T> {
    pub(super) fn new(inner: T, state: Arc<SessionState>) -> Self {
        WatchedIo {
            inner,
            state,
            written: FrameWatch::default(),
        }
    }

    fn wrote(&mut self, bytes: &[u8]) {
        if let Some(code) = self.written.observe(bytes) {
            self.state.violation.store(code, Ordering::SeqCst);
        }
    }
}

/// yamux's frame header: version, type, flags, stream id, length (12 bytes, big-endian).
pub(super) const FRAME_HEADER: usize = 12;
/// yamux frame types that matter here: data frames carry `length` bytes of body; a GoAway's
/// `length` is its error code (0 normal, 1 protocol error, 2 internal error).
const FRAME_DATA: u8 = 0;
const FRAME_GO_AWAY: u8 = 3;

/// Follows a yamux byte stream frame by frame (sans-IO: bytes in, events out) and reports the
/// error code of a GoAway with one.
#[derive(Debug, Default)]
pub struct FrameWatch {
    header: [u8; FRAME_HEADER],
    filled: usize,
    /// Body bytes of the current data frame still to pass.
    body_left: u64,
}

impl FrameWatch {
    /// Takes the next bytes of the stream; returns the error code of the first GoAway with a
    /// non-zero one that they complete.
    pub fn observe(&mut self, mut bytes: &[u8]) -> Option<u32> {
        let mut found = None;
        while !bytes.is_empty() {
            if self.body_left > 0 {
                let skip = usize::try_from(self.body_left)
                    .unwrap_or(usize::MAX)
                    .min(bytes.len());
                self.body_left -= skip as u64;
                bytes = &bytes[skip..];
                continue;
            }
            let take = (FRAME_HEADER - self.filled).min(bytes.len());
            self.header[self.filled..self.filled + take].copy_from_slice(&bytes[..take]);
            self.filled += take;
            bytes = &bytes[take..];
            if self.filled < FRAME_HEADER {
                break;
            }
            self.filled = 0;
            let length = u32::from_be_bytes([
                self.header[8],
                self.header[9],
                self.header[10],
                self.header[11],
            ]);
            match self.header[1] {
                FRAME_DATA => self.body_left = u64::from(length),
                FRAME_GO_AWAY if length != 0 => {
                    found.get_or_insert(length);
                }
                _ => {}
            }
        }
        found
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for WatchedIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        match &res {
            Poll::Ready(Ok(())) if buf.filled().len() == before && buf.remaining() > 0 => {
                self.state.mark_dead()
            }
            Poll::Ready(Err(e)) => self.state.record(e),
            _ => {}
        }
        res
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WatchedIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write(cx, buf);
        match &res {
            Poll::Ready(Ok(n)) => self.wrote(&buf[..*n]),
            Poll::Ready(Err(_)) => self.state.mark_dead(),
            Poll::Pending => {}
        }
        res
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let res = Pin::new(&mut self.inner).poll_flush(cx);
        if let Poll::Ready(Err(_)) = &res {
            self.state.mark_dead();
        }
        res
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.state.mark_dead();
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        match &res {
            Poll::Ready(Ok(n)) => {
                let mut left = *n;
                for b in bufs {
                    let part = left.min(b.len());
                    self.wrote(&b[..part]);
                    left -= part;
                    if left == 0 {
                        break;
                    }
                }
            }
            Poll::Ready(Err(_)) => self.state.mark_dead(),
            Poll::Pending => {}
        }
        res
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(kind: u8, flags: u16, stream: u32, length: u32) -> Vec<u8> {
        let mut h = vec![0, kind];
        h.extend_from_slice(&flags.to_be_bytes());
        h.extend_from_slice(&stream.to_be_bytes());
        h.extend_from_slice(&length.to_be_bytes());
        h
    }

    #[test]
    fn a_go_away_with_an_error_code_is_seen_across_split_writes() {
        let mut bytes = header(FRAME_DATA, 0, 1, 5);
        // A body that looks like a GoAway header must be skipped as body.
        bytes.extend_from_slice(&[0, FRAME_GO_AWAY, 0, 0, 0]);
        bytes.extend(header(1, 1, 3, 0)); // window update
        bytes.extend(header(FRAME_GO_AWAY, 0, 0, 0)); // normal close
        assert_eq!(FrameWatch::default().observe(&bytes), None);
        bytes.extend(header(FRAME_GO_AWAY, 0, 0, 1)); // protocol error
        for split in [1, 5, 12, 13, 30] {
            let mut w = FrameWatch::default();
            let found: Vec<u32> = bytes.chunks(split).filter_map(|c| w.observe(c)).collect();
            assert_eq!(found, [1], "split into {split}-byte writes");
        }
    }
}
