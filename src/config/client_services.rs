//! The `[[services]]` and `[[visits]]` of `client.toml` (and `--service`, `--listen`), checked:
//! names, local addresses, access rules, private services and their visitors, groups, health
//! checks, and the local listeners of visits.

use super::*;

/// Every service, checked.
pub(super) fn services(
    src: &Source,
    written: Vec<ServiceFile>,
) -> Result<Vec<ServiceSpec>, ConfigError> {
    let mut services = Vec::new();
    let mut names = HashSet::new();
    for s in written {
        let name = Name::new(s.name.get_ref().clone())
            .map_err(|e| src.at(s.name.span(), Some("name"), e.to_string()))?;
        if !names.insert(name.clone()) {
            return Err(src.at(
                s.name.span(),
                Some("name"),
                format!("service {name} is defined twice"),
            ));
        }
        check_host_port(s.local.get_ref()).map_err(|e| src.at(s.local.span(), Some("local"), e))?;
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
                    format!(
                        "private service {name} needs `visitors`: the identities that may reach it"
                    ),
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
        let group = match &s.group {
            Some(g) => Some(
                Name::new(g.get_ref().clone())
                    .map_err(|e| src.at(g.span(), Some("group"), e.to_string()))?,
            ),
            None => None,
        };
        let health = health_check(src, &s)?;
        let udp = match s
            .protocol
            .as_ref()
            .map(|p| (p.get_ref().as_str(), p.span()))
        {
            None | Some(("tcp", _)) => false,
            Some(("udp", span)) => {
                // Not yet for UDP: say so rather than accept a setting that would do nothing.
                let unsupported = [
                    (group.is_some(), "group"),
                    (s.health_check.is_some(), "health_check"),
                ];
                if proxy_protocol == Some(ncx_proto::ProxyVersion::V1) {
                    return Err(src.at(
                        span,
                        Some("proxy_protocol"),
                        format!("UDP service {name}: the PROXY protocol for datagrams is version 2 only: use \"v2\""),
                    ));
                }
                if let Some((_, key)) = unsupported.iter().find(|(set, _)| *set) {
                    return Err(src.at(
                        span,
                        Some(key),
                        format!(
                            "UDP service {name}: `{key}` is not supported for UDP services yet"
                        ),
                    ));
                }
                true
            }
            Some((other, span)) => {
                return Err(src.at(
                    span,
                    Some("protocol"),
                    format!("{other:?}: expected \"tcp\" or \"udp\""),
                ))
            }
        };
        services.push(ServiceSpec {
            name,
            local: s.local.into_inner(),
            remote_port: s.remote_port,
            access: ncx_proto::AccessRules { allow, deny },
            proxy_protocol,
            visitors,
            group,
            health,
            udp,
        });
    }
    Ok(services)
}

/// Every visit, checked.
pub(super) fn visits(src: &Source, written: Vec<VisitFile>) -> Result<Vec<VisitSpec>, ConfigError> {
    let mut visits = Vec::new();
    let mut listens = HashSet::new();
    for v in written {
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
        let udp = match v
            .protocol
            .as_ref()
            .map(|p| (p.get_ref().as_str(), p.span()))
        {
            None | Some(("tcp", _)) => false,
            Some(("udp", _)) => true,
            Some((other, span)) => {
                return Err(src.at(
                    span,
                    Some("protocol"),
                    format!("{other:?}: expected \"tcp\" or \"udp\""),
                ))
            }
        };
        visits.push(VisitSpec {
            owner,
            service,
            listen,
            udp,
        });
    }
    Ok(visits)
}

/// How a client checks that a service's local end answers: a TCP connect to `local`, or an HTTP
/// GET whose status must be 2xx or 3xx. A service that fails `failures` checks in a row is
/// reported unhealthy to the server (which gives it no new visitors) until one passes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub probe: HealthProbe,
    /// Between two checks.
    pub interval: Duration,
    /// For one check.
    pub timeout: Duration,
    /// Failed checks in a row that make the service unhealthy.
    pub failures: u32,
}

/// What one health check does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthProbe {
    /// Connect to the service's `local` address.
    Tcp,
    /// `GET path` from `HOST:PORT`, with `Host: host`.
    Http {
        addr: String,
        host: String,
        path: String,
    },
}

/// Seconds between health checks, unless `health_interval_secs` says otherwise.
pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(5);
/// Seconds one health check may take, unless `health_timeout_secs` says otherwise.
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(2);
/// Failed checks in a row before a service is unhealthy, unless `health_failures` says otherwise.
pub const DEFAULT_HEALTH_FAILURES: u32 = 2;

/// The health check of a `[[services]]` entry, if it has one.
fn health_check(src: &Source, s: &ServiceFile) -> Result<Option<HealthCheck>, ConfigError> {
    let Some(check) = &s.health_check else {
        for (set, key) in [
            (s.health_interval_secs.is_some(), "health_interval_secs"),
            (s.health_timeout_secs.is_some(), "health_timeout_secs"),
            (s.health_failures.is_some(), "health_failures"),
        ] {
            if set {
                return Err(src.at(
                    s.name.span(),
                    Some(key),
                    "needs `health_check` (\"tcp\" or \"http://HOST:PORT/PATH\")",
                ));
            }
        }
        return Ok(None);
    };
    let text = check.get_ref().trim();
    let probe = if text == "tcp" {
        HealthProbe::Tcp
    } else if let Some(rest) = text.strip_prefix("http://") {
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let addr = if authority
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
            && !authority.ends_with(']')
        {
            authority.to_owned()
        } else {
            format!("{authority}:80")
        };
        check_host_port(&addr).map_err(|e| src.at(check.span(), Some("health_check"), e))?;
        if path.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(src.at(
                check.span(),
                Some("health_check"),
                format!("{path:?}: a path without spaces"),
            ));
        }
        HealthProbe::Http {
            addr,
            host: authority.to_owned(),
            path: path.to_owned(),
        }
    } else {
        return Err(src.at(
            check.span(),
            Some("health_check"),
            format!("{text:?}: expected \"tcp\" or \"http://HOST[:PORT]/PATH\""),
        ));
    };
    let interval = secs(
        src,
        &s.health_interval_secs,
        "health_interval_secs",
        DEFAULT_HEALTH_INTERVAL,
    )?;
    let timeout = secs(
        src,
        &s.health_timeout_secs,
        "health_timeout_secs",
        DEFAULT_HEALTH_TIMEOUT,
    )?;
    let failures = match &s.health_failures {
        Some(f) if *f.get_ref() == 0 => {
            return Err(src.at(f.span(), Some("health_failures"), "must be at least 1"))
        }
        Some(f) => *f.get_ref(),
        None => DEFAULT_HEALTH_FAILURES,
    };
    Ok(Some(HealthCheck {
        probe,
        interval,
        timeout,
        failures,
    }))
}
