//! The only place that reads PEM files and builds rustls configurations.
//!
//! One crypto provider, aws-lc-rs, is named explicitly everywhere (never picked from crate features),
//! and only TLS 1.3 is offered. The client verifies the server in one of three ways:
//! a CA file (names are checked), a pinned SHA-256 fingerprint of the server's certificate
//! (SSH-style, for self-signed servers), or — only when asked for by a name containing `insecure` —
//! not at all.
//!
//! - `mod.rs`: errors, the provider, fingerprints, PEM loading, the server's configuration and its
//!   self-signed certificate, and the name in a verified client certificate.
//! - `client.rs`: how the client trusts the server (CA, pin, none), its own certificate, its
//!   configuration, and the handshake errors it explains in plain words.

mod client;

pub use client::{
    client_config, explain_handshake_error, ClientCertificate, PinMismatch, ServerTrust,
};

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{RootCertStore, ServerConfig};

/// Errors while loading certificates or building TLS configurations.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or parsed.
    #[error("reading {what} from {path}: {source}")]
    Pem {
        /// What the file should hold.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why it failed.
        source: rustls::pki_types::pem::Error,
    },
    /// A PEM file held no certificate.
    #[error("{path} holds no certificate")]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// rustls refused the certificates or key.
    #[error("{context}: {source}")]
    Rustls {
        /// What was being done.
        context: String,
        /// Why it failed.
        source: rustls::Error,
    },
    /// Filesystem error outside PEM parsing.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// Why it failed.
        source: std::io::Error,
    },
    /// Certificate generation failed.
    #[error("generating a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// A fingerprint string is not 32 bytes of hex.
    #[error("a fingerprint is `sha256:` followed by 64 hex digits (colons allowed), got {0:?}")]
    BadFingerprint(String),
}

/// The crypto provider used by every TLS configuration ncx builds.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// SHA-256 of a DER certificate: how ncx names a certificate to a person and how pins are compared.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// The fingerprint of `der`.
    pub fn of(der: &[u8]) -> Self {
        let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        Fingerprint(out)
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("sha256:")?;
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::str::FromStr for Fingerprint {
    type Err = TlsError;
    /// Accepts `sha256:` (optional) and 64 hex digits in either case, colons allowed between them, as
    /// printed by ncx or by `openssl x509 -fingerprint -sha256`.
    fn from_str(s: &str) -> Result<Self, TlsError> {
        let bad = || TlsError::BadFingerprint(s.to_owned());
        let t = s.trim();
        let t = t
            .strip_prefix("sha256:")
            .or_else(|| t.strip_prefix("SHA256:"))
            .unwrap_or(t);
        let digits: Vec<u8> = t.bytes().filter(|&b| b != b':').collect();
        if digits.len() != 64 {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        for (i, pair) in digits.chunks(2).enumerate() {
            let hi = (pair[0] as char).to_digit(16).ok_or_else(bad)?;
            let lo = (pair[1] as char).to_digit(16).ok_or_else(bad)?;
            out[i] = u8::try_from(hi * 16 + lo).map_err(|_| bad())?;
        }
        Ok(Fingerprint(out))
    }
}

/// Reads every certificate in a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|source| TlsError::Pem {
            what: "certificates",
            path: path.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// Reads a private key (PKCS#8, PKCS#1 or SEC1) from a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|source| TlsError::Pem {
        what: "a private key",
        path: path.to_owned(),
        source,
    })
}

/// A server certificate chain and its key, ready for [`server_config`].
pub struct ServerIdentity {
    /// Leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's key.
    pub key: PrivateKeyDer<'static>,
}

impl fmt::Debug for ServerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerIdentity")
            .field("fingerprint", &self.fingerprint())
            .field("key", &"<redacted>")
            .finish()
    }
}

impl ServerIdentity {
    /// Loads a chain and key from PEM files.
    pub fn from_files(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        Ok(ServerIdentity {
            chain: load_certs(cert)?,
            key: load_key(key)?,
        })
    }

    /// The fingerprint of the leaf certificate: what clients pin.
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of(self.chain.first().map(|c| c.as_ref()).unwrap_or_default())
    }
}

/// The server's TLS configuration: TLS 1.3 only, ALPN `ncx/1` only.
///
/// With `client_ca`, clients are asked for a certificate. One that does not chain to that CA (or
/// has expired, or is not for client authentication) fails the handshake with a TLS alert; a
/// client may also present none, and whether its identity needs one is decided after the hello
/// (identities may authenticate by token alone).
pub fn server_config(
    identity: ServerIdentity,
    client_ca: Option<&Path>,
) -> Result<ServerConfig, TlsError> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|source| TlsError::Rustls {
            context: "choosing TLS 1.3".into(),
            source,
        })?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                load_roots(path)?,
                provider(),
            )
            .allow_unauthenticated()
            .build()
            .map_err(|e| TlsError::Rustls {
                context: format!("using the client CA in {}", path.display()),
                source: rustls::Error::General(e.to_string()),
            })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(identity.chain, identity.key)
        .map_err(|source| TlsError::Rustls {
            context: "using the server certificate and key".into(),
            source,
        })?;
    config.alpn_protocols = vec![ncx_proto::ALPN.to_vec()];
    Ok(config)
}

/// Reads the CA certificates of a PEM file into a root store.
pub(crate) fn load_roots(path: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots.add(cert).map_err(|source| TlsError::Rustls {
            context: format!("adding a CA certificate from {}", path.display()),
            source,
        })?;
    }
    Ok(Arc::new(roots))
}

/// The common name of the verified client certificate of `conn`, if the client presented one.
/// rustls has checked the chain to the client CA by then; the name says which identity it is for.
pub fn client_certificate_name(conn: &rustls::ServerConnection) -> Option<String> {
    let leaf = conn.peer_certificates()?.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_owned)
}

/// Makes a self-signed server certificate for `names` (DNS names or IP addresses).
pub fn self_signed(names: &[String]) -> Result<(ServerIdentity, String, String), TlsError> {
    let mut params = rcgen::CertificateParams::new(names.to_vec())?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "ncx server (self-signed)");
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let key = rcgen::KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    let cert_pem = cert.pem();
    let key_pem = key.serialize_pem();
    let identity = ServerIdentity {
        chain: vec![cert.der().clone()],
        key: PrivateKeyDer::try_from(key.serialize_der()).map_err(|e| TlsError::Rustls {
            context: "encoding the generated key".into(),
            source: rustls::Error::General(e.into()),
        })?,
    };
    Ok((identity, cert_pem, key_pem))
}
