//! Configuration: TOML files (and command-line flags, which fill the same structures) parsed into
//! validated settings.
//!
//! Every field is checked here, once; the rest of ncx works with types that cannot hold an invalid
//! value. A mistake in a file is reported as `FILE:LINE:COLUMN: KEY: what is wrong`. Defaults live in
//! one place each: the `DEFAULT_*` constants below.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::{Range, RangeInclusive};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ncx_proto::Name;
use serde::Deserialize;
use toml::Spanned;

use crate::auth::Token;
use crate::tls::{Fingerprint, ServerTrust};

/// Default address `ncx server` listens on for clients.
pub const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), DEFAULT_PORT);
/// Default port of `ncx server`.
pub const DEFAULT_PORT: u16 = 7835;

/// [`ClientSettings::token_source`] of a token from the environment.
pub const ENV_TOKEN_SOURCE: &str = "the environment variable NCX_TOKEN";
/// TLS handshake + hello + authentication must finish within this long.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The client gives up connecting to the server (TCP) after this long.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The client gives up connecting to a local service after this long, and refuses the visitor.
pub const DEFAULT_LOCAL_CONNECT_TIMEOUT: Duration = crate::timeouts::DEFAULT_LOCAL_CONNECT;
/// Handshakes in progress at once on a server; a new connection always gets a slot, and what gives
/// way for it is an older handshake of the source holding the most (`server::handshakes`).
pub const DEFAULT_MAX_HANDSHAKES: usize = 64;
/// Handshakes in progress from one source (an IPv4 address or an IPv6 /64): a quarter of the slots,
/// so one address churning connections only ever evicts its own, while a NAT with a few clients
/// reconnecting at once still fits.
pub const DEFAULT_MAX_HANDSHAKES_PER_SOURCE: usize = 16;
/// Client sessions a server holds at once.
pub const DEFAULT_MAX_SESSIONS: usize = 1024;
/// Sessions one identity may hold at once: its client, a few `ncx visit` sessions and a session
/// rotating, with room to spare, and far from [`DEFAULT_MAX_SESSIONS`], so one identity cannot
/// take every session slot.
pub const DEFAULT_MAX_SESSIONS_PER_IDENTITY: usize = 32;
/// Visitors of one identity's services at once, over all its sessions: as many as one session
/// takes by default, so an identity's sessions share that rather than multiply it.
pub const DEFAULT_MAX_VISITORS_PER_IDENTITY: usize = 10_000;
/// Services (public and private) one session may register.
pub const DEFAULT_MAX_SERVICES_PER_SESSION: usize = 256;
/// Concurrent visitors per service (within the session's limit).
pub const DEFAULT_MAX_VISITORS_PER_SERVICE: usize = 10_000;
/// How long a UDP flow lives without a datagram either way: a DNS query is answered within
/// seconds, and WireGuard's keepalive (25 s when set) keeps a tunnel's flow alive.
pub const DEFAULT_UDP_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);
/// Substreams opened whose client has not answered yet. yamux stalls every open beyond 256
/// unacknowledged ones, so this stays below that.
pub const DEFAULT_MAX_OPENS_IN_FLIGHT: usize = 128;
/// Website connections (`fallback`) open at once: a small site's worth; each holds two sockets and
/// no buffer while idle.
pub const DEFAULT_MAX_FALLBACK_CONNECTIONS: usize = 1024;
/// Each side pings the other this often on the control stream.
pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(10);
/// A peer that answered no ping for this long is dead: the session is torn down.
pub const DEFAULT_LIVENESS_TIMEOUT: Duration = Duration::from_secs(30);
/// On shutdown or takeover, visitors in flight may finish for this long before they are reset.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Substreams a session may open before the server asks the client to rotate to a fresh session.
/// yamux numbers the server's streams 2, 4, 6, … in a `u32`, so about 2^31 opens exhaust a session
/// (and kill it); rotation starts 2^24 opens before that.
pub const DEFAULT_ROTATE_AFTER_OPENS: u64 = (1 << 31) - (1 << 24);
/// Failed authentications from one address within [`DEFAULT_AUTH_BLOCK`] before it is blocked.
pub const DEFAULT_AUTH_FAILURES_BEFORE_BLOCK: u32 = 5;
/// How long an address that failed too often is refused.
pub const DEFAULT_AUTH_BLOCK: Duration = Duration::from_secs(60);
/// First pause before the client reconnects.
pub const DEFAULT_RECONNECT_INITIAL: Duration = Duration::from_secs(1);
/// Longest pause between reconnects.
pub const DEFAULT_RECONNECT_MAX: Duration = Duration::from_secs(30);
/// Concurrent visitors per session. Kept below yamux's stream limit, whose excess kills a session.
pub const DEFAULT_MAX_VISITORS_PER_SESSION: usize = 10_000;
/// The highest allowed `max_visitors_per_session`: yamux's stream limit less 1024 streams of
/// headroom for the control stream and for substreams the client has not dropped yet.
pub const MAX_VISITORS_PER_SESSION: usize = crate::mux::MAX_YAMUX_STREAMS - 1024;

/// A configuration mistake, located as precisely as the source allows. A cause is part of the
/// message, not `source()`, so printing the chain does not repeat it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading {path}: {cause}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        cause: std::io::Error,
    },
    /// A field is wrong at a known place.
    #[error("{origin}:{line}:{column}: {key}: {message}")]
    At {
        /// The file, or "command line".
        origin: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// The key that is wrong.
        key: String,
        /// What is wrong with it.
        message: String,
    },
    /// Something is wrong that no single place in a file shows.
    #[error("{origin}: {message}")]
    General {
        /// The file, or "command line".
        origin: String,
        /// What is wrong.
        message: String,
    },
}

