//! The PROXY protocol header (HAProxy, versions 1 and 2), which the client writes to a local service
//! before the visitor's bytes so that the service learns the visitor's real address.
//!
//! Only the `PROXY` command is produced, over TCP (versions 1 and 2) or UDP (version 2 only, which
//! alone knows datagrams: [`proxy_header_udp`] goes in front of each datagram). Source and destination must be of one family:
//! IPv4-mapped IPv6 addresses are taken as IPv4 first, and if the families still differ both are
//! written as IPv6 (IPv4 mapped into IPv6).

use std::net::{IpAddr, SocketAddr};

use crate::access::canonical;

/// The 12-byte signature that starts every version 2 header.
pub const PROXY_V2_SIGNATURE: [u8; 12] = [
    0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
];

/// Which PROXY protocol version a service wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyVersion {
    /// The text header: `PROXY TCP4 src dst sport dport\r\n`.
    V1,
    /// The binary header.
    V2,
}

impl std::str::FromStr for ProxyVersion {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "v1" | "1" => Ok(ProxyVersion::V1),
            "v2" | "2" => Ok(ProxyVersion::V2),
            other => Err(format!(
                "{other:?} is not a PROXY protocol version (v1 or v2)"
            )),
        }
    }
}

/// Both addresses in one family (see the module documentation).
fn same_family(src: SocketAddr, dst: SocketAddr) -> (SocketAddr, SocketAddr) {
    let src = SocketAddr::new(canonical(src.ip()), src.port());
    let dst = SocketAddr::new(canonical(dst.ip()), dst.port());
    if src.is_ipv4() == dst.is_ipv4() {
        return (src, dst);
    }
    let v6 = |a: SocketAddr| match a.ip() {
        IpAddr::V4(v4) => SocketAddr::new(IpAddr::V6(v4.to_ipv6_mapped()), a.port()),
        v6 => SocketAddr::new(v6, a.port()),
    };
    (v6(src), v6(dst))
}

/// The version 2 header for a datagram from `src` (the visitor) to `dst` (the address it sent
/// to): as the TCP one, with the transport nibble DGRAM.
pub fn proxy_header_udp(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let mut out = proxy_header(ProxyVersion::V2, src, dst);
    // Byte 13 is family << 4 | transport; STREAM (1) becomes DGRAM (2).
    out[13] = (out[13] & 0xF0) | 0x02;
    out
}

/// The header for a connection from `src` (the visitor) to `dst` (the address it connected to).
pub fn proxy_header(version: ProxyVersion, src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let (src, dst) = same_family(src, dst);
    match version {
        ProxyVersion::V1 => format!(
            "PROXY {} {} {} {} {}\r\n",
            if src.is_ipv4() { "TCP4" } else { "TCP6" },
            src.ip(),
            dst.ip(),
            src.port(),
            dst.port()
        )
        .into_bytes(),
        ProxyVersion::V2 => {
            let mut out = PROXY_V2_SIGNATURE.to_vec();
            out.push(0x21); // version 2, command PROXY
            match (src.ip(), dst.ip()) {
                (IpAddr::V4(s), IpAddr::V4(d)) => {
                    out.push(0x11); // AF_INET, STREAM
                    out.extend_from_slice(&12u16.to_be_bytes());
                    out.extend_from_slice(&s.octets());
                    out.extend_from_slice(&d.octets());
                }
                (s, d) => {
                    let v6 = |ip: IpAddr| match ip {
                        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
                        IpAddr::V6(v6) => v6.octets(),
                    };
                    out.push(0x21); // AF_INET6, STREAM
                    out.extend_from_slice(&36u16.to_be_bytes());
                    out.extend_from_slice(&v6(s));
                    out.extend_from_slice(&v6(d));
                }
            }
            out.extend_from_slice(&src.port().to_be_bytes());
            out.extend_from_slice(&dst.port().to_be_bytes());
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn v1_matches_the_specification_examples() {
        // proxy-protocol.txt, section 2.1.
        assert_eq!(
            proxy_header(
                ProxyVersion::V1,
                a("255.255.255.255:65535"),
                a("255.255.255.255:65535")
            ),
            b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n"
        );
        assert_eq!(
            proxy_header(
                ProxyVersion::V1,
                a("192.168.0.1:56324"),
                a("192.168.0.11:443")
            ),
            b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"
        );
        let worst = proxy_header(
            ProxyVersion::V1,
            a("[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535"),
            a("[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535"),
        );
        assert_eq!(
            worst,
            b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n"
        );
        // The specification's upper bound for a v1 header.
        assert!(worst.len() <= 107);
    }

    #[test]
    fn the_udp_header_says_dgram_and_is_the_tcp_one_otherwise() {
        let (s, d) = (a("192.0.2.1:5353"), a("198.51.100.2:53"));
        let tcp = proxy_header(ProxyVersion::V2, s, d);
        let udp = proxy_header_udp(s, d);
        assert_eq!(udp[13], 0x12, "AF_INET, DGRAM");
        assert_eq!(udp[..13], tcp[..13]);
        assert_eq!(udp[14..], tcp[14..]);
        let udp6 = proxy_header_udp(a("[2001:db8::1]:1"), a("[2001:db8::2]:2"));
        assert_eq!(udp6[13], 0x22, "AF_INET6, DGRAM");
        // The server side reads it back with the same addresses.
        let read = crate::read_proxy_header(&udp).unwrap().unwrap();
        assert_eq!(read.len, udp.len());
        assert_eq!(read.addrs, Some((s, d)));
    }

    #[test]
    fn v2_layout_for_ipv4_and_ipv6() {
        let h = proxy_header(
            ProxyVersion::V2,
            a("192.168.0.1:56324"),
            a("192.168.0.11:443"),
        );
        let mut want = PROXY_V2_SIGNATURE.to_vec();
        want.extend_from_slice(&[0x21, 0x11, 0x00, 0x0C]);
        want.extend_from_slice(&[192, 168, 0, 1, 192, 168, 0, 11]);
        want.extend_from_slice(&56324u16.to_be_bytes());
        want.extend_from_slice(&443u16.to_be_bytes());
        assert_eq!(h, want);
        let h = proxy_header(
            ProxyVersion::V2,
            a("[2001:db8::1]:1000"),
            a("[2001:db8::2]:22"),
        );
        assert_eq!(&h[12..16], &[0x21, 0x21, 0x00, 0x24]);
        assert_eq!(h.len(), 16 + 36);
        assert_eq!(
            &h[16..32],
            &"2001:db8::1"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets()
        );
        assert_eq!(&h[48..50], &1000u16.to_be_bytes());
        assert_eq!(&h[50..52], &22u16.to_be_bytes());
    }

    #[test]
    fn mixed_and_mapped_families() {
        // A mapped visitor on a dual-stack socket is an IPv4 visitor.
        assert_eq!(
            proxy_header(
                ProxyVersion::V1,
                a("[::ffff:203.0.113.7]:4000"),
                a("192.0.2.1:80")
            ),
            b"PROXY TCP4 203.0.113.7 192.0.2.1 4000 80\r\n"
        );
        // Truly mixed: both written as IPv6.
        assert_eq!(
            proxy_header(
                ProxyVersion::V1,
                a("203.0.113.7:4000"),
                a("[2001:db8::1]:80")
            ),
            b"PROXY TCP6 ::ffff:203.0.113.7 2001:db8::1 4000 80\r\n"
        );
    }
}
