//! The tunnel connection under TLS, read in large pieces.
//!
//! rustls asks its transport for at most 4 KiB beyond what it holds (`DeframerVecBuffer`'s
//! `READ_SIZE`), so a busy tunnel without this costs one `recv` system call, with its wake-up
//! and ACK bookkeeping in the kernel, per 4–16 KiB received. [`ReadAhead`] reads up to
//! [`READ_AHEAD`] at once and serves rustls' small reads from memory: one more copy of each byte
//! in user space, far fewer trips into the kernel. Writes pass straight through, vectored ones
//! included (tokio-rustls writes its records with `writev`).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes read from the connection at once. The kernel hands over what it holds up to this; a
/// busy 1 Gbit/s link delivers this much in half a millisecond.
pub const READ_AHEAD: usize = 64 * 1024;

/// `inner`, read [`READ_AHEAD`] bytes at a time.
///
/// The buffer is taken at the first read and kept while the connection lives: one per session
/// (a tunnel connection is busy or pinged every few seconds, so giving it back between reads would
/// only allocate it again), none per visitor.
#[derive(Debug)]
pub struct ReadAhead<S> {
    inner: S,
    buf: Option<Box<[u8]>>,
    /// `buf[pos..len]` was read from `inner` and not yet handed out.
    pos: usize,
    len: usize,
}

impl<S> ReadAhead<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        ReadAhead {
            inner,
            buf: None,
            pos: 0,
            len: 0,
        }
    }

    /// The underlying connection.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ReadAhead<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        if me.pos == me.len {
            // Nothing held: a read as large as the buffer goes straight to the caller.
            if out.remaining() >= READ_AHEAD {
                return Pin::new(&mut me.inner).poll_read(cx, out);
            }
            let buf = me
                .buf
                .get_or_insert_with(|| vec![0; READ_AHEAD].into_boxed_slice());
            let mut rb = ReadBuf::new(buf);
            std::task::ready!(Pin::new(&mut me.inner).poll_read(cx, &mut rb))?;
            me.pos = 0;
            me.len = rb.filled().len();
            if me.len == 0 {
                // End of the connection: the caller reads it as such.
                return Poll::Ready(Ok(()));
            }
        }
        let buf = me.buf.as_ref().expect("bytes are held only in the buffer");
        let n = (me.len - me.pos).min(out.remaining());
        out.put_slice(&buf[me.pos..me.pos + n]);
        me.pos += n;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ReadAhead<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn small_reads_are_served_from_one_large_read_and_eof_passes_through() {
        let (mut far, near) = tokio::io::duplex(256 * 1024);
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        far.write_all(&data).await.unwrap();
        far.shutdown().await.unwrap();
        let mut r = ReadAhead::new(near);
        let mut got = Vec::new();
        let mut small = [0u8; 4096];
        loop {
            let n = r.read(&mut small).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&small[..n]);
            // Everything the caller has not taken yet is held, never more than one buffer.
            assert!(r.len - r.pos < READ_AHEAD);
        }
        assert_eq!(got, data);
    }

    #[tokio::test]
    async fn a_large_read_bypasses_the_buffer_and_writes_pass_through() {
        let (mut far, near) = tokio::io::duplex(256 * 1024);
        let mut r = ReadAhead::new(near);
        far.write_all(&[7u8; 100_000]).await.unwrap();
        let mut big = vec![0u8; READ_AHEAD];
        let n = r.read(&mut big).await.unwrap();
        assert!(n > 0 && big[..n].iter().all(|&b| b == 7));
        assert!(r.buf.is_none(), "no buffer was needed");
        r.write_all(b"reply").await.unwrap();
        let mut reply = [0u8; 5];
        far.read_exact(&mut reply).await.unwrap();
        assert_eq!(&reply, b"reply");
    }
}
