//! Sessions that handed over to a newer one (a rotation) and serve their last visitors. Each one
//! holds a TLS connection and its visitors, so at most [`MAX_RETIRING`] are kept: when one more
//! retires, the oldest is told to finish (its drain applies) instead of piling up.

use std::collections::VecDeque;
use std::future::Future;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Retiring sessions kept at once. A rotation comes after hundreds of millions of substreams, so
/// two at once already means a server that rotates far more often than ncx's does.
pub const MAX_RETIRING: usize = 2;

/// The retiring sessions of one client.
pub(super) struct Retiring {
    tracker: TaskTracker,
    max: usize,
    /// Per retiring session, oldest first: the token that tells it to finish, and the one it
    /// cancels when it has.
    live: VecDeque<(CancellationToken, CancellationToken)>,
}

impl Retiring {
    pub fn new(max: usize) -> Self {
        Retiring {
            tracker: TaskTracker::new(),
            max: max.max(1),
            live: VecDeque::new(),
        }
    }

    /// Runs a session that retires; `serve` gets the token that tells it to finish (a child of
    /// `shutdown`). If this makes one too many, the oldest still running is told to finish.
    pub fn retire<F, Fut>(&mut self, shutdown: &CancellationToken, serve: F)
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.live.retain(|(_, done)| !done.is_cancelled());
        while self.live.len() >= self.max {
            if let Some((stop, _)) = self.live.pop_front() {
                stop.cancel();
            }
        }
        let stop = shutdown.child_token();
        let done = CancellationToken::new();
        self.live.push_back((stop.clone(), done.clone()));
        let task = serve(stop);
        self.tracker.spawn(async move {
            let _done = done.drop_guard();
            task.await;
        });
    }

    /// Tells every retiring session to finish (each drains as on shutdown).
    pub fn finish_all(&mut self) {
        for (stop, _) in self.live.drain(..) {
            stop.cancel();
        }
    }

    /// Waits until every retiring session has ended.
    pub async fn wait(&self) {
        self.tracker.close();
        self.tracker.wait().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_oldest_is_told_to_finish_when_one_too_many_retires() {
        let shutdown = CancellationToken::new();
        let mut r = Retiring::new(2);
        let mut stops = Vec::new();
        for _ in 0..3 {
            let (tx, rx) = tokio::sync::oneshot::channel();
            r.retire(&shutdown, move |stop| async move {
                let _ = tx.send(stop.clone());
                stop.cancelled().await;
            });
            stops.push(rx.await.unwrap());
        }
        assert!(stops[0].is_cancelled(), "the oldest finishes");
        assert!(!stops[1].is_cancelled() && !stops[2].is_cancelled());
        // One that ended by itself makes room without stopping another.
        stops[1].cancel();
        let (tx, rx) = tokio::sync::oneshot::channel();
        r.retire(&shutdown, move |stop| async move {
            let _ = tx.send(stop.clone());
            stop.cancelled().await;
        });
        let fourth = rx.await.unwrap();
        // Whether or not stops[1]'s task has wound down yet, it is the oldest: never stops[2].
        assert!(!stops[2].is_cancelled() && !fourth.is_cancelled());
        shutdown.cancel();
        tokio::time::timeout(std::time::Duration::from_secs(10), r.wait())
            .await
            .expect("every retiring session ends on shutdown");
    }
}
