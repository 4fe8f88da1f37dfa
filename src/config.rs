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
/// Default directory of the server's self-signed certificate when none is configured.
pub const DEFAULT_AUTO_CERT_DIR: &str = "certs";
/// TLS handshake + hello + authentication must finish within this long.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The client gives up connecting to the server (TCP) after this long.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The client gives up connecting to a local service after this long, and refuses the visitor.
pub const DEFAULT_LOCAL_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Handshakes in progress at once on a server; when all are taken, the oldest is dropped for a new
/// connection, so idle connections cannot starve real clients.
pub const DEFAULT_MAX_HANDSHAKES: usize = 64;
/// Client sessions a server holds at once.
pub const DEFAULT_MAX_SESSIONS: usize = 1024;
/// Concurrent visitors per service (within the session's limit).
pub const DEFAULT_MAX_VISITORS_PER_SERVICE: usize = 10_000;
/// Substreams opened whose client has not answered yet. yamux stalls every open beyond 256
/// unacknowledged ones, so this stays below that.
pub const DEFAULT_MAX_OPENS_IN_FLIGHT: usize = 128;
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
pub const MAX_VISITORS_PER_SESSION: usize = crate::session::MAX_YAMUX_STREAMS - 1024;

/// A configuration mistake, located as precisely as the source allows.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
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
    origin: String,
    text: String,
}

