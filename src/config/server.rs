//! `server.toml` and `ncx server` flags, resolved into [`ServerSettings`]: what was written (the
//! file types in `server_file.rs`) checked and turned into what the server runs on.

use super::*;

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

/// Validated server settings.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// Where clients connect.
    pub listen: SocketAddr,
    /// The certificate.
    pub cert: ServerCert,
    /// The CA that signs client certificates, if any identity uses them.
    pub client_ca: Option<PathBuf>,
    /// Deadline for handshake + hello + authentication.
    pub handshake_timeout: Duration,
    /// Handshakes in progress at once.
    pub max_handshakes: usize,
    /// Handshakes in progress at once from one source (an IPv4 address or an IPv6 /64).
    pub max_handshakes_per_source: usize,
    /// Concurrent visitors per session.
    pub max_visitors_per_session: usize,
    /// Client sessions at once.
    pub max_sessions: usize,
    /// Sessions of one identity at once (within `max_sessions`).
    pub max_sessions_per_identity: usize,
    /// Services, public and private, one session may register.
    pub max_services_per_session: usize,
    /// Visitors of one identity's services at once, over all its sessions.
    pub max_visitors_per_identity: usize,
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
    /// Load balancers whose connections start with a PROXY protocol header naming the real
    /// client (empty: none; every connection is its own client).
    pub proxy_protocol_from: Vec<ncx_proto::Cidr>,
    /// Known identities.
    pub identities: Vec<IdentityPolicy>,
}

impl ServerSettings {
    /// Settings with every default, for programs that build them in code (tests, the demo).
    pub fn new(listen: SocketAddr, cert: ServerCert, identities: Vec<IdentityPolicy>) -> Self {
        ServerSettings {
            listen,
            cert,
            client_ca: None,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            max_handshakes: DEFAULT_MAX_HANDSHAKES,
            max_handshakes_per_source: DEFAULT_MAX_HANDSHAKES_PER_SOURCE,
            max_visitors_per_session: DEFAULT_MAX_VISITORS_PER_SESSION,
            max_sessions: DEFAULT_MAX_SESSIONS,
            max_sessions_per_identity: DEFAULT_MAX_SESSIONS_PER_IDENTITY,
            max_services_per_session: DEFAULT_MAX_SERVICES_PER_SESSION,
            max_visitors_per_identity: DEFAULT_MAX_VISITORS_PER_IDENTITY,
            max_visitors_per_service: DEFAULT_MAX_VISITORS_PER_SERVICE,
            max_opens_in_flight: DEFAULT_MAX_OPENS_IN_FLIGHT,
            rotate_after_opens: DEFAULT_ROTATE_AFTER_OPENS,
            timing: Timing::default(),
            auth_failures_before_block: DEFAULT_AUTH_FAILURES_BEFORE_BLOCK,
            auth_block: DEFAULT_AUTH_BLOCK,
            proxy_protocol_from: Vec::new(),
            identities,
        }
    }

