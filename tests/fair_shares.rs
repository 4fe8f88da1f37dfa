//! One identity at its caps cannot stop another: sessions are capped per identity inside the
//! server's global cap, and services per session (hostile-peers issue, findings 2 and 3).

mod common;

use common::*;
use ncx::client::ClientError;
use ncx_proto::ErrorCode;

#[tokio::test]
async fn one_identity_at_its_session_share_leaves_room_for_the_others() {
    let pki = Pki::new();
    let mut ss = server_settings(vec![identity("v", "t"), identity("a", "t")]);
    ss.max_sessions = 4;
    ss.max_sessions_per_identity = 2;
    let server = TestServer::start(&pki, ss).await;
    // Visit-only sessions (no services), as `ncx visit` opens them.
    let visit_only = || client_settings(server.addr, pki.pinned(), "v", "t", vec![]);
    let first = RunningClient::start(visit_only()).await;
    let second = RunningClient::start(visit_only()).await;
    let err = connect(visit_only())
        .await
        .err()
        .expect("a third session of v is over its share");
    match &err {
        ClientError::Refused { code, message } => {
            assert_eq!(*code, ErrorCode::LimitReached);
            assert!(
                message.contains("identity v holds its maximum of 2 sessions"),
                "{message}"
            );
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(!err.is_permanent(), "a share frees up when a session ends");
    // Another identity still gets in, with its service.
    let echo = echo_service().await;
    let a = RunningClient::start(client_settings(
        server.addr,
        pki.pinned(),
        "a",
        "t",
        vec![service("e", echo, 0)],
    ))
    .await;
    let port = a.port("e");
    wait_for_tunnel(std::net::SocketAddr::from(([127, 0, 0, 1], port))).await;
    // A session of v that ends gives its place back, once the server has seen it end (polled,
    // bounded by WAIT).
    first.stop().await;
    let started = tokio::time::Instant::now();
    let again = loop {
        match connect(visit_only()).await {
            Ok(c) => break c,
            Err(ClientError::Refused {
                code: ErrorCode::LimitReached,
                ..
            }) if started.elapsed() < WAIT => {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await
            }
            Err(e) => panic!("the freed share is not given back: {e}"),
        }
    };
    drop(again);
    for c in [second, a] {
        c.stop().await;
    }
    server.stop().await;
}

#[tokio::test]
async fn services_beyond_the_session_cap_are_refused_and_others_unaffected() {
    let pki = Pki::new();
    let mut ss = server_settings(vec![identity("a", "t"), identity("b", "t")]);
    ss.max_services_per_session = 3;
    let server = TestServer::start(&pki, ss).await;
    let echo = echo_service().await;
    let many: Vec<_> = (0..4)
        .map(|i| {
            if i % 2 == 0 {
                service(&format!("s{i}"), echo, 0)
            } else {
                private_service(&format!("s{i}"), echo, &["b"])
            }
        })
        .collect();
    let a = RunningClient::start(client_settings(server.addr, pki.pinned(), "a", "t", many)).await;
    let refused: Vec<_> = a.ports.iter().filter(|(_, r)| r.is_err()).collect();
    assert_eq!(refused.len(), 1, "{:?}", a.ports);
    let (name, r) = refused[0];
    assert_eq!(name, "s3");
    let text = r.as_ref().unwrap_err();
    assert!(text.contains("maximum of 3 services"), "{text}");
    // The three that fit work, and another identity registers as many of its own.
    wait_for_tunnel(std::net::SocketAddr::from(([127, 0, 0, 1], a.port("s0")))).await;
    let b = RunningClient::start(client_settings(
        server.addr,
        pki.pinned(),
        "b",
        "t",
        (0..3).map(|i| service(&format!("t{i}"), echo, 0)).collect(),
    ))
    .await;
    assert!(b.ports.iter().all(|(_, r)| r.is_ok()), "{:?}", b.ports);
    a.stop().await;
    b.stop().await;
    server.stop().await;
}

/// The client bounds what a server can make it hold: visitors beyond `max_visitors` are reset
/// (hostile-peers issue, finding 10), and a place that frees up is used again.
#[tokio::test]
async fn the_client_caps_the_visitors_a_server_may_open() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pki = Pki::new();
    let server = TestServer::start(&pki, server_settings(vec![identity("a", "t")])).await;
    let echo = echo_service().await;
    let mut cs = client_settings(
        server.addr,
        pki.pinned(),
        "a",
        "t",
        vec![service("e", echo, 0)],
    );
    cs.max_visitors = 2;
    let client = RunningClient::start(cs).await;
    let public = std::net::SocketAddr::from(([127, 0, 0, 1], client.port("e")));
    let served = |mut c: tokio::net::TcpStream| async move {
        c.write_all(b"x").await.ok()?;
        let mut b = [0u8; 1];
        tokio::time::timeout(WAIT, c.read_exact(&mut b))
            .await
            .ok()?
            .ok()?;
        Some(c)
    };
    let first = served(tokio::net::TcpStream::connect(public).await.unwrap())
        .await
        .expect("the first visitor is served");
    let second = served(tokio::net::TcpStream::connect(public).await.unwrap())
        .await
        .expect("the second visitor is served");
    let third = served(tokio::net::TcpStream::connect(public).await.unwrap()).await;
    assert!(
        third.is_none(),
        "the third visitor is over the client's cap"
    );
    drop(first);
    // The freed place is used again (polled: the client sees the first visitor end a moment
    // after it closes, bounded by WAIT).
    let started = tokio::time::Instant::now();
    let again = loop {
        if let Some(c) = served(tokio::net::TcpStream::connect(public).await.unwrap()).await {
            break c;
        }
        assert!(
            started.elapsed() < WAIT,
            "the freed place is not given back"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    drop((second, again));
    client.stop().await;
    server.stop().await;
}

/// An identity's visitors are capped over all its services and sessions, and one identity at its
/// cap leaves another's visitors alone.
#[tokio::test]
async fn an_identity_at_its_visitor_share_does_not_stop_another_identitys_visitors() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pki = Pki::new();
    let mut ss = server_settings(vec![identity("a", "t"), identity("b", "t")]);
    ss.max_visitors_per_identity = 2;
    let server = TestServer::start(&pki, ss).await;
    let echo = echo_service().await;
    let start = |who: &'static str| {
        RunningClient::start(client_settings(
            server.addr,
            pki.pinned(),
            who,
            "t",
            vec![service("one", echo, 0), service("two", echo, 0)],
        ))
    };
    let a = start("a").await;
    let b = start("b").await;
    let public =
        |c: &RunningClient, s: &str| std::net::SocketAddr::from(([127, 0, 0, 1], c.port(s)));
    let served = |addr: std::net::SocketAddr| async move {
        let mut c = tokio::net::TcpStream::connect(addr).await.ok()?;
        c.write_all(b"x").await.ok()?;
        let mut byte = [0u8; 1];
        tokio::time::timeout(WAIT, c.read_exact(&mut byte))
            .await
            .ok()?
            .ok()?;
        Some(c)
    };
    // a's two places, one on each of its services.
    let held = (
        served(public(&a, "one")).await.expect("a's first visitor"),
        served(public(&a, "two")).await.expect("a's second visitor"),
    );
    assert!(
        served(public(&a, "one")).await.is_none(),
        "a third visitor of a is over a's share"
    );
    // b is not affected.
    let b_held = (
        served(public(&b, "one")).await.expect("b's first visitor"),
        served(public(&b, "two")).await.expect("b's second visitor"),
    );
    drop((held, b_held));
    a.stop().await;
    b.stop().await;
    server.stop().await;
}
