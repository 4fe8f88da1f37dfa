//! Typed messages and the validated string types they carry.

use std::fmt;
use std::net::SocketAddr;

use crate::{AUTH_PROOF_LEN, MAX_NAME_LEN, MAX_TEXT_LEN};

/// An identity or service name: 1 to [`MAX_NAME_LEN`] bytes of `A-Z a-z 0-9 . _ -`.
///
/// The narrow alphabet keeps names safe to print in logs and to use in file names, and makes a
/// name that differs only by invisible Unicode impossible.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Name(String);

/// Why a string is not a valid [`Name`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The name has no characters.
    #[error("a name must not be empty")]
    Empty,
    /// The name is longer than [`MAX_NAME_LEN`] bytes.
    #[error("a name is at most {MAX_NAME_LEN} bytes, this one has {0}")]
    TooLong(usize),
    /// The name has a character outside `A-Z a-z 0-9 . _ -`.
    #[error("a name may only use letters, digits, '.', '_' and '-' (found {0:?})")]
    BadChar(char),
}

impl Name {
    /// Checks `s` and wraps it.
    pub fn new(s: impl Into<String>) -> Result<Self, NameError> {
        let s = s.into();
        if s.is_empty() {
            return Err(NameError::Empty);
        }
        if s.len() > MAX_NAME_LEN {
            return Err(NameError::TooLong(s.len()));
        }
        if let Some(c) = s
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return Err(NameError::BadChar(c));
        }
        Ok(Name(s))
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl std::str::FromStr for Name {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Name::new(s)
    }
}

/// Human-readable text of at most [`MAX_TEXT_LEN`] bytes.
///
/// [`Text::new`] cuts longer input at a character boundary instead of failing: these strings explain
/// an error to a person, and a shortened explanation beats none.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Text(String);

impl Text {
    /// Wraps `s`, cut to [`MAX_TEXT_LEN`] bytes at a character boundary.
    pub fn new(s: impl Into<String>) -> Self {
        let mut s = s.into();
        if s.len() > MAX_TEXT_LEN {
            let mut end = MAX_TEXT_LEN;
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            s.truncate(end);
        }
        Text(s)
    }

    /// The text as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub(crate) fn from_checked(s: String) -> Self {
        debug_assert!(s.len() <= MAX_TEXT_LEN);
        Text(s)
    }
}

/// Shown escaped: the text comes from a peer, and a newline or an escape sequence in it must not
/// reach a log line or a terminal as such (a forged log line, a recoloured screen). Control
/// characters, the Unicode line and paragraph separators and the bidirectional overrides are
/// written as `\n`, `\u{1b}` and so on; [`Text::as_str`] gives the text as received.
impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use fmt::Write;
        for c in self.0.chars() {
            if needs_escape(c) {
                for e in c.escape_default() {
                    f.write_char(e)?;
                }
            } else {
                f.write_char(c)?;
            }
        }
        Ok(())
    }
}

/// Whether `c` must not be shown as is.
fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        )
}

impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

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
        /// [`crate::PROTOCOL_VERSION`] of the client.
        version: u16,
        /// The identity the client claims.
        identity: Name,
        /// HMAC-SHA256(token, exporter(AUTH_EXPORTER_LABEL, identity, 32)).
        proof: [u8; AUTH_PROOF_LEN],
    },
    /// Server → client: the hello was accepted.
    Welcome {
        /// [`crate::PROTOCOL_VERSION`] of the server.
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
    },
    /// Client → server: offer a private service, which gets no public port. Only the listed
    /// identities reach it, each through its own session ([`Message::Visit`]).
    RegisterPrivate {
        /// The service's name, unique within the identity.
        service: Name,
        /// The identities that may visit it, at most [`crate::MAX_VISITORS`].
        #[cfg_attr(feature = "arbitrary", arbitrary(with = arbitrary_impls::visitors))]
        visitors: Vec<Name>,
    },
    /// Server → client: the service is listening on `remote_port`, or, for a private service,
    /// registered with `remote_port` 0.
    Registered {
        /// The service's name as registered.
        service: Name,
        /// The public port actually bound; 0 for a private service.
        remote_port: u16,
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
            Message::Hello { .. } => 0x01,
            Message::Welcome { .. } => 0x02,
            Message::Register { .. } => 0x03,
            Message::Registered { .. } => 0x04,
            Message::ServiceRefused { .. } => 0x05,
            Message::Error { .. } => 0x06,
            Message::Ping(_) => 0x07,
            Message::Pong(_) => 0x08,
            Message::GoAway { .. } => 0x09,
            Message::RegisterPrivate { .. } => 0x0a,
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

    use super::{ErrorCode, Name, Text};
    use crate::{MAX_NAME_LEN, MAX_VISITORS};

    impl<'a> Arbitrary<'a> for Name {
        fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
            const ALPHABET: &[u8] =
                b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-";
            let len = u.int_in_range(1..=MAX_NAME_LEN)?;
            let mut s = String::with_capacity(len);
            for _ in 0..len {
                s.push(char::from(*u.choose(ALPHABET)?));
            }
            Ok(Name::new(s).expect("built from the allowed alphabet and length"))
        }
    }

    impl<'a> Arbitrary<'a> for Text {
        fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
            Ok(Text::new(String::arbitrary(u)?))
        }
    }

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
