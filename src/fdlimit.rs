//! The open-file limit. Every visitor is a socket on each side, and the common default soft limit
//! (1,024) is far below the default of 10,000 visitors per session: past it, new sessions and
//! visitors fail with EMFILE. So at start the soft limit is raised to the hard limit (which needs
//! no privilege), and the server warns, with the numbers, when its limits cannot fit in it.

/// The open-file limit in force: soft (what applies) and hard (how far it may be raised).
/// `None` is unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileLimit {
    /// The limit that applies.
    pub soft: Option<u64>,
    /// The ceiling an unprivileged process may raise `soft` to.
    pub hard: Option<u64>,
}

/// Descriptors a process needs besides its visitors: the tunnel connection(s), listeners, the
/// runtime's own (epoll, eventfd), standard streams, certificate files being read.
pub const RESERVED_FILES: u64 = 64;

/// Raises the soft open-file limit to the hard limit; returns the limit in force afterwards, or
/// `None` where the platform has no such limit.
#[cfg(unix)]
pub fn raise() -> Option<FileLimit> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let before = getrlimit(Resource::Nofile);
    if before.current != before.maximum {
        let raised = Rlimit {
            current: before.maximum,
            maximum: before.maximum,
        };
        if let Err(e) = setrlimit(Resource::Nofile, raised) {
            // macOS refuses an unlimited soft limit; the limit in force is then what it was.
            tracing::debug!(error = %e, "raising the open-file limit failed");
        }
    }
    let now = getrlimit(Resource::Nofile);
    Some(FileLimit {
        soft: now.current,
        hard: now.maximum,
    })
}

/// Raises the soft open-file limit to the hard limit; returns the limit in force afterwards, or
/// `None` where the platform has no such limit.
#[cfg(not(unix))]
pub fn raise() -> Option<FileLimit> {
    None
}

/// The warning, with the numbers, when one session of `visitors_per_session` visitors and
/// `handshakes` handshakes in progress cannot fit in `limit`; `None` when they fit.
pub fn server_shortfall(
    limit: FileLimit,
    visitors_per_session: usize,
    handshakes: usize,
) -> Option<String> {
    let soft = limit.soft?;
    let need = (visitors_per_session as u64)
        .saturating_add(handshakes as u64)
        .saturating_add(RESERVED_FILES);
    (need > soft).then(|| {
        format!(
            "the open-file limit is {soft}, but one session at max_visitors_per_session \
             ({visitors_per_session}) beside max_handshakes ({handshakes}) needs about {need}: \
             raise the hard limit (ulimit -Hn, LimitNOFILE= in a systemd unit) or lower the limits"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shortfall_names_the_numbers() {
        let limit = FileLimit {
            soft: Some(1024),
            hard: Some(1024),
        };
        let w = server_shortfall(limit, 10_000, 256).expect("does not fit");
        assert!(
            w.contains("1024") && w.contains("10000") && w.contains("10320"),
            "{w}"
        );
        assert!(server_shortfall(limit, 700, 256).is_none());
        let unlimited = FileLimit {
            soft: None,
            hard: None,
        };
        assert!(server_shortfall(unlimited, usize::MAX, usize::MAX).is_none());
    }

    #[cfg(unix)]
    #[test]
    fn raising_leaves_soft_at_hard() {
        let limit = raise().expect("unix has the limit");
        assert_eq!(limit.soft, limit.hard);
    }
}
