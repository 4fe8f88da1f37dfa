//! One port for the tunnel and a website (`fallback`): where the server listens on 443 beside a
//! real web server, every connection whose TLS ClientHello does not offer ALPN `ncx/1` — a
//! browser, curl, a scanner, plain HTTP — is passed to the web server untouched: its original
//! bytes, ClientHello included, then both directions spliced. The web server therefore does its
//! own TLS with its own certificate, and ncx never terminates or reads the website's traffic.
//!
//! Sorting looks at the ClientHello only (rustls's `Acceptor`, on a copy of the bytes), under the
//! handshake deadline and within [`MAX_SORT_BYTES`], so a connection that never finishes its hello
//! costs no more than any other handshake.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tracing::{debug, warn};

use crate::ratelimit::LogLimiter;

/// The most bytes read to find the end of a ClientHello. Real ones are 0.5–2 KB (post-quantum key
/// shares included); TLS allows more, but a hello that needs more than this goes to the website.
pub const MAX_SORT_BYTES: usize = 16 * 1024;

/// Time for the web server to accept the connection passed to it.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Who a connection is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Sorted {
    /// A TLS ClientHello that offers ALPN `ncx/1`: an ncx client.
    Ncx,
    /// Plain HTTP, where the server takes WebSocket upgrades: its request decides.
    Http,
    /// Anything else: the website's.
    Website,
}

/// Sorts a connection by its first bytes; `None` while more are needed. `http`: plain HTTP may
/// be an ncx client's WebSocket upgrade (`websocket_path` is set).
pub(super) fn sort(first: &[u8], http: bool) -> Option<Sorted> {
    match first.first() {
        None => return None,
        // A TLS handshake record; anything else (plain HTTP, say) is not for the tunnel.
        Some(0x16) => {}
        // A request line starts with its method, in capitals.
        Some(b) if http && b.is_ascii_uppercase() => return Some(Sorted::Http),
        Some(_) => return Some(Sorted::Website),
    }
    let mut acceptor = rustls::server::Acceptor::default();
    let mut rest = first;
    while !rest.is_empty() {
        match acceptor.read_tls(&mut rest) {
            Ok(0) | Err(_) => return Some(Sorted::Website),
            Ok(_) => {}
        }
    }
    match acceptor.accept() {
        Ok(None) if first.len() < MAX_SORT_BYTES => None,
        Ok(None) | Err(_) => Some(Sorted::Website),
        Ok(Some(hello)) => {
            let offers_ncx = hello
                .client_hello()
                .alpn()
                .is_some_and(|mut protocols| protocols.any(|p| p == ncx_proto::ALPN));
            Some(if offers_ncx {
                Sorted::Ncx
            } else {
                Sorted::Website
            })
        }
    }
}

/// Where website connections go, and how many may be open at once.
#[derive(Debug)]
pub(super) struct Fallback {
    /// The web server (`HOST:PORT`).
    pub to: String,
    slots: Arc<Semaphore>,
    max: usize,
    log: LogLimiter,
}

impl Fallback {
    pub fn new(to: String, max: usize) -> Self {
        Fallback {
            to,
            slots: Arc::new(Semaphore::new(max)),
            max,
            log: LogLimiter::default(),
        }
    }

    /// Passes `visitor`, whose first bytes `first` were already read, to the web server, and
    /// splices until both sides are done or `cancel` completes.
    pub async fn pass(
        &self,
        visitor: TcpStream,
        peer: SocketAddr,
        first: Vec<u8>,
        cancel: impl std::future::Future<Output = ()>,
    ) {
        let Ok(_slot) = self.slots.clone().try_acquire_owned() else {
            if let Some(held_back) = self.log.allow() {
                warn!(%peer, held_back, limit = self.max, "closed a website connection: max_fallback_connections are open");
            }
            return;
        };
        let web = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&self.to)).await {
            Ok(Ok(web)) => web,
            Ok(Err(e)) => return self.unreachable(&e.to_string()),
            Err(_) => return self.unreachable("it did not accept within 5 s"),
        };
        let _ = web.set_nodelay(true);
        let mut web = web;
        if let Err(e) = web.write_all(&first).await {
            debug!(%peer, error = %e, "the website closed before taking the first bytes");
            return;
        }
        drop(first);
        let done = crate::splice::splice(visitor, web, cancel).await;
        debug!(%peer, to_website = done.from_a, from_website = done.from_b, end = ?done.end, "website connection ended");
    }

    fn unreachable(&self, why: &str) {
        if let Some(held_back) = self.log.allow() {
            warn!(fallback = %self.to, held_back, "cannot reach the website for a connection that is not ncx: {why}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sort_tls(first: &[u8]) -> Option<Sorted> {
        sort(first, false)
    }

    /// A real ClientHello from rustls, offering `alpn`.
    fn client_hello(alpn: &[&[u8]]) -> Vec<u8> {
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let name = rustls::pki_types::ServerName::try_from("tunnel.example").unwrap();
        let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        let mut out = Vec::new();
        while conn.wants_write() {
            conn.write_tls(&mut out).unwrap();
        }
        out
    }

    #[test]
    fn the_alpn_of_the_hello_decides_and_only_a_whole_hello_counts() {
        let ncx = client_hello(&[ncx_proto::ALPN]);
        let browser = client_hello(&[b"h2", b"http/1.1"]);
        let bare = client_hello(&[]);
        for cut in 0..ncx.len() {
            assert_eq!(sort_tls(&ncx[..cut]), None, "{cut} of {} bytes", ncx.len());
        }
        assert_eq!(sort_tls(&ncx), Some(Sorted::Ncx));
        assert_eq!(sort_tls(&browser[..browser.len() - 1]), None);
        assert_eq!(sort_tls(&browser), Some(Sorted::Website));
        assert_eq!(sort_tls(&bare), Some(Sorted::Website));
        // ncx/1 among others still is an ncx client.
        assert_eq!(
            sort_tls(&client_hello(&[b"h2", ncx_proto::ALPN])),
            Some(Sorted::Ncx)
        );
    }

    #[test]
    fn anything_else_goes_to_the_website_at_once_or_at_the_cap() {
        assert_eq!(sort_tls(b"GET / HTTP/1.1\r\n"), Some(Sorted::Website));
        assert_eq!(
            sort_tls(b"\x16\x03\x01\x00\x05\x02xxxx"),
            Some(Sorted::Website)
        );
        // Where the server takes WebSocket upgrades, plain HTTP is read on.
        assert_eq!(sort(b"GET / HTTP/1.1\r\n", true), Some(Sorted::Http));
        assert_eq!(sort(b"\x00\x01", true), Some(Sorted::Website));
        // A record header announcing a huge hello that never ends is given up at the cap.
        let mut long = vec![0x16, 0x03, 0x01, 0x3f, 0xff, 0x01, 0x00, 0xff, 0xff];
        long.resize(MAX_SORT_BYTES, 0);
        assert_eq!(sort_tls(&long), Some(Sorted::Website));
    }
}
