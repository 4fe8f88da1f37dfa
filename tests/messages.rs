//! What a user reads when something is wrong: plain words naming what to change, never a Rust type
//! name (first-hour issue). The client cases meet real servers of the wrong kind, or a real ncx
//! server that refuses them; every message the README's "Messages" section shows is produced here
//! and compared with it verbatim.

mod common;

use std::sync::Arc;

use common::*;
use tokio::net::TcpListener;

async fn connect_error(settings: ncx::config::ClientSettings) -> String {
    match connect(settings).await {
        Ok(_) => panic!("the client must not get in"),
        Err(e) => e.to_string(),
    }
}

#[tokio::test]
async fn a_port_that_is_not_tls_is_named_as_such() {
    // At 8354efb: "received corrupt message of type InvalidContentType".
    let pki = Pki::new();
    let banner = banner_service(b"SSH-2.0-OpenSSH_9.2\r\n").await;
    let text = connect_error(client_settings(banner, pki.pinned(), "a", "t", vec![])).await;
    assert_eq!(
        text,
        "the server did not answer with TLS: is the port right? (something else, not ncx, listens there)"
    );
}

#[tokio::test]
async fn a_tls_server_that_is_not_ncx_is_not_called_a_version_mismatch() {
    // At 8354efb: "protocol version mismatch: upgrade the older side".
    let pki = Pki::new();
    let cfg = rustls::ServerConfig::builder_with_provider(ncx::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(pki.server.chain.clone(), pki.server.key.clone_key())
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(tcp).await {
                    let mut buf = [0u8; 64];
                    let _ = tokio::io::AsyncReadExt::read(&mut tls, &mut buf).await;
                }
            });
        }
    });
    let text = connect_error(client_settings(addr, pki.pinned(), "a", "t", vec![])).await;
    assert_eq!(
        text,
        "the server speaks TLS but is not an ncx server (it agreed to no application protocol): is this the ncx server's port?"
    );
}

#[tokio::test]
async fn a_certificate_for_other_names_names_them_and_the_fix() {
    // At 8354efb: "NotValidForNameContext { expected: DnsName(\"wrong.example\"), presented: [...] }".
    let pki = Pki::new();
    let server = TestServer::start(&pki, server_settings(vec![identity("a", "t")])).await;
    let mut cs = client_settings(server.addr, pki.ca_trust(), "a", "t", vec![]);
    cs.server_name = rustls::pki_types::ServerName::try_from("wrong.example")
        .unwrap()
        .to_owned();
    let text = connect_error(cs).await;
    assert_eq!(
        text,
        "server certificate refused: it is for localhost, 127.0.0.1, not for wrong.example; connect to one of those names, or set --server-name (`server_name`) to one of them"
    );
    server.stop().await;
}

/// The messages the README shows, one per line of the `text` block under "### Messages".
fn readme_messages() -> Vec<String> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = readme
        .split_once("\n### Messages\n")
        .expect("README has a Messages section")
        .1;
    let block = section
        .split_once("```text\n")
        .expect("the section has a text block")
        .1
        .split_once("\n```")
        .expect("the block ends")
        .0;
    block.lines().map(str::to_owned).collect()
}

fn server_config_error(text: &str) -> String {
    ncx::config::ServerSettings::from_source(&ncx::config::Source::text("server.toml", text))
        .expect_err("the configuration is wrong")
        .to_string()
}

fn client_config_error(text: &str) -> String {
    ncx::config::ClientSettings::from_source(
        &ncx::config::Source::text("client.toml", text),
        Default::default(),
        None,
    )
    .expect_err("the configuration is wrong")
    .to_string()
}

/// Every message the README shows, as ncx produces it (what it prints after `error: `).
#[tokio::test]
async fn the_readme_shows_the_messages_as_ncx_prints_them() {
    let mut produced = Vec::new();
    // Configuration.
    produced.push(server_config_error(
        "[[identities]]\nname = \"office\"\ntoken = \"t\"\nports = [\"3000-2000\"]\n",
    ));
    produced.push(server_config_error(
        "[identities]\nname = \"office\"\ntoken = \"t\"\n",
    ));
    assert!(!std::path::Path::new("office.token").exists());
    produced.push(client_config_error(
        "server = \"tunnel.example.com:7835\"\nidentity = \"office\"\ntoken_file = \"office.token\"\n",
    ));
    // The wrong thing at the server's address.
    let pki = Pki::new();
    let banner = banner_service(b"SSH-2.0-OpenSSH_9.2\r\n").await;
    produced.push(connect_error(client_settings(banner, pki.pinned(), "a", "t", vec![])).await);
    let ca_dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(
        &pki,
        ncx::config::ServerSettings {
            client_ca: Some(pki.write_ca(ca_dir.path())),
            ..server_settings(vec![identity_ports(
                "office",
                "right",
                vec![ncx::config::PortRange(20000..=20099)],
            )])
        },
    )
    .await;
    let mut wrong_name = client_settings(server.addr, pki.ca_trust(), "office", "right", vec![]);
    wrong_name.server_name = rustls::pki_types::ServerName::try_from("wrong.example")
        .unwrap()
        .to_owned();
    produced.push(connect_error(wrong_name).await);
    // Refusals by a real server.
    let svc = echo_service().await;
    let from_file = |token: &str, remote_port: u16| {
        let text = format!(
            "server = \"{}\"\nidentity = \"office\"\ntoken = \"{token}\"\ninsecure_skip_verify = true\n\n[[services]]\nname = \"rdp\"\nlocal = \"{svc}\"\nremote_port = {remote_port}\n",
            server.addr
        );
        let mut s = ncx::config::ClientSettings::from_source(
            &ncx::config::Source::text("client.toml", &text),
            Default::default(),
            None,
        )
        .unwrap();
        s.trust = pki.pinned();
        s
    };
    produced.push(connect_error(from_file("wrong", 20000)).await);
    produced.push(
        connect_error(client_settings(
            server.addr,
            pki.pinned(),
            "ofice",
            "right",
            vec![],
        ))
        .await,
    );
    let stranger = Pki::new();
    let mut bad_cert = from_file("right", 20000);
    bad_cert.client_cert = Some(stranger.client_cert("office"));
    produced.push(connect_error(bad_cert).await);
    produced.push(connect_error(from_file("right", 3389)).await);
    server.stop().await;

    let shown = readme_messages();
    let missing: Vec<_> = produced.iter().filter(|m| !shown.contains(m)).collect();
    let stale: Vec<_> = shown.iter().filter(|m| !produced.contains(m)).collect();
    assert!(
        missing.is_empty() && stale.is_empty(),
        "README Messages differ from what ncx prints.\nprinted but not shown:\n{missing:#?}\nshown but not printed:\n{stale:#?}"
    );
}

/// The CLI prints a message after `error: `, as the README says, and exits non-zero.
#[tokio::test]
async fn the_cli_prints_a_message_after_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("server.toml"),
        "[identities]\nname = \"office\"\ntoken = \"t\"\n",
    )
    .unwrap();
    let out = ncx_process()
        .args(["server", "--config", "server.toml"])
        .current_dir(dir.path())
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let expected = format!(
        "error: {}\n",
        server_config_error("[identities]\nname = \"office\"\ntoken = \"t\"\n")
    );
    assert_eq!(String::from_utf8_lossy(&out.stderr), expected);
    assert!(readme_messages().contains(&expected.trim_end()["error: ".len()..].to_owned()));
}
