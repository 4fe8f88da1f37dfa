//! HTTP CONNECT (RFC 9110 §9.3.6), sans-IO: the request that asks a proxy for a tunnel, and the
//! reading of its answer, bounded.

use base64::Engine as _;

/// The longest answer head (status line and headers) read from a proxy. Real answers are a few
/// hundred bytes; a proxy that sends more is broken or hostile, and is not buffered.
pub const MAX_REPLY_HEAD: usize = 8192;

/// The CONNECT request for `host:port`, with Basic credentials if any. An IPv6 address is
/// bracketed, as in a URL.
pub fn connect_request(host: &str, port: u16, basic: Option<(&str, &str)>) -> Vec<u8> {
    let authority = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let mut req = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n");
    if let Some((user, pass)) = basic {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
        req.push_str(&format!("Proxy-Authorization: Basic {token}\r\n"));
    }
    req.push_str("\r\n");
    req.into_bytes()
}

/// Collects a proxy's answer byte by byte until the blank line that ends its head. Nothing after
/// the head is taken: those bytes belong to the tunnel.
#[derive(Debug, Default)]
pub struct ReplyHead {
    buf: Vec<u8>,
}

impl ReplyHead {
    /// Takes one byte; `Ok(true)` once the head is complete.
    pub fn push(&mut self, byte: u8) -> Result<bool, ReplyError> {
        if self.buf.len() >= MAX_REPLY_HEAD {
            return Err(ReplyError::TooLong);
        }
        self.buf.push(byte);
        Ok(self.buf.ends_with(b"\r\n\r\n") || self.buf.ends_with(b"\n\n"))
    }

    /// The head so far.
    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }
}

/// What a proxy answered to CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The status code.
    pub status: u16,
    /// The status line's reason phrase, as sent (untrusted text: escape before logging).
    pub reason: String,
}

/// Why an answer to CONNECT is not a tunnel.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    /// The head did not end within [`MAX_REPLY_HEAD`] bytes.
    #[error(
        "its answer is longer than {MAX_REPLY_HEAD} bytes without ending: is it an HTTP proxy?"
    )]
    TooLong,
    /// The first line is not `HTTP/1.x NNN reason`.
    #[error("its answer is not HTTP: is it an HTTP proxy (a SOCKS proxy needs socks5://)?")]
    NotHttp,
    /// A status other than 2xx.
    #[error("it answered {} {}", .0.status, .0.reason.escape_debug())]
    Refused(Refused),
}

/// Reads a complete answer head: `Ok(())` for a 2xx status, which opens the tunnel.
pub fn parse_reply(head: &[u8]) -> Result<(), ReplyError> {
    let line_end = head
        .iter()
        .position(|b| *b == b'\n')
        .ok_or(ReplyError::NotHttp)?;
    let line = head[..line_end]
        .strip_suffix(b"\r")
        .unwrap_or(&head[..line_end]);
    let line = std::str::from_utf8(line).map_err(|_| ReplyError::NotHttp)?;
    let mut parts = line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !(version == "HTTP/1.1" || version == "HTTP/1.0") {
        return Err(ReplyError::NotHttp);
    }
    let status = parts
        .next()
        .filter(|s| s.len() == 3 && s.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or(ReplyError::NotHttp)?;
    if (200..300).contains(&status) {
        return Ok(());
    }
    let reason: String = parts.next().unwrap_or_default().chars().take(200).collect();
    Err(ReplyError::Refused(Refused { status, reason }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &[u8]) -> Result<(), ReplyError> {
        let mut h = ReplyHead::default();
        for (i, b) in text.iter().enumerate() {
            if h.push(*b)? {
                assert_eq!(i + 1, text.len(), "the head ends at the blank line");
                return parse_reply(h.bytes());
            }
        }
        panic!("incomplete head")
    }

    #[test]
    fn requests_name_the_target_and_the_credentials() {
        assert_eq!(
            connect_request("tunnel.example.com", 443, None),
            b"CONNECT tunnel.example.com:443 HTTP/1.1\r\nHost: tunnel.example.com:443\r\n\r\n"
        );
        let r = String::from_utf8(connect_request("::1", 7835, Some(("alice", "s3cret")))).unwrap();
        assert!(
            r.starts_with("CONNECT [::1]:7835 HTTP/1.1\r\nHost: [::1]:7835\r\n"),
            "{r}"
        );
        // base64("alice:s3cret")
        assert!(
            r.contains("Proxy-Authorization: Basic YWxpY2U6czNjcmV0\r\n"),
            "{r}"
        );
    }

    #[test]
    fn answers_are_read_to_the_blank_line_and_judged() {
        assert_eq!(head(b"HTTP/1.1 200 Connection established\r\n\r\n"), Ok(()));
        assert_eq!(head(b"HTTP/1.0 200 OK\r\nVia: squid\r\n\r\n"), Ok(()));
        assert_eq!(
            head(
                b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic\r\n\r\n"
            ),
            Err(ReplyError::Refused(Refused {
                status: 407,
                reason: "Proxy Authentication Required".into()
            }))
        );
        assert_eq!(head(b"SSH-2.0-OpenSSH\r\n\r\n"), Err(ReplyError::NotHttp));
        assert_eq!(head(b"HTTP/1.1 20 OK\r\n\r\n"), Err(ReplyError::NotHttp));
        let mut h = ReplyHead::default();
        let err = (0..=MAX_REPLY_HEAD).find_map(|_| h.push(b'a').err());
        assert_eq!(err, Some(ReplyError::TooLong));
    }
}
