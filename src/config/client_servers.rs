//! How a client reaches its servers, checked: one `server` or several `servers` (with
//! `server_mode`), the name each certificate must carry, and how every server is verified.

use super::*;

/// With several servers, how the client uses them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ServerMode {
    /// A session to every server at once, each registering every service and reconnecting on its
    /// own (the default): DNS round robin or a load balancer in front of the servers reaches a
    /// live one.
    #[default]
    All,
    /// One session at a time, to the first server that answers, in order; after a failure the
    /// next one, and back to an earlier one once it answers again.
    Failover,
}

impl std::fmt::Display for ServerMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ServerMode::All => "all",
            ServerMode::Failover => "failover",
        })
    }
}

/// The servers as a client reaches them.
pub(super) struct Reach {
    /// Every server, at least one, in the order given.
    pub servers: Vec<String>,
    pub mode: ServerMode,
    /// The name the first server's certificate must carry (and the SNI).
    pub server_name: rustls::pki_types::ServerName<'static>,
    /// Whether `server_name` was given, so it holds for every server; else each server's host.
    pub fixed_server_name: bool,
    pub trust: ServerTrust,
}

/// The host of `HOST:PORT`, without the brackets of an IPv6 address.
pub(super) fn host_of(server: &str) -> String {
    server
        .rsplit_once(':')
        .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']'))
        .unwrap_or_default()
        .to_owned()
}

pub(super) fn reach(
    src: &Source,
    file: &ClientFile,
    websocket: Option<&WebSocketSettings>,
) -> Result<Reach, ConfigError> {
    let servers: Vec<Spanned<String>> =
        match (websocket, &file.server, &file.servers) {
            (Some(_), _, Some(list)) => return Err(src.at(
                list.span(),
                Some("servers"),
                "one WebSocket `url` reaches one server; several servers need transport = \"tcp\"",
            )),
            (Some(ws), _, None) => vec![Spanned::new(
                file.url.as_ref().map_or(0..0, |u| u.span()),
                ws.dial_address(),
            )],
            (None, Some(_), Some(list)) => {
                return Err(src.at(
                    list.span(),
                    Some("servers"),
                    "set either `server` or `servers`, not both",
                ))
            }
            (None, Some(server), None) => vec![server.clone()],
            (None, None, Some(list)) if list.get_ref().is_empty() => {
                return Err(src.at(list.span(), Some("servers"), "list at least one server"))
            }
            (None, None, Some(list)) => list.get_ref().clone(),
            (None, None, None) => {
                return Err(src.general("no server address: set `server` or --server"))
            }
        };
    let mut seen = HashSet::new();
    for s in &servers {
        let key = if file.servers.is_some() {
            "servers"
        } else {
            "server"
        };
        check_host_port(s.get_ref()).map_err(|e| src.at(s.span(), Some(key), e))?;
        if !seen.insert(s.get_ref().clone()) {
            return Err(src.at(
                s.span(),
                Some(key),
                format!("{} is listed twice", s.get_ref()),
            ));
        }
    }
    let mode = match file
        .server_mode
        .as_ref()
        .map(|m| (m.get_ref().as_str(), m.span()))
    {
        None | Some(("all", _)) => ServerMode::All,
        Some(("failover", _)) => ServerMode::Failover,
        Some((other, span)) => {
            return Err(src.at(
                span,
                Some("server_mode"),
                format!("{other:?}: expected \"all\" or \"failover\""),
            ))
        }
    };
    let first = &servers[0];
    let name = match &file.server_name {
        Some(n) => n.get_ref().clone(),
        None => host_of(first.get_ref()),
    };
    let server_name = rustls::pki_types::ServerName::try_from(name.clone())
        .map_err(|e| {
            let span = file.server_name.as_ref().map_or(first.span(), |n| n.span());
            src.at(span, Some("server_name"), format!("{name:?}: {e}"))
        })?
        .to_owned();
    // Every server's host must make a name too (checked here, not at its first connect).
    if file.server_name.is_none() {
        for s in &servers[1..] {
            let host = host_of(s.get_ref());
            rustls::pki_types::ServerName::try_from(host.clone())
                .map_err(|e| src.at(s.span(), Some("servers"), format!("{host:?}: {e}")))?;
        }
    }
    Ok(Reach {
        servers: servers.into_iter().map(Spanned::into_inner).collect(),
        mode,
        server_name,
        fixed_server_name: file.server_name.is_some(),
        trust: trust(src, file)?,
    })
}

/// How the server is verified: a CA, pinned fingerprints (a server must present one of them), or
/// nothing at all.
fn trust(src: &Source, file: &ClientFile) -> Result<ServerTrust, ConfigError> {
    let insecure = file
        .insecure_skip_verify
        .as_ref()
        .is_some_and(|b| *b.get_ref());
    let pins: Option<Vec<(&Spanned<String>, &str)>> =
        match (&file.server_fingerprint, &file.server_fingerprints) {
            (Some(_), Some(list)) => {
                return Err(src.at(
                    list.span(),
                    Some("server_fingerprints"),
                    "set either `server_fingerprint` or `server_fingerprints`, not both",
                ))
            }
            (Some(fp), None) => Some(vec![(fp, "server_fingerprint")]),
            (None, Some(list)) if list.get_ref().is_empty() => {
                return Err(src.at(
                    list.span(),
                    Some("server_fingerprints"),
                    "list at least one fingerprint",
                ))
            }
            (None, Some(list)) => Some(
                list.get_ref()
                    .iter()
                    .map(|fp| (fp, "server_fingerprints"))
                    .collect(),
            ),
            (None, None) => None,
        };
    Ok(match (&file.ca, pins, insecure) {
        (Some(ca), None, false) => ServerTrust::ca_file(ca.get_ref())
            .map_err(|e| src.at(ca.span(), Some("ca"), e.to_string()))?,
        (None, Some(pins), false) => {
            let mut fingerprints = Vec::with_capacity(pins.len());
            for (fp, key) in pins {
                fingerprints.push(
                    fp.get_ref()
                        .parse::<Fingerprint>()
                        .map_err(|e| src.at(fp.span(), Some(key), e.to_string()))?,
                );
            }
            ServerTrust::Pinned(fingerprints)
        }
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
    })
}
