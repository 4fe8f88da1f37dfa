//! The HTTP/1.1 upgrade that opens a WebSocket (RFC 6455 §4), both ends, the heads parsed with
//! `httparse` and bounded: [`MAX_HEAD`] bytes and [`MAX_HEADERS`] header lines.
//!
//! The client names no subprotocol and no extension: nothing in the request says "ncx" except the
//! path the operator chose, so a filter that blocks tunnels by their subprotocol has nothing to
//! match (chisel's `chisel-v3` got it blocked).

use base64::Engine as _;

/// The longest request or response head read. Real ones are a few hundred bytes; a reverse proxy
/// adds a few headers.
pub const MAX_HEAD: usize = 8192;

/// The most header lines in a head.
pub const MAX_HEADERS: usize = 64;

/// RFC 6455 §1.3: appended to the client's key before hashing.
const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Why an upgrade failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpgradeError {
    /// The head did not end within [`MAX_HEAD`] bytes or [`MAX_HEADERS`] lines.
    #[error("the HTTP head is longer than {MAX_HEAD} bytes or {MAX_HEADERS} lines")]
    TooLong,
    /// Not HTTP/1.1.
    #[error("not an HTTP/1.1 head: {0}")]
    NotHttp(String),
    /// The server answered with another status (untrusted text: escaped).
    #[error("the server answered {status} {}", .reason.escape_debug())]
    Status {
        /// The status code.
        status: u16,
        /// Its reason phrase, at most 200 characters.
        reason: String,
    },
    /// The 101 answer is not a WebSocket one.
    #[error("the server's upgrade answer is wrong: {0}")]
    BadAnswer(&'static str),
}

/// The value of header `name` (case-insensitive), if present once or more (the first).
fn header<'a>(headers: &'a [httparse::Header<'a>], name: &str) -> Option<&'a [u8]> {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value)
}

/// Whether a comma-separated header value lists `token` (case-insensitive).
fn lists(value: Option<&[u8]>, token: &str) -> bool {
    value.is_some_and(|v| {
        v.split(|b| *b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}

/// `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key`: base64(SHA-1(key + GUID)).
pub fn accept_key(key: &str) -> String {
    let digest = aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY,
        format!("{key}{GUID}").as_bytes(),
    );
    base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
}

/// A fresh `Sec-WebSocket-Key`: 16 random bytes, base64.
pub fn new_key() -> String {
    let mut k = [0u8; 16];
    // The key only proves the server speaks WebSocket; it is not a secret.
    let _ = aws_lc_rs::rand::fill(&mut k);
    base64::engine::general_purpose::STANDARD.encode(k)
}

/// The client's upgrade request for `path` on `host` (the `Host` header).
pub fn client_request(host: &str, path: &str, key: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .into_bytes()
}

/// Whether `buf` holds a complete head (it ends at the first blank line); `Err` past the cap.
pub fn head_len(buf: &[u8]) -> Result<Option<usize>, UpgradeError> {
    match buf.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(at) if at + 4 <= MAX_HEAD => Ok(Some(at + 4)),
        Some(_) => Err(UpgradeError::TooLong),
        None if buf.len() >= MAX_HEAD => Err(UpgradeError::TooLong),
        None => Ok(None),
    }
}

/// Checks the server's answer (a complete head) to a request made with `key`.
pub fn check_answer(head: &[u8], key: &str) -> Result<(), UpgradeError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(UpgradeError::NotHttp("incomplete".into())),
        Err(httparse::Error::TooManyHeaders) => return Err(UpgradeError::TooLong),
        Err(e) => return Err(UpgradeError::NotHttp(e.to_string())),
    }
    let status = resp.code.unwrap_or(0);
    if status != 101 {
        let reason: String = resp.reason.unwrap_or("").chars().take(200).collect();
        return Err(UpgradeError::Status { status, reason });
    }
    let h = &*resp.headers;
    if !lists(header(h, "upgrade"), "websocket") {
        return Err(UpgradeError::BadAnswer("no Upgrade: websocket"));
    }
    if !lists(header(h, "connection"), "upgrade") {
        return Err(UpgradeError::BadAnswer("no Connection: upgrade"));
    }
    if header(h, "sec-websocket-accept").map(<[u8]>::trim_ascii) != Some(accept_key(key).as_bytes())
    {
        return Err(UpgradeError::BadAnswer(
            "Sec-WebSocket-Accept does not match the key",
        ));
    }
    if header(h, "sec-websocket-extensions").is_some()
        || header(h, "sec-websocket-protocol").is_some()
    {
        return Err(UpgradeError::BadAnswer(
            "an extension or subprotocol nobody asked for",
        ));
    }
    Ok(())
}

/// What a request (a complete head) asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// A WebSocket upgrade of `path`, with the client's key.
    Upgrade {
        /// The request target, query included.
        path: String,
        /// `Sec-WebSocket-Key`.
        key: String,
    },
    /// Any other request (a browser's, a scanner's): for the website, if there is one.
    Other,
}

