//! ncx: a reverse tunnel over one TLS 1.3 connection with a yamux session on top.
//!
//! A client inside a private network dials the server once. Every visitor that connects to a public
//! port of the server becomes a new yamux substream to that client, which splices it to a local
//! service. There is never a second connection between client and server.
//!
//! Module map:
//! - [`config`]: TOML files and flags into validated settings.
//! - [`tls`]: PEM loading, rustls configurations, fingerprints and pinning.
//! - [`certs`]: `ncx certs` and the server's self-signed certificate.
//! - [`auth`]: token proofs bound to the TLS connection.
//! - [`session`]: the task that drives one yamux connection.
//! - [`framed`]: protocol messages on async streams.
//! - [`net`]: socket options for the tunnel connection.
//! - [`ratelimit`]: warnings at a limited rate.
//! - [`splice`]: TCP ↔ substream copying that keeps half-close and makes resets visible.
//! - [`server`], [`client`]: the two ends.
//! - [`demo`]: everything on loopback in one process.
//! - [`cli`]: the command line.
//!
//! Glossary: **session** (one TLS connection and its yamux session), **control stream** (the first
//! substream, opened by the client), **service** (a named local TCP endpoint the client exposes),
//! **visitor** (a TCP connection at a public port), **substream** (the yamux stream carrying one
//! visitor), **local service** (what the client connects a visitor to).
#![forbid(unsafe_code)]

pub mod accept;
pub mod audit;
pub mod auth;
pub mod certs;
pub mod cli;
pub mod client;
pub mod config;
pub mod demo;
pub mod drain;
pub mod framed;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod heartbeat;
pub mod mux;
pub mod net;
pub mod ratelimit;
pub mod refusal;
pub mod server;
pub mod splice;
pub mod tasks;
pub mod timeouts;
pub mod tls;
