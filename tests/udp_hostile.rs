//! Hostile peers around UDP services, each played by hand over real TLS (`raw_yamux`) against the
//! `ncx` binary. A hostile server: a frame that declares a datagram of 65,535 bytes (more than the
//! 65,507 allowed) closes that flow only, with the reason logged; the session and a new flow go on.
//! A hostile client: a flow it never reads makes the server drop and count datagrams instead of
//! queueing them, while its other flows and the session go on; its own oversized frame closes that
//! flow only.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use common::raw_yamux::*;
use common::*;
use ncx_proto::Message;
use tokio::net::{TcpListener, UdpSocket};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_datagram_frame_closes_its_flow_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let identity = ncx::certs::load_or_create_self_signed(dir.path())
        .unwrap()
        .0;
    let fp = identity.fingerprint().to_string();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(
        ncx::tls::server_config(identity, None).unwrap().0,
    ));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server_addr = listener.local_addr().unwrap();
    // The client's local UDP service: the test reads what reaches it.
    let local = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let local_addr = local.local_addr().unwrap();
    let mut client = ncx_process()
        .args(["client", "--server", &server_addr.to_string()])
        .args(["--identity", "a", "--server-fingerprint", &fp])
        .args(["--service", &format!("u={local_addr}@40053/udp")])
        .env("NCX_TOKEN", "t")
        .spawn()
        .unwrap();
    let mut log = LogLines::new(&mut client);
    let (tcp, _) = tokio::time::timeout(WAIT, listener.accept())
        .await
        .unwrap()
        .unwrap();
    let mut peer = RawPeer::start(acceptor.accept(tcp).await.unwrap());
    // Welcome the client and grant its UDP service.
    match peer.next_event(WAIT).await {
        Event::Opened(1) => {}
        other => panic!("expected the control stream, got {other:?}"),
    }
    let hello = peer.message_on(1, WAIT).await;
    assert!(matches!(hello, Message::Hello { .. }), "{hello:?}");
    let welcome = Message::Welcome {
        version: ncx_proto::PROTOCOL_VERSION,
    };
    peer.send_on(1, ACK, &welcome).await.unwrap();
    let service = match peer.message_on(1, WAIT).await {
        Message::RegisterUdp { service, .. } => service,
        other => panic!("expected a UDP registration, got {other:?}"),
    };
    let registered = Message::Registered {
        service: service.clone(),
        remote_port: 40053,
    };
    peer.send_on(1, 0, &registered).await.unwrap();
    log.wait_for("service available").await;

    // A flow whose first datagram is fine and whose second declares 65,535 bytes.
    let public: SocketAddr = "127.0.0.1:40053".parse().unwrap();
    let flow = |stream: u32, port: u16| {
        let header = Message::VisitorHeader {
            service: service.clone(),
            visitor: ([127, 0, 0, 1], port).into(),
            public,
        };
        (stream, header)
    };
    let mut buf = [0u8; 64];
    let (stream, header) = flow(2, 50000);
    peer.open(stream, &header).await.unwrap();
    let m = peer.message_on(stream, WAIT).await;
    assert!(
        matches!(m, Message::VisitorStatus { refusal: None }),
        "{m:?}"
    );
    peer.raw_on(stream);
    peer.send_raw(&frame(DATA, 0, stream, &[0, 3, b'o', b'n', b'e'], None))
        .await
        .unwrap();
    let (n, first_source) = tokio::time::timeout(WAIT, local.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf[..n], b"one");
    peer.send_raw(&frame(DATA, 0, stream, &[0xff, 0xff, b'x'], None))
        .await
        .unwrap();
    let closed = log.wait_for("UDP flow closed").await;
    assert!(closed.contains("exceeds the limit of 65507"), "{closed}");

    // The session goes on: a new flow carries its datagram, from a socket of its own.
    let (stream, header) = flow(4, 50001);
    peer.open(stream, &header).await.unwrap();
    let m = peer.message_on(stream, WAIT).await;
    assert!(
        matches!(m, Message::VisitorStatus { refusal: None }),
        "{m:?}"
    );
    peer.raw_on(stream);
    peer.send_raw(&frame(DATA, 0, stream, &[0, 3, b't', b'w', b'o'], None))
        .await
        .unwrap();
    let (n, second_source) = tokio::time::timeout(WAIT, local.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf[..n], b"two");
    assert_ne!(
        first_source, second_source,
        "each flow has a socket of its own"
    );
    let _ = client.start_kill();
}

/// Registers a UDP service `u` for the raw client `peer` (authenticated as `a`); its public port.
async fn register_udp(peer: &mut RawPeer<Tls>) -> u16 {
    peer.send_on(
        1,
        0,
        &Message::RegisterUdp {
            service: name("u"),
            remote_port: 0,
            access: Default::default(),
        },
    )
    .await
    .unwrap();
    match peer.message_on(1, WAIT).await {
        Message::Registered { remote_port, .. } => remote_port,
        other => panic!("expected the registration, got {other:?}"),
    }
}

