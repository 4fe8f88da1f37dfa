//! Private services and `ncx visit`: no public port, only listed identities reach the service, each
//! local connection of the visiting side becomes a substream that the server joins to the owner's.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use ncx::client::ClientError;
use ncx::config::{ClientSettings, PortRange, VisitSpec};
use ncx_proto::ErrorCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// `ncx visit` in this process: the full client loop with one visit listening on 127.0.0.1:0.
struct Visitor {
    addr: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), ClientError>>,
}

impl Visitor {
    async fn start(server: SocketAddr, pki: &Pki, identity: &str, token: &str, svc: &str) -> Self {
        let mut settings = client_settings(server, pki.pinned(), identity, token, vec![]);
        Self::start_with(&mut settings, svc).await
    }

    async fn start_with(settings: &mut ClientSettings, svc: &str) -> Self {
        let (owner, svc) = svc.split_once('/').expect("OWNER/SERVICE");
        settings.visits = vec![VisitSpec {
            owner: name(owner),
            service: name(svc),
            listen: "127.0.0.1:0".parse().unwrap(),
            udp: false,
        }];
        let listeners = ncx::client::bind_visits(settings).await.unwrap();
        let addr = listeners[0].local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(ncx::client::run_bound(
            settings.clone(),
            listeners,
            shutdown.clone(),
        ));
        Visitor {
            addr,
            shutdown,
            task,
        }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("visitor stops in time")
            .unwrap()
            .expect("visitor ends cleanly on shutdown");
    }
}

/// What a refused local connection sees: the connection ends (reset or EOF) without a byte.
async fn assert_closed_without_data(addr: SocketAddr) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(b"hello?").await;
    let mut buf = Vec::new();
    let r = tokio::time::timeout(WAIT, s.read_to_end(&mut buf))
        .await
        .expect("the refused connection ends in time");
    assert!(buf.is_empty(), "a refused visit got data: {buf:?}");
    if let Err(e) = r {
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
    }
}

fn identities() -> Vec<ncx::config::IdentityPolicy> {
    vec![
        // The owner may not open public ports at all: a private service needs none.
        identity_ports("office", "office-token", vec![]),
        identity_ports("alice", "alice-token", vec![]),
        identity_ports("bob", "bob-token", vec![]),
    ]
}

