//! `ncx server` reloading its configuration on SIGHUP, with live clients and visitors: real
//! processes, real sockets on 127.0.0.1. What must hold: unchanged identities keep their
//! sessions and their visitors' bytes flowing; added ones get in; removed ones and changed
//! credentials are closed with a reason; ports taken out of a policy move the service while the
//! visitor in flight finishes; a configuration that does not check out is refused and the one in
//! force stays. And `ncx client` reloading its services in place, or through a new session that
//! takes over while the old session's visitors finish.

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

/// `ncx server` with the configuration at `path`, notifying a datagram socket in `dir` that
/// stands in for systemd's, and that socket.
#[cfg(unix)]
fn server_notifying(dir: &Path, path: &Path) -> (tokio::process::Child, tokio::net::UnixDatagram) {
    let socket = dir.join("notify.sock");
    let notify = tokio::net::UnixDatagram::bind(&socket).unwrap();
    let server = ncx_process()
        .args(["server", "--config"])
        .arg(path)
        .env("NOTIFY_SOCKET", &socket)
        .spawn()
        .unwrap();
    (server, notify)
}

/// SIGHUP is watched before the server tells systemd it is ready: a reload asked for at once (as
/// `ExecReload` may) reloads it instead of ending it, which is the signal's default.
#[cfg(unix)]
#[tokio::test]
async fn a_sighup_the_moment_the_server_is_ready_reloads_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let path = d.join("server.toml");
    std::fs::write(&path, config(d, &[("a", "ta", "1024-65535")])).unwrap();
    let (mut server, notify) = server_notifying(d, &path);
    let mut log = LogLines::new(&mut server);
    let mut buf = vec![0u8; 256];
    // READY is among the first few notifications (each waited for within WAIT).
    let ready = async {
        for _ in 0..10 {
            let n = tokio::time::timeout(WAIT, notify.recv(&mut buf))
                .await
                .expect("a notification in time")
                .unwrap();
            if String::from_utf8_lossy(&buf[..n]).contains("READY=1") {
                return true;
            }
        }
        false
    };
    assert!(ready.await, "no READY=1 among the first notifications");
    hup(&server);
    let line = log.wait_for("configuration reloaded").await;
    assert!(
        line.contains("added=none removed=none changed=none"),
        "{line}"
    );
    server.kill().await.unwrap();
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
    let (mut server, notify) = server_notifying(d, &path);
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

/// `ncx client`'s configuration file: identity `a` (token `ta`), a 2 s drain, an admin socket,
/// `extra` top-level lines, and `services` as (name, local address, extra lines).
fn client_config(
    server: &str,
    fp: &str,
    socket: &Path,
    extra: &str,
    services: &[(&str, SocketAddr, &str)],
) -> String {
    let mut c = format!(
        "server = \"{server}\"\nidentity = \"a\"\ntoken = \"ta\"\nserver_fingerprint = \"{fp}\"\n\
         drain_timeout_secs = 2\nadmin_socket = \"{}\"\n{extra}\n",
        socket.display()
    );
    for (name, local, lines) in services {
        c.push_str(&format!(
            "[[services]]\nname = \"{name}\"\nlocal = \"{local}\"\nremote_port = 0\n{lines}\n"
        ));
    }
    c
}

/// The public address of each service as the client logs them, in the order they come.
async fn available(log: &mut LogLines, services: &[&str]) -> Vec<SocketAddr> {
    let mut found = std::collections::HashMap::new();
    while found.len() < services.len() {
        let line = log.wait_for("service available").await;
        let service = log_field(&line, "service");
        if services.contains(&service.as_str()) {
            found.insert(service, log_field(&line, "public").parse().unwrap());
        }
    }
    services.iter().map(|s| found[*s]).collect()
}

/// Reads from `v` until the connection ends (EOF or reset) and returns what came.
async fn until_closed(v: &mut tokio::net::TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let _ = tokio::time::timeout(WAIT, v.read_to_end(&mut got))
        .await
        .expect("the connection ends in time");
    got
}