    /// Parses and validates `server.toml` text.
    pub fn from_source(src: &Source) -> Result<Self, ConfigError> {
        let mut file: ServerFile = src.parse()?;
        file.resolve_paths(src);
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
        let client_ca = tls.client_ca;
        let cert = match (tls.cert, tls.key) {
            (Some(c), Some(k)) => ServerCert::Files {
                cert: c.into_inner(),
                key: k.into_inner(),
            },
            (None, None) => ServerCert::Auto(
                tls.auto_cert_dir
                    .unwrap_or_else(|| super::state_dir::default_auto_cert_dir(src.dir.as_deref())),
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
        let max_handshakes_per_source = count(
            src,
            &file.max_handshakes_per_source,
            "max_handshakes_per_source",
            DEFAULT_MAX_HANDSHAKES_PER_SOURCE.min(max_handshakes),
        )?;
        if let Some(v) = &file.max_handshakes_per_source {
            if *v.get_ref() > max_handshakes {
                return Err(src.at(
                    v.span(),
                    Some("max_handshakes_per_source"),
                    format!("at most max_handshakes ({max_handshakes})"),
                ));
            }
        }
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
        let max_sessions_per_identity = count(
            src,
            &file.max_sessions_per_identity,
            "max_sessions_per_identity",
            DEFAULT_MAX_SESSIONS_PER_IDENTITY.min(max_sessions),
        )?;
        if let Some(v) = &file.max_sessions_per_identity {
            if *v.get_ref() > max_sessions {
                return Err(src.at(
                    v.span(),
                    Some("max_sessions_per_identity"),
                    format!("at most max_sessions ({max_sessions})"),
                ));
            }
        }
        let max_services_per_session = count(
            src,
            &file.max_services_per_session,
            "max_services_per_session",
            DEFAULT_MAX_SERVICES_PER_SESSION,
        )?;
        let max_visitors_per_identity = count(
            src,
            &file.max_visitors_per_identity,
            "max_visitors_per_identity",
            DEFAULT_MAX_VISITORS_PER_IDENTITY,
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
        let proxy_protocol_from = cidr_list(src, &file.proxy_protocol_from, "proxy_protocol_from")?;
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
            let auth = match id.auth.as_ref().map(|a| (a.get_ref().as_str(), a.span())) {
                None | Some(("token", _)) => AuthKind::Token,
                Some(("certificate", _)) => AuthKind::Certificate,
                Some(("both", _)) => AuthKind::Both,
                Some((other, span)) => {
                    return Err(src.at(
                        span,
                        Some("auth"),
                        format!("{other:?}: expected \"token\", \"certificate\" or \"both\""),
                    ))
                }
            };
            let token = match (id.token, &id.token_file) {
                (Some(_), Some(f)) => {
                    return Err(src.at(
                        f.span(),
                        Some("token_file"),
                        "set either `token` or `token_file`, not both",
                    ))
                }
                (None, Some(f)) => {
                    let (token, _) = super::token_file::read_located(src, f)?;
                    Some(Spanned::new(f.span(), token))
                }
                (token, None) => token,
            };
            let auth = match (&token, auth) {
                (Some(t), _) if t.get_ref().is_empty() => {
                    return Err(src.at(t.span(), Some("token"), "must not be empty"))
                }
                (Some(t), AuthKind::Certificate) => {
                    return Err(src.at(
                        t.span(),
                        Some("token"),
                        "not used with auth = \"certificate\": remove it, or use auth = \"both\"",
                    ))
                }
                (Some(t), AuthKind::Both) => ClientAuth::Both(Token::new(t.get_ref().clone())),
                (Some(t), AuthKind::Token) => ClientAuth::Token(Token::new(t.get_ref().clone())),
                (None, AuthKind::Certificate) => ClientAuth::Certificate,
                (None, _) => {
                    return Err(src.at(
                        id.name.span(),
                        Some("token"),
                        format!("identity {name} has no token: set `token` or `token_file` (or auth = \"certificate\")"),
                    ))
                }
            };
            if auth.needs_certificate() && client_ca.is_none() {
                let span = id.auth.as_ref().map_or(id.name.span(), |a| a.span());
                return Err(src.at(
                    span,
                    Some("auth"),
                    format!("identity {name} needs client certificates: set tls.client_ca to the CA that signs them"),
                ));
            }
            let bind = match &id.bind {
                Some(b) => b.get_ref().parse::<IpAddr>().map_err(|e| {
                    src.at(b.span(), Some("bind"), format!("{:?}: {e}", b.get_ref()))
                })?,
                None => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            };
            let mut ports = Vec::new();
            for p in id.ports.iter().flat_map(|l| l.get_ref()) {
                let range = p
                    .get_ref()
                    .0
                    .parse::<PortRange>()
                    .map_err(|e| src.at(p.span(), Some("ports"), e))?;
                // Two identities allowed the same port race for it: whichever connects first
                // takes it from the other. Refuse that at start rather than at the first race.
                for other in &identities {
                    let other: &IdentityPolicy = other;
                    if let Some(port) = other.ports.iter().find_map(|o| overlap(o, &range)) {
                        return Err(src.at(
                            p.span(),
                            Some("ports"),
                            format!(
                                "port {port} is also allowed for identity {}; the ports of two identities must not overlap (the first to connect would take them from the other)",
                                other.name
                            ),
                        ));
                    }
                }
                ports.push(range);
            }
            identities.push(IdentityPolicy {
                name,
                auth,
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
            client_ca: client_ca.map(Spanned::into_inner),
            handshake_timeout,
            max_handshakes,
            max_handshakes_per_source,
            max_visitors_per_session,
            max_sessions,
            max_sessions_per_identity,
            max_services_per_session,
            max_visitors_per_identity,
            max_visitors_per_service,
            max_opens_in_flight,
            rotate_after_opens: DEFAULT_ROTATE_AFTER_OPENS,
            timing,
            auth_failures_before_block,
            auth_block,
            proxy_protocol_from,
            identities,
        })
    }
}

/// `auth` of an `[[identities]]` entry, before the token is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AuthKind {
    Token,
    Certificate,
    Both,
}

/// The first port two ranges share, if any.
fn overlap(a: &PortRange, b: &PortRange) -> Option<u16> {
    let lo = *a.0.start().max(b.0.start());
    let hi = *a.0.end().min(b.0.end());
    (lo <= hi).then_some(lo)
}
