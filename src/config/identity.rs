//! What one identity of the server must present ([`ClientAuth`]) and may do ([`IdentityPolicy`]).

use super::*;

/// What an identity must present to authenticate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientAuth {
    /// A proof of the token (HMAC over the TLS exporter value).
    Token(Token),
    /// A client certificate from the client CA whose common name is the identity.
    Certificate,
    /// Both.
    Both(Token),
}

impl ClientAuth {
    /// The token to check, if any.
    pub fn token(&self) -> Option<&Token> {
        match self {
            ClientAuth::Token(t) | ClientAuth::Both(t) => Some(t),
            ClientAuth::Certificate => None,
        }
    }

    /// Whether a client certificate naming the identity is required.
    pub fn needs_certificate(&self) -> bool {
        matches!(self, ClientAuth::Certificate | ClientAuth::Both(_))
    }
}

/// What one identity may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityPolicy {
    /// The identity.
    pub name: Name,
    /// What it must present.
    pub auth: ClientAuth,
    /// Address its public ports are bound on.
    pub bind: IpAddr,
    /// Ports it may bind (empty: none).
    pub ports: Vec<PortRange>,
}

impl IdentityPolicy {
    /// An identity authenticated by `token` that may bind `ports` on every address.
    pub fn with_token(name: Name, token: Token, ports: Vec<PortRange>) -> Self {
        IdentityPolicy {
            name,
            auth: ClientAuth::Token(token),
            bind: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            ports,
        }
    }

    /// Whether `port` is inside one of the allowed ranges.
    pub fn allows(&self, port: u16) -> bool {
        self.ports.iter().any(|r| r.0.contains(&port))
    }

    /// The allowed ranges, for messages: `"3389, 20000-20100"`.
    pub fn ports_text(&self) -> String {
        ports_text(&self.ports)
    }
}

/// The first port two ranges share, if any.
pub(super) fn overlap(a: &PortRange, b: &PortRange) -> Option<u16> {
    let lo = *a.0.start().max(b.0.start());
    let hi = *a.0.end().min(b.0.end());
    (lo <= hi).then_some(lo)
}

/// Port ranges for messages: `"3389, 20000-20100"`, or `"none"`.
pub(super) fn ports_text(ports: &[PortRange]) -> String {
    if ports.is_empty() {
        return "none".into();
    }
    ports
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}
