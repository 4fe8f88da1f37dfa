//! Invariants checked on arbitrary input, shared by the fuzz targets in `fuzz/` and by the test
//! that replays their committed corpora (`tests/fuzz_corpus.rs`), so a regression is caught on
//! stable Rust without a fuzzer. Every function panics when an invariant is broken.
#![doc(hidden)]

use std::net::SocketAddr;
use std::time::Duration;

use ncx_proto::{Message, Name};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::runtime::Runtime;
use tokio_util::compat::FuturesAsyncReadCompatExt;
use tokio_util::sync::CancellationToken;

use crate::auth::{ExportedKey, Token};
use crate::config::{
    ClientFile, ClientSettings, IdentityPolicy, PortRange, ServerCert, ServerSettings, ServiceSpec,
    Source,
};
use crate::server::Server;
use crate::tls::ServerTrust;

/// Keying material the harness pretends its untrusted sessions exported from TLS.
const EXPORTED: [u8; 32] = [0x42; 32];
/// The identity the authenticated fuzz sessions use (not the well-behaved client's).
const FUZZ_IDENTITY: &str = "fuzz";
/// The group the fuzz identity may join (the name the specification's vectors use).
const FUZZ_GROUP: &str = "desks";
const FUZZ_TOKEN: &str = "fuzz-token";
/// The good client's private service, which the fuzz identity may visit.
const PRIVATE_SERVICE: &str = "private-echo";
/// An untrusted session must be over within this long after its input ends.
const SESSION_DEADLINE: Duration = Duration::from_secs(10);

/// Configuration text: a clear error or a valid configuration, never a panic; an error that points
/// into the text points at a line that exists.
pub fn config(text: &str) {
    let lines = text.lines().count().max(1) + 1;
    let check = |e: crate::config::ConfigError| {
        let msg = e.to_string();
        assert!(!msg.is_empty());
        if let crate::config::ConfigError::At { line, .. } = e {
            assert!(line >= 1 && line <= lines, "line {line} of {lines}: {msg}");
        }
    };
    if let Err(e) = ServerSettings::from_source(&Source::text("server.toml", text)) {
        check(e);
    }
    if let Err(e) = ClientSettings::from_source(
        &Source::text("client.toml", text),
        ClientFile::default(),
        None,
    ) {
        check(e);
    }
}

/// A proxy's answers, read the way the dialer reads them (`crate::proxy`): `data` as an HTTP
/// proxy's answer to CONNECT, and as a SOCKS5 server's answers. Never panics; the HTTP head is
/// never buffered past its cap; a refusal's text, which comes from the proxy, is escaped in the
/// message a user sees.
pub fn proxy_replies(data: &[u8]) {
    use crate::proxy::{
        parse_http_reply, parse_socks5_connect_head, parse_socks5_method, ReplyHead, MAX_REPLY_HEAD,
    };
    let mut head = ReplyHead::default();
    let mut verdict = None;
    for b in data {
        match head.push(*b) {
            Ok(false) => {}
            Ok(true) => {
                verdict = Some(parse_http_reply(head.bytes()).map_err(|e| e.to_string()));
                break;
            }
            Err(e) => {
                verdict = Some(Err(e.to_string()));
                break;
            }
        }
    }
    assert!(
        head.bytes().len() <= MAX_REPLY_HEAD,
        "the head outgrew its cap"
    );
    if let Some(Err(message)) = verdict {
        assert!(
            !message.chars().any(char::is_control),
            "a proxy's text reached a message unescaped: {message:?}"
        );
    }
    // SOCKS5: the method answer, the credentials answer, the connect answer's head, and for a
    // name the length byte of what follows; each answer is fixed in size.
    let take = |at: usize, n: usize| data.get(at..at + n);
    if let Some(&[a, b]) = take(0, 2) {
        for with_credentials in [false, true] {
            if let Err(e) = parse_socks5_method([a, b], with_credentials) {
                assert!(!e.to_string().chars().any(char::is_control));
            }
        }
    }
    if let Some(&[a, b, c, d]) = take(2, 4) {
        match parse_socks5_connect_head([a, b, c, d]) {
            Ok(rest) => assert!(rest <= 16 + 2, "{rest} bytes of bound address"),
            Err(e) => assert!(!e.to_string().chars().any(char::is_control)),
        }
    }
}

