//! A byte stream over WebSocket binary frames: what ncx's TLS runs on when the transport is
//! `websocket`. Reads take payload bytes into the caller's buffer (unmasking in place), through a
//! fixed read-ahead buffer, so a frame of any accepted length costs no more memory than that; a write becomes one frame of at most
//! [`MAX_WS_WRITE_PAYLOAD`] bytes, held until the connection takes it. Pings are answered (the
//! latest one only, between frames), a close is answered and read as the end of the stream.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use ncx_proto::{
    apply_ws_mask, read_ws_header, write_ws_header, WsOpcode, WsRole, MAX_WS_CONTROL_PAYLOAD,
    MAX_WS_HEADER_LEN, MAX_WS_WRITE_PAYLOAD,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The close frame ncx sends: status 1000, a normal closure.
const NORMAL_CLOSURE: [u8; 2] = 1000u16.to_be_bytes();

/// The frame being read.
#[derive(Debug)]
struct Reading {
    opcode: WsOpcode,
    mask: Option<[u8; 4]>,
    remaining: u64,
    offset: u64,
}

/// Bytes read ahead from the connection. A frame header is 2 to 14 bytes; reading it exactly
/// would cost a system call or two per frame, so reads go through this buffer (payload reads at
/// least this large bypass it).
const READ_AHEAD: usize = 16 * 1024;

/// `inner`, carrying a byte stream in WebSocket frames, as the end `role`.
#[derive(Debug)]
pub struct WsStream<S> {
    inner: tokio::io::BufReader<S>,
    role: WsRole,
    head: [u8; MAX_WS_HEADER_LEN],
    head_have: usize,
    frame: Option<Reading>,
    /// The payload of a control frame being read (at most 125 bytes).
    control: Vec<u8>,
    /// The peer sent a close frame: reads are at their end.
    read_closed: bool,
    /// A frame accepted from the writer, not yet all taken by `inner`.
    out: Vec<u8>,
    out_at: usize,
    /// A pong to send between frames: the payload of the latest ping.
    pong: Option<Vec<u8>>,
    /// A close frame is to be sent (answering the peer's, or on shutdown).
    close_due: bool,
    close_sent: bool,
}

impl<S: AsyncRead> WsStream<S> {
    /// `inner` after a completed upgrade.
    pub fn new(inner: S, role: WsRole) -> Self {
        WsStream {
            inner: tokio::io::BufReader::with_capacity(READ_AHEAD, inner),
            role,
            head: [0; MAX_WS_HEADER_LEN],
            head_have: 0,
            frame: None,
            control: Vec::new(),
            read_closed: false,
            out: Vec::new(),
            out_at: 0,
            pong: None,
            close_due: false,
            close_sent: false,
        }
    }

    /// The connection underneath.
    pub fn get_ref(&self) -> &S {
        self.inner.get_ref()
    }
}

impl<S> WsStream<S> {
    /// Appends one final frame to `out`, masked when this end is the client.
    fn frame_into_out(&mut self, opcode: WsOpcode, payload: &[u8]) {
        let mask = match self.role {
            WsRole::Client => {
                let mut m = [0u8; 4];
                // RFC 6455 §5.3: an unpredictable key per frame, from a strong source. The key
                // only keeps proxies from mistaking frames for requests; were the system's
                // generator to fail, a zero key would still be a valid frame.
                let _ = aws_lc_rs::rand::fill(&mut m);
                Some(m)
            }
            WsRole::Server => None,
        };
        let mut h = [0u8; MAX_WS_HEADER_LEN];
        let n = write_ws_header(opcode, payload.len(), mask, &mut h);
        self.out.extend_from_slice(&h[..n]);
        let start = self.out.len();
        self.out.extend_from_slice(payload);
        if let Some(m) = mask {
            apply_ws_mask(&mut self.out[start..], m, 0);
        }
    }
}

