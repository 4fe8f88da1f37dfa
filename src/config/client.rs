//! `client.toml` and `ncx client` flags, resolved into [`ClientSettings`]: what was written
//! (the file types in `client_file.rs`) checked and turned into what the client runs on.
//!
//! A little over 400 lines, kept as one piece: most of it is the resolution of a file, field by
//! field, each check naming its field's place in the file; split, the halves would pass the
//! half-resolved settings between them.

use super::client_file::overlay;
use super::*;

/// A private service reached through a local listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VisitSpec {
    /// The identity that offers the service.
    pub owner: Name,
    /// The private service.
    pub service: Name,
    /// Where unmodified local programs connect.
    pub listen: SocketAddr,
    /// A private UDP service, reached through a local UDP port.
    pub udp: bool,
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
    /// `Some`: a private service (no public port) that only these identities may visit.
    pub visitors: Option<Vec<Name>>,
    /// The group the service joins on the server (its members share one public port, or one
    /// private name, and its visitors).
    pub group: Option<Name>,
    /// How the client checks that the local service answers; an unhealthy one gets no visitors.
    pub health: Option<HealthCheck>,
    /// A UDP service (`protocol = "udp"`): each visitor address is a flow of datagrams.
    pub udp: bool,
}

/// Validated client settings.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    /// `HOST:PORT` of the server this client dials (with several servers: the one of this
    /// session; see [`ClientSettings::for_server`]).
    pub server: String,
    /// Every server, in order (`server` alone unless `servers` lists several).
    pub servers: Vec<String>,
    /// With several servers, how the client uses them.
    pub server_mode: ServerMode,
    /// Name checked against the server's certificate (CA mode) and sent as SNI.
    pub server_name: rustls::pki_types::ServerName<'static>,
    /// Whether `server_name` was configured (it then holds for every server); else it is each
    /// server's host.
    pub fixed_server_name: bool,
    /// How the server is verified.
    pub trust: ServerTrust,
    /// Who we are.
    pub identity: Name,
    /// Which instance of the identity (protocol version 3): sessions of different instances of
    /// one identity coexist on a server.
    pub instance: Option<Name>,
    /// Our secret (absent when the identity authenticates by certificate alone).
    pub token: Option<Token>,
    /// Where the token came from (`--token`, a file's `token`, `NCX_TOKEN`), for the error when the
    /// server refuses it.
    pub token_source: Option<String>,
    /// Our client certificate, if the server asks for one.
    pub client_cert: Option<crate::tls::ClientCertificate>,
    /// Which proxy to reach the server through (settings built in code go direct; files and
    /// flags follow the environment unless they name one).
    pub proxy: crate::proxy::ProxySetting,
    /// A CA trusted for an `https://` proxy, besides the system's.
    pub proxy_ca: Option<PathBuf>,
    /// The WebSocket transport, if the session travels inside one (then `server` is the URL's
    /// host and port).
    pub websocket: Option<super::WebSocketSettings>,
    /// Deadline for the TCP connect to the server.
    pub connect_timeout: Duration,
    /// Deadline for TLS handshake, hello and authentication.
    pub handshake_timeout: Duration,
    /// Deadline for connecting to a local service.
    pub local_connect_timeout: Duration,
    /// Visitor substreams the server may have open at once; more are reset. Caps what a
    /// misbehaving server can make this client hold.
    pub max_visitors: usize,
    /// Exit (with the reasons) when the server refuses any service, instead of serving the rest.
    pub exit_on_forward_failure: bool,
    /// Where the metrics endpoint listens, if anywhere.
    pub metrics_listen: Option<SocketAddr>,
    /// The admin socket, if any.
    pub admin_socket: Option<PathBuf>,
    /// Liveness and drain timing.
    pub timing: Timing,
    /// Reconnect backoff.
    pub reconnect: Backoff,
    /// Services to expose.
    pub services: Vec<ServiceSpec>,
    /// Private services to reach through local listeners.
    pub visits: Vec<VisitSpec>,
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
            servers: vec![server.clone()],
            server,
            server_mode: ServerMode::All,
            server_name,
            fixed_server_name: false,
            trust,
            identity,
            instance: None,
            token: Some(token),
            token_source: None,
            client_cert: None,
            proxy: crate::proxy::ProxySetting::Direct,
            proxy_ca: None,
            websocket: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            local_connect_timeout: DEFAULT_LOCAL_CONNECT_TIMEOUT,
            max_visitors: MAX_VISITORS_PER_SESSION,
            exit_on_forward_failure: false,
            metrics_listen: None,
            admin_socket: None,
            timing: Timing::default(),
            reconnect: Backoff::default(),
            services,
            visits: Vec::new(),
        }
    }

    /// These settings for one of the servers: `server` is it, and so is the certificate's name
    /// unless one was configured for all.
    pub fn for_server(&self, server: &str) -> Self {
        let mut s = self.clone();
        s.server = server.to_owned();
        if !self.fixed_server_name {
            let host = super::client_servers::host_of(server);
            if let Ok(name) = rustls::pki_types::ServerName::try_from(host) {
                s.server_name = name.to_owned();
            }
        }
        s
    }

    /// Parses and validates `client.toml` text; `extra` (from flags) is laid over it.
    pub fn from_source(
        src: &Source,
        extra: ClientFile,
        env_token: Option<String>,
    ) -> Result<Self, ConfigError> {
        let mut file: ClientFile = src.parse()?;
        file.resolve_paths(src);
        let token_from = if extra.token.is_some() {
            "--token".to_owned()
        } else if extra.token_file.is_some() {
            "--token-file".to_owned()
        } else if file.token_file.is_some() {
            format!("`token_file` in {}", src.origin)
        } else {
            format!("`token` in {}", src.origin)
        };
        overlay(&mut file, extra);
        Self::from_file(file, src, env_token, token_from)
    }

    /// Validates flags gathered into a [`ClientFile`].
    pub fn from_flags(file: ClientFile, env_token: Option<String>) -> Result<Self, ConfigError> {
        let token_from = if file.token_file.is_some() {
            "--token-file"
        } else {
            "--token"
        };
        Self::from_file(file, &Source::command_line(), env_token, token_from.into())
    }

    /// `token_from` names where `file.token` came from. A token in the file or the flags wins over
    /// `env_token` (the environment variable), so a stale `NCX_TOKEN` cannot silently replace the
    /// token a configuration names.
    fn from_file(
        mut file: ClientFile,
        src: &Source,
        env_token: Option<String>,
        token_from: String,
    ) -> Result<Self, ConfigError> {
        let websocket = super::websocket::websocket_setting(src, &file)?;
        let identity = file
            .identity
            .take()
            .ok_or_else(|| src.general("no identity: set `identity` or --identity"))?;
        let identity = Name::new(identity.get_ref().clone())
            .map_err(|e| src.at(identity.span(), Some("identity"), e.to_string()))?;
        let client_cert = match (&file.cert, &file.key) {
            (Some(c), Some(k)) => Some(
                crate::tls::ClientCertificate::from_files(c.get_ref(), k.get_ref())
                    .map_err(|e| src.at(c.span(), Some("cert"), e.to_string()))?,
            ),
            (None, None) => None,
            (Some(c), None) => return Err(src.at(c.span(), Some("cert"), "given without key")),
            (None, Some(k)) => return Err(src.at(k.span(), Some("key"), "given without cert")),
        };
        let named = match (file.token.take(), file.token_file.take()) {
            (Some(_), Some(f)) => {
                return Err(src.at(
                    f.span(),
                    Some("token_file"),
                    "set either `token` or `token_file`, not both",
                ))
            }
            (Some(t), None) if t.get_ref().is_empty() => {
                return Err(src.at(t.span(), Some("token"), "must not be empty"))
            }
            (Some(t), None) => Some((t.into_inner(), token_from)),
            (None, Some(f)) => {
                let (token, path) = super::token_file::read_located(src, &f)?;
                Some((token, format!("{token_from} ({})", path.display())))
            }
            (None, None) => None,
        };
        let (token, token_source) = match (named, env_token) {
            (Some((t, from)), _) => (Some(Token::new(t)), Some(from)),
            (None, Some(t)) if !t.is_empty() => (
                Some(Token::new(t)),
                Some(super::ENV_TOKEN_SOURCE.to_owned()),
            ),
            // An identity may authenticate by certificate alone.
            _ if client_cert.is_some() => (None, None),
            _ => {
                return Err(src.general(
                    "no token: set `token` or `token_file`, --token or --token-file, or the environment variable NCX_TOKEN (or a client certificate with `cert` and `key`)",
                ))
            }
        };
        // After the token: a missing token file is the first thing a new user sees, before trust.
        let reach = super::client_servers::reach(src, &file, websocket.as_ref())?;
        let proxy = proxy_setting(src, &file.proxy, &file.proxy_password_file)?;
        let proxy_ca = file.proxy_ca.map(Spanned::into_inner);
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
        let max_visitors = count(
            src,
            &file.max_visitors,
            "max_visitors",
            MAX_VISITORS_PER_SESSION,
        )?;
        if let Some(v) = &file.max_visitors {
            if *v.get_ref() > MAX_VISITORS_PER_SESSION {
                return Err(src.at(
                    v.span(),
                    Some("max_visitors"),
                    format!(
                        "at most {MAX_VISITORS_PER_SESSION} (yamux's stream limit minus headroom)"
                    ),
                ));
            }
        }
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
        let services = super::client_services::services(src, file.services)?;
        let visits = super::client_services::visits(src, file.visits)?;
        if services.is_empty() && visits.is_empty() {
            return Err(src.general(
                "nothing to do: add a [[services]] entry (or --service NAME=HOST:PORT@REMOTE_PORT), or a [[visits]] entry",
            ));
        }
        let instance = match &file.instance {
            Some(i) => Some(
                Name::new(i.get_ref().clone())
                    .map_err(|e| src.at(i.span(), Some("instance"), e.to_string()))?,
            ),
            None => None,
        };
        Ok(ClientSettings {
            server: reach.servers[0].clone(),
            servers: reach.servers,
            server_mode: reach.mode,
            server_name: reach.server_name,
            fixed_server_name: reach.fixed_server_name,
            trust: reach.trust,
            identity,
            instance,
            token,
            token_source,
            client_cert,
            proxy,
            proxy_ca,
            websocket,
            connect_timeout,
            handshake_timeout,
            local_connect_timeout,
            max_visitors,
            exit_on_forward_failure: file.exit_on_forward_failure.is_some_and(|b| *b.get_ref()),
            metrics_listen: metrics_listen(src, &file.metrics_listen)?,
            admin_socket: file.admin_socket.clone().map(Spanned::into_inner),
            timing,
            reconnect,
            services,
            visits,
        })
    }
}

