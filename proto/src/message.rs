//! Typed messages, and the error codes they carry (their strings are in `strings.rs`).

use std::fmt;
use std::net::SocketAddr;

use crate::strings::{Name, Text};
use crate::AUTH_PROOF_LEN;

/// Why something was refused, as a number that programs can match on. The accompanying [`Text`] is
/// for people; the code is what decides behaviour (for example whether a client retries).
///
/// Codes this version does not know decode as [`ErrorCode::Other`], so a newer peer's new codes never
/// make a frame invalid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The peer speaks another protocol version.
    VersionMismatch,
    /// The server has no identity of that name.
    UnknownIdentity,
    /// The proof does not match the identity's token.
    BadToken,
    /// The requested public port is outside what the identity may use.
    PortNotAllowed,
    /// The requested public port is held by another identity or another program.
    PortInUse,
    /// The session already registered a service of this name.
    DuplicateService,
    /// The server could not bind the port for another reason (the message says which).
    BindFailed,
    /// A message arrived that is not allowed at this point of the exchange.
    ProtocolViolation,
    /// A newer session of the same identity took over; this one is closed.
    SessionReplaced,
    /// The server is shutting down.
    ShuttingDown,
    /// The client has no service of the name in a visitor header.
    UnknownService,
    /// The local service refused the connection.
    LocalRefused,
    /// The local service did not accept the connection within the connect deadline.
    LocalTimeout,
    /// Connecting to the local service failed for another reason (the message says which).
    LocalError,
    /// A limit was reached (the message says which).
    LimitReached,
    /// The server failed internally; the message says what.
    Internal,
    /// With [`Message::GoAway`]: the session has used most of yamux's stream ids; the client should
    /// open a new session now (which takes over the services) while this one finishes its visitors.
    Rotate,
    /// The visiting identity is not on the private service's list of visitors.
    NotAllowed,
    /// The identity requires a client certificate, and none naming it was presented.
    CertificateRequired,
    /// The client certificate presented was not accepted: it does not chain to the server's client
    /// CA, has expired, or is not for client authentication (the message says which).
    CertificateRefused,
    /// A code this version does not know.
    Other(u16),
}

impl ErrorCode {
    /// The code's number on the wire.
    pub fn to_u16(self) -> u16 {
        match self {
            ErrorCode::VersionMismatch => 1,
            ErrorCode::UnknownIdentity => 2,
            ErrorCode::BadToken => 3,
            ErrorCode::PortNotAllowed => 4,
            ErrorCode::PortInUse => 5,
            ErrorCode::DuplicateService => 6,
            ErrorCode::BindFailed => 7,
            ErrorCode::ProtocolViolation => 8,
            ErrorCode::SessionReplaced => 9,
            ErrorCode::ShuttingDown => 10,
            ErrorCode::UnknownService => 11,
            ErrorCode::LocalRefused => 12,
            ErrorCode::LocalTimeout => 13,
            ErrorCode::LocalError => 14,
            ErrorCode::LimitReached => 15,
            ErrorCode::Internal => 16,
            ErrorCode::Rotate => 17,
            ErrorCode::NotAllowed => 18,
            ErrorCode::CertificateRequired => 19,
            ErrorCode::CertificateRefused => 20,
            ErrorCode::Other(n) => n,
        }
    }

    /// The code of a number read from the wire. `from_u16(c.to_u16()) == c` for every known code;
    /// `Other(n)` is returned only for numbers no known code uses.
    pub fn from_u16(n: u16) -> Self {
        match n {
            1 => ErrorCode::VersionMismatch,
            2 => ErrorCode::UnknownIdentity,
            3 => ErrorCode::BadToken,
            4 => ErrorCode::PortNotAllowed,
            5 => ErrorCode::PortInUse,
            6 => ErrorCode::DuplicateService,
            7 => ErrorCode::BindFailed,
            8 => ErrorCode::ProtocolViolation,
            9 => ErrorCode::SessionReplaced,
            10 => ErrorCode::ShuttingDown,
            11 => ErrorCode::UnknownService,
            12 => ErrorCode::LocalRefused,
            13 => ErrorCode::LocalTimeout,
            14 => ErrorCode::LocalError,
            15 => ErrorCode::LimitReached,
            16 => ErrorCode::Internal,
            17 => ErrorCode::Rotate,
            18 => ErrorCode::NotAllowed,
            19 => ErrorCode::CertificateRequired,
            20 => ErrorCode::CertificateRefused,
            n => ErrorCode::Other(n),
        }
    }

