//! High availability with real processes on loopback: one client on two servers (modes `all` and
//! `failover`), two clients behind one group (balance, SIGKILL of a member, a failing health
//! check, takeover of a stale session per instance). Each test prints how many visitor
//! connections failed around the failure and for how long (`cargo test --test ha -- --nocapture`).
//!
//! The two servers of a test bind their public ports on 127.0.0.2 and 127.0.0.3 with the same
//! port number, as two hosts behind one DNS name would.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::process::Child;
use tokio::time::Instant;

/// A running `ncx server` with its log.
struct Server {
    child: Child,
    log: LogLines,
    addr: SocketAddr,
    fingerprint: String,
}

/// Starts `ncx server` from a configuration in `dir`: identity `a`/`t` with `ports` on `bind`,
/// and `groups` (name, port) that `a` may join.
async fn server(
    dir: &Path,
    listen: &str,
    bind: &str,
    ports: &str,
    groups: &[(&str, u16)],
) -> Server {
    server_with(dir, listen, bind, ports, groups, "", "").await
}

/// [`server`] with more top-level settings in `extra`.
async fn server_with(
    dir: &Path,
    listen: &str,
    bind: &str,
    ports: &str,
    groups: &[(&str, u16)],
    extra: &str,
    tail: &str,
) -> Server {
    let mut c = format!(
        "listen = \"{listen}\"\n{extra}\n[tls]\nauto_cert_dir = \"{}\"\n\
         [[identities]]\nname = \"a\"\ntoken = \"t\"\nbind = \"{bind}\"\nports = [\"{ports}\"]\n",
        dir.join("tls").display()
    );
    for (name, port) in groups {
        c.push_str(&format!(
            "[[groups]]\nname = \"{name}\"\nidentities = [\"a\"]\nbind = \"{bind}\"\nports = [\"{port}\"]\n"
        ));
    }
    c.push_str(tail);
    let file = dir.join("server.toml");
    std::fs::write(&file, c).unwrap();
    let mut child = ncx_process()
        .args(["server", "--config"])
        .arg(&file)
        .spawn()
        .unwrap();
    let mut log = LogLines::new(&mut child);
    let line = log.wait_for("server listening").await;
    Server {
        child,
        log,
        addr: log_field(&line, "addr").parse().unwrap(),
        fingerprint: fingerprint(&dir.join("tls")),
    }
}

/// A running `ncx client` with its log.
struct ClientProc {
    child: Child,
    log: LogLines,
}

impl ClientProc {
    /// Writes `body` (the part after the connection settings) to `dir/NAME.toml` and starts the
    /// client with it.
    fn start(dir: &Path, name: &str, head: &str, body: &str) -> Self {
        let file = dir.join(format!("{name}.toml"));
        std::fs::write(
            &file,
            format!(
                "identity = \"a\"\ntoken = \"t\"\nreconnect_initial_secs = 1\nreconnect_max_secs = 2\n{head}\n{body}"
            ),
        )
        .unwrap();
        let mut child = ncx_process()
            .args(["client", "--config"])
            .arg(&file)
            .spawn()
            .unwrap();
        let log = LogLines::new(&mut child);
        ClientProc { child, log }
    }
}

/// The connection settings of a client of one server.
fn one_server(s: &Server) -> String {
    format!(
        "server = \"{}\"\nserver_fingerprint = \"{}\"",
        s.addr, s.fingerprint
    )
}

async fn kill(child: &mut Child) {
    child.start_kill().unwrap();
    tokio::time::timeout(WAIT, child.wait())
        .await
        .expect("a killed process ends")
        .unwrap();
}

fn signal(child: &Child, sig: &str) {
    let pid = child.id().unwrap().to_string();
    let sent = std::process::Command::new("kill")
        .args([sig, &pid])
        .status()
        .unwrap();
    assert!(sent.success());
}

/// One visitor of a banner service: connects, reads the banner (one byte), and goes. An error
/// (refused, reset, closed without a banner, or nothing within 5 s) is a failed visitor.
async fn visit(addr: SocketAddr) -> Result<u8, String> {
    visit_within(addr, Duration::from_secs(5)).await
}

/// [`visit`] with a patience of `within`.
async fn visit_within(addr: SocketAddr, within: Duration) -> Result<u8, String> {
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let mut b = [0u8; 1];
        match s.read(&mut b).await {
            Ok(1) => Ok(b[0]),
            Ok(_) => Err("closed without a banner".to_owned()),
            Err(e) => Err(format!("read: {e}")),
        }
    };
    tokio::time::timeout(within, attempt)
        .await
        .unwrap_or_else(|_| Err(format!("no banner within {within:?}")))
}

