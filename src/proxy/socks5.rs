//! SOCKS5 (RFC 1928) with username/password authentication (RFC 1929), sans-IO: the messages
//! that ask a proxy for a connection, and the reading of its fixed-size answers. The target is
//! sent as a name when it is one, so the proxy resolves it (what curl calls socks5h): the client's
//! network may have no DNS for the outside.

use std::net::IpAddr;

/// The greeting: version 5 and the methods offered (no authentication, and username/password
/// when there are credentials).
pub fn greeting(with_credentials: bool) -> Vec<u8> {
    if with_credentials {
        vec![5, 2, 0x00, 0x02]
    } else {
        vec![5, 1, 0x00]
    }
}

/// Why a SOCKS5 exchange failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SocksError {
    /// An answer that is not SOCKS5.
    #[error("its answer is not SOCKS5: is it a SOCKS5 proxy (an HTTP proxy needs http://)?")]
    NotSocks5,
    /// The proxy accepts none of the methods offered.
    #[error("it accepts none of the authentication methods offered{}", if *.with_credentials { "" } else { " (it may want a user and password)" })]
    NoAcceptableMethod {
        /// Whether username/password was offered.
        with_credentials: bool,
    },
    /// The proxy wants username/password and there are no credentials.
    #[error("it wants a user and password: give them in the proxy URL")]
    CredentialsNeeded,
    /// The user or password was refused.
    #[error("it refused the user and password")]
    AuthenticationFailed,
    /// A user or password longer than SOCKS5 allows.
    #[error("a SOCKS5 user and password are at most 255 bytes each")]
    CredentialsTooLong,
    /// A target name longer than SOCKS5 allows.
    #[error("a SOCKS5 target name is at most 255 bytes")]
    NameTooLong,
    /// The proxy could not or would not connect.
    #[error("it could not connect: {}", reply_text(*.0))]
    ConnectFailed(u8),
}

/// The method the proxy chose, from its two-byte answer to [`greeting`].
pub fn parse_method(answer: [u8; 2], with_credentials: bool) -> Result<Method, SocksError> {
    match answer {
        [5, 0x00] => Ok(Method::NoAuthentication),
        [5, 0x02] if with_credentials => Ok(Method::UserPassword),
        [5, 0x02] => Err(SocksError::CredentialsNeeded),
        [5, 0xff] => Err(SocksError::NoAcceptableMethod { with_credentials }),
        _ => Err(SocksError::NotSocks5),
    }
}

/// How the proxy wants the client to authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// Not at all.
    NoAuthentication,
    /// With a user and password (RFC 1929).
    UserPassword,
}

/// The username/password request.
pub fn credentials(user: &str, pass: &str) -> Result<Vec<u8>, SocksError> {
    let (u, p) = (user.as_bytes(), pass.as_bytes());
    if u.len() > 255 || p.len() > 255 || u.is_empty() {
        return Err(SocksError::CredentialsTooLong);
    }
    let mut m = vec![1, u.len() as u8];
    m.extend_from_slice(u);
    m.push(p.len() as u8);
    m.extend_from_slice(p);
    Ok(m)
}

/// The two-byte answer to [`credentials`].
pub fn parse_credentials_answer(answer: [u8; 2]) -> Result<(), SocksError> {
    match answer {
        [1, 0] => Ok(()),
        [1, _] => Err(SocksError::AuthenticationFailed),
        _ => Err(SocksError::NotSocks5),
    }
}

/// The CONNECT request for `host:port`: an address if `host` is one, else the name.
pub fn connect_request(host: &str, port: u16) -> Result<Vec<u8>, SocksError> {
    let mut m = vec![5, 1, 0];
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V4(a)) => {
            m.push(1);
            m.extend_from_slice(&a.octets());
        }
        Ok(IpAddr::V6(a)) => {
            m.push(4);
            m.extend_from_slice(&a.octets());
        }
        Err(_) => {
            let name = host.as_bytes();
            if name.is_empty() || name.len() > 255 {
                return Err(SocksError::NameTooLong);
            }
            m.push(3);
            m.push(name.len() as u8);
            m.extend_from_slice(name);
        }
    }
    m.extend_from_slice(&port.to_be_bytes());
    Ok(m)
}

