//! The server's side of TLS: its identity (chain and key), its rustls configuration, its
//! self-signed certificate, and the name in a verified client certificate.

use std::fmt;
use std::path::Path;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;

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
            cause: source,
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
                cause: rustls::Error::General(e.to_string()),
            })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(identity.chain, identity.key)
        .map_err(|source| TlsError::Rustls {
            context: "using the server certificate and key".into(),
            cause: source,
        })?;
    config.alpn_protocols = vec![ncx_proto::ALPN.to_vec()];
    Ok(config)
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
            cause: rustls::Error::General(e.into()),
        })?,
    };
    Ok((identity, cert_pem, key_pem))
}
