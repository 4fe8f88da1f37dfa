//! The ncx wire protocol, sans-IO: bytes in, messages out.
//!
//! Nothing here touches a socket, a clock or a runtime, so every decoder can be fuzzed and tested on
//! plain byte slices. The specification, byte by byte, is `README.md` beside this crate; the test
//! vectors it lists are checked by `tests/spec_vectors.rs`.
//!
//! Glossary (the same nouns are used in the `ncx` crate):
//! - **Session**: one TLS connection between a client and the server, with a yamux session on top.
//! - **Control stream**: the first substream, opened by the client. It carries [`Message::Hello`],
//!   authentication, service registration, pings and errors.
//! - **Service**: a named TCP endpoint on the client's side that the server exposes on a public port.
//! - **Visitor**: a TCP connection that arrives at a public port of the server.
//! - **Substream**: the yamux stream opened by the server for one visitor. It begins with a
//!   [`Message::VisitorHeader`] and the client's [`Message::VisitorStatus`], then carries raw bytes.
//! - **Private service**: a service with no public port. Only the identities it lists reach it, by
//!   running `ncx visit`: their session opens a substream starting with [`Message::Visit`], which the
//!   server bridges to a new substream on the owning client's session.
#![forbid(unsafe_code)]

mod access;
pub mod check;
mod codec;
mod datagram;
mod message;
mod proxy;
mod proxy_in;
mod strings;
mod websocket;

pub use access::{canonical, AccessRules, Cidr, CidrError, MAX_RULES};
pub use codec::{decode, encode, encode_to_vec, DecodeError, FrameDecoder};
pub use datagram::{
    encode_datagram, DatagramError, DatagramReader, DATAGRAM_PREFIX_LEN, MAX_DATAGRAM_LEN,
};
pub use message::{ErrorCode, Message};
pub use proxy::{proxy_header, proxy_header_udp, ProxyVersion, PROXY_V2_SIGNATURE};
pub use proxy_in::{
    read_proxy_header, ProxiedAddrs, ProxyHeaderError, MAX_PROXY_HEADER_LEN, MAX_PROXY_V1_LEN,
    MAX_PROXY_V2_LEN,
};
pub use strings::{Name, NameError, Text};
pub use websocket::{
    apply_ws_mask, read_ws_header, write_ws_header, WsFrameError, WsFrameHeader, WsOpcode, WsRole,
    MAX_WS_CONTROL_PAYLOAD, MAX_WS_HEADER_LEN, MAX_WS_PAYLOAD, MAX_WS_WRITE_PAYLOAD,
};

/// The newest protocol version this crate speaks. A client sends it in [`Message::Hello`]; the
/// server answers in [`Message::Welcome`] with the version the session uses, the lower of the two.
/// Version 2 added [`Message::Withdraw`] and [`Message::Withdrawn`]; version 3 instance names in
/// the hello, services registered into groups and [`Message::ServiceHealth`].
pub const PROTOCOL_VERSION: u16 = 3;

/// The oldest protocol version this crate still speaks: a server accepts a `Hello` of any version
/// from this one to [`PROTOCOL_VERSION`].
pub const MIN_PROTOCOL_VERSION: u16 = 1;

/// The first version in which a client may withdraw a service ([`Message::Withdraw`]).
pub const WITHDRAW_VERSION: u16 = 2;

/// The first version with instance names ([`Message::Hello`] with `instance`), services in groups
/// ([`Message::Register`] and [`Message::RegisterPrivate`] with `group`) and
/// [`Message::ServiceHealth`].
pub const GROUP_VERSION: u16 = 3;

/// The first version with UDP services ([`Message::RegisterUdp`] and the datagram framing).
pub const UDP_VERSION: u16 = 3;

/// The TLS ALPN identifier of this protocol version. A server refuses a client that does not offer it,
/// so a peer of another major version fails at the TLS handshake with a clear alert instead of
/// misreading frames.
pub const ALPN: &[u8] = b"ncx/1";

/// Label for the TLS exporter (RFC 8446 §7.5) whose output the client signs to prove its token.
/// Binding the proof to this value makes a captured proof useless on any other TLS connection.
pub const AUTH_EXPORTER_LABEL: &[u8] = b"EXPORTER-ncx-auth-v1";

/// Length in bytes of the exported keying material and of the HMAC-SHA256 proof.
pub const AUTH_PROOF_LEN: usize = 32;

/// Largest frame body (type byte plus payload) any peer may send. The largest message of this
/// version (a Register into a group with two full access lists) has 2439 bytes; a larger declared length is
/// rejected before a byte of it is buffered.
pub const MAX_FRAME_LEN: usize = 4096;

/// Longest identity or service name, in bytes.
pub const MAX_NAME_LEN: usize = 64;

/// Most identities a private service may list as its visitors. Keeps a
/// [`Message::RegisterPrivate`] (a body of at most 2,147 bytes) far below [`MAX_FRAME_LEN`].
pub const MAX_VISITORS: usize = 32;

/// Longest human-readable message, in bytes of UTF-8.
pub const MAX_TEXT_LEN: usize = 1024;
