//! A hostile server against a real client's UDP service: after a valid datagram, a frame that
//! declares a datagram of 65,535 bytes (more than the 65,507 allowed) closes that flow only, with
//! the reason logged; the session and a new flow go on. The server is played by hand over real TLS (`raw_yamux`);
//! the client is the `ncx` binary.

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
