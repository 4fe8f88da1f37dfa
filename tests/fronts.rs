//! What operators put in front of the server, run for real: HAProxy in TCP mode sending the PROXY
//! protocol (v2, and v1) from an address listed in `proxy_protocol_from`. Bytes go end to end
//! through a visitor, and the server judges the real client, not the balancer: failed
//! authentications through HAProxy block the client's own address.
//!
//! HAProxy comes from Debian (`.ci/run` installs it; NCX_REQUIRE_PROXIES=1 makes a missing one a
//! failure). It connects to the server from 127.0.0.3, so the balancer and its clients (on
//! 127.0.0.1) have different addresses, as they do in the field.

mod common;

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use common::programs::{skip_without, terminate, wait_listening};
use common::*;
use ncx::client::ClientError;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const HAPROXY: &str = "/usr/sbin/haproxy";

/// The address HAProxy connects to the server from.
const BALANCER: [u8; 4] = [127, 0, 0, 3];

/// HAProxy with two frontends on loopback: one sending PROXY v2 to `server`, one sending v1, both
/// from [`BALANCER`]. The v2 backend is health-checked, which sends `PROXY LOCAL` headers.
struct Haproxy {
    child: tokio::process::Child,
    v2: SocketAddr,
    v1: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Haproxy {
    async fn start(server: SocketAddr) -> Haproxy {
        let dir = tempfile::tempdir().unwrap();
        let (p2, p1) = (free_port(), free_port());
        let config = format!(
            "global\n  maxconn 200\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n\
             frontend v2\n  bind 127.0.0.1:{p2}\n  default_backend v2\n\
             frontend v1\n  bind 127.0.0.1:{p1}\n  default_backend v1\n\
             backend v2\n  server ncx {server} send-proxy-v2 source 127.0.0.3 check check-send-proxy inter 500ms\n\
             backend v1\n  server ncx {server} send-proxy source 127.0.0.3\n"
        );
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, config).unwrap();
        let child = tokio::process::Command::new(HAPROXY)
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let (v2, v1) = (
            SocketAddr::from(([127, 0, 0, 1], p2)),
            SocketAddr::from(([127, 0, 0, 1], p1)),
        );
        wait_listening(v2).await;
        wait_listening(v1).await;
        Haproxy {
            child,
            v2,
            v1,
            _dir: dir,
        }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        terminate(&mut self.child);
    }
}

fn behind_balancer(mut ss: ncx::config::ServerSettings) -> ncx::config::ServerSettings {
    ss.proxy_protocol_from = vec!["127.0.0.3/32".parse().unwrap()];
    ss
}

#[tokio::test]
async fn haproxy_sends_proxy_v2_and_v1_and_the_tunnel_carries_bytes() {
    if skip_without(
        HAPROXY,
        false,
        "haproxy_sends_proxy_v2_and_v1_and_the_tunnel_carries_bytes",
    ) {
        return;
    }
    let pki = Pki::new();
    let server = TestServer::start(
        &pki,
        behind_balancer(server_settings(vec![identity("a", "t")])),
    )
    .await;
    let haproxy = Haproxy::start(server.addr).await;
    let echo = echo_service().await;
    for (front, seed) in [(haproxy.v2, 1), (haproxy.v1, 2)] {
        let client = RunningClient::start(client_settings(
            front,
            pki.pinned(),
            "a",
            "t",
            vec![service("e", echo, 0)],
        ))
        .await;
        let public = SocketAddr::from(([127, 0, 0, 1], client.port("e")));
        let payload = Rng(seed).bytes(300_000);
        assert_eq!(exchange(public, &payload).await.unwrap(), payload);
        client.stop().await;
    }
    // A client that reaches the server directly is still served: only the balancer's address
    // must send a header.
    let direct = RunningClient::start(client_settings(
        server.addr,
        pki.pinned(),
        "a",
        "t",
        vec![service("e", echo, 0)],
    ))
    .await;
    direct.stop().await;
    drop(haproxy);
    server.stop().await;
}

