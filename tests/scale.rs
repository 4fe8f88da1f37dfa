//! Scale and process-level resilience: server and client run as separate `ncx` processes, so each
//! has its own descriptors and its memory can be read from /proc.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::Child;
use tokio::time::Instant;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_concurrent_visitors_on_one_session_are_all_served() {
    let dir = tempfile::tempdir().unwrap();
    let (mut server, addr) = server_process(dir.path(), "127.0.0.1:0".parse().unwrap()).await;
    let (mut echo, echo_addr) = echo_process().await;
    let (mut client, public) = client_process(
        addr,
        &fingerprint(dir.path()),
        &[format!("e={echo_addr}@0")],
    )
    .await;
    let public: SocketAddr = public.parse().unwrap();
    let banner = ncx::demo::BANNER.len();
    let (server_idle, client_idle) = (
        memory_kib(server.id().unwrap()).1,
        memory_kib(client.id().unwrap()).1,
    );
    const N: usize = 10_000;
    let mut held = Vec::with_capacity(N);
    let t = Instant::now();
    for i in 0..N {
        let mut s = TcpStream::connect(public)
            .await
            .unwrap_or_else(|e| panic!("visitor {i}: {e}"));
        s.write_all(&(i as u32).to_be_bytes()).await.unwrap();
        held.push(s);
    }
    for (i, s) in held.iter_mut().enumerate() {
        let mut b = vec![0u8; banner + 4];
        tokio::time::timeout(WAIT, s.read_exact(&mut b))
            .await
            .unwrap_or_else(|_| panic!("visitor {i} got no answer"))
            .unwrap_or_else(|e| panic!("visitor {i}: {e}"));
        assert_eq!(
            u32::from_be_bytes(b[banner..].try_into().unwrap()),
            i as u32
        );
    }
    let (server_held, client_held) = (
        memory_kib(server.id().unwrap()).1,
        memory_kib(client.id().unwrap()).1,
    );
    let per_visitor =
        (server_held + client_held).saturating_sub(server_idle + client_idle) as f64 / N as f64;
    println!(
        "{N} concurrent visitors served in {:?}; RSS server {} -> {} KiB, client {} -> {} KiB ({per_visitor:.1} KiB per visitor for both)",
        t.elapsed(),
        server_idle,
        server_held,
        client_idle,
        client_held,
    );
    // The debug build's futures are larger than the release build's (which `ncx-bench` measures:
    // about 4 KiB): 6.6 KiB here, where the visitor futures before they were slimmed measured
    // 8.5 KiB (README, Bounded memory).
    assert!(
        per_visitor < 7.5,
        "an idle visitor costs {per_visitor:.1} KiB across both processes"
    );
    drop(held);
    client.kill().await.unwrap();
    server.kill().await.unwrap();
    echo.kill().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_visitor_does_not_make_either_side_buffer_or_slow_others() {
    let dir = tempfile::tempdir().unwrap();
    let (mut server, addr) = server_process(dir.path(), "127.0.0.1:0".parse().unwrap()).await;
    // A service that tries to send 1 GiB to every visitor.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let svc = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let chunk = vec![0x5au8; 64 * 1024];
                for _ in 0..(1u64 << 30) / chunk.len() as u64 {
                    if s.write_all(&chunk).await.is_err() {
                        return;
                    }
                }
                let _ = s.shutdown().await;
            });
        }
    });
    let (mut client, public) =
        client_process(addr, &fingerprint(dir.path()), &[format!("big={svc}@0")]).await;
    let public: SocketAddr = public.parse().unwrap();
    let sid = server.id().unwrap();
    let cid = client.id().unwrap();
    let idle = (memory_kib(sid).1, memory_kib(cid).1);

    // The slow visitor reads 64 KiB per second for 4 seconds.
    let slow = tokio::spawn(async move {
        let mut s = TcpStream::connect(public).await.unwrap();
        let mut buf = vec![0u8; 64 * 1024];
        let mut got = 0usize;
        for _ in 0..4 {
            let mut this_second = 0;
            while this_second < buf.len() {
                let want = buf.len() - this_second;
                let n = s.read(&mut buf[..want]).await.unwrap();
                assert!(n > 0);
                this_second += n;
            }
            got += this_second;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        got
    });
    // Meanwhile a fast visitor takes 256 MiB from the same service.
    let t = Instant::now();
    let mut fast = TcpStream::connect(public).await.unwrap();
    let mut buf = vec![0u8; 256 * 1024];
    let mut got = 0usize;
    while got < 256 << 20 {
        let n = fast.read(&mut buf).await.unwrap();
        assert!(n > 0);
        got += n;
    }
    let fast_rate = got as f64 / t.elapsed().as_secs_f64() / (1 << 20) as f64;
    drop(fast);
    let slow_got = tokio::time::timeout(WAIT, slow).await.unwrap().unwrap();
    let (server_peak, client_peak) = (memory_kib(sid).0, memory_kib(cid).0);
    println!(
        "fast visitor: {fast_rate:.0} MiB/s beside a slow one ({slow_got} bytes in 4 s); peak RSS server {server_peak} KiB (idle {}), client {client_peak} KiB (idle {})",
        idle.0, idle.1
    );
    // Bounded: each side holds at most the stream's 256 KiB window, copy buffers and TLS records,
    // whatever the service tries to send. Measured: about 4 MiB above idle; 24 MiB leaves room for
    // allocator slack while still catching a side that buffers what the slow visitor cannot take.
    let bound = 24 * 1024;
    assert!(
        server_peak < idle.0 + bound,
        "server peak {server_peak} KiB"
    );
    assert!(
        client_peak < idle.1 + bound,
        "client peak {client_peak} KiB"
    );
    client.kill().await.unwrap();
    server.kill().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_killed_mid_transfer_and_restarted_tunnel_returns_within_backoff_plus_a_second() {
    let dir = tempfile::tempdir().unwrap();
    let listen: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let (mut server, addr) = server_process(dir.path(), listen).await;
    let fp = fingerprint(dir.path());
    let echo = echo_service().await;
    let port = free_port();
    // The client in this process, reconnecting by itself.
    let cs = client_settings(
        addr,
        ncx::tls::ServerTrust::Pinned(vec![fp.parse().unwrap()]),
        "a",
        "t",
        vec![service("e", echo, port)],
    );
    let backoff_initial = cs.reconnect.initial;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let client = tokio::spawn(ncx::client::run(cs, shutdown.clone()));
    let public: SocketAddr = ([127, 0, 0, 1], port).into();
    wait_for_tunnel(public).await;
    // A transfer in flight when the server dies.
    let mut v = TcpStream::connect(public).await.unwrap();
    v.write_all(&vec![7u8; 1 << 20]).await.unwrap();
    let mut b = [0u8; 1024];
    v.read_exact(&mut b).await.unwrap();

    server.start_kill().unwrap(); // SIGKILL
    server.wait().await.unwrap();
    let killed = Instant::now();
    // The visitor's connection ends. A killed process cannot choose RST over FIN: the kernel sends
    // RST only if unread bytes remain in the dead socket, so either ending is accepted here.
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(WAIT, v.read_to_end(&mut rest))
        .await
        .expect("the visitor's connection ends with the server");
    let (mut server2, _) = server_process(dir.path(), listen).await;
    wait_for_tunnel(public).await;
    let took = killed.elapsed();
    println!("tunnel back {took:?} after SIGKILL and restart of the server");
    assert!(
        took <= backoff_initial.mul_f64(1.2) + Duration::from_secs(1),
        "took {took:?}"
    );
    shutdown.cancel();
    tokio::time::timeout(WAIT, client)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    server2.kill().await.unwrap();
}

/// Server, echo service and client as processes, and a visitor through them that has read the
/// echo service's banner.
struct TunnelWithVisitor {
    server: Child,
    addr: SocketAddr,
    echo: Child,
    echo_addr: SocketAddr,
    client: Child,
    public: SocketAddr,
    visitor: TcpStream,
}

async fn tunnel_with_a_visitor(dir: &std::path::Path) -> TunnelWithVisitor {
    let (server, addr) = server_process(dir, "127.0.0.1:0".parse().unwrap()).await;
    let (echo, echo_addr) = echo_process().await;
    let (client, public) =
        client_process(addr, &fingerprint(dir), &[format!("e={echo_addr}@0")]).await;
    let public: SocketAddr = public.parse().unwrap();
    let mut visitor = TcpStream::connect(public).await.unwrap();
    let mut b = vec![0u8; ncx::demo::BANNER.len()];
    visitor.read_exact(&mut b).await.unwrap();
    TunnelWithVisitor {
        server,
        addr,
        echo,
        echo_addr,
        client,
        public,
        visitor,
    }
}

fn signal(child: &Child, sig: &str) {
    let pid = child.id().expect("the child runs").to_string();
    assert!(std::process::Command::new("kill")
        .args([sig, &pid])
        .status()
        .unwrap()
        .success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_a_second_signal_exits_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let t = tunnel_with_a_visitor(dir.path()).await;
    let (mut server, addr, mut echo, echo_addr, mut client, public, mut v) = (
        t.server,
        t.addr,
        t.echo,
        t.echo_addr,
        t.client,
        t.public,
        t.visitor,
    );
    let banner = ncx::demo::BANNER.len();

    // First SIGTERM to the client: it says go-away (the server releases the port) and drains.
    signal(&client, "-TERM");
    wait_until_refused(public, Duration::from_secs(2)).await;
    v.write_all(b"drain").await.unwrap();
    let mut b = [0u8; 5];
    v.read_exact(&mut b).await.unwrap();
    assert_eq!(
        &b, b"drain",
        "the visitor in flight keeps working during the drain"
    );
    assert!(
        client.try_wait().unwrap().is_none(),
        "the client waits for its visitor"
    );
    // The visitor ends: the client exits cleanly.
    drop(v);
    let status = tokio::time::timeout(WAIT, client.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status}");

    // A server with a visitor in flight: the first SIGTERM drains, the second exits at once.
    let (mut client2, public2) = client_process(
        addr,
        &fingerprint(dir.path()),
        &[format!("e={echo_addr}@0")],
    )
    .await;
    let public2: SocketAddr = public2.parse().unwrap();
    let mut v2 = TcpStream::connect(public2).await.unwrap();
    let mut b = vec![0u8; banner];
    v2.read_exact(&mut b).await.unwrap();
    signal(&server, "-TERM");
    wait_until_refused(public2, Duration::from_secs(2)).await;
    assert!(
        server.try_wait().unwrap().is_none(),
        "the server drains its visitor"
    );
    let t = Instant::now();
    signal(&server, "-TERM");
    let status = tokio::time::timeout(WAIT, server.wait())
        .await
        .unwrap()
        .unwrap();
    println!(
        "second SIGTERM: server exited after {:?} with {status}",
        t.elapsed()
    );
    assert_eq!(status.code(), Some(130));
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "a second signal exits at once"
    );
    drop(v2);
    client2.kill().await.unwrap();
    echo.kill().await.unwrap();
}

/// The soft open-file limit is raised to the hard limit at start, and a server whose limits do not
/// fit in it says so with the numbers (hostile-peers issue, finding 7: 1,100 idle visitors made new
/// sessions fail at the common soft limit of 1,024). Lowering limits needs no privilege, so the
/// test runs the server under `ulimit -Sn 256; ulimit -Hn 2048`.
#[tokio::test]
async fn the_open_file_limit_is_raised_and_a_shortfall_is_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    // 2048, or this process's own hard limit if that is lower (raising it needs privilege).
    let own = std::fs::read_to_string("/proc/self/limits").unwrap();
    let own_hard = own
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(4))
        .and_then(|h| h.parse::<u64>().ok())
        .unwrap_or(u64::MAX);
    let hard = own_hard.min(2048);
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -Sn 256 && ulimit -Hn {hard} && exec \"$0\" \"$@\""
        ))
        .arg(env!("CARGO_BIN_EXE_ncx"))
        .args(["server", "--listen", "127.0.0.1:0", "--auto-cert-dir"])
        .arg(dir.path())
        .args([
            "--identity",
            "a",
            "--ports",
            "1024-65535",
            "--bind",
            "127.0.0.1",
        ])
        .env_remove("RUST_LOG")
        .env("NCX_TOKEN", "t")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = LogLines::new(&mut child);
    let warning = lines.wait_for("open-file limit").await;
    assert!(
        warning.contains("WARN")
            && warning.contains(&hard.to_string())
            && warning.contains("10000"),
        "{warning}"
    );
    lines.wait_for("server listening").await;
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", child.id().unwrap())).unwrap();
    let open_files = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("a line for open files");
    let numbers: Vec<&str> = open_files.split_whitespace().skip(3).take(2).collect();
    let hard = hard.to_string();
    assert_eq!(numbers, [hard.as_str(), hard.as_str()], "{open_files}");
    child.kill().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_drains_ncx_visit_like_sigterm() {
    // At 8354efb SIGHUP (a closed terminal) killed the process at once: exit 129, no drain. The
    // server and the client reload on it now (tests/reload.rs); `ncx visit` still drains.
    let dir = tempfile::tempdir().unwrap();
    let (mut server, addr) = server_process(dir.path(), "127.0.0.1:0".parse().unwrap()).await;
    let fp = fingerprint(dir.path());
    let echo = echo_service().await;
    let office = RunningClient::start(client_settings(
        addr,
        ncx::tls::ServerTrust::Pinned(vec![fp.parse().unwrap()]),
        "a",
        "t",
        vec![private_service("p", echo, &["a"])],
    ))
    .await;
    let mut visit = ncx_process()
        .args(["visit", "--server", &addr.to_string(), "--identity", "a"])
        .args(["--server-fingerprint", &fp, "--service", "a/p"])
        .args(["--listen", "127.0.0.1:0"])
        .env("NCX_TOKEN", "t")
        .spawn()
        .unwrap();
    let line = wait_for_line(&mut visit, "visit listener ready").await;
    let local: SocketAddr = log_field(&line, "listen").parse().unwrap();
    let mut v = TcpStream::connect(local).await.unwrap();
    v.write_all(b"up").await.unwrap();
    let mut b = [0u8; 2];
    v.read_exact(&mut b).await.unwrap();
    signal(&visit, "-HUP");
    wait_until_refused(local, Duration::from_secs(2)).await;
    v.write_all(b"drain").await.unwrap();
    let mut b = [0u8; 5];
    v.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"drain", "the visitor in flight keeps working");
    drop(v);
    let status = tokio::time::timeout(WAIT, visit.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status}");
    office.stop().await;
    server.kill().await.unwrap();
}