impl Source {
    /// Reads a TOML file.
    pub fn file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Ok(Source {
            origin: path.display().to_string(),
            text,
        })
    }

    /// TOML text held in memory, named `origin` in errors.
    pub fn text(origin: &str, text: &str) -> Self {
        Source {
            origin: origin.into(),
            text: text.into(),
        }
    }

    /// Flags, which have no text to point into.
    fn command_line() -> Self {
        Source {
            origin: "command line".into(),
            text: String::new(),
        }
    }

    /// Parses the text as TOML into `T`, locating syntax and type errors.
    pub fn parse<T: serde::de::DeserializeOwned>(&self) -> Result<T, ConfigError> {
        toml::from_str(&self.text).map_err(|e| {
            let msg = e.message().trim().to_owned();
            match e.span() {
                Some(span) => self.at(span, None, msg),
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

// ---------------------------------------------------------------------------------------------
// Server

/// `server.toml`, as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerFile {
    /// Address to accept clients on.
    pub listen: Option<Spanned<String>>,
    /// The server's certificate.
    pub tls: Option<ServerTlsFile>,
    /// Seconds for TLS handshake, hello and authentication together.
    pub handshake_timeout_secs: Option<Spanned<u64>>,
    /// Handshakes in progress at once.
    pub max_handshakes: Option<Spanned<usize>>,
    /// Concurrent visitors per client session.
    pub max_visitors_per_session: Option<Spanned<usize>>,
    /// Client sessions at once.
    pub max_sessions: Option<Spanned<usize>>,
    /// Concurrent visitors per service.
    pub max_visitors_per_service: Option<Spanned<usize>>,
    /// Substreams awaiting the client's answer, per session.
    pub max_opens_in_flight: Option<Spanned<usize>>,
    /// Seconds between pings to each client.
    pub ping_interval_secs: Option<Spanned<u64>>,
    /// Seconds without an answered ping after which a client is dead.
    pub liveness_timeout_secs: Option<Spanned<u64>>,
    /// Seconds visitors may finish in on shutdown or takeover.
    pub drain_timeout_secs: Option<Spanned<u64>>,
    /// Failed authentications from one address before it is blocked.
    pub auth_failures_before_block: Option<Spanned<u32>>,
    /// Seconds an address is blocked after too many failed authentications.
    pub auth_block_secs: Option<Spanned<u64>>,
    /// Who may connect, and what each may expose.
    #[serde(default)]
    pub identities: Vec<IdentityFile>,
}

/// `[tls]` of `server.toml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTlsFile {
    /// PEM certificate chain, leaf first.
    pub cert: Option<Spanned<PathBuf>>,
    /// PEM private key of the leaf.
    pub key: Option<Spanned<PathBuf>>,
    /// Where a self-signed certificate is kept when `cert`/`key` are not given.
    pub auto_cert_dir: Option<PathBuf>,
}

/// One `[[identities]]` entry of `server.toml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityFile {
    /// The identity's name, as the client sends it.
    pub name: Spanned<String>,
    /// The identity's token.
    pub token: Spanned<String>,
    /// Address the identity's public ports are bound on.
    pub bind: Option<Spanned<String>>,
    /// Public ports the identity may use, e.g. `["3389", "20000-20100"]`.
    pub ports: Spanned<Vec<Spanned<String>>>,
}

/// Where the server's certificate comes from.
#[derive(Debug, Clone)]
pub enum ServerCert {
    /// PEM files given by the operator.
    Files {
        /// Certificate chain.
        cert: PathBuf,
        /// Private key.
        key: PathBuf,
    },
    /// A self-signed certificate kept in this directory, created on first start.
    Auto(PathBuf),
}

/// What one identity may do.
#[derive(Debug, Clone)]
pub struct IdentityPolicy {
    /// The identity.
    pub name: Name,
    /// Its shared secret.
    pub token: Token,
    /// Address its public ports are bound on.
    pub bind: IpAddr,
    /// Ports it may bind.
    pub ports: Vec<PortRange>,
}

impl IdentityPolicy {
    /// Whether `port` is inside one of the allowed ranges.
    pub fn allows(&self, port: u16) -> bool {
        self.ports.iter().any(|r| r.0.contains(&port))
    }

    /// The allowed ranges, for messages: `"3389, 20000-20100"`.
    pub fn ports_text(&self) -> String {
        self.ports
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Validated server settings.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// Where clients connect.
    pub listen: SocketAddr,
    /// The certificate.
    pub cert: ServerCert,
    /// Deadline for handshake + hello + authentication.
    pub handshake_timeout: Duration,
    /// Handshakes in progress at once.
    pub max_handshakes: usize,
    /// Concurrent visitors per session.
    pub max_visitors_per_session: usize,
    /// Client sessions at once.
    pub max_sessions: usize,
    /// Concurrent visitors per service.
    pub max_visitors_per_service: usize,
    /// Substreams awaiting the client's answer, per session.
    pub max_opens_in_flight: usize,
    /// Substreams a session may open before the client is asked to rotate to a fresh session.
    pub rotate_after_opens: u64,
    /// Liveness and drain timing.
    pub timing: Timing,
    /// Failed authentications from one address before it is blocked.
    pub auth_failures_before_block: u32,
    /// How long a blocked address stays blocked.
    pub auth_block: Duration,
    /// Known identities.
    pub identities: Vec<IdentityPolicy>,
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

/// Reads the shared timing keys, checking that pings come well within the liveness timeout.
fn timing(
    src: &Source,
    ping: &Option<Spanned<u64>>,
    liveness: &Option<Spanned<u64>>,
    drain: &Option<Spanned<u64>>,
) -> Result<Timing, ConfigError> {
    let t = Timing {
        ping_interval: secs(src, ping, "ping_interval_secs", DEFAULT_PING_INTERVAL)?,
        liveness_timeout: secs(
            src,
            liveness,
            "liveness_timeout_secs",
            DEFAULT_LIVENESS_TIMEOUT,
        )?,
        drain_timeout: secs(src, drain, "drain_timeout_secs", DEFAULT_DRAIN_TIMEOUT)?,
    };
    if t.liveness_timeout < t.ping_interval * 2 {
        let span = liveness
            .as_ref()
            .or(ping.as_ref())
            .map(|s| s.span())
            .unwrap_or(0..0);
        return Err(src.at(
            span,
            Some("liveness_timeout_secs"),
            format!(
                "must be at least twice ping_interval_secs ({}s), or a single late ping kills the session",
                t.ping_interval.as_secs()
            ),
        ));
    }
    Ok(t)
}

/// A positive number of seconds, or the default.
fn secs(
    src: &Source,
    v: &Option<Spanned<u64>>,
    key: &str,
    default: Duration,
) -> Result<Duration, ConfigError> {
    match v {
        Some(s) if *s.get_ref() == 0 => Err(src.at(s.span(), Some(key), "must be at least 1")),
        Some(s) => Ok(Duration::from_secs(*s.get_ref())),
        None => Ok(default),
    }
}

/// A positive count, or the default.
fn count(
    src: &Source,
    v: &Option<Spanned<usize>>,
    key: &str,
    default: usize,
) -> Result<usize, ConfigError> {
    match v {
        Some(s) if *s.get_ref() == 0 => Err(src.at(s.span(), Some(key), "must be at least 1")),
        Some(s) => Ok(*s.get_ref()),
        None => Ok(default),
    }
}

impl ServerSettings {
    /// Settings with every default, for programs that build them in code (tests, the demo).
    pub fn new(listen: SocketAddr, cert: ServerCert, identities: Vec<IdentityPolicy>) -> Self {
        ServerSettings {
            listen,
            cert,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            max_handshakes: DEFAULT_MAX_HANDSHAKES,
            max_visitors_per_session: DEFAULT_MAX_VISITORS_PER_SESSION,
            max_sessions: DEFAULT_MAX_SESSIONS,
            max_visitors_per_service: DEFAULT_MAX_VISITORS_PER_SERVICE,
            max_opens_in_flight: DEFAULT_MAX_OPENS_IN_FLIGHT,
            rotate_after_opens: DEFAULT_ROTATE_AFTER_OPENS,
            timing: Timing::default(),
            auth_failures_before_block: DEFAULT_AUTH_FAILURES_BEFORE_BLOCK,
            auth_block: DEFAULT_AUTH_BLOCK,
            identities,
        }
    }

    /// Parses and validates `server.toml` text.
    pub fn from_source(src: &Source) -> Result<Self, ConfigError> {
        let file: ServerFile = src.parse()?;
        Self::from_parsed(file, src)
    }

    /// Validates flags gathered into a [`ServerFile`].
    pub fn from_flags(file: ServerFile) -> Result<Self, ConfigError> {
        Self::from_parsed(file, &Source::command_line())
    }

    /// Validates a parsed file (possibly with flags laid over it); mistakes are located in `src`.
    pub fn from_parsed(file: ServerFile, src: &Source) -> Result<Self, ConfigError> {
        let listen = match &file.listen {
            Some(l) => l
                .get_ref()
                .parse::<SocketAddr>()
                .map_err(|e| src.at(l.span(), Some("listen"), format!("{:?}: {e}", l.get_ref())))?,
            None => DEFAULT_LISTEN,
        };
        let tls = file.tls.unwrap_or_default();
        let cert = match (tls.cert, tls.key) {
            (Some(c), Some(k)) => ServerCert::Files {
                cert: c.into_inner(),
                key: k.into_inner(),
            },
            (None, None) => ServerCert::Auto(
                tls.auto_cert_dir
                    .unwrap_or_else(|| PathBuf::from(DEFAULT_AUTO_CERT_DIR)),
            ),
            (Some(c), None) => {
                return Err(src.at(c.span(), Some("tls.cert"), "given without tls.key"))
            }
            (None, Some(k)) => {
                return Err(src.at(k.span(), Some("tls.key"), "given without tls.cert"))
            }
        };
        let handshake_timeout = secs(
            src,
            &file.handshake_timeout_secs,
            "handshake_timeout_secs",
            DEFAULT_HANDSHAKE_TIMEOUT,
        )?;
        let max_handshakes = count(
            src,
            &file.max_handshakes,
            "max_handshakes",
            DEFAULT_MAX_HANDSHAKES,
        )?;
        let max_visitors_per_session = count(
            src,
            &file.max_visitors_per_session,
            "max_visitors_per_session",
            DEFAULT_MAX_VISITORS_PER_SESSION,
        )?;
        let max_sessions = count(
            src,
            &file.max_sessions,
            "max_sessions",
            DEFAULT_MAX_SESSIONS,
        )?;
        let max_visitors_per_service = count(
            src,
            &file.max_visitors_per_service,
            "max_visitors_per_service",
            DEFAULT_MAX_VISITORS_PER_SERVICE,
        )?;
        let max_opens_in_flight = count(
            src,
            &file.max_opens_in_flight,
            "max_opens_in_flight",
            DEFAULT_MAX_OPENS_IN_FLIGHT,
        )?;
        if let Some(v) = &file.max_opens_in_flight {
            if *v.get_ref() > 255 {
                return Err(src.at(
                    v.span(),
                    Some("max_opens_in_flight"),
                    "at most 255: yamux stalls every open beyond 256 unacknowledged ones",
                ));
            }
        }
        let timing = timing(
            src,
            &file.ping_interval_secs,
            &file.liveness_timeout_secs,
            &file.drain_timeout_secs,
        )?;
        let auth_failures_before_block = match &file.auth_failures_before_block {
            Some(v) if *v.get_ref() == 0 => {
                return Err(src.at(
                    v.span(),
                    Some("auth_failures_before_block"),
                    "must be at least 1",
                ))
            }
            Some(v) => *v.get_ref(),
            None => DEFAULT_AUTH_FAILURES_BEFORE_BLOCK,
        };
        let auth_block = secs(
            src,
            &file.auth_block_secs,
            "auth_block_secs",
            DEFAULT_AUTH_BLOCK,
        )?;
        if let Some(v) = &file.max_visitors_per_session {
            if *v.get_ref() > MAX_VISITORS_PER_SESSION {
                return Err(src.at(
                    v.span(),
                    Some("max_visitors_per_session"),
                    format!(
                        "at most {MAX_VISITORS_PER_SESSION} (yamux's stream limit minus headroom: exceeding it kills a session)"
                    ),
                ));
            }
        }
        let mut identities = Vec::with_capacity(file.identities.len());
        let mut seen = HashSet::new();
        for id in file.identities {
            let name = Name::new(id.name.get_ref().clone())
                .map_err(|e| src.at(id.name.span(), Some("name"), e.to_string()))?;
            if !seen.insert(name.clone()) {
                return Err(src.at(
                    id.name.span(),
                    Some("name"),
                    format!("identity {name} is defined twice"),
                ));
            }
            if id.token.get_ref().is_empty() {
                return Err(src.at(id.token.span(), Some("token"), "must not be empty"));
            }
            let bind = match &id.bind {
                Some(b) => b.get_ref().parse::<IpAddr>().map_err(|e| {
                    src.at(b.span(), Some("bind"), format!("{:?}: {e}", b.get_ref()))
                })?,
                None => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            };
            let mut ports = Vec::new();
            for p in id.ports.get_ref() {
                ports.push(
                    p.get_ref()
                        .parse::<PortRange>()
                        .map_err(|e| src.at(p.span(), Some("ports"), e))?,
                );
            }
            if ports.is_empty() {
                return Err(src.at(
                    id.ports.span(),
                    Some("ports"),
                    "list at least one port or range",
                ));
            }
            identities.push(IdentityPolicy {
                name,
                token: Token::new(id.token.into_inner()),
                bind,
                ports,
            });
        }
        if identities.is_empty() {
            return Err(src.general(
                "no identities: add an [[identities]] entry (or --identity with --token and --ports)",
            ));
        }
        Ok(ServerSettings {
            listen,
            cert,
            handshake_timeout,
            max_handshakes,
            max_visitors_per_session,
            max_sessions,
            max_visitors_per_service,
            max_opens_in_flight,
            rotate_after_opens: DEFAULT_ROTATE_AFTER_OPENS,
            timing,
            auth_failures_before_block,
            auth_block,
            identities,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Client

/// `client.toml`, as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientFile {
    /// `HOST:PORT` of the server.
    pub server: Option<Spanned<String>>,
    /// Name to verify in the server's certificate (with `ca`); defaults to the host of `server`.
    pub server_name: Option<Spanned<String>>,
    /// The identity to authenticate as.
    pub identity: Option<Spanned<String>>,
    /// The identity's token (or the environment variable `NCX_TOKEN`).
    pub token: Option<Spanned<String>>,
    /// Pinned SHA-256 fingerprint of the server's certificate.
    pub server_fingerprint: Option<Spanned<String>>,
    /// PEM file of the CA that signed the server's certificate.
    pub ca: Option<Spanned<PathBuf>>,
    /// Skip all verification of the server. Anyone on the path can impersonate it.
    pub insecure_skip_verify: Option<Spanned<bool>>,
    /// Seconds to wait for the TCP connection to the server.
    pub connect_timeout_secs: Option<Spanned<u64>>,
    /// Seconds to wait for the TLS handshake, hello and authentication.
    pub handshake_timeout_secs: Option<Spanned<u64>>,
    /// Seconds to wait for a local service to accept a connection.
    pub local_connect_timeout_secs: Option<Spanned<u64>>,
    /// Seconds between pings to the server.
    pub ping_interval_secs: Option<Spanned<u64>>,
    /// Seconds without an answered ping after which the server is dead.
    pub liveness_timeout_secs: Option<Spanned<u64>>,
    /// Seconds visitors may finish in on shutdown.
    pub drain_timeout_secs: Option<Spanned<u64>>,
    /// Seconds before the first reconnect.
    pub reconnect_initial_secs: Option<Spanned<u64>>,
    /// Longest pause between reconnects, in seconds.
    pub reconnect_max_secs: Option<Spanned<u64>>,
    /// Services to expose.
    #[serde(default)]
    pub services: Vec<ServiceFile>,
}

/// One `[[services]]` entry of `client.toml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceFile {
    /// The service's name.
    pub name: Spanned<String>,
    /// `HOST:PORT` of the local service, as seen from the client.
    pub local: Spanned<String>,
    /// Public port on the server; 0 lets the server pick.
    #[serde(default)]
    pub remote_port: u16,
    /// Visitor address blocks allowed (absent or empty: all not denied), e.g.
    /// `["203.0.113.0/24"]`.
    pub allow: Option<Spanned<Vec<Spanned<String>>>>,
    /// Visitor address blocks denied; deny wins over allow.
    pub deny: Option<Spanned<Vec<Spanned<String>>>>,
    /// Send the visitor's address to the local service first, as PROXY protocol `"v1"` or `"v2"`.
    pub proxy_protocol: Option<Spanned<String>>,
}

/// A service the client exposes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    /// Its name.
    pub name: Name,
    /// `HOST:PORT` the client connects to for each visitor (resolved at each connect).
    pub local: String,
    /// Requested public port (0: any allowed).
    pub remote_port: u16,
    /// Which visitor addresses the server lets through.
    pub access: ncx_proto::AccessRules,
    /// PROXY protocol header written to the local service before the visitor's bytes.
    pub proxy_protocol: Option<ncx_proto::ProxyVersion>,
}

impl std::str::FromStr for ServiceSpec {
    type Err = String;
    /// `NAME=LOCAL_HOST:PORT@REMOTE_PORT`, e.g. `rdp=127.0.0.1:3389@3389` or `web=localhost:80@0`.
    fn from_str(s: &str) -> Result<Self, String> {
        let usage = "expected NAME=LOCAL_HOST:PORT@REMOTE_PORT, e.g. rdp=127.0.0.1:3389@13389";
        let (name, rest) = s.split_once('=').ok_or(usage)?;
        let (local, remote) = rest.rsplit_once('@').ok_or(usage)?;
        let name = Name::new(name).map_err(|e| format!("service name {name:?}: {e}"))?;
        check_host_port(local)?;
        let remote_port = remote
            .parse::<u16>()
            .map_err(|_| format!("remote port {remote:?} is not a number from 0 to 65535"))?;
        Ok(ServiceSpec {
            name,
            local: local.to_owned(),
            remote_port,
            access: ncx_proto::AccessRules::default(),
            proxy_protocol: None,
        })
    }
}

fn check_host_port(s: &str) -> Result<(), String> {
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("{s:?} is not HOST:PORT"))?;
    if host.is_empty() {
        return Err(format!("{s:?} has no host"));
    }
    match port.parse::<u16>() {
        Ok(p) if p != 0 => Ok(()),
        _ => Err(format!("{s:?} has no valid port (1-65535)")),
    }
}

/// Validated client settings.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    /// `HOST:PORT` of the server.
    pub server: String,
    /// Name checked against the server's certificate (CA mode) and sent as SNI.
    pub server_name: rustls::pki_types::ServerName<'static>,
    /// How the server is verified.
    pub trust: ServerTrust,
    /// Who we are.
    pub identity: Name,
    /// Our secret.
    pub token: Token,
    /// Deadline for the TCP connect to the server.
    pub connect_timeout: Duration,
    /// Deadline for TLS handshake, hello and authentication.
    pub handshake_timeout: Duration,
    /// Deadline for connecting to a local service.
    pub local_connect_timeout: Duration,
    /// Liveness and drain timing.
    pub timing: Timing,
    /// Reconnect backoff.
    pub reconnect: Backoff,
    /// Services to expose.
    pub services: Vec<ServiceSpec>,
}

/// Exponential reconnect backoff with jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// First pause.
    pub initial: Duration,
    /// Longest pause.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: DEFAULT_RECONNECT_INITIAL,
            max: DEFAULT_RECONNECT_MAX,
        }
    }
}

