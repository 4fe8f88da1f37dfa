//! The metrics endpoint: `GET /metrics` (the text exposition) and `GET /ready` (200 when the
//! process does its job: the server listens, the client has a session), over HTTP/1.1 with one
//! request per connection.
//!
//! It is for a scraper on the same host or network, not for the internet, yet it is written as if
//! anyone could reach it: a request head is capped at [`MAX_HEAD`] bytes and must arrive within
//! [`HEAD_TIMEOUT`], and at most [`MAX_CONNECTIONS`] are served at once (more are closed at
//! accept).

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::tasks::TaskGroup;

/// Bytes of a request head; a scraper's is a few hundred.
pub const MAX_HEAD: usize = 8 * 1024;
/// Time for a request head to arrive.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 16;
/// Headers parsed in a request head.
const MAX_HEADERS: usize = 32;

/// What the endpoint serves: the exposition and the readiness, read at each request.
#[derive(Clone)]
pub struct Source {
    pub render: Arc<dyn Fn() -> String + Send + Sync>,
    pub ready: Arc<dyn Fn() -> bool + Send + Sync>,
}

/// Serves `listener` until `shutdown`, then waits for the requests in flight.
pub async fn serve(listener: TcpListener, source: Source, shutdown: CancellationToken) {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "metrics listening (GET /metrics, /ready)");
    }
    let group = TaskGroup::child_of(&shutdown);
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    crate::accept::accept_until(&listener, &shutdown, "a metrics request", |tcp, peer| {
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            debug!(%peer, "metrics request refused: {MAX_CONNECTIONS} are being served");
            return;
        };
        let source = source.clone();
        let stop = group.token().clone();
        group.spawn(async move {
            tokio::select! {
                () = answer(tcp, &source) => {}
                () = stop.cancelled() => {}
            }
            drop(permit);
        });
    })
    .await;
    group.close_and_wait().await;
}

/// Reads one request head and answers it.
async fn answer(mut tcp: TcpStream, source: &Source) {
    let (status, kind, body) = match tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut tcp)).await {
        Ok(Ok(Some(path))) => route(&path, source),
        Ok(Ok(None)) => ("400 Bad Request", "text/plain", "bad request\n".to_owned()),
        Ok(Err(_)) | Err(_) => return,
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = tcp.write_all(head.as_bytes()).await;
    let _ = tcp.write_all(body.as_bytes()).await;
    let _ = tcp.shutdown().await;
}

fn route(target: &str, source: &Source) -> (&'static str, &'static str, String) {
    let path = target.split('?').next().unwrap_or_default();
    match path {
        "/metrics" => (
            "200 OK",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            (source.render)(),
        ),
        "/ready" if (source.ready)() => ("200 OK", "text/plain", "ready\n".to_owned()),
        "/ready" => (
            "503 Service Unavailable",
            "text/plain",
            "not ready\n".to_owned(),
        ),
        _ => ("404 Not Found", "text/plain", "not found\n".to_owned()),
    }
}

/// The path of a GET request, `None` for anything else; an error when the connection ends or
/// the head outgrows [`MAX_HEAD`].
async fn read_head(tcp: &mut TcpStream) -> std::io::Result<Option<String>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = tcp.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(_)) => {
                return Ok(match (req.method, req.path) {
                    (Some("GET"), Some(path)) => Some(path.to_owned()),
                    _ => None,
                });
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => {}
            Ok(httparse::Status::Partial) => {
                return Err(std::io::ErrorKind::InvalidData.into());
            }
            Err(_) => return Ok(None),
        }
    }
}
