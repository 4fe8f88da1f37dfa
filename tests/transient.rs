//! A client never gives up on a transient failure: a listener that accepts and closes (a load
//! balancer in front of a restarting server), a reset in the middle of the TLS handshake, and a
//! server restart are all retried, and the first retry after a session that was up comes quickly.
//! Permanent means only what a configuration change fixes (tests/refusals.rs, tests/mtls.rs).

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

/// How the stand-in for the server treats each connection it accepts.
#[derive(Clone, Copy)]
enum Misbehaviour {
    /// Accept and close at once (FIN): the client's handshake meets an early EOF.
    AcceptAndClose,
    /// Read the start of the ClientHello, then reset the connection (RST).
    ResetMidHandshake,
}

/// Serves `n` connections on `listener` the way `how` says, then gives the listener back.
async fn misbehave(listener: TcpListener, how: Misbehaviour, n: usize) -> TcpListener {
    for _ in 0..n {
        let (mut tcp, _) = tokio::time::timeout(WAIT, listener.accept())
            .await
            .expect("the client keeps trying")
            .unwrap();
        match how {
            Misbehaviour::AcceptAndClose => drop(tcp),
            Misbehaviour::ResetMidHandshake => {
                let mut first = [0u8; 5];
                let _ = tokio::time::timeout(WAIT, tcp.read_exact(&mut first)).await;
                assert_eq!(first[0], 22, "a TLS handshake record begins");
                tcp.set_zero_linger().unwrap();
                drop(tcp);
            }
        }
    }
    listener
}

async fn retried_until_the_real_server_answers(how: Misbehaviour) {
    let pki = Pki::new();
    let fake = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server_addr = fake.local_addr().unwrap();
    let echo = echo_service().await;
    let port = free_port();
    let mut cs = client_settings(
        server_addr,
        pki.pinned(),
        "a",
        "t",
        vec![service("e", echo, port)],
    );
    cs.reconnect = ncx::config::Backoff {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(100),
    };
    let shutdown = tokio_util::sync::CancellationToken::new();
    let client = tokio::spawn(ncx::client::run(cs, shutdown.clone()));
    let fake = misbehave(fake, how, 3).await;
    assert!(
        !client.is_finished(),
        "the client must not give up: {:?}",
        client.await
    );
    // The real server takes the address over; the client gets through on its own.
    let server = ncx::server::Server::new(
        server_settings(vec![identity("a", "t")]),
        pki.server_identity(),
    )
    .unwrap();
    drop(fake);
    let listener = TcpListener::bind(server_addr).await.unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn({
        let stop = stop.clone();
        async move { server.run(listener, stop).await }
    });
    wait_for_tunnel(SocketAddr::from(([127, 0, 0, 1], port))).await;
    shutdown.cancel();
    tokio::time::timeout(WAIT, client)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    stop.cancel();
    task.await.unwrap();
}

#[tokio::test]
async fn a_listener_that_accepts_and_closes_is_retried() {
    retried_until_the_real_server_answers(Misbehaviour::AcceptAndClose).await;
}

#[tokio::test]
async fn a_reset_during_the_tls_handshake_is_retried() {
    retried_until_the_real_server_answers(Misbehaviour::ResetMidHandshake).await;
}

/// Reads a `Duration`'s `Debug` text such as `247.39ms` or `1.18709s`.
fn parse_debug_duration(s: &str) -> Duration {
    let (number, unit) = s
        .find(|c: char| c.is_ascii_alphabetic() || c == 'µ')
        .map(|i| s.split_at(i))
        .unwrap_or_else(|| panic!("no unit in {s:?}"));
    let n: f64 = number
        .parse()
        .unwrap_or_else(|_| panic!("not a number: {s:?}"));
    match unit {
        "s" => Duration::from_secs_f64(n),
        "ms" => Duration::from_secs_f64(n / 1e3),
        "µs" => Duration::from_secs_f64(n / 1e6),
        "ns" => Duration::from_secs_f64(n / 1e9),
        _ => panic!("unknown unit in {s:?}"),
    }
}

#[test]
fn debug_durations_are_read_back() {
    assert_eq!(parse_debug_duration("250ms"), Duration::from_millis(250));
    assert_eq!(parse_debug_duration("1.5s"), Duration::from_millis(1500));
}

/// The client's own schedule, as it logs it: after the server of a live session is killed, the
/// first retry is planned within 250 ms ± 20%, not after the 1 s initial backoff (which, landing
/// just before a restarted server listens, used to cost another 2 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_retry_after_a_lost_session_is_quick() {
    let dir = tempfile::tempdir().unwrap();
    let listen: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let mut server = server_command(dir.path(), listen).spawn().unwrap();
    wait_for_line(&mut server, "server listening").await;
    let fp = ncx::certs::load_or_create_self_signed(dir.path())
        .unwrap()
        .0
        .fingerprint()
        .to_string();
    let echo = echo_service().await;
    let mut client = ncx_process()
        .args(["client", "--server", &listen.to_string(), "--identity", "a"])
        .args(["--server-fingerprint", &fp])
        .args(["--service", &format!("e={echo}@0")])
        .env("NCX_TOKEN", "t")
        .spawn()
        .unwrap();
    let mut lines = LogLines::new(&mut client);
    lines.wait_for("connected to the server").await;
    server.start_kill().unwrap(); // SIGKILL
    server.wait().await.unwrap();
    let line = lines.wait_for("not connected; retrying").await;
    let planned = parse_debug_duration(&log_field(&line, "retry_in"));
    assert!(
        planned >= ncx::client::QUICK_RETRY.mul_f64(0.8)
            && planned <= ncx::client::QUICK_RETRY.mul_f64(1.2),
        "first retry planned after {planned:?}: {line}"
    );
    // And the restarted server is reached.
    let mut server2 = server_command(dir.path(), listen).spawn().unwrap();
    wait_for_line(&mut server2, "server listening").await;
    lines.wait_for("connected to the server").await;
    client.kill().await.unwrap();
    server2.kill().await.unwrap();
}
