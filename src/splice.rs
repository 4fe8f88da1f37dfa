//! Splicing a TCP connection with a substream (or two substreams, for a private visit), keeping
//! half-close and making resets visible.
//!
//! yamux reads a reset stream and a lost session as a clean EOF. Passed on as such, a visitor would
//! take a truncated reply for a complete one. [`Substream`] turns those EOFs back into errors, and
//! [`splice`] answers an error on either side by resetting the other (RST, not FIN).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::compat::{Compat, FuturesAsyncReadCompatExt};

use crate::mux::SessionState;

pub use crate::copybuf::COPY_BUFFER;

/// A yamux stream with tokio I/O traits whose EOF is only clean when the peer really finished.
pub struct Substream {
    inner: Compat<yamux::Stream>,
    session: Arc<SessionState>,
    /// Whether we closed our write side (after which yamux shows a peer FIN and a peer RST alike).
    write_closed: bool,
}

impl Substream {
    /// Wraps a stream of the session whose state is `session`.
    pub fn new(stream: yamux::Stream, session: Arc<SessionState>) -> Self {
        Substream {
            inner: stream.compat(),
            session,
            write_closed: false,
        }
    }
}

impl AsyncRead for Substream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = res {
            if buf.filled().len() == before && buf.remaining() > 0 {
                if self.session.is_dead() {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        "the tunnel session was lost",
                    )));
                }
                // A FIN leaves the stream half-open (RecvClosed); only a RST closes it while our
                // side is still open.
                if !self.write_closed && self.inner.get_ref().is_closed() {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::ConnectionReset,
                        "the substream was reset by the peer",
                    )));
                }
            }
        }
        res
    }
}

impl AsyncWrite for Substream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.write_closed = true;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// One side of a splice: something that can end with a reset instead of a clean close.
pub trait Abort: AsyncRead + AsyncWrite + Unpin {
    /// Closes so that the peer sees a reset, never a clean end.
    fn abort(self);
}

impl Abort for TcpStream {
    fn abort(self) {
        abort(self);
    }
}

impl Abort for Substream {
    /// Dropping a yamux stream that is still open sends RST.
    fn abort(self) {
        drop(self);
    }
}

/// How a splice ended.
#[derive(Debug)]
pub enum SpliceEnd {
    /// Both directions finished with EOF.
    Finished,
    /// A side failed or was reset; both were reset.
    Reset(io::Error),
    /// The owner cancelled (session gone or shutdown); both sides were reset.
    Cancelled,
}

/// What a splice moved and how it ended.
#[derive(Debug)]
pub struct Spliced {
    /// Bytes read from side `a` and written to side `b`.
    pub from_a: u64,
    /// Bytes read from side `b` and written to side `a`.
    pub from_b: u64,
    /// How it ended.
    pub end: SpliceEnd,
}

/// Counters a splice adds its bytes to as they move (the metrics of a visitor), not only at the
/// end: a remote desktop session can last all day.
#[derive(Clone, Debug, Default)]
pub struct Meter {
    /// Counters of the bytes from side `a` to side `b` (the service's, the session's).
    pub a_to_b: Vec<prometheus_client::metrics::counter::Counter>,
    /// Counters of the bytes from side `b` to side `a`.
    pub b_to_a: Vec<prometheus_client::metrics::counter::Counter>,
}

impl Meter {
    /// Counts `n` bytes from side `a` that moved before the splice began (early bytes).
    pub fn a_to_b_before(&self, n: u64) {
        for c in &self.a_to_b {
            c.inc_by(n);
        }
    }

    /// Counts `n` bytes from side `b` that moved outside a splice (a UDP flow's datagrams).
    pub fn b_to_a_moved(&self, n: u64) {
        for c in &self.b_to_a {
            c.inc_by(n);
        }
    }
}

/// [`splice`], adding the bytes to `meter` as they move.
pub fn splice_metered<A: Abort, B: Abort>(
    a: A,
    b: B,
    cancel: impl std::future::Future<Output = ()>,
    meter: Meter,
) -> impl std::future::Future<Output = Spliced> {
    splice_inner(a, b, cancel, Some(meter))
}

/// Copies both ways until both directions reach EOF. An EOF in one direction is passed on as a
/// half-close (FIN) and the other direction keeps flowing. Any error, or `cancel` completing,
/// resets both sides ([`Abort`]).
///
/// Buffers are taken only while data moves: a direction whose source has nothing to read gives its
/// buffer back, so an idle spliced connection holds no copy buffer at all (ten thousand idle
/// visitors would otherwise pin 2.5 GiB of 64 KiB buffers across both sides).
///
/// Side `a` is the near end of whoever splices (a visitor's TCP connection on the server, the
/// local service's connection on the client, the visiting substream in a private bridge), side `b`
/// the far end (the substream across the tunnel).
pub fn splice<A: Abort, B: Abort>(
    a: A,
    b: B,
    cancel: impl std::future::Future<Output = ()>,
) -> impl std::future::Future<Output = Spliced> {
    splice_inner(a, b, cancel, None)
}

