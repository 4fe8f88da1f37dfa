//! UDP services: a real DNS server (dnsmasq) answering dig through the tunnel, a thousand flows
//! each getting its own replies, the largest datagram, flows that expire when idle, and a TCP and
//! a UDP service on one port number. Server and client run in this process over real TLS and
//! real sockets on 127.0.0.1.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::programs::skip_without;
use common::*;
use tokio::net::UdpSocket;

const DNSMASQ: &str = "/usr/sbin/dnsmasq";
const DIG: &str = "/usr/bin/dig";

fn udp_service(n: &str, local: SocketAddr, remote_port: u16) -> ncx::config::ServiceSpec {
    ncx::config::ServiceSpec {
        udp: true,
        ..service(n, local, remote_port)
    }
}

async fn start(
    settings: impl FnOnce(&mut ncx::config::ServerSettings),
    services: Vec<ncx::config::ServiceSpec>,
) -> (TestServer, RunningClient) {
    let pki = Pki::new();
    let mut ss = server_settings(vec![identity("a", "t")]);
    settings(&mut ss);
    let server = TestServer::start(&pki, ss).await;
    let client = RunningClient::start(client_settings(
        server.addr,
        pki.pinned(),
        "a",
        "t",
        services,
    ))
    .await;
    (server, client)
}

