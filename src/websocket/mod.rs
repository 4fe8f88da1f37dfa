//! The WebSocket transport: ncx's TLS 1.3 session carried inside a WebSocket, for networks whose
//! only way out is a web proxy or CDN that terminates TLS and forwards WebSocket upgrades
//! (`transport = "websocket"` on the client; `websocket_path` on the server). The outer layer
//! (a reverse proxy's TLS, the HTTP upgrade, the frames) carries opaque bytes: ncx's own TLS runs
//! end to end inside it, so whoever terminates the outer TLS still cannot read or alter the tunnel.
//!
//! - `handshake.rs`: the upgrade request and answer, both ends.
//! - `stream.rs`: [`WsStream`], a byte stream over binary frames (the framing itself is sans-IO
//!   in `ncx_proto`).

pub mod handshake;
mod stream;

pub use stream::WsStream;
