//! The client reaches its server through the proxies people have in front of them: squid as an
//! HTTP CONNECT proxy, without and with Basic authentication; dante (`danted`) as a SOCKS5 proxy
//! with a user, resolving the server's name itself; and an `https://` proxy (squid behind a TLS
//! front the test runs). Real bytes through a visitor each time; a refusal says what the proxy
//! answered and is final only when it is about credentials. The environment's proxy variables
//! are followed by a real `ncx client` process, and NO_PROXY is honoured.
//!
//! squid and danted come from Debian (`.ci/run` installs them and sets NCX_REQUIRE_PROXIES=1,
//! which turns a missing one into a failure instead of a skip). dante checks users against the
//! system's password database; the test gives it one of its own by bind-mounting a passwd and a
//! shadow file inside a mount namespace (`unshare -m`, root), so the machine's are untouched.

mod common;

use std::net::SocketAddr;
use std::process::Stdio;

use common::programs::{self, terminate};
use common::*;
use ncx::client::ClientError;
use ncx::proxy::{ProxySetting, ProxyUrl};

/// Skips a test of squid or dante where they cannot run (both need root here: squid drops to its
/// user, dante needs a mount namespace).
fn skip_without(program: &str, test: &str) -> bool {
    programs::skip_without(program, true, test)
}

