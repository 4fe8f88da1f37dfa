//! `client.toml` and `ncx client` flags, resolved into [`ClientSettings`]: what was written
//! (the file types in `client_file.rs`) checked and turned into what the client runs on.
//!
//! A little over 400 lines, kept as one piece: most of it is the resolution of a file, field by
//! field, each check naming its field's place in the file; split, the halves would pass the
//! half-resolved settings between them.

use super::client_file::{check_host_port, overlay, parse_visit_target};
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
            server,
            server_name,
            trust,
            identity,
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
        file: ClientFile,
        src: &Source,
        env_token: Option<String>,
        token_from: String,
    ) -> Result<Self, ConfigError> {
        let websocket = super::websocket::websocket_setting(src, &file)?;
        let server = match (&websocket, file.server) {
            (Some(ws), _) => Spanned::new(
                file.url.as_ref().map_or(0..0, |u| u.span()),
                ws.dial_address(),
            ),
            (None, Some(server)) => server,
            (None, None) => return Err(src.general("no server address: set `server` or --server")),
        };
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
        let client_cert = match (&file.cert, &file.key) {
            (Some(c), Some(k)) => Some(
                crate::tls::ClientCertificate::from_files(c.get_ref(), k.get_ref())
                    .map_err(|e| src.at(c.span(), Some("cert"), e.to_string()))?,
            ),
            (None, None) => None,
            (Some(c), None) => return Err(src.at(c.span(), Some("cert"), "given without key")),
            (None, Some(k)) => return Err(src.at(k.span(), Some("key"), "given without cert")),
        };
        let named = match (file.token, file.token_file) {
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
            let allow = cidr_list(src, &s.allow, "allow")?;
            let deny = cidr_list(src, &s.deny, "deny")?;
            let private = s.private.as_ref().is_some_and(|p| *p.get_ref());
            let visitors = match (&s.visitors, private) {
                (Some(v), true) => {
                    if v.get_ref().is_empty() {
                        return Err(src.at(
                            v.span(),
                            Some("visitors"),
                            "list at least one identity that may visit",
                        ));
                    }
                    if v.get_ref().len() > ncx_proto::MAX_VISITORS {
                        return Err(src.at(
                            v.span(),
                            Some("visitors"),
                            format!("at most {} identities", ncx_proto::MAX_VISITORS),
                        ));
                    }
                    let mut names = Vec::new();
                    for n in v.get_ref() {
                        names.push(
                            Name::new(n.get_ref().clone())
                                .map_err(|e| src.at(n.span(), Some("visitors"), e.to_string()))?,
                        );
                    }
                    Some(names)
                }
                (None, true) => {
                    let span = s.private.as_ref().map_or(s.name.span(), |p| p.span());
                    return Err(src.at(
                        span,
                        Some("visitors"),
                        format!("private service {name} needs `visitors`: the identities that may reach it"),
                    ));
                }
                (Some(v), false) => {
                    return Err(src.at(
                        v.span(),
                        Some("visitors"),
                        "only private services have visitors: add `private = true`",
                    ))
                }
                (None, false) => None,
            };
            if private {
                let public_only = [
                    (s.remote_port != 0, "remote_port"),
                    (s.allow.is_some(), "allow"),
                    (s.deny.is_some(), "deny"),
                ];
                if let Some((_, key)) = public_only.iter().find(|(set, _)| *set) {
                    return Err(src.at(
                        s.name.span(),
                        Some(key),
                        format!("private service {name} has no public port, so `{key}` does not apply (its `visitors` decide who reaches it)"),
                    ));
                }
            }
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
                visitors,
            });
        }
        let mut visits = Vec::new();
        let mut listens = HashSet::new();
        for v in file.visits {
            let (owner, service) = parse_visit_target(v.service.get_ref())
                .map_err(|e| src.at(v.service.span(), Some("service"), e))?;
            let listen = v.listen.get_ref().parse::<SocketAddr>().map_err(|e| {
                src.at(
                    v.listen.span(),
                    Some("listen"),
                    format!(
                        "{:?}: {e} (expected IP:PORT, e.g. 127.0.0.1:13389)",
                        v.listen.get_ref()
                    ),
                )
            })?;
            if listen.port() != 0 && !listens.insert(listen) {
                return Err(src.at(
                    v.listen.span(),
                    Some("listen"),
                    format!("{listen} is used by two visits"),
                ));
            }
            visits.push(VisitSpec {
                owner,
                service,
                listen,
            });
        }
        if services.is_empty() && visits.is_empty() {
            return Err(src.general(
                "nothing to do: add a [[services]] entry (or --service NAME=HOST:PORT@REMOTE_PORT), or a [[visits]] entry",
            ));
        }
        Ok(ClientSettings {
            server: server.into_inner(),
            server_name: server_name.to_owned(),
            trust,
            identity,
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