/// Reads a request head; a malformed one is [`Request::Other`], for the website to answer.
pub fn read_request(head: &[u8]) -> Request {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    if !matches!(req.parse(head), Ok(httparse::Status::Complete(_))) {
        return Request::Other;
    }
    let h = &*req.headers;
    let key = header(h, "sec-websocket-key")
        .and_then(|k| std::str::from_utf8(k.trim_ascii()).ok())
        .filter(|k| {
            base64::engine::general_purpose::STANDARD
                .decode(k)
                .is_ok_and(|raw| raw.len() == 16)
        });
    let upgrade = req.method == Some("GET")
        && req.version == Some(1)
        && lists(header(h, "upgrade"), "websocket")
        && lists(header(h, "connection"), "upgrade")
        && header(h, "sec-websocket-version").map(<[u8]>::trim_ascii) == Some(b"13");
    match (upgrade, key, req.path) {
        (true, Some(key), Some(path)) => Request::Upgrade {
            path: path.to_owned(),
            key: key.to_owned(),
        },
        _ => Request::Other,
    }
}

/// The server's answer accepting an upgrade made with `key`.
pub fn accept_response(key: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
        accept_key(key)
    )
    .into_bytes()
}

/// The answer to a request that is not ncx's when no website is configured.
pub const NOT_FOUND: &[u8] =
    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

/// Why opening a WebSocket failed.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The connection failed or closed during the upgrade.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The answer was not an acceptable upgrade.
    #[error(transparent)]
    Upgrade(#[from] UpgradeError),
}

impl OpenError {
    /// Whether only a change of configuration helps: the server (or the proxy in front of it)
    /// answered, and not with a WebSocket, nor with an error that says "later" (408, 429, 5xx).
    pub fn is_permanent(&self) -> bool {
        match self {
            OpenError::Io(_) => false,
            OpenError::Upgrade(UpgradeError::Status { status, .. }) => {
                !(*status == 408 || *status == 429 || *status >= 500)
            }
            OpenError::Upgrade(_) => true,
        }
    }
}

/// Opens a WebSocket over `io` as the client: the upgrade of `path` with `Host: host`, read up to
/// the end of the answer's head and not a byte further.
pub async fn open<S>(mut io: S, host: &str, path: &str) -> Result<super::WsStream<S>, OpenError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let key = new_key();
    io.write_all(&client_request(host, path, &key)).await?;
    io.flush().await?;
    let mut head = Vec::with_capacity(256);
    loop {
        // Byte by byte: what follows the head belongs to the stream (once per session).
        let b = match io.read_u8().await {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the connection closed before the upgrade was answered",
                )
                .into())
            }
            Err(e) => return Err(e.into()),
        };
        head.push(b);
        if head_len(&head)?.is_some() {
            break;
        }
    }
    check_answer(&head, &key)?;
    Ok(super::WsStream::new(io, ncx_proto::WsRole::Client))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rfc_example_key() {
        // RFC 6455 §1.3.
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn a_request_and_its_answer_agree() {
        let key = new_key();
        let req = client_request("tunnel.example.com", "/ncx", &key);
        let text = String::from_utf8(req.clone()).unwrap();
        assert!(!text.to_ascii_lowercase().contains("protocol:"), "{text}");
        assert_eq!(head_len(&req), Ok(Some(req.len())));
        assert_eq!(
            read_request(&req),
            Request::Upgrade {
                path: "/ncx".into(),
                key: key.clone()
            }
        );
        assert_eq!(check_answer(&accept_response(&key), &key), Ok(()));
        assert!(matches!(
            check_answer(&accept_response(&key), &new_key()),
            Err(UpgradeError::BadAnswer(_))
        ));
    }

    #[test]
    fn answers_that_are_not_an_upgrade() {
        let key = new_key();
        assert_eq!(
            check_answer(b"HTTP/1.1 404 Not\tFound\r\n\r\n", &key)
                .unwrap_err()
                .to_string(),
            "the server answered 404 Not\\tFound"
        );
        assert!(matches!(
            check_answer(b"SSH-2.0-OpenSSH_9.2\r\n\r\n", &key),
            Err(UpgradeError::NotHttp(_))
        ));
        let with_ext = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n",
            accept_key(&key)
        );
        assert!(matches!(
            check_answer(with_ext.as_bytes(), &key),
            Err(UpgradeError::BadAnswer(_))
        ));
    }

    #[test]
    fn requests_that_are_not_an_upgrade_are_the_websites() {
        assert_eq!(
            read_request(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
            Request::Other
        );
        assert_eq!(read_request(b"\x00\x01garbage\r\n\r\n"), Request::Other);
        let no_version = b"GET /ncx HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
        assert_eq!(read_request(no_version), Request::Other);
        let ok = b"GET /ncx?x=1 HTTP/1.1\r\nhost: x\r\nupgrade: WebSocket\r\nconnection: keep-alive, Upgrade\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n";
        assert_eq!(
            read_request(ok),
            Request::Upgrade {
                path: "/ncx?x=1".into(),
                key: "dGhlIHNhbXBsZSBub25jZQ==".into()
            }
        );
        // The cap, in bytes and in lines.
        assert_eq!(head_len(&vec![b'a'; MAX_HEAD]), Err(UpgradeError::TooLong));
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            many.extend_from_slice(format!("X-{i}: y\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(read_request(&many), Request::Other);
    }
}
