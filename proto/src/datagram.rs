//! Datagrams on a byte stream. A UDP flow travels on a substream of its own, and a substream is a
//! byte stream: each datagram is written as a big-endian `u16` length and that many bytes, so
//! its boundaries survive the trip exactly, an empty datagram included.
//!
//! The reader takes bytes only up to the end of the datagram it is assembling, so it never holds
//! more than one datagram ([`MAX_DATAGRAM_LEN`] bytes), and a declared length over the cap is
//! refused from the two bytes that declare it.

/// The largest datagram a flow carries: the largest UDP payload over IPv4 (65,535 bytes of IP
/// packet, less 20 of IP header and 8 of UDP header). A length above it is a protocol error.
pub const MAX_DATAGRAM_LEN: usize = 65_507;

/// The length prefix of each datagram on the stream.
pub const DATAGRAM_PREFIX_LEN: usize = 2;

/// Why a datagram cannot be written or read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DatagramError {
    /// A datagram (to write) or a declared length (read) above [`MAX_DATAGRAM_LEN`].
    #[error("a datagram of {0} bytes exceeds the limit of {MAX_DATAGRAM_LEN}")]
    TooLong(usize),
}

/// Appends `payload` to `out` as one framed datagram.
pub fn encode_datagram(payload: &[u8], out: &mut Vec<u8>) -> Result<(), DatagramError> {
    if payload.len() > MAX_DATAGRAM_LEN {
        return Err(DatagramError::TooLong(payload.len()));
    }
    let len = u16::try_from(payload.len()).expect("MAX_DATAGRAM_LEN fits in u16");
    out.reserve(DATAGRAM_PREFIX_LEN + payload.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(payload);
    Ok(())
}

/// Assembles datagrams from the bytes of a stream, one at a time.
#[derive(Debug, Default)]
pub struct DatagramReader {
    /// The length prefix, as far as it has arrived.
    prefix: [u8; DATAGRAM_PREFIX_LEN],
    prefix_have: usize,
    /// The datagram being assembled, once its length is known (capacity: exactly that length).
    body: Option<Vec<u8>>,
    /// Set after an error: the stream is not datagrams any more, and nothing more is read.
    failed: Option<DatagramError>,
}

impl DatagramReader {
    /// A reader at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes bytes from the front of `input`, never past the end of the datagram being
    /// assembled. Returns how many it took and the datagram they completed, if any; call again
    /// with the rest of `input` until it is all taken. After an error every call returns it.
    pub fn feed(&mut self, input: &[u8]) -> Result<(usize, Option<Vec<u8>>), DatagramError> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        let mut taken = 0;
        if self.body.is_none() {
            let n = (DATAGRAM_PREFIX_LEN - self.prefix_have).min(input.len());
            self.prefix[self.prefix_have..self.prefix_have + n].copy_from_slice(&input[..n]);
            self.prefix_have += n;
            taken += n;
            if self.prefix_have < DATAGRAM_PREFIX_LEN {
                return Ok((taken, None));
            }
            let len = usize::from(u16::from_be_bytes(self.prefix));
            if len > MAX_DATAGRAM_LEN {
                let e = DatagramError::TooLong(len);
                self.failed = Some(e);
                return Err(e);
            }
            self.body = Some(Vec::with_capacity(len));
        }
        let body = self.body.as_mut().expect("the length is known");
        let want = body.capacity() - body.len();
        let n = want.min(input.len() - taken);
        body.extend_from_slice(&input[taken..taken + n]);
        taken += n;
        if body.len() < body.capacity() {
            return Ok((taken, None));
        }
        self.prefix_have = 0;
        Ok((taken, self.body.take()))
    }

    /// Bytes of an unfinished datagram held (its prefix included), for a stream that ends: a
    /// stream that ends with some is cut in the middle of a datagram.
    pub fn pending(&self) -> usize {
        self.prefix_have + self.body.as_ref().map_or(0, Vec::len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(r: &mut DatagramReader, mut input: &[u8]) -> Result<Vec<Vec<u8>>, DatagramError> {
        let mut out = Vec::new();
        while !input.is_empty() {
            let (n, d) = r.feed(input)?;
            assert!(n > 0, "progress");
            out.extend(d);
            input = &input[n..];
        }
        Ok(out)
    }

    #[test]
    fn boundaries_survive_whole_and_byte_by_byte() {
        let sizes = [0, 1, 2, 300, 0, MAX_DATAGRAM_LEN];
        let datagrams: Vec<Vec<u8>> = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| vec![i as u8; n])
            .collect();
        let mut stream = Vec::new();
        for d in &datagrams {
            encode_datagram(d, &mut stream).unwrap();
        }
        assert_eq!(
            read_all(&mut DatagramReader::new(), &stream).unwrap(),
            datagrams
        );
        let mut r = DatagramReader::new();
        let mut got = Vec::new();
        for b in stream.chunks(1) {
            got.extend(read_all(&mut r, b).unwrap());
        }
        assert_eq!(got, datagrams);
        assert_eq!(r.pending(), 0);
    }

    #[test]
    fn an_oversized_datagram_is_refused_on_both_ends() {
        let mut out = Vec::new();
        assert_eq!(
            encode_datagram(&vec![0; MAX_DATAGRAM_LEN + 1], &mut out),
            Err(DatagramError::TooLong(MAX_DATAGRAM_LEN + 1))
        );
        assert!(out.is_empty());
        let mut r = DatagramReader::new();
        assert_eq!(r.feed(&[0xff]), Ok((1, None)));
        assert_eq!(r.feed(&[0xff, 0, 0]), Err(DatagramError::TooLong(65_535)));
        // The stream stays refused.
        assert_eq!(r.feed(&[0, 0]), Err(DatagramError::TooLong(65_535)));
    }

    #[test]
    fn a_reader_takes_nothing_past_its_datagram() {
        let mut r = DatagramReader::new();
        assert_eq!(
            r.feed(&[0, 1, b'a', 0, 1, b'b']),
            Ok((3, Some(b"a".to_vec())))
        );
        assert_eq!(r.feed(&[0, 3, b'x']), Ok((3, None)));
        assert_eq!(r.pending(), 3);
    }
}