/// The first four bytes of the answer to [`connect_request`]: whether it succeeded, and how many
/// bytes of bound address and port follow (to be read and dropped).
pub fn parse_connect_head(head: [u8; 4]) -> Result<usize, SocksError> {
    let [version, reply, _reserved, kind] = head;
    if version != 5 {
        return Err(SocksError::NotSocks5);
    }
    if reply != 0 {
        return Err(SocksError::ConnectFailed(reply));
    }
    match kind {
        1 => Ok(4 + 2),
        4 => Ok(16 + 2),
        // A name: its length byte is the first of the rest; the caller reads it and then
        // `len + 2` more.
        3 => Ok(0),
        _ => Err(SocksError::NotSocks5),
    }
}

/// RFC 1928's words for a failure code.
fn reply_text(code: u8) -> &'static str {
    match code {
        1 => "general failure",
        2 => "not allowed by its rules",
        3 => "network unreachable",
        4 => "host unreachable",
        5 => "connection refused",
        6 => "time to live expired",
        7 => "command not supported",
        8 => "address type not supported",
        _ => "an unknown reply code",
    }
}

/// Whether a failure means only a change of configuration helps (credentials refused or
/// missing), as opposed to one that may pass (the target was unreachable for now).
pub fn is_permanent(e: &SocksError) -> bool {
    matches!(
        e,
        SocksError::CredentialsNeeded
            | SocksError::AuthenticationFailed
            | SocksError::CredentialsTooLong
            | SocksError::NameTooLong
            | SocksError::NoAcceptableMethod { .. }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_follow_rfc_1928_and_1929() {
        assert_eq!(greeting(false), [5, 1, 0]);
        assert_eq!(greeting(true), [5, 2, 0, 2]);
        assert_eq!(
            connect_request("tunnel.example.com", 443).unwrap(),
            [&[5, 1, 0, 3, 18][..], b"tunnel.example.com", &[1, 187]].concat()
        );
        assert_eq!(
            connect_request("10.0.0.7", 7835).unwrap(),
            [5, 1, 0, 1, 10, 0, 0, 7, 0x1e, 0x9b]
        );
        assert_eq!(connect_request("::1", 1).unwrap().len(), 4 + 16 + 2);
        assert_eq!(credentials("u", "pw").unwrap(), [1, 1, b'u', 2, b'p', b'w']);
        assert_eq!(
            credentials(&"u".repeat(256), "p"),
            Err(SocksError::CredentialsTooLong)
        );
        assert_eq!(
            connect_request(&"a".repeat(256), 1),
            Err(SocksError::NameTooLong)
        );
    }

    #[test]
    fn answers_are_judged() {
        assert_eq!(parse_method([5, 0], false), Ok(Method::NoAuthentication));
        assert_eq!(parse_method([5, 2], true), Ok(Method::UserPassword));
        assert_eq!(
            parse_method([5, 2], false),
            Err(SocksError::CredentialsNeeded)
        );
        assert_eq!(
            parse_method([5, 0xff], true),
            Err(SocksError::NoAcceptableMethod {
                with_credentials: true
            })
        );
        assert_eq!(
            parse_method([b'H', b'T'], false),
            Err(SocksError::NotSocks5)
        );
        assert_eq!(parse_credentials_answer([1, 0]), Ok(()));
        assert_eq!(
            parse_credentials_answer([1, 1]),
            Err(SocksError::AuthenticationFailed)
        );
        assert_eq!(parse_connect_head([5, 0, 0, 1]), Ok(6));
        assert_eq!(parse_connect_head([5, 0, 0, 4]), Ok(18));
        assert_eq!(parse_connect_head([5, 0, 0, 3]), Ok(0));
        let refused = parse_connect_head([5, 5, 0, 1]).unwrap_err();
        assert_eq!(
            refused.to_string(),
            "it could not connect: connection refused"
        );
        assert!(!is_permanent(&refused));
        assert!(is_permanent(&SocksError::AuthenticationFailed));
        assert_eq!(parse_connect_head([5, 0, 0, 9]), Err(SocksError::NotSocks5));
    }
}
