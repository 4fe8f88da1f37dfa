//! `transport = "websocket"` and its `url`, checked into [`WebSocketSettings`]: where the
//! WebSocket is, whether its outer TLS is ours to make (`wss://`), and the upgrade's path and
//! `Host`.

use super::*;

/// A `ws://` or `wss://` URL, checked. `Debug` shows it as `Display` does, query cut.
#[derive(Clone, PartialEq, Eq)]
pub struct WsUrl {
    /// `wss://`: TLS to the web server or proxy in front (the outer TLS), inside which the
    /// upgrade and ncx's own TLS run.
    pub secure: bool,
    /// The host, without brackets.
    pub host: String,
    /// The port (default 443 for `wss://`, 80 for `ws://`).
    pub port: u16,
    /// The request target: the path (default `/`) and any query.
    pub path: String,
}

impl std::fmt::Debug for WsUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WsUrl({self})")
    }
}

/// Shown in logs and messages with its query cut to `?…`: a CDN's access key is often put there.
impl std::fmt::Display for WsUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.secure { "wss" } else { "ws" };
        let path = match self.path.split_once('?') {
            Some((path, _)) => format!("{path}?…"),
            None => self.path.clone(),
        };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}{path}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}{path}", self.host, self.port)
        }
    }
}

impl std::str::FromStr for WsUrl {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (secure, rest) = if let Some(r) = s.strip_prefix("wss://") {
            (true, r)
        } else if let Some(r) = s.strip_prefix("ws://") {
            (false, r)
        } else {
            return Err(format!("{s:?} is not a ws:// or wss:// URL"));
        };
        let (authority, path) = match rest.find(['/', '?']) {
            Some(at) => (&rest[..at], &rest[at..]),
            None => (rest, "/"),
        };
        let path = if path.starts_with('?') {
            format!("/{path}")
        } else {
            path.to_owned()
        };
        if path.contains('#') || path.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(format!(
                "{s:?}: the path may not hold spaces, control characters or a #fragment"
            ));
        }
        if authority.contains('@') {
            return Err(format!("{s:?}: a WebSocket URL takes no user or password"));
        }
        let default_port = if secure { 443 } else { 80 };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| format!("{s:?}: unclosed [ in the host"))?;
            match after.strip_prefix(':') {
                Some(p) => (host, Some(p)),
                None if after.is_empty() => (host, None),
                None => return Err(format!("{s:?}: unexpected {after:?} after the host")),
            }
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(format!("{s:?} has no host"));
        }
        let port = match port {
            None => default_port,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("{s:?} has no valid port (1-65535)"))?,
        };
        Ok(WsUrl {
            secure,
            host: host.to_owned(),
            port,
            path,
        })
    }
}

/// The WebSocket transport, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebSocketSettings {
    /// Where the WebSocket is.
    pub url: WsUrl,
    /// The upgrade's `Host` header.
    pub host_header: String,
    /// A CA for the outer TLS of `wss://`, besides the system's.
    pub ca: Option<PathBuf>,
}

impl WebSocketSettings {
    /// The address to dial (directly or through a proxy): the URL's host and port.
    pub fn dial_address(&self) -> String {
        let u = &self.url;
        if u.host.contains(':') {
            format!("[{}]:{}", u.host, u.port)
        } else {
            format!("{}:{}", u.host, u.port)
        }
    }
}

/// Reads `transport`, `url`, `websocket_host` and `websocket_ca` of a client file.
pub(super) fn websocket_setting(
    src: &Source,
    file: &ClientFile,
) -> Result<Option<WebSocketSettings>, ConfigError> {
    let websocket = match &file.transport {
        None => false,
        Some(t) if t.get_ref() == "tcp" => false,
        Some(t) if t.get_ref() == "websocket" => true,
        Some(t) => {
            return Err(src.at(
                t.span(),
                Some("transport"),
                format!("{:?}: expected \"tcp\" or \"websocket\"", t.get_ref()),
            ))
        }
    };
    if !websocket {
        for (set, key) in [
            (file.url.as_ref().map(|u| u.span()), "url"),
            (
                file.websocket_host.as_ref().map(|u| u.span()),
                "websocket_host",
            ),
            (file.websocket_ca.as_ref().map(|u| u.span()), "websocket_ca"),
        ] {
            if let Some(span) = set {
                return Err(src.at(span, Some(key), "only used with transport = \"websocket\""));
            }
        }
        return Ok(None);
    }
    let url = file
        .url
        .as_ref()
        .ok_or_else(|| src.general("transport = \"websocket\" needs `url` (wss://HOST/PATH)"))?;
    let parsed: WsUrl = url
        .get_ref()
        .parse()
        .map_err(|e| src.at(url.span(), Some("url"), e))?;
    if let Some(server) = &file.server {
        return Err(src.at(
            server.span(),
            Some("server"),
            "with transport = \"websocket\" the server is reached at `url`: remove `server`",
        ));
    }
    if let (Some(ca), false) = (&file.websocket_ca, parsed.secure) {
        return Err(src.at(
            ca.span(),
            Some("websocket_ca"),
            "only used with a wss:// url",
        ));
    }
    let host_header = match &file.websocket_host {
        Some(h)
            if h.get_ref().is_empty() || h.get_ref().bytes().any(|b| b <= b' ' || b == 0x7f) =>
        {
            return Err(src.at(h.span(), Some("websocket_host"), "not a host name"))
        }
        Some(h) => h.get_ref().clone(),
        None => {
            let default = if parsed.secure { 443 } else { 80 };
            let host = if parsed.host.contains(':') {
                format!("[{}]", parsed.host)
            } else {
                parsed.host.clone()
            };
            if parsed.port == default {
                host
            } else {
                format!("{host}:{}", parsed.port)
            }
        }
    };
    Ok(Some(WebSocketSettings {
        url: parsed,
        host_header,
        ca: file.websocket_ca.as_ref().map(|c| c.get_ref().clone()),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_with_their_defaults() {
        let u: WsUrl = "wss://cdn.example.com/ncx".parse().unwrap();
        assert_eq!(
            (u.secure, u.host.as_str(), u.port, u.path.as_str()),
            (true, "cdn.example.com", 443, "/ncx")
        );
        let u: WsUrl = "ws://[::1]:8080".parse().unwrap();
        assert_eq!(
            (u.secure, u.host.as_str(), u.port, u.path.as_str()),
            (false, "::1", 8080, "/")
        );
        assert_eq!(u.to_string(), "ws://[::1]:8080/");
        let u: WsUrl = "ws://h?t=1".parse().unwrap();
        assert_eq!(u.path, "/?t=1");
        assert_eq!(u.to_string(), "ws://h:80/?…", "the query stays out of logs");
        assert!(!format!("{u:?}").contains("t=1"));
        for bad in [
            "https://h/",
            "wss://",
            "wss://h:0/",
            "wss://h:99999/",
            "wss://u:p@h/",
            "wss://h/a b",
            "wss://h/#x",
            "wss://[::1/",
        ] {
            assert!(bad.parse::<WsUrl>().is_err(), "{bad}");
        }
    }
}
