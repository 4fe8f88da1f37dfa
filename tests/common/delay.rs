//! A TCP relay that behaves like a long link, for tests: every chunk it reads is delivered one
//! one-way delay later, and in one direction at most `rate` bytes per second (a bottleneck with a
//! queue), the way `bench/wan/relay-delay.py` models a WAN for the benchmark. The delay is the
//! thing under test here, not a stand-in for synchronisation.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Chunks in flight per direction; with 64 KiB reads, 64 MiB at most.
const IN_FLIGHT: usize = 1024;

/// Relays every connection accepted on a fresh 127.0.0.1 port to `target`, adding `one_way` in
/// each direction and capping target-to-client bytes at `down_rate` bytes per second. Returns
/// the relay's address; the relay lives until the runtime ends.
pub async fn relay(target: SocketAddr, one_way: Duration, down_rate: f64) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(upstream) = TcpStream::connect(target).await else {
                    return;
                };
                let _ = client.set_nodelay(true);
                let _ = upstream.set_nodelay(true);
                let (cr, cw) = client.into_split();
                let (ur, uw) = upstream.into_split();
                tokio::join!(
                    direction(cr, uw, one_way, None),
                    direction(ur, cw, one_way, Some(down_rate)),
                );
            });
        }
    });
    addr
}

/// One direction: chunks leave `rd` as they come, are serialised at `rate` (if any) and reach
/// `wr` one delay later, in order.
async fn direction(
    mut rd: tokio::net::tcp::OwnedReadHalf,
    mut wr: tokio::net::tcp::OwnedWriteHalf,
    one_way: Duration,
    rate: Option<f64>,
) {
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(IN_FLIGHT);
    let reader = async move {
        let mut free_at = Instant::now();
        loop {
            let mut buf = vec![0u8; 64 * 1024];
            let n = match rd.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            buf.truncate(n);
            let now = Instant::now();
            let due = match rate {
                Some(r) => {
                    free_at = free_at.max(now) + Duration::from_secs_f64(n as f64 / r);
                    free_at + one_way
                }
                None => now + one_way,
            };
            if tx.send((due, buf)).await.is_err() {
                return;
            }
        }
    };
    let writer = async move {
        while let Some((due, buf)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if wr.write_all(&buf).await.is_err() {
                return;
            }
        }
        let _ = wr.shutdown().await;
    };
    tokio::join!(reader, writer);
}