/// The WebSocket transport on arbitrary bytes: its frame headers
/// (`ncx_proto::check::ws_header_arbitrary`); the upgrade's request and answer parsers; and
/// [`crate::websocket::WsStream`] reading `data` as frames from a client and from a server, which
/// must end (with data, an end or an error) without panicking, and never yield more bytes than
/// were given.
pub fn websocket(data: &[u8]) {
    use crate::websocket::handshake;
    use tokio::io::AsyncReadExt;
    ncx_proto::check::ws_header_arbitrary(data);
    if let Ok(Some(len)) = handshake::head_len(data) {
        assert!(len <= handshake::MAX_HEAD && len <= data.len());
        let _ = handshake::read_request(&data[..len]);
        if let Err(e) = handshake::check_answer(&data[..len], "dGhlIHNhbXBsZSBub25jZQ==") {
            assert!(!e.to_string().chars().any(char::is_control), "{e}");
        }
    }
    for role in [ncx_proto::WsRole::Client, ncx_proto::WsRole::Server] {
        let io = tokio::io::join(data, tokio::io::sink());
        let mut ws = crate::websocket::WsStream::new(io, role);
        let mut got = Vec::new();
        // A slice never waits, so this ends at once: at the data's end or at its first error.
        let _ = futures::executor::block_on(ws.read_to_end(&mut got));
        assert!(got.len() <= data.len(), "more bytes out than in");
    }
}

/// A running server with one well-behaved client session, into which untrusted sessions are fed.
pub struct SessionHarness {
    rt: Runtime,
    server: Server,
    public: SocketAddr,
    good_client: tokio::task::JoinHandle<Result<(), crate::client::ClientError>>,
    shutdown: CancellationToken,
}

impl SessionHarness {
    /// Starts the server, an echo service and the well-behaved client.
    pub fn new() -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime");
        let shutdown = CancellationToken::new();
        let (server, public, good_client) = rt.block_on(async {
            let (identity, _, _) =
                crate::tls::self_signed(&["localhost".into()]).expect("a certificate");
            let fingerprint = identity.fingerprint();
            let policy = |name: &str, token: &str, ports| IdentityPolicy {
                name: Name::new(name).expect("a valid name"),
                auth: crate::config::ClientAuth::Token(Token::new(token)),
                bind: "127.0.0.1".parse().expect("an address"),
                ports: vec![PortRange(ports)],
            };
            let mut settings = ServerSettings::new(
                "127.0.0.1:0".parse().expect("an address"),
                ServerCert::Auto(Default::default()),
                vec![
                    policy("good", "good-token", 1024..=41_099),
                    policy(FUZZ_IDENTITY, FUZZ_TOKEN, 41_000..=41_099),
                ],
            );
            // A group the fuzz identity may join, public (its own ports) and private, so that
            // registrations into groups and health reports reach the group code.
            settings.groups = vec![crate::config::GroupPolicy {
                name: Name::new(FUZZ_GROUP).expect("a valid name"),
                identities: vec![Name::new(FUZZ_IDENTITY).expect("a valid name")],
                bind: "127.0.0.1".parse().expect("an address"),
                ports: vec![PortRange(41_100..=41_199)],
                balance: Default::default(),
            }];
            let server = Server::new(settings, identity).expect("a server");
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("a listener");
            let addr = listener.local_addr().expect("an address");
            tokio::spawn({
                let (server, shutdown) = (server.clone(), shutdown.clone());
                async move { server.run(listener, shutdown).await }
            });
            let echo = TcpListener::bind("127.0.0.1:0").await.expect("a listener");
            let echo_addr = echo.local_addr().expect("an address");
            tokio::spawn(crate::demo::serve_echo(echo, shutdown.clone()));
            let client = crate::client::Client::new(ClientSettings::new(
                addr.to_string(),
                rustls::pki_types::ServerName::try_from("localhost")
                    .expect("a name")
                    .to_owned(),
                ServerTrust::Pinned(vec![fingerprint]),
                Name::new("good").expect("a valid name"),
                Token::new("good-token"),
                vec![
                    ServiceSpec {
                        name: Name::new("echo").expect("a valid name"),
                        local: echo_addr.to_string(),
                        remote_port: 0,
                        access: Default::default(),
                        proxy_protocol: None,
                        visitors: None,
                        group: None,
                        health: None,
                        udp: false,
                    },
                    // Reached by fuzz sessions in visit mode: their bytes cross the bridge into
                    // the good session.
                    ServiceSpec {
                        name: Name::new(PRIVATE_SERVICE).expect("a valid name"),
                        local: echo_addr.to_string(),
                        remote_port: 0,
                        access: Default::default(),
                        proxy_protocol: None,
                        visitors: Some(vec![Name::new(FUZZ_IDENTITY).expect("a valid name")]),
                        group: None,
                        health: None,
                        udp: false,
                    },
                ],
            ))
            .expect("a client");
            let connected = client.connect().await.expect("the good client connects");
            let port = connected
                .port("echo")
                .expect("the echo service is registered");
            let task = tokio::spawn(connected.run(shutdown.clone()));
            (server, SocketAddr::from(([127, 0, 0, 1], port)), task)
        });
        SessionHarness {
            rt,
            server,
            public,
            good_client,
            shutdown,
        }
    }

    /// Feeds `data` to a fresh server session as if it came out of TLS. The first byte picks the
    /// mode: even, the bytes are the raw stream (yamux framing included); odd, the harness opens a
    /// proper yamux session and control stream and authenticates, and then the bytes follow the
    /// hello on the control stream (`mode % 4 == 1`) or are written on a second stream, a visit
    /// substream (`mode % 4 == 3`; the good client offers the private service `private-echo` to
    /// the fuzz identity). The session must end by itself once its input ends, and the
    /// well-behaved session must still work afterwards.
    pub fn feed(&self, data: &[u8]) {
        let (mode, rest) = data.split_first().unwrap_or((&0, &[]));
        let rest = rest.to_vec();
        let authenticated = mode % 2 == 1;
        let visit = mode % 4 == 3;
        self.rt.block_on(async {
            let (server_io, fuzz_io) = tokio::io::duplex(64 * 1024);
            let peer: SocketAddr = "192.0.2.1:40000".parse().expect("an address");
            let session =
                self.server
                    .serve_decrypted(server_io, peer, EXPORTED, CancellationToken::new());
            let feeder = async move {
                if authenticated {
                    feed_authenticated(fuzz_io, &rest, visit).await
                } else {
                    feed_raw(fuzz_io, &rest).await
                }
            };
            tokio::time::timeout(SESSION_DEADLINE, futures::future::join(session, feeder))
                .await
                .expect("an untrusted session ends by itself once its input ends");
            assert!(
                !self.good_client.is_finished(),
                "the well-behaved session must survive"
            );
            let echo = tokio::time::timeout(Duration::from_secs(10), round_trip(self.public))
                .await
                .expect("the well-behaved session answers in time");
            assert!(echo, "the well-behaved session must still carry data");
        });
    }
}

