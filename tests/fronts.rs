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

use common::programs::{skip_without, start_on_ports, terminate};
use common::*;
use ncx::client::ClientError;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const HAPROXY: &str = "/usr/sbin/haproxy";
const NGINX: &str = "/usr/sbin/nginx";
const CURL: &str = "/usr/bin/curl";

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
        let path = dir.path().join("haproxy.cfg");
        // haproxy -db writes its errors to stderr: into a file here, for start_on_ports to show.
        let log = dir.path().join("haproxy.log");
        let (child, [p2, p1]) = start_on_ports("haproxy", &log, |[p2, p1]| {
            let config = format!(
                "global\n  maxconn 200\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n\
                 frontend v2\n  bind 127.0.0.1:{p2}\n  default_backend v2\n\
                 frontend v1\n  bind 127.0.0.1:{p1}\n  default_backend v1\n\
                 backend v2\n  server ncx {server} send-proxy-v2 source 127.0.0.3 check check-send-proxy inter 500ms\n\
                 backend v1\n  server ncx {server} send-proxy source 127.0.0.3\n"
            );
            std::fs::write(&path, config).unwrap();
            tokio::process::Command::new(HAPROXY)
                .arg("-db")
                .arg("-f")
                .arg(&path)
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap())
                .kill_on_drop(true)
                .spawn()
                .unwrap()
        })
        .await;
        let (v2, v1) = (
            SocketAddr::from(([127, 0, 0, 1], p2)),
            SocketAddr::from(([127, 0, 0, 1], p1)),
        );
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