#[tokio::test]
async fn failures_through_haproxy_block_the_real_client_not_the_balancer() {
    if skip_without(
        HAPROXY,
        false,
        "failures_through_haproxy_block_the_real_client_not_the_balancer",
    ) {
        return;
    }
    let pki = Pki::new();
    let mut ss = behind_balancer(server_settings(vec![identity("a", "t")]));
    ss.auth_failures_before_block = 2;
    ss.auth_block = Duration::from_secs(600);
    let server = TestServer::start(&pki, ss).await;
    let haproxy = Haproxy::start(server.addr).await;
    let echo = echo_service().await;
    let attempt = |to: SocketAddr, token: &str| {
        connect(client_settings(
            to,
            pki.pinned(),
            "a",
            token,
            vec![service("e", echo, 0)],
        ))
    };
    for _ in 0..2 {
        match attempt(haproxy.v2, "wrong").await.err().unwrap() {
            ClientError::Refused { code, .. } => {
                assert_eq!(code, ncx_proto::ErrorCode::BadToken)
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }
    // The client's own address (127.0.0.1) is blocked now, whichever way it comes: through the
    // balancer and directly. Had the server counted the balancer's address (127.0.0.3), the
    // direct attempt would get in.
    for to in [haproxy.v2, server.addr] {
        match attempt(to, "t").await.err() {
            Some(ClientError::Refused { code, message }) => {
                assert_eq!(code, ncx_proto::ErrorCode::LimitReached, "{message}");
                assert!(
                    message.contains("too many failed authentications"),
                    "{message}"
                );
            }
            other => panic!("the real client address is blocked, got {other:?}"),
        }
    }
    drop(haproxy);
    server.stop().await;
}

/// Reads until the server closes `tcp`, within [`WAIT`]; true if it did.
async fn closed_by_server(tcp: &mut tokio::net::TcpStream) -> bool {
    let mut buf = [0u8; 256];
    let read_to_end = async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(WAIT, read_to_end).await.is_ok()
}

/// The balancer's address must send a header; a connection from it without one (here a TLS
/// ClientHello's first bytes) is closed, and so is a broken header. No HAProxy needed.
#[tokio::test]
async fn a_balancer_connection_without_a_valid_header_is_closed() {
    let pki = Pki::new();
    let server = TestServer::start(
        &pki,
        behind_balancer(server_settings(vec![identity("a", "t")])),
    )
    .await;
    for first in [
        &b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"[..],
        b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 1\r\n",
        b"PROXY TCP4 1.2.3.4\r\n",
    ] {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::from((BALANCER, 0))).unwrap();
        let mut tcp = socket.connect(server.addr).await.unwrap();
        tcp.write_all(first).await.unwrap();
        assert!(
            closed_by_server(&mut tcp).await,
            "{:?}",
            String::from_utf8_lossy(first)
        );
    }
    // After all that, a real client directly is still served.
    let echo = echo_service().await;
    let client = RunningClient::start(client_settings(
        server.addr,
        pki.pinned(),
        "a",
        "t",
        vec![service("e", echo, 0)],
    ))
    .await;
    client.stop().await;
    server.stop().await;
}

/// The HAProxy configuration in `examples/` is one HAProxy accepts, and the README shows it as it
/// is in the file.
#[test]
fn the_example_haproxy_configuration_is_valid_and_in_the_readme() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let example = root.join("examples/load-balancer/haproxy.cfg");
    let text = std::fs::read_to_string(&example).unwrap();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    assert!(
        readme.contains(&format!("```\n{text}```")),
        "README.md shows examples/load-balancer/haproxy.cfg verbatim"
    );
    if skip_without(HAPROXY, false, "the_example_haproxy_configuration_is_valid") {
        return;
    }
    let out = std::process::Command::new(HAPROXY)
        .arg("-c")
        .arg("-f")
        .arg(&example)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "haproxy -c: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
