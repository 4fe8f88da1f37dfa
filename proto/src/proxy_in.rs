//! Reading a PROXY protocol header (versions 1 and 2) that a load balancer in front of the server
//! puts before a client's first TLS byte, so the server sees the client's real address.
//!
//! The server reads one only from addresses it was told to trust, and from those it requires one:
//! guessing whether a header is present would let anyone who can reach the listener directly claim
//! any address (the specification forbids guessing for that reason). [`read_proxy_header`] is a pure
//! function over the bytes received so far: it answers "need more", "here is the header and its
//! length", or a typed error, and never looks past [`MAX_PROXY_HEADER_LEN`] bytes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::proxy::PROXY_V2_SIGNATURE;

/// Longest version 1 header, `\r\n` included (the specification's own bound).
pub const MAX_PROXY_V1_LEN: usize = 107;

/// Longest version 2 header accepted: the 16 fixed bytes and up to 1,024 bytes of addresses and
/// TLVs. A balancer's TLVs (ALPN, authority, unique ID, TLS facts) fit in a few hundred bytes; a
/// longer declared length is refused before any of it is buffered.
pub const MAX_PROXY_V2_LEN: usize = 16 + 1024;

/// The most bytes [`read_proxy_header`] ever needs to see.
pub const MAX_PROXY_HEADER_LEN: usize = MAX_PROXY_V2_LEN;

/// What a complete header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxiedAddrs {
    /// The client's address and the address it connected to, or `None` when the balancer speaks
    /// for itself (v2 `LOCAL`, v1 `UNKNOWN`, or an address family other than IP, such as a health
    /// check): the connection is then taken as coming from the balancer.
    pub addrs: Option<(SocketAddr, SocketAddr)>,
    /// The header's length: the connection's own bytes start here.
    pub len: usize,
}

/// Why the bytes are not an acceptable PROXY header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyHeaderError {
    /// Neither signature: the peer did not send a PROXY header at all.
    #[error("the connection does not start with a PROXY protocol header")]
    Missing,
    /// A version 1 line longer than the specification allows.
    #[error("PROXY v1 header longer than {MAX_PROXY_V1_LEN} bytes")]
    V1TooLong,
    /// A version 1 line that does not parse.
    #[error("malformed PROXY v1 header: {0}")]
    V1Syntax(&'static str),
    /// A version 2 header declaring more bytes than [`MAX_PROXY_V2_LEN`].
    #[error("PROXY v2 header of {0} bytes is longer than the {MAX_PROXY_V2_LEN} accepted")]
    V2TooLong(usize),
    /// A version 2 header with a version other than 2 or an unknown command.
    #[error("PROXY v2 header with version/command byte {0:#04x}")]
    V2Command(u8),
    /// A version 2 address block shorter than its family needs.
    #[error("PROXY v2 address block of {0} bytes is too short for its family")]
    V2Short(usize),
}

/// Reads the header at the start of `buf`: `Ok(None)` while more bytes are needed.
pub fn read_proxy_header(buf: &[u8]) -> Result<Option<ProxiedAddrs>, ProxyHeaderError> {
    const V1_PREFIX: &[u8] = b"PROXY ";
    let n = buf.len().min(PROXY_V2_SIGNATURE.len());
    if buf[..n] == PROXY_V2_SIGNATURE[..n] {
        return if n < PROXY_V2_SIGNATURE.len() {
            Ok(None)
        } else {
            read_v2(buf)
        };
    }
    let n = buf.len().min(V1_PREFIX.len());
    if buf[..n] == V1_PREFIX[..n] {
        return read_v1(buf);
    }
    Err(ProxyHeaderError::Missing)
}

