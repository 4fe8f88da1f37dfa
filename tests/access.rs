//! Access rules on public services: CIDR allow and deny lists, enforced by the server before
//! anything of a refused visitor reaches the client.

mod common;

use std::sync::atomic::Ordering;

use common::*;
use ncx::config::{ClientFile, ClientSettings, Source};
use ncx_proto::AccessRules;

fn rules(allow: &[&str], deny: &[&str]) -> AccessRules {
    AccessRules {
        allow: allow.iter().map(|s| s.parse().unwrap()).collect(),
        deny: deny.iter().map(|s| s.parse().unwrap()).collect(),
    }
}

#[tokio::test]
async fn refused_visitors_are_closed_before_anything_reaches_the_client() {
    let pki = Pki::new();
    let server = TestServer::start(&pki, server_settings(vec![identity("a", "t")])).await;
    let (svc, accepted) = counting_echo().await;
    let mut only_elsewhere = service("only-elsewhere", svc, 0);
    only_elsewhere.access = rules(&["198.51.100.0/24", "2001:db8::/32"], &[]);
    let mut denied = service("denied", svc, 0);
    denied.access = rules(&[], &["127.0.0.0/8"]);
    let mut deny_wins = service("deny-wins", svc, 0);
    deny_wins.access = rules(&["127.0.0.0/8"], &["127.0.0.1/32"]);
    let mut allowed = service("allowed", svc, 0);
    allowed.access = rules(&["127.0.0.0/8"], &["127.0.0.2/32"]);
    let client = RunningClient::start(client_settings(
        server.addr,
        pki.pinned(),
        "a",
        "t",
        vec![only_elsewhere, denied, deny_wins, allowed],
    ))
    .await;
    for name in ["only-elsewhere", "denied", "deny-wins"] {
        let public = ([127, 0, 0, 1], client.port(name)).into();
        let err = exchange(public, b"let me in").await.expect_err(name);
        assert_eq!(
            err.kind(),
            std::io::ErrorKind::ConnectionReset,
            "{name}: {err}"
        );
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        0,
        "no refused visitor reached the service"
    );
    let public = ([127, 0, 0, 1], client.port("allowed")).into();
    assert_eq!(exchange(public, b"welcome").await.unwrap(), b"welcome");
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    client.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn ipv4_visitors_on_a_dual_stack_port_match_ipv4_rules() {
    let pki = Pki::new();
    let mut policy = identity("a", "t");
    policy.bind = "::".parse().unwrap();
    let server = TestServer::start(&pki, server_settings(vec![policy])).await;
    let (svc, _) = counting_echo().await;
    let mut s = service("mapped", svc, 0);
    // Visitors of 127.0.0.1 arrive as ::ffff:127.0.0.1 on a socket bound to [::].
    s.access = rules(&["127.0.0.0/8"], &[]);
    let mut d = service("mapped-denied", svc, 0);
    d.access = rules(&[], &["127.0.0.0/8"]);
    let client = RunningClient::start(client_settings(
        server.addr,
        pki.pinned(),
        "a",
        "t",
        vec![s, d],
    ))
    .await;
    let public = ([127, 0, 0, 1], client.port("mapped")).into();
    assert_eq!(exchange(public, b"v4 via v6").await.unwrap(), b"v4 via v6");
    let public = ([127, 0, 0, 1], client.port("mapped-denied")).into();
    assert!(exchange(public, b"x").await.is_err());
    client.stop().await;
    server.stop().await;
}

#[test]
fn access_rules_in_the_client_config_are_parsed_and_located() {
    let base = format!(
        "server = \"h:1\"\nidentity = \"a\"\ntoken = \"t\"\nserver_fingerprint = \"sha256:{}\"\n[[services]]\nname = \"rdp\"\nlocal = \"127.0.0.1:3389\"\n",
        "ab".repeat(32)
    );
    let ok =
        format!("{base}allow = [\"203.0.113.0/24\", \"2001:db8::1\"]\ndeny = [\"203.0.113.7\"]\n");
    let c = ClientSettings::from_source(
        &Source::text("client.toml", &ok),
        ClientFile::default(),
        None,
    )
    .unwrap();
    let access = &c.services[0].access;
    assert_eq!(access.allow.len(), 2);
    assert_eq!(access.deny[0].to_string(), "203.0.113.7/32");
    let bad = format!("{base}allow = [\"203.0.113.0/33\"]\n");
    let e = ClientSettings::from_source(
        &Source::text("client.toml", &bad),
        ClientFile::default(),
        None,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.starts_with("client.toml:8:") && e.contains("allow"),
        "{e}"
    );
}
