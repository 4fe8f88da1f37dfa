//! Why a client could not connect or lost its session ([`ClientError`]), and what became of each
//! service it registered ([`ServiceStatus`]).

use std::time::Duration;

use ncx_proto::{ErrorCode, Name};

use crate::refusal::Refusal;
use crate::tls::TlsError;

/// Why the client could not connect, or why its session ended. A cause is part of the message,
/// not `source()`, so printing the chain does not repeat it.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The TCP connection to the server failed.
    #[error("connecting to the server at {addr}: {cause}")]
    Connect {
        /// The server address.
        addr: String,
        /// Why.
        cause: std::io::Error,
    },
    /// A deadline passed.
    #[error("{stage} timed out after {after:?}")]
    Timeout {
        /// What was being done.
        stage: &'static str,
        /// The deadline.
        after: Duration,
    },
    /// TLS failed in a way only a configuration change fixes (a server certificate this client
    /// does not trust, a client certificate the server rejected, no common protocol version); the
    /// text names the cause in plain words.
    #[error("{0}")]
    Tls(String),
    /// The TLS handshake failed on the way (the connection closed or was reset, the peer sent
    /// something that is not TLS): the network, a load balancer or a restarting server, so it is
    /// retried.
    #[error("{0}")]
    Handshake(String),
    /// The server refused this client.
    #[error("the server refused this client: {message} ({code})")]
    Refused {
        /// Why, for programs.
        code: ErrorCode,
        /// Why, for people.
        message: String,
    },
    /// The server broke the protocol or the connection failed mid-exchange.
    #[error("{0}")]
    Protocol(String),
    /// Every service was refused, so the session has nothing to do.
    /// The server refused a service and `exit_on_forward_failure` is set.
    #[error("the server refused a service and exit_on_forward_failure is set: {reasons}")]
    ServiceRefused {
        /// Each refused service and why.
        reasons: String,
    },
    #[error("the server refused every service: {reasons}")]
    NoServices {
        /// Each service and why.
        reasons: String,
        /// Every refusal is one that only a change of the server's configuration lifts (a port
        /// the identity may not use, a visit it may not make), so retrying cannot help.
        permanent: bool,
    },
    /// The session ended after it was established.
    #[error("the session ended: {0}")]
    SessionLost(String),
    /// The server sent go-away and closed the session.
    #[error("the server closed the session: {message} ({code})")]
    GoneAway {
        /// Why, for programs.
        code: ErrorCode,
        /// Why, for people.
        message: String,
    },
    /// The way through the proxy failed (it refused, or could not reach the server).
    #[error("{}", .0.message)]
    Proxy(crate::proxy::ProxyFailure),
    /// The WebSocket to the server could not be opened: its outer TLS, or the upgrade (refused,
    /// or answered by something that is not a WebSocket server).
    #[error("{}", .0.message)]
    WebSocket(crate::proxy::ProxyFailure),
    /// Building the TLS configuration failed.
    #[error(transparent)]
    Config(#[from] TlsError),
    /// A visit's local listener could not be bound.
    #[error("listening on {addr} for a visit: {cause}")]
    Listen {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        cause: std::io::Error,
    },
    /// The metrics endpoint or the admin socket could not be set up (or the admin socket is not
    /// available on this platform).
    #[error("{0}")]
    Endpoint(String),
}

impl ClientError {
    /// Whether retrying cannot help until the configuration changes (bad token, unknown identity,
    /// version mismatch, server certificate refused).
    pub fn is_permanent(&self) -> bool {
        match self {
            ClientError::Refused { code, .. } => code.is_permanent(),
            ClientError::NoServices { permanent, .. } => *permanent,
            ClientError::ServiceRefused { .. } => true,
            ClientError::Proxy(f) | ClientError::WebSocket(f) => f.permanent,
            ClientError::Tls(_)
            | ClientError::Config(_)
            | ClientError::Listen { .. }
            | ClientError::Endpoint(_) => true,
            _ => false,
        }
    }
}

/// The outcome of registering one service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceStatus {
    /// The service.
    pub name: Name,
    /// The public port, or the refusal.
    pub result: Result<u16, Refusal>,
}
