//! The WebSocket transport end to end, without anything in front: a client whose session travels
//! inside a WebSocket (`ws://`) to a server that takes upgrades of its `websocket_path` on the
//! same listener as plain clients. What happens to a wrong path, with and without a website, and
//! to a text frame. (nginx in front, with `wss://`, is in tests/fronts.rs.)

mod common;

use std::net::SocketAddr;

use common::*;
use ncx::client::ClientError;

#[tokio::test]
async fn a_session_inside_a_websocket_carries_visitors_beside_plain_clients() {
    let pki = Pki::new();
    let mut ss = server_settings(vec![identity("a", "t"), identity("b", "t")]);
    ss.websocket_path = Some("/ncx".into());
    let server = TestServer::start(&pki, ss).await;
    let echo = echo_service().await;
    let url = format!("ws://127.0.0.1:{}/ncx", server.addr.port());
    let ws = RunningClient::start(over_websocket(
        client_settings(
            server.addr,
            pki.pinned(),
            "a",
            "t",
            vec![service("e", echo, 0)],
        ),
        &url,
        None,
    ))
    .await;
    let plain = RunningClient::start(client_settings(
        server.addr,
        pki.pinned(),
        "b",
        "t",
        vec![service("e", echo, 0)],
    ))
    .await;
    for (client, seed) in [(&ws, 1), (&plain, 2)] {
        let public = SocketAddr::from(([127, 0, 0, 1], client.port("e")));
        let payload = Rng(seed).bytes(1_000_000);
        assert_eq!(exchange(public, &payload).await.unwrap(), payload);
    }
    ws.stop().await;
    plain.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn a_wrong_path_or_a_server_without_websockets_is_a_clear_refusal() {
    let pki = Pki::new();
    let mut ss = server_settings(vec![identity("a", "t")]);
    ss.websocket_path = Some("/ncx".into());
    let server = TestServer::start(&pki, ss).await;
    let echo = echo_service().await;
    let url = format!("ws://127.0.0.1:{}/other", server.addr.port());
    let err = connect(over_websocket(
        client_settings(
            server.addr,
            pki.pinned(),
            "a",
            "t",
            vec![service("e", echo, 0)],
        ),
        &url,
        None,
    ))
    .await
    .err()
    .expect("a wrong path is refused");
    assert!(matches!(err, ClientError::WebSocket(_)), "{err:?}");
    assert!(err.is_permanent(), "a 404 needs a configuration change");
    assert_eq!(
        err.to_string(),
        format!(
            "through the WebSocket ws://127.0.0.1:{}/other: the server answered 404 Not Found",
            server.addr.port()
        )
    );
    server.stop().await;
}

/// rustls is built with TLS 1.2 for the TLS ncx makes to web servers and proxies (the outer TLS
/// of `wss://`); ncx's own sessions stay TLS 1.3 only: a client offering only TLS 1.2 is refused
/// at the handshake.
#[tokio::test]
async fn the_server_still_refuses_tls_1_2() {
    let pki = Pki::new();
    let server = TestServer::start(&pki, server_settings(vec![identity("a", "t")])).await;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca_der.clone()).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS12])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![ncx_proto::ALPN.to_vec()];
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let err = tokio::time::timeout(
        WAIT,
        tokio_rustls::TlsConnector::from(std::sync::Arc::new(config)).connect(name, tcp),
    )
    .await
    .expect("the handshake ends in time")
    .expect_err("TLS 1.2 is refused");
    assert!(err.to_string().contains("ProtocolVersion"), "{err}");
    server.stop().await;
}

/// The flags: `ncx server --websocket-path` and `ncx client --websocket URL`, as processes, with
/// a visitor's bytes through and the client saying how it reaches the server.
#[tokio::test]
async fn the_flags_open_a_websocket_session_between_processes() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = server_command(dir.path(), "127.0.0.1:0".parse().unwrap())
        .args(["--websocket-path", "/tunnel"])
        .spawn()
        .unwrap();
    let line = wait_for_line(&mut server, "server listening").await;
    let addr: SocketAddr = log_field(&line, "addr").parse().unwrap();
    let echo = echo_service().await;
    let mut client = ncx_process()
        .args([
            "client",
            "--websocket",
            &format!("ws://{addr}/tunnel"),
            "--identity",
            "a",
        ])
        .args(["--server-fingerprint", &fingerprint(dir.path())])
        .args(["--service", &format!("e={echo}@0")])
        .env("NCX_TOKEN", "t")
        .spawn()
        .unwrap();
    let mut lines = LogLines::new(&mut client);
    let how = lines
        .wait_for("reaching the server through a WebSocket")
        .await;
    assert!(how.contains(&format!("url=ws://{addr}/tunnel")), "{how}");
    let line = lines.wait_for("service available").await;
    let public: SocketAddr = log_field(&line, "public").parse().unwrap();
    let payload = Rng(5).bytes(100_000);
    let got = exchange(SocketAddr::from(([127, 0, 0, 1], public.port())), &payload)
        .await
        .unwrap();
    assert!(got == payload, "the visitor's bytes came back unchanged");
}

/// On a port shared with a website, a request that is not an upgrade of ncx's path — a browser's
/// GET, an upgrade of another path — goes to the website with its bytes untouched, while ncx's
/// upgrade is a client. An echo service stands in for the website, so what it got comes back.
#[tokio::test]
async fn other_http_goes_to_the_website_and_the_upgrade_to_the_tunnel() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pki = Pki::new();
    let website = echo_service().await;
    let mut ss = server_settings(vec![identity("a", "t")]);
    ss.websocket_path = Some("/ncx".into());
    ss.fallback = Some(website.to_string());
    let server = TestServer::start(&pki, ss).await;
    for request in [
        &b"GET / HTTP/1.1\r\nHost: www.example.com\r\n\r\n"[..],
        b"GET /chat HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    ] {
        let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        tcp.write_all(request).await.unwrap();
        let mut back = vec![0u8; request.len()];
        tokio::time::timeout(WAIT, tcp.read_exact(&mut back))
            .await
            .expect("the website answers in time")
            .unwrap();
        assert_eq!(back, request, "the website got the request as sent");
    }
    let echo = echo_service().await;
    let url = format!("ws://127.0.0.1:{}/ncx", server.addr.port());
    let client = RunningClient::start(over_websocket(
        client_settings(
            server.addr,
            pki.pinned(),
            "a",
            "t",
            vec![service("e", echo, 0)],
        ),
        &url,
        None,
    ))
    .await;
    let public = SocketAddr::from(([127, 0, 0, 1], client.port("e")));
    let payload = Rng(6).bytes(100_000);
    assert!(exchange(public, &payload).await.unwrap() == payload);
    client.stop().await;
    server.stop().await;
}
