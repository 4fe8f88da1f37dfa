//! The visitor timeouts, in one place, with the order between them checked by the compiler.
//!
//! A visitor's path crosses three parties, and each waits for the next: `ncx visit` waits for the
//! server's answer, the server for the owning client's answer, the client for its local service.
//! Each wait must outlast the one it depends on, or a slow but successful connect turns into a
//! refusal at the far end while it succeeds at the near one:
//!
//! ```text
//! DEFAULT_LOCAL_CONNECT (5 s)  <  CLIENT_ANSWER (30 s)  <  VISIT_ANSWER (35 s)
//! client → local service           server → client            ncx visit → server
//! ```
//!
//! The `const` assertions below fail the build if an edit breaks that order.

use std::time::Duration;

/// How long a client's connect to its local service may take by default (`local_connect_timeout`).
pub const DEFAULT_LOCAL_CONNECT: Duration = Duration::from_secs(5);

/// How long the server waits for the client's answer to a visitor header. The client's local
/// connect deadline is what normally answers first.
pub const CLIENT_ANSWER: Duration = Duration::from_secs(30);

/// How long `ncx visit` waits for the server's answer to a visit: the server opens a substream to
/// the owner, which connects within its own deadline; the server gives the owner [`CLIENT_ANSWER`].
pub const VISIT_ANSWER: Duration = Duration::from_secs(35);

/// How long a visitor may wait for a substream: first for a slot among the opens in flight, then
/// for yamux to open it (it only waits while 256 unacknowledged opens are in flight). A burst of
/// thousands of visitors queues here, first come, first served, rather than being refused at once.
pub const OPEN: Duration = Duration::from_secs(30);

/// How long the peer that opened a substream may take to send its first message: the server's
/// visitor header to a client, or the `Visit` request of an `ncx visit` session to the server.
pub const FIRST_MESSAGE: Duration = Duration::from_secs(10);

const _: () = assert!(
    DEFAULT_LOCAL_CONNECT.as_millis() < CLIENT_ANSWER.as_millis(),
    "the server must wait for the client longer than the client waits for its service"
);
const _: () = assert!(
    CLIENT_ANSWER.as_millis() < VISIT_ANSWER.as_millis(),
    "ncx visit must wait for the server longer than the server waits for the owner"
);
