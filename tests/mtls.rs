//! Mutual TLS: client certificates from the client CA, the certificate's common name being the
//! identity; per identity a token, a certificate, or both.

mod common;

use std::time::Duration;

use common::*;
use ncx::auth::Token;
use ncx::client::ClientError;
use ncx::config::{ClientAuth, IdentityPolicy, PortRange, ServerSettings, VisitSpec};
use ncx_proto::ErrorCode;

fn policy(n: &str, auth: ClientAuth) -> IdentityPolicy {
    IdentityPolicy {
        auth,
        ..identity_ports(n, "unused", vec![PortRange(1024..=65535)])
    }
}

/// A server whose client CA is `pki`'s CA, with a certificate-only, a both and a token-only identity.
fn settings(pki: &Pki, dir: &tempfile::TempDir) -> ServerSettings {
    let mut s = server_settings(vec![
        policy("cert-only", ClientAuth::Certificate),
        policy("both", ClientAuth::Both(Token::new("both-token"))),
        policy("token-only", ClientAuth::Token(Token::new("plain-token"))),
    ]);
    s.client_ca = Some(pki.write_ca(dir.path()));
    s
}

fn with_cert(
    mut c: ncx::config::ClientSettings,
    cert: ncx::tls::ClientCertificate,
    token: bool,
) -> ncx::config::ClientSettings {
    c.client_cert = Some(cert);
    if !token {
        c.token = None;
    }
    c
}

async fn refusal(settings: ncx::config::ClientSettings) -> ClientError {
    connect(settings)
        .await
        .err()
        .expect("the client is refused")
}

#[tokio::test]
async fn a_certificate_alone_authenticates_an_identity_that_asks_for_one() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&pki, settings(&pki, &dir)).await;
    let svc = echo_service().await;
    let c = with_cert(
        client_settings(
            server.addr,
            pki.pinned(),
            "cert-only",
            "",
            vec![service("e", svc, 0)],
        ),
        pki.client_cert("cert-only"),
        false,
    );
    let client = RunningClient::start(c).await;
    let public = std::net::SocketAddr::from(([127, 0, 0, 1], client.port("e")));
    assert_eq!(exchange(public, b"mtls").await.unwrap(), b"mtls");
    // A token-only identity is unaffected by the client CA: no certificate needed.
    let plain = RunningClient::start(client_settings(
        server.addr,
        pki.pinned(),
        "token-only",
        "plain-token",
        vec![service("p", svc, 0)],
    ))
    .await;
    plain.stop().await;
    client.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn both_requires_the_certificate_and_the_token() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&pki, settings(&pki, &dir)).await;
    let svc = echo_service().await;
    let base = |token: &str| {
        client_settings(
            server.addr,
            pki.pinned(),
            "both",
            token,
            vec![service("e", svc, 0)],
        )
    };
    RunningClient::start(with_cert(base("both-token"), pki.client_cert("both"), true))
        .await
        .stop()
        .await;
    match refusal(with_cert(base("wrong"), pki.client_cert("both"), true)).await {
        ClientError::Refused { code, .. } => assert_eq!(code, ErrorCode::BadToken),
        other => panic!("expected a bad token, got {other:?}"),
    }
    let err = refusal(base("both-token")).await;
    match &err {
        ClientError::Refused { code, message } => {
            assert_eq!(*code, ErrorCode::CertificateRequired);
            assert!(
                message.contains("must present a client certificate"),
                "{message}"
            );
        }
        other => panic!("expected certificate required, got {other:?}"),
    }
    assert!(
        err.is_permanent(),
        "a missing certificate needs a configuration change"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_certificate_for_another_identity_is_refused_naming_it() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&pki, settings(&pki, &dir)).await;
    let svc = echo_service().await;
    let err = refusal(with_cert(
        client_settings(
            server.addr,
            pki.pinned(),
            "cert-only",
            "",
            vec![service("e", svc, 0)],
        ),
        pki.client_cert("both"),
        false,
    ))
    .await;
    match &err {
        ClientError::Refused { code, message } => {
            assert_eq!(*code, ErrorCode::CertificateRequired);
            assert!(
                message.contains("is for \"both\", not for identity cert-only"),
                "{message}"
            );
        }
        other => panic!("expected certificate required, got {other:?}"),
    }
    server.stop().await;
}

/// What the user reads when the server refuses the certificate: one typed refusal on the control
/// stream, whatever the timing, that says "certificate" and is not retried.
fn assert_refused_certificate(err: &ClientError, why: &str) -> String {
    match err {
        ClientError::Refused { code, message } => {
            assert_eq!(*code, ErrorCode::CertificateRefused, "{message}");
            assert!(
                message.starts_with("the client certificate was not accepted: "),
                "{message}"
            );
            assert!(message.contains(why), "{message}");
        }
        other => panic!("expected a refused certificate, got {other:?}"),
    }
    assert!(err.is_permanent());
    err.to_string()
}

