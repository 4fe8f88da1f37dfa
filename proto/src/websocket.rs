//! WebSocket framing (RFC 6455 §5), sans-IO: the frame header, read and written, and the masking.
//!
//! ncx's transport over WebSocket carries its TLS bytes in **binary** frames only (a text frame
//! must be UTF-8, and proxies have dropped text frames that were not). The reader takes a header
//! and says how long the payload is; the payload itself is never buffered here, so a peer's frame
//! length costs nothing but a counter. Everything a peer controls is checked: reserved bits (no
//! extension is negotiated), the opcode, the mask (a client must mask, a server must not), control
//! frames (at most 125 bytes, never fragmented) and the 64-bit length (at most
//! [`MAX_WS_PAYLOAD`]).

/// The largest payload of one frame accepted. ncx writes frames of at most
/// [`MAX_WS_WRITE_PAYLOAD`]; proxies may merge frames, so a reader allows much more than that,
/// but not the 2^63 bytes the header can declare.
pub const MAX_WS_PAYLOAD: u64 = 1 << 24;

/// The largest payload ncx puts in one frame: a TLS record and its overhead fit.
pub const MAX_WS_WRITE_PAYLOAD: usize = 16 * 1024 + 256;

/// The longest frame header: 2 bytes, an 8-byte length and a 4-byte mask.
pub const MAX_WS_HEADER_LEN: usize = 14;

/// The largest control frame payload (RFC 6455 §5.5).
pub const MAX_WS_CONTROL_PAYLOAD: usize = 125;

/// What a frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WsOpcode {
    /// More of the message a binary frame began.
    Continuation,
    /// Data.
    Binary,
    /// The peer is closing.
    Close,
    /// Asks for a [`WsOpcode::Pong`] with the same payload.
    Ping,
    /// The answer to a ping (or unsolicited, to be ignored).
    Pong,
}

impl WsOpcode {
    fn code(self) -> u8 {
        match self {
            WsOpcode::Continuation => 0x0,
            WsOpcode::Binary => 0x2,
            WsOpcode::Close => 0x8,
            WsOpcode::Ping => 0x9,
            WsOpcode::Pong => 0xA,
        }
    }

    /// Whether this is a control frame.
    pub fn is_control(self) -> bool {
        matches!(self, WsOpcode::Close | WsOpcode::Ping | WsOpcode::Pong)
    }
}

/// Which end reads: the server reads masked frames, the client unmasked ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WsRole {
    /// The end that sent the upgrade request; it masks what it sends.
    Client,
    /// The end that accepted it.
    Server,
}

/// A frame header, read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WsFrameHeader {
    /// The last frame of its message.
    pub fin: bool,
    /// What the frame is.
    pub opcode: WsOpcode,
    /// The masking key (frames from a client).
    pub mask: Option<[u8; 4]>,
    /// Payload bytes after the header.
    pub payload_len: u64,
    /// Bytes of the header itself.
    pub header_len: usize,
}

/// Why a frame header is refused; each closes the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WsFrameError {
    /// A reserved bit is set, but no extension was agreed.
    #[error("WebSocket frame with reserved bits set ({0:#04x})")]
    Reserved(u8),
    /// A text frame: ncx carries binary frames only.
    #[error("WebSocket text frame (this transport carries binary frames only)")]
    Text,
    /// An opcode RFC 6455 does not define.
    #[error("WebSocket frame with unknown opcode {0:#x}")]
    Opcode(u8),
    /// A client's frame without a mask, or a server's with one.
    #[error("WebSocket frame masking is wrong for its direction")]
    Mask,
    /// A control frame that is fragmented or longer than 125 bytes.
    #[error("WebSocket control frame fragmented or longer than 125 bytes")]
    Control,
    /// A length past [`MAX_WS_PAYLOAD`] (or a 64-bit length with its top bit set).
    #[error("WebSocket frame of {0} bytes is longer than the {MAX_WS_PAYLOAD} accepted")]
    TooLong(u64),
    /// A length not written in its shortest form.
    #[error("WebSocket frame length not in its shortest form")]
    LongForm,
}

