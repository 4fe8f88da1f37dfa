//! Every refusal reaches the user with its specific reason.

mod common;

use common::*;
use ncx::client::ClientError;
use ncx::config::PortRange;
use ncx::tls::{Fingerprint, ServerTrust};
use ncx_proto::{ErrorCode, Message};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

async fn refused(settings: ncx::config::ClientSettings) -> ClientError {
    match connect(settings).await {
        Ok(_) => panic!("the client was accepted"),
        Err(e) => e,
    }
}

#[tokio::test]
async fn wrong_token_is_refused_as_bad_token() {
    let pki = Pki::new();
    let server = TestServer::start(&pki, server_settings(vec![identity("a", "right")])).await;
    let svc = echo_service().await;
    let err = refused(client_settings(
        server.addr,
        pki.pinned(),
        "a",
        "wrong",
        vec![service("e", svc, 0)],
    ))
    .await;
    match &err {
        ClientError::Refused { code, message } => {
            assert_eq!(*code, ErrorCode::BadToken);
            assert!(message.contains("token"), "{message}");
        }
        other => panic!("expected a bad-token refusal, got {other:?}"),
    }
    assert!(err.is_permanent());
    assert!(err.to_string().contains("bad token"), "{err}");
    server.stop().await;
}

#[tokio::test]
async fn unknown_identity_is_refused_as_such() {
    let pki = Pki::new();
    let server = TestServer::start(&pki, server_settings(vec![identity("a", "t")])).await;
    let svc = echo_service().await;
    let err = refused(client_settings(
        server.addr,
        pki.pinned(),
        "nobody",
        "t",
        vec![service("e", svc, 0)],
    ))
    .await;
    match &err {
        ClientError::Refused { code, message } => {
            assert_eq!(*code, ErrorCode::UnknownIdentity);
            assert!(message.contains("nobody"), "{message}");
        }
        other => panic!("expected an unknown-identity refusal, got {other:?}"),
    }
    assert!(err.is_permanent());
    server.stop().await;
}

#[tokio::test]
async fn wrong_server_fingerprint_is_refused_naming_both() {
    let pki = Pki::new();
    let server = TestServer::start(&pki, server_settings(vec![identity("a", "t")])).await;
    let svc = echo_service().await;
    let wrong = Fingerprint([7; 32]);
    let err = refused(client_settings(
        server.addr,
        ServerTrust::Pinned(vec![wrong]),
        "a",
        "t",
        vec![service("e", svc, 0)],
    ))
    .await;
    let text = err.to_string();
    assert!(matches!(err, ClientError::Tls(_)), "{err:?}");
    assert!(text.contains(&wrong.to_string()), "{text}");
    assert!(
        text.contains(&pki.server.fingerprint().to_string()),
        "{text}"
    );
    assert!(err.is_permanent());
    server.stop().await;
}

#[tokio::test]
async fn ca_that_did_not_sign_the_server_is_refused() {
    let pki = Pki::new();
    let other = Pki::new();
    let server = TestServer::start(&pki, server_settings(vec![identity("a", "t")])).await;
    let svc = echo_service().await;
    let err = refused(client_settings(
        server.addr,
        other.ca_trust(),
        "a",
        "t",
        vec![service("e", svc, 0)],
    ))
    .await;
    let text = err.to_string();
    assert!(text.contains("not signed by the CA"), "{text}");
    server.stop().await;
}

#[tokio::test]
async fn client_offering_another_protocol_version_fails_the_handshake_with_a_clear_reason() {
    let pki = Pki::new();
    let server = TestServer::start(&pki, server_settings(vec![identity("a", "t")])).await;
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let err = raw_tls_client_for(&pki, vec![b"ncx/2".to_vec()])
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .expect_err("the server must refuse ncx/2");
    let explained = ncx::tls::explain_handshake_error(&err, &pki.ca_trust());
    assert!(
        explained.contains("another version of ncx (upgrade the older side)"),
        "{explained}"
    );
    server.stop().await;
}

#[tokio::test]
async fn client_without_alpn_is_disconnected_after_the_handshake() {
    let pki = Pki::new();
    let server = TestServer::start(&pki, server_settings(vec![identity("a", "t")])).await;
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let mut tls = raw_tls_client_for(&pki, vec![])
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .expect("TLS itself succeeds without ALPN");
    let mut buf = Vec::new();
    let r = tokio::time::timeout(WAIT, tls.read_to_end(&mut buf))
        .await
        .expect("the server closes the connection");
    // Either a clean close_notify or a reset: what matters is that nothing is served.
    if let Ok(n) = r {
        assert_eq!(n, 0, "the server must not speak to a client without ALPN");
    }
    server.stop().await;
}

