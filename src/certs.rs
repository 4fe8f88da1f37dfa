//! Certificate tooling (`ncx certs`) and the server's self-signed certificate on first start.
//!
//! Everything is generated with rcgen on aws-lc-rs (ECDSA P-256). Private keys are created with mode
//! 0600 from the first byte (never written world-readable and tightened later), and nothing is
//! overwritten unless the caller says `force`.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use crate::tls::{load_certs, Fingerprint, ServerIdentity, TlsError};

/// How long a CA made by `ncx certs ca` is valid.
const CA_VALIDITY_DAYS: i64 = 3650;
/// How long a server or client certificate is valid (the CA/Browser limit most tools accept).
const LEAF_VALIDITY_DAYS: i64 = 825;
/// Certificates start to be valid this long before now, to tolerate clocks that run behind.
const BACKDATE_DAYS: i64 = 1;

/// A file this module wrote, for printing.
#[derive(Debug)]
pub struct Written {
    /// The certificate file.
    pub cert: PathBuf,
    /// The private key file (mode 0600).
    pub key: PathBuf,
    /// Fingerprint of the certificate.
    pub fingerprint: Fingerprint,
}

fn io_err(context: String) -> impl FnOnce(std::io::Error) -> TlsError {
    move |source| TlsError::Io {
        context,
        cause: source,
    }
}

/// Writes `contents` to `path`; keys get mode 0600 at creation (on Unix). Refuses to replace an
/// existing file unless `force`.
fn write_file(path: &Path, contents: &str, private: bool, force: bool) -> Result<(), TlsError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))?;
    }
    let mut opts = fs::OpenOptions::new();
    opts.write(true);
    if force {
        opts.create(true).truncate(true);
    } else {
        opts.create_new(true);
    }
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    // Windows has no mode bits: a key file takes the ACL its directory passes on, so keep keys in
    // a directory only their user can read (README, "Windows").
    #[cfg(not(unix))]
    let _ = private;
    let mut f = opts.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            TlsError::Io {
                context: format!("{} exists; pass --force to overwrite it", path.display()),
                cause: e,
            }
        } else {
            TlsError::Io {
                context: format!("writing {}", path.display()),
                cause: e,
            }
        }
    })?;
    #[cfg(unix)]
    if private && force {
        // An existing file keeps its old mode through truncate: tighten it before writing.
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(io_err(format!("setting mode 0600 on {}", path.display())))?;
    }
    f.write_all(contents.as_bytes())
        .map_err(io_err(format!("writing {}", path.display())))
}

fn validity(params: &mut CertificateParams, days: i64) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(BACKDATE_DAYS);
    params.not_after = now + time::Duration::days(days);
}

/// `ncx certs ca`: a new CA in `dir` (`ca.crt`, `ca.key`).
pub fn create_ca(dir: &Path, common_name: &str, force: bool) -> Result<Written, TlsError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    validity(&mut params, CA_VALIDITY_DAYS);
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    let out = Written {
        cert: dir.join("ca.crt"),
        key: dir.join("ca.key"),
        fingerprint: Fingerprint::of(cert.der()),
    };
    write_file(&out.key, &key.serialize_pem(), true, force)?;
    write_file(&out.cert, &cert.pem(), false, force)?;
    Ok(out)
}

fn load_issuer(dir: &Path) -> Result<(Issuer<'static, KeyPair>, String), TlsError> {
    let cert_path = dir.join("ca.crt");
    let key_path = dir.join("ca.key");
    let key_pem = fs::read_to_string(&key_path).map_err(io_err(format!(
        "reading the CA key {} (create a CA first with `ncx certs ca`)",
        key_path.display()
    )))?;
    let cert_pem = fs::read_to_string(&cert_path)
        .map_err(io_err(format!("reading {}", cert_path.display())))?;
    let key = KeyPair::from_pem(&key_pem)?;
    let issuer = Issuer::from_ca_cert_pem(&cert_pem, key)?;
    Ok((issuer, cert_pem))
}

/// What a leaf certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeafKind {
    /// A server: names are DNS names or IP addresses it is reached by.
    Server,
    /// A client: the one name is its identity (common name and SAN).
    Client,
}

/// `ncx certs server` / `ncx certs client`: a certificate signed by the CA in `dir`, written as
/// `<file_stem>.crt` (leaf then CA) and `<file_stem>.key`.
pub fn create_leaf(
    dir: &Path,
    kind: LeafKind,
    names: &[String],
    file_stem: &str,
    force: bool,
) -> Result<Written, TlsError> {
    let (issuer, ca_pem) = load_issuer(dir)?;
    let mut params = CertificateParams::new(names.to_vec())?;
    let cn = names.first().cloned().unwrap_or_else(|| "ncx".into());
    params.distinguished_name.push(DnType::CommonName, cn);
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![match kind {
        LeafKind::Server => ExtendedKeyUsagePurpose::ServerAuth,
        LeafKind::Client => ExtendedKeyUsagePurpose::ClientAuth,
    }];
    validity(&mut params, LEAF_VALIDITY_DAYS);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    let out = Written {
        cert: dir.join(format!("{file_stem}.crt")),
        key: dir.join(format!("{file_stem}.key")),
        fingerprint: Fingerprint::of(cert.der()),
    };
    write_file(&out.key, &key.serialize_pem(), true, force)?;
    write_file(&out.cert, &(cert.pem() + &ca_pem), false, force)?;
    Ok(out)
}

/// The server's own certificate when none is configured: loaded from `dir` if an earlier start made
/// one, otherwise created there (self-signed, key mode 0600). Returns whether it was created.
pub fn load_or_create_self_signed(dir: &Path) -> Result<(ServerIdentity, bool), TlsError> {
    let cert = dir.join("ncx-server.crt");
    let key = dir.join("ncx-server.key");
    if cert.exists() || key.exists() {
        return Ok((ServerIdentity::from_files(&cert, &key)?, false));
    }
    let names = vec!["localhost".to_owned(), "127.0.0.1".into(), "::1".into()];
    let (identity, cert_pem, key_pem) = crate::tls::self_signed(&names)?;
    write_file(&key, &key_pem, true, false)?;
    write_file(&cert, &cert_pem, false, false)?;
    // Read back what was written, so a start that creates and a start that loads behave the same.
    let loaded = load_certs(&cert)?;
    debug_assert_eq!(loaded.first(), identity.chain.first());
    Ok((identity, true))
}