const NOT_SIGNED: &str = "it is not signed by the CA the server trusts for clients";

#[tokio::test]
async fn a_certificate_from_another_ca_gets_one_message_whatever_the_timing() {
    let pki = Pki::new();
    let stranger = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let mut ss = settings(&pki, &dir);
    // Each refusal counts as a failed authentication; these repeats are the test's, not a client's.
    ss.auth_failures_before_block = 100;
    let server = TestServer::start(&pki, ss).await;
    let svc = echo_service().await;
    let attempt = |identity: &str, token: &str| {
        with_cert(
            client_settings(
                server.addr,
                pki.pinned(),
                identity,
                token,
                vec![service("e", svc, 0)],
            ),
            stranger.client_cert(identity),
            !token.is_empty(),
        )
    };
    // At 8354efb the same refusal read as "UnknownCA", "DecryptError", "the session closed before
    // the control stream opened" or "connection is closed", depending on timing.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..8 {
        let err = refusal(attempt("cert-only", "")).await;
        seen.insert(assert_refused_certificate(&err, NOT_SIGNED));
    }
    assert_eq!(seen.len(), 1, "{seen:?}");
    // An identity that needs no certificate is refused too when it presents a bad one.
    let err = refusal(attempt("token-only", "plain-token")).await;
    assert_refused_certificate(&err, NOT_SIGNED);
    server.stop().await;
}

#[tokio::test]
async fn an_expired_certificate_is_refused_as_expired() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&pki, settings(&pki, &dir)).await;
    let svc = echo_service().await;
    let err = refusal(with_cert(
        client_settings(
            server.addr,
            pki.pinned(),
            "cert-only",
            "",
            vec![service("e", svc, 0)],
        ),
        pki.client_cert_valid("cert-only", Some(())),
        false,
    ))
    .await;
    let text = assert_refused_certificate(&err, "it has expired");
    assert!(!text.contains("Expired"), "no rustls names: {text}");
    server.stop().await;
}

#[tokio::test]
async fn a_refused_certificate_is_tried_once_and_does_not_block_the_address() {
    let pki = Pki::new();
    let stranger = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let mut ss = settings(&pki, &dir);
    ss.auth_failures_before_block = 2;
    ss.auth_block = Duration::from_secs(60);
    let server = ncx::server::Server::new(ss, pki.server_identity()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn({
        let (server, shutdown) = (server.clone(), shutdown.clone());
        async move { server.run(listener, shutdown).await }
    });
    let svc = echo_service().await;
    let mut bad = with_cert(
        client_settings(
            addr,
            pki.pinned(),
            "cert-only",
            "",
            vec![service("e", svc, 0)],
        ),
        stranger.client_cert("cert-only"),
        false,
    );
    // Quick reconnects, so a client that retried would reach the block within the wait.
    bad.reconnect.initial = Duration::from_millis(10);
    bad.reconnect.max = Duration::from_millis(10);
    let stop = tokio_util::sync::CancellationToken::new();
    let err = tokio::time::timeout(WAIT, ncx::client::run(bad, stop))
        .await
        .expect("the client gives up at once")
        .expect_err("the client is refused");
    assert_refused_certificate(&err, NOT_SIGNED);
    assert_eq!(server.sessions_started(), 1, "the client tried once");
    // One failure is below the threshold of two: the identity still gets in from this address
    // once its certificate is fixed.
    RunningClient::start(with_cert(
        client_settings(
            addr,
            pki.pinned(),
            "cert-only",
            "",
            vec![service("e", svc, 0)],
        ),
        pki.client_cert("cert-only"),
        false,
    ))
    .await
    .stop()
    .await;
    shutdown.cancel();
    tokio::time::timeout(WAIT, task).await.unwrap().unwrap();
}

#[tokio::test]
async fn a_visitor_may_authenticate_by_certificate() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&pki, settings(&pki, &dir)).await;
    let svc = echo_service().await;
    let owner = RunningClient::start(client_settings(
        server.addr,
        pki.pinned(),
        "token-only",
        "plain-token",
        vec![private_service("ssh", svc, &["cert-only"])],
    ))
    .await;
    let mut v = with_cert(
        client_settings(server.addr, pki.pinned(), "cert-only", "", vec![]),
        pki.client_cert("cert-only"),
        false,
    );
    v.visits = vec![VisitSpec {
        owner: name("token-only"),
        service: name("ssh"),
        listen: "127.0.0.1:0".parse().unwrap(),
        udp: false,
    }];
    let listeners = ncx::client::bind_visits(&v).await.unwrap();
    let addr = listeners[0].local_addr().unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(ncx::client::run_bound(v, listeners, shutdown.clone()));
    assert_eq!(exchange(addr, b"by cert").await.unwrap(), b"by cert");
    shutdown.cancel();
    tokio::time::timeout(WAIT, task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    owner.stop().await;
    server.stop().await;
}
