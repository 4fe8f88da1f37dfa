//! The one audit record: a line under the target `ncx::audit` for every visitor connection the
//! server handled, whatever became of it (public visitors and private visits alike).

use std::net::SocketAddr;

use ncx_proto::Name;
use tokio::time::Instant;

/// How a visitor connection ended, as the audit line tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VisitorEnd {
    /// Bytes from the visitor.
    pub bytes_in: u64,
    /// Bytes to the visitor.
    pub bytes_out: u64,
    /// How it ended, in words ("finished", "reset: …", "refused: …").
    pub how: String,
}

impl VisitorEnd {
    /// Ended before any byte moved.
    pub fn before_data(how: impl Into<String>) -> Self {
        VisitorEnd {
            bytes_in: 0,
            bytes_out: 0,
            how: how.into(),
        }
    }
}

/// One visitor connection for the audit log.
#[derive(Debug)]
pub struct AuditRecord<'a> {
    /// The service visited.
    pub service: &'a Name,
    /// The identity offering the service, for a private visit.
    pub owner: Option<&'a Name>,
    /// The visitor's address (for a private visit, the visiting session's).
    pub visitor: SocketAddr,
    /// The identity visiting, for a private visit.
    pub identity: Option<&'a Name>,
    /// When the visitor arrived.
    pub started: Instant,
}

impl AuditRecord<'_> {
    /// Writes the audit line for a visitor that ended as `end`.
    pub fn emit(&self, end: &VisitorEnd) {
        tracing::info!(
            target: "ncx::audit",
            service = %self.service,
            owner = self.owner.map(tracing::field::display),
            visitor = %self.visitor,
            identity = self.identity.map(tracing::field::display),
            bytes_in = end.bytes_in,
            bytes_out = end.bytes_out,
            duration_ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            end = %end.how,
            "visitor connection"
        );
    }
}