/// Takes the flow the server opens next, accepts it and reports its bytes raw; its stream id.
async fn accept_flow(peer: &mut RawPeer<Tls>) -> u32 {
    let stream = loop {
        match peer.next_event(WAIT).await {
            Event::Opened(s) => break s,
            Event::Bytes(..) => continue,
            other => panic!("expected a flow, got {other:?}"),
        }
    };
    let header = peer.message_on(stream, WAIT).await;
    assert!(
        matches!(header, Message::VisitorHeader { .. }),
        "{header:?}"
    );
    peer.send_on(stream, ACK, &Message::VisitorStatus { refusal: None })
        .await
        .unwrap();
    peer.raw_on(stream);
    stream
}

/// Waits until `n` bytes in all arrived on `stream`, skipping other events.
async fn bytes_on(peer: &mut RawPeer<Tls>, stream: u32, n: usize) {
    let mut got = 0;
    while got < n {
        match peer.next_event(WAIT).await {
            Event::Bytes(s, k) if s == stream => got += k,
            _ => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flow_its_client_never_reads_drops_and_counts_and_stalls_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = server_command(dir.path(), "127.0.0.1:0".parse().unwrap())
        .args(["--metrics-listen", "127.0.0.1:0"])
        .spawn()
        .unwrap();
    let mut log = LogLines::new(&mut server);
    let (addr, metrics) = log.listen_and_metrics_addrs().await;
    let tls = tls_to(addr.parse().unwrap(), dir.path()).await;
    let exported = ncx::auth::export(tls.get_ref().1).unwrap();
    let mut peer = RawPeer::start(tls);
    peer.open(1, &hello("a", "t", &exported)).await.unwrap();
    let m = peer.message_on(1, WAIT).await;
    assert!(matches!(m, Message::Welcome { .. }), "got {m:?}");
    let public: SocketAddr = ([127, 0, 0, 1], register_udp(&mut peer).await).into();

    // One visitor's flow, accepted and then never read: this peer grants no window beyond the
    // first 256 KiB, so the server's queue for the flow fills and later datagrams are dropped.
    let stalled = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    stalled.send_to(b"first", public).await.unwrap();
    let first = accept_flow(&mut peer).await;
    let datagram = [b'd'; 1200];
    let dropped_series = "ncx_udp_datagrams_dropped_total{identity=\"a\",service=\"u\"}";
    // 1,000 datagrams in batches of 100, a scrape between batches: more than the window (about
    // 218 of them) and the queue (64) hold. A burst may outrun the flow's writer before the window
    // closes, too; either way what cannot be sent at once is dropped, never queued beyond 64.
    let mut sent = 1u64;
    for _ in 0..10 {
        for _ in 0..100 {
            stalled.send_to(&datagram, public).await.unwrap();
        }
        sent += 100;
        assert_eq!(get(&metrics, "/metrics").await.0, 200);
    }
    let dropped = series(
        &scrape_until(&metrics, dropped_series, 1.0).await,
        dropped_series,
    )
    .unwrap();
    // What reached this peer on the stalled flow: never beyond the one window it granted.
    let mut carried = 0;
    while let Ok(e) = peer.events.try_recv() {
        if let Event::Bytes(s, n) = e {
            if s == first {
                carried += n as u64;
            }
        }
    }
    assert!(carried <= INITIAL_CREDIT, "{carried} bytes carried");
    let carried_datagrams = carried / (2 + datagram.len() as u64);
    assert!(dropped as u64 + carried_datagrams <= sent);
    log.wait_for("datagram dropped: its flow's queue is full")
        .await;

    // The session goes on, and so does another visitor's flow, both ways.
    peer.ping_and_wait(WAIT).await;
    let other = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    other.send_to(b"second", public).await.unwrap();
    let second = accept_flow(&mut peer).await;
    assert_ne!(first, second);
    bytes_on(&mut peer, second, 2 + 6).await;
    peer.send_raw(&frame(
        DATA,
        0,
        second,
        &[0, 5, b'r', b'e', b'p', b'l', b'y'],
        None,
    ))
    .await
    .unwrap();
    let mut buf = [0u8; 64];
    let (n, from) = tokio::time::timeout(WAIT, other.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((&buf[..n], from), (&b"reply"[..], public));

    // A frame from the client declaring 65,535 bytes closes that flow only.
    peer.send_raw(&frame(DATA, 0, second, &[0xff, 0xff, b'x'], None))
        .await
        .unwrap();
    let closed = log.wait_for("protocol violation by the client").await;
    assert!(closed.contains("exceeds the limit of 65507"), "{closed}");
    let third = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    third.send_to(b"third", public).await.unwrap();
    let stream = accept_flow(&mut peer).await;
    bytes_on(&mut peer, stream, 2 + 5).await;
    println!(
        "a flow nobody reads: {sent} datagrams of 1,200 bytes sent, {carried_datagrams} carried (its window), {dropped} dropped and counted by the server, the rest in its queue (64) or lost before the server read them; another flow and the session went on"
    );
    let _ = server.start_kill();
}
