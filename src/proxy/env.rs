//! The proxy the environment names for the server, as curl reads it: `https_proxy`, then
//! `HTTPS_PROXY`, `all_proxy`, `ALL_PROXY` (the lower-case name first, since it is the one every
//! tool understands), unless `no_proxy` (or `NO_PROXY`) lists the server. frp read neither
//! `NO_PROXY` nor the upper-case names (frp #4964).

use std::net::IpAddr;

/// A proxy named by the environment, and which variable named it.
#[derive(Clone, PartialEq, Eq)]
pub struct FromEnv {
    /// The variable.
    pub var: &'static str,
    /// Its value: a proxy URL, which may hold credentials (so no `Debug` of it).
    pub value: String,
}

/// The variables, in the order they are read.
pub const PROXY_VARS: [&str; 4] = ["https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"];

/// The proxy for `host` that the variables `var` reads name, if any. `host` is the server's host
/// as configured (a name or an address).
pub fn lookup(var: impl Fn(&str) -> Option<String>, host: &str) -> Option<FromEnv> {
    let no_proxy = var("no_proxy")
        .or_else(|| var("NO_PROXY"))
        .unwrap_or_default();
    if bypasses(&no_proxy, host) {
        return None;
    }
    PROXY_VARS.iter().find_map(|name| {
        var(name)
            .filter(|v| !v.trim().is_empty())
            .map(|value| FromEnv { var: name, value })
    })
}

/// Whether the `NO_PROXY` list names `host`: `*` (everything); a name, which also covers its
/// subdomains (`example.com` and `.example.com` both cover `a.example.com`); an address; or an
/// address block (`10.0.0.0/8`). Entries are separated by commas; case does not matter; a port
/// on an entry is ignored.
pub fn bypasses(list: &str, host: &str) -> bool {
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .trim_end_matches('.')
        .to_ascii_lowercase();
    let ip = host.parse::<IpAddr>().ok();
    list.split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .any(|entry| {
            if entry == "*" {
                return true;
            }
            let entry = entry.to_ascii_lowercase();
            if entry.contains('/') {
                return match (entry.parse::<ncx_proto::Cidr>(), ip) {
                    (Ok(block), Some(ip)) => block.contains(ip),
                    _ => false,
                };
            }
            let bare = strip_port(&entry);
            if let Ok(addr) = bare.parse::<IpAddr>() {
                return ip == Some(addr);
            }
            let suffix = bare.trim_start_matches("*.").trim_start_matches('.');
            !suffix.is_empty()
                && (host == suffix
                    || host
                        .strip_suffix(suffix)
                        .is_some_and(|rest| rest.ends_with('.')))
        })
}

/// `host` without a `:port`, and without the brackets of an IPv6 address.
fn strip_port(entry: &str) -> &str {
    if let Some(rest) = entry.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match entry.rsplit_once(':') {
        // One colon: a port. More: an IPv6 address without brackets.
        Some((h, p)) if !h.contains(':') && p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => entry,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
    }

    #[test]
    fn the_lower_case_https_variable_comes_first() {
        let e = env(&[
            ("HTTPS_PROXY", "http://upper:3128"),
            ("https_proxy", "http://lower:3128"),
            ("ALL_PROXY", "socks5://all:1080"),
        ]);
        let got = lookup(&e, "tunnel.example.com").unwrap();
        assert_eq!(
            (got.var, got.value.as_str()),
            ("https_proxy", "http://lower:3128")
        );
        let got = lookup(env(&[("HTTPS_PROXY", "http://upper:3128")]), "t").unwrap();
        assert_eq!(got.var, "HTTPS_PROXY");
        let got = lookup(env(&[("ALL_PROXY", "socks5://all:1080")]), "t").unwrap();
        assert_eq!(got.var, "ALL_PROXY");
        assert!(lookup(env(&[("https_proxy", " ")]), "t").is_none());
        assert!(lookup(env(&[]), "t").is_none());
    }

    #[test]
    fn no_proxy_takes_names_suffixes_addresses_blocks_and_a_star() {
        let list =
            "localhost, .corp.example, example.org:443, 10.0.0.0/8, 192.0.2.7, [2001:db8::1]";
        for host in [
            "localhost",
            "a.corp.example",
            "corp.example",
            "EXAMPLE.org",
            "www.example.org",
            "10.1.2.3",
            "192.0.2.7",
            "[2001:db8::1]",
            "2001:db8::1",
        ] {
            assert!(bypasses(list, host), "{host}");
        }
        for host in [
            "notexample.org",
            "example.com",
            "11.0.0.1",
            "192.0.2.8",
            "2001:db8::2",
        ] {
            assert!(!bypasses(list, host), "{host}");
        }
        assert!(bypasses("*", "anything.example"));
        assert!(!bypasses("", "anything.example"));
        let e = env(&[
            ("https_proxy", "http://p:3128"),
            ("NO_PROXY", "tunnel.example.com"),
        ]);
        assert!(lookup(&e, "tunnel.example.com").is_none());
        assert!(lookup(&e, "other.example.com").is_some());
        // The lower-case list wins when both are set.
        let e = env(&[
            ("https_proxy", "http://p:3128"),
            ("no_proxy", "a.example"),
            ("NO_PROXY", "*"),
        ]);
        assert!(lookup(&e, "b.example").is_some());
    }
}