    /// Whether a client should stop retrying after this refusal: configuration must change first.
    pub fn is_permanent(self) -> bool {
        matches!(
            self,
            ErrorCode::VersionMismatch
                | ErrorCode::UnknownIdentity
                | ErrorCode::BadToken
                | ErrorCode::CertificateRequired
                | ErrorCode::CertificateRefused
        )
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            ErrorCode::VersionMismatch => "protocol version mismatch",
            ErrorCode::UnknownIdentity => "unknown identity",
            ErrorCode::BadToken => "bad token",
            ErrorCode::PortNotAllowed => "port not allowed",
            ErrorCode::PortInUse => "port in use",
            ErrorCode::DuplicateService => "duplicate service",
            ErrorCode::BindFailed => "bind failed",
            ErrorCode::ProtocolViolation => "protocol violation",
            ErrorCode::SessionReplaced => "session replaced",
            ErrorCode::ShuttingDown => "server shutting down",
            ErrorCode::UnknownService => "unknown service",
            ErrorCode::LocalRefused => "local service refused the connection",
            ErrorCode::LocalTimeout => "local service did not answer in time",
            ErrorCode::LocalError => "local service unreachable",
            ErrorCode::LimitReached => "limit reached",
            ErrorCode::Internal => "internal server error",
            ErrorCode::Rotate => "session rotation",
            ErrorCode::NotAllowed => "not allowed",
            ErrorCode::CertificateRequired => "client certificate required",
            ErrorCode::CertificateRefused => "client certificate refused",
            ErrorCode::Other(n) => return write!(f, "error code {n}"),
        };
        f.write_str(s)
    }
}

