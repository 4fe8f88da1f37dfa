//! The only place that reads PEM files and builds rustls configurations.
//!
//! One crypto provider, aws-lc-rs, is named explicitly everywhere (never picked from crate features),
//! and only TLS 1.3 is offered. The client verifies the server in one of three ways:
//! a CA file (names are checked), a pinned SHA-256 fingerprint of the server's certificate
//! (SSH-style, for self-signed servers), or — only when asked for by a name containing `insecure` —
//! not at all.
//!
//! - `material.rs`: errors, the crypto provider, fingerprints, and reading PEM certificates and keys.
//! - `server.rs`: the server's identity and configuration, its self-signed certificate, and the name
//!   in a verified client certificate.
//! - `client.rs`: how the client trusts the server (CA, pin, none), its own certificate, its
//!   configuration, and the handshake errors it explains in plain words.

mod client;
mod material;
mod server;

pub use client::{
    client_config, explain_alpn, explain_handshake_error, handshake_error_is_permanent, pin_list,
    refuses_certificate, ClientCertificate, PinMismatch, ServerTrust,
};
pub use material::{load_certs, load_key, load_roots, provider, Fingerprint, TlsError};
pub use server::{self_signed, server_config, ClientCertCheck, PeerCertificate, ServerIdentity};