fn invalid(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsStream<S> {
    /// Writes what is pending: the rest of the current frame, then a due pong or close, each
    /// whole, so control frames only ever go between frames.
    fn poll_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            while self.out_at < self.out.len() {
                let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.out[self.out_at..]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.out_at += n;
            }
            self.out.clear();
            self.out_at = 0;
            if let Some(payload) = self.pong.take() {
                self.frame_into_out(WsOpcode::Pong, &payload);
                continue;
            }
            if self.close_due && !self.close_sent {
                self.close_sent = true;
                self.frame_into_out(WsOpcode::Close, &NORMAL_CLOSURE);
                continue;
            }
            return Poll::Ready(Ok(()));
        }
    }

    /// Reads the next frame header (exactly its bytes, never into the payload).
    fn poll_header(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        loop {
            if let Some(h) =
                read_ws_header(&self.head[..self.head_have], self.role).map_err(invalid)?
            {
                self.head_have = 0;
                self.control.clear();
                self.frame = Some(Reading {
                    opcode: h.opcode,
                    mask: h.mask,
                    remaining: h.payload_len,
                    offset: 0,
                });
                return Poll::Ready(Ok(true));
            }
            let want = self.header_len_so_far();
            let mut rb = ReadBuf::new(&mut self.head[self.head_have..want]);
            ready!(Pin::new(&mut self.inner).poll_read(cx, &mut rb))?;
            let n = rb.filled().len();
            if n == 0 {
                if self.head_have == 0 {
                    // The connection ended between frames, without a close frame.
                    return Poll::Ready(Ok(false));
                }
                return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
            }
            self.head_have += n;
        }
    }

    /// How long the header being read is, as far as its first bytes tell.
    fn header_len_so_far(&self) -> usize {
        if self.head_have < 2 {
            return 2;
        }
        let b1 = self.head[1];
        let ext = match b1 & 0x7F {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        2 + ext + if b1 & 0x80 != 0 { 4 } else { 0 }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        loop {
            if me.read_closed || buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            let Some(frame) = &mut me.frame else {
                if !ready!(me.poll_header(cx))? {
                    me.read_closed = true;
                }
                continue;
            };
            if frame.opcode.is_control() {
                while frame.remaining > 0 {
                    let mut chunk = [0u8; MAX_WS_CONTROL_PAYLOAD];
                    // At most 125 (checked by the header reader).
                    let want = frame.remaining as usize;
                    let mut rb = ReadBuf::new(&mut chunk[..want]);
                    ready!(Pin::new(&mut me.inner).poll_read(cx, &mut rb))?;
                    let n = rb.filled().len();
                    if n == 0 {
                        return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
                    }
                    let got = &mut chunk[..n];
                    if let Some(m) = frame.mask {
                        apply_ws_mask(got, m, frame.offset);
                    }
                    me.control.extend_from_slice(got);
                    frame.remaining -= n as u64;
                    frame.offset += n as u64;
                }
                match frame.opcode {
                    WsOpcode::Ping => me.pong = Some(std::mem::take(&mut me.control)),
                    WsOpcode::Close => {
                        me.read_closed = true;
                        me.close_due = true;
                    }
                    _ => {}
                }
                me.frame = None;
                // Answer now if the connection takes it; otherwise with the next write.
                if me.pong.is_some() || me.close_due {
                    if let Poll::Ready(Err(e)) = me.poll_out(cx) {
                        return Poll::Ready(Err(e));
                    }
                }
                continue;
            }
            if frame.remaining == 0 {
                me.frame = None;
                continue;
            }
            let limit = usize::try_from(frame.remaining)
                .unwrap_or(usize::MAX)
                .min(buf.remaining());
            let dst = buf.initialize_unfilled_to(limit);
            let mut rb = ReadBuf::new(dst);
            ready!(Pin::new(&mut me.inner).poll_read(cx, &mut rb))?;
            let n = rb.filled().len();
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
            }
            if let Some(m) = frame.mask {
                apply_ws_mask(&mut dst[..n], m, frame.offset);
            }
            frame.remaining -= n as u64;
            frame.offset += n as u64;
            buf.advance(n);
            return Poll::Ready(Ok(()));
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        ready!(me.poll_out(cx))?;
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if me.close_sent {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        let n = data.len().min(MAX_WS_WRITE_PAYLOAD);
        me.frame_into_out(WsOpcode::Binary, &data[..n]);
        // The frame is taken; what the connection does not take now goes with the next call.
        if let Poll::Ready(Err(e)) = me.poll_out(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        ready!(me.poll_out(cx))?;
        Pin::new(&mut me.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        me.close_due = true;
        ready!(me.poll_out(cx))?;
        Pin::new(&mut me.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn bytes_cross_both_ways_in_frames_over_a_tiny_pipe() {
        let (a, b) = tokio::io::duplex(7);
        let mut client = WsStream::new(a, WsRole::Client);
        let mut server = WsStream::new(b, WsRole::Server);
        let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&sent).await.unwrap();
            client.flush().await.unwrap();
            let mut back = Vec::new();
            client.shutdown().await.unwrap();
            client.read_to_end(&mut back).await.unwrap();
            back
        });
        let mut got = vec![0u8; data.len()];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(got, data);
        server.write_all(b"reply").await.unwrap();
        // The client's close ends the server's reads; the server answers it on shutdown.
        let mut rest = Vec::new();
        server.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
        server.shutdown().await.unwrap();
        assert_eq!(writer.await.unwrap(), b"reply");
    }

    #[tokio::test]
    async fn pings_are_answered_and_wrong_frames_refused() {
        let (a, mut raw) = tokio::io::duplex(1024);
        let mut client = WsStream::new(a, WsRole::Client);
        // A server's ping, then data; the client reads the data and answers the ping.
        raw.write_all(&[0x89, 3, b'a', b'b', b'c', 0x82, 2, b'h', b'i'])
            .await
            .unwrap();
        let mut two = [0u8; 2];
        client.read_exact(&mut two).await.unwrap();
        assert_eq!(&two, b"hi");
        let mut pong = [0u8; 9];
        raw.read_exact(&mut pong).await.unwrap();
        assert_eq!(pong[0], 0x8A);
        assert_eq!(pong[1], 0x80 | 3, "masked, three bytes");
        let mut payload = [pong[6], pong[7], pong[8]];
        apply_ws_mask(&mut payload, [pong[2], pong[3], pong[4], pong[5]], 0);
        assert_eq!(&payload, b"abc");
        // A text frame is refused.
        raw.write_all(&[0x81, 1, b'x']).await.unwrap();
        let e = client.read(&mut two).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        // A server must not mask; a client must.
        let (a, mut raw) = tokio::io::duplex(64);
        let mut server = WsStream::new(a, WsRole::Server);
        raw.write_all(&[0x82, 1, b'x']).await.unwrap();
        assert!(server.read(&mut two).await.is_err());
    }
}
