//! Text a peer sends reaches the logs escaped: a client that answers a visitor with a refusal
//! whose message holds a newline, a forged audit line and an escape sequence, and that goes away
//! with such a reason, leaves the visitor's audit line with the reason escaped and no forged line
//! (hostile-peers issue, finding 8).

mod common;

use std::sync::{Arc, Mutex};

use common::*;
use ncx_proto::{ErrorCode, Message, Text};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_util::compat::FuturesAsyncReadCompatExt;

/// What the server logs, kept in memory.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Visitors the hostile client refuses.
const VISITORS: usize = 20;

/// Sets a subscriber for this thread (the test's one-thread runtime and every task on it) that
/// keeps what is logged at `level` and above.
fn capture(level: tracing::Level) -> (Captured, tracing::subscriber::DefaultGuard) {
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer({
            let c = captured.clone();
            move || c.clone()
        })
        .with_ansi(false)
        .with_max_level(level)
        .finish();
    (captured, tracing::subscriber::set_default(subscriber))
}

const FORGED: &str =
    "nope\n2026-01-01T00:00:00Z  INFO ncx::audit: visitor connection service=forged end=finished\u{1b}[2K";

// One thread, so the server's tasks log through the subscriber this test sets.
#[tokio::test(flavor = "current_thread")]
async fn peer_text_cannot_forge_log_lines() {
    let (captured, _guard) = capture(tracing::Level::DEBUG);

    let pki = Pki::new();
    let server = TestServer::start(&pki, server_settings(vec![identity("a", "t")])).await;
    // A hand-made client: real TLS, a real hello, then hostile answers.
    let mut session = RawSession::start(server.addr, &pki, ncx_proto::PROTOCOL_VERSION).await;
    assert!(matches!(session.answer, Message::Welcome { .. }));
    let port = match session.register("s", 0).await {
        Message::Registered { remote_port, .. } => remote_port,
        other => panic!("expected the service registered, got {other:?}"),
    };

    // Visitors arrive; the hostile client refuses each with a forged message.
    let started = tokio::time::Instant::now();
    for _ in 0..VISITORS {
        let mut visitor = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let stream = tokio::time::timeout(WAIT, session.inbound.recv())
            .await
            .unwrap()
            .unwrap();
        let mut sub = stream.compat();
        assert!(matches!(
            ncx::framed::MessageReader::new()
                .read(&mut sub)
                .await
                .unwrap(),
            Message::VisitorHeader { .. }
        ));
        let refusal = Message::VisitorStatus {
            refusal: Some((ErrorCode::LocalRefused, Text::new(FORGED))),
        };
        ncx::framed::write_message(&mut sub, &refusal)
            .await
            .unwrap();
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(WAIT, visitor.read_to_end(&mut rest))
            .await
            .expect("the refused visitor is closed");
    }
    let intervals =
        1 + started.elapsed().as_secs() / ncx::ratelimit::DEFAULT_LOG_INTERVAL.as_secs();
    // And it goes away with a forged reason.
    let bye = Message::GoAway {
        code: ErrorCode::ShuttingDown,
        message: Text::new(FORGED),
    };
    session.send(&bye).await;
    // The server has read the go-away once it released the port.
    wait_until_refused(std::net::SocketAddr::from(([127, 0, 0, 1], port)), WAIT).await;
    let error = Message::Error {
        code: ErrorCode::Internal,
        message: Text::new(FORGED),
    };
    session.send(&error).await;
    // The server ends the session on the error, which ends the connection here.
    tokio::time::timeout(WAIT, session.driver)
        .await
        .expect("the server closes the session")
        .unwrap();
    session.cancel.cancel();
    server.stop().await;

    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    // The real audit lines: the target comes before any of the peer's text.
    let audit: Vec<&str> = text
        .lines()
        .filter(|l| {
            l.find("ncx::audit:")
                .is_some_and(|i| l.find("nope").is_none_or(|n| i < n))
        })
        .collect();
    // The refused visitor's, and any of the probes that wait for the port to close.
    assert!(
        audit.iter().all(|l| l.contains("service=s ")),
        "only visitors of s were audited:\n{text}"
    );
    assert!(
        audit.iter().filter(|l| l.contains("nope\\n")).count() >= VISITORS,
        "every refused visitor's audit line carries the escaped reason:\n{text}"
    );
    // The warnings about the client's answers are rate-limited; the audit has every visitor.
    let warnings = text
        .lines()
        .filter(|l| l.contains("the client could not reach the local service"))
        .count() as u64;
    assert!(
        (1..=intervals).contains(&warnings),
        "{warnings} warnings for {VISITORS} refused visitors:\n{text}"
    );
    assert!(
        text.lines()
            .all(|l| !l.contains("service=forged") || l.contains("nope\\n")),
        "a line was forged:\n{text}"
    );
    assert!(
        !text.contains('\u{1b}'),
        "an escape sequence reached the log:\n{text}"
    );
    assert!(
        text.contains("the client is going away") && text.contains("the client ended the session"),
        "the forged reasons were logged (escaped):\n{text}"
    );
}