impl ClientSettings {
    /// Settings with every default, for programs that build them in code (tests, the demo).
    pub fn new(
        server: String,
        server_name: rustls::pki_types::ServerName<'static>,
        trust: ServerTrust,
        identity: Name,
        token: Token,
        services: Vec<ServiceSpec>,
    ) -> Self {
        ClientSettings {
            server,
            server_name,
            trust,
            identity,
            token,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            local_connect_timeout: DEFAULT_LOCAL_CONNECT_TIMEOUT,
            timing: Timing::default(),
            reconnect: Backoff::default(),
            services,
        }
    }

    /// Parses and validates `client.toml` text; `extra` (from flags) is laid over it.
    pub fn from_source(
        src: &Source,
        extra: ClientFile,
        env_token: Option<String>,
    ) -> Result<Self, ConfigError> {
        let mut file: ClientFile = src.parse()?;
        overlay(&mut file, extra);
        Self::from_file(file, src, env_token)
    }

    /// Validates flags gathered into a [`ClientFile`].
    pub fn from_flags(file: ClientFile, env_token: Option<String>) -> Result<Self, ConfigError> {
        Self::from_file(file, &Source::command_line(), env_token)
    }

    fn from_file(
        file: ClientFile,
        src: &Source,
        env_token: Option<String>,
    ) -> Result<Self, ConfigError> {
        let server = file
            .server
            .ok_or_else(|| src.general("no server address: set `server` or --server"))?;
        check_host_port(server.get_ref()).map_err(|e| src.at(server.span(), Some("server"), e))?;
        let host = server
            .get_ref()
            .rsplit_once(':')
            .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']'))
            .unwrap_or_default()
            .to_owned();
        let server_name = match &file.server_name {
            Some(n) => n.get_ref().clone(),
            None => host,
        };
        let server_name =
            rustls::pki_types::ServerName::try_from(server_name.clone()).map_err(|e| {
                let span = file
                    .server_name
                    .as_ref()
                    .map_or(server.span(), |n| n.span());
                src.at(span, Some("server_name"), format!("{server_name:?}: {e}"))
            })?;
        let identity = file
            .identity
            .ok_or_else(|| src.general("no identity: set `identity` or --identity"))?;
        let identity = Name::new(identity.get_ref().clone())
            .map_err(|e| src.at(identity.span(), Some("identity"), e.to_string()))?;
        let token = match (file.token, env_token) {
            (Some(t), _) if t.get_ref().is_empty() => {
                return Err(src.at(t.span(), Some("token"), "must not be empty"))
            }
            (Some(t), _) => Token::new(t.into_inner()),
            (None, Some(t)) if !t.is_empty() => Token::new(t),
            _ => {
                return Err(src.general(
                    "no token: set `token`, --token or the environment variable NCX_TOKEN",
                ))
            }
        };
        let insecure = file
            .insecure_skip_verify
            .as_ref()
            .is_some_and(|b| *b.get_ref());
        let trust = match (&file.ca, &file.server_fingerprint, insecure) {
            (Some(ca), None, false) => ServerTrust::ca_file(ca.get_ref())
                .map_err(|e| src.at(ca.span(), Some("ca"), e.to_string()))?,
            (None, Some(fp), false) => ServerTrust::Pinned(
                fp.get_ref()
                    .parse::<Fingerprint>()
                    .map_err(|e| src.at(fp.span(), Some("server_fingerprint"), e.to_string()))?,
            ),
            (None, None, true) => ServerTrust::InsecureSkipVerify,
            (None, None, false) => {
                return Err(src.general(
                    "the server cannot be verified: set `server_fingerprint` (printed by the server at start) or `ca`",
                ))
            }
            _ => {
                return Err(src.general(
                    "choose one way to verify the server: `ca`, `server_fingerprint` or `insecure_skip_verify`",
                ))
            }
        };
        let connect_timeout = secs(
            src,
            &file.connect_timeout_secs,
            "connect_timeout_secs",
            DEFAULT_CONNECT_TIMEOUT,
        )?;
        let handshake_timeout = secs(
            src,
            &file.handshake_timeout_secs,
            "handshake_timeout_secs",
            DEFAULT_HANDSHAKE_TIMEOUT,
        )?;
        let local_connect_timeout = secs(
            src,
            &file.local_connect_timeout_secs,
            "local_connect_timeout_secs",
            DEFAULT_LOCAL_CONNECT_TIMEOUT,
        )?;
        let timing = timing(
            src,
            &file.ping_interval_secs,
            &file.liveness_timeout_secs,
            &file.drain_timeout_secs,
        )?;
        let reconnect = Backoff {
            initial: secs(
                src,
                &file.reconnect_initial_secs,
                "reconnect_initial_secs",
                DEFAULT_RECONNECT_INITIAL,
            )?,
            max: secs(
                src,
                &file.reconnect_max_secs,
                "reconnect_max_secs",
                DEFAULT_RECONNECT_MAX,
            )?,
        };
        if reconnect.max < reconnect.initial {
            let span = file
                .reconnect_max_secs
                .as_ref()
                .map(|s| s.span())
                .unwrap_or(0..0);
            return Err(src.at(
                span,
                Some("reconnect_max_secs"),
                "must not be below reconnect_initial_secs",
            ));
        }
        let mut services = Vec::new();
        let mut names = HashSet::new();
        for s in file.services {
            let name = Name::new(s.name.get_ref().clone())
                .map_err(|e| src.at(s.name.span(), Some("name"), e.to_string()))?;
            if !names.insert(name.clone()) {
                return Err(src.at(
                    s.name.span(),
                    Some("name"),
                    format!("service {name} is defined twice"),
                ));
            }
            check_host_port(s.local.get_ref())
                .map_err(|e| src.at(s.local.span(), Some("local"), e))?;
            let mut lists = [Vec::new(), Vec::new()];
            for (list, key, out) in [(&s.allow, "allow", 0), (&s.deny, "deny", 1)] {
                let Some(list) = list else { continue };
                if list.get_ref().len() > ncx_proto::MAX_RULES {
                    return Err(src.at(
                        list.span(),
                        Some(key),
                        format!("at most {} blocks", ncx_proto::MAX_RULES),
                    ));
                }
                for rule in list.get_ref() {
                    lists[out].push(
                        rule.get_ref()
                            .parse::<ncx_proto::Cidr>()
                            .map_err(|e| src.at(rule.span(), Some(key), e.to_string()))?,
                    );
                }
            }
            let [allow, deny] = lists;
            let proxy_protocol = match &s.proxy_protocol {
                Some(p) => Some(
                    p.get_ref()
                        .parse::<ncx_proto::ProxyVersion>()
                        .map_err(|e| src.at(p.span(), Some("proxy_protocol"), e))?,
                ),
                None => None,
            };
            services.push(ServiceSpec {
                name,
                local: s.local.into_inner(),
                remote_port: s.remote_port,
                access: ncx_proto::AccessRules { allow, deny },
                proxy_protocol,
            });
        }
        if services.is_empty() {
            return Err(src.general(
                "no services: add a [[services]] entry or --service NAME=HOST:PORT@REMOTE_PORT",
            ));
        }
        Ok(ClientSettings {
            server: server.into_inner(),
            server_name: server_name.to_owned(),
            trust,
            identity,
            token,
            connect_timeout,
            handshake_timeout,
            local_connect_timeout,
            timing,
            reconnect,
            services,
        })
    }
}

/// Lays the values set in `extra` (flags) over `file`; services are added.
fn overlay(file: &mut ClientFile, extra: ClientFile) {
    macro_rules! take {
        ($($f:ident),*) => { $( if extra.$f.is_some() { file.$f = extra.$f; } )* };
    }
    take!(
        server,
        server_name,
        identity,
        token,
        server_fingerprint,
        ca,
        insecure_skip_verify,
        connect_timeout_secs,
        handshake_timeout_secs,
        local_connect_timeout_secs,
        ping_interval_secs,
        liveness_timeout_secs,
        drain_timeout_secs,
        reconnect_initial_secs,
        reconnect_max_secs
    );
    file.services.extend(extra.services);
}
