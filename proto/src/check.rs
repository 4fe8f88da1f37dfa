//! Invariants of the codec, checked on any input. The fuzz targets call these, and the test suite
//! replays every committed corpus and crash input through them, so a regression is caught on
//! stable Rust without a fuzzer. Each function panics when an invariant is broken.

use crate::{decode, encode_to_vec, FrameDecoder, Message, MAX_FRAME_LEN};

/// Bytes of the length prefix.
const LEN_PREFIX: usize = 2;

/// `decode` on arbitrary bytes: never panics; consumes no more than it was given and no more than
/// one capped frame; "need more bytes" only when the input is shorter than the frame it declares
/// and the type byte (if present) is known; whatever decodes re-encodes to exactly the bytes read.
pub fn decode_arbitrary(data: &[u8]) {
    match decode(data) {
        Ok(Some((msg, used))) => {
            assert!(used <= data.len(), "consumed more than the input");
            assert!(
                used <= LEN_PREFIX + MAX_FRAME_LEN,
                "consumed more than one capped frame"
            );
            assert_eq!(
                encode_to_vec(&msg),
                &data[..used],
                "a decoded frame must re-encode to the same bytes"
            );
        }
        Ok(None) => {
            if data.len() >= LEN_PREFIX {
                let declared = usize::from(u16::from_be_bytes([data[0], data[1]]));
                assert!(
                    (1..=MAX_FRAME_LEN).contains(&declared),
                    "need-more-bytes for an impossible length {declared}"
                );
                assert!(
                    data.len() < LEN_PREFIX + declared,
                    "need-more-bytes although the whole frame is there"
                );
            }
        }
        Err(e) => {
            // Once invalid, always invalid: more bytes cannot repair it.
            let mut longer = data.to_vec();
            longer.extend_from_slice(&[0u8; 8]);
            assert!(
                decode(&longer).is_err(),
                "{e} became valid after more bytes arrived"
            );
        }
    }
    // The streaming decoder agrees with `decode` and never buffers more than one frame beyond
    // what it consumed.
    let mut d = FrameDecoder::new();
    let mut offset = 0;
    for chunk in data.chunks(7) {
        d.push(chunk);
        loop {
            match d.next_message() {
                Ok(Some(m)) => {
                    let (expected, used) = decode(&data[offset..])
                        .expect("decode agrees on validity")
                        .expect("decode agrees on completeness");
                    assert_eq!(m, expected);
                    offset += used;
                }
                Ok(None) => break,
                Err(_) => {
                    assert!(decode(&data[offset..]).is_err(), "decoders disagree");
                    return;
                }
            }
        }
        assert!(d.buffered() <= LEN_PREFIX + MAX_FRAME_LEN + chunk.len());
    }
}

/// A message round-trips: decode(encode(m)) == m, all bytes consumed, re-encoding identical, every
/// strict prefix is "need more bytes".
pub fn round_trip(msg: &Message) {
    let bytes = encode_to_vec(msg);
    assert!(bytes.len() <= LEN_PREFIX + MAX_FRAME_LEN);
    let (back, used) = decode(&bytes)
        .unwrap_or_else(|e| panic!("{msg:?} encodes to an invalid frame: {e}"))
        .unwrap_or_else(|| panic!("{msg:?} encodes to an incomplete frame"));
    assert_eq!(&back, msg);
    assert_eq!(used, bytes.len());
    assert_eq!(encode_to_vec(&back), bytes);
    for cut in 0..bytes.len() {
        assert_eq!(
            decode(&bytes[..cut]),
            Ok(None::<(Message, usize)>),
            "prefix of {cut} bytes"
        );
    }
}

/// A sequence of valid messages, split at the given points, decodes to the same messages as the
/// whole stream at once.
pub fn streaming(msgs: &[Message], cuts: &[usize]) {
    let mut stream = Vec::new();
    for m in msgs {
        stream.extend(encode_to_vec(m));
    }
    let mut points: Vec<usize> = cuts
        .iter()
        .map(|c| {
            if stream.is_empty() {
                0
            } else {
                c % (stream.len() + 1)
            }
        })
        .collect();
    points.sort_unstable();
    points.push(stream.len());
    let mut d = FrameDecoder::new();
    let mut got = Vec::new();
    let mut start = 0;
    for p in points {
        d.push(&stream[start..p]);
        start = p;
        while let Some(m) = d.next_message().expect("a valid stream never fails") {
            got.push(m);
        }
        assert!(d.buffered() <= LEN_PREFIX + MAX_FRAME_LEN + stream.len());
    }
    assert_eq!(got, msgs);
    assert_eq!(d.buffered(), 0);
}

/// Input of the streaming target: messages and the points at which their stream is split.
#[cfg(feature = "arbitrary")]
#[derive(Debug, arbitrary::Arbitrary)]
pub struct StreamingInput {
    /// The messages, in order (at most 64 are used).
    pub msgs: Vec<Message>,
    /// Split points, taken modulo the stream's length (at most 64 are used).
    pub cuts: Vec<usize>,
}

