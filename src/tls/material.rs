//! Certificates and keys as material: the errors of loading them, the one crypto provider,
//! fingerprints, and reading PEM files.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::RootCertStore;

/// Errors while loading certificates or building TLS configurations.
///
/// Each cause is part of the message (`cause`, not `source`): errors are printed with their chain,
/// and a cause that was both was printed twice ("File exists (os error 17): File exists (os error
/// 17)").
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or parsed.
    #[error("reading {what} from {path}: {cause}")]
    Pem {
        /// What the file should hold.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why it failed.
        cause: rustls::pki_types::pem::Error,
    },
    /// A PEM file held no certificate.
    #[error("{path} holds no certificate")]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// rustls refused the certificates or key.
    #[error("{context}: {}", rustls_words(cause))]
    Rustls {
        /// What was being done.
        context: String,
        /// Why it failed.
        cause: rustls::Error,
    },
    /// Filesystem error outside PEM parsing.
    #[error("{context}: {cause}")]
    Io {
        /// What was being done.
        context: String,
        /// Why it failed.
        cause: std::io::Error,
    },
    /// Certificate generation failed.
    #[error("generating a certificate: {0}")]
    Generate(rcgen::Error),
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
            cause: source,
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
        cause: source,
    })
}

/// Reads the CA certificates of a PEM file into a root store.
pub fn load_roots(path: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots.add(cert).map_err(|source| TlsError::Rustls {
            context: format!("adding a CA certificate from {}", path.display()),
            cause: source,
        })?;
    }
    Ok(Arc::new(roots))
}

impl From<rcgen::Error> for TlsError {
    fn from(e: rcgen::Error) -> Self {
        TlsError::Generate(e)
    }
}

/// A rustls error met while loading certificates and keys, in words that say what to change.
/// rustls' own `Display` names its enum variants ("keys may not be consistent: KeyMismatch") and
/// prefixes our own texts with "unexpected error".
fn rustls_words(e: &rustls::Error) -> String {
    use rustls::{CertificateError as C, Error as E, InconsistentKeys as K};
    match e {
        E::InconsistentKeys(K::KeyMismatch) => {
            "the private key does not belong to the certificate: give the key that was made with it"
                .to_owned()
        }
        E::InconsistentKeys(_) => {
            "the private key cannot be checked against the certificate (is it a key type rustls supports: ECDSA, Ed25519 or RSA?)".to_owned()
        }
        E::General(text) => text.clone(),
        E::InvalidCertificate(C::BadEncoding) => {
            "a certificate in it is damaged (not valid DER)".to_owned()
        }
        E::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => {
            "the certificate has expired".to_owned()
        }
        other => other.to_string(),
    }
}