/// nginx on a loopback port running one of the README's site files from `examples/`, with this
/// test's port, certificate (its own, from `pki`'s CA) and directory put in for the example's:
/// the website behind a shared port, or the TLS-terminating reverse proxy in front of the server.
struct Website {
    child: tokio::process::Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Website {
    /// examples/website/nginx-site.conf, serving `page` as `/index.html`.
    async fn start(pki: &Pki, page: &str) -> Website {
        Website::run(
            pki,
            "website",
            "127.0.0.1:8443",
            "www.example.com",
            |site, d| {
                std::fs::create_dir(d.join("www")).unwrap();
                std::fs::write(d.join("www/index.html"), page).unwrap();
                site.replace("/var/www/html", &format!("{}/www", d.display()))
            },
        )
        .await
    }

    /// examples/websocket/nginx-site.conf, forwarding WebSocket upgrades of /ncx to `server`.
    async fn in_front_of(pki: &Pki, server: SocketAddr) -> Website {
        Website::run(pki, "websocket", "443", "tunnel.example.com", |site, _| {
            site.replace("http://127.0.0.1:7835", &format!("http://{server}"))
        })
        .await
    }

    async fn run(
        pki: &Pki,
        example: &str,
        listen: &str,
        name: &str,
        adapt: impl FnOnce(String, &std::path::Path) -> String,
    ) -> Website {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let (crt, key) = pki.write_other_server(d, "site");
        pki.write_ca(d);
        let site = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join(format!("examples/{example}/nginx-site.conf")),
        )
        .unwrap()
        .replace(&format!("server_name {name};"), "server_name localhost;")
        .replace(
            &format!("/etc/letsencrypt/live/{name}/fullchain.pem"),
            &crt.display().to_string(),
        )
        .replace(
            &format!("/etc/letsencrypt/live/{name}/privkey.pem"),
            &key.display().to_string(),
        );
        let site = adapt(site, d);
        let (child, [port]) = start_on_ports("nginx", &d.join("error.log"), |[port]| {
            let site = site.replace(
                &format!("listen {listen} ssl;"),
                &format!("listen 127.0.0.1:{port} ssl;"),
            );
            let config = format!(
                "daemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\nevents {{}}\nhttp {{\n  access_log {d}/access.log;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n{site}}}\n",
                d = d.display(),
            );
            std::fs::write(d.join("nginx.conf"), config).unwrap();
            tokio::process::Command::new(NGINX)
                .arg("-p")
                .arg(d)
                .arg("-c")
                .arg(d.join("nginx.conf"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .unwrap()
        })
        .await;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        Website { child, addr, dir }
    }

    /// `curl` of `url` with this website's CA, `localhost` pinned to 127.0.0.1: its output
    /// (body, then the status code on the last line).
    async fn curl(&self, url: &str, port: u16) -> String {
        let out = tokio::process::Command::new(CURL)
            .args(["-sS", "--max-time", "10", "-w", "\n%{http_code}"])
            .arg("--cacert")
            .arg(self.dir.path().join("ca.crt"))
            .args(["--resolve", &format!("localhost:{port}:127.0.0.1"), url])
            .output()
            .await
            .unwrap();
        succeeded(&out, &format!("curl {url}"))
    }
}

impl Drop for Website {
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

/// The HAProxy configurations in `examples/` are ones HAProxy accepts, and the README shows it and
/// the nginx site (which the website test runs) as they are in the files.
#[test]
fn the_example_haproxy_configuration_is_valid_and_in_the_readme() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    for shown in [
        "examples/load-balancer/haproxy.cfg",
        "examples/high-availability/haproxy.cfg",
        "examples/website/nginx-site.conf",
        "examples/websocket/nginx-site.conf",
    ] {
        let text = std::fs::read_to_string(root.join(shown)).unwrap();
        assert!(
            readme.contains(&format!("```\n{text}```")),
            "README.md shows {shown} verbatim"
        );
    }
    if skip_without(HAPROXY, false, "the_example_haproxy_configuration_is_valid") {
        return;
    }
    for example in [
        "examples/load-balancer/haproxy.cfg",
        "examples/high-availability/haproxy.cfg",
    ] {
        let out = std::process::Command::new(HAPROXY)
            .arg("-c")
            .arg("-f")
            .arg(root.join(example))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "haproxy -c {example}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Port 443's situation: the server's listener shared with a website. curl gets nginx's page over
/// TLS with nginx's own certificate (so the ClientHello reached nginx untouched), plain HTTP on
/// the same port reaches nginx too, and an ncx client on the same port gets its tunnel.
#[tokio::test]
async fn one_port_serves_the_website_through_nginx_and_the_tunnel() {
    let test = "one_port_serves_the_website_through_nginx_and_the_tunnel";
    if skip_without(NGINX, false, test) || skip_without(CURL, false, test) {
        return;
    }
    let pki = Pki::new();
    let page = "<h1>the real website</h1>\n";
    let site = Website::start(&pki, page).await;
    let mut ss = server_settings(vec![identity("a", "t")]);
    ss.fallback = Some(site.addr.to_string());
    let server = TestServer::start(&pki, ss).await;
    let port = server.addr.port();
    let got = site
        .curl(&format!("https://localhost:{port}/index.html"), port)
        .await;
    assert_eq!(got, format!("{page}\n200"));
    // Plain HTTP is not ncx either: nginx answers it (with its complaint about the port).
    let got = site.curl(&format!("http://localhost:{port}/"), port).await;
    assert!(
        got.ends_with("\n400") && got.contains("HTTPS port"),
        "{got}"
    );
    let echo = echo_service().await;
    let client = RunningClient::start(client_settings(
        server.addr,
        pki.pinned(),
        "a",
        "t",
        vec![service("e", echo, 0)],
    ))
    .await;
    let public = SocketAddr::from(([127, 0, 0, 1], client.port("e")));
    let payload = Rng(3).bytes(300_000);
    assert_eq!(exchange(public, &payload).await.unwrap(), payload);
    // The website still works while the tunnel is up.
    let got = site
        .curl(&format!("https://localhost:{port}/index.html"), port)
        .await;
    assert_eq!(got, format!("{page}\n200"));
    client.stop().await;
    server.stop().await;
}

/// A website that is down costs the tunnel nothing: the browser's connection is closed, and ncx
/// clients on the same port are served. At `max_fallback_connections`, more website connections
/// are closed while the open ones keep going.
#[tokio::test]
async fn a_website_that_is_down_or_full_does_not_touch_the_tunnel() {
    let pki = Pki::new();
    let mut ss = server_settings(vec![identity("a", "t")]);
    ss.fallback = Some(SocketAddr::from(([127, 0, 0, 1], free_port())).to_string());
    let server = TestServer::start(&pki, ss).await;
    let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    assert!(closed_by_server(&mut tcp).await);
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

    // One website connection at most: an echo service stands in for the website.
    let mut ss = server_settings(vec![identity("a", "t")]);
    ss.fallback = Some(echo.to_string());
    ss.max_fallback_connections = 1;
    let server = TestServer::start(&pki, ss).await;
    let mut first = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    first.write_all(b"GET / HTTP/1.0\r\n").await.unwrap();
    let mut back = [0u8; 16];
    first.read_exact(&mut back).await.unwrap();
    assert_eq!(
        &back, b"GET / HTTP/1.0\r\n",
        "the website got the bytes untouched"
    );
    let mut second = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    second.write_all(b"GET / HTTP/1.0\r\n").await.unwrap();
    assert!(closed_by_server(&mut second).await);
    first.write_all(b"more").await.unwrap();
    let mut more = [0u8; 4];
    first.read_exact(&mut more).await.unwrap();
    assert_eq!(&more, b"more");
    drop(first);
    server.stop().await;
}

/// The WebSocket transport behind the reverse proxy people have: nginx terminates the outer TLS
/// (its own certificate, checked against `websocket_ca`) and forwards upgrades of /ncx to the
/// server, running the README's site file. ncx's own TLS runs inside, pinned as usual; a
/// megabyte goes through a visitor both ways, and nginx logged the upgrade.
#[tokio::test]
async fn nginx_terminates_tls_and_forwards_the_websocket_to_the_server() {
    let test = "nginx_terminates_tls_and_forwards_the_websocket_to_the_server";
    if skip_without(NGINX, false, test) {
        return;
    }
    let pki = Pki::new();
    let mut ss = server_settings(vec![identity("a", "t")]);
    ss.websocket_path = Some("/ncx".into());
    let server = TestServer::start(&pki, ss).await;
    let nginx = Website::in_front_of(&pki, server.addr).await;
    let echo = echo_service().await;
    let port = nginx.addr.port();
    let cs = client_settings(
        nginx.addr,
        pki.pinned(),
        "a",
        "t",
        vec![service("e", echo, 0)],
    );
    let cs = over_websocket(
        cs,
        &format!("wss://localhost:{port}/ncx"),
        Some(nginx.dir.path().join("ca.crt")),
    );
    let client = RunningClient::start(cs).await;
    let public = SocketAddr::from(([127, 0, 0, 1], client.port("e")));
    let payload = Rng(4).bytes(1_000_000);
    assert_eq!(exchange(public, &payload).await.unwrap(), payload);
    client.stop().await;
    // nginx writes the request's line when the WebSocket ends.
    let log = nginx.dir.path().join("access.log");
    let start = std::time::Instant::now();
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("\"GET /ncx HTTP/1.1\" 101") {
            break;
        }
        assert!(
            start.elapsed() < WAIT,
            "nginx logged no upgrade of /ncx: {text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.stop().await;
}

/// One attempt, as a balancer at [`BALANCER`] relaying `client`: the PROXY v2 header, a WebSocket
/// upgrade of /ncx, ncx's TLS inside it and a hello of identity `a` with `token`. Returns the
/// server's answer on the control stream.
async fn ws_hello_via_balancer(
    pki: &Pki,
    server: SocketAddr,
    client: &str,
    token: &str,
) -> ncx_proto::Message {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((BALANCER, 0))).unwrap();
    let mut tcp = socket.connect(server).await.unwrap();
    let header = ncx_proto::proxy_header(
        ncx_proto::ProxyVersion::V2,
        client.parse().unwrap(),
        "192.0.2.1:443".parse().unwrap(),
    );
    tcp.write_all(&header).await.unwrap();
    let ws = ncx::websocket::handshake::open(tcp, "tunnel.example.com", "/ncx")
        .await
        .unwrap();
    let config = ncx::tls::client_config(&pki.pinned(), None).unwrap();
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").unwrap(),
            ws,
        )
        .await
        .unwrap();
    let exported = ncx::auth::export(tls.get_ref().1).unwrap();
    let mut peer = common::raw_yamux::RawPeer::start(tls);
    peer.open(1, &hello("a", token, &exported)).await.unwrap();
    peer.message_on(1, WAIT).await
}

/// A balancer's PROXY header is read before a WebSocket upgrade too: the real client behind it is
/// the one whose failed logins are counted, so it gets blocked while another client through the
/// same balancer still gets its own answer.
#[tokio::test]
async fn a_proxy_header_before_a_websocket_names_the_client_to_the_guard() {
    let pki = Pki::new();
    let mut ss = behind_balancer(server_settings(vec![identity("a", "t")]));
    ss.websocket_path = Some("/ncx".into());
    ss.auth_failures_before_block = 2;
    ss.auth_block = Duration::from_secs(600);
    let server = TestServer::start(&pki, ss).await;
    let code = |m: ncx_proto::Message| match m {
        ncx_proto::Message::Error { code, .. } => code,
        other => panic!("expected a refusal, got {other:?}"),
    };
    for _ in 0..2 {
        let m = ws_hello_via_balancer(&pki, server.addr, "198.51.100.7:5000", "wrong").await;
        assert_eq!(code(m), ncx_proto::ErrorCode::BadToken);
    }
    let m = ws_hello_via_balancer(&pki, server.addr, "198.51.100.7:5001", "t").await;
    assert_eq!(
        code(m),
        ncx_proto::ErrorCode::LimitReached,
        "the client is blocked"
    );
    let m = ws_hello_via_balancer(&pki, server.addr, "198.51.100.8:5000", "t").await;
    assert!(
        matches!(m, ncx_proto::Message::Welcome { .. }),
        "another client behind the same balancer gets in: {m:?}"
    );
    server.stop().await;
}
