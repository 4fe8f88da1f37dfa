//! `client.toml` and the client's flags as written, before they are checked: the serde types, the
//! `--service` flag's syntax, and how flags are laid over a file.

use super::*;

/// `client.toml`, as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientFile {
    /// `HOST:PORT` of the server.
    pub server: Option<Spanned<String>>,
    /// Several servers, instead of `server`: each verified like one (see `server_mode`).
    pub servers: Option<Spanned<Vec<Spanned<String>>>>,
    /// With several servers: `"all"` (a session to each, the default) or `"failover"` (one at a
    /// time, in order).
    pub server_mode: Option<Spanned<String>>,
    /// Which instance of the identity this client is, when one identity runs on several machines.
    pub instance: Option<Spanned<String>>,
    /// Name to verify in the server's certificate (with `ca`); defaults to the host of `server`.
    pub server_name: Option<Spanned<String>>,
    /// The identity to authenticate as.
    pub identity: Option<Spanned<String>>,
    /// The identity's token (or the environment variable `NCX_TOKEN`).
    pub token: Option<Spanned<String>>,
    /// A file holding the identity's token, instead of `token` (see [`super::token_file`]).
    pub token_file: Option<Spanned<PathBuf>>,
    /// Pinned SHA-256 fingerprint of the server's certificate.
    pub server_fingerprint: Option<Spanned<String>>,
    /// Several pinned fingerprints, instead of `server_fingerprint`: a server must present one.
    pub server_fingerprints: Option<Spanned<Vec<Spanned<String>>>>,
    /// PEM file of the CA that signed the server's certificate.
    pub ca: Option<Spanned<PathBuf>>,
    /// Skip all verification of the server. Anyone on the path can impersonate it.
    pub insecure_skip_verify: Option<Spanned<bool>>,
    /// PEM client certificate (from `ncx certs client`), presented when the server asks for one.
    pub cert: Option<Spanned<PathBuf>>,
    /// PEM private key of `cert`.
    pub key: Option<Spanned<PathBuf>>,
    /// The proxy to reach the server through: `http://`, `https://` or `socks5://` URL, or
    /// `"direct"` to ignore the environment's proxy variables.
    pub proxy: Option<Spanned<String>>,
    /// A file holding the proxy's password (for the user in `proxy`).
    pub proxy_password_file: Option<Spanned<PathBuf>>,
    /// PEM CA trusted for an `https://` proxy, besides the system's.
    pub proxy_ca: Option<Spanned<PathBuf>>,
    /// How the TLS session travels: `"tcp"` (the default) or `"websocket"` (inside a WebSocket
    /// to `url`).
    pub transport: Option<Spanned<String>>,
    /// The WebSocket to reach the server through: `wss://HOST[:PORT]/PATH` or `ws://…`.
    pub url: Option<Spanned<String>>,
    /// The `Host` header of the WebSocket upgrade, when it must differ from `url`'s host.
    pub websocket_host: Option<Spanned<String>>,
    /// PEM CA trusted for the outer TLS of a `wss://` URL, besides the system's.
    pub websocket_ca: Option<Spanned<PathBuf>>,
    /// Seconds to wait for the TCP connection to the server.
    pub connect_timeout_secs: Option<Spanned<u64>>,
    /// Seconds to wait for the TLS handshake, hello and authentication.
    pub handshake_timeout_secs: Option<Spanned<u64>>,
    /// Seconds to wait for a local service to accept a connection.
    pub local_connect_timeout_secs: Option<Spanned<u64>>,
    /// Visitors the server may have open through this client at once.
    pub max_visitors: Option<Spanned<usize>>,
    /// Exit when the server refuses any service, not only when it refuses all (like ssh's
    /// `ExitOnForwardFailure`).
    pub exit_on_forward_failure: Option<Spanned<bool>>,
    /// Serve Prometheus metrics (`/metrics`) and `/ready` on this address (or port on loopback).
    pub metrics_listen: Option<Spanned<String>>,
    /// The Unix socket `ncx status` talks to.
    pub admin_socket: Option<Spanned<PathBuf>>,
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
    /// Private services of other clients to reach through local listeners (`ncx visit`).
    #[serde(default)]
    pub visits: Vec<VisitFile>,
}

