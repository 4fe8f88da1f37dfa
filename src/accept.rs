//! The one accept loop: every listener of ncx (the server's tunnel port, its public ports, the
//! client's visit listeners) takes connections through [`accept_until`].
//!
//! A failing `accept` (EMFILE when file descriptors run out, ENOBUFS) fails again at once if
//! retried, so the loop pauses for [`ACCEPT_ERROR_BACKOFF`] instead of spinning a core and flooding
//! the log; the pause ends early on cancellation.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// Pause after a failed `accept` before the next attempt.
pub const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// Hands every connection accepted on `listener` to `on_accept` until `cancel` fires. `what` names
/// the connections in the warning about a failed accept ("a visitor", "a client").
///
/// `on_accept` must not block: it checks what it can at once and spawns the rest.
pub async fn accept_until<F>(
    listener: &TcpListener,
    cancel: &CancellationToken,
    what: &str,
    mut on_accept: F,
) where
    F: FnMut(TcpStream, SocketAddr),
{
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            r = listener.accept() => match r {
                Ok((tcp, peer)) => on_accept(tcp, peer),
                Err(e) => {
                    warn!(error = %e, "accepting {what} failed; backing off");
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(ACCEPT_ERROR_BACKOFF) => {}
                    }
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hands_over_every_connection_and_stops_on_cancel() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cancel = CancellationToken::new();
        let (tx, mut rx) = tokio::sync::mpsc::channel(4);
        let accepting = tokio::spawn({
            let cancel = cancel.clone();
            async move {
                accept_until(&listener, &cancel, "a test connection", |tcp, peer| {
                    tx.try_send((tcp, peer)).unwrap();
                })
                .await
            }
        });
        let mut dialed = Vec::new();
        for _ in 0..3 {
            let c = TcpStream::connect(addr).await.unwrap();
            let (_, peer) = rx.recv().await.unwrap();
            assert_eq!(peer, c.local_addr().unwrap());
            dialed.push(c);
        }
        cancel.cancel();
        tokio::time::timeout(Duration::from_secs(10), accepting)
            .await
            .expect("the loop ends once cancelled")
            .unwrap();
    }
}