/// Visits `addr` until `run` visitors in a row got a banner from `want`; returns how many
/// visitors failed before that, how many reached another member, and how long it took.
/// Bounded by [`WAIT`] and 20,000 visitors.
async fn until_all_reach(addr: SocketAddr, want: u8, run: usize) -> (usize, usize, Duration) {
    let start = Instant::now();
    let (mut failed, mut others, mut streak) = (0, 0, 0);
    for _ in 0..20_000 {
        match visit(addr).await {
            Ok(b) if b == want => streak += 1,
            Ok(_) => {
                others += 1;
                streak = 0;
            }
            Err(_) => {
                failed += 1;
                streak = 0;
            }
        }
        if streak >= run {
            return (failed, others, start.elapsed());
        }
        assert!(
            start.elapsed() < WAIT,
            "visitors still do not all reach {:?}: {failed} failed, {others} elsewhere",
            want as char
        );
    }
    panic!(
        "20,000 visitors without {run} in a row reaching {:?}",
        want as char
    )
}

/// A service that answers every connection with `banner` and then holds it until the visitor
/// goes.
async fn banner(banner: &'static [u8]) -> SocketAddr {
    banner_service(banner).await
}

/// An HTTP health endpoint whose answer the test switches: 200 while `healthy`, else 503.
async fn health_endpoint(healthy: Arc<AtomicBool>) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let ok = healthy.load(Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let status = if ok {
                    "200 OK"
                } else {
                    "503 Service Unavailable"
                };
                let _ = s
                    .write_all(
                        format!(
                            "HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                        )
                        .as_bytes(),
                    )
                    .await;
            });
        }
    });
    addr
}

