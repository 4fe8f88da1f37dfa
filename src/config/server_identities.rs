//! The `[[identities]]` of `server.toml` (and `--identity`), checked: names, authentication,
//! tokens or token files, the bind address and ports that must not overlap between identities.

use super::identity::overlap;
use super::*;

/// Checks every identity; `client_ca` is the server's `tls.client_ca`, which certificate
/// authentication needs.
pub(super) fn resolve(
    src: &Source,
    written: Vec<IdentityFile>,
    client_ca: Option<&Spanned<PathBuf>>,
) -> Result<Vec<IdentityPolicy>, ConfigError> {
    let mut identities = Vec::with_capacity(written.len());
    let mut seen = HashSet::new();
    for id in written {
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
            Some(b) => b
                .get_ref()
                .parse::<IpAddr>()
                .map_err(|e| src.at(b.span(), Some("bind"), format!("{:?}: {e}", b.get_ref())))?,
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
    Ok(identities)
}

/// `auth` of an `[[identities]]` entry, before the token is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AuthKind {
    Token,
    Certificate,
    Both,
}