/// Every message of the protocol. Which ones may appear where is said on each variant and enforced by
/// the peers, not by the codec.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum Message {
    /// Client → server, first on the control stream: who the client is and the proof that it holds
    /// the identity's token (HMAC-SHA256 keyed by the token over the TLS exporter value).
    Hello {
        /// The newest version the client speaks ([`crate::PROTOCOL_VERSION`] of its crate).
        version: u16,
        /// The identity the client claims.
        identity: Name,
        /// HMAC-SHA256(token, exporter(AUTH_EXPORTER_LABEL, identity, 32)).
        proof: [u8; AUTH_PROOF_LEN],
        /// (Version 3, type `0x13`.) Which instance of the identity this client is, when one
        /// identity runs on several machines: sessions of different instances coexist, and a new
        /// session takes over only from an earlier one of the same instance. `None` is the
        /// identity's one unnamed instance (type `0x01`).
        instance: Option<Name>,
    },
    /// Server → client: the hello was accepted.
    Welcome {
        /// The version the session uses: the lower of the client's and the server's newest.
        version: u16,
    },
    /// Client → server: expose a service on a public port (0: the server picks one).
    Register {
        /// The service's name, unique within the session.
        service: Name,
        /// The public port wanted, or 0.
        remote_port: u16,
        /// Which visitor addresses the server lets through (checked before anything reaches the
        /// client).
        access: crate::AccessRules,
        /// (Version 3, type `0x0d`.) The group the service joins: the server binds the group's
        /// port once and spreads its visitors over every member. `None`: the service is this
        /// session's alone (type `0x03`).
        group: Option<Name>,
    },
    /// Client → server (version 3): offer a UDP service on a public UDP port. Each visitor
    /// address (a flow) gets a substream of its own, which carries the flow's datagrams framed
    /// as in [`crate::DatagramReader`].
    RegisterUdp {
        /// The service's name; unique in the session among all its services.
        service: Name,
        /// The public UDP port wanted; 0 lets the server pick one the identity may use.
        remote_port: u16,
        /// Which visitor addresses the server lets through, checked for every new flow.
        access: crate::AccessRules,
    },
    /// Client → server (version 3): offer a private UDP service: as [`Message::RegisterPrivate`],
    /// reached only by visits that say UDP ([`Message::VisitUdp`]).
    RegisterPrivateUdp {
        /// The service's name; unique per identity among its private services.
        service: Name,
        /// The identities that may visit it, at most [`crate::MAX_VISITORS`].
        #[cfg_attr(feature = "arbitrary", arbitrary(with = arbitrary_impls::visitors))]
        visitors: Vec<Name>,
    },
    /// Visiting peer → server (version 3), first on a visit substream: as [`Message::Visit`], of a
    /// private UDP service; the substream then carries one flow's datagrams.
    VisitUdp {
        /// The identity that offers the service.
        owner: Name,
        /// One of its private UDP services.
        service: Name,
    },
    /// Client → server: offer a private service, which gets no public port. Only the listed
    /// identities reach it, each through its own session ([`Message::Visit`]).
    RegisterPrivate {
        /// The service's name, unique within the identity.
        service: Name,
        /// The identities that may visit it, at most [`crate::MAX_VISITORS`].
        #[cfg_attr(feature = "arbitrary", arbitrary(with = arbitrary_impls::visitors))]
        visitors: Vec<Name>,
        /// (Version 3, type `0x0e`.) The group the service joins: a visit names the group as its
        /// owner and reaches one of the members. `None`: the identity's own (type `0x0a`).
        group: Option<Name>,
    },
    /// Client → server (version 3): whether the local service behind a registered service
    /// answers its health check. A service reported unhealthy gets no new visitors (in a group,
    /// they go to the other members) until it is reported healthy again.
    ServiceHealth {
        /// The service's name as registered.
        service: Name,
        /// `None` when it answers; why not, for people, when it does not.
        unhealthy: Option<Text>,
    },
    /// Server → client: the service is listening on `remote_port`, or, for a private service,
    /// registered with `remote_port` 0.
    Registered {
        /// The service's name as registered.
        service: Name,
        /// The public port actually bound; 0 for a private service.
        remote_port: u16,
    },
    /// Client → server (version 2): stop offering a service this session registered. The server
    /// releases its port (or its private name) and answers [`Message::Withdrawn`]; visitors
    /// already connected to it are the client's to end.
    Withdraw {
        /// The service's name as registered.
        service: Name,
    },
    /// Server → client (version 2): the service is withdrawn, its port released; or it was not
    /// registered in this session, which comes to the same.
    Withdrawn {
        /// The service's name as in the withdraw.
        service: Name,
    },
    /// Server → client: the service was not registered; the session goes on.
    ServiceRefused {
        /// The service's name as registered.
        service: Name,
        /// Why, for programs.
        code: ErrorCode,
        /// Why, for people.
        message: Text,
    },
    /// Either way: the session is refused or ends; the sender closes it after this message.
    Error {
        /// Why, for programs.
        code: ErrorCode,
        /// Why, for people.
        message: Text,
    },
    /// Either way, on the control stream: the sender takes no new visitors (a server closes its
    /// public ports, a client refuses new substreams); streams in flight go on until they finish or
    /// the sender's drain deadline passes, then the sender closes the session.
    GoAway {
        /// Why, for programs (for example [`ErrorCode::ShuttingDown`]).
        code: ErrorCode,
        /// Why, for people.
        message: Text,
    },
    /// Either way, on the control stream: answer with a [`Message::Pong`] of the same value.
    Ping(u64),
    /// The answer to a [`Message::Ping`].
    Pong(u64),
    /// Server → client, first on a visitor substream: which service, and who is visiting.
    VisitorHeader {
        /// The service the visitor connected to.
        service: Name,
        /// The visitor's address as the server saw it. Only the IP address and port are carried: an
        /// IPv6 flow label and scope id are local to the server and arrive as 0.
        #[cfg_attr(feature = "arbitrary", arbitrary(with = arbitrary_impls::carried_addr))]
        visitor: SocketAddr,
        /// The server address the visitor connected to (for the PROXY protocol's destination).
        #[cfg_attr(feature = "arbitrary", arbitrary(with = arbitrary_impls::carried_addr))]
        public: SocketAddr,
    },
    /// Visiting peer → server, first on a substream the visiting peer opened: connect this substream
    /// to the private service `service`. The server answers with a [`Message::VisitorStatus`]
    /// (its own refusal, or the owning client's answer) and then carries raw bytes.
    Visit {
        /// The identity that offers the service. Names are only unique per identity, so another
        /// identity can never stand in for the service the visitor means.
        owner: Name,
        /// The private service to reach.
        service: Name,
    },
    /// Client → server, the answer to a [`Message::VisitorHeader`] (and server → visiting peer,
    /// the answer to a [`Message::Visit`]). After `None` the substream
    /// carries raw bytes of the spliced connection; after `Some` the client closes it.
    VisitorStatus {
        /// `None`: connected to the local service. `Some`: refused, with why.
        refusal: Option<(ErrorCode, Text)>,
    },
}

