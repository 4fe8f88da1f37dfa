//! The local admin endpoint behind `ncx status` and `ncx ctl reload` (`admin_socket`): on Unix a
//! socket of mode 0600, so only the operator (the process's user, and root) can reach it; on
//! Windows a named pipe (`\\.\pipe\NAME`) refusing remote clients, whose default security
//! lets only the process's user, administrators and SYSTEM write to it (others may open it for
//! reading only, so they cannot send a request).
//!
//! The protocol is one request line, `status` or `reload`, answered with one JSON object and the
//! end of the connection. A request is at most [`MAX_REQUEST`] bytes and must arrive within
//! [`REQUEST_TIMEOUT`]; [`MAX_CONNECTIONS`] are served at once.

pub mod show;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Answers one request (`status` or `reload`) with its JSON.
pub type Handler =
    Arc<dyn Fn(String) -> Pin<Box<dyn Future<Output = String> + Send>> + Send + Sync>;

/// Bytes of a request line.
pub const MAX_REQUEST: usize = 64;
/// Time for a request line to arrive.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Requests served at once.
pub const MAX_CONNECTIONS: usize = 4;
/// Bytes of an answer `ncx status` reads (a server with thousands of sessions stays far below).
pub const MAX_ANSWER: u64 = 64 * 1024 * 1024;

/// What `ncx status` shows of a server.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ServerStatus {
    pub kind: String,
    pub listen: String,
    pub fingerprint: String,
    pub sessions: Vec<SessionStatus>,
    /// The groups with members now.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<GroupStatus>,
}

/// One group of a server: its service, port, and members (`identity` or `identity/instance`,
/// with `(unhealthy)` after one whose client reports its service failing).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GroupStatus {
    pub name: String,
    pub service: String,
    /// The public port, or `None` for a private group.
    pub port: Option<u16>,
    pub balance: String,
    pub members: Vec<String>,
}

/// One authenticated session of a server.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SessionStatus {
    /// `identity`, or `identity/instance` for a client that names its instance.
    pub identity: String,
    pub address: String,
    /// Seconds since the Unix epoch when the session began.
    pub since: u64,
    /// `NAME:PORT` for public services, `NAME (private)` for private ones.
    pub services: Vec<String>,
    pub visitors: usize,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// The last ping's round trip in milliseconds, once one was answered.
    pub rtt_ms: Option<f64>,
}

/// What `ncx status` shows of a client (or `ncx visit`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct ClientStatus {
    pub kind: String,
    pub server: String,
    pub identity: String,
    /// How the server is verified: its pinned fingerprint, the CA file, or "not verified".
    pub server_verified_by: String,
    pub connected: bool,
    /// Seconds since the Unix epoch when the current session began, or the last attempt failed.
    pub since: u64,
    /// Why the client is not connected, when it is not.
    pub last_error: Option<String>,
    /// `NAME -> PUBLIC ADDRESS` for each service, or the refusal.
    pub services: Vec<String>,
    /// `OWNER/SERVICE on LISTEN` for each visit.
    pub visits: Vec<String>,
    /// With several servers (`server_mode = "all"`): each server's session, as above (the fields
    /// above are the first server's).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub servers: Vec<ClientStatus>,
}

/// Seconds since the Unix epoch of `t`.
pub fn epoch_secs(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Reads one request line from `stream` (bounded in bytes and time) and writes `handler`'s answer.
async fn answer<S: AsyncRead + AsyncWrite + Unpin>(stream: S, handler: &Handler) {
    let (read, mut write) = tokio::io::split(stream);
    let mut line = String::new();
    let mut limited = tokio::io::BufReader::new(read.take(MAX_REQUEST as u64));
    let read = tokio::time::timeout(REQUEST_TIMEOUT, limited.read_line(&mut line)).await;
    let reply = match read {
        Ok(Ok(_)) if line.ends_with('\n') => handler(line.trim().to_owned()).await,
        _ => return,
    };
    let _ = write.write_all(reply.as_bytes()).await;
    let _ = write.write_all(b"\n").await;
    let _ = write.shutdown().await;
}

/// Sends `request` on a connected `stream` and reads the whole answer (bounded in bytes and time).
async fn ask<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    request: &str,
) -> anyhow::Result<String> {
    use anyhow::Context;
    stream.write_all(format!("{request}\n").as_bytes()).await?;
    let mut answer = String::new();
    tokio::time::timeout(
        REQUEST_TIMEOUT * 6,
        stream.take(MAX_ANSWER).read_to_string(&mut answer),
    )
    .await
    .context("no answer from the admin endpoint in time")??;
    Ok(answer)
}

#[cfg(unix)]
mod unix;
#[cfg(unix)]
pub use unix::{bind, request, serve, Listener};

#[cfg(windows)]
mod pipe;
#[cfg(windows)]
pub use pipe::{bind, request, serve, Listener};