fn read_v1(buf: &[u8]) -> Result<Option<ProxiedAddrs>, ProxyHeaderError> {
    let window = &buf[..buf.len().min(MAX_PROXY_V1_LEN)];
    let Some(end) = window.windows(2).position(|w| w == b"\r\n") else {
        return if buf.len() >= MAX_PROXY_V1_LEN {
            Err(ProxyHeaderError::V1TooLong)
        } else {
            Ok(None)
        };
    };
    let len = end + 2;
    let line =
        std::str::from_utf8(&buf[..end]).map_err(|_| ProxyHeaderError::V1Syntax("not ASCII"))?;
    let mut words = line.split(' ');
    words.next(); // "PROXY", matched by the caller
    let family = words
        .next()
        .ok_or(ProxyHeaderError::V1Syntax("no family"))?;
    if family == "UNKNOWN" {
        // The rest of the line is to be ignored.
        return Ok(Some(ProxiedAddrs { addrs: None, len }));
    }
    let v4 = match family {
        "TCP4" => true,
        "TCP6" => false,
        _ => {
            return Err(ProxyHeaderError::V1Syntax(
                "family is not TCP4, TCP6 or UNKNOWN",
            ))
        }
    };
    let mut next = |what| words.next().ok_or(ProxyHeaderError::V1Syntax(what));
    let (src, dst) = (next("no source address")?, next("no destination address")?);
    let (sport, dport) = (next("no source port")?, next("no destination port")?);
    if words.next().is_some() {
        return Err(ProxyHeaderError::V1Syntax("extra fields"));
    }
    let ip = |s: &str| -> Result<IpAddr, ProxyHeaderError> {
        let ip = if v4 {
            s.parse::<Ipv4Addr>().map(IpAddr::V4)
        } else {
            s.parse::<Ipv6Addr>().map(IpAddr::V6)
        };
        ip.map_err(|_| ProxyHeaderError::V1Syntax("address does not match its family"))
    };
    let port = |s: &str| -> Result<u16, ProxyHeaderError> {
        // Decimal digits only, no sign and no leading zero, as the specification writes them.
        let ok = !s.is_empty()
            && s.len() <= 5
            && s.bytes().all(|b| b.is_ascii_digit())
            && (s == "0" || !s.starts_with('0'));
        ok.then(|| s.parse().ok())
            .flatten()
            .ok_or(ProxyHeaderError::V1Syntax(
                "port is not a number from 0 to 65535",
            ))
    };
    let src = SocketAddr::new(ip(src)?, port(sport)?);
    let dst = SocketAddr::new(ip(dst)?, port(dport)?);
    Ok(Some(ProxiedAddrs {
        addrs: Some((src, dst)),
        len,
    }))
}

