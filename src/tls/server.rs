//! The server's side of TLS: its identity (chain and key), its rustls configuration, its
//! self-signed certificate, and the check of client certificates.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureScheme};

use super::material::{load_certs, load_key, load_roots, provider, Fingerprint, TlsError};

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

/// The server's TLS configuration: TLS 1.3 only, ALPN `ncx/1` only; and, with `client_ca`, the
/// check of client certificates that [`ClientCertCheck::check`] makes after the handshake.
///
/// With `client_ca`, clients are asked for a certificate and may present none (identities may
/// authenticate by token alone). A presented certificate must prove its key during the handshake
/// (rustls checks the signature), but whether it chains to the client CA is decided after the
/// handshake, by [`ClientCertCheck`]: a refusal made by the TLS layer reaches a TLS 1.3 client
/// only as an alert after its handshake has finished, so it saw "UnknownCA", "DecryptError" or a
/// closed connection depending on timing, and nothing told it to stop retrying. Refused after
/// the handshake, it gets one typed answer (`CertificateRefused`) on the control stream instead.
pub fn server_config(
    identity: ServerIdentity,
    client_ca: Option<&Path>,
) -> Result<(ServerConfig, Option<ClientCertCheck>), TlsError> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|source| TlsError::Rustls {
            context: "choosing TLS 1.3".into(),
            cause: source,
        })?;
    let (builder, check) = match client_ca {
        None => (builder.with_no_client_auth(), None),
        Some(path) => {
            let inner = rustls::server::WebPkiClientVerifier::builder_with_provider(
                load_roots(path)?,
                provider(),
            )
            .allow_unauthenticated()
            .build()
            .map_err(|e| TlsError::Rustls {
                context: format!("using the client CA in {}", path.display()),
                cause: rustls::Error::General(e.to_string()),
            })?;
            let deferred = Arc::new(DeferredVerifier {
                inner: inner.clone(),
            });
            (
                builder.with_client_cert_verifier(deferred),
                Some(ClientCertCheck { inner }),
            )
        }
    };
    let mut config = builder
        .with_single_cert(identity.chain, identity.key)
        .map_err(|source| TlsError::Rustls {
            context: "using the server certificate and key".into(),
            cause: source,
        })?;
    config.alpn_protocols = vec![ncx_proto::ALPN.to_vec()];
    Ok((config, check))
}

/// Asks for a client certificate and checks its handshake signature like `inner`, but accepts
/// every chain: [`ClientCertCheck::check`] verifies it with `inner` once the handshake is done.
#[derive(Debug)]
struct DeferredVerifier {
    inner: Arc<dyn ClientCertVerifier>,
}

impl ClientCertVerifier for DeferredVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        // Deferred, never skipped: every connection that presents a certificate goes through
        // `ClientCertCheck::check` before its hello is answered.
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// What a client proved with its certificate, as [`ClientCertCheck::check`] found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerCertificate {
    /// The client presented none.
    None,
    /// A certificate that chains to the client CA, with its common name (the identity it is for)
    /// if it has one.
    Verified(Option<String>),
    /// A certificate the client CA does not vouch for; the text says why in plain words.
    Refused(String),
}

/// Verifies a connection's client certificate against the client CA after the handshake.
#[derive(Debug, Clone)]
pub struct ClientCertCheck {
    inner: Arc<dyn ClientCertVerifier>,
}

impl ClientCertCheck {
    /// The client certificate of `conn`, verified.
    pub fn check(&self, conn: &rustls::ServerConnection) -> PeerCertificate {
        let Some((leaf, intermediates)) = conn.peer_certificates().and_then(|c| c.split_first())
        else {
            return PeerCertificate::None;
        };
        match self
            .inner
            .verify_client_cert(leaf, intermediates, UnixTime::now())
        {
            Ok(_) => PeerCertificate::Verified(common_name(leaf)),
            Err(e) => PeerCertificate::Refused(explain_refused(&e)),
        }
    }
}

/// Why a client certificate was refused, in words that say what to change.
fn explain_refused(e: &rustls::Error) -> String {
    use rustls::CertificateError as C;
    let why = match e {
        // Two CAs with the same name (every `ncx certs ca` defaults to "ncx CA") show up as a bad
        // signature rather than an unknown issuer.
        rustls::Error::InvalidCertificate(C::UnknownIssuer | C::BadSignature) => {
            "it is not signed by the CA the server trusts for clients (its tls.client_ca)"
        }
        rustls::Error::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => {
            "it has expired"
        }
        rustls::Error::InvalidCertificate(C::NotValidYet | C::NotValidYetContext { .. }) => {
            "it is not valid yet (is a clock wrong?)"
        }
        rustls::Error::InvalidCertificate(C::InvalidPurpose | C::InvalidPurposeContext { .. }) => {
            "it is not for client authentication"
        }
        rustls::Error::InvalidCertificate(C::Revoked) => "it has been revoked",
        _ => "it could not be verified against the server's tls.client_ca",
    };
    format!(
        "the client certificate was not accepted: {why}; use one from `ncx certs client NAME`, signed by the server's client CA and still valid"
    )
}

/// The common name of a certificate: which identity a verified client certificate is for.
fn common_name(leaf: &CertificateDer<'_>) -> Option<String> {
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
            cause: rustls::Error::General(e.into()),
        })?,
    };
    Ok((identity, cert_pem, key_pem))
}
