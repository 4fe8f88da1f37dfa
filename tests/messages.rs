//! What a user reads when the client reaches the wrong thing: plain words naming what to change,
//! never a Rust type name (first-hour issue). Each case is a real server of the wrong kind.

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
