//! Framing: `u16` big-endian body length, then the body (type byte and payload).
//!
//! Decoding has two kinds of "no": `Ok(None)` means the bytes so far are a strict prefix of a frame
//! and more are needed; `Err(DecodeError)` means no continuation can make them valid, and the
//! stream that carried them must be closed.
//!
//! Kept as one piece of about 570 lines: the decoder (`decode_body` and its bounded `Reader`) and
//! the encoder (`encode` and its `put_*` helpers) each hold one arm per message, in the same
//! order, and a message's wire form is checked by reading its two arms side by side against
//! `README.md`. Splitting them apart would put the two halves of every message in two files.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::access::{AccessRules, Cidr, MAX_RULES};
use crate::message::{ErrorCode, Message};
use crate::strings::{Name, NameError, Text};
use crate::{AUTH_PROOF_LEN, MAX_FRAME_LEN, MAX_TEXT_LEN};

/// Bytes of the length prefix.
const LEN_PREFIX: usize = 2;

/// Why bytes are not a valid frame. Every variant is final for the stream that carried them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The declared body length exceeds [`MAX_FRAME_LEN`]. Reported as soon as the two length bytes
    /// are read, before anything is buffered.
    #[error("frame of {0} bytes exceeds the limit of {MAX_FRAME_LEN}")]
    FrameTooLong(usize),
    /// The declared body length is 0, so there is no type byte.
    #[error("empty frame")]
    EmptyFrame,
    /// The type byte names no message of this version.
    #[error("unknown message type 0x{0:02x}")]
    UnknownType(u8),
    /// The body ends inside a field.
    #[error("message body ends inside field `{0}`")]
    Truncated(&'static str),
    /// The body has bytes after the last field.
    #[error("{0} bytes after the end of the message")]
    TrailingBytes(usize),
    /// A name field is not a valid [`Name`].
    #[error("invalid name: {0}")]
    BadName(NameError),
    /// A text field is longer than [`MAX_TEXT_LEN`].
    #[error("text of {0} bytes exceeds the limit of {MAX_TEXT_LEN}")]
    TextTooLong(usize),
    /// A text or name field is not UTF-8.
    #[error("field `{0}` is not valid UTF-8")]
    BadUtf8(&'static str),
    /// An address family byte other than 4 or 6.
    #[error("unknown address family {0}")]
    BadAddressFamily(u8),
    /// An error code of 0 where a refusal or error is required.
    #[error("error code 0 in a refusal")]
    ZeroErrorCode,
    /// A [`Message::VisitorStatus`] that says "connected" but carries a message.
    #[error("a connected status must not carry a message")]
    ConnectedWithText,
    /// A [`Message::ServiceHealth`] whose flag is neither 0 nor 1.
    #[error("health flag {0} is neither 0 nor 1")]
    BadFlag(u8),
    /// A [`Message::ServiceHealth`] that says "healthy" but carries a reason.
    #[error("a healthy report must not carry a reason")]
    HealthyWithText,
    /// An access list longer than [`MAX_RULES`].
    #[error("{0} access rules exceed the limit of {MAX_RULES}")]
    TooManyRules(usize),
    /// A visitor list longer than [`crate::MAX_VISITORS`].
    #[error("{0} visitors exceed the limit of {max}", max = crate::MAX_VISITORS)]
    TooManyVisitors(usize),
    /// An access rule that is not a canonical CIDR block.
    #[error("invalid access rule: {0}")]
    BadCidr(crate::CidrError),
}

/// Decodes one frame from the start of `buf`.
///
/// Returns `Ok(Some((message, consumed)))` for a complete valid frame, `Ok(None)` when `buf` is a
/// strict prefix of a frame that could still be valid, and an error otherwise. Never reads past the
/// declared length, never allocates more than the frame's own fields, never panics.
pub fn decode(buf: &[u8]) -> Result<Option<(Message, usize)>, DecodeError> {
    let Some(prefix) = buf.get(..LEN_PREFIX) else {
        return Ok(None);
    };
    let len = usize::from(u16::from_be_bytes([prefix[0], prefix[1]]));
    if len == 0 {
        return Err(DecodeError::EmptyFrame);
    }
    if len > MAX_FRAME_LEN {
        return Err(DecodeError::FrameTooLong(len));
    }
    let Some(body) = buf.get(LEN_PREFIX..LEN_PREFIX + len) else {
        // A known-bad type byte is final even before the rest of the body arrives.
        if let Some(&t) = buf.get(LEN_PREFIX) {
            if !is_known_type(t) {
                return Err(DecodeError::UnknownType(t));
            }
        }
        return Ok(None);
    };
    let msg = decode_body(body)?;
    Ok(Some((msg, LEN_PREFIX + len)))
}

fn is_known_type(t: u8) -> bool {
    matches!(t, 0x01..=0x16)
}

fn decode_body(body: &[u8]) -> Result<Message, DecodeError> {
    let mut r = Reader { buf: body };
    let t = r.u8("type")?;
    let msg = match t {
        0x01 => Message::Hello {
            version: r.u16("version")?,
            identity: r.name("identity")?,
            proof: r.array::<AUTH_PROOF_LEN>("proof")?,
            instance: None,
        },
        0x13 => {
            let version = r.u16("version")?;
            let identity = r.name("identity")?;
            let instance = Some(r.name("instance")?);
            Message::Hello {
                version,
                identity,
                proof: r.array::<AUTH_PROOF_LEN>("proof")?,
                instance,
            }
        }
        0x02 => Message::Welcome {
            version: r.u16("version")?,
        },
        0x03 => Message::Register {
            service: r.name("service")?,
            remote_port: r.u16("remote_port")?,
            access: AccessRules {
                allow: r.cidrs("allow")?,
                deny: r.cidrs("deny")?,
            },
            group: None,
        },
        0x0d => {
            let service = r.name("service")?;
            let group = Some(r.name("group")?);
            Message::Register {
                service,
                remote_port: r.u16("remote_port")?,
                access: AccessRules {
                    allow: r.cidrs("allow")?,
                    deny: r.cidrs("deny")?,
                },
                group,
            }
        }
        0x04 => Message::Registered {
            service: r.name("service")?,
            remote_port: r.u16("remote_port")?,
        },
        0x05 => Message::ServiceRefused {
            service: r.name("service")?,
            code: r.error_code()?,
            message: r.text("message")?,
        },
        0x06 => Message::Error {
            code: r.error_code()?,
            message: r.text("message")?,
        },
        0x07 => Message::Ping(r.u64("ping")?),
        0x08 => Message::Pong(r.u64("pong")?),
        0x09 => Message::GoAway {
            code: r.error_code()?,
            message: r.text("message")?,
        },
        0x0a => Message::RegisterPrivate {
            service: r.name("service")?,
            visitors: r.names("visitors")?,
            group: None,
        },
        0x0e => {
            let service = r.name("service")?;
            let group = Some(r.name("group")?);
            Message::RegisterPrivate {
                service,
                visitors: r.names("visitors")?,
                group,
            }
        }
        0x0f => {
            let service = r.name("service")?;
            let healthy = match r.u8("healthy")? {
                0 => false,
                1 => true,
                n => return Err(DecodeError::BadFlag(n)),
            };
            let reason = r.text("reason")?;
            if healthy && !reason.as_str().is_empty() {
                return Err(DecodeError::HealthyWithText);
            }
            Message::ServiceHealth {
                service,
                unhealthy: (!healthy).then_some(reason),
            }
        }
        0x14 => Message::RegisterUdp {
            service: r.name("service")?,
            remote_port: r.u16("remote_port")?,
            access: AccessRules {
                allow: r.cidrs("allow")?,
                deny: r.cidrs("deny")?,
            },
        },
        0x15 => Message::RegisterPrivateUdp {
            service: r.name("service")?,
            visitors: r.names("visitors")?,
        },
        0x16 => Message::VisitUdp {
            owner: r.name("owner")?,
            service: r.name("service")?,
        },
        0x0b => Message::Withdraw {
            service: r.name("service")?,
        },
        0x0c => Message::Withdrawn {
            service: r.name("service")?,
        },
        0x10 => Message::VisitorHeader {
            service: r.name("service")?,
            visitor: r.socket_addr()?,
            public: r.socket_addr()?,
        },
        0x11 => {
            let code = r.u16("code")?;
            let text = r.text("message")?;
            if code == 0 {
                if !text.as_str().is_empty() {
                    return Err(DecodeError::ConnectedWithText);
                }
                Message::VisitorStatus { refusal: None }
            } else {
                Message::VisitorStatus {
                    refusal: Some((ErrorCode::from_u16(code), text)),
                }
            }
        }
        0x12 => Message::Visit {
            owner: r.name("owner")?,
            service: r.name("service")?,
        },
        t => return Err(DecodeError::UnknownType(t)),
    };
    if !r.buf.is_empty() {
        return Err(DecodeError::TrailingBytes(r.buf.len()));
    }
    Ok(msg)
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated(field));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, field)?);
        Ok(out)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(field)?[0])
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array(field)?))
    }

    fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array(field)?))
    }

    fn name(&mut self, field: &'static str) -> Result<Name, DecodeError> {
        let len = usize::from(self.u8(field)?);
        let bytes = self.take(len, field)?;
        let s = std::str::from_utf8(bytes).map_err(|_| DecodeError::BadUtf8(field))?;
        Name::new(s).map_err(DecodeError::BadName)
    }

    fn text(&mut self, field: &'static str) -> Result<Text, DecodeError> {
        let len = usize::from(self.u16(field)?);
        if len > MAX_TEXT_LEN {
            return Err(DecodeError::TextTooLong(len));
        }
        let bytes = self.take(len, field)?;
        let s = std::str::from_utf8(bytes).map_err(|_| DecodeError::BadUtf8(field))?;
        Ok(Text::from_checked(s.to_owned()))
    }

    fn names(&mut self, field: &'static str) -> Result<Vec<Name>, DecodeError> {
        let n = usize::from(self.u8(field)?);
        if n > crate::MAX_VISITORS {
            return Err(DecodeError::TooManyVisitors(n));
        }
        (0..n).map(|_| self.name(field)).collect()
    }

    fn cidrs(&mut self, field: &'static str) -> Result<Vec<Cidr>, DecodeError> {
        let n = usize::from(self.u8(field)?);
        if n > MAX_RULES {
            return Err(DecodeError::TooManyRules(n));
        }
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let addr = self.socket_addr_ip()?;
            let prefix = self.u8("prefix")?;
            out.push(Cidr::exact(addr, prefix).map_err(DecodeError::BadCidr)?);
        }
        Ok(out)
    }

    fn socket_addr_ip(&mut self) -> Result<IpAddr, DecodeError> {
        Ok(match self.u8("family")? {
            4 => IpAddr::V4(Ipv4Addr::from(self.array::<4>("ip")?)),
            6 => IpAddr::V6(Ipv6Addr::from(self.array::<16>("ip")?)),
            f => return Err(DecodeError::BadAddressFamily(f)),
        })
    }

    fn error_code(&mut self) -> Result<ErrorCode, DecodeError> {
        match self.u16("code")? {
            0 => Err(DecodeError::ZeroErrorCode),
            n => Ok(ErrorCode::from_u16(n)),
        }
    }

    fn socket_addr(&mut self) -> Result<SocketAddr, DecodeError> {
        let ip = self.socket_addr_ip()?;
        Ok(SocketAddr::new(ip, self.u16("port")?))
    }
}