async fn ncx_out(args: &[&str]) -> (Option<i32>, String, String) {
    let out = ncx_process().args(args).output().await.unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[cfg(unix)]
#[tokio::test]
async fn the_client_reloads_its_services_in_place_and_keeps_unaffected_visitors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let server_toml = d.join("server.toml");
    std::fs::write(&server_toml, config(d, &[("a", "ta", "1024-65535")])).unwrap();
    let mut server = ncx_process()
        .args(["server", "--config"])
        .arg(&server_toml)
        .spawn()
        .unwrap();
    let mut log = LogLines::new(&mut server);
    let addr = log_field(&log.wait_for("server listening").await, "addr");
    let fp = fingerprint(&d.join("tls"));
    let echo = echo_service().await;
    let one = banner_service(b"one:").await;
    let two = banner_service(b"two:").await;
    let socket = d.join("client.sock");
    let path = d.join("client.toml");
    let write = |extra: &str, services: &[(&str, SocketAddr, &str)]| {
        std::fs::write(&path, client_config(&addr, &fp, &socket, extra, services)).unwrap();
    };
    write(
        "",
        &[
            ("keep", echo, ""),
            ("gone", echo, ""),
            ("moved", one, ""),
            ("rules", echo, ""),
        ],
    );
    let mut client = ncx_process()
        .args(["client", "--config"])
        .arg(&path)
        .spawn()
        .unwrap();
    let mut c_log = LogLines::new(&mut client);
    let [keep, gone, moved, rules] =
        available(&mut c_log, &["keep", "gone", "moved", "rules"]).await[..]
    else {
        unreachable!()
    };
    let mut v_keep = tokio::net::TcpStream::connect(keep).await.unwrap();
    round_trip(&mut v_keep, b"before the reload").await;
    let mut v_gone = tokio::net::TcpStream::connect(gone).await.unwrap();
    round_trip(&mut v_gone, b"on a service about to go").await;

    // 1. SIGHUP: gone removed, new added, moved to another local address, rules restricted to
    // addresses this test does not have. keep is untouched.
    write(
        "",
        &[
            ("keep", echo, ""),
            ("moved", two, ""),
            ("rules", echo, "allow = [\"10.0.0.0/8\"]"),
            ("new", echo, ""),
        ],
    );
    hup(&client);
    let line = c_log.wait_for("configuration reloaded").await;
    assert!(
        line.contains("added=new removed=gone changed=moved,rules new_session=no"),
        "{line}"
    );
    let [new, rules_after] = available(&mut c_log, &["new", "rules"]).await[..] else {
        unreachable!()
    };
    round_trip(&mut v_keep, b"across the reload").await;
    assert_eq!(exchange(new, b"added").await.unwrap(), b"added");
    // A port the server picked stays the service's when only its rules change.
    assert_eq!(rules_after, rules);
    // Refused by a reset, which may come before the connect returns.
    match tokio::net::TcpStream::connect(rules).await {
        Ok(mut refused) => assert_eq!(
            until_closed(&mut refused).await,
            b"",
            "the new rules refuse 127.0.0.1"
        ),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
    }
    // Only where its visitors go changed: same port, the new local service.
    let mut v_moved = tokio::net::TcpStream::connect(moved).await.unwrap();
    let mut banner = [0u8; 4];
    tokio::time::timeout(WAIT, v_moved.read_exact(&mut banner))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&banner, b"two:");
    // The withdrawn service's port is released at once; its visitor is reset after the drain.
    wait_until_refused(gone, Duration::from_secs(5)).await;
    until_closed(&mut v_gone).await;
    c_log
        .wait_for("its service was withdrawn by a reload")
        .await;
    round_trip(&mut v_keep, b"after the drain").await;

    // 2. ncx ctl reload with a file that does not check out: refused with its place.
    std::fs::write(&path, "server = 1\n").unwrap();
    let sock = socket.to_str().unwrap();
    let (code, _, err) = ncx_out(&["ctl", "--socket", sock, "reload"]).await;
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("reload refused") && err.contains("client.toml:1:"),
        "{err}"
    );
    round_trip(&mut v_keep, b"after a refused reload").await;

    // 3. A setting of the connection: a new session takes over while keep's visitor stays on the
    // old one.
    write(
        "handshake_timeout_secs = 7",
        &[
            ("keep", echo, ""),
            ("moved", two, ""),
            ("rules", echo, "allow = [\"10.0.0.0/8\"]"),
            ("new", echo, ""),
        ],
    );
    let (code, out, err) = ncx_out(&["ctl", "--socket", sock, "reload"]).await;
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        out,
        "reloaded: added none; removed none; changed none\na new session took these: timeouts\n"
    );
    let [keep_after] = available(&mut c_log, &["keep"]).await[..] else {
        unreachable!()
    };
    assert_eq!(
        exchange(keep_after, b"new session").await.unwrap(),
        b"new session"
    );
    round_trip(&mut v_keep, b"on the retired session").await;
    log.wait_for("the client announces a new session").await;

    client.kill().await.unwrap();
    server.kill().await.unwrap();
}

