//! A proxy's URL: `scheme://[user[:password]@]host[:port]`, parsed with the scheme's port when
//! none is given, and shown without its password.

use std::fmt;

/// How the client talks to its proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// HTTP CONNECT.
    Http,
    /// HTTP CONNECT inside TLS to the proxy.
    Https,
    /// SOCKS5, the proxy resolving names.
    Socks5,
}

impl Scheme {
    fn name(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
            Scheme::Socks5 => "socks5",
        }
    }

    fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
            Scheme::Socks5 => 1080,
        }
    }
}

/// A proxy: `scheme://[user[:password]@]host[:port]`. The password is a secret: `Debug` and
/// `Display` show the user at most.
#[derive(Clone, PartialEq, Eq)]
pub struct ProxyUrl {
    /// How to talk to it.
    pub scheme: Scheme,
    /// Its host: a name or an address (without brackets).
    pub host: String,
    /// Its port (the scheme's default when the URL has none: 80, 443, 1080).
    pub port: u16,
    /// The user, if it wants one.
    pub user: Option<String>,
    password: Option<String>,
}

impl ProxyUrl {
    /// The password, if any.
    pub fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    /// Sets the password (from `proxy_password_file`).
    pub fn set_password(&mut self, password: String) {
        self.password = Some(password);
    }

    /// The user and password (empty when only a user is given), if there is a user.
    pub(super) fn credentials(&self) -> Option<(&str, &str)> {
        self.user
            .as_deref()
            .map(|u| (u, self.password.as_deref().unwrap_or_default()))
    }
}

impl fmt::Display for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://", self.scheme.name())?;
        if let Some(u) = &self.user {
            write!(f, "{u}@")?;
        }
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Debug for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ProxyUrl({self}")?;
        if self.password.is_some() {
            f.write_str(", password: ****")?;
        }
        f.write_str(")")
    }
}

impl std::str::FromStr for ProxyUrl {
    type Err = String;

    /// A URL without a scheme is an HTTP proxy, as for curl. `socks5h://` is taken as
    /// `socks5://`, which always lets the proxy resolve names.
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (scheme, rest) = match s.split_once("://") {
            Some((scheme, rest)) => {
                let scheme = match scheme.to_ascii_lowercase().as_str() {
                    "http" => Scheme::Http,
                    "https" => Scheme::Https,
                    "socks5" | "socks5h" => Scheme::Socks5,
                    other => {
                        return Err(format!(
                            "proxy scheme {other:?}: expected http://, https:// or socks5://"
                        ))
                    }
                };
                (scheme, rest)
            }
            None => (Scheme::Http, s),
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains('/') || rest.contains('?') || rest.contains('#') {
            return Err("a proxy URL has no path: scheme://[user:password@]host[:port]".into());
        }
        let (userinfo, hostport) = match rest.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, rest),
        };
        let (user, password) = match userinfo {
            None => (None, None),
            Some(u) => {
                let (user, pass) = match u.split_once(':') {
                    Some((user, pass)) => (user, Some(pass)),
                    None => (u, None),
                };
                let user = percent_decode(user)?;
                if user.is_empty() {
                    return Err("the proxy URL has an empty user".into());
                }
                (Some(user), pass.map(percent_decode).transpose()?)
            }
        };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or("an IPv6 proxy address needs its closing ]")?;
            match after.strip_prefix(':') {
                Some(p) => (h, Some(p)),
                None if after.is_empty() => (h, None),
                None => return Err(format!("unexpected {after:?} after the proxy address")),
            }
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            }
        };
        if host.is_empty() {
            return Err("the proxy URL has no host".into());
        }
        let port = match port {
            None => scheme.default_port(),
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("proxy port {p:?} is not a number from 1 to 65535"))?,
        };
        Ok(ProxyUrl {
            scheme,
            host: host.to_owned(),
            port,
            user,
            password,
        })
    }
}

/// `%XX` escapes of a URL's user or password.
fn percent_decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or(
                    "a % in the proxy URL's user or password must be followed by two hex digits",
                )?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "the proxy URL's user or password is not UTF-8".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_urls_parse_with_implicit_ports_and_hidden_passwords() {
        let p: ProxyUrl = "http://proxy.corp:3128".parse().unwrap();
        assert_eq!(
            (p.scheme, p.host.as_str(), p.port),
            (Scheme::Http, "proxy.corp", 3128)
        );
        // rathole panicked here: the port is implicit (rathole helper.rs:119).
        assert_eq!("http://proxy.corp".parse::<ProxyUrl>().unwrap().port, 80);
        assert_eq!("https://proxy.corp/".parse::<ProxyUrl>().unwrap().port, 443);
        assert_eq!("socks5://gw".parse::<ProxyUrl>().unwrap().port, 1080);
        assert_eq!(
            "socks5h://gw".parse::<ProxyUrl>().unwrap().scheme,
            Scheme::Socks5
        );
        assert_eq!(
            "proxy:8080".parse::<ProxyUrl>().unwrap().scheme,
            Scheme::Http
        );
        let v6: ProxyUrl = "http://[2001:db8::1]:3128".parse().unwrap();
        assert_eq!((v6.host.as_str(), v6.port), ("2001:db8::1", 3128));
        assert_eq!(v6.to_string(), "http://[2001:db8::1]:3128");
        let p: ProxyUrl = "http://al%40ice:p%3Ass@proxy:3128".parse().unwrap();
        assert_eq!(p.user.as_deref(), Some("al@ice"));
        assert_eq!(p.password(), Some("p:ss"));
        assert_eq!(p.to_string(), "http://al@ice@proxy:3128");
        let shown = format!("{p:?} {p}");
        assert!(
            !shown.contains("p:ss") && !shown.contains("p%3Ass"),
            "{shown}"
        );
        for bad in [
            "ftp://proxy",
            "http://proxy:0",
            "http://proxy:x",
            "http://",
            "http://proxy/path",
            "http://@proxy",
            "http://[::1",
            "http://u:%zz@proxy",
        ] {
            assert!(bad.parse::<ProxyUrl>().is_err(), "{bad}");
        }
    }
}