/// Where a configuration came from, to locate its mistakes.
#[derive(Debug, Clone)]
pub struct Source {
    pub(crate) origin: String,
    text: String,
    /// The directory of the file the text came from: relative paths in it are relative to it.
    dir: Option<PathBuf>,
}

impl Source {
    /// Reads a TOML file.
    pub fn file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            cause: source,
        })?;
        Ok(Source {
            origin: path.display().to_string(),
            text,
            dir: Some(path.parent().map(Path::to_path_buf).unwrap_or_default()),
        })
    }

    /// `p` as named in this source: a relative path in a file is relative to the file's directory,
    /// so a configuration means the same whatever directory ncx is started from. Paths in text
    /// held in memory and in flags stay as given (flags: relative to the working directory).
    pub fn resolve(&self, p: &Path) -> PathBuf {
        match &self.dir {
            Some(dir) if p.is_relative() => dir.join(p),
            _ => p.to_owned(),
        }
    }

    /// [`Source::resolve`] in place, for a path field of a parsed file.
    pub(crate) fn resolve_field(&self, p: &mut Option<toml::Spanned<PathBuf>>) {
        if let Some(p) = p {
            let resolved = self.resolve(p.get_ref());
            *p.get_mut() = resolved;
        }
    }

    /// TOML text held in memory, named `origin` in errors.
    pub fn text(origin: &str, text: &str) -> Self {
        Source {
            origin: origin.into(),
            text: text.into(),
            dir: None,
        }
    }

    /// Flags, which have no text to point into.
    fn command_line() -> Self {
        Source {
            origin: "command line".into(),
            text: String::new(),
            dir: None,
        }
    }

    /// Parses the text as TOML into `T`, locating syntax and type errors.
    pub fn parse<T: serde::de::DeserializeOwned>(&self) -> Result<T, ConfigError> {
        toml::from_str(&self.text).map_err(|e| {
            let msg = e.message().trim().to_owned();
            match e.span() {
                Some(span) => {
                    let msg = advice::advice(&self.text, &span, msg);
                    self.at(span, None, msg)
                }
                None => self.general(msg),
            }
        })
    }

    /// An error at `span`, naming `key` (or the key written on that line).
    fn at(&self, span: Range<usize>, key: Option<&str>, message: impl Into<String>) -> ConfigError {
        if self.text.is_empty() {
            return self.general(match key {
                Some(k) => format!("{k}: {}", message.into()),
                None => message.into(),
            });
        }
        let start = span.start.min(self.text.len());
        let before = &self.text[..start];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before[line_start..].chars().count() + 1;
        let line_text = self.text[line_start..].lines().next().unwrap_or("");
        let key = key.map(str::to_owned).unwrap_or_else(|| {
            line_text
                .split_once('=')
                .map(|(k, _)| k.trim().to_owned())
                .unwrap_or_else(|| line_text.trim().to_owned())
        });
        ConfigError::At {
            origin: self.origin.clone(),
            line,
            column,
            key,
            message: message.into(),
        }
    }

    fn general(&self, message: impl Into<String>) -> ConfigError {
        ConfigError::General {
            origin: self.origin.clone(),
            message: message.into(),
        }
    }
}

/// A range of ports, written `"20000-20100"` or `"3389"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortRange(pub RangeInclusive<u16>);

impl std::str::FromStr for PortRange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let parse = |p: &str| -> Result<u16, String> {
            match p.trim().parse::<u16>() {
                Ok(0) | Err(_) => Err(format!("{p:?} is not a port (1-65535)")),
                Ok(n) => Ok(n),
            }
        };
        let (lo, hi) = match s.split_once('-') {
            Some((a, b)) => (parse(a)?, parse(b)?),
            None => {
                let p = parse(s)?;
                (p, p)
            }
        };
        if lo > hi {
            return Err(format!("range {s:?} is empty (start after end)"));
        }
        Ok(PortRange(lo..=hi))
    }
}

impl std::fmt::Display for PortRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.start() == self.0.end() {
            write!(f, "{}", self.0.start())
        } else {
            write!(f, "{}-{}", self.0.start(), self.0.end())
        }
    }
}

/// Liveness and drain timing, the same knobs on both sides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// How often to ping the peer.
    pub ping_interval: Duration,
    /// How long without an answered ping before the peer is dead.
    pub liveness_timeout: Duration,
    /// How long streams in flight may finish on shutdown or takeover.
    pub drain_timeout: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            ping_interval: DEFAULT_PING_INTERVAL,
            liveness_timeout: DEFAULT_LIVENESS_TIMEOUT,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
        }
    }
}

mod advice;
mod client;
mod client_file;
mod client_servers;
mod client_services;
mod identity;
mod server;
mod server_file;
mod server_groups;
mod server_identities;
mod state_dir;
pub mod token_file;
mod values;
mod websocket;

pub use client::*;
pub use client_file::*;
pub use client_servers::ServerMode;
pub use client_services::{
    HealthCheck, HealthProbe, DEFAULT_HEALTH_FAILURES, DEFAULT_HEALTH_INTERVAL,
    DEFAULT_HEALTH_TIMEOUT,
};
pub use identity::*;
pub use server::*;
pub use server_file::*;
pub use server_groups::{Balance, GroupFile, GroupPolicy};
pub use state_dir::{platform_state_dir, DEFAULT_AUTO_CERT_DIR};
pub use values::*;
pub use websocket::{WebSocketSettings, WsUrl};