/// Not an `async fn`, and the two wrappers above neither: the future of every connected visitor
/// is this one, held for as long as the visitor stays, and an `async fn` keeps a copy of each
/// argument besides the one it moves into its body (a nested one, a copy per level). Written as
/// a block that takes the arguments once, it is about half the size, which is most of what an
/// idle visitor costs.
fn splice_inner<A: Abort, B: Abort>(
    mut a: A,
    mut b: B,
    cancel: impl std::future::Future<Output = ()>,
    meter: Option<Meter>,
) -> impl std::future::Future<Output = Spliced> {
    let Meter {
        a_to_b: a_meter,
        b_to_a: b_meter,
    } = meter.unwrap_or_default();
    let mut a_to_b = Direction {
        meter: a_meter,
        ..Direction::default()
    };
    let mut b_to_a = Direction {
        meter: b_meter,
        ..Direction::default()
    };
    async move {
        let res = {
            let copy = std::future::poll_fn(|cx| {
                let forward = a_to_b.poll(cx, &mut a, &mut b)?;
                let back = b_to_a.poll(cx, &mut b, &mut a)?;
                match (forward, back) {
                    (Poll::Ready(_), Poll::Ready(_)) => Poll::Ready(Ok::<_, io::Error>(())),
                    _ => Poll::Pending,
                }
            });
            tokio::select! {
                r = copy => r.map_or_else(SpliceEnd::Reset, |()| SpliceEnd::Finished),
                () = cancel => SpliceEnd::Cancelled,
            }
        };
        if !matches!(res, SpliceEnd::Finished) {
            a.abort();
            b.abort();
        }
        Spliced {
            from_a: a_to_b.total,
            from_b: b_to_a.total,
            end: res,
        }
    }
}

/// One direction of a splice.
#[derive(Default)]
struct Direction {
    /// Present only while bytes are in flight through this direction.
    buf: Option<Box<[u8]>>,
    /// Bytes of `buf` already written.
    pos: usize,
    /// Bytes of `buf` filled by the last read.
    len: usize,
    /// The source reached EOF.
    eof: bool,
    /// The EOF was passed on (shutdown of the destination completed).
    done: bool,
    /// Bytes moved.
    total: u64,
    /// Where the bytes are counted as they move, too.
    meter: Vec<prometheus_client::metrics::counter::Counter>,
}

impl Direction {
    fn poll<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        src: &mut R,
        dst: &mut W,
    ) -> Poll<io::Result<u64>>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        loop {
            if self.done {
                return Poll::Ready(Ok(self.total));
            }
            if self.pos < self.len {
                let buf = self
                    .buf
                    .as_ref()
                    .expect("a buffer is held while bytes are pending");
                let n = std::task::ready!(
                    Pin::new(&mut *dst).poll_write(cx, &buf[self.pos..self.len])
                )?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.pos += n;
                self.total += n as u64;
                for meter in &self.meter {
                    meter.inc_by(n as u64);
                }
                continue;
            }
            if self.eof {
                std::task::ready!(Pin::new(&mut *dst).poll_shutdown(cx))?;
                self.done = true;
                if let Some(buf) = self.buf.take() {
                    crate::copybuf::give_back(buf);
                }
                continue;
            }
            let buf = self.buf.get_or_insert_with(crate::copybuf::take);
            let mut rb = ReadBuf::new(buf);
            match Pin::new(&mut *src).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) => {
                    let n = rb.filled().len();
                    if n == 0 {
                        self.eof = true;
                    }
                    self.pos = 0;
                    self.len = n;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    // Idle: give the buffer back, and push out what was written so far.
                    if let Some(buf) = self.buf.take() {
                        crate::copybuf::give_back(buf);
                    }
                    std::task::ready!(Pin::new(&mut *dst).poll_flush(cx))?;
                    return Poll::Pending;
                }
            }
        }
    }
}

