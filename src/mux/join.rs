//! The write side between yamux and TLS: small writes are held until the next flush or the next
//! write, and go to TLS together with it in one vectored write.
//!
//! yamux writes each frame as two writes, its 12-byte header and then its body, and flushes once
//! it has written what it had. tokio-rustls turns every write into records at once and sends them
//! to the socket, so a plain pass-through makes every header a TLS record, a `writev` and (the
//! tunnel socket has `TCP_NODELAY`) a TCP segment of its own: 34 bytes on the wire ahead of each
//! 64 KiB body, one extra system call, segment and record to decrypt per frame on both ends. A
//! buffer that copied whole frames would join them, at the cost of one more copy of every byte
//! sent (3–6% of a sending process's CPU in a profile at 2 Gbit/s). [`JoinWriter`] copies only
//! writes smaller than [`JOIN`] — headers, keystrokes, window updates — and hands a large write
//! to TLS behind them as one vectored write: rustls encrypts the pieces as one stream of
//! plaintext, so a header and the start of its body share a record, and
//! [`super::SPLIT_SEND_SIZE`] is chosen so that a full frame is exactly four full records.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Writes up to this size are held to be joined with what follows. A keystroke's frame and a burst
/// of window updates fit many times over; a data frame's body passes straight through.
pub const JOIN: usize = 16 * 1024;

/// `inner`, with small writes joined to the write after them (see the module comment). Reads pass
/// through.
#[derive(Debug)]
pub struct JoinWriter<T> {
    inner: T,
    /// Bytes accepted from the caller and not yet written to `inner`, at most [`JOIN`].
    held: Vec<u8>,
}

impl<T> JoinWriter<T> {
    /// Wraps `inner`. The buffer is allocated at the first small write.
    pub fn new(inner: T) -> Self {
        JoinWriter {
            inner,
            held: Vec::new(),
        }
    }
}

impl<T: AsyncWrite + Unpin> JoinWriter<T> {
    /// Writes out everything held.
    fn poll_write_held(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.held.is_empty() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.held))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.held.drain(..n);
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for JoinWriter<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        // Each turn either returns or writes at least one held byte, so this ends within
        // `JOIN + 1` turns.
        loop {
            if me.held.len() + buf.len() <= JOIN {
                if me.held.capacity() == 0 {
                    me.held.reserve_exact(JOIN);
                }
                me.held.extend_from_slice(buf);
                return Poll::Ready(Ok(buf.len()));
            }
            if me.held.is_empty() {
                return Pin::new(&mut me.inner).poll_write(cx, buf);
            }
            let held = me.held.len();
            let n = ready!(Pin::new(&mut me.inner)
                .poll_write_vectored(cx, &[IoSlice::new(&me.held), IoSlice::new(buf)]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            if n > held {
                me.held.clear();
                return Poll::Ready(Ok(n - held));
            }
            // Only held bytes went out (all of them, or a part): `buf` is not taken yet.
            me.held.drain(..n);
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        ready!(me.poll_write_held(cx))?;
        Pin::new(&mut me.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        ready!(me.poll_write_held(cx))?;
        Pin::new(&mut me.inner).poll_shutdown(cx)
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for JoinWriter<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// A transport that records each write it was given and takes at most `take` bytes of it
    /// (after every `pending_every`-th call it first answers Pending once), as a socket with a
    /// full buffer would.
    #[derive(Default)]
    struct Recorder {
        writes: Vec<Vec<u8>>,
        take: Vec<usize>,
        calls: usize,
        pending_every: usize,
        flushed: usize,
        shut: bool,
    }

    impl Recorder {
        fn all(&self) -> Vec<u8> {
            self.writes.concat()
        }
        fn accept(
            &mut self,
            cx: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            self.calls += 1;
            if self.pending_every > 0 && self.calls.is_multiple_of(self.pending_every) {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            let mut limit = if self.take.is_empty() {
                usize::MAX
            } else {
                self.take[self.calls % self.take.len()]
            };
            let mut got = Vec::new();
            for b in bufs {
                let k = b.len().min(limit);
                got.extend_from_slice(&b[..k]);
                limit -= k;
            }
            let n = got.len();
            self.writes.push(got);
            Poll::Ready(Ok(n))
        }
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.get_mut().accept(cx, &[IoSlice::new(buf)])
        }
        fn poll_write_vectored(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            self.get_mut().accept(cx, bufs)
        }
        fn is_write_vectored(&self) -> bool {
            true
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.get_mut().flushed += 1;
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.get_mut().shut = true;
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn a_header_goes_out_with_its_body_in_one_write() {
        let mut w = JoinWriter::new(Recorder::default());
        let header = [1u8; 12];
        let body = vec![2u8; super::super::SPLIT_SEND_SIZE];
        w.write_all(&header).await.unwrap();
        assert!(w.inner.writes.is_empty(), "a small write is held");
        w.write_all(&body).await.unwrap();
        assert_eq!(w.inner.writes.len(), 1, "header and body in one write");
        assert_eq!(w.inner.writes[0].len(), 12 + body.len());
        // A frame is four full TLS records of plaintext.
        assert_eq!(w.inner.writes[0].len(), 4 * 16 * 1024);
        // A keystroke's frame (header and a small body) goes out at the flush, as one write.
        w.write_all(&header).await.unwrap();
        w.write_all(b"keystroke").await.unwrap();
        assert_eq!(w.inner.writes.len(), 1);
        w.flush().await.unwrap();
        assert_eq!(w.inner.writes.len(), 2);
        assert_eq!(w.inner.writes[1].len(), 12 + 9);
        assert_eq!(w.inner.flushed, 1);
    }

    #[tokio::test]
    async fn bytes_keep_their_order_whatever_the_transport_takes() {
        // Writes of sizes around JOIN against a transport that takes uneven parts and now and then
        // answers Pending: every byte arrives once, in order.
        for (seed, pending_every) in [(1u32, 0usize), (7, 3), (13, 5), (29, 2)] {
            let mut x = seed;
            let mut next = move || {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x
            };
            let take: Vec<usize> = (0..17).map(|_| 1 + (next() as usize % 40_000)).collect();
            let mut w = JoinWriter::new(Recorder {
                take,
                pending_every,
                ..Recorder::default()
            });
            let mut sent = Vec::new();
            let mut counter = 0u8;
            for i in 0..400 {
                let len = match next() % 4 {
                    0 => 12,
                    1 => next() as usize % 200,
                    2 => JOIN - 5 + next() as usize % 10,
                    _ => 1 + next() as usize % 70_000,
                };
                let chunk: Vec<u8> = (0..len)
                    .map(|_| {
                        counter = counter.wrapping_add(1);
                        counter
                    })
                    .collect();
                w.write_all(&chunk).await.unwrap();
                sent.extend_from_slice(&chunk);
                if i % 37 == 0 {
                    w.flush().await.unwrap();
                    assert_eq!(w.inner.all(), sent, "a flush writes out everything held");
                }
            }
            w.shutdown().await.unwrap();
            assert!(w.inner.shut);
            assert_eq!(w.inner.all(), sent);
        }
    }

    #[tokio::test]
    async fn a_transport_that_takes_nothing_is_an_error() {
        let mut w = JoinWriter::new(Recorder {
            take: vec![0],
            ..Recorder::default()
        });
        w.write_all(b"held").await.unwrap();
        let e = w.write_all(&[0u8; 2 * JOIN]).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WriteZero);
        let e = w.flush().await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WriteZero);
    }
}
