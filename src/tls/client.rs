//! The client's side of TLS: how it trusts the server, the certificate it presents, its rustls
//! configuration, and the handshake errors it explains in plain words.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::material::{load_certs, load_key, load_roots, provider, Fingerprint, TlsError};

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
    /// The SHA-256 of the server's leaf certificate must equal one of these (one per server a
    /// client with several servers reaches, or one for all of them).
    Pinned(Vec<Fingerprint>),
    /// No verification at all. Anyone on the path can impersonate the server and read the token
    /// proof's session; logged as a warning on every connect.
    InsecureSkipVerify,
}

impl fmt::Debug for ServerTrust {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerTrust::Ca { path, .. } => write!(f, "Ca({})", path.display()),
            ServerTrust::Pinned(pins) => write!(f, "Pinned({})", pin_list(pins)),
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
            cause: source,
        })?;
    let builder =
        match trust {
            ServerTrust::Ca { roots, .. } => builder.with_root_certificates(roots.clone()),
            ServerTrust::Pinned(pins) => {
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(FingerprintVerifier {
                        pins: pins.clone(),
                        provider: provider(),
                    }))
            }
            ServerTrust::InsecureSkipVerify => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(FingerprintVerifier {
                    pins: Vec::new(),
                    provider: provider(),
                })),
        };
    let mut config = match cert {
        None => builder.with_no_client_auth(),
        Some(c) => builder
            .with_client_auth_cert(c.chain.clone(), c.key.clone_key())
            .map_err(|source| TlsError::Rustls {
                context: "using the client certificate and key".into(),
                cause: source,
            })?,
    };
    config.alpn_protocols = vec![ncx_proto::ALPN.to_vec()];
    Ok(config)
}

/// The pin did not match: carries both fingerprints so the user can see which server answered.
#[derive(Debug, thiserror::Error)]
#[error(
    "the server's certificate fingerprint is {actual}, but {} pinned",
    pinned_text(expected)
)]
pub struct PinMismatch {
    /// What the server presented.
    pub actual: Fingerprint,
    /// What the client pinned.
    pub expected: Vec<Fingerprint>,
}

/// `"X is"` for one pin, `"one of X, Y is"` for several.
fn pinned_text(pins: &[Fingerprint]) -> String {
    match pins {
        [one] => format!("{one} is"),
        many => format!("one of {} is", pin_list(many)),
    }
}

/// The pins, comma-separated.
pub fn pin_list(pins: &[Fingerprint]) -> String {
    pins.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Checks the server's certificate by its SHA-256 alone: one of the pinned ones, or — with no pin,
/// only reachable through `insecure_skip_verify` — any. Signatures over the handshake are still
/// verified (the server must hold the key); names and dates are not, as with SSH host keys.
#[derive(Debug)]
struct FingerprintVerifier {
    /// Empty: anything goes (`insecure_skip_verify`).
    pins: Vec<Fingerprint>,
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
        if self.pins.is_empty() {
            return Ok(ServerCertVerified::assertion());
        }
        let actual = Fingerprint::of(end_entity);
        // Fingerprints of certificates are public; equality needs no constant time here.
        if self.pins.contains(&actual) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Other(rustls::OtherError(Arc::new(PinMismatch {
                    actual,
                    expected: self.pins.clone(),
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

/// Whether a failed TLS handshake needs a configuration change before a retry can succeed: the
/// server's certificate is not trusted, the server refused this client's certificate, or the two
/// sides share no protocol version or application protocol. Anything else (the connection closed
/// or was reset, a peer that does not speak TLS, a damaged record) may pass on the next attempt: a
/// load balancer in front of a restarting server accepts and closes, a middlebox resets.
pub fn handshake_error_is_permanent(err: &std::io::Error) -> bool {
    use rustls::AlertDescription as A;
    let Some(tls) = err
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    else {
        return false;
    };
    match tls {
        rustls::Error::InvalidCertificate(_)
        | rustls::Error::NoApplicationProtocol
        | rustls::Error::PeerIncompatible(_) => true,
        rustls::Error::AlertReceived(
            A::NoApplicationProtocol | A::ProtocolVersion | A::HandshakeFailure,
        ) => true,
        rustls::Error::AlertReceived(alert) => refuses_certificate(*alert),
        _ => false,
    }
}

/// Whether a TLS alert from the server says it refused this client's certificate (untrusted,
/// expired, revoked, missing, or not for this use).
pub fn refuses_certificate(alert: rustls::AlertDescription) -> bool {
    use rustls::AlertDescription as A;
    matches!(
        alert,
        A::BadCertificate
            | A::UnknownCA
            | A::CertificateExpired
            | A::CertificateRevoked
            | A::CertificateUnknown
            | A::UnsupportedCertificate
            | A::CertificateRequired
            | A::AccessDenied
    )
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
        rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForNameContext {
            expected,
            presented,
        }) => format!(
            "server certificate refused: it is for {}, not for {}; connect to one of those names, or set --server-name (`server_name`) to one of them",
            if presented.is_empty() {
                "no name at all".to_owned()
            } else {
                presented
                    .iter()
                    .map(|n| presented_name(n))
                    .collect::<Vec<_>>()
                    .join(", ")
            },
            server_name_text(expected)
        ),
        rustls::Error::InvalidCertificate(e) => format!("server certificate refused: {e}"),
        rustls::Error::NoApplicationProtocol
        | rustls::Error::AlertReceived(rustls::AlertDescription::NoApplicationProtocol) => format!(
            "the server refused protocol {}: it is another version of ncx (upgrade the older side) or not an ncx server",
            String::from_utf8_lossy(ncx_proto::ALPN)
        ),
        // What a port that is not TLS at all answers with (an HTTP or SSH server, a banner).
        rustls::Error::InvalidMessage(_) => {
            "the server did not answer with TLS: is the port right? (something else, not ncx, listens there)".to_owned()
        }
        other => format!("TLS handshake failed: {other}"),
    }
}

/// A name rustls reports as presented by a certificate (`DnsName("localhost")`,
/// `IpAddress(127.0.0.1)`), as a person writes it.
fn presented_name(n: &str) -> &str {
    n.strip_prefix("DnsName(\"")
        .and_then(|r| r.strip_suffix("\")"))
        .or_else(|| {
            n.strip_prefix("IpAddress(")
                .and_then(|r| r.strip_suffix(')'))
        })
        .unwrap_or(n)
}

/// What the client asked the certificate to be for, as a person writes it.
fn server_name_text(name: &rustls::pki_types::ServerName<'_>) -> String {
    match name {
        rustls::pki_types::ServerName::DnsName(d) => d.as_ref().to_owned(),
        rustls::pki_types::ServerName::IpAddress(ip) => std::net::IpAddr::from(*ip).to_string(),
        other => format!("{other:?}"),
    }
}

/// Why a server that completed the TLS handshake is not an ncx server this client can talk to:
/// the protocol it agreed to (ALPN), if it agreed to one.
pub fn explain_alpn(agreed: Option<&[u8]>) -> String {
    match agreed {
        None => "the server speaks TLS but is not an ncx server (it agreed to no application protocol): is this the ncx server's port?".into(),
        Some(p) => format!(
            "the server agreed to protocol {:?}, not {}: it is another version of ncx (upgrade the older side) or not an ncx server",
            String::from_utf8_lossy(p),
            String::from_utf8_lossy(ncx_proto::ALPN)
        ),
    }
}