/// What a hostile peer can make the server log is bounded: connections that never authenticate,
/// and a session that sends thousands of refused registrations, get a rate-limited line each kind,
/// with a count of what was held back (hostile-peers issue, finding 8).
#[tokio::test(flavor = "current_thread")]
async fn floods_of_bad_connections_and_refused_registrations_are_rate_limited() {
    let (captured, _guard) = capture(tracing::Level::INFO);
    let started = tokio::time::Instant::now();
    let pki = Pki::new();
    let server = ncx::server::Server::new(
        server_settings(vec![identity("a", "t")]),
        pki.server_identity(),
    )
    .unwrap();
    let exported = [0x42u8; 32];
    let peer: std::net::SocketAddr = "192.0.2.10:40000".parse().unwrap();
    // 50 connections that send garbage instead of yamux and a hello.
    for _ in 0..50 {
        let (server_io, mut raw) = tokio::io::duplex(4096);
        let session = server.serve_decrypted(
            server_io,
            peer,
            exported,
            tokio_util::sync::CancellationToken::new(),
        );
        let garbage = async move {
            let _ = tokio::io::AsyncWriteExt::write_all(&mut raw, b"GET / HTTP/1.1\r\n\r\n").await;
            let mut sink = Vec::new();
            let _ = raw.read_to_end(&mut sink).await;
        };
        tokio::time::timeout(WAIT, futures::future::join(session, garbage))
            .await
            .expect("a garbage session ends");
    }
    // One authenticated session that sends 200 registrations the server refuses.
    let (server_io, client_io) = tokio::io::duplex(64 * 1024);
    let session = tokio::spawn({
        let server = server.clone();
        async move {
            server
                .serve_decrypted(
                    server_io,
                    peer,
                    exported,
                    tokio_util::sync::CancellationToken::new(),
                )
                .await
        }
    });
    let cancel = tokio_util::sync::CancellationToken::new();
    let (handle, driver) = ncx::mux::start(
        client_io,
        yamux::Mode::Client,
        Box::new(|_, _| {}),
        cancel.clone(),
    );
    let driver = tokio::spawn(driver);
    let mut ctrl = handle.open().await.unwrap().compat();
    let mut reader = ncx::framed::MessageReader::new();
    let hello = hello("a", "t", &ncx::auth::ExportedKey(exported));
    ncx::framed::write_message(&mut ctrl, &hello).await.unwrap();
    assert!(matches!(
        reader.read(&mut ctrl).await.unwrap(),
        Message::Welcome { .. }
    ));
    for i in 0..200 {
        // A private service that lists nobody is always refused.
        let reg = Message::RegisterPrivate {
            group: None,
            service: name(&format!("p{i}")),
            visitors: vec![],
        };
        ncx::framed::write_message(&mut ctrl, &reg).await.unwrap();
        assert!(matches!(
            reader.read(&mut ctrl).await.unwrap(),
            Message::ServiceRefused { .. }
        ));
    }
    cancel.cancel();
    let _ = driver.await;
    tokio::time::timeout(WAIT, session)
        .await
        .expect("the session ends")
        .unwrap();

    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let count = |needle: &str| text.lines().filter(|l| l.contains(needle)).count();
    // One line per kind per interval of the limiter (a slow machine may see a second interval).
    let intervals =
        1 + (started.elapsed().as_secs() / ncx::ratelimit::DEFAULT_LOG_INTERVAL.as_secs());
    for kind in [
        "session ended before authentication",
        "private service refused",
    ] {
        let n = count(kind) as u64;
        assert!(
            (1..=intervals).contains(&n),
            "{n} lines of {kind:?}:\n{text}"
        );
    }
}