/// One `[[visits]]` entry: a local listener whose connections reach a private service.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VisitFile {
    /// `OWNER/SERVICE`: the identity that offers the private service, and the service's name.
    pub service: Spanned<String>,
    /// Local `IP:PORT` to listen on, e.g. `"127.0.0.1:13389"`.
    pub listen: Spanned<String>,
    /// `"tcp"` (the default) or `"udp"`: a private UDP service, reached through a local UDP port.
    pub protocol: Option<Spanned<String>>,
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
    /// No public port: only the identities in `visitors` reach it, with `ncx visit`.
    pub private: Option<Spanned<bool>>,
    /// Identities that may visit a private service.
    pub visitors: Option<Spanned<Vec<Spanned<String>>>>,
    /// The group the service joins on the server (several clients offering it together).
    pub group: Option<Spanned<String>>,
    /// `"tcp"` (the default) or `"udp"`.
    pub protocol: Option<Spanned<String>>,
    /// `"tcp"` or `"http://HOST[:PORT]/PATH"`: how the client checks that the local service
    /// answers.
    pub health_check: Option<Spanned<String>>,
    /// Seconds between health checks.
    pub health_interval_secs: Option<Spanned<u64>>,
    /// Seconds one health check may take.
    pub health_timeout_secs: Option<Spanned<u64>>,
    /// Failed health checks in a row before the service is unhealthy.
    pub health_failures: Option<Spanned<u32>>,
}

/// `--service NAME=HOST:PORT@REMOTE_PORT[/udp]`.
impl std::str::FromStr for ServiceSpec {
    type Err = String;
    /// `NAME=LOCAL_HOST:PORT@REMOTE_PORT`, e.g. `rdp=127.0.0.1:3389@3389` or `web=localhost:80@0`;
    /// `/udp` after it makes a UDP service (`dns=127.0.0.1:53@5353/udp`).
    fn from_str(s: &str) -> Result<Self, String> {
        let usage = "expected NAME=LOCAL_HOST:PORT@REMOTE_PORT[/udp], e.g. rdp=127.0.0.1:3389@13389 or dns=127.0.0.1:53@5353/udp";
        let (s, udp) = match s.strip_suffix("/udp") {
            Some(rest) => (rest, true),
            None => (s.strip_suffix("/tcp").unwrap_or(s), false),
        };
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
            visitors: None,
            group: None,
            health: None,
            udp,
        })
    }
}

/// Lays the values set in `extra` (flags) over `file`; services are added.
pub(super) fn overlay(file: &mut ClientFile, extra: ClientFile) {
    macro_rules! take {
        ($($f:ident),*) => { $( if extra.$f.is_some() { file.$f = extra.$f; } )* };
    }
    // A token flag replaces the file's token, whichever way either names it.
    if extra.token.is_some() || extra.token_file.is_some() {
        file.token = extra.token;
        file.token_file = extra.token_file;
    }
    // --websocket and --server each replace the other way of reaching the server.
    if extra.url.is_some() {
        file.server = None;
    }
    if extra.server.is_some() || extra.servers.is_some() {
        file.transport = None;
        file.url = None;
        file.server = None;
        file.servers = None;
    }
    if extra.server_fingerprint.is_some() || extra.server_fingerprints.is_some() {
        file.server_fingerprint = None;
        file.server_fingerprints = None;
    }
    take!(
        server,
        servers,
        server_mode,
        instance,
        server_fingerprints,
        server_name,
        identity,
        server_fingerprint,
        ca,
        insecure_skip_verify,
        cert,
        key,
        proxy,
        proxy_password_file,
        proxy_ca,
        transport,
        url,
        websocket_host,
        websocket_ca,
        connect_timeout_secs,
        handshake_timeout_secs,
        local_connect_timeout_secs,
        max_visitors,
        exit_on_forward_failure,
        metrics_listen,
        admin_socket,
        ping_interval_secs,
        liveness_timeout_secs,
        drain_timeout_secs,
        reconnect_initial_secs,
        reconnect_max_secs
    );
    file.services.extend(extra.services);
    file.visits.extend(extra.visits);
}

impl ClientFile {
    /// Makes the file's relative paths relative to the file itself (see [`Source::resolve`]).
    /// Call it on the parsed file before flags are laid over it.
    pub fn resolve_paths(&mut self, src: &Source) {
        src.resolve_field(&mut self.ca);
        src.resolve_field(&mut self.cert);
        src.resolve_field(&mut self.key);
        src.resolve_field(&mut self.proxy_password_file);
        src.resolve_field(&mut self.proxy_ca);
        src.resolve_field(&mut self.admin_socket);
        src.resolve_field(&mut self.websocket_ca);
        if super::token_file::credentials_directory().is_none() {
            src.resolve_field(&mut self.token_file);
        }
    }
}
