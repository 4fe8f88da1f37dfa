//! The `[[groups]]` of `server.toml`, checked: services that several sessions offer together
//! (several clients, or one identity on several machines), their members, ports and balance.

use super::identity::{overlap, ports_text};
use super::*;

/// How a group spreads its visitors over its live, healthy members.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Balance {
    /// Each member in turn (the default).
    #[default]
    RoundRobin,
    /// The member with the fewest visitors connected now; ties go in turn.
    LeastConnections,
}

impl std::fmt::Display for Balance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Balance::RoundRobin => "round_robin",
            Balance::LeastConnections => "least_connections",
        })
    }
}

/// A group as the server allows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupPolicy {
    /// The group's name. A visit of a private group names it as the owner, so it may not be the
    /// name of an identity.
    pub name: Name,
    /// The identities whose sessions may join it.
    pub identities: Vec<Name>,
    /// Address its public port is bound on.
    pub bind: IpAddr,
    /// Ports the group's public service may use (empty: the group is private only).
    pub ports: Vec<PortRange>,
    /// How visitors are spread.
    pub balance: Balance,
}

impl GroupPolicy {
    /// Whether `identity` may join.
    pub fn admits(&self, identity: &Name) -> bool {
        self.identities.contains(identity)
    }

    /// Whether `port` is inside one of the group's ranges.
    pub fn allows(&self, port: u16) -> bool {
        self.ports.iter().any(|r| r.0.contains(&port))
    }

    /// The group's port ranges, for messages.
    pub fn ports_text(&self) -> String {
        ports_text(&self.ports)
    }
}

/// One `[[groups]]` entry of `server.toml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupFile {
    /// The group's name.
    pub name: Spanned<String>,
    /// The identities whose sessions may join.
    pub identities: Spanned<Vec<Spanned<String>>>,
    /// Address the group's public port is bound on.
    pub bind: Option<Spanned<String>>,
    /// Ports its public service may use, as for an identity.
    pub ports: Option<Spanned<Vec<Spanned<PortEntry>>>>,
    /// `"round_robin"` (the default) or `"least_connections"`.
    pub balance: Option<Spanned<String>>,
}

/// Checks every group against the identities (already checked).
pub(super) fn resolve(
    src: &Source,
    written: Vec<GroupFile>,
    identities: &[IdentityPolicy],
) -> Result<Vec<GroupPolicy>, ConfigError> {
    let mut groups: Vec<GroupPolicy> = Vec::with_capacity(written.len());
    for g in written {
        let name = Name::new(g.name.get_ref().clone())
            .map_err(|e| src.at(g.name.span(), Some("name"), e.to_string()))?;
        if groups.iter().any(|o| o.name == name) {
            return Err(src.at(
                g.name.span(),
                Some("name"),
                format!("group {name} is defined twice"),
            ));
        }
        if identities.iter().any(|i| i.name == name) {
            return Err(src.at(
                g.name.span(),
                Some("name"),
                format!("{name} is the name of an identity; a visit names its owner, so a group needs a name of its own"),
            ));
        }
        let mut members = Vec::new();
        for m in g.identities.get_ref() {
            let member = Name::new(m.get_ref().clone())
                .map_err(|e| src.at(m.span(), Some("identities"), e.to_string()))?;
            if !identities.iter().any(|i| i.name == member) {
                return Err(src.at(
                    m.span(),
                    Some("identities"),
                    format!("no identity is named {member}"),
                ));
            }
            if !members.contains(&member) {
                members.push(member);
            }
        }
        if members.is_empty() {
            return Err(src.at(
                g.identities.span(),
                Some("identities"),
                format!("group {name} lists no identity that may join it"),
            ));
        }
        let bind = match &g.bind {
            Some(b) => b
                .get_ref()
                .parse::<IpAddr>()
                .map_err(|e| src.at(b.span(), Some("bind"), format!("{:?}: {e}", b.get_ref())))?,
            None => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        };
        let mut ports = Vec::new();
        for p in g.ports.iter().flat_map(|l| l.get_ref()) {
            let range = p
                .get_ref()
                .0
                .parse::<PortRange>()
                .map_err(|e| src.at(p.span(), Some("ports"), e))?;
            // A group's port is the group's alone: an identity allowed it would race the group
            // for it, as two identities would.
            let taken = identities
                .iter()
                .flat_map(|i| {
                    i.ports
                        .iter()
                        .map(move |r| (format!("identity {}", i.name), r))
                })
                .chain(groups.iter().flat_map(|o| {
                    o.ports
                        .iter()
                        .map(move |r| (format!("group {}", o.name), r))
                }))
                .find_map(|(who, r)| overlap(r, &range).map(|port| (who, port)));
            if let Some((who, port)) = taken {
                return Err(src.at(
                    p.span(),
                    Some("ports"),
                    format!(
                        "port {port} is also allowed for {who}; a group's ports must be its own"
                    ),
                ));
            }
            ports.push(range);
        }
        let balance = match g.balance.as_ref().map(|b| (b.get_ref().as_str(), b.span())) {
            None | Some(("round_robin", _)) => Balance::RoundRobin,
            Some(("least_connections", _)) => Balance::LeastConnections,
            Some((other, span)) => {
                return Err(src.at(
                    span,
                    Some("balance"),
                    format!("{other:?}: expected \"round_robin\" or \"least_connections\""),
                ))
            }
        };
        groups.push(GroupPolicy {
            name,
            identities: members,
            bind,
            ports,
            balance,
        });
    }
    Ok(groups)
}
