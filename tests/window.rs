//! The stream window policy of the patched yamux (patches/README.md), seen from the wire: a real
//! `ncx client` process receives a bulk transfer over an emulated 50 ms path, 20 MB/s, from this
//! test, which plays the server and speaks yamux by hand (`common::raw_yamux`), so the credit the
//! client grants can be read.
//!
//! How a window is read: the sender stops, waits until the service behind the client has read
//! every byte sent (so the client consumed them all), and then until every window update the
//! client queued has arrived. At that point the credit left to the sender is exactly what the
//! client lets be in flight: its window for the stream, less at most one update step (up to half
//! the window where the window is more than the path needs, as at its 256 KiB minimum). The barrier
//! for the updates: the service writes one byte back, which the client sends on the same stream;
//! yamux queues a stream's frames in one queue, behind the update the client queued when it
//! consumed the last bytes, so once that byte is here, so is the update.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::raw_yamux::*;
use common::*;
use ncx_proto::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

const ONE_WAY: Duration = Duration::from_millis(25);
/// Bytes per second from the test to the client: a bandwidth-delay product of 1 MB at 50 ms.
const RATE: f64 = 20e6;
const STREAM: u32 = 2;

/// The service behind the client: counts what it reads, and writes one byte when asked.
struct Service {
    read: watch::Receiver<u64>,
    poke: mpsc::Sender<()>,
}

impl Service {
    async fn start(listener: TcpListener) -> (Service, tokio::task::JoinHandle<()>) {
        let (read_tx, read) = watch::channel(0u64);
        let (poke, mut pokes) = mpsc::channel::<()>(4);
        let task = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            let (mut rd, mut wr) = s.into_split();
            let writing = tokio::spawn(async move {
                while pokes.recv().await.is_some() {
                    wr.write_all(b"!").await.unwrap();
                }
            });
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                match rd.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => read_tx.send_modify(|v| *v += n as u64),
                }
            }
            writing.abort();
        });
        (Service { read, poke }, task)
    }
}

/// The client's window for [`STREAM`] once everything `sent` so far has been consumed (see the
/// module documentation).
async fn window(peer: &mut RawPeer<Tls>, service: &mut Service, sent: u64) -> u64 {
    tokio::time::timeout(WAIT, service.read.wait_for(|&n| n == sent))
        .await
        .expect("the service reads every byte sent")
        .unwrap();
    service.poke.send(()).await.unwrap();
    tokio::time::timeout(WAIT, async {
        loop {
            match peer.events.recv().await {
                Some(Event::Bytes(STREAM, _)) => return,
                Some(_) => continue,
                None => panic!("the connection closed"),
            }
        }
    })
    .await
    .expect("the service's byte arrives");
    peer.credit_left(STREAM)
}

type Tls = tokio_rustls::server::TlsStream<TcpStream>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streams_window_grows_on_a_long_path_and_comes_back_down_after_idling() {
    let dir = tempfile::tempdir().unwrap();
    let identity = ncx::certs::load_or_create_self_signed(dir.path())
        .unwrap()
        .0;
    let fp = identity.fingerprint().to_string();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(
        ncx::tls::server_config(identity, None).unwrap().0,
    ));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let path = common::delay::relay(listener.local_addr().unwrap(), ONE_WAY, RATE).await;
    let svc = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let svc_addr = svc.local_addr().unwrap();
    let (mut service, _service_task) = Service::start(svc).await;

    let mut client = ncx_process()
        .args(["client", "--server", &path.to_string(), "--identity", "a"])
        .args(["--server-fingerprint", &fp])
        .args(["--service", &format!("s={svc_addr}@40000")])
        .env("NCX_TOKEN", "t")
        .spawn()
        .unwrap();
    let (tcp, _) = tokio::time::timeout(WAIT, listener.accept())
        .await
        .unwrap()
        .unwrap();
    let mut peer = RawPeer::start(acceptor.accept(tcp).await.unwrap());
    let service_name = peer.welcome_one_service(40000, WAIT).await;
    wait_for_line(&mut client, "service available").await;
    let header = Message::VisitorHeader {
        service: service_name,
        visitor: ([127, 0, 0, 1], 50000).into(),
        public: SocketAddr::from(([127, 0, 0, 1], 40000)),
    };
    peer.open(STREAM, &header).await.unwrap();
    let m = peer.message_on(STREAM, WAIT).await;
    assert!(
        matches!(m, Message::VisitorStatus { refusal: None }),
        "got {m:?}"
    );
    peer.raw_on(STREAM);
    let mut sent = 0u64;
    let w0 = window(&mut peer, &mut service, sent).await;
    // (less the visitor header this side sent when it opened the stream)
    assert!(
        w0 <= INITIAL_CREDIT && w0 > INITIAL_CREDIT - 1024,
        "a new stream starts at yamux's 256 KiB: {w0}"
    );

    // Bulk for two seconds, as fast as the credit allows.
    let start = Instant::now();
    for _ in 0..1_000_000 {
        if start.elapsed() > Duration::from_secs(2) {
            break;
        }
        let n = peer.send_data(STREAM, 1 << 20).await.unwrap();
        if n == 0 {
            assert!(peer.credit_grows(WAIT).await, "the credit stayed shut");
        }
        sent += n;
    }
    let w1 = window(&mut peer, &mut service, sent).await;
    println!(
        "after 2 s of bulk: window {} KiB ({sent} bytes sent)",
        w1 / 1024
    );
    let bdp = RATE * 2.0 * ONE_WAY.as_secs_f64();
    assert!(
        w1 > 2 * INITIAL_CREDIT,
        "the window grows beyond 256 KiB on a 50 ms path: {w1}"
    );
    assert!(
        (w1 as f64) < 3.0 * bdp,
        "the window grows only as far as the path needs (about {bdp} bytes): {w1}"
    );

    // Idle for longer than the policy's idle restart (1 s): the pause is what is tested.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Then a trickle, 32 KiB every 20 ms, until the credit left from the bulk is used up and
    // 256 KiB more went: the window is back at its start.
    let trickle_start = sent;
    for _ in 0..1000 {
        if sent - trickle_start > w1 + INITIAL_CREDIT {
            break;
        }
        let n = peer.send_data(STREAM, 32 * 1024).await.unwrap();
        if n == 0 {
            assert!(peer.credit_grows(WAIT).await, "the credit stayed shut");
        }
        sent += n;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let w2 = window(&mut peer, &mut service, sent).await;
    println!("after idling and a trickle: window {} KiB", w2 / 1024);
    // (less one step, which at the 256 KiB minimum may be up to half of it)
    assert!(
        (INITIAL_CREDIT / 2..=INITIAL_CREDIT).contains(&w2),
        "after idling, the window is back at 256 KiB: {w2}"
    );
    let _ = client.start_kill();
}
