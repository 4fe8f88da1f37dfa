//! Reaching the server through an outbound proxy, for networks whose one way out is a company
//! proxy: HTTP CONNECT (`http://`), the same over TLS to the proxy (`https://`), or SOCKS5
//! (`socks5://`, the proxy resolving the server's name). The proxy only opens a TCP tunnel; the
//! ncx TLS session runs end to end inside it, so the proxy never sees plaintext and
//! authentication and pinning are what they are without it.
//!
//! Which proxy: the client's `proxy` (or `--proxy`); without it the environment
//! ([`env`]: `https_proxy`, `HTTPS_PROXY`, `all_proxy`, `ALL_PROXY`, unless `no_proxy` or
//! `NO_PROXY` lists the server); `proxy = "direct"` ignores the environment.

use std::sync::Arc;

mod dial;
mod env;
mod http;
mod socks5;
mod stream;
mod url;

pub use dial::{dial, ProxyFailure};
pub use env::{bypasses, lookup, FromEnv, PROXY_VARS};
pub use http::{parse_reply as parse_http_reply, ReplyHead, MAX_REPLY_HEAD};
pub use socks5::{
    parse_connect_head as parse_socks5_connect_head, parse_method as parse_socks5_method,
};
pub use stream::Transport;
pub use url::{ProxyUrl, Scheme};

/// The host and port of a `HOST:PORT` that the configuration has checked (the brackets of an
/// IPv6 address removed): what the proxy is asked to reach, and what `NO_PROXY` is matched with.
pub fn host_and_port(server: &str) -> (String, u16) {
    let (host, port) = server.rsplit_once(':').unwrap_or((server, ""));
    let host = host.trim_start_matches('[').trim_end_matches(']');
    (
        host.to_owned(),
        port.parse().unwrap_or(crate::config::DEFAULT_PORT),
    )
}

/// The configured choice, before the environment is consulted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ProxySetting {
    /// Whatever the environment names (the default).
    #[default]
    FromEnvironment,
    /// No proxy, whatever the environment says (`proxy = "direct"`).
    Direct,
    /// This proxy.
    Url(ProxyUrl),
}

/// The proxy a client goes through, and what named it (for the log and for errors).
#[derive(Debug, Clone)]
pub struct Chosen {
    /// The proxy.
    pub url: ProxyUrl,
    /// `proxy` in the configuration, or the environment variable.
    pub from: String,
}

/// The proxy for the server `host`: the configured one, or the one the environment (read by
/// `var`) names for it. An unusable URL in the environment is an error naming the variable.
pub fn choose(
    setting: &ProxySetting,
    host: &str,
    var: impl Fn(&str) -> Option<String>,
) -> Result<Option<Chosen>, String> {
    match setting {
        ProxySetting::Direct => Ok(None),
        ProxySetting::Url(url) => Ok(Some(Chosen {
            url: url.clone(),
            from: "the configuration (`proxy`)".into(),
        })),
        ProxySetting::FromEnvironment => match lookup(var, host) {
            None => Ok(None),
            Some(found) => {
                let url = found
                    .value
                    .parse::<ProxyUrl>()
                    .map_err(|e| format!("the environment variable {}: {e}", found.var))?;
                Ok(Some(Chosen {
                    url,
                    from: format!("the environment variable {}", found.var),
                }))
            }
        },
    }
}

/// The TLS configuration for `https://` proxies and the outer TLS of `wss://` WebSockets: the
/// system's roots (a company proxy's CA, or a CDN's public one, is there) and `extra`, if given.
pub fn proxy_tls_config(
    extra: Option<&std::path::Path>,
) -> Result<Arc<rustls::ClientConfig>, crate::tls::TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        // One unusable system certificate must not cost the others.
        let _ = roots.add(cert);
    }
    if let Some(path) = extra {
        for cert in crate::tls::load_certs(path)? {
            roots
                .add(cert)
                .map_err(|cause| crate::tls::TlsError::Rustls {
                    context: format!("adding the CA certificate in {}", path.display()),
                    cause,
                })?;
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|cause| crate::tls::TlsError::Rustls {
            context: "choosing TLS versions for a proxy or WebSocket".into(),
            cause,
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_environment_is_read_unless_configured_otherwise() {
        let env = |k: &str| (k == "HTTPS_PROXY").then(|| "http://envproxy:3128".to_owned());
        let chosen = choose(&ProxySetting::FromEnvironment, "tunnel.example.com", env)
            .unwrap()
            .unwrap();
        assert_eq!(chosen.url.host, "envproxy");
        assert_eq!(chosen.from, "the environment variable HTTPS_PROXY");
        assert!(choose(&ProxySetting::Direct, "t", env).unwrap().is_none());
        let url: ProxyUrl = "socks5://mine:1080".parse().unwrap();
        let chosen = choose(&ProxySetting::Url(url), "t", env).unwrap().unwrap();
        assert_eq!(chosen.url.host, "mine");
        let bad = |k: &str| (k == "https_proxy").then(|| "ftp://x".to_owned());
        let e = choose(&ProxySetting::FromEnvironment, "t", bad).unwrap_err();
        assert!(
            e.starts_with("the environment variable https_proxy: proxy scheme"),
            "{e}"
        );
    }
}
