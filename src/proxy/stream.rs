//! The connection the ncx TLS session runs over: straight TCP (to the server, or to an HTTP or
//! SOCKS proxy that opened a tunnel to it), TLS to an `https://` proxy, or a WebSocket (over any
//! of those, with TLS of its own for `wss://`).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// What [`super::dial`] returns.
#[derive(Debug)]
pub enum Transport {
    /// TCP, to the server or through a tunnel a proxy opened.
    Tcp(TcpStream),
    /// TLS to an `https://` proxy, inside which the proxy's tunnel runs.
    ProxyTls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    /// The outer TLS of a `wss://` WebSocket, to the web server or CDN in front of the server.
    WebTls(Box<tokio_rustls::client::TlsStream<Transport>>),
    /// A WebSocket, inside which ncx's own TLS runs.
    WebSocket(Box<crate::websocket::WsStream<Transport>>),
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Transport::ProxyTls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Transport::WebTls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Transport::WebSocket(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Transport::ProxyTls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Transport::WebTls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Transport::WebSocket(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Transport::ProxyTls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            Transport::WebTls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            Transport::WebSocket(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Transport::Tcp(s) => s.is_write_vectored(),
            Transport::ProxyTls(s) => s.is_write_vectored(),
            Transport::WebTls(s) => s.is_write_vectored(),
            Transport::WebSocket(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Tcp(s) => Pin::new(s).poll_flush(cx),
            Transport::ProxyTls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Transport::WebTls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Transport::WebSocket(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Transport::ProxyTls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Transport::WebTls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Transport::WebSocket(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
