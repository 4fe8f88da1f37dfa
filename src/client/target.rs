//! What a visit, TCP or UDP, needs of the session it goes through; the session loop publishes
//! the current one for the visit listeners.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use crate::mux::SessionHandle;
use crate::tasks::TaskGroup;

/// What a visit needs of the current session.
#[derive(Clone)]
pub(super) struct Target {
    /// Opens the substream.
    pub handle: SessionHandle,
    /// The session's visitors: a visit counts as one, so the session's drain waits for visits
    /// too, and cancelling them resets it.
    pub visitors: TaskGroup,
    /// Cleared when the session drains: new visits wait for the next session.
    pub accepting: Arc<AtomicBool>,
}