#[cfg(feature = "arbitrary")]
impl StreamingInput {
    /// Runs [`streaming`] on this input.
    pub fn check(&self) {
        let msgs = &self.msgs[..self.msgs.len().min(64)];
        let cuts = &self.cuts[..self.cuts.len().min(64)];
        streaming(msgs, cuts);
    }
}

/// `read_proxy_header` on arbitrary bytes: never panics; "need more" only below the cap; a
/// header is no longer than the input or the cap, and is read the same from exactly its own bytes
/// (nothing after it is looked at); an error stays an error however many bytes follow.
pub fn proxy_header_arbitrary(data: &[u8]) {
    use crate::{read_proxy_header, MAX_PROXY_HEADER_LEN};
    match read_proxy_header(data) {
        Ok(Some(h)) => {
            assert!(h.len <= data.len(), "a header longer than the input");
            assert!(
                h.len <= MAX_PROXY_HEADER_LEN,
                "a header longer than the cap"
            );
            assert_eq!(
                read_proxy_header(&data[..h.len]),
                Ok(Some(h)),
                "the bytes after a header changed it"
            );
        }
        Ok(None) => assert!(
            data.len() < MAX_PROXY_HEADER_LEN,
            "need-more-bytes at {} bytes, past the cap",
            data.len()
        ),
        Err(e) => {
            let mut longer = data.to_vec();
            longer.extend_from_slice(b"\r\n\r\n\0\0\0\0");
            assert!(
                read_proxy_header(&longer).is_err(),
                "{e} became valid after more bytes arrived"
            );
        }
    }
}

/// `read_ws_header` on arbitrary bytes, as both ends: never panics; "need more" only below
/// [`MAX_WS_HEADER_LEN`](crate::MAX_WS_HEADER_LEN) bytes; a header read is within the input and
/// the caps, and writing it again (same opcode, length and mask) gives the same bytes.
pub fn ws_header_arbitrary(data: &[u8]) {
    use crate::{read_ws_header, write_ws_header, WsRole, MAX_WS_HEADER_LEN, MAX_WS_PAYLOAD};
    for role in [WsRole::Client, WsRole::Server] {
        match read_ws_header(data, role) {
            Ok(Some(h)) => {
                assert!(h.header_len <= data.len() && h.header_len <= MAX_WS_HEADER_LEN);
                assert!(h.payload_len <= MAX_WS_PAYLOAD);
                assert!(!h.opcode.is_control() || (h.fin && h.payload_len <= 125));
                if h.fin {
                    let mut out = [0u8; MAX_WS_HEADER_LEN];
                    let len = usize::try_from(h.payload_len).expect("capped below usize");
                    let n = write_ws_header(h.opcode, len, h.mask, &mut out);
                    assert_eq!(
                        &out[..n],
                        &data[..h.header_len],
                        "a header reads back as written"
                    );
                }
            }
            Ok(None) => assert!(
                data.len() < MAX_WS_HEADER_LEN,
                "need-more past the longest header"
            ),
            Err(_) => {}
        }
    }
}

/// The datagram reader on arbitrary bytes: the first byte sets a chunk size, the rest is the
/// stream. Read whole and read in chunks, it gives the same datagrams and the same error; it never
/// panics, holds at most one datagram, and the datagrams written again give back exactly the bytes
/// it took.
pub fn datagrams_arbitrary(data: &[u8]) {
    use crate::{encode_datagram, DatagramReader, MAX_DATAGRAM_LEN};
    let Some((&chunk, stream)) = data.split_first() else {
        return;
    };
    let read = |chunk: usize| {
        let mut r = DatagramReader::new();
        let (mut got, mut err) = (Vec::new(), None);
        'chunks: for piece in stream.chunks(chunk.max(1)) {
            let mut piece = piece;
            while !piece.is_empty() {
                match r.feed(piece) {
                    Ok((n, d)) => {
                        assert!(
                            n > 0 && n <= piece.len(),
                            "a feed takes some of what it gets"
                        );
                        if let Some(d) = d {
                            assert!(d.len() <= MAX_DATAGRAM_LEN);
                            got.push(d);
                        }
                        piece = &piece[n..];
                    }
                    Err(e) => {
                        err = Some(e);
                        break 'chunks;
                    }
                }
            }
            assert!(r.pending() <= 2 + MAX_DATAGRAM_LEN);
        }
        (got, err)
    };
    let whole = read(stream.len());
    let chunked = read(usize::from(chunk));
    assert_eq!(whole.0, chunked.0, "chunking changes no datagram");
    assert_eq!(whole.1, chunked.1, "chunking changes no error");
    let mut again = Vec::new();
    for d in &whole.0 {
        encode_datagram(d, &mut again).expect("a datagram read is within the cap");
    }
    assert_eq!(
        &again[..],
        &stream[..again.len()],
        "datagrams write back as read"
    );
}
