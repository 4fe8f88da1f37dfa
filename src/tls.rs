//! The only place that reads PEM files and builds rustls configurations.
//!
//! One crypto provider, aws-lc-rs, is named explicitly everywhere (never picked from crate features),
//! and only TLS 1.3 is offered. The client verifies the server in one of three ways:
//! a CA file (names are checked), a pinned SHA-256 fingerprint of the server's certificate
//! (SSH-style, for self-signed servers), or — only when asked for by a name containing `insecure` —
//! not at all.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

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

/// How the client decides that it is talking to the right server.
#[derive(Clone)]
pub enum ServerTrust {
    /// The server's chain must lead to one of these roots and name the server.
    Ca {
        /// The file the roots came from (for error messages).
        path: PathBuf,
        /// The roots.
        roots: Arc<RootCertStore>,
    },
    /// The SHA-256 of the server's leaf certificate must equal this.
    Pinned(Fingerprint),
    /// No verification at all. Anyone on the path can impersonate the server and read the token
    /// proof's session; logged as a warning on every connect.
    InsecureSkipVerify,
}

impl fmt::Debug for ServerTrust {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerTrust::Ca { path, .. } => write!(f, "Ca({})", path.display()),
            ServerTrust::Pinned(fp) => write!(f, "Pinned({fp})"),
            ServerTrust::InsecureSkipVerify => f.write_str("InsecureSkipVerify"),
        }
    }
}

impl ServerTrust {
    /// Trust the roots in a PEM file.
    pub fn ca_file(path: &Path) -> Result<Self, TlsError> {
        Ok(ServerTrust::Ca {
            path: path.to_owned(),
            roots: load_roots(path)?,
        })
    }
}

/// Reads the CA certificates of a PEM file into a root store.
fn load_roots(path: &Path) -> Result<Arc<RootCertStore>, TlsError> {
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

/// A client certificate and its key, presented to a server that asks for one.
pub struct ClientCertificate {
    /// Leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's key.
    pub key: PrivateKeyDer<'static>,
}

impl fmt::Debug for ClientCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCertificate")
            .field(
                "fingerprint",
                &Fingerprint::of(self.chain.first().map(|c| c.as_ref()).unwrap_or_default()),
            )
            .field("key", &"<redacted>")
            .finish()
    }
}

impl Clone for ClientCertificate {
    fn clone(&self) -> Self {
        ClientCertificate {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl ClientCertificate {
    /// Loads a chain and key from PEM files (as written by `ncx certs client`).
    pub fn from_files(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        Ok(ClientCertificate {
            chain: load_certs(cert)?,
            key: load_key(key)?,
        })
    }
}

/// The client's TLS configuration: TLS 1.3 only, ALPN `ncx/1`, server verified as `trust` says,
/// and `cert` presented when the server asks for a client certificate.
pub fn client_config(
    trust: &ServerTrust,
    cert: Option<&ClientCertificate>,
) -> Result<ClientConfig, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|source| TlsError::Rustls {
            context: "choosing TLS 1.3".into(),
            source,
        })?;
    let builder = match trust {
        ServerTrust::Ca { roots, .. } => builder.with_root_certificates(roots.clone()),
        ServerTrust::Pinned(fp) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(FingerprintVerifier {
                pin: Some(*fp),
                provider: provider(),
            })),
        ServerTrust::InsecureSkipVerify => {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(FingerprintVerifier {
                    pin: None,
                    provider: provider(),
                }))
        }
    };
    let mut config = match cert {
        None => builder.with_no_client_auth(),
        Some(c) => builder
            .with_client_auth_cert(c.chain.clone(), c.key.clone_key())
            .map_err(|source| TlsError::Rustls {
                context: "using the client certificate and key".into(),
                source,
            })?,
    };
    config.alpn_protocols = vec![ncx_proto::ALPN.to_vec()];
    Ok(config)
}

/// The pin did not match: carries both fingerprints so the user can see which server answered.
#[derive(Debug, thiserror::Error)]
#[error("the server's certificate fingerprint is {actual}, but {expected} is pinned")]
pub struct PinMismatch {
    /// What the server presented.
    pub actual: Fingerprint,
    /// What the client pinned.
    pub expected: Fingerprint,
}

/// Checks the server's certificate by its SHA-256 alone: exactly the pinned one, or — with no pin,
/// only reachable through `insecure_skip_verify` — any. Signatures over the handshake are still
/// verified (the server must hold the key); names and dates are not, as with SSH host keys.
#[derive(Debug)]
struct FingerprintVerifier {
    pin: Option<Fingerprint>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for FingerprintVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(pin) = self.pin else {
            return Ok(ServerCertVerified::assertion());
        };
        let actual = Fingerprint::of(end_entity);
        // Fingerprints of certificates are public; equality needs no constant time here.
        if actual == pin {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Other(rustls::OtherError(Arc::new(PinMismatch {
                    actual,
                    expected: pin,
                }))),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Explains a TLS failure in plain words, naming what the user can change.
pub fn explain_handshake_error(err: &std::io::Error, trust: &ServerTrust) -> String {
    let Some(tls) = err
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    else {
        return format!("TLS handshake failed: {err}");
    };
    match tls {
        rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other)) => {
            format!("server certificate refused: {}", other.0)
        }
        // Two CAs with the same name (every `ncx certs ca` defaults to "ncx CA") show up as a bad
        // signature rather than an unknown issuer.
        rustls::Error::InvalidCertificate(
            rustls::CertificateError::UnknownIssuer | rustls::CertificateError::BadSignature,
        ) => match trust {
            ServerTrust::Ca { path, .. } => format!(
                "server certificate refused: it is not signed by the CA in {}",
                path.display()
            ),
            _ => format!("server certificate refused: {tls}"),
        },
        rustls::Error::InvalidCertificate(e) => format!("server certificate refused: {e:?}"),
        rustls::Error::NoApplicationProtocol
        | rustls::Error::AlertReceived(rustls::AlertDescription::NoApplicationProtocol) => format!(
            "the server does not speak {} (protocol version mismatch: upgrade the older side)",
            String::from_utf8_lossy(ncx_proto::ALPN)
        ),
        other => format!("TLS handshake failed: {other}"),
    }
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