impl Default for SessionHarness {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for SessionHarness {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn round_trip(public: SocketAddr) -> bool {
    let Ok(mut s) = tokio::net::TcpStream::connect(public).await else {
        return false;
    };
    let mut banner = vec![0u8; crate::demo::BANNER.len()];
    if s.read_exact(&mut banner).await.is_err() || s.write_all(b"fz").await.is_err() {
        return false;
    }
    let mut b = [0u8; 2];
    s.read_exact(&mut b).await.is_ok() && &b == b"fz"
}

/// Writes the bytes as the raw decrypted stream, reading whatever the server says until it closes.
async fn feed_raw(io: tokio::io::DuplexStream, data: &[u8]) {
    let (mut r, mut w) = tokio::io::split(io);
    let drain = async {
        let mut sink = vec![0u8; 16 * 1024];
        while matches!(r.read(&mut sink).await, Ok(n) if n > 0) {}
    };
    let write = async {
        let _ = w.write_all(data).await;
        let _ = w.shutdown().await;
    };
    futures::future::join(drain, write).await;
}

/// A real yamux client: a valid hello on the control stream, then the bytes (on the control stream,
/// or with `visit` on a second stream), then close.
async fn feed_authenticated(io: tokio::io::DuplexStream, data: &[u8], visit: bool) {
    let cancel = CancellationToken::new();
    let (handle, driver) =
        crate::mux::start(io, yamux::Mode::Client, Box::new(|_, _| {}), cancel.clone());
    let driver = tokio::spawn(driver);
    let work = async {
        let Ok(stream) = handle.open().await else {
            return;
        };
        let mut ctrl = stream.compat();
        let id = Name::new(FUZZ_IDENTITY).expect("a valid name");
        let hello = Message::Hello {
            version: ncx_proto::PROTOCOL_VERSION,
            identity: id.clone(),
            instance: None,
            proof: crate::auth::prove(&Token::new(FUZZ_TOKEN), &ExportedKey(EXPORTED), &id),
        };
        if crate::framed::write_message(&mut ctrl, &hello)
            .await
            .is_err()
        {
            return;
        }
        let mut sink = vec![0u8; 16 * 1024];
        if visit {
            // Wait for the welcome so the visit is read by an authenticated session.
            let _ = crate::framed::MessageReader::new().read(&mut ctrl).await;
            // yamux announces a stream only with its first frame of data, and closing a stream
            // that never sent any sends nothing: the server would never hear of it, and waiting
            // for its end would wait forever. An empty visit is no input for the server at all.
            let opened = if data.is_empty() {
                None
            } else {
                handle.open().await.ok()
            };
            if let Some(stream) = opened {
                let mut sub = stream.compat();
                let (mut r, mut w) = tokio::io::split(&mut sub);
                let write = async {
                    let _ = w.write_all(data).await;
                    let _ = w.shutdown().await;
                };
                let drain = async { while matches!(r.read(&mut sink).await, Ok(n) if n > 0) {} };
                futures::future::join(write, drain).await;
            }
        } else {
            let _ = ctrl.write_all(data).await;
        }
        // End of input: the server must wind the session up by itself from here.
        let _ = ctrl.shutdown().await;
        while matches!(ctrl.read(&mut sink).await, Ok(n) if n > 0) {}
    };
    work.await;
    cancel.cancel();
    let _ = driver.await;
}