/// Reads the header at the start of `buf`, as the end `reader` is: `Ok(None)` while more bytes
/// are needed (never more than [`MAX_WS_HEADER_LEN`]).
pub fn read_ws_header(buf: &[u8], reader: WsRole) -> Result<Option<WsFrameHeader>, WsFrameError> {
    let [b0, b1, ..] = *buf else {
        return Ok(None);
    };
    if b0 & 0x70 != 0 {
        return Err(WsFrameError::Reserved(b0 & 0x70));
    }
    let fin = b0 & 0x80 != 0;
    let opcode = match b0 & 0x0F {
        0x0 => WsOpcode::Continuation,
        0x1 => return Err(WsFrameError::Text),
        0x2 => WsOpcode::Binary,
        0x8 => WsOpcode::Close,
        0x9 => WsOpcode::Ping,
        0xA => WsOpcode::Pong,
        other => return Err(WsFrameError::Opcode(other)),
    };
    let masked = b1 & 0x80 != 0;
    if masked != (reader == WsRole::Server) {
        return Err(WsFrameError::Mask);
    }
    let short = u64::from(b1 & 0x7F);
    if opcode.is_control() && (!fin || short > MAX_WS_CONTROL_PAYLOAD as u64) {
        return Err(WsFrameError::Control);
    }
    let ext = match short {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let header_len = 2 + ext + if masked { 4 } else { 0 };
    if buf.len() < header_len {
        return Ok(None);
    }
    let payload_len = match ext {
        2 => {
            let n = u64::from(u16::from_be_bytes([buf[2], buf[3]]));
            if n < 126 {
                return Err(WsFrameError::LongForm);
            }
            n
        }
        8 => {
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            let n = u64::from_be_bytes(b);
            if n <= u64::from(u16::MAX) {
                return Err(WsFrameError::LongForm);
            }
            n
        }
        _ => short,
    };
    if payload_len > MAX_WS_PAYLOAD {
        return Err(WsFrameError::TooLong(payload_len));
    }
    let mask = masked.then(|| {
        let at = 2 + ext;
        [buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]
    });
    Ok(Some(WsFrameHeader {
        fin,
        opcode,
        mask,
        payload_len,
        header_len,
    }))
}

/// Writes the header of a final frame of `opcode` with `payload_len` bytes, masked with `mask`
/// if given, into `out`; returns its length.
pub fn write_ws_header(
    opcode: WsOpcode,
    payload_len: usize,
    mask: Option<[u8; 4]>,
    out: &mut [u8; MAX_WS_HEADER_LEN],
) -> usize {
    out[0] = 0x80 | opcode.code();
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    let mut at = if payload_len < 126 {
        // Shorter than 126, so it fits the 7 bits.
        out[1] = mask_bit | payload_len as u8;
        2
    } else if let Ok(n) = u16::try_from(payload_len) {
        out[1] = mask_bit | 126;
        out[2..4].copy_from_slice(&n.to_be_bytes());
        4
    } else {
        out[1] = mask_bit | 127;
        out[2..10].copy_from_slice(&(payload_len as u64).to_be_bytes());
        10
    };
    if let Some(m) = mask {
        out[at..at + 4].copy_from_slice(&m);
        at += 4;
    }
    at
}

/// Masks (or unmasks) `data` in place, `data` starting `offset` bytes into the payload.
pub fn apply_ws_mask(data: &mut [u8], mask: [u8; 4], offset: u64) {
    let start = (offset % 4) as usize;
    for (i, b) in data.iter_mut().enumerate() {
        *b ^= mask[(start + i) % 4];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(opcode: WsOpcode, len: usize, mask: Option<[u8; 4]>) -> Vec<u8> {
        let mut out = [0u8; MAX_WS_HEADER_LEN];
        let n = write_ws_header(opcode, len, mask, &mut out);
        out[..n].to_vec()
    }

    #[test]
    fn rfc_6455_examples() {
        // §5.7: a single-frame unmasked text "Hello" is 81 05 ...; binary is the same with 0x82.
        assert_eq!(header(WsOpcode::Binary, 5, None), [0x82, 0x05]);
        // Masked, key 37 fa 21 3d: "Hello" masks to 7f 9f 4d 51 58.
        let key = [0x37, 0xfa, 0x21, 0x3d];
        assert_eq!(
            header(WsOpcode::Binary, 5, Some(key)),
            [0x82, 0x85, 0x37, 0xfa, 0x21, 0x3d]
        );
        let mut hello = *b"Hello";
        apply_ws_mask(&mut hello, key, 0);
        assert_eq!(hello, [0x7f, 0x9f, 0x4d, 0x51, 0x58]);
        // Unmasking in two pieces gives the same as in one.
        let mut a = [0x7f, 0x9f];
        let mut b = [0x4d, 0x51, 0x58];
        apply_ws_mask(&mut a, key, 0);
        apply_ws_mask(&mut b, key, 2);
        assert_eq!([&a[..], &b[..]].concat(), b"Hello");
        // 256 bytes: 82 7E 0100; 64 KiB: 82 7F 0000000000010000.
        assert_eq!(
            header(WsOpcode::Binary, 256, None),
            [0x82, 0x7E, 0x01, 0x00]
        );
        assert_eq!(
            header(WsOpcode::Binary, 65536, None),
            [0x82, 0x7F, 0, 0, 0, 0, 0, 1, 0, 0]
        );
    }

    #[test]
    fn headers_read_back_and_only_whole_ones_count() {
        for (len, mask) in [
            (0, None),
            (125, Some([1, 2, 3, 4])),
            (126, None),
            (65535, Some([9, 9, 9, 9])),
            (65536, None),
            (MAX_WS_WRITE_PAYLOAD, Some([0, 0, 0, 1])),
        ] {
            let h = header(WsOpcode::Binary, len, mask);
            let reader = if mask.is_some() {
                WsRole::Server
            } else {
                WsRole::Client
            };
            for cut in 0..h.len() {
                assert_eq!(read_ws_header(&h[..cut], reader), Ok(None));
            }
            let got = read_ws_header(&h, reader).unwrap().unwrap();
            assert_eq!(
                got,
                WsFrameHeader {
                    fin: true,
                    opcode: WsOpcode::Binary,
                    mask,
                    payload_len: len as u64,
                    header_len: h.len(),
                }
            );
        }
    }

    #[test]
    fn what_a_peer_must_not_send_is_refused() {
        let server = WsRole::Server;
        let client = WsRole::Client;
        let m = [0x80 | 5, 1, 2, 3, 4];
        assert_eq!(read_ws_header(&[0x82, 5], server), Err(WsFrameError::Mask));
        assert_eq!(
            read_ws_header(&[0x82, 0x85], client),
            Err(WsFrameError::Mask)
        );
        assert_eq!(read_ws_header(&[0x81, 5], client), Err(WsFrameError::Text));
        assert_eq!(
            read_ws_header(&[0xC2, 5], client),
            Err(WsFrameError::Reserved(0x40))
        );
        assert_eq!(
            read_ws_header(&[0x83, 5], client),
            Err(WsFrameError::Opcode(3))
        );
        // Control frames: fragmented, or longer than 125.
        assert_eq!(
            read_ws_header(&[0x09, 0], client),
            Err(WsFrameError::Control)
        );
        assert_eq!(
            read_ws_header(&[0x89, 126], client),
            Err(WsFrameError::Control)
        );
        assert!(read_ws_header(&[[0x89].as_slice(), &m].concat(), server)
            .unwrap()
            .is_some());
        // Lengths: not in the shortest form, and one byte past the cap.
        assert_eq!(
            read_ws_header(&[0x82, 126, 0, 125], client),
            Err(WsFrameError::LongForm)
        );
        assert_eq!(
            read_ws_header(&[0x82, 127, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF], client),
            Err(WsFrameError::LongForm)
        );
        let at_cap = MAX_WS_PAYLOAD.to_be_bytes();
        let over = (MAX_WS_PAYLOAD + 1).to_be_bytes();
        assert!(
            read_ws_header(&[[0x82, 127].as_slice(), &at_cap].concat(), client)
                .unwrap()
                .is_some()
        );
        assert_eq!(
            read_ws_header(&[[0x82, 127].as_slice(), &over].concat(), client),
            Err(WsFrameError::TooLong(MAX_WS_PAYLOAD + 1))
        );
        let top = u64::MAX.to_be_bytes();
        assert_eq!(
            read_ws_header(&[[0x82, 127].as_slice(), &top].concat(), client),
            Err(WsFrameError::TooLong(u64::MAX))
        );
    }
}
