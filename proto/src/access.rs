//! CIDR rules that say which visitor addresses may reach a service.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Rules per list at most, so a Register frame stays far below the frame cap.
pub const MAX_RULES: usize = 64;

/// An address block: an address with all bits past the prefix zero, and the prefix length.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

/// Why a CIDR rule is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    /// The prefix is longer than the address.
    #[error("prefix /{prefix} is longer than the address ({max} bits)")]
    PrefixTooLong {
        /// The prefix given.
        prefix: u8,
        /// Bits in the address.
        max: u8,
    },
    /// Bits past the prefix are set (on the wire, where every block has one encoding).
    #[error("{0} has bits set past its prefix")]
    HostBits(String),
    /// The text is not `ADDRESS` or `ADDRESS/PREFIX`.
    #[error("{0:?} is not ADDRESS or ADDRESS/PREFIX")]
    Syntax(String),
}

fn bits(addr: IpAddr) -> u8 {
    if addr.is_ipv4() {
        32
    } else {
        128
    }
}

fn mask(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let m = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(a) & m))
        }
        IpAddr::V6(a) => {
            let m = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(a) & m))
        }
    }
}

/// An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) as the IPv4 address it stands for.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

impl Cidr {
    /// The block of `addr` with `prefix` bits; bits past the prefix are cleared. An IPv4-mapped
    /// IPv6 block of prefix 96 or more becomes the IPv4 block it stands for.
    pub fn new(addr: IpAddr, prefix: u8) -> Result<Self, CidrError> {
        let max = bits(addr);
        if prefix > max {
            return Err(CidrError::PrefixTooLong { prefix, max });
        }
        let (addr, prefix) = match addr {
            IpAddr::V6(v6) if prefix >= 96 && v6.to_ipv4_mapped().is_some() => {
                (canonical(addr), prefix - 96)
            }
            _ => (addr, prefix),
        };
        Ok(Cidr {
            addr: mask(addr, prefix),
            prefix,
        })
    }

    /// Like [`Cidr::new`], but refuses set bits past the prefix instead of clearing them (decoding).
    pub fn exact(addr: IpAddr, prefix: u8) -> Result<Self, CidrError> {
        let c = Cidr::new(addr, prefix)?;
        if c.addr != addr || c.prefix != prefix {
            return Err(CidrError::HostBits(format!("{addr}/{prefix}")));
        }
        Ok(c)
    }

    /// The block's first address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether `ip` is in the block. IPv4-mapped IPv6 addresses match IPv4 blocks.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        ip.is_ipv4() == self.addr.is_ipv4() && mask(ip, self.prefix) == self.addr
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl fmt::Debug for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::str::FromStr for Cidr {
    type Err = CidrError;
    /// `203.0.113.0/24`, `2001:db8::/32`, or a single address (`/32` or `/128`).
    fn from_str(s: &str) -> Result<Self, CidrError> {
        let bad = || CidrError::Syntax(s.to_owned());
        let (a, p) = match s.trim().split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s.trim(), None),
        };
        let addr: IpAddr = a.parse().map_err(|_| bad())?;
        let prefix = match p {
            Some(p) => p.parse::<u8>().map_err(|_| bad())?,
            None => bits(addr),
        };
        Cidr::new(addr, prefix)
    }
}

/// Which visitors may reach a service: none that match `deny`, and, if `allow` is not empty, only
/// those that match `allow`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccessRules {
    /// Blocks that may connect (empty: every address not denied).
    pub allow: Vec<Cidr>,
    /// Blocks that may not connect; deny wins over allow.
    pub deny: Vec<Cidr>,
}

impl AccessRules {
    /// Whether a visitor from `ip` may connect.
    pub fn permits(&self, ip: IpAddr) -> bool {
        if self.deny.iter().any(|c| c.contains(ip)) {
            return false;
        }
        self.allow.is_empty() || self.allow.iter().any(|c| c.contains(ip))
    }

    /// Whether there are no rules at all.
    pub fn is_open(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }
}

#[cfg(feature = "arbitrary")]
impl<'a> arbitrary::Arbitrary<'a> for Cidr {
    fn arbitrary(u: &mut arbitrary::Unstructured<'a>) -> arbitrary::Result<Self> {
        let addr = IpAddr::arbitrary(u)?;
        let prefix = u.int_in_range(0..=bits(addr))?;
        Ok(Cidr::new(addr, prefix).expect("the prefix fits the address"))
    }
}

#[cfg(feature = "arbitrary")]
impl<'a> arbitrary::Arbitrary<'a> for AccessRules {
    fn arbitrary(u: &mut arbitrary::Unstructured<'a>) -> arbitrary::Result<Self> {
        let list = |u: &mut arbitrary::Unstructured<'a>| -> arbitrary::Result<Vec<Cidr>> {
            let n = u.int_in_range(0..=MAX_RULES)?;
            (0..n).map(|_| Cidr::arbitrary(u)).collect()
        };
        Ok(AccessRules {
            allow: list(u)?,
            deny: list(u)?,
        })
    }
}
