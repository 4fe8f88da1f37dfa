//! Token authentication bound to the TLS connection.
//!
//! The token never crosses the wire. Both sides export 32 bytes of keying material from the TLS
//! session (RFC 8446 §7.5, label [`ncx_proto::AUTH_EXPORTER_LABEL`], no context); the client sends
//! HMAC-SHA256 keyed by the token over that value followed by the identity's name. A captured proof is worthless on any other
//! TLS connection because the exported value differs, and the server checks it in constant time
//! (`aws_lc_rs::hmac::verify`).

use std::fmt;

use aws_lc_rs::hmac;
use ncx_proto::{Name, AUTH_EXPORTER_LABEL, AUTH_PROOF_LEN};

/// A shared secret. Its `Debug` and `Display` never show the value.
#[derive(Clone)]
pub struct Token(String);

impl Token {
    /// Wraps a secret.
    pub fn new(secret: impl Into<String>) -> Self {
        Token(secret.into())
    }

    fn key(&self) -> hmac::Key {
        hmac::Key::new(hmac::HMAC_SHA256, self.0.as_bytes())
    }

    /// Whether the secret is empty (refused by configuration checks).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Compared in constant time (for the length it need not be: a token's length is no secret worth
/// the cost).
impl PartialEq for Token {
    fn eq(&self, other: &Self) -> bool {
        aws_lc_rs::constant_time::verify_slices_are_equal(self.0.as_bytes(), other.0.as_bytes())
            .is_ok()
    }
}

impl Eq for Token {}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(****)")
    }
}

/// Keying material exported from one TLS connection for authentication.
pub struct ExportedKey(pub [u8; AUTH_PROOF_LEN]);

/// Exports the authentication keying material of `conn`. Done right after the handshake, before the
/// TLS stream is handed to yamux.
pub fn export<D>(conn: &rustls::ConnectionCommon<D>) -> Result<ExportedKey, rustls::Error> {
    let out = conn.export_keying_material([0u8; AUTH_PROOF_LEN], AUTH_EXPORTER_LABEL, None)?;
    Ok(ExportedKey(out))
}

fn message(exported: &ExportedKey, identity: &Name) -> Vec<u8> {
    let mut m = Vec::with_capacity(AUTH_PROOF_LEN + identity.as_str().len());
    m.extend_from_slice(&exported.0);
    m.extend_from_slice(identity.as_str().as_bytes());
    m
}

/// The client's proof that it holds `token` for `identity` on this connection.
pub fn prove(token: &Token, exported: &ExportedKey, identity: &Name) -> [u8; AUTH_PROOF_LEN] {
    let tag = hmac::sign(&token.key(), &message(exported, identity));
    let mut out = [0u8; AUTH_PROOF_LEN];
    out.copy_from_slice(tag.as_ref());
    out
}

/// Whether `proof` was made with `token` for `identity` over `exported`. Constant time in the
/// proof's content.
pub fn verify(
    token: &Token,
    exported: &ExportedKey,
    identity: &Name,
    proof: &[u8; AUTH_PROOF_LEN],
) -> bool {
    hmac::verify(&token.key(), &message(exported, identity), proof).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proof_depends_on_token_and_exported_value() {
        let t = Token::new("s3cret");
        let id = Name::new("office").unwrap();
        let other_id = Name::new("home").unwrap();
        let a = ExportedKey([1; 32]);
        let b = ExportedKey([2; 32]);
        let p = prove(&t, &a, &id);
        assert!(verify(&t, &a, &id, &p));
        assert!(
            !verify(&t, &b, &id, &p),
            "a proof must not transfer to another connection"
        );
        assert!(
            !verify(&t, &a, &other_id, &p),
            "a proof must not transfer to another identity"
        );
        assert!(!verify(&Token::new("other"), &a, &id, &p));
    }

    #[test]
    fn token_debug_is_masked() {
        let t = Token::new("hunter2");
        assert!(!format!("{t:?}").contains("hunter2"));
    }
}