fn read_v2(buf: &[u8]) -> Result<Option<ProxiedAddrs>, ProxyHeaderError> {
    if buf.len() < 16 {
        return Ok(None);
    }
    let declared = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    let len = 16 + declared;
    if len > MAX_PROXY_V2_LEN {
        return Err(ProxyHeaderError::V2TooLong(len));
    }
    let local = match buf[12] {
        0x20 => true,
        0x21 => false,
        other => return Err(ProxyHeaderError::V2Command(other)),
    };
    if buf.len() < len {
        return Ok(None);
    }
    let block = &buf[16..len];
    // The high nibble is the address family; the low one (stream or datagram) does not change
    // where the addresses are.
    let addrs = match buf[13] >> 4 {
        0x1 => {
            if block.len() < 12 {
                return Err(ProxyHeaderError::V2Short(block.len()));
            }
            let ip = |at: usize| {
                IpAddr::V4(Ipv4Addr::new(
                    block[at],
                    block[at + 1],
                    block[at + 2],
                    block[at + 3],
                ))
            };
            let port = |at: usize| u16::from_be_bytes([block[at], block[at + 1]]);
            Some((
                SocketAddr::new(ip(0), port(8)),
                SocketAddr::new(ip(4), port(10)),
            ))
        }
        0x2 => {
            if block.len() < 36 {
                return Err(ProxyHeaderError::V2Short(block.len()));
            }
            let ip = |at: usize| {
                let mut o = [0u8; 16];
                o.copy_from_slice(&block[at..at + 16]);
                IpAddr::V6(Ipv6Addr::from(o))
            };
            let port = |at: usize| u16::from_be_bytes([block[at], block[at + 1]]);
            Some((
                SocketAddr::new(ip(0), port(32)),
                SocketAddr::new(ip(16), port(34)),
            ))
        }
        // AF_UNSPEC, AF_UNIX or unknown: the connection is the balancer's own.
        _ => None,
    };
    Ok(Some(ProxiedAddrs {
        addrs: if local { None } else { addrs },
        len,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::{proxy_header, ProxyVersion};

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// Every prefix of a complete header asks for more; the whole one parses.
    fn complete_only_at_end(h: &[u8]) -> ProxiedAddrs {
        for cut in 0..h.len() {
            assert_eq!(
                read_proxy_header(&h[..cut]),
                Ok(None),
                "prefix of {cut} bytes"
            );
        }
        read_proxy_header(h).unwrap().unwrap()
    }

    #[test]
    fn reads_what_the_writer_writes() {
        for v in [ProxyVersion::V1, ProxyVersion::V2] {
            for (s, d) in [
                ("192.168.0.1:56324", "192.168.0.11:443"),
                ("[2001:db8::1]:1000", "[2001:db8::2]:22"),
                ("255.255.255.255:65535", "0.0.0.0:0"),
            ] {
                let mut h = proxy_header(v, a(s), a(d));
                let len = h.len();
                h.extend_from_slice(b"\x16\x03\x01 the TLS bytes");
                let got = complete_only_at_end(&h[..len]);
                assert_eq!(got.addrs, Some((a(s), a(d))));
                assert_eq!(read_proxy_header(&h), Ok(Some(got)));
                assert_eq!(got.len, len);
            }
        }
    }

    #[test]
    fn v1_unknown_and_refusals() {
        let got = complete_only_at_end(b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n");
        assert_eq!(got.addrs, None);
        assert_eq!(
            read_proxy_header(b"PROXY UNKNOWN\r\n")
                .unwrap()
                .unwrap()
                .len,
            15
        );
        let bad: &[&[u8]] = &[
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
            b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n",
            b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
            b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 \xff\r\n",
        ];
        for b in bad {
            assert!(
                matches!(read_proxy_header(b), Err(ProxyHeaderError::V1Syntax(_))),
                "{:?}",
                String::from_utf8_lossy(b)
            );
        }
        // One byte past the bound without a line end.
        let mut long = b"PROXY UNKNOWN ".to_vec();
        long.resize(MAX_PROXY_V1_LEN - 2, b'x');
        assert_eq!(read_proxy_header(&long), Ok(None));
        long.extend_from_slice(b"\r\n");
        assert!(read_proxy_header(&long).unwrap().is_some());
        long.truncate(MAX_PROXY_V1_LEN - 2);
        long.extend_from_slice(b"xx");
        assert_eq!(read_proxy_header(&long), Err(ProxyHeaderError::V1TooLong));
    }

    #[test]
    fn no_header_is_refused_from_the_first_byte() {
        assert_eq!(read_proxy_header(b""), Ok(None));
        assert_eq!(read_proxy_header(b"\x16"), Err(ProxyHeaderError::Missing));
        assert_eq!(read_proxy_header(b"PROXX"), Err(ProxyHeaderError::Missing));
        assert_eq!(
            read_proxy_header(b"\r\n\r\n\x00\r\nQUIX"),
            Err(ProxyHeaderError::Missing)
        );
    }

    fn v2(cmd: u8, fam: u8, block: &[u8]) -> Vec<u8> {
        let mut h = PROXY_V2_SIGNATURE.to_vec();
        h.extend_from_slice(&[cmd, fam]);
        h.extend_from_slice(&u16::try_from(block.len()).unwrap().to_be_bytes());
        h.extend_from_slice(block);
        h
    }

    #[test]
    fn v2_local_unspec_tlvs_and_caps() {
        // LOCAL (a balancer's health check) carries no client address, whatever follows.
        let got = complete_only_at_end(&v2(0x20, 0x11, &[1; 12]));
        assert_eq!(got.addrs, None);
        assert_eq!(complete_only_at_end(&v2(0x21, 0x00, &[])).addrs, None);
        assert_eq!(complete_only_at_end(&v2(0x21, 0x31, &[0; 216])).addrs, None);
        // TLVs after the addresses are skipped.
        let mut block = vec![10, 0, 0, 1, 10, 0, 0, 2, 0, 80, 1, 187];
        block.extend_from_slice(&[0x01, 0x00, 0x02, b'h', b'2']);
        let got = complete_only_at_end(&v2(0x21, 0x11, &block));
        assert_eq!(got.addrs, Some((a("10.0.0.1:80"), a("10.0.0.2:443"))));
        assert_eq!(got.len, 16 + 17);
        // The cap, and one byte past it, judged from the fixed part alone.
        let at_cap = v2(0x21, 0x11, &vec![0; MAX_PROXY_V2_LEN - 16]);
        assert!(read_proxy_header(&at_cap).unwrap().is_some());
        let over = v2(0x21, 0x11, &vec![0; MAX_PROXY_V2_LEN - 15]);
        assert_eq!(
            read_proxy_header(&over[..16]),
            Err(ProxyHeaderError::V2TooLong(MAX_PROXY_V2_LEN + 1))
        );
        assert_eq!(
            read_proxy_header(&v2(0x11, 0x11, &[0; 12])),
            Err(ProxyHeaderError::V2Command(0x11))
        );
        assert_eq!(
            read_proxy_header(&v2(0x22, 0x11, &[0; 12])),
            Err(ProxyHeaderError::V2Command(0x22))
        );
        assert_eq!(
            read_proxy_header(&v2(0x21, 0x11, &[0; 11])),
            Err(ProxyHeaderError::V2Short(11))
        );
        assert_eq!(
            read_proxy_header(&v2(0x21, 0x21, &[0; 35])),
            Err(ProxyHeaderError::V2Short(35))
        );
    }
}
