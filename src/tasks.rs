//! Tasks that stop together: a cancellation token and the tracker that owns them.

use std::future::Future;

use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};
use tokio_util::task::task_tracker::TaskTrackerToken;
use tokio_util::task::TaskTracker;

/// A group of tasks with one owner: the tracker holds them, the token tells them to stop. Every
/// task spawned here is expected to watch [`TaskGroup::cancelled`].
#[derive(Debug, Clone, Default)]
pub struct TaskGroup {
    cancel: CancellationToken,
    tracker: TaskTracker,
}

impl TaskGroup {
    /// An empty, running group.
    pub fn new() -> Self {
        TaskGroup::default()
    }

    /// A group whose token is a child of `parent`: cancelling the parent stops this group too.
    pub fn child_of(parent: &CancellationToken) -> Self {
        TaskGroup {
            cancel: parent.child_token(),
            tracker: TaskTracker::new(),
        }
    }

    /// Runs `task` as a member of the group.
    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tracker.spawn(task);
    }

    /// Tells every member to stop.
    pub fn cancel(&self) {
        self.cancel.cancel();
    }

    /// Whether the group was told to stop.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Completes once the group is told to stop.
    pub fn cancelled(&self) -> WaitForCancellationFuture<'_> {
        self.cancel.cancelled()
    }

    /// The group's stop token, for code that takes one.
    pub fn token(&self) -> &CancellationToken {
        &self.cancel
    }

    /// The tracker of the members, for a drain that waits for them.
    pub fn tracker(&self) -> &TaskTracker {
        &self.tracker
    }

    /// Counts the holder as a member until the returned token is dropped, so a wait for the group
    /// waits for it too (a private visit holds one of its owner's visitors).
    pub fn member(&self) -> TaskTrackerToken {
        self.tracker.token()
    }

    /// Closes the group to new members and waits until every one has finished.
    pub async fn close_and_wait(&self) {
        self.tracker.close();
        self.tracker.wait().await;
    }

    /// Tells every member to stop and waits until they have.
    pub async fn stop(&self) {
        self.cancel();
        self.close_and_wait().await;
    }
}