/// A client that reloads a setting of its connection announces its new session on the old one
/// (go-away `Rotate`), then opens the new one; the two travel on different connections, and the
/// new session can take over before the server reads the announcement. Read late, it must still
/// do what it does on time: the old session's visitors finish without the drain deadline. The
/// old session is played by hand so that the announcement comes after the takeover every time.
#[tokio::test]
async fn a_new_session_announced_after_it_took_over_keeps_the_old_visitors() {
    use ncx_proto::{ErrorCode, Message, Text};
    use tokio_util::compat::FuturesAsyncReadCompatExt;

    const DRAIN: Duration = Duration::from_secs(1);
    let pki = Pki::new();
    let mut settings = server_settings(vec![identity("a", "t")]);
    settings.timing.drain_timeout = DRAIN;
    let server = TestServer::start(&pki, settings).await;
    let mut old = RawSession::start(server.addr, &pki, ncx_proto::PROTOCOL_VERSION).await;
    assert!(
        matches!(old.answer, Message::Welcome { .. }),
        "{:?}",
        old.answer
    );
    let registered = old.register("s", 0).await;
    let Message::Registered { remote_port, .. } = registered else {
        panic!("{registered:?}")
    };

    // A visitor on the old session, which echoes it by hand.
    let mut visitor = tokio::net::TcpStream::connect(("127.0.0.1", remote_port))
        .await
        .unwrap();
    let mut sub = tokio::time::timeout(WAIT, old.inbound.recv())
        .await
        .unwrap()
        .unwrap()
        .compat();
    let header = tokio::time::timeout(WAIT, ncx::framed::MessageReader::new().read(&mut sub))
        .await
        .expect("the visitor's header in time")
        .unwrap();
    assert!(
        matches!(header, Message::VisitorHeader { .. }),
        "{header:?}"
    );
    ncx::framed::write_message(&mut sub, &Message::VisitorStatus { refusal: None })
        .await
        .unwrap();
    let echo = tokio::spawn(async move {
        let (mut r, mut w) = tokio::io::split(sub);
        tokio::io::copy(&mut r, &mut w).await
    });
    round_trip(&mut visitor, b"before the takeover").await;

    // The new session takes over; the old one learns it, and only then announces it.
    let local = echo_service().await;
    let new = connect(client_settings(
        server.addr,
        pki.pinned(),
        "a",
        "t",
        vec![service("s", local, 0)],
    ))
    .await
    .expect("the new session is welcomed");
    // Each wait is bounded by WAIT; pings answered meanwhile are few (one per ping interval).
    let mut pings = 0;
    loop {
        match old.next().await {
            Message::GoAway {
                code: ErrorCode::SessionReplaced,
                ..
            } => break,
            Message::Ping(v) if pings < 10 => {
                pings += 1;
                old.send(&Message::Pong(v)).await;
            }
            other => panic!("expected the takeover's go-away, got {other:?}"),
        }
    }
    // The drain began when the takeover did, before the go-away above was sent.
    let deadline_passed = tokio::time::Instant::now() + DRAIN + Duration::from_millis(500);
    old.send(&Message::GoAway {
        code: ErrorCode::Rotate,
        message: Text::new("the client reloaded; its new session follows"),
    })
    .await;
    round_trip(&mut visitor, b"after the announcement").await;
    // Not reset at the deadline: the visitor keeps going past it.
    tokio::time::sleep_until(deadline_passed).await;
    round_trip(&mut visitor, b"past the drain deadline").await;

    drop(visitor);
    let _ = tokio::time::timeout(WAIT, echo).await;
    drop(new);
    old.cancel.cancel();
    server.stop().await;
}