/// Closes `tcp` with RST instead of FIN, so its peer cannot mistake the end for a complete reply.
pub fn abort(tcp: TcpStream) {
    // Failure only means the socket is already gone; dropping it then does the rest.
    let _ = tcp.set_zero_linger();
    drop(tcp);
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    /// Polls one direction from `src` to `dst` once.
    async fn poll_once(
        d: &mut Direction,
        src: &mut DuplexStream,
        dst: &mut DuplexStream,
    ) -> Poll<io::Result<u64>> {
        std::future::poll_fn(|cx| Poll::Ready(d.poll(cx, src, dst))).await
    }

    #[tokio::test]
    async fn moves_bytes_then_passes_the_eof_on_and_lets_the_buffer_go() {
        // writer -> src ==Direction==> dst -> reader
        let (mut writer, mut src) = tokio::io::duplex(1024);
        let (mut dst, mut reader) = tokio::io::duplex(1024);
        let mut d = Direction::default();
        writer.write_all(b"hello").await.unwrap();
        assert!(poll_once(&mut d, &mut src, &mut dst).await.is_pending());
        assert_eq!(d.total, 5);
        assert!(!d.eof);
        let mut got = [0u8; 5];
        reader.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello");
        writer.shutdown().await.unwrap();
        match poll_once(&mut d, &mut src, &mut dst).await {
            Poll::Ready(Ok(5)) => {}
            other => panic!("expected the direction done after 5 bytes, got {other:?}"),
        }
        assert!(d.eof && d.done);
        assert!(d.buf.is_none(), "a finished direction holds no buffer");
        // The EOF reached the destination as a half-close.
        assert_eq!(reader.read(&mut got).await.unwrap(), 0);
        // Done stays done.
        assert!(matches!(
            poll_once(&mut d, &mut src, &mut dst).await,
            Poll::Ready(Ok(5))
        ));
    }

    #[tokio::test]
    async fn an_idle_direction_holds_no_buffer() {
        let (_writer, mut src) = tokio::io::duplex(1024);
        let (mut dst, _reader) = tokio::io::duplex(1024);
        let mut d = Direction::default();
        assert!(poll_once(&mut d, &mut src, &mut dst).await.is_pending());
        assert!(d.buf.is_none());
        assert_eq!(d.total, 0);
    }

    #[tokio::test]
    async fn a_full_destination_keeps_the_unwritten_bytes() {
        // The destination takes 4 bytes and then blocks until its reader reads.
        let (mut writer, mut src) = tokio::io::duplex(64);
        let (mut dst, mut reader) = tokio::io::duplex(4);
        let mut d = Direction::default();
        writer.write_all(b"0123456789").await.unwrap();
        assert!(poll_once(&mut d, &mut src, &mut dst).await.is_pending());
        assert_eq!(d.total, 4);
        assert_eq!((d.pos, d.len), (4, 10));
        assert!(d.buf.is_some(), "bytes in flight keep their buffer");
        let mut got = [0u8; 10];
        reader.read_exact(&mut got[..4]).await.unwrap();
        assert!(poll_once(&mut d, &mut src, &mut dst).await.is_pending());
        reader.read_exact(&mut got[4..8]).await.unwrap();
        assert!(poll_once(&mut d, &mut src, &mut dst).await.is_pending());
        reader.read_exact(&mut got[8..]).await.unwrap();
        assert_eq!(&got, b"0123456789");
        assert_eq!(d.total, 10);
    }

    #[tokio::test]
    async fn a_destination_that_is_gone_fails_the_direction() {
        let (mut writer, mut src) = tokio::io::duplex(64);
        let (mut dst, reader) = tokio::io::duplex(64);
        drop(reader);
        let mut d = Direction::default();
        writer.write_all(b"lost").await.unwrap();
        assert!(matches!(
            poll_once(&mut d, &mut src, &mut dst).await,
            Poll::Ready(Err(_))
        ));
    }

    #[tokio::test]
    async fn splice_keeps_half_close_and_counts_both_ways() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let pair = || async {
            let (a, b) = tokio::join!(TcpStream::connect(addr), listener.accept());
            (a.unwrap(), b.unwrap().0)
        };
        let (mut visitor, a) = pair().await;
        let (b, mut service) = pair().await;
        let spliced = tokio::spawn(splice(a, b, std::future::pending::<()>()));
        visitor.write_all(b"request").await.unwrap();
        visitor.shutdown().await.unwrap();
        let mut req = Vec::new();
        service.read_to_end(&mut req).await.unwrap();
        assert_eq!(req, b"request");
        // The visitor's side is half-closed; the reply still reaches it in full.
        service.write_all(b"the whole reply").await.unwrap();
        service.shutdown().await.unwrap();
        let mut reply = Vec::new();
        visitor.read_to_end(&mut reply).await.unwrap();
        assert_eq!(reply, b"the whole reply");
        let spliced = spliced.await.unwrap();
        assert!(matches!(spliced.end, SpliceEnd::Finished));
        assert_eq!((spliced.from_a, spliced.from_b), (7, 15));
    }
}