/// A grouped service `web` on `port` behind `local`, as instance `instance`.
fn group_member(instance: &str, local: SocketAddr, port: u16, extra: &str) -> String {
    format!(
        "instance = \"{instance}\"\n[[services]]\nname = \"web\"\nlocal = \"{local}\"\nremote_port = {port}\ngroup = \"web\"\n{extra}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_on_two_servers_keeps_serving_through_the_other_and_rejoins_a_restarted_one() {
    let dir = tempfile::tempdir().unwrap();
    let (d1, d2) = (dir.path().join("s1"), dir.path().join("s2"));
    std::fs::create_dir_all(&d1).unwrap();
    std::fs::create_dir_all(&d2).unwrap();
    let port = free_port();
    let mut s1 = server(&d1, "127.0.0.1:0", "127.0.0.2", &port.to_string(), &[]).await;
    let s2 = server(&d2, "127.0.0.1:0", "127.0.0.3", &port.to_string(), &[]).await;
    let local = banner(b"A").await;
    let head = format!(
        "servers = [\"{}\", \"{}\"]\nserver_fingerprints = [\"{}\", \"{}\"]",
        s1.addr, s2.addr, s1.fingerprint, s2.fingerprint
    );
    let body = format!("[[services]]\nname = \"web\"\nlocal = \"{local}\"\nremote_port = {port}\n");
    let mut client = ClientProc::start(dir.path(), "client", &head, &body);
    let on1: SocketAddr = format!("127.0.0.2:{port}").parse().unwrap();
    let on2: SocketAddr = format!("127.0.0.3:{port}").parse().unwrap();
    wait_for_tunnel_banner(on1).await;
    wait_for_tunnel_banner(on2).await;

    // A visitor connected through the second server before the first dies.
    let mut held = tokio::net::TcpStream::connect(on2).await.unwrap();
    let mut b = [0u8; 1];
    held.read_exact(&mut b).await.unwrap();

    // Visitors through the second server, without a pause, while the first is killed.
    let stop = Arc::new(AtomicBool::new(false));
    let visitors = tokio::spawn({
        let stop = stop.clone();
        async move {
            let (mut ok, mut failed) = (0usize, 0usize);
            while !stop.load(Ordering::SeqCst) && ok + failed < 100_000 {
                match visit(on2).await {
                    Ok(b'A') => ok += 1,
                    _ => failed += 1,
                }
            }
            (ok, failed)
        }
    });
    let killed = Instant::now();
    kill(&mut s1.child).await;
    let noticed = client.log.wait_for("not connected; retrying").await;
    assert!(noticed.contains(&s1.addr.to_string()), "{noticed}");
    let noticed_after = killed.elapsed();
    // The first server's port is gone with it.
    wait_until_refused(on1, WAIT).await;
    // Restart it on the same address: the client's loop for it joins again.
    let restarted = Instant::now();
    let listen = s1.addr.to_string();
    let _s1 = server(&d1, &listen, "127.0.0.2", &port.to_string(), &[]).await;
    wait_for_tunnel_banner(on1).await;
    let rejoined_after = restarted.elapsed();
    stop.store(true, Ordering::SeqCst);
    let (ok, failed) = visitors.await.unwrap();
    assert!(
        held_still_echoes(&mut held).await,
        "the visitor in flight through the other server is untouched"
    );
    eprintln!(
        "servers mode all: the client noticed the kill after {noticed_after:?}; visitors through the \
         other server: {ok} connected, {failed} failed; the restarted server was re-joined {rejoined_after:?} after it started"
    );
    assert_eq!(failed, 0, "no visitor through the other server fails");
    assert!(ok > 0);
    drop(s2);
}

/// Waits (bounded) until a visitor of `addr` gets a banner.
async fn wait_for_tunnel_banner(addr: SocketAddr) -> Duration {
    let start = Instant::now();
    loop {
        if visit(addr).await.is_ok() {
            return start.elapsed();
        }
        assert!(start.elapsed() < WAIT, "{addr} never served a visitor");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether the connection to the banner service still echoes a byte.
async fn held_still_echoes(held: &mut tokio::net::TcpStream) -> bool {
    if held.write_all(b"x").await.is_err() {
        return false;
    }
    let mut b = [0u8; 1];
    matches!(
        tokio::time::timeout(Duration::from_secs(5), held.read_exact(&mut b)).await,
        Ok(Ok(_)) if b[0] == b'x'
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_moves_to_the_next_server_and_back_to_the_first_when_it_returns() {
    let dir = tempfile::tempdir().unwrap();
    let (d1, d2) = (dir.path().join("s1"), dir.path().join("s2"));
    std::fs::create_dir_all(&d1).unwrap();
    std::fs::create_dir_all(&d2).unwrap();
    let port = free_port();
    let mut s1 = server(&d1, "127.0.0.1:0", "127.0.0.2", &port.to_string(), &[]).await;
    let s2 = server(&d2, "127.0.0.1:0", "127.0.0.3", &port.to_string(), &[]).await;
    let local = banner(b"A").await;
    let head = format!(
        "servers = [\"{}\", \"{}\"]\nserver_mode = \"failover\"\nserver_fingerprints = [\"{}\", \"{}\"]",
        s1.addr, s2.addr, s1.fingerprint, s2.fingerprint
    );
    let body = format!("[[services]]\nname = \"web\"\nlocal = \"{local}\"\nremote_port = {port}\n");
    let mut client = ClientProc::start(dir.path(), "client", &head, &body);
    let on1: SocketAddr = format!("127.0.0.2:{port}").parse().unwrap();
    let on2: SocketAddr = format!("127.0.0.3:{port}").parse().unwrap();
    let line = client.log.wait_for("connected to the server").await;
    assert!(
        line.contains(&s1.addr.to_string()),
        "the first server first: {line}"
    );
    wait_for_tunnel_banner(on1).await;
    // One session at a time: nothing on the second server.
    assert!(tokio::net::TcpStream::connect(on2).await.is_err());

    let killed = Instant::now();
    kill(&mut s1.child).await;
    let line = client.log.wait_for("connected to the server").await;
    assert!(
        line.contains(&s2.addr.to_string()),
        "then the second: {line}"
    );
    wait_for_tunnel_banner(on2).await;
    let moved_after = killed.elapsed();

    let restarted = Instant::now();
    let listen = s1.addr.to_string();
    let _s1 = server(&d1, &listen, "127.0.0.2", &port.to_string(), &[]).await;
    client.log.wait_for("an earlier server answers again").await;
    wait_for_tunnel_banner(on1).await;
    // The second server lets the service go once the client is back on the first.
    wait_until_refused(on2, WAIT).await;
    let back_after = restarted.elapsed();
    eprintln!(
        "servers mode failover: served through the second server {moved_after:?} after the first was killed; \
         back on the first {back_after:?} after it restarted"
    );
    drop(s2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_spreads_visitors_over_two_clients_and_keeps_serving_when_one_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let s = server(
        dir.path(),
        "127.0.0.1:0",
        "127.0.0.1",
        "40000-40010",
        &[("web", port)],
    )
    .await;
    let (a, b) = (banner(b"A").await, banner(b"B").await);
    let mut one = ClientProc::start(
        dir.path(),
        "one",
        &one_server(&s),
        &group_member("one", a, port, ""),
    );
    let mut two = ClientProc::start(
        dir.path(),
        "two",
        &one_server(&s),
        &group_member("two", b, port, ""),
    );
    one.log.wait_for("service available").await;
    two.log.wait_for("service available").await;
    let public: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();

    let (mut to_a, mut to_b) = (0, 0);
    for _ in 0..200 {
        match visit(public).await {
            Ok(b'A') => to_a += 1,
            Ok(b'B') => to_b += 1,
            other => panic!("a visitor of a healthy group: {other:?}"),
        }
    }
    eprintln!("group of two: 200 visitors, {to_a} to one, {to_b} to two");
    assert!(
        to_a >= 60 && to_b >= 60,
        "each member gets at least 30%: {to_a}/{to_b}"
    );

    kill(&mut one.child).await;
    let (failed, to_dead, took) = until_all_reach(public, b'B', 200).await;
    eprintln!(
        "group, one member killed: {failed} visitors failed and {to_dead} reached the killed one before 200 in a row reached the other ({took:?})"
    );
    assert_eq!(
        failed, 0,
        "a visitor that picked the dead member is tried on the other"
    );
    assert_eq!(to_dead, 0);
    drop(two);
    drop(s);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_health_check_takes_a_member_out_and_back_in() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut s = server(
        dir.path(),
        "127.0.0.1:0",
        "127.0.0.1",
        "40000-40010",
        &[("web", port)],
    )
    .await;
    let (a, b) = (banner(b"A").await, banner(b"B").await);
    let healthy = Arc::new(AtomicBool::new(true));
    let check = health_endpoint(healthy.clone()).await;
    let health = format!(
        "health_check = \"http://{check}/health\"\nhealth_interval_secs = 1\nhealth_timeout_secs = 1\nhealth_failures = 1\n"
    );
    let mut one = ClientProc::start(
        dir.path(),
        "one",
        &one_server(&s),
        &group_member("one", a, port, &health),
    );
    let mut two = ClientProc::start(
        dir.path(),
        "two",
        &one_server(&s),
        &group_member("two", b, port, ""),
    );
    one.log.wait_for("service available").await;
    two.log.wait_for("service available").await;
    let public: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    until_all_reach_both(public).await;

    // The check fails: the member is skipped although its service still answers.
    healthy.store(false, Ordering::SeqCst);
    s.log.wait_for("reports the service unhealthy").await;
    let (failed, to_one, _) = until_all_reach(public, b'B', 100).await;
    assert_eq!(failed, 0);
    eprintln!("health: {to_one} visitors still reached the member between its failing check and the server's skipping it");
    for _ in 0..100 {
        assert_eq!(
            visit(public).await,
            Ok(b'B'),
            "an unhealthy member gets no visitors"
        );
    }
    // It recovers: it gets visitors again.
    healthy.store(true, Ordering::SeqCst);
    s.log.wait_for("reports the service healthy again").await;
    until_all_reach_both(public).await;
    drop((one, two));
}

/// Visits `public` until both members answered (bounded).
async fn until_all_reach_both(public: SocketAddr) {
    let (mut seen_a, mut seen_b) = (false, false);
    let start = Instant::now();
    while !(seen_a && seen_b) {
        match visit(public).await {
            Ok(b'A') => seen_a = true,
            Ok(b'B') => seen_b = true,
            other => panic!("a visitor of a healthy group: {other:?}"),
        }
        assert!(start.elapsed() < WAIT, "both members never answered");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_session_takes_over_only_from_its_own_instance() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let s = server(
        dir.path(),
        "127.0.0.1:0",
        "127.0.0.1",
        "40000-40010",
        &[("web", port)],
    )
    .await;
    let (a, b, c) = (banner(b"A").await, banner(b"B").await, banner(b"C").await);
    let mut one = ClientProc::start(
        dir.path(),
        "one",
        &one_server(&s),
        &group_member("one", a, port, ""),
    );
    let mut two = ClientProc::start(
        dir.path(),
        "two",
        &one_server(&s),
        &group_member("two", b, port, ""),
    );
    one.log.wait_for("service available").await;
    two.log.wait_for("service available").await;
    let public: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    until_all_reach_both(public).await;

    // Instance one hangs (its session is stale: open, but nobody answers), and a new process of
    // the same instance connects: it replaces the stale session, and instance two keeps its own.
    signal(&one.child, "-STOP");
    let mut again = ClientProc::start(
        dir.path(),
        "again",
        &one_server(&s),
        &group_member("one", c, port, ""),
    );
    again.log.wait_for("service available").await;
    let (mut to_b, mut to_c) = (0, 0);
    for _ in 0..100 {
        match visit(public).await {
            Ok(b'B') => to_b += 1,
            Ok(b'C') => to_c += 1,
            other => panic!("after the takeover every visitor reaches a live member: {other:?}"),
        }
    }
    assert!(to_b >= 30 && to_c >= 30, "both live members: {to_b}/{to_c}");
    kill(&mut one.child).await;
    drop((two, again, s));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_member_delays_its_visitors_until_the_liveness_timeout_then_the_other_takes_them()
{
    // A member that stops answering without closing its connection (a machine that lost power, a
    // cut cable) is noticed only by the heartbeat: ping every second, dead after 3 s.
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut s = server_with(
        dir.path(),
        "127.0.0.1:0",
        "127.0.0.1",
        "40000-40010",
        &[("web", port)],
        "ping_interval_secs = 1\nliveness_timeout_secs = 3",
        "",
    )
    .await;
    let (a, b) = (banner(b"A").await, banner(b"B").await);
    let mut one = ClientProc::start(
        dir.path(),
        "one",
        &one_server(&s),
        &group_member("one", a, port, ""),
    );
    let mut two = ClientProc::start(
        dir.path(),
        "two",
        &one_server(&s),
        &group_member("two", b, port, ""),
    );
    one.log.wait_for("service available").await;
    two.log.wait_for("service available").await;
    let public: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    until_all_reach_both(public).await;

    signal(&one.child, "-STOP");
    let frozen = Instant::now();
    // Ten visitors at once every 100 ms, until a second after the server dropped the frozen member.
    let mut visitors = Vec::new();
    let mut dropped: Option<Duration> = None;
    for _ in 0..200 {
        for _ in 0..10 {
            visitors.push(tokio::spawn(async move {
                let t = Instant::now();
                (
                    visit_within(public, Duration::from_secs(15)).await,
                    t.elapsed(),
                )
            }));
        }
        if dropped.is_some_and(|d| frozen.elapsed() > d + Duration::from_secs(1)) {
            break;
        }
        tokio::select! {
            _ = s.log.wait_for("session ended"), if dropped.is_none() => {
                dropped = Some(frozen.elapsed());
            }
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
    let dropped = dropped.expect("the server drops the frozen member");
    let (mut ok, mut failed, mut slowest) = (0, 0, Duration::ZERO);
    for v in visitors {
        let (r, took) = v.await.unwrap();
        slowest = slowest.max(took);
        match r {
            Ok(_) => ok += 1,
            Err(_) => failed += 1,
        }
    }
    eprintln!(
        "group, one member frozen: the server dropped it after {dropped:?}; {ok} visitors served, {failed} failed, the slowest waited {slowest:?}"
    );
    assert_eq!(
        failed, 0,
        "the frozen member's visitors are handed to the other"
    );
    assert!(
        slowest < Duration::from_secs(10),
        "no visitor waits much past the liveness timeout: {slowest:?}"
    );
    // From now on every visitor reaches the live member at once.
    for _ in 0..50 {
        assert_eq!(visit(public).await, Ok(b'B'));
    }
    kill(&mut one.child).await;
    drop((two, s));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_group_spreads_visits_and_keeps_serving_when_a_member_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let s = server_with(
        dir.path(),
        "127.0.0.1:0",
        "127.0.0.1",
        "40000-40010",
        &[],
        "",
        "[[identities]]\nname = \"v\"\ntoken = \"tv\"\n[[groups]]\nname = \"desk\"\nidentities = [\"a\"]\n",
    )
    .await;
    let (a, b) = (banner(b"A").await, banner(b"B").await);
    let member = |instance: &str, local: SocketAddr| {
        format!(
            "instance = \"{instance}\"\n[[services]]\nname = \"rdp\"\nlocal = \"{local}\"\nprivate = true\nvisitors = [\"v\"]\ngroup = \"desk\"\n"
        )
    };
    let mut one = ClientProc::start(dir.path(), "one", &one_server(&s), &member("one", a));
    let mut two = ClientProc::start(dir.path(), "two", &one_server(&s), &member("two", b));
    one.log.wait_for("private service offered").await;
    two.log.wait_for("private service offered").await;
    let file = dir.path().join("visit.toml");
    std::fs::write(
        &file,
        format!(
            "{}\nidentity = \"v\"\ntoken = \"tv\"\n[[visits]]\nservice = \"desk/rdp\"\nlisten = \"127.0.0.1:0\"\n",
            one_server(&s)
        ),
    )
    .unwrap();
    let mut visit_proc = ncx_process()
        .args(["visit", "--config"])
        .arg(&file)
        .spawn()
        .unwrap();
    let mut visit_log = LogLines::new(&mut visit_proc);
    let line = visit_log.wait_for("visit listener ready").await;
    let local: SocketAddr = log_field(&line, "listen").parse().unwrap();

    let (mut to_a, mut to_b) = (0, 0);
    for _ in 0..100 {
        match visit(local).await {
            Ok(b'A') => to_a += 1,
            Ok(b'B') => to_b += 1,
            other => panic!("a visit of a healthy private group: {other:?}"),
        }
    }
    eprintln!("private group of two: 100 visits, {to_a} to one, {to_b} to two");
    assert!(
        to_a >= 30 && to_b >= 30,
        "each member gets at least 30%: {to_a}/{to_b}"
    );
    kill(&mut one.child).await;
    let (failed, to_dead, took) = until_all_reach(local, b'B', 100).await;
    eprintln!("private group, one member killed: {failed} visits failed, {to_dead} reached the killed one ({took:?})");
    assert_eq!(failed, 0);
    assert_eq!(to_dead, 0);
    drop((two, visit_proc, s));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ncx_visit_on_two_servers_goes_on_through_the_other_when_one_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let (d1, d2) = (dir.path().join("s1"), dir.path().join("s2"));
    std::fs::create_dir_all(&d1).unwrap();
    std::fs::create_dir_all(&d2).unwrap();
    let visitor = "[[identities]]\nname = \"v\"\ntoken = \"tv\"\n";
    let mut s1 = server_with(
        &d1,
        "127.0.0.1:0",
        "127.0.0.2",
        "40000-40010",
        &[],
        "",
        visitor,
    )
    .await;
    let s2 = server_with(
        &d2,
        "127.0.0.1:0",
        "127.0.0.3",
        "40000-40010",
        &[],
        "",
        visitor,
    )
    .await;
    let servers = format!(
        "servers = [\"{}\", \"{}\"]\nserver_fingerprints = [\"{}\", \"{}\"]",
        s1.addr, s2.addr, s1.fingerprint, s2.fingerprint
    );
    let local = banner(b"A").await;
    let mut owner = ClientProc::start(
        dir.path(),
        "owner",
        &servers,
        &format!("[[services]]\nname = \"rdp\"\nlocal = \"{local}\"\nprivate = true\nvisitors = [\"v\"]\n"),
    );
    owner.log.wait_for("private service offered").await;
    owner.log.wait_for("private service offered").await;
    let file = dir.path().join("visit.toml");
    std::fs::write(
        &file,
        format!("{servers}\nidentity = \"v\"\ntoken = \"tv\"\nreconnect_initial_secs = 1\n[[visits]]\nservice = \"a/rdp\"\nlisten = \"127.0.0.1:0\"\n"),
    )
    .unwrap();
    let mut visit_proc = ncx_process()
        .args(["visit", "--config"])
        .arg(&file)
        .spawn()
        .unwrap();
    let mut visit_log = LogLines::new(&mut visit_proc);
    let line = visit_log.wait_for("visit listener ready").await;
    let listen: SocketAddr = log_field(&line, "listen").parse().unwrap();
    wait_for_tunnel_banner(listen).await;

    kill(&mut s1.child).await;
    let killed = Instant::now();
    // Visits fail only until the visit's session to the first server is known lost; then they
    // go through the second.
    let (failed, _, took) = until_all_reach(listen, b'A', 100).await;
    eprintln!(
        "ncx visit on two servers, the first killed: {failed} visits failed before 100 in a row went through the second ({:?} after the kill, {took:?} of visiting)",
        killed.elapsed()
    );
    assert!(failed <= 5, "{failed} visits failed");
    drop((owner, visit_proc, s2));
}