impl Message {
    /// The type byte of this message on the wire.
    pub fn type_byte(&self) -> u8 {
        match self {
            Message::Hello { instance: None, .. } => 0x01,
            Message::Hello {
                instance: Some(_), ..
            } => 0x13,
            Message::Welcome { .. } => 0x02,
            Message::Register { group: None, .. } => 0x03,
            Message::Register { group: Some(_), .. } => 0x0d,
            Message::Registered { .. } => 0x04,
            Message::ServiceRefused { .. } => 0x05,
            Message::Error { .. } => 0x06,
            Message::Ping(_) => 0x07,
            Message::Pong(_) => 0x08,
            Message::GoAway { .. } => 0x09,
            Message::RegisterPrivate { group: None, .. } => 0x0a,
            Message::RegisterPrivate { group: Some(_), .. } => 0x0e,
            Message::ServiceHealth { .. } => 0x0f,
            Message::RegisterUdp { .. } => 0x14,
            Message::RegisterPrivateUdp { .. } => 0x15,
            Message::VisitUdp { .. } => 0x16,
            Message::Withdraw { .. } => 0x0b,
            Message::Withdrawn { .. } => 0x0c,
            Message::VisitorHeader { .. } => 0x10,
            Message::VisitorStatus { .. } => 0x11,
            Message::Visit { .. } => 0x12,
        }
    }
}

#[cfg(feature = "arbitrary")]
mod arbitrary_impls {
    //! Structured fuzzing input: every value produced is a valid message.

    use arbitrary::{Arbitrary, Result, Unstructured};

    use super::{ErrorCode, Name};
    use crate::MAX_VISITORS;

    /// A visitor list as the protocol carries it: at most [`MAX_VISITORS`] names.
    pub(super) fn visitors(u: &mut Unstructured<'_>) -> Result<Vec<Name>> {
        let n = u.int_in_range(0..=MAX_VISITORS)?;
        (0..n).map(|_| Name::arbitrary(u)).collect()
    }

    /// A socket address as the protocol carries it: no IPv6 flow label or scope id.
    pub(super) fn carried_addr(u: &mut Unstructured<'_>) -> Result<std::net::SocketAddr> {
        let ip = std::net::IpAddr::arbitrary(u)?;
        Ok(std::net::SocketAddr::new(ip, u16::arbitrary(u)?))
    }

    impl<'a> Arbitrary<'a> for ErrorCode {
        fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
            // 0 is not a code; every other number maps to exactly one variant.
            Ok(ErrorCode::from_u16(u.int_in_range(1..=u16::MAX)?))
        }
    }
}
