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
    /// How long a UDP flow lives without a datagram either way.
    pub udp_idle_timeout: Duration,
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
    /// The web server (`HOST:PORT`) that connections other than ncx clients are passed to.
    pub fallback: Option<String>,
    /// The path whose WebSocket upgrades are ncx clients (`transport = "websocket"`), if any.
    pub websocket_path: Option<String>,
    /// Connections passed to `fallback` at once; more are closed.
    pub max_fallback_connections: usize,
    /// Where the metrics endpoint listens, if anywhere.
    pub metrics_listen: Option<SocketAddr>,
    /// The admin socket, if any.
    pub admin_socket: Option<PathBuf>,
    /// Known identities.
    pub identities: Vec<IdentityPolicy>,
    /// Groups of services several sessions offer together.
    pub groups: Vec<GroupPolicy>,
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
            udp_idle_timeout: DEFAULT_UDP_IDLE_TIMEOUT,
            rotate_after_opens: DEFAULT_ROTATE_AFTER_OPENS,
            timing: Timing::default(),
            auth_failures_before_block: DEFAULT_AUTH_FAILURES_BEFORE_BLOCK,
            auth_block: DEFAULT_AUTH_BLOCK,
            proxy_protocol_from: Vec::new(),
            fallback: None,
            websocket_path: None,
            max_fallback_connections: DEFAULT_MAX_FALLBACK_CONNECTIONS,
            metrics_listen: None,
            admin_socket: None,
            identities,
            groups: Vec::new(),
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
        let udp_idle_timeout = secs(
            src,
            &file.udp_idle_timeout_secs,
            "udp_idle_timeout_secs",
            DEFAULT_UDP_IDLE_TIMEOUT,
        )?;
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
        let fallback = match &file.fallback {
            Some(f) => {
                check_host_port(f.get_ref()).map_err(|e| src.at(f.span(), Some("fallback"), e))?;
                Some(f.get_ref().clone())
            }
            None => None,
        };
        let websocket_path = match &file.websocket_path {
            Some(p) => {
                let path = p.get_ref();
                if !path.starts_with('/')
                    || path.contains(['?', '#'])
                    || path.bytes().any(|b| b <= b' ' || b == 0x7f)
                {
                    return Err(src.at(
                        p.span(),
                        Some("websocket_path"),
                        format!("{path:?}: a path such as \"/ncx\" (starting with /, no spaces, query or fragment)"),
                    ));
                }
                Some(path.clone())
            }
            None => None,
        };
        let max_fallback_connections = count(
            src,
            &file.max_fallback_connections,
            "max_fallback_connections",
            DEFAULT_MAX_FALLBACK_CONNECTIONS,
        )?;
        let metrics_listen = metrics_listen(src, &file.metrics_listen)?;
        let identities =
            super::server_identities::resolve(src, file.identities, client_ca.as_ref())?;
        if identities.is_empty() {
            return Err(src.general(
                "no identities: add an [[identities]] entry (or --identity with --token and --ports)",
            ));
        }
        let groups = super::server_groups::resolve(src, file.groups, &identities)?;
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
            udp_idle_timeout,
            rotate_after_opens: DEFAULT_ROTATE_AFTER_OPENS,
            timing,
            auth_failures_before_block,
            auth_block,
            proxy_protocol_from,
            fallback,
            websocket_path,
            max_fallback_connections,
            metrics_listen,
            admin_socket: file.admin_socket.map(Spanned::into_inner),
            identities,
            groups,
        })
    }
}