/// Appends the frame of `msg` to `out`.
///
/// Infallible: [`Name`] and [`Text`] enforce their caps on construction, access lists are cut at
/// [`MAX_RULES`], visitor lists at [`crate::MAX_VISITORS`], and the largest message of this version is below [`MAX_FRAME_LEN`] (checked by a
/// test).
pub fn encode(msg: &Message, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0, 0]);
    out.push(msg.type_byte());
    match msg {
        Message::Hello {
            version,
            identity,
            proof,
            instance,
        } => {
            out.extend_from_slice(&version.to_be_bytes());
            put_name(out, identity);
            if let Some(instance) = instance {
                put_name(out, instance);
            }
            out.extend_from_slice(proof);
        }
        Message::Welcome { version } => out.extend_from_slice(&version.to_be_bytes()),
        Message::Register {
            service,
            remote_port,
            access,
            group,
        } => {
            put_name(out, service);
            if let Some(group) = group {
                put_name(out, group);
            }
            out.extend_from_slice(&remote_port.to_be_bytes());
            put_cidrs(out, &access.allow);
            put_cidrs(out, &access.deny);
        }
        Message::RegisterPrivate {
            service,
            visitors,
            group,
        } => {
            put_name(out, service);
            if let Some(group) = group {
                put_name(out, group);
            }
            // Cut like access lists: configuration refuses longer lists.
            let visitors = &visitors[..visitors.len().min(crate::MAX_VISITORS)];
            out.push(u8::try_from(visitors.len()).expect("at most 32 visitors"));
            for v in visitors {
                put_name(out, v);
            }
        }
        Message::Visit { owner, service } | Message::VisitUdp { owner, service } => {
            put_name(out, owner);
            put_name(out, service);
        }
        Message::RegisterPrivateUdp { service, visitors } => {
            put_name(out, service);
            let visitors = &visitors[..visitors.len().min(crate::MAX_VISITORS)];
            out.push(u8::try_from(visitors.len()).expect("at most 32 visitors"));
            for v in visitors {
                put_name(out, v);
            }
        }
        Message::Withdraw { service } | Message::Withdrawn { service } => put_name(out, service),
        Message::RegisterUdp {
            service,
            remote_port,
            access,
        } => {
            put_name(out, service);
            out.extend_from_slice(&remote_port.to_be_bytes());
            put_cidrs(out, &access.allow);
            put_cidrs(out, &access.deny);
        }
        Message::ServiceHealth { service, unhealthy } => {
            put_name(out, service);
            out.push(u8::from(unhealthy.is_none()));
            let empty = Text::EMPTY;
            put_text(out, unhealthy.as_ref().unwrap_or(&empty));
        }
        Message::Registered {
            service,
            remote_port,
        } => {
            put_name(out, service);
            out.extend_from_slice(&remote_port.to_be_bytes());
        }
        Message::ServiceRefused {
            service,
            code,
            message,
        } => {
            put_name(out, service);
            out.extend_from_slice(&code.to_u16().to_be_bytes());
            put_text(out, message);
        }
        Message::Error { code, message } | Message::GoAway { code, message } => {
            out.extend_from_slice(&code.to_u16().to_be_bytes());
            put_text(out, message);
        }
        Message::Ping(v) | Message::Pong(v) => out.extend_from_slice(&v.to_be_bytes()),
        Message::VisitorHeader {
            service,
            visitor,
            public,
        } => {
            put_name(out, service);
            for addr in [visitor, public] {
                put_ip(out, addr.ip());
                out.extend_from_slice(&addr.port().to_be_bytes());
            }
        }
        Message::VisitorStatus { refusal } => match refusal {
            None => out.extend_from_slice(&[0, 0, 0, 0]),
            Some((code, text)) => {
                out.extend_from_slice(&code.to_u16().to_be_bytes());
                put_text(out, text);
            }
        },
    }
    let body_len = out.len() - start - LEN_PREFIX;
    debug_assert!(body_len <= MAX_FRAME_LEN);
    let len = u16::try_from(body_len).expect("message bodies are capped below u16::MAX by type");
    out[start..start + LEN_PREFIX].copy_from_slice(&len.to_be_bytes());
}

