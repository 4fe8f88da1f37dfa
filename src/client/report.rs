//! What a reload asks of the client's loop and what it answers: the request, and the report of
//! what changed (logged, and returned to `ncx ctl reload`).

use ncx_proto::Name;
use tracing::{info, warn};

use crate::config::ClientSettings;

/// A reload for the client's loop, and where its outcome goes.
pub(super) struct Request {
    pub settings: ClientSettings,
    pub answer: tokio::sync::oneshot::Sender<Result<ClientReloaded, String>>,
}

/// What a reload changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientReloaded {
    /// Services registered that were not configured before.
    pub added: Vec<Name>,
    /// Services withdrawn.
    pub removed: Vec<Name>,
    /// Services whose settings changed.
    pub changed: Vec<Name>,
    /// Settings of the connection that changed: the client opened a new session for them.
    pub new_session: Vec<&'static str>,
    /// Settings that changed but apply only at the next start.
    pub need_restart: Vec<&'static str>,
    /// Services the server refused in this reload, with why.
    pub refused: Vec<String>,
    /// With several servers: servers the reload added (a session to each is opening)...
    pub servers_added: Vec<String>,
    /// ...and removed (their sessions drain and end).
    pub servers_removed: Vec<String>,
}

impl ClientReloaded {
    /// The log lines of a reload the client took, before its services are listed again.
    pub(super) fn log(&self) {
        let names = |v: &[Name]| match v {
            [] => "none".to_owned(),
            v => v.iter().map(Name::to_string).collect::<Vec<_>>().join(","),
        };
        info!(
            added = %names(&self.added),
            removed = %names(&self.removed),
            changed = %names(&self.changed),
            new_session = %if self.new_session.is_empty() { "no".to_owned() } else { self.new_session.join(",") },
            "configuration reloaded"
        );
        if !self.need_restart.is_empty() {
            warn!(
                settings = %self.need_restart.join(", "),
                "these settings changed but apply only at the next start"
            );
        }
    }
}
