//! ncx: a reverse tunnel over one TLS 1.3 connection with a yamux session on top.
//!
//! A client inside a private network dials the server once. Every visitor that connects to a public
//! port of the server becomes a new yamux substream to that client, which splices it to a local
//! service. There is never a second connection between client and server.
//!
//! Module map (ARCHITECTURE.md has the tree, the path of a visitor's bytes and the facts behind
//! the constants):
//! - [`server`], [`client`]: the two ends. `ncx visit` is the client's [`client`] `outbound` part.
//! - [`mux`]: the task that drives one yamux connection, and the session state its streams read.
//! - [`splice`]: copying both ways, keeping half-close and making resets visible; [`copybuf`]:
//!   its copy buffers, reused per thread.
//! - [`framed`]: protocol messages ([`ncx_proto`]) on async streams.
//! - One of each mechanism, shared by both ends: [`accept`] (the accept loop with back-off),
//!   [`heartbeat`] (pings and liveness), [`drain`] (finishing visitors after a go-away),
//!   [`refusal`] (a typed "no" and its wire messages), [`audit`] (the audit record),
//!   [`timeouts`] (the visitor timeouts and their order), [`tasks`] (a token and its tasks).
//! - [`config`]: TOML files and flags into validated settings.
//! - [`tls`]: PEM loading, rustls configurations, fingerprints and pinning.
//! - [`certs`]: `ncx certs` and the server's self-signed certificate.
//! - [`auth`]: token proofs bound to the TLS connection.
//! - [`proxy`]: reaching the server through an HTTP or SOCKS5 proxy; [`websocket`]: the
//!   WebSocket transport.
//! - [`admin`]: the local admin socket behind `ncx status` and `ncx ctl reload`.
//! - [`logging`]: the log's filter, format and audit file; [`notify`]: systemd's notifications;
//!   [`metrics`]: the Prometheus series and their endpoint.
//! - [`net`]: socket options; [`prefixed`]: a connection with bytes read ahead; [`readahead`]:
//!   the tunnel connection read in large pieces under TLS; [`fdlimit`]: the open-file limit;
//!   [`ratelimit`]: warnings at a limited rate.
//! - [`demo`]: everything on loopback in one process.
//! - [`cli`]: the command line; [`service`]: `ncx service`, a client or visit as a Windows service.
//! - `fuzzing` (with the `fuzzing` feature only): the hooks the fuzz targets and the corpus replay
//!   use.
//!
//! The benchmark is not here: it is the workspace member `bench/` (`ncx-bench`).
//!
//! Glossary: **session** (one TLS connection and its yamux session), **control stream** (the first
//! substream, opened by the client), **service** (a named local TCP endpoint the client exposes),
//! **visitor** (a TCP connection at a public port), **substream** (the yamux stream carrying one
//! visitor), **local service** (what the client connects a visitor to).
#![forbid(unsafe_code)]

/// Prints a line on stdout like `println!`, but never panics: stdout may be a pipe whose reader
/// has gone (`ncx client | head -1`), and a tunnel must not die of it (at 8354efb it exited with
/// status 101 on the next line). Lines that cannot be written are dropped.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

pub mod accept;
pub mod admin;
pub mod audit;
pub mod auth;
pub mod certs;
pub mod cli;
pub mod client;
pub mod config;
pub mod copybuf;
pub mod demo;
pub mod drain;
pub mod fdlimit;
pub mod framed;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod heartbeat;
pub mod human;
pub mod logging;
pub mod metrics;
pub mod mux;
pub mod net;
pub mod notify;
pub mod prefixed;
pub mod proxy;
pub mod ratelimit;
pub mod readahead;
pub mod refusal;
pub mod server;
pub mod service;
pub mod splice;
pub mod tasks;
pub mod timeouts;
pub mod tls;
pub mod websocket;