/// [`encode`] into a new vector.
pub fn encode_to_vec(msg: &Message) -> Vec<u8> {
    let mut out = Vec::new();
    encode(msg, &mut out);
    out
}

fn put_name(out: &mut Vec<u8>, name: &Name) {
    let bytes = name.as_str().as_bytes();
    out.push(u8::try_from(bytes.len()).expect("Name::new caps names at 64 bytes"));
    out.extend_from_slice(bytes);
}

fn put_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(ip) => {
            out.push(4);
            out.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            out.push(6);
            out.extend_from_slice(&ip.octets());
        }
    }
}

/// Writes an access list. Lists longer than [`MAX_RULES`] are cut: configuration refuses them, so
/// only a program building messages by hand can hit this.
fn put_cidrs(out: &mut Vec<u8>, list: &[Cidr]) {
    let list = &list[..list.len().min(MAX_RULES)];
    out.push(u8::try_from(list.len()).expect("at most 64 rules"));
    for c in list {
        put_ip(out, c.addr());
        out.push(c.prefix());
    }
}

fn put_text(out: &mut Vec<u8>, text: &Text) {
    let bytes = text.as_str().as_bytes();
    out.extend_from_slice(
        &u16::try_from(bytes.len())
            .expect("Text::new caps text at 1024 bytes")
            .to_be_bytes(),
    );
    out.extend_from_slice(bytes);
}

