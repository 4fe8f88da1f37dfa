//! Checked values that both configuration files use: durations, counts, address blocks and the
//! timing keys, each with its bounds and a located error.

use super::*;

/// Reads the shared timing keys, checking that pings come well within the liveness timeout.
pub(crate) fn timing(
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

/// The longest duration any `_secs` key takes: a year. Every duration is added to a clock reading
/// or doubled somewhere (a deadline, a backoff, the liveness check); a year leaves room for all of
/// that, while `u64::MAX` seconds made the first such sum overflow and panic.
pub const MAX_SECS: u64 = 365 * 24 * 3600;

/// A positive number of seconds, at most [`MAX_SECS`], or the default.
pub(crate) fn secs(
    src: &Source,
    v: &Option<Spanned<u64>>,
    key: &str,
    default: Duration,
) -> Result<Duration, ConfigError> {
    match v {
        Some(s) if *s.get_ref() == 0 => Err(src.at(s.span(), Some(key), "must be at least 1")),
        Some(s) if *s.get_ref() > MAX_SECS => Err(src.at(
            s.span(),
            Some(key),
            format!("must be at most {MAX_SECS} (a year)"),
        )),
        Some(s) => Ok(Duration::from_secs(*s.get_ref())),
        None => Ok(default),
    }
}

/// A list of address blocks (`"10.0.0.0/8"`, `"2001:db8::1"`), at most
/// [`ncx_proto::MAX_RULES`] of them; absent is empty.
pub(crate) fn cidr_list(
    src: &Source,
    list: &Option<Spanned<Vec<Spanned<String>>>>,
    key: &str,
) -> Result<Vec<ncx_proto::Cidr>, ConfigError> {
    let Some(list) = list else {
        return Ok(Vec::new());
    };
    if list.get_ref().len() > ncx_proto::MAX_RULES {
        return Err(src.at(
            list.span(),
            Some(key),
            format!("at most {} blocks", ncx_proto::MAX_RULES),
        ));
    }
    list.get_ref()
        .iter()
        .map(|rule| {
            rule.get_ref()
                .parse::<ncx_proto::Cidr>()
                .map_err(|e| src.at(rule.span(), Some(key), e.to_string()))
        })
        .collect()
}

/// A positive count, or the default.
pub(crate) fn count(
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

/// `metrics_listen`: `HOST:PORT`, or a bare port for that port on 127.0.0.1 (the endpoint has no
/// authentication: loopback unless an address says otherwise).
pub(crate) fn metrics_listen(
    src: &Source,
    value: &Option<Spanned<String>>,
) -> Result<Option<SocketAddr>, ConfigError> {
    let Some(v) = value else {
        return Ok(None);
    };
    let text = v.get_ref().trim();
    let addr = match text.parse::<u16>() {
        Ok(port) => SocketAddr::from(([127, 0, 0, 1], port)),
        Err(_) => text.parse::<SocketAddr>().map_err(|e| {
            src.at(
                v.span(),
                Some("metrics_listen"),
                format!("{text:?}: {e} (an IP:PORT such as 127.0.0.1:9100, or a port)"),
            )
        })?,
    };
    Ok(Some(addr))
}

/// `OWNER/SERVICE` of a visit.
pub(super) fn parse_visit_target(s: &str) -> Result<(Name, Name), String> {
    let (owner, service) = s.split_once('/').ok_or_else(|| {
        format!("{s:?}: expected OWNER/SERVICE, the identity that offers the private service and its name, e.g. office-pc/office-rdp")
    })?;
    let owner = Name::new(owner).map_err(|e| format!("owner {owner:?}: {e}"))?;
    let service = Name::new(service).map_err(|e| format!("service {service:?}: {e}"))?;
    Ok((owner, service))
}

/// `HOST:PORT` with a host and a port other than 0 (the host is resolved later, when used).
pub(super) fn check_host_port(s: &str) -> Result<(), String> {
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