/// `proxy` and `proxy_password_file`, checked: `"direct"`, or a proxy URL whose password may come
/// from a file. Without `proxy` the environment decides when the client starts.
fn proxy_setting(
    src: &Source,
    proxy: &Option<Spanned<String>>,
    password_file: &Option<Spanned<PathBuf>>,
) -> Result<crate::proxy::ProxySetting, ConfigError> {
    use crate::proxy::{ProxySetting, ProxyUrl};
    let setting = match proxy {
        None => ProxySetting::FromEnvironment,
        Some(p) if p.get_ref().trim().eq_ignore_ascii_case("direct") => ProxySetting::Direct,
        Some(p) => ProxySetting::Url(
            p.get_ref()
                .parse::<ProxyUrl>()
                .map_err(|e| src.at(p.span(), Some("proxy"), e))?,
        ),
    };
    let Some(pw) = password_file else {
        return Ok(setting);
    };
    match setting {
        ProxySetting::Url(mut url) if url.user.is_some() => {
            let password = super::token_file::read(pw.get_ref())
                .map_err(|e| src.at(pw.span(), Some("proxy_password_file"), e))?;
            url.set_password(password);
            Ok(ProxySetting::Url(url))
        }
        _ => Err(src.at(
            pw.span(),
            Some("proxy_password_file"),
            "needs a proxy URL with a user: proxy = \"http://USER@host:port\"",
        )),
    }
}
