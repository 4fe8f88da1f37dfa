//! End-to-end: real server and client code, real TLS with certificates made here, real sockets on
//! 127.0.0.1 with OS-assigned ports.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_visitors_with_random_payloads_echo_exactly() {
    let pki = Pki::new();
    let server = TestServer::start(&pki, server_settings(vec![identity("office", "t0ken")])).await;
    let echo = echo_service().await;
    let client = RunningClient::start(client_settings(
        server.addr,
        pki.pinned(),
        "office",
        "t0ken",
        vec![service("echo", echo, 0)],
    ))
    .await;
    let public: std::net::SocketAddr = ([127, 0, 0, 1], client.port("echo")).into();

    let mut tasks = tokio::task::JoinSet::new();
    let mut total = 0usize;
    for i in 0..200u64 {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (i + 1));
        let len = usize::try_from(rng.next() % (1024 * 1024 + 1)).unwrap();
        total += len;
        let payload = rng.bytes(len);
        tasks.spawn(async move {
            let back = exchange(public, &payload).await.expect("exchange");
            assert!(
                back == payload,
                "visitor {i}: {} bytes sent, {} back, content differs or truncated",
                payload.len(),
                back.len()
            );
        });
    }
    let done = tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(r) = tasks.join_next().await {
            r.expect("visitor task");
        }
    })
    .await;
    assert!(
        done.is_ok(),
        "200 visitors ({total} bytes) did not finish in time"
    );
    client.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn server_speaks_first_service_works() {
    let pki = Pki::new();
    let server = TestServer::start(&pki, server_settings(vec![identity("office", "t")])).await;
    let svc = banner_service(b"SSH-2.0-test\r\n").await;
    let client = RunningClient::start(client_settings(
        server.addr,
        pki.pinned(),
        "office",
        "t",
        vec![service("ssh", svc, 0)],
    ))
    .await;
    let mut s = TcpStream::connect(("127.0.0.1", client.port("ssh")))
        .await
        .unwrap();
    // Read the banner before sending anything: the tunnel must not wait for the visitor to speak.
    let mut banner = [0u8; 14];
    tokio::time::timeout(WAIT, s.read_exact(&mut banner))
        .await
        .expect("banner arrives without the visitor writing")
        .unwrap();
    assert_eq!(&banner, b"SSH-2.0-test\r\n");
    s.write_all(b"hi").await.unwrap();
    let mut hi = [0u8; 2];
    s.read_exact(&mut hi).await.unwrap();
    assert_eq!(&hi, b"hi");
    drop(s);
    client.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn half_close_visitor_gets_the_whole_answer() {
    let pki = Pki::new();
    let server = TestServer::start(&pki, server_settings(vec![identity("office", "t")])).await;
    let svc = read_all_then_answer_service(3 * 1024 * 1024).await;
    let client = RunningClient::start(client_settings(
        server.addr,
        pki.pinned(),
        "office",
        "t",
        vec![service("svc", svc, 0)],
    ))
    .await;
    let public = ([127, 0, 0, 1], client.port("svc")).into();
    let request = Rng(7).bytes(100_000);
    let answer = tokio::time::timeout(WAIT, exchange(public, &request))
        .await
        .unwrap()
        .unwrap();
    let header = b"got 100000 bytes\n";
    assert_eq!(&answer[..header.len()], header);
    assert_eq!(
        answer.len(),
        header.len() + 3 * 1024 * 1024,
        "the whole answer after our FIN"
    );
    client.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn two_services_on_one_client_and_two_clients_on_one_server() {
    let pki = Pki::new();
    let server = TestServer::start(
        &pki,
        server_settings(vec![identity("a", "ta"), identity("b", "tb")]),
    )
    .await;
    let s1 = banner_service(b"one\n").await;
    let s2 = banner_service(b"two\n").await;
    let s3 = banner_service(b"three\n").await;
    let a = RunningClient::start(client_settings(
        server.addr,
        pki.pinned(),
        "a",
        "ta",
        vec![service("one", s1, 0), service("two", s2, 0)],
    ))
    .await;
    let b = RunningClient::start(client_settings(
        server.addr,
        pki.ca_trust(),
        "b",
        "tb",
        vec![service("three", s3, 0)],
    ))
    .await;
    for (port, want) in [
        (a.port("one"), "one\n"),
        (a.port("two"), "two\n"),
        (b.port("three"), "three\n"),
    ] {
        assert_ne!(port, 0, "remote port 0 is replaced by the bound port");
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let mut buf = vec![0u8; want.len()];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(buf, want.as_bytes());
    }
    a.stop().await;
    b.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn explicit_remote_port_is_bound() {
    let pki = Pki::new();
    // Find a free port, release it, and ask for it explicitly.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let server = TestServer::start(&pki, server_settings(vec![identity("a", "t")])).await;
    let svc = banner_service(b"x").await;
    let client = RunningClient::start(client_settings(
        server.addr,
        pki.pinned(),
        "a",
        "t",
        vec![service("x", svc, port)],
    ))
    .await;
    assert_eq!(client.port("x"), port);
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut b = [0u8; 1];
    s.read_exact(&mut b).await.unwrap();
    drop(s);
    client.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn public_port_refuses_within_a_second_after_the_client_stops() {
    let pki = Pki::new();
    let server = TestServer::start(&pki, server_settings(vec![identity("a", "t")])).await;
    let echo = echo_service().await;
    let client = RunningClient::start(client_settings(
        server.addr,
        pki.pinned(),
        "a",
        "t",
        vec![service("e", echo, 0)],
    ))
    .await;
    let public = ([127, 0, 0, 1], client.port("e")).into();
    assert_eq!(exchange(public, b"x").await.unwrap(), b"x");
    client.stop().await;
    let took = wait_until_refused(public, Duration::from_secs(1)).await;
    println!("public port refused {took:?} after the client stopped");
    server.stop().await;
}

#[tokio::test]
async fn session_death_resets_visitors_instead_of_a_clean_end() {
    let pki = Pki::new();
    let server = TestServer::start(&pki, server_settings(vec![identity("a", "t")])).await;
    // A service that sends part of a reply and then waits forever.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let svc = l.local_addr().unwrap();
    let (accepted_tx, accepted_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        s.write_all(b"partial").await.unwrap();
        let _ = accepted_tx.send(());
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink).await;
    });
    let client = RunningClient::start(client_settings(
        server.addr,
        pki.pinned(),
        "a",
        "t",
        vec![service("s", svc, 0)],
    ))
    .await;
    let mut visitor = TcpStream::connect(("127.0.0.1", client.port("s")))
        .await
        .unwrap();
    let mut buf = [0u8; 7];
    visitor.read_exact(&mut buf).await.unwrap();
    accepted_rx.await.unwrap();
    client.kill().await;
    let mut rest = Vec::new();
    let r = tokio::time::timeout(WAIT, visitor.read_to_end(&mut rest))
        .await
        .expect("the visitor learns of the end");
    let err = r.expect_err("a lost session must reset the visitor, not end it cleanly");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
    server.stop().await;
}

#[tokio::test]
async fn refused_local_service_closes_only_that_visitor() {
    let pki = Pki::new();
    let server = TestServer::start(&pki, server_settings(vec![identity("a", "t")])).await;
    // A port with nothing listening.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let echo = echo_service().await;
    let client = RunningClient::start(client_settings(
        server.addr,
        pki.pinned(),
        "a",
        "t",
        vec![service("dead", dead, 0), service("echo", echo, 0)],
    ))
    .await;
    let dead_public = ([127, 0, 0, 1], client.port("dead")).into();
    let echo_public = ([127, 0, 0, 1], client.port("echo")).into();
    for _ in 0..3 {
        let r = tokio::time::timeout(WAIT, exchange(dead_public, b"hello"))
            .await
            .unwrap();
        match r {
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
            Ok(data) => panic!(
                "a refused visitor must be reset, got {} bytes and a clean end",
                data.len()
            ),
        }
        assert_eq!(
            exchange(echo_public, b"still here").await.unwrap(),
            b"still here"
        );
    }
    client.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn reconnecting_identity_takes_over_its_services() {
    let pki = Pki::new();
    let server = TestServer::start(&pki, server_settings(vec![identity("a", "t")])).await;
    let echo = echo_service().await;
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let settings = client_settings(
        server.addr,
        pki.pinned(),
        "a",
        "t",
        vec![service("e", echo, port)],
    );
    let first = RunningClient::start(settings.clone()).await;
    assert_eq!(first.port("e"), port);
    // The first client is still connected (say its network vanished silently); the second must not be
    // locked out.
    let second = RunningClient::start(settings).await;
    assert_eq!(
        second.port("e"),
        port,
        "the new session takes over the port"
    );
    let first_end = tokio::time::timeout(WAIT, first.task)
        .await
        .unwrap()
        .unwrap();
    let err = first_end.expect_err("the replaced session ends");
    assert!(err.to_string().contains("newer session"), "{err}");
    assert_eq!(
        exchange(([127, 0, 0, 1], port).into(), b"x").await.unwrap(),
        b"x"
    );
    second.stop().await;
    server.stop().await;
}
