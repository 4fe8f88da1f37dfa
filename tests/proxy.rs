//! PROXY protocol v1 and v2: the local service learns the visitor's real address.

mod common;

use std::net::SocketAddr;

use common::*;
use ncx_proto::{ProxyVersion, PROXY_V2_SIGNATURE};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// A service that reads a PROXY header, sends it back as the first line (v1 text, or v2 bytes in
/// hex), then echoes.
async fn header_reporting_service() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut r = BufReader::new(s);
                let mut first = [0u8; 12];
                r.read_exact(&mut first[..5]).await.unwrap();
                let report = if &first[..5] == b"PROXY" {
                    let mut line = String::from("PROXY");
                    r.read_line(&mut line).await.unwrap();
                    line
                } else {
                    r.read_exact(&mut first[5..]).await.unwrap();
                    assert_eq!(first, PROXY_V2_SIGNATURE);
                    let mut head = [0u8; 4];
                    r.read_exact(&mut head).await.unwrap();
                    let len = u16::from_be_bytes([head[2], head[3]]) as usize;
                    let mut rest = vec![0u8; len];
                    r.read_exact(&mut rest).await.unwrap();
                    let hex: String = head
                        .iter()
                        .chain(&rest)
                        .map(|b| format!("{b:02x}"))
                        .collect();
                    format!("{hex}\n")
                };
                r.get_mut().write_all(report.as_bytes()).await.unwrap();
                let (mut rd, mut wr) = tokio::io::split(r);
                let _ = tokio::io::copy(&mut rd, &mut wr).await;
                let _ = wr.shutdown().await;
            });
        }
    });
    addr
}

async fn first_line(public: SocketAddr) -> (String, SocketAddr) {
    let s = TcpStream::connect(public).await.unwrap();
    let me = s.local_addr().unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    tokio::time::timeout(WAIT, r.read_line(&mut line))
        .await
        .unwrap()
        .unwrap();
    // The visitor's own bytes still pass after the header.
    r.get_mut().write_all(b"after\n").await.unwrap();
    let mut echoed = String::new();
    r.read_line(&mut echoed).await.unwrap();
    assert_eq!(echoed, "after\n");
    (line, me)
}

#[tokio::test]
async fn v1_and_v2_headers_carry_the_visitor_and_public_addresses() {
    let pki = Pki::new();
    let server = TestServer::start(&pki, server_settings(vec![identity("a", "t")])).await;
    let svc = header_reporting_service().await;
    let mut v1 = service("v1", svc, 0);
    v1.proxy_protocol = Some(ProxyVersion::V1);
    let mut v2 = service("v2", svc, 0);
    v2.proxy_protocol = Some(ProxyVersion::V2);
    let client = RunningClient::start(client_settings(
        server.addr,
        pki.pinned(),
        "a",
        "t",
        vec![v1, v2],
    ))
    .await;

    let port1 = client.port("v1");
    let (line, me) = first_line(([127, 0, 0, 1], port1).into()).await;
    assert_eq!(
        line,
        format!("PROXY TCP4 127.0.0.1 127.0.0.1 {} {port1}\r\n", me.port())
    );

    let port2 = client.port("v2");
    let (line, me) = first_line(([127, 0, 0, 1], port2).into()).await;
    // ver/cmd 0x21, TCP over IPv4 0x11, length 12, 127.0.0.1 twice, then the ports.
    let mut want = String::from("2111000c");
    want.push_str("7f0000017f000001");
    want.push_str(&format!("{:04x}{:04x}\n", me.port(), port2));
    assert_eq!(line, want);
    client.stop().await;
    server.stop().await;
}

#[test]
fn proxy_protocol_is_chosen_per_service_in_the_config() {
    let text = format!(
        "server = \"h:1\"\nidentity = \"a\"\ntoken = \"t\"\nserver_fingerprint = \"sha256:{}\"\n[[services]]\nname = \"rdp\"\nlocal = \"127.0.0.1:3389\"\nproxy_protocol = \"v2\"\n",
        "ab".repeat(32)
    );
    let c = ncx::config::ClientSettings::from_source(
        &ncx::config::Source::text("client.toml", &text),
        ncx::config::ClientFile::default(),
        None,
    )
    .unwrap();
    assert_eq!(c.services[0].proxy_protocol, Some(ProxyVersion::V2));
    let e = ncx::config::ClientSettings::from_source(
        &ncx::config::Source::text("client.toml", &text.replace("\"v2\"", "\"v3\"")),
        ncx::config::ClientFile::default(),
        None,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.starts_with("client.toml:8:") && e.contains("proxy_protocol"),
        "{e}"
    );
}

#[tokio::test]
async fn bytes_a_visitor_sends_at_once_follow_the_proxy_header() {
    // The server forwards a visitor's first bytes before the client has connected to its service;
    // the client must still write the PROXY header first.
    let pki = Pki::new();
    let server = TestServer::start(&pki, server_settings(vec![identity("a", "t")])).await;
    let svc = header_reporting_service().await;
    let mut v1 = service("v1", svc, 0);
    v1.proxy_protocol = Some(ProxyVersion::V1);
    let client = RunningClient::start(client_settings(
        server.addr,
        pki.pinned(),
        "a",
        "t",
        vec![v1],
    ))
    .await;
    let port = client.port("v1");
    let s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let me = s.local_addr().unwrap();
    let mut r = BufReader::new(s);
    r.get_mut().write_all(b"early bytes\n").await.unwrap();
    let mut line = String::new();
    tokio::time::timeout(WAIT, r.read_line(&mut line))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        line,
        format!("PROXY TCP4 127.0.0.1 127.0.0.1 {} {port}\r\n", me.port())
    );
    let mut echoed = String::new();
    r.read_line(&mut echoed).await.unwrap();
    assert_eq!(echoed, "early bytes\n");
    drop(r);
    client.stop().await;
    server.stop().await;
}