#[tokio::test]
async fn hello_with_another_version_is_refused_as_version_mismatch() {
    let pki = Pki::new();
    let server = TestServer::start(&pki, server_settings(vec![identity("a", "t")])).await;
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let tls = raw_tls_client_for(&pki, vec![ncx_proto::ALPN.to_vec()])
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    let cancel = tokio_util::sync::CancellationToken::new();
    let (handle, driver) = ncx::mux::start(
        tls,
        yamux::Mode::Client,
        Box::new(|_, _| {}),
        cancel.clone(),
    );
    let driver = tokio::spawn(driver);
    let stream = handle.open().await.unwrap();
    let mut ctrl = tokio_util::compat::FuturesAsyncReadCompatExt::compat(stream);
    let hello = Message::Hello {
        instance: None,
        version: ncx_proto::PROTOCOL_VERSION + 1,
        identity: name("a"),
        proof: [0; 32],
    };
    ncx::framed::write_message(&mut ctrl, &hello).await.unwrap();
    let reply = tokio::time::timeout(WAIT, ncx::framed::MessageReader::new().read(&mut ctrl))
        .await
        .unwrap()
        .unwrap();
    match reply {
        Message::Error { code, message } => {
            assert_eq!(code, ErrorCode::VersionMismatch);
            assert!(message.as_str().contains("upgrade"), "{message}");
        }
        other => panic!("expected a version mismatch, got {other:?}"),
    }
    cancel.cancel();
    driver.await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn port_outside_policy_is_refused_and_other_services_still_work() {
    let pki = Pki::new();
    let allowed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let forbidden = if allowed > 2000 {
        allowed - 1000
    } else {
        allowed + 1000
    };
    let server = TestServer::start(
        &pki,
        server_settings(vec![identity_ports(
            "a",
            "t",
            vec![PortRange(allowed..=allowed)],
        )]),
    )
    .await;
    let svc = banner_service(b"ok").await;
    let client = RunningClient::start(client_settings(
        server.addr,
        pki.pinned(),
        "a",
        "t",
        vec![
            service("bad", svc, forbidden),
            service("good", svc, allowed),
        ],
    ))
    .await;
    let bad = &client.ports.iter().find(|(n, _)| n == "bad").unwrap().1;
    let reason = bad.clone().expect_err("the forbidden port is refused");
    assert!(reason.contains("port not allowed"), "{reason}");
    assert!(reason.contains(&forbidden.to_string()), "{reason}");
    assert_eq!(client.port("good"), allowed);
    let mut s = TcpStream::connect(("127.0.0.1", allowed)).await.unwrap();
    let mut b = [0u8; 2];
    s.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"ok");
    drop(s);
    client.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn port_taken_by_another_identity_is_refused() {
    let pki = Pki::new();
    let server = TestServer::start(
        &pki,
        server_settings(vec![identity("a", "ta"), identity("b", "tb")]),
    )
    .await;
    let svc = banner_service(b"a").await;
    let a = RunningClient::start(client_settings(
        server.addr,
        pki.pinned(),
        "a",
        "ta",
        vec![service("s", svc, 0)],
    ))
    .await;
    let port = a.port("s");
    let b_result = connect(client_settings(
        server.addr,
        pki.pinned(),
        "b",
        "tb",
        vec![service("s", svc, port)],
    ))
    .await;
    let err = match b_result {
        Err(ClientError::NoServices { reasons, .. }) => reasons,
        Err(other) => panic!("unexpected error {other:?}"),
        Ok(_) => panic!("identity b must not get a's port"),
    };
    assert!(err.contains("in use by another identity"), "{err}");
    // a keeps it.
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut b = [0u8; 1];
    s.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"a");
    drop(s);
    a.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn insecure_skip_verify_connects_to_any_server() {
    let pki = Pki::new();
    let server = TestServer::start(&pki, server_settings(vec![identity("a", "t")])).await;
    let svc = echo_service().await;
    let client = RunningClient::start(client_settings(
        server.addr,
        ServerTrust::InsecureSkipVerify,
        "a",
        "t",
        vec![service("e", svc, 0)],
    ))
    .await;
    let public = ([127, 0, 0, 1], client.port("e")).into();
    assert_eq!(
        exchange(public, b"unverified").await.unwrap(),
        b"unverified"
    );
    client.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn an_identity_without_ports_is_told_so_and_the_client_stops() {
    // At 8354efb: refused as "port in use", and the client retried forever.
    let pki = Pki::new();
    let server = TestServer::start(
        &pki,
        server_settings(vec![identity_ports("a", "ta", vec![])]),
    )
    .await;
    let svc = banner_service(b"a").await;
    let cs = client_settings(
        server.addr,
        pki.pinned(),
        "a",
        "ta",
        vec![service("s", svc, 0)],
    );
    let shutdown = tokio_util::sync::CancellationToken::new();
    let ended = tokio::time::timeout(WAIT, ncx::client::run(cs, shutdown))
        .await
        .expect("the client gives up instead of retrying");
    let err = ended.expect_err("a refusal only the server's configuration can lift");
    let text = err.to_string();
    assert!(
        text.contains("identity a may not open public ports"),
        "{text}"
    );
    assert!(
        matches!(
            err,
            ClientError::NoServices {
                permanent: true,
                ..
            }
        ),
        "{err:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn exit_on_forward_failure_stops_a_client_when_any_service_is_refused() {
    let pki = Pki::new();
    let server = TestServer::start(
        &pki,
        server_settings(vec![identity_ports(
            "a",
            "ta",
            vec![ncx::config::PortRange(1024..=65535)],
        )]),
    )
    .await;
    let svc = banner_service(b"a").await;
    // Port 80 is outside the identity's ports: that one service is refused.
    let services = vec![service("ok", svc, 0), service("low", svc, 80)];
    // Without the option the client serves what it got.
    let plain = RunningClient::start(client_settings(
        server.addr,
        pki.pinned(),
        "a",
        "ta",
        services.clone(),
    ))
    .await;
    assert!(plain.ports.iter().any(|(n, r)| n == "ok" && r.is_ok()));
    plain.stop().await;
    // With it, it stops with the reason.
    let mut cs = client_settings(server.addr, pki.pinned(), "a", "ta", services);
    cs.exit_on_forward_failure = true;
    let err = tokio::time::timeout(
        WAIT,
        ncx::client::run(cs, tokio_util::sync::CancellationToken::new()),
    )
    .await
    .expect("the client stops instead of retrying")
    .expect_err("a service was refused");
    let text = err.to_string();
    assert!(
        text.starts_with("the server refused a service and exit_on_forward_failure is set: low: port 80 is outside the ports allowed for identity a"),
        "{text}"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_version_1_client_is_welcomed_with_version_1_and_version_0_is_refused() {
    let pki = Pki::new();
    let server = TestServer::start(&pki, server_settings(vec![identity("a", "t")])).await;
    let mut session = RawSession::start(server.addr, &pki, 1).await;
    assert_eq!(session.answer, Message::Welcome { version: 1 });
    let registered = session.register("s", 0).await;
    assert!(
        matches!(registered, Message::Registered { .. }),
        "{registered:?}"
    );
    session.cancel.cancel();
    let session = RawSession::start(server.addr, &pki, ncx_proto::PROTOCOL_VERSION).await;
    assert_eq!(
        session.answer,
        Message::Welcome {
            version: ncx_proto::PROTOCOL_VERSION
        }
    );
    session.cancel.cancel();
    let session = RawSession::start(server.addr, &pki, 0).await;
    assert!(
        matches!(
            session.answer,
            Message::Error {
                code: ErrorCode::VersionMismatch,
                ..
            }
        ),
        "{:?}",
        session.answer
    );
    session.cancel.cancel();
    server.stop().await;
}

#[tokio::test]
async fn withdraw_releases_the_port_at_once_and_the_name_can_be_registered_again() {
    let pki = Pki::new();
    let server = TestServer::start(&pki, server_settings(vec![identity("a", "t")])).await;
    let mut session = RawSession::start(server.addr, &pki, 2).await;
    let port = match session.register("s", 0).await {
        Message::Registered { remote_port, .. } => remote_port,
        other => panic!("{other:?}"),
    };
    let withdrawn = session.ask(Message::Withdraw { service: name("s") }).await;
    assert_eq!(withdrawn, Message::Withdrawn { service: name("s") });
    // Released before the answer: refused now, without waiting.
    let e = TcpStream::connect(("127.0.0.1", port)).await.unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused);
    // The same name on the same port, at once.
    assert_eq!(
        session.register("s", port).await,
        Message::Registered {
            service: name("s"),
            remote_port: port
        }
    );
    // A private service withdrawn, and a name the session never had.
    let private = Message::RegisterPrivate {
        group: None,
        service: name("p"),
        visitors: vec![name("b")],
    };
    assert!(matches!(
        session.ask(private.clone()).await,
        Message::Registered { remote_port: 0, .. }
    ));
    for service in ["p", "never"] {
        assert_eq!(
            session
                .ask(Message::Withdraw {
                    service: name(service)
                })
                .await,
            Message::Withdrawn {
                service: name(service)
            }
        );
    }
    assert!(matches!(
        session.ask(private).await,
        Message::Registered { remote_port: 0, .. }
    ));
    session.cancel.cancel();
    server.stop().await;
}
