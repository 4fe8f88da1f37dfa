//! What a peer sending 1-byte yamux frames can make the other side hold (hostile-peers issue,
//! finding 1). yamux 0.14.1 keeps every DATA frame body as an allocation of its own, so one
//! stream's 256 KiB window of 1-byte frames cost ~16 MiB of heap; ncx carries a patched yamux that
//! coalesces small bodies (patches/README.md).
//!
//! Server and client run as `ncx` processes so their memory can be read from /proc; the attacker
//! is this test process, speaking yamux by hand (`common::raw_yamux`) so it can send 1-byte frames
//! as fast as the socket takes them, never beyond the window a real peer grants.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::raw_yamux::*;
use common::*;
use ncx_proto::Message;
use tokio::net::{TcpListener, TcpSocket};
use tokio::time::Instant;

/// The bound the issue states: what 64 attackers (or 16 attacking streams) may add to a process.
const BOUND_KIB: u64 = 64 * 1024;

/// How far above its baseline a process may stay once the attackers are gone: allocator slack,
/// not what the attack held.
const AFTER_KIB: u64 = 16 * 1024;

/// Waits (polling every 50 ms, at most [`WAIT`]) until the process's resident memory is within
/// `limit_kib`; returns the last reading.
async fn settles_within(pid: u32, limit_kib: u64) -> u64 {
    let start = Instant::now();
    loop {
        let now = memory_kib(pid).1;
        if now <= limit_kib || start.elapsed() > WAIT {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_unauthenticated_attackers_sending_one_byte_frames_stay_bounded() {
    const ATTACKERS: usize = 64;
    const STREAMS: u32 = 8;
    const PER_STREAM: u64 = 8 * 1024;
    let dir = tempfile::tempdir().unwrap();
    let (mut server, addr) = server_process(dir.path(), "127.0.0.1:0".parse().unwrap()).await;
    let sid = server.id().unwrap();
    let baseline = memory_kib(sid).1;
    let hello = ncx_proto::encode_to_vec(&hello("a", "t", &ncx::auth::ExportedKey([0; 32])));
    let hello_len = hello.len() as u64;
    let t = Instant::now();
    let mut attacks = Vec::new();
    for _ in 0..ATTACKERS {
        let peer = RawPeer::start(tls_to(addr, dir.path()).await);
        let hello = hello.clone();
        attacks.push(tokio::spawn(async move {
            // The control stream carries all of a hello but its last byte, in 1-byte frames; the
            // other streams are what the server took before the hello at 8354efb.
            peer.open_with(1, &hello[..1]).await.unwrap();
            let tiny: Vec<u8> = hello[1..hello.len() - 1]
                .iter()
                .flat_map(|b| frame(DATA, 0, 1, &[*b], None))
                .collect();
            peer.send_raw(&tiny).await.unwrap();
            let mut sent = hello.len() as u64 - 1;
            for i in 1..STREAMS {
                let stream = 1 + 2 * i;
                peer.open_with(stream, b"x").await.unwrap();
                sent += peer.dribble(stream, PER_STREAM, WAIT).await;
            }
            (peer, sent)
        }));
    }
    let mut peers = Vec::new();
    for a in attacks {
        let (peer, sent) = a.await.unwrap();
        assert_eq!(
            sent,
            hello_len - 1 + (STREAMS as u64 - 1) * PER_STREAM,
            "all sent"
        );
        peers.push(peer);
    }
    let attacked = t.elapsed();
    // Everything the attackers wrote has been read once the server answers after it.
    let (peak, held) = memory_kib(sid);
    for p in peers {
        p.close_and_wait(WAIT).await;
    }
    let after = settles_within(sid, baseline + AFTER_KIB).await;
    println!(
        "{ATTACKERS} unauthenticated attackers, {} 1-byte frames each, in {attacked:?}: server RSS baseline {baseline} KiB, held {held} KiB, peak {peak} KiB, after {after} KiB",
        hello_len - 1 + (STREAMS as u64 - 1) * PER_STREAM
    );
    assert!(peak <= baseline + BOUND_KIB, "peak {peak} KiB");
    assert!(after <= baseline + AFTER_KIB, "after {after} KiB");
    server.kill().await.unwrap();
}

/// Authenticates `peer` as `a` on stream 1.
async fn authenticate(peer: &mut RawPeer<Tls>, exported: &ncx::auth::ExportedKey) {
    peer.open(1, &hello("a", "t", exported)).await.unwrap();
    let m = peer.message_on(1, WAIT).await;
    assert!(matches!(m, Message::Welcome { .. }), "got {m:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_byte_frames_from_an_authenticated_client_stay_bounded_in_the_server() {
    // One session visits its own private service 32 times and never reads what the server passes
    // on, so what the owner's side cannot take waits in the server, as 1-byte frames.
    const STREAMS: u32 = 32;
    // The owner's window takes at most 256 KiB and the server's copy buffer 64 KiB. The visit
    // stream's own 256 KiB window is refilled in steps of half a window as the server takes from
    // it, so 384 KiB can always be sent, and at least 64 KiB of it (128 KiB most runs) then waits
    // in the server: 4 MiB per stream, 128 MiB in all, at 64 heap bytes per 1-byte frame.
    const PER_STREAM: u64 = 384 * 1024;
    let dir = tempfile::tempdir().unwrap();
    let (mut server, addr) = server_process(dir.path(), "127.0.0.1:0".parse().unwrap()).await;
    let sid = server.id().unwrap();
    let tls = tls_to(addr, dir.path()).await;
    let exported = ncx::auth::export(tls.get_ref().1).unwrap();
    let mut peer = RawPeer::start_without_pongs(tls);
    authenticate(&mut peer, &exported).await;
    let p = name("p");
    let a = name("a");
    peer.send_on(
        1,
        0,
        &Message::RegisterPrivate {
            group: None,
            service: p.clone(),
            visitors: vec![a.clone()],
        },
    )
    .await
    .unwrap();
    let m = peer.message_on(1, WAIT).await;
    assert!(matches!(m, Message::Registered { .. }), "got {m:?}");
    let baseline = memory_kib(sid).1;

    let mut visits = Vec::new();
    for i in 0..STREAMS {
        let visit = 3 + 2 * i;
        peer.open(
            visit,
            &Message::Visit {
                owner: a.clone(),
                service: p.clone(),
            },
        )
        .await
        .unwrap();
        // The server opens a stream back to this session, the service's owner.
        let owner_side = match peer.next_event(WAIT).await {
            Event::Opened(s) => s,
            other => panic!("expected the owner's stream, got {other:?}"),
        };
        let m = peer.message_on(owner_side, WAIT).await;
        assert!(matches!(m, Message::VisitorHeader { .. }), "got {m:?}");
        peer.send_on(owner_side, ACK, &Message::VisitorStatus { refusal: None })
            .await
            .unwrap();
        let m = peer.message_on(visit, WAIT).await;
        assert!(
            matches!(m, Message::VisitorStatus { refusal: None }),
            "got {m:?}"
        );
        visits.push(visit);
    }
    let peer = Arc::new(peer);
    let t = Instant::now();
    let mut dribblers = Vec::new();
    for visit in visits {
        let peer = peer.clone();
        dribblers.push(tokio::spawn(async move {
            peer.dribble(visit, PER_STREAM, WAIT).await
        }));
    }
    for d in dribblers {
        assert_eq!(
            d.await.unwrap(),
            PER_STREAM,
            "the window let it all through"
        );
    }
    let attacked = t.elapsed();
    // A ping answered means the server has read every frame written before it.
    let peer = Arc::into_inner(peer).unwrap();
    peer.ping_and_wait(WAIT).await;
    let (peak, held) = memory_kib(sid);
    peer.close_and_wait(WAIT).await;
    let after = settles_within(sid, baseline + AFTER_KIB).await;
    println!(
        "{STREAMS} visit streams, {PER_STREAM} 1-byte frames each, in {attacked:?}: server RSS baseline {baseline} KiB, held {held} KiB, peak {peak} KiB, after {after} KiB"
    );
    assert!(held <= baseline + BOUND_KIB, "held {held} KiB");
    assert!(after <= baseline + AFTER_KIB, "after {after} KiB");
    server.kill().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_byte_frames_from_a_hostile_server_stay_bounded_in_the_client() {
    const STREAMS: u32 = 9;
    // More than the kernel and a window can take; the server stops when the window stays shut.
    const AT_MOST: u64 = 64 << 20;
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
    // The client's local service accepts and never reads, with the smallest receive buffer.
    let sink = TcpSocket::new_v4().unwrap();
    sink.set_recv_buffer_size(4096).unwrap();
    sink.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let sink = sink.listen(64).unwrap();
    let sink_addr = sink.local_addr().unwrap();
    let (conns_tx, mut conns) = tokio::sync::mpsc::channel(64);
    let accepting = tokio::spawn(async move {
        while let Ok((s, _)) = sink.accept().await {
            if conns_tx.send(s).await.is_err() {
                return;
            }
        }
    });

    let mut client = ncx_process()
        .args([
            "client",
            "--server",
            &server_addr.to_string(),
            "--identity",
            "a",
            "--server-fingerprint",
            &fp,
            "--service",
            &format!("s={sink_addr}@40000"),
        ])
        .env("NCX_TOKEN", "t")
        .spawn()
        .unwrap();
    let cid = client.id().unwrap();
    let (tcp, _) = tokio::time::timeout(WAIT, listener.accept())
        .await
        .unwrap()
        .unwrap();
    let mut peer = RawPeer::start_without_pongs(acceptor.accept(tcp).await.unwrap());
    let service = peer.welcome_one_service(40000, WAIT).await;
    wait_for_line(&mut client, "service available").await;
    let public: SocketAddr = "127.0.0.1:40000".parse().unwrap();
    let mut streams = Vec::new();
    let mut connections = Vec::new();
    for i in 0..STREAMS {
        let stream = 2 + 2 * i;
        let header = Message::VisitorHeader {
            service: service.clone(),
            visitor: ([127, 0, 0, 1], 50000 + i as u16).into(),
            public,
        };
        peer.open(stream, &header).await.unwrap();
        let m = peer.message_on(stream, WAIT).await;
        assert!(
            matches!(m, Message::VisitorStatus { refusal: None }),
            "got {m:?}"
        );
        streams.push(stream);
        connections.push(
            tokio::time::timeout(WAIT, conns.recv())
                .await
                .unwrap()
                .unwrap(),
        );
    }
    let baseline = memory_kib(cid).1;
    let peer = Arc::new(peer);
    let t = Instant::now();
    // The kernel's buffers towards the service would take megabytes of 1-byte frames before any
    // stay in the client. So the first stream measures what they take, in 16 KiB frames until the
    // window stays shut; the others send all but the last MiB of that in 16 KiB frames and the
    // rest as 1-byte frames, until their window stays shut too.
    let (calibration, attacking) = streams.split_first().unwrap();
    let taken = peer
        .fill(*calibration, AT_MOST, AT_MOST, Duration::from_secs(1))
        .await;
    let bulk = taken.saturating_sub(1 << 20) / (16 * 1024) * (16 * 1024);
    let mut fills = Vec::new();
    for &stream in attacking {
        let peer = peer.clone();
        fills.push(tokio::spawn(async move {
            peer.fill(stream, bulk, AT_MOST, Duration::from_secs(1))
                .await
        }));
    }
    let mut tiny = Vec::new();
    for f in fills {
        tiny.push(f.await.unwrap().saturating_sub(bulk));
    }
    let attacked = t.elapsed();
    let peer = Arc::into_inner(peer).unwrap();
    peer.ping_and_wait(WAIT).await;
    let (peak, held) = memory_kib(cid);
    println!(
        "1 + {} visitor streams, {taken} bytes taken by the kernel and a window; {bulk} bytes in 16 KiB frames then 1-byte frames: {tiny:?}, in {attacked:?}: client RSS baseline {baseline} KiB, held {held} KiB, peak {peak} KiB",
        STREAMS - 1
    );
    for n in &tiny {
        assert!(
            *n >= INITIAL_CREDIT,
            "a window went out as 1-byte frames: {n}"
        );
    }
    assert!(held <= baseline + BOUND_KIB, "held {held} KiB");
    peer.close_and_wait(WAIT).await;
    let after = settles_within(cid, baseline + AFTER_KIB).await;
    println!("client RSS after the session ended: {after} KiB");
    assert!(after <= baseline + AFTER_KIB, "after {after} KiB");
    client.kill().await.unwrap();
    accepting.abort();
}
