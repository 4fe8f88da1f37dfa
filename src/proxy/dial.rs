//! Opening the tunnel: TCP to the proxy (and TLS for an `https://` one), then CONNECT or the
//! SOCKS5 exchange, all within the client's connect timeout.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::http::{self, ReplyHead};
use super::socks5;
use super::stream::Transport;
use super::url::{ProxyUrl, Scheme};

/// Why the way through the proxy failed: in words, and whether retrying can help (a refused
/// password cannot; a proxy that is down or could not reach the server may recover).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyFailure {
    /// What happened, naming the proxy.
    pub message: String,
    /// Only a change of configuration helps.
    pub permanent: bool,
}

/// A connection to `host:port` through `proxy`, within `within` (the client's connect timeout,
/// which covers reaching the proxy and the proxy reaching the server).
pub async fn dial(
    proxy: &ProxyUrl,
    host: &str,
    port: u16,
    within: Duration,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> Result<Transport, ProxyFailure> {
    let fail = |message: String, permanent: bool| ProxyFailure {
        message: format!("through the proxy {proxy}: {message}"),
        permanent,
    };
    let work = async {
        let tcp = TcpStream::connect((proxy.host.as_str(), proxy.port))
            .await
            .map_err(|e| fail(format!("connecting to it: {e}"), false))?;
        crate::net::tune_tunnel(&tcp);
        match proxy.scheme {
            Scheme::Http => {
                let mut tcp = tcp;
                http_connect(&mut tcp, proxy, host, port).await?;
                Ok(Transport::Tcp(tcp))
            }
            Scheme::Https => {
                let config = tls.ok_or_else(|| fail("no TLS configuration".into(), true))?;
                let name = rustls::pki_types::ServerName::try_from(proxy.host.clone())
                    .map_err(|e| fail(format!("its name: {e}"), true))?;
                let mut tls = tokio_rustls::TlsConnector::from(config.clone())
                    .connect(name, tcp)
                    .await
                    .map_err(|e| fail(format!("TLS to the proxy: {e}"), false))?;
                http_connect(&mut tls, proxy, host, port).await?;
                Ok(Transport::ProxyTls(Box::new(tls)))
            }
            Scheme::Socks5 => {
                let mut tcp = tcp;
                socks5_connect(&mut tcp, proxy, host, port).await?;
                Ok(Transport::Tcp(tcp))
            }
        }
    };
    match tokio::time::timeout(within, work).await {
        Ok(r) => r,
        Err(_) => Err(fail(
            format!(
                "no tunnel to the server within {}",
                crate::human::Human(within)
            ),
            false,
        )),
    }
}

/// CONNECT over `io`; the tunnel is open when this returns `Ok`.
async fn http_connect<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    proxy: &ProxyUrl,
    host: &str,
    port: u16,
) -> Result<(), ProxyFailure> {
    let fail = |message: String, permanent: bool| ProxyFailure {
        message: format!("through the proxy {proxy}: {message}"),
        permanent,
    };
    let io_fail = |e: std::io::Error| fail(format!("talking to it: {e}"), false);
    io.write_all(&http::connect_request(host, port, proxy.credentials()))
        .await
        .map_err(io_fail)?;
    io.flush().await.map_err(io_fail)?;
    let mut head = ReplyHead::default();
    loop {
        let byte = match io.read_u8().await {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Err(fail(
                    "it closed the connection before answering".into(),
                    false,
                ))
            }
            Err(e) => return Err(io_fail(e)),
        };
        match head.push(byte) {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => return Err(fail(e.to_string(), false)),
        }
    }
    http::parse_reply(head.bytes()).map_err(|e| {
        let permanent = matches!(&e, http::ReplyError::Refused(r) if r.status == 407);
        let advice = match &e {
            http::ReplyError::Refused(r) if r.status == 407 && proxy.user.is_some() => {
                ": the proxy refused its user and password"
            }
            http::ReplyError::Refused(r) if r.status == 407 => {
                ": it wants a user and password (http://USER:PASSWORD@host:port, or proxy_password_file)"
            }
            _ => "",
        };
        fail(format!("{e}{advice}"), permanent)
    })
}

/// The SOCKS5 exchange over `io`; the connection is open when this returns `Ok`.
async fn socks5_connect<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    proxy: &ProxyUrl,
    host: &str,
    port: u16,
) -> Result<(), ProxyFailure> {
    let fail = |e: socks5::SocksError| ProxyFailure {
        message: format!("through the proxy {proxy}: {e}"),
        permanent: socks5::is_permanent(&e),
    };
    let io_fail = |e: std::io::Error| ProxyFailure {
        message: format!("through the proxy {proxy}: talking to it: {e}"),
        permanent: false,
    };
    let creds = proxy.credentials();
    let request = socks5::connect_request(host, port).map_err(fail)?;
    io.write_all(&socks5::greeting(creds.is_some()))
        .await
        .map_err(io_fail)?;
    let mut two = [0u8; 2];
    io.read_exact(&mut two).await.map_err(io_fail)?;
    if socks5::parse_method(two, creds.is_some()).map_err(fail)? == socks5::Method::UserPassword {
        let (user, pass) = creds.unwrap_or_default();
        io.write_all(&socks5::credentials(user, pass).map_err(fail)?)
            .await
            .map_err(io_fail)?;
        io.read_exact(&mut two).await.map_err(io_fail)?;
        socks5::parse_credentials_answer(two).map_err(fail)?;
    }
    io.write_all(&request).await.map_err(io_fail)?;
    let mut head = [0u8; 4];
    io.read_exact(&mut head).await.map_err(io_fail)?;
    let mut rest = socks5::parse_connect_head(head).map_err(fail)?;
    if rest == 0 {
        rest = usize::from(io.read_u8().await.map_err(io_fail)?) + 2;
    }
    // The bound address and port: at most 255 + 2 bytes, read and dropped.
    let mut bound = [0u8; 257];
    io.read_exact(&mut bound[..rest]).await.map_err(io_fail)?;
    Ok(())
}