#[tokio::test]
async fn dig_asks_dnsmasq_through_the_tunnel() {
    let test = "dig_asks_dnsmasq_through_the_tunnel";
    if skip_without(DNSMASQ, false, test) || skip_without(DIG, false, test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // dnsmasq on a port of its own, answering one name from its configuration and nothing else.
    let (mut dnsmasq, dns) = {
        let mut tries = 0;
        loop {
            tries += 1;
            let port = free_port();
            let mut child = tokio::process::Command::new(DNSMASQ)
                .args([
                    "--keep-in-foreground",
                    "--no-resolv",
                    "--no-hosts",
                    "--bind-interfaces",
                    "--listen-address=127.0.0.1",
                    "--address=/ncx.test/192.0.2.7",
                    "--conf-file=/dev/null",
                    "--log-facility=-",
                ])
                .arg(format!("--port={port}"))
                .arg(format!(
                    "--pid-file={}",
                    dir.path().join("dnsmasq.pid").display()
                ))
                .arg(if is_root() { "--user=root" } else { "--user=" })
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .unwrap();
            let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
            // Listening once it answers a query directly (dig tries for 3 s).
            if dig(addr, "ncx.test").await.as_deref() == Some("192.0.2.7") {
                break (child, addr);
            }
            let _ = child.start_kill();
            assert!(tries < 5, "dnsmasq did not start");
        }
    };
    // The same DNS server public, and private to identity v, which reaches it with a visit.
    let pki = Pki::new();
    let server = TestServer::start(
        &pki,
        server_settings(vec![identity("a", "t"), identity("v", "tv")]),
    )
    .await;
    let private = ncx::config::ServiceSpec {
        udp: true,
        ..private_service("dns-private", dns, &["v"])
    };
    let client = RunningClient::start(client_settings(
        server.addr,
        pki.pinned(),
        "a",
        "t",
        vec![udp_service("dns", dns, 0), private],
    ))
    .await;
    let public: SocketAddr = format!("127.0.0.1:{}", client.port("dns")).parse().unwrap();
    assert_eq!(dig(public, "ncx.test").await.as_deref(), Some("192.0.2.7"));
    // Another name: dnsmasq's own answer (no such name) comes back as well.
    assert_eq!(dig(public, "other.test").await.as_deref(), Some(""));
    let (local, stop, task) = visit(server.addr, &pki, ("a", "dns-private"), true).await;
    assert_eq!(dig(local, "ncx.test").await.as_deref(), Some("192.0.2.7"));
    stop.cancel();
    tokio::time::timeout(WAIT, task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    client.stop().await;
    server.stop().await;
    let _ = dnsmasq.start_kill();
}

/// `dig +short` of `name` at `server`; `None` when dig got no answer at all.
async fn dig(server: SocketAddr, name: &str) -> Option<String> {
    let out = tokio::process::Command::new(DIG)
        .arg(format!("@{}", server.ip()))
        .args([
            "-p",
            &server.port().to_string(),
            name,
            "+short",
            "+tries=3",
            "+time=1",
        ])
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (out.status.success() && !text.contains("timed out")).then_some(text)
}

fn is_root() -> bool {
    common::programs::is_root()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_flows_each_get_their_own_replies() {
    let echo = udp_echo().await;
    let (server, client) = start(|_| {}, vec![udp_service("echo", echo, 0)]).await;
    let public: SocketAddr = format!("127.0.0.1:{}", client.port("echo"))
        .parse()
        .unwrap();
    let flows: Vec<_> = (0..1000)
        .map(|i| {
            tokio::spawn(async move {
                let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
                let payload = format!("flow {i}").into_bytes();
                let (seen_from, back) = split_reply(&ask(&socket, public, &payload).await);
                assert_eq!(back, payload, "flow {i} got its own reply");
                // The socket stays open until every flow is done: a port let go could be taken
                // by a later visitor's socket, which would then rightly be the same flow.
                (seen_from, socket)
            })
        })
        .collect();
    let mut sources = std::collections::HashSet::new();
    let mut sockets = Vec::new();
    for f in flows {
        let (source, socket) = tokio::time::timeout(WAIT, f).await.unwrap().unwrap();
        sources.insert(source);
        sockets.push(socket);
    }
    // The service saw each flow from a socket of its own.
    assert_eq!(sources.len(), 1000);
    client.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn the_largest_datagram_crosses_whole_and_boundaries_hold() {
    let echo = udp_echo().await;
    let (server, client) = start(|_| {}, vec![udp_service("echo", echo, 0)]).await;
    let public: SocketAddr = format!("127.0.0.1:{}", client.port("echo"))
        .parse()
        .unwrap();
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    // The echo adds its view of our address, so send what still fits in its reply.
    let room = ncx_proto::MAX_DATAGRAM_LEN - 64;
    let mut rng = Rng(7);
    for len in [0, 1, 1400, 9000, room] {
        let payload = rng.bytes(len);
        let (_, back) = split_reply(&ask(&socket, public, &payload).await);
        assert_eq!(back.len(), len);
        assert!(
            back == payload,
            "a datagram of {len} bytes comes back intact"
        );
    }
    // The largest datagram there is reaches the service whole (its reply would be too long).
    let big = rng.bytes(ncx_proto::MAX_DATAGRAM_LEN);
    socket.send_to(&big, public).await.unwrap();
    let (_, small) = split_reply(&ask(&socket, public, b"after").await);
    assert_eq!(small, b"after");
    client.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn an_idle_flow_ends_and_the_next_datagram_starts_a_new_one() {
    let echo = udp_echo().await;
    let (server, client) = start(
        |s| s.udp_idle_timeout = Duration::from_secs(1),
        vec![udp_service("echo", echo, 0)],
    )
    .await;
    let public: SocketAddr = format!("127.0.0.1:{}", client.port("echo"))
        .parse()
        .unwrap();
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let (first, _) = split_reply(&ask(&socket, public, b"one").await);
    let (again, _) = split_reply(&ask(&socket, public, b"two").await);
    assert_eq!(
        first, again,
        "within the idle timeout the flow (and its socket) stays"
    );
    // Let the idle timeout pass: the time under test, not a wait for something to happen.
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let (later, _) = split_reply(&ask(&socket, public, b"three").await);
    assert_ne!(
        first, later,
        "after the idle timeout a new flow has a new socket"
    );
    client.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn a_tcp_and_a_udp_service_share_a_port_number() {
    let udp = udp_echo().await;
    let tcp = echo_service().await;
    let port = free_port();
    let (server, client) = start(
        |_| {},
        vec![udp_service("dns", udp, port), service("web", tcp, port)],
    )
    .await;
    assert_eq!(client.port("dns"), port);
    assert_eq!(client.port("web"), port);
    let public: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    assert_eq!(split_reply(&ask(&socket, public, b"u").await).1, b"u");
    assert_eq!(exchange(public, b"t").await.unwrap(), b"t");
    client.stop().await;
    server.stop().await;
}

/// A visit in this process: the client loop of identity `v` with one visit of `owner/service`
/// on a local port of 127.0.0.1, UDP or TCP.
async fn visit(
    server: SocketAddr,
    pki: &Pki,
    (owner, service): (&str, &str),
    udp: bool,
) -> (
    SocketAddr,
    tokio_util::sync::CancellationToken,
    tokio::task::JoinHandle<Result<(), ncx::client::ClientError>>,
) {
    let mut settings = client_settings(server, pki.pinned(), "v", "tv", vec![]);
    settings.visits = vec![ncx::config::VisitSpec {
        owner: name(owner),
        service: name(service),
        listen: "127.0.0.1:0".parse().unwrap(),
        udp,
    }];
    let listeners = ncx::client::bind_visits(&settings).await.unwrap();
    let addr = listeners[0].local_addr().unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(ncx::client::run_bound(
        settings,
        listeners,
        shutdown.clone(),
    ));
    (addr, shutdown, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_udp_service_is_reached_through_ncx_visit_and_only_as_udp() {
    let echo = udp_echo().await;
    let pki = Pki::new();
    let server = TestServer::start(
        &pki,
        server_settings(vec![identity("a", "t"), identity("v", "tv")]),
    )
    .await;
    let private = ncx::config::ServiceSpec {
        udp: true,
        ..private_service("dns", echo, &["v"])
    };
    let owner = RunningClient::start(client_settings(
        server.addr,
        pki.pinned(),
        "a",
        "t",
        vec![private],
    ))
    .await;
    assert_eq!(owner.port("dns"), 0, "a private service has no public port");
    let (local, stop, task) = visit(server.addr, &pki, ("a", "dns"), true).await;
    // Two local programs, each its own flow with its own replies.
    let (one, two) = (
        UdpSocket::bind("127.0.0.1:0").await.unwrap(),
        UdpSocket::bind("127.0.0.1:0").await.unwrap(),
    );
    let (from_one, back) = split_reply(&ask(&one, local, b"from one").await);
    assert_eq!(back, b"from one");
    let (from_two, back) = split_reply(&ask(&two, local, b"from two").await);
    assert_eq!(back, b"from two");
    assert_ne!(from_one, from_two, "each local sender is a flow of its own");
    stop.cancel();
    tokio::time::timeout(WAIT, task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();

    // A TCP visit of the UDP service is refused: its bytes are not datagrams.
    let (tcp_local, stop, task) = visit(server.addr, &pki, ("a", "dns"), false).await;
    // The visit client closes a refused connection with a reset, which a slow test may see
    // already when its connect completes.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    match tokio::net::TcpStream::connect(tcp_local).await {
        Ok(mut s) => {
            let _ = s.write_all(b"\x00\x01x").await;
            let mut buf = Vec::new();
            let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut buf))
                .await
                .unwrap();
            assert!(
                buf.is_empty(),
                "a TCP visit of a UDP service gets nothing: {buf:?}"
            );
        }
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
    }
    stop.cancel();
    tokio::time::timeout(WAIT, task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    owner.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn with_proxy_protocol_v2_each_datagram_names_its_visitor() {
    // A service that reads the PROXY header in front of each datagram and answers with the
    // visitor address it names, then the datagram after the header.
    let socket = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let local = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        while let Ok((n, from)) = socket.recv_from(&mut buf).await {
            let reply = match ncx_proto::read_proxy_header(&buf[..n]) {
                Ok(Some(h)) => {
                    let (src, _) = h.addrs.expect("addresses");
                    let mut r = format!("{src} ").into_bytes();
                    r.extend_from_slice(&buf[h.len..n]);
                    r
                }
                other => format!("no header: {other:?}").into_bytes(),
            };
            let _ = socket.send_to(&reply, from).await;
        }
    });
    let spec = ncx::config::ServiceSpec {
        proxy_protocol: Some(ncx_proto::ProxyVersion::V2),
        ..udp_service("dns", local, 0)
    };
    let (server, client) = start(|_| {}, vec![spec]).await;
    let public: SocketAddr = format!("127.0.0.1:{}", client.port("dns")).parse().unwrap();
    let visitor = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for payload in [&b"query"[..], b"", b"again"] {
        let (named, back) = split_reply(&ask(&visitor, public, payload).await);
        assert_eq!(named, visitor.local_addr().unwrap().to_string());
        assert_eq!(back, payload);
    }
    client.stop().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flows_are_capped_like_visitors_and_a_refused_source_gets_nothing() {
    let echo = udp_echo().await;
    let (server, client) = start(
        |s| s.max_visitors_per_service = 5,
        vec![udp_service("echo", echo, 0)],
    )
    .await;
    let public: SocketAddr = format!("127.0.0.1:{}", client.port("echo"))
        .parse()
        .unwrap();
    let mut held = Vec::new();
    for i in 0..5 {
        let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        assert_eq!(
            split_reply(&ask(&s, public, b"in").await).1,
            b"in",
            "flow {i}"
        );
        held.push(s);
    }
    // A sixth source is over the service's limit: its datagrams are dropped, none reaches the
    // service, and the five flows go on.
    let sixth = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sixth.send_to(b"over", public).await.unwrap();
    let mut buf = [0u8; 64];
    assert!(
        tokio::time::timeout(Duration::from_millis(500), sixth.recv_from(&mut buf))
            .await
            .is_err(),
        "a source over the limit gets no reply"
    );
    for s in &held {
        assert_eq!(split_reply(&ask(s, public, b"still").await).1, b"still");
    }
    client.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn the_access_rules_are_checked_for_every_new_source() {
    let echo = udp_echo().await;
    // Only 10.0.0.0/8 may send: every source here is 127.0.0.1, refused.
    let denied = ncx::config::ServiceSpec {
        access: ncx_proto::AccessRules {
            allow: vec!["10.0.0.0/8".parse().unwrap()],
            deny: vec![],
        },
        ..udp_service("closed", echo, 0)
    };
    let allowed = ncx::config::ServiceSpec {
        access: ncx_proto::AccessRules {
            allow: vec!["127.0.0.0/8".parse().unwrap()],
            deny: vec![],
        },
        ..udp_service("open", echo, 0)
    };
    let (server, client) = start(|_| {}, vec![denied, allowed]).await;
    let closed: SocketAddr = format!("127.0.0.1:{}", client.port("closed"))
        .parse()
        .unwrap();
    let open: SocketAddr = format!("127.0.0.1:{}", client.port("open"))
        .parse()
        .unwrap();
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    // The allowed service answers (so the client and the echo are up) ...
    assert_eq!(split_reply(&ask(&socket, open, b"yes").await).1, b"yes");
    // ... and the refused source's datagrams never reach the echo.
    socket.send_to(b"no", closed).await.unwrap();
    let mut buf = [0u8; 64];
    assert!(
        tokio::time::timeout(Duration::from_millis(500), socket.recv_from(&mut buf))
            .await
            .is_err(),
        "a refused source gets no reply"
    );
    client.stop().await;
    server.stop().await;
}

/// A TCP service that writes as fast as its visitor reads, until the visitor goes.
async fn bulk_source() -> SocketAddr {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let chunk = vec![b'b'; 64 * 1024];
                while tcp.write_all(&chunk).await.is_ok() {}
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datagrams_cross_beside_a_bulk_download_and_a_stalled_one() {
    use tokio::io::AsyncReadExt;
    const ROUND_TRIPS: usize = 200;
    let udp = udp_echo().await;
    let bulk = bulk_source().await;
    let (server, client) = start(
        |_| {},
        vec![udp_service("game", udp, 0), service("files", bulk, 0)],
    )
    .await;
    let game: SocketAddr = ([127, 0, 0, 1], client.port("game")).into();
    let files: SocketAddr = ([127, 0, 0, 1], client.port("files")).into();
    // One download stalled: its visitor reads a byte and then nothing, so its substream's window
    // stays full for the whole test.
    let mut stalled = tokio::net::TcpStream::connect(files).await.unwrap();
    let mut one = [0u8; 1];
    tokio::time::timeout(WAIT, stalled.read_exact(&mut one))
        .await
        .unwrap()
        .unwrap();
    // One download as fast as this process reads; it reports how far it got.
    let (progress, mut watch) = tokio::sync::watch::channel(0u64);
    let stop = tokio_util::sync::CancellationToken::new();
    let download = tokio::spawn({
        let stop = stop.clone();
        async move {
            let mut tcp = tokio::net::TcpStream::connect(files).await.unwrap();
            let mut buf = vec![0u8; 256 * 1024];
            let mut total = 0u64;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return total,
                    n = tcp.read(&mut buf) => {
                        let n = n.unwrap();
                        assert!(n > 0, "the download ended early");
                        total += n as u64;
                        progress.send_replace(total);
                    }
                }
            }
        }
    });
    tokio::time::timeout(WAIT, watch.wait_for(|&n| n >= 8 << 20))
        .await
        .expect("the download runs")
        .unwrap();
    let before = *watch.borrow();

    // Round trips one at a time, each given one try: none may be lost or wait behind the bulk.
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut buf = vec![0u8; 2048];
    let mut rtts = Vec::with_capacity(ROUND_TRIPS);
    for i in 0..ROUND_TRIPS {
        let payload = format!("ping {i}");
        let t = std::time::Instant::now();
        socket.send_to(payload.as_bytes(), game).await.unwrap();
        let (n, _) = tokio::time::timeout(Duration::from_secs(5), socket.recv_from(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("round trip {i} got no reply beside the bulk"))
            .unwrap();
        rtts.push(t.elapsed());
        assert_eq!(split_reply(&buf[..n]).1, payload.as_bytes());
    }
    let during = *watch.borrow() - before;
    stop.cancel();
    let total = download.await.unwrap();
    assert!(during > 0, "the download went on during the round trips");
    rtts.sort();
    println!(
        "{ROUND_TRIPS} datagram round trips beside a download ({} MiB in all, {} MiB during them) and a stalled one: all answered, p50 {:?}, p99 {:?}, max {:?} (debug build)",
        total >> 20,
        during >> 20,
        rtts[ROUND_TRIPS / 2],
        rtts[ROUND_TRIPS * 99 / 100],
        rtts[ROUND_TRIPS - 1]
    );
    drop(stalled);
    client.stop().await;
    server.stop().await;
}