#[tokio::test]
async fn a_listed_identity_reaches_the_private_service_through_visit() {
    let pki = Pki::new();
    let server = TestServer::start(&pki, server_settings(identities())).await;
    let (svc, accepted) = counting_echo().await;
    let owner = RunningClient::start(client_settings(
        server.addr,
        pki.pinned(),
        "office",
        "office-token",
        vec![private_service("rdp", svc, &["alice"])],
    ))
    .await;
    assert_eq!(owner.ports, vec![("rdp".to_owned(), Ok(0))]);

    let visitor = Visitor::start(server.addr, &pki, "alice", "alice-token", "office/rdp").await;
    // Concurrent connections with distinct payloads, each half-closed: every byte comes back.
    let mut tasks = Vec::new();
    for i in 0..20u64 {
        let addr = visitor.addr;
        tasks.push(tokio::spawn(async move {
            let payload = Rng(i + 1).bytes(64 * 1024 * (i as usize % 4 + 1));
            let back = tokio::time::timeout(WAIT, exchange(addr, &payload))
                .await
                .expect("the exchange finishes in time")
                .unwrap();
            assert!(back == payload, "connection {i}: reply differs");
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 20);
    visitor.stop().await;
    owner.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn an_unlisted_identity_is_refused_and_nothing_reaches_the_owner() {
    let pki = Pki::new();
    let server = TestServer::start(&pki, server_settings(identities())).await;
    let (svc, accepted) = counting_echo().await;
    let owner = RunningClient::start(client_settings(
        server.addr,
        pki.pinned(),
        "office",
        "office-token",
        vec![private_service("rdp", svc, &["alice"])],
    ))
    .await;
    let bob = Visitor::start(server.addr, &pki, "bob", "bob-token", "office/rdp").await;
    assert_closed_without_data(bob.addr).await;
    // A service that does not exist is refused the same way.
    let nowhere = Visitor::start(server.addr, &pki, "alice", "alice-token", "office/vnc").await;
    assert_closed_without_data(nowhere.addr).await;
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        0,
        "a refused visit reached the owner's service"
    );
    // The refusal is per visit: alice still gets through.
    let alice = Visitor::start(server.addr, &pki, "alice", "alice-token", "office/rdp").await;
    assert_eq!(exchange(alice.addr, b"ok").await.unwrap(), b"ok");
    for v in [bob, nowhere, alice] {
        v.stop().await;
    }
    owner.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn refused_visits_block_the_visiting_identity_but_not_its_neighbours() {
    let pki = Pki::new();
    let mut ss = server_settings(identities());
    ss.auth_failures_before_block = 3;
    ss.auth_block = Duration::from_secs(60);
    let server = TestServer::start(&pki, ss).await;
    let (svc, accepted) = counting_echo().await;
    let owner = RunningClient::start(client_settings(
        server.addr,
        pki.pinned(),
        "office",
        "office-token",
        vec![private_service("rdp", svc, &["alice"])],
    ))
    .await;
    let bob = Visitor::start(server.addr, &pki, "bob", "bob-token", "office/rdp").await;
    for _ in 0..3 {
        assert_closed_without_data(bob.addr).await;
    }
    // bob is now blocked from this address: new sessions of bob are refused with the reason...
    let err = connect(client_settings(
        server.addr,
        pki.pinned(),
        "bob",
        "bob-token",
        vec![private_service("other", svc, &["alice"])],
    ))
    .await
    .err()
    .expect("a blocked identity is refused");
    match &err {
        ClientError::Refused { code, message } => {
            assert_eq!(*code, ErrorCode::LimitReached);
            assert!(message.contains("failed authentications"), "{message}");
            assert!(message.contains("identity bob"), "{message}");
        }
        other => panic!("expected a limit refusal, got {other:?}"),
    }
    // ...and so are further visits over bob's already open session.
    assert_closed_without_data(bob.addr).await;
    assert_eq!(accepted.load(Ordering::SeqCst), 0);
    // alice, behind the same address (an office NAT), did nothing wrong and still gets in.
    let alice = Visitor::start(server.addr, &pki, "alice", "alice-token", "office/rdp").await;
    let mut c = TcpStream::connect(alice.addr).await.unwrap();
    c.write_all(b"hi").await.unwrap();
    let mut back = [0u8; 2];
    tokio::time::timeout(WAIT, c.read_exact(&mut back))
        .await
        .expect("alice is served")
        .unwrap();
    assert_eq!(&back, b"hi");
    drop(c);
    alice.stop().await;
    bob.stop().await;
    owner.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn a_visit_session_does_not_take_over_its_identity() {
    let pki = Pki::new();
    let server = TestServer::start(
        &pki,
        server_settings(vec![identity_ports(
            "office",
            "office-token",
            vec![PortRange(1024..=65535)],
        )]),
    )
    .await;
    let (svc, _) = counting_echo().await;
    let owner = RunningClient::start(client_settings(
        server.addr,
        pki.pinned(),
        "office",
        "office-token",
        vec![
            service("web", svc, 0),
            private_service("rdp", svc, &["office"]),
        ],
    ))
    .await;
    let public = SocketAddr::from(([127, 0, 0, 1], owner.port("web")));
    // The same identity visits its own private service from a second session: the first keeps
    // its public port and its private service.
    let visitor = Visitor::start(server.addr, &pki, "office", "office-token", "office/rdp").await;
    assert_eq!(
        exchange(visitor.addr, b"private").await.unwrap(),
        b"private"
    );
    assert_eq!(exchange(public, b"public").await.unwrap(), b"public");
    visitor.stop().await;
    assert_eq!(exchange(public, b"still").await.unwrap(), b"still");
    owner.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn another_identity_cannot_stand_in_for_a_private_service() {
    // bob offers a service of the same name, listing alice too. A visit names the owner, so alice
    // reaches exactly the one she asked for.
    let pki = Pki::new();
    let server = TestServer::start(&pki, server_settings(identities())).await;
    let real = banner_service(b"office\n").await;
    let fake = banner_service(b"bob\n").await;
    let office = RunningClient::start(client_settings(
        server.addr,
        pki.pinned(),
        "office",
        "office-token",
        vec![private_service("rdp", real, &["alice"])],
    ))
    .await;
    let bob = RunningClient::start(client_settings(
        server.addr,
        pki.pinned(),
        "bob",
        "bob-token",
        vec![private_service("rdp", fake, &["alice"])],
    ))
    .await;
    assert_eq!(bob.ports, vec![("rdp".to_owned(), Ok(0))]);
    let to_office = Visitor::start(server.addr, &pki, "alice", "alice-token", "office/rdp").await;
    let to_bob = Visitor::start(server.addr, &pki, "alice", "alice-token", "bob/rdp").await;
    assert_eq!(exchange(to_office.addr, b"").await.unwrap(), b"office\n");
    assert_eq!(exchange(to_bob.addr, b"").await.unwrap(), b"bob\n");
    to_office.stop().await;
    to_bob.stop().await;
    office.stop().await;
    bob.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn visits_wait_for_the_owner_and_end_with_its_session() {
    let pki = Pki::new();
    let server = TestServer::start(&pki, server_settings(identities())).await;
    let svc = banner_service(b"READY\n").await;
    let visitor = Visitor::start(server.addr, &pki, "alice", "alice-token", "office/rdp").await;
    // No owner yet: the visit is refused (the service is not online).
    assert_closed_without_data(visitor.addr).await;
    let owner = RunningClient::start(client_settings(
        server.addr,
        pki.pinned(),
        "office",
        "office-token",
        vec![private_service("rdp", svc, &["alice"])],
    ))
    .await;
    // A long-lived connection through the bridge, then the owner dies: the visitor sees a reset,
    // never a clean end.
    let mut s = TcpStream::connect(visitor.addr).await.unwrap();
    let mut banner = [0u8; 6];
    tokio::time::timeout(WAIT, s.read_exact(&mut banner))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&banner, b"READY\n");
    owner.kill().await;
    let mut rest = Vec::new();
    let end = tokio::time::timeout(WAIT, s.read_to_end(&mut rest))
        .await
        .expect("the visitor learns of the owner's end in time");
    assert_eq!(
        end.expect_err("a lost owner is a reset, not EOF").kind(),
        std::io::ErrorKind::ConnectionReset
    );
    visitor.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn the_per_service_limit_applies_to_private_visitors() {
    let pki = Pki::new();
    let mut ss = server_settings(identities());
    ss.max_visitors_per_service = 1;
    let server = TestServer::start(&pki, ss).await;
    let svc = banner_service(b"HI\n").await;
    let owner = RunningClient::start(client_settings(
        server.addr,
        pki.pinned(),
        "office",
        "office-token",
        vec![private_service("rdp", svc, &["alice"])],
    ))
    .await;
    let visitor = Visitor::start(server.addr, &pki, "alice", "alice-token", "office/rdp").await;
    let mut first = TcpStream::connect(visitor.addr).await.unwrap();
    let mut hi = [0u8; 3];
    tokio::time::timeout(WAIT, first.read_exact(&mut hi))
        .await
        .unwrap()
        .unwrap();
    // The one slot is taken: a second visitor is refused before the owner hears of it.
    assert_closed_without_data(visitor.addr).await;
    // The first one is unaffected, and once it leaves the slot is free again.
    first.write_all(b"x").await.unwrap();
    let mut x = [0u8; 1];
    first.read_exact(&mut x).await.unwrap();
    assert_eq!(&x, b"x");
    drop(first);
    let start = tokio::time::Instant::now();
    loop {
        let mut s = TcpStream::connect(visitor.addr).await.unwrap();
        let mut hi = [0u8; 3];
        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(1), s.read_exact(&mut hi)).await
        {
            break;
        }
        assert!(start.elapsed() < WAIT, "the slot was never released");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    visitor.stop().await;
    owner.stop().await;
    server.stop().await;
}
