//! A malformed yamux frame ends that session: yamux 0.14 answers a protocol violation with a
//! GoAway and goes on serving, so the server must close the connection itself (hostile-peers
//! issue, finding 10). The session is fed raw yamux frames, as they would come out of TLS.

mod common;

use std::time::Duration;

use common::raw_yamux::{frame, DATA, GO_AWAY, RST, SYN, WINDOW_UPDATE};
use common::*;
use ncx_proto::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The error codes of the GoAway frames in a yamux byte stream.
fn go_away_codes(mut bytes: &[u8]) -> Vec<u32> {
    let mut codes = Vec::new();
    while bytes.len() >= 12 {
        let len = u32::from_be_bytes(bytes[8..12].try_into().unwrap());
        match bytes[1] {
            DATA => {
                let end = (12 + len as usize).min(bytes.len());
                bytes = &bytes[end..];
                continue;
            }
            GO_AWAY => codes.push(len),
            _ => {}
        }
        bytes = &bytes[12..];
    }
    codes
}

#[tokio::test]
async fn a_protocol_violation_closes_the_authenticated_session() {
    let pki = Pki::new();
    let mut ss = server_settings(vec![identity("a", "t")]);
    // Long enough that only the violation can end the session within the test's wait.
    ss.handshake_timeout = Duration::from_secs(120);
    ss.timing.liveness_timeout = Duration::from_secs(600);
    ss.timing.ping_interval = Duration::from_secs(300);
    let server = ncx::server::Server::new(ss, pki.server_identity()).unwrap();
    let exported = [0x42u8; 32];
    let (server_io, mut raw) = tokio::io::duplex(64 * 1024);
    let peer = "192.0.2.9:40000".parse().unwrap();
    let session = tokio::spawn({
        let server = server.clone();
        async move {
            server
                .serve_decrypted(
                    server_io,
                    peer,
                    exported,
                    tokio_util::sync::CancellationToken::new(),
                )
                .await
        }
    });
    // The control stream (odd id: the client's), a valid hello on it.
    let hello = ncx_proto::encode_to_vec(&hello("a", "t", &ncx::auth::ExportedKey(exported)));
    raw.write_all(&frame(WINDOW_UPDATE, SYN, 1, &[], Some(0)))
        .await
        .unwrap();
    raw.write_all(&frame(DATA, 0, 1, &hello, None))
        .await
        .unwrap();
    // Wait for the welcome to come back before breaking the rules.
    let mut seen = Vec::new();
    let welcome = ncx_proto::encode_to_vec(&Message::Welcome {
        version: ncx_proto::PROTOCOL_VERSION,
    });
    tokio::time::timeout(WAIT, async {
        let mut buf = [0u8; 4096];
        while !seen.windows(welcome.len()).any(|w| w == welcome.as_slice()) {
            let n = raw.read(&mut buf).await.unwrap();
            assert!(n > 0, "the server closed before its welcome");
            seen.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("the server welcomes the client");
    // A client may only open odd stream ids: an even one is a protocol violation.
    raw.write_all(&frame(WINDOW_UPDATE, SYN, 2, &[], Some(0)))
        .await
        .unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(WAIT, raw.read_to_end(&mut rest))
        .await
        .expect("the server closes the connection after the violation")
        .unwrap();
    assert!(
        go_away_codes(&rest).contains(&1),
        "yamux told the peer why (GoAway, protocol error)"
    );
    tokio::time::timeout(WAIT, session)
        .await
        .expect("the session ends")
        .unwrap();
}

/// The frames (type, flags, stream id) in a yamux byte stream.
fn frames(mut bytes: &[u8]) -> Vec<(u8, u16, u32)> {
    let mut out = Vec::new();
    while bytes.len() >= 12 {
        let flags = u16::from_be_bytes(bytes[2..4].try_into().unwrap());
        let stream = u32::from_be_bytes(bytes[4..8].try_into().unwrap());
        let len = u32::from_be_bytes(bytes[8..12].try_into().unwrap()) as usize;
        out.push((bytes[1], flags, stream));
        let body = if bytes[1] == DATA { len } else { 0 };
        bytes = &bytes[(12 + body).min(bytes.len())..];
    }
    out
}

/// Before the hello is verified the client may open the control stream and nothing else: any
/// further stream is reset at once, instead of waiting in a queue (and holding whatever the peer
/// sends on it) until the handshake deadline (hostile-peers issue, finding 1).
#[tokio::test]
async fn streams_opened_before_admission_are_reset_at_once() {
    let pki = Pki::new();
    let mut ss = server_settings(vec![identity("a", "t")]);
    ss.handshake_timeout = Duration::from_secs(120);
    let server = ncx::server::Server::new(ss, pki.server_identity()).unwrap();
    let (server_io, mut raw) = tokio::io::duplex(64 * 1024);
    let session = tokio::spawn({
        let server = server.clone();
        async move {
            server
                .serve_decrypted(
                    server_io,
                    "192.0.2.9:40001".parse().unwrap(),
                    [0x42; 32],
                    tokio_util::sync::CancellationToken::new(),
                )
                .await
        }
    });
    raw.write_all(&frame(WINDOW_UPDATE, SYN, 1, &[], Some(0)))
        .await
        .unwrap();
    raw.write_all(&frame(WINDOW_UPDATE, SYN, 3, &[], Some(0)))
        .await
        .unwrap();
    raw.write_all(&frame(DATA, 0, 3, &[7; 100], None))
        .await
        .unwrap();
    let mut seen = Vec::new();
    tokio::time::timeout(WAIT, async {
        let mut buf = [0u8; 4096];
        while !frames(&seen)
            .iter()
            .any(|&(_, flags, stream)| stream == 3 && flags & RST != 0)
        {
            let n = raw.read(&mut buf).await.unwrap();
            assert!(n > 0, "the server closed instead of resetting the stream");
            seen.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("the second stream is reset long before the handshake deadline");
    // The control stream itself is still open: the session waits for its hello.
    assert!(!session.is_finished());
    assert!(frames(&seen)
        .iter()
        .all(|&(_, flags, stream)| stream != 1 || flags & RST == 0));
    drop(raw);
    tokio::time::timeout(WAIT, session)
        .await
        .expect("the session ends with its connection")
        .unwrap();
}
