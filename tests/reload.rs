//! `ncx server` reloading its configuration on SIGHUP, with live clients and visitors: real
//! processes, real sockets on 127.0.0.1. What must hold: unchanged identities keep their
//! sessions and their visitors' bytes flowing; added ones get in; removed ones and changed
//! credentials are closed with a reason; ports taken out of a policy move the service while the
//! visitor in flight finishes; a configuration that does not check out is refused and the one in
//! force stays.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A server configuration with `identities` (name, token, ports).
fn config(dir: &Path, identities: &[(&str, &str, &str)]) -> String {
    let mut c = format!(
        "listen = \"127.0.0.1:0\"\n[tls]\nauto_cert_dir = \"{}\"\n",
        dir.join("tls").display()
    );
    for (name, token, ports) in identities {
        c.push_str(&format!(
            "[[identities]]\nname = \"{name}\"\ntoken = \"{token}\"\nbind = \"127.0.0.1\"\nports = [\"{ports}\"]\n"
        ));
    }
    c
}

fn hup(child: &tokio::process::Child) {
    let pid = child.id().unwrap().to_string();
    let sent = std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap();
    assert!(sent.success());
}

/// `ncx client` as `identity` with `token`, exposing an echo service on any allowed port.
fn client(
    server: &str,
    fingerprint: &str,
    identity: &str,
    token: &str,
    echo: SocketAddr,
) -> (tokio::process::Child, LogLines) {
    let mut child = client_command(
        server,
        fingerprint,
        identity,
        token,
        &[format!("echo={echo}@0")],
    )
    .spawn()
    .unwrap();
    let log = LogLines::new(&mut child);
    (child, log)
}

async fn round_trip(v: &mut tokio::net::TcpStream, payload: &[u8]) {
    v.write_all(payload).await.unwrap();
    let mut back = vec![0u8; payload.len()];
    tokio::time::timeout(WAIT, v.read_exact(&mut back))
        .await
        .expect("the visitor's bytes come back in time")
        .unwrap();
    assert_eq!(back, payload);
}

#[cfg(unix)]
#[tokio::test]
async fn sighup_reloads_identities_without_dropping_unaffected_visitors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let path = d.join("server.toml");
    std::fs::write(
        &path,
        config(d, &[("a", "ta", "1024-9999"), ("c", "tc", "20000-29999")]),
    )
    .unwrap();
    let notify = tokio::net::UnixDatagram::bind(d.join("notify.sock")).unwrap();
    let mut server = ncx_process()
        .args(["server", "--config"])
        .arg(&path)
        .env("NOTIFY_SOCKET", d.join("notify.sock"))
        .spawn()
        .unwrap();
    let mut log = LogLines::new(&mut server);
    let addr = log_field(&log.wait_for("server listening").await, "addr");
    let fp = fingerprint(&d.join("tls"));
    let echo = echo_service().await;

    let (mut a, mut a_log) = client(&addr, &fp, "a", "ta", echo);
    let a_public: SocketAddr = log_field(&a_log.wait_for("service available").await, "public")
        .parse()
        .unwrap();
    let mut visitor = tokio::net::TcpStream::connect(a_public).await.unwrap();
    round_trip(&mut visitor, b"before any reload").await;
    let (mut c, mut c_log) = client(&addr, &fp, "c", "tc", echo);
    c_log.wait_for("service available").await;

    // 1. Add b, remove c, leave a alone.
    std::fs::write(
        &path,
        config(d, &[("a", "ta", "1024-9999"), ("b", "tb", "10000-19999")]),
    )
    .unwrap();
    hup(&server);
    let line = log.wait_for("configuration reloaded").await;
    assert!(line.contains("added=b removed=c changed=none"), "{line}");
    let mut buf = vec![0u8; 256];
    let mut states = Vec::new();
    // The start's READY, then the reload's RELOADING and READY.
    while !states
        .iter()
        .skip_while(|s: &&String| !s.contains("RELOADING=1"))
        .any(|s| s.contains("READY=1"))
    {
        let n = tokio::time::timeout(WAIT, notify.recv(&mut buf))
            .await
            .unwrap()
            .unwrap();
        states.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert!(
        states
            .iter()
            .any(|s| s.contains("RELOADING=1\n") && s.contains("MONOTONIC_USEC=")),
        "{states:?}"
    );
    round_trip(&mut visitor, b"across the reload").await;
    // c is told why, and its reconnection is refused for good.
    let why = c_log
        .wait_for("identity c was removed from the server's configuration")
        .await;
    assert!(why.contains("WARN") || why.contains("INFO"), "{why}");
    let status = tokio::time::timeout(WAIT, c.wait()).await.unwrap().unwrap();
    assert_eq!(status.code(), Some(1));
    assert!(c_log.all().await.join("\n").contains("unknown identity"));
    let (mut b, mut b_log) = client(&addr, &fp, "b", "tb", echo);
    b_log.wait_for("service available").await;

    // 2. A file that does not check out is refused whole, with its place; all stays as it was.
    std::fs::write(
        &path,
        config(d, &[("a", "ta", "1024-9999"), ("b", "tb", "70000")]),
    )
    .unwrap();
    hup(&server);
    let refused = log.wait_for("reload refused").await;
    assert!(refused.contains("server.toml:"), "{refused}");
    round_trip(&mut visitor, b"after a refused reload").await;
    assert_eq!(
        exchange(a_public, b"new visitor").await.unwrap(),
        b"new visitor"
    );

    // 3. a's ports no longer include the one it serves: its service moves to the new port in a
    // fresh session, while the visitor in flight finishes on the old one.
    let port = free_port();
    std::fs::write(
        &path,
        config(
            d,
            &[("a", "ta", &port.to_string()), ("b", "tb", "10000-19999")],
        ),
    )
    .unwrap();
    hup(&server);
    let line = log.wait_for("configuration reloaded").await;
    assert!(line.contains("changed=a"), "{line}");
    let moved = a_log.wait_for(&format!("public=127.0.0.1:{port}")).await;
    assert!(moved.contains("service available"), "{moved}");
    round_trip(&mut visitor, b"on the retiring session").await;
    let moved_to = SocketAddr::from(([127, 0, 0, 1], port));
    assert_eq!(exchange(moved_to, b"new port").await.unwrap(), b"new port");
    wait_until_refused(a_public, Duration::from_secs(5)).await;
    round_trip(&mut visitor, b"still here").await;

    // 4. a's token changes: its sessions are closed with the reason, and the client gives up.
    std::fs::write(
        &path,
        config(
            d,
            &[
                ("a", "new-ta", &port.to_string()),
                ("b", "tb", "10000-19999"),
            ],
        ),
    )
    .unwrap();
    hup(&server);
    a_log
        .wait_for("the credentials of identity a changed on the server")
        .await;
    let status = tokio::time::timeout(WAIT, a.wait()).await.unwrap().unwrap();
    assert_eq!(status.code(), Some(1));
    assert!(a_log.all().await.join("\n").contains("bad token"));

    b.kill().await.unwrap();
    server.kill().await.unwrap();
}