/// Incremental decoder for a byte stream: push what arrives, pull whole messages.
///
/// It holds at most one frame's worth of bytes beyond what was consumed (`2 + MAX_FRAME_LEN`), so a
/// peer cannot make it grow: [`FrameDecoder::next_message`] fails as soon as a declared length is too
/// large, and a caller that only pushes after pulling `None` never buffers more than that.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
}

impl FrameDecoder {
    /// An empty decoder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// How many more bytes are worth reading before [`FrameDecoder::next_message`] can make progress:
    /// the rest of the current frame, or its length prefix. Lets a reader never read past a frame's
    /// end, so the raw bytes that follow a substream's header stay unread for the splice.
    pub fn wanted(&self) -> usize {
        match self.buf.get(..LEN_PREFIX) {
            None => LEN_PREFIX - self.buf.len(),
            Some(p) => {
                let len = usize::from(u16::from_be_bytes([p[0], p[1]])).min(MAX_FRAME_LEN);
                (LEN_PREFIX + len).saturating_sub(self.buf.len()).max(1)
            }
        }
    }

    /// Decodes the next message, if a whole one is buffered.
    pub fn next_message(&mut self) -> Result<Option<Message>, DecodeError> {
        match decode(&self.buf)? {
            Some((msg, used)) => {
                self.buf.drain(..used);
                Ok(Some(msg))
            }
            None => Ok(None),
        }
    }

    /// Bytes buffered but not yet decoded.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }
}
