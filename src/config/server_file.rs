//! `server.toml` as written, before it is checked: the serde types.

use super::*;

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
    /// Handshakes in progress at once from one source address (IPv6: one /64).
    pub max_handshakes_per_source: Option<Spanned<usize>>,
    /// Concurrent visitors per client session.
    pub max_visitors_per_session: Option<Spanned<usize>>,
    /// Client sessions at once.
    pub max_sessions: Option<Spanned<usize>>,
    /// Sessions of one identity at once.
    pub max_sessions_per_identity: Option<Spanned<usize>>,
    /// Visitors of one identity's services at once.
    pub max_visitors_per_identity: Option<Spanned<usize>>,
    /// Services one session may register.
    pub max_services_per_session: Option<Spanned<usize>>,
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
    /// Seconds a UDP flow lives without a datagram either way.
    pub udp_idle_timeout_secs: Option<Spanned<u64>>,
    /// Failed authentications from one address before it is blocked.
    pub auth_failures_before_block: Option<Spanned<u32>>,
    /// Seconds an address is blocked after too many failed authentications.
    pub auth_block_secs: Option<Spanned<u64>>,
    /// Addresses of load balancers that put a PROXY protocol header (v1 or v2) before each
    /// client's bytes; a connection from one of them must start with one.
    pub proxy_protocol_from: Option<Spanned<Vec<Spanned<String>>>>,
    /// The web server (`HOST:PORT`) that gets every connection that is not an ncx client, untouched,
    /// so the listener can share port 443 with a website.
    pub fallback: Option<Spanned<String>>,
    /// Accept WebSocket upgrades of this path on the listener (for clients with
    /// `transport = "websocket"`, usually behind a TLS-terminating reverse proxy).
    pub websocket_path: Option<Spanned<String>>,
    /// Connections passed to `fallback` at once.
    pub max_fallback_connections: Option<Spanned<usize>>,
    /// Serve Prometheus metrics (`/metrics`) and `/ready` on this address (or port on loopback).
    pub metrics_listen: Option<Spanned<String>>,
    /// The Unix socket `ncx status` and `ncx ctl reload` talk to.
    pub admin_socket: Option<Spanned<PathBuf>>,
    /// Who may connect, and what each may expose.
    #[serde(default)]
    pub identities: Vec<IdentityFile>,
    /// Services several sessions offer together (several clients, or one identity on several
    /// machines).
    #[serde(default)]
    pub groups: Vec<GroupFile>,
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
    /// PEM file of the CA that signs client certificates (`ncx certs client`). Needed by identities
    /// whose `auth` is `"certificate"` or `"both"`.
    pub client_ca: Option<Spanned<PathBuf>>,
}

/// One `[[identities]]` entry of `server.toml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityFile {
    /// The identity's name, as the client sends it.
    pub name: Spanned<String>,
    /// The identity's token (not needed with `auth = "certificate"`).
    pub token: Option<Spanned<String>>,
    /// A file holding the identity's token, instead of `token` (see [`super::token_file`]).
    pub token_file: Option<Spanned<PathBuf>>,
    /// What the identity must present: `"token"` (the default), `"certificate"` or `"both"`.
    pub auth: Option<Spanned<String>>,
    /// Address the identity's public ports are bound on.
    pub bind: Option<Spanned<String>>,
    /// Public ports the identity may use, e.g. `[3389, "20000-20100"]`. Absent or empty: none (the
    /// identity may still offer private services and visit them).
    pub ports: Option<Spanned<Vec<Spanned<PortEntry>>>>,
}

/// One entry of `ports`, as written: a port as a number (`3389`) or a string (`"3389"`), or a range
/// as a string (`"20000-20100"`). At 8354efb a bare number was refused ("expected a string").
#[derive(Debug, Clone)]
pub struct PortEntry(pub String);

impl<'de> Deserialize<'de> for PortEntry {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Entry;
        impl serde::de::Visitor<'_> for Entry {
            type Value = PortEntry;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a port (3389) or a range of ports (\"20000-20100\")")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<PortEntry, E> {
                Ok(PortEntry(v.to_owned()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<PortEntry, E> {
                Ok(PortEntry(v.to_string()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<PortEntry, E> {
                Ok(PortEntry(v.to_string()))
            }
        }
        d.deserialize_any(Entry)
    }
}

impl ServerFile {
    /// Makes the file's relative paths relative to the file itself (see [`Source::resolve`]).
    /// Call it on the parsed file before flags are laid over it.
    pub fn resolve_paths(&mut self, src: &Source) {
        src.resolve_field(&mut self.admin_socket);
        if let Some(tls) = &mut self.tls {
            src.resolve_field(&mut tls.cert);
            src.resolve_field(&mut tls.key);
            src.resolve_field(&mut tls.client_ca);
            if let Some(d) = &mut tls.auto_cert_dir {
                *d = src.resolve(d);
            }
        }
        if super::token_file::credentials_directory().is_none() {
            for id in &mut self.identities {
                src.resolve_field(&mut id.token_file);
            }
        }
    }
}