/// A squid on loopback that allows CONNECT to any port of 127.0.0.1, for users of `users` only
/// (htpasswd with apr1 hashes) when there are any.
struct Squid {
    child: tokio::process::Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Squid {
    async fn start(users: &[(&str, &str)]) -> Squid {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        let mut access = String::new();
        if users.is_empty() {
            access.push_str("http_access allow CONNECT here\n");
        } else {
            let mut passwd = String::new();
            for (user, pass) in users {
                let out = std::process::Command::new("openssl")
                    .args(["passwd", "-apr1", pass])
                    .output()
                    .unwrap();
                passwd.push_str(&format!(
                    "{user}:{}\n",
                    String::from_utf8_lossy(&out.stdout).trim()
                ));
            }
            std::fs::write(dir.path().join("passwd"), passwd).unwrap();
            access.push_str(&format!(
                "auth_param basic program /usr/lib/squid/basic_ncsa_auth {d}/passwd\nauth_param basic realm ncx-test\nacl authed proxy_auth REQUIRED\nhttp_access allow CONNECT here authed\n"
            ));
        }
        access.push_str("http_access deny all\n");
        let (child, [port]) =
            programs::start_on_ports("squid", &dir.path().join("cache.log"), |[port]| {
                let conf = format!(
                    "http_port 127.0.0.1:{port}\npid_filename {d}/squid.pid\ncache_log {d}/cache.log\naccess_log stdio:{d}/access.log\ncache deny all\ncoredump_dir {d}\nshutdown_lifetime 0 seconds\ndns_nameservers 127.0.0.1\nacl CONNECT method CONNECT\nacl here dst 127.0.0.0/8\n{access}"
                );
                std::fs::write(dir.path().join("squid.conf"), conf).unwrap();
                // squid started as root runs as the user `proxy`, which must write its logs here.
                let owned = std::process::Command::new("chown")
                    .args(["-R", "proxy:proxy"])
                    .arg(dir.path())
                    .status()
                    .unwrap();
                assert!(owned.success());
                tokio::process::Command::new("/usr/sbin/squid")
                    .args(["-N", "-f"])
                    .arg(dir.path().join("squid.conf"))
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .kill_on_drop(true)
                    .spawn()
                    .unwrap()
            })
            .await;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        Squid { child, addr, dir }
    }

    /// How many CONNECTs squid has logged (it writes a line when a tunnel closes or is refused).
    fn logged(&self, needle: &str) -> usize {
        std::fs::read_to_string(self.dir.path().join("access.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(needle))
            .count()
    }
}

impl Drop for Squid {
    fn drop(&mut self) {
        terminate(&mut self.child);
    }
}

/// A dante SOCKS5 server on loopback with one user, allowed to connect to 127.0.0.0/8 only.
struct Dante {
    child: tokio::process::Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Dante {
    async fn start(user: &str, pass: &str) -> Dante {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let system_users = |file: &str| {
            std::fs::read_to_string(file)
                .unwrap()
                .lines()
                .filter(|l| l.starts_with("root:") || l.starts_with("nobody:"))
                .map(|l| format!("{l}\n"))
                .collect::<String>()
        };
        let hash = std::process::Command::new("openssl")
            .args(["passwd", "-6", pass])
            .output()
            .unwrap();
        let hash = String::from_utf8_lossy(&hash.stdout).trim().to_owned();
        std::fs::write(
            d.join("passwd"),
            format!(
                "{}{user}:x:4242:4242::/nonexistent:/usr/sbin/nologin\n",
                system_users("/etc/passwd")
            ),
        )
        .unwrap();
        std::fs::write(
            d.join("shadow"),
            format!(
                "{}{user}:{hash}:19000:0:99999:7:::\n",
                system_users("/etc/shadow")
            ),
        )
        .unwrap();
        let (child, [port]) =
            programs::start_on_ports("danted", &d.join("danted.log"), |[port]| {
                std::fs::write(
                    d.join("danted.conf"),
                    format!(
                        "logoutput: {dir}/danted.log\ninternal: 127.0.0.1 port = {port}\nexternal: 127.0.0.1\nsocksmethod: username\nuser.privileged: root\nuser.unprivileged: nobody\nclient pass {{ from: 127.0.0.0/8 to: 0.0.0.0/0 }}\nsocks pass {{ from: 127.0.0.0/8 to: 127.0.0.0/8 command: connect }}\n",
                        dir = d.display()
                    ),
                )
                .unwrap();
                let script = format!(
                    "mount --bind {d}/passwd /etc/passwd && mount --bind {d}/shadow /etc/shadow && exec /usr/sbin/danted -f {d}/danted.conf",
                    d = d.display()
                );
                tokio::process::Command::new("unshare")
                    .args(["-m", "sh", "-c", &script])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .kill_on_drop(true)
                    .spawn()
                    .unwrap()
            })
            .await;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        Dante {
            child,
            addr,
            _dir: dir,
        }
    }
}

impl Drop for Dante {
    fn drop(&mut self) {
        terminate(&mut self.child);
    }
}

fn via(mut settings: ncx::config::ClientSettings, proxy: &str) -> ncx::config::ClientSettings {
    settings.proxy = ProxySetting::Url(proxy.parse::<ProxyUrl>().unwrap());
    settings
}

fn proxy_failure(err: ClientError) -> ncx::proxy::ProxyFailure {
    match err {
        ClientError::Proxy(f) => f,
        other => panic!("expected a proxy failure, got {other:?}"),
    }
}

/// One visitor through a client that reaches `server` through `proxy`.
async fn visitor_through(
    pki: &Pki,
    server: SocketAddr,
    proxy: &str,
    proxy_ca: Option<std::path::PathBuf>,
) {
    let echo = echo_service().await;
    let mut cs = via(
        client_settings(server, pki.pinned(), "a", "t", vec![service("e", echo, 0)]),
        proxy,
    );
    cs.proxy_ca = proxy_ca;
    let client = RunningClient::start(cs).await;
    let public = SocketAddr::from(([127, 0, 0, 1], client.port("e")));
    let payload = Rng(21).bytes(200_000);
    assert_eq!(exchange(public, &payload).await.unwrap(), payload);
    client.stop().await;
}

#[tokio::test]
async fn squid_carries_the_tunnel_with_and_without_basic_authentication() {
    if skip_without("/usr/sbin/squid", "squid test") {
        return;
    }
    let pki = Pki::new();
    let server = TestServer::start(&pki, server_settings(vec![identity("a", "t")])).await;

    let open = Squid::start(&[]).await;
    visitor_through(&pki, server.addr, &format!("http://{}", open.addr), None).await;

    let guarded = Squid::start(&[("alice", "s3cret")]).await;
    let url = |userinfo: &str| format!("http://{userinfo}{}", guarded.addr);
    visitor_through(&pki, server.addr, &url("alice:s3cret@"), None).await;
    let cs = |proxy: &str| {
        via(
            client_settings(server.addr, pki.pinned(), "a", "t", vec![]),
            proxy,
        )
    };
    let f = proxy_failure(connect(cs(&url(""))).await.err().unwrap());
    assert!(f.permanent, "{f:?}");
    assert_eq!(
        f.message,
        format!(
            "through the proxy http://{}: it answered 407 Proxy Authentication Required: it wants a user and password (http://USER:PASSWORD@host:port, or proxy_password_file)",
            guarded.addr
        )
    );
    let f = proxy_failure(connect(cs(&url("alice:wrong@"))).await.err().unwrap());
    assert!(f.permanent, "{f:?}");
    assert!(
        f.message
            .ends_with("it answered 407 Proxy Authentication Required: the proxy refused its user and password"),
        "{f:?}"
    );
    assert!(
        !f.message.contains("wrong"),
        "no password in messages: {f:?}"
    );
    // The tunnels went through squid: it logged them.
    assert!(
        guarded.logged("CONNECT 127.0.0.1") >= 2,
        "squid logged the tunnels"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_proxy_that_cannot_reach_the_server_is_retried() {
    if skip_without("/usr/sbin/squid", "squid test") {
        return;
    }
    let pki = Pki::new();
    let squid = Squid::start(&[]).await;
    let closed = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let cs = via(
        client_settings(closed, pki.pinned(), "a", "t", vec![]),
        &format!("http://{}", squid.addr),
    );
    let f = proxy_failure(connect(cs).await.err().unwrap());
    assert!(!f.permanent, "the server may come back: {f:?}");
    assert!(f.message.contains("it answered 503"), "{f:?}");
}

#[tokio::test]
async fn dante_carries_the_tunnel_for_its_user_and_resolves_the_name() {
    if skip_without("/usr/sbin/danted", "dante test") {
        return;
    }
    let pki = Pki::new();
    let server = TestServer::start(&pki, server_settings(vec![identity("a", "t")])).await;
    let dante = Dante::start("bob", "hunter2").await;
    let echo = echo_service().await;
    // By name: the SOCKS request carries "localhost" and dante resolves it.
    let mut cs = via(
        client_settings(
            server.addr,
            pki.pinned(),
            "a",
            "t",
            vec![service("e", echo, 0)],
        ),
        &format!("socks5://bob:hunter2@{}", dante.addr),
    );
    cs.server = format!("localhost:{}", server.addr.port());
    let client = RunningClient::start(cs).await;
    let public = SocketAddr::from(([127, 0, 0, 1], client.port("e")));
    let payload = Rng(22).bytes(200_000);
    assert_eq!(exchange(public, &payload).await.unwrap(), payload);
    client.stop().await;

    let cs = |proxy: String| {
        via(
            client_settings(server.addr, pki.pinned(), "a", "t", vec![]),
            &proxy,
        )
    };
    let f = proxy_failure(
        connect(cs(format!("socks5://bob:nope@{}", dante.addr)))
            .await
            .err()
            .unwrap(),
    );
    assert!(f.permanent, "{f:?}");
    assert_eq!(
        f.message,
        format!(
            "through the proxy socks5://bob@{}: it refused the user and password",
            dante.addr
        )
    );
    let f = proxy_failure(
        connect(cs(format!("socks5://{}", dante.addr)))
            .await
            .err()
            .unwrap(),
    );
    assert!(f.permanent, "{f:?}");
    assert!(
        f.message.ends_with("(it may want a user and password)"),
        "{f:?}"
    );
    server.stop().await;
}

/// A TLS front for `behind` (an HTTP proxy), with the test PKI's certificate for localhost:
/// what an `https://` proxy is to a client.
async fn tls_front(pki: &Pki, behind: SocketAddr) -> SocketAddr {
    let config = rustls::ServerConfig::builder_with_provider(ncx::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(pki.server.chain.clone(), pki.server.key.clone_key())
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut plain) = tokio::net::TcpStream::connect(behind).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn an_https_proxy_is_reached_over_tls_checked_against_its_ca() {
    if skip_without("/usr/sbin/squid", "squid test") {
        return;
    }
    let pki = Pki::new();
    let server = TestServer::start(&pki, server_settings(vec![identity("a", "t")])).await;
    let squid = Squid::start(&[("alice", "s3cret")]).await;
    let front = tls_front(&pki, squid.addr).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = pki.write_ca(dir.path());
    let url = format!("https://alice:s3cret@localhost:{}", front.port());
    visitor_through(&pki, server.addr, &url, Some(ca)).await;
    // Without the proxy's CA the TLS to the proxy fails.
    let cs = via(
        client_settings(server.addr, pki.pinned(), "a", "t", vec![]),
        &url,
    );
    let f = proxy_failure(connect(cs).await.err().unwrap());
    assert!(f.message.contains("TLS to the proxy"), "{f:?}");
    server.stop().await;
}

#[tokio::test]
async fn a_client_process_follows_https_proxy_and_no_proxy() {
    if skip_without("/usr/sbin/squid", "squid test") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (mut server, addr) = server_process(dir.path(), "127.0.0.1:0".parse().unwrap()).await;
    let fp = fingerprint(dir.path());
    let squid = Squid::start(&[]).await;
    let echo = echo_service().await;
    let client = |env: &[(&str, String)]| {
        let mut c = ncx_process();
        c.args(["client", "--server", &addr.to_string(), "--identity", "a"])
            .args(["--server-fingerprint", &fp, "--service"])
            .arg(format!("e={echo}@0"))
            .env("NCX_TOKEN", "t");
        for (k, v) in env {
            c.env(k, v);
        }
        c.spawn().unwrap()
    };
    let mut through = client(&[("HTTPS_PROXY", format!("http://{}", squid.addr))]);
    let mut log = LogLines::new(&mut through);
    let line = log.wait_for("reaching the server through a proxy").await;
    assert!(
        line.contains(&format!("proxy=http://{}", squid.addr))
            && line.contains("from=the environment variable HTTPS_PROXY"),
        "{line}"
    );
    let line = log.wait_for("service available").await;
    let public: SocketAddr = log_field(&line, "public").parse().unwrap();
    assert_eq!(exchange(public, b"via squid").await.unwrap(), b"via squid");
    through.kill().await.unwrap();
    // NO_PROXY names the server: the proxy (here one that does not exist) is not used.
    let dead = format!("http://127.0.0.1:{}", free_port());
    let mut direct = client(&[("https_proxy", dead), ("NO_PROXY", "127.0.0.1".into())]);
    let mut log = LogLines::new(&mut direct);
    let line = log.wait_for("service available").await;
    assert!(!log.seen("reaching the server through a proxy"));
    let public: SocketAddr = log_field(&line, "public").parse().unwrap();
    assert_eq!(exchange(public, b"direct").await.unwrap(), b"direct");
    direct.kill().await.unwrap();
    server.kill().await.unwrap();
}

/// The WebSocket transport through the company proxy too: squid opens the CONNECT tunnel, the
/// WebSocket upgrade and ncx's TLS run inside it.
#[tokio::test]
async fn a_websocket_session_goes_through_squid() {
    if skip_without("/usr/sbin/squid", "squid websocket test") {
        return;
    }
    let pki = Pki::new();
    let mut ss = server_settings(vec![identity("a", "t")]);
    ss.websocket_path = Some("/ncx".into());
    let server = TestServer::start(&pki, ss).await;
    let squid = Squid::start(&[]).await;
    let echo = echo_service().await;
    let cs = via(
        client_settings(
            server.addr,
            pki.pinned(),
            "a",
            "t",
            vec![service("e", echo, 0)],
        ),
        &format!("http://{}", squid.addr),
    );
    let cs = over_websocket(cs, &format!("ws://{}/ncx", server.addr), None);
    let client = RunningClient::start(cs).await;
    let public = SocketAddr::from(([127, 0, 0, 1], client.port("e")));
    let payload = Rng(22).bytes(500_000);
    assert_eq!(exchange(public, &payload).await.unwrap(), payload);
    client.stop().await;
    // squid logs a tunnel once it has closed.
    let start = std::time::Instant::now();
    while squid.logged("CONNECT 127.0.0.1") == 0 {
        assert!(start.elapsed() < WAIT, "squid logged no tunnel");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    server.stop().await;
}
