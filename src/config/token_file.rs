//! Tokens read from files (`token_file`, `--token-file`), so a token need not be on a command line
//! (which every local user can read in the process list) or in the environment (which children
//! inherit).
//!
//! A relative `token_file` is looked up in `$CREDENTIALS_DIRECTORY` when that is set: systemd sets
//! it for a unit with `LoadCredential=NAME:/path` (or `SetCredentialEncrypted=`) and puts the
//! credential there as the file NAME, readable by the service only. Otherwise a relative path in a
//! file is relative to that file's directory and one in a flag to the working directory, like every
//! other path.

use std::io::Read;
use std::path::{Path, PathBuf};

/// The largest token file read. A token is a short secret; anything longer is a wrong file (a key,
/// a log), and capping the read keeps it out of memory.
pub const MAX_TOKEN_FILE_BYTES: u64 = 4096;

/// The directory systemd put the unit's credentials in, if any.
pub(crate) fn credentials_directory() -> Option<PathBuf> {
    std::env::var_os("CREDENTIALS_DIRECTORY")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
}

/// Where a `token_file` points: a relative path inside `credentials` when that is given, else
/// `path` unchanged (already made relative to its file by the caller).
pub(crate) fn locate(path: &Path, credentials: Option<&Path>) -> PathBuf {
    match credentials {
        Some(dir) if path.is_relative() => dir.join(path),
        _ => path.to_owned(),
    }
}

/// The token of a `token_file` value written at `f` in `src`, and the file it was read from;
/// a failure points at the value.
pub(crate) fn read_located(
    src: &super::Source,
    f: &toml::Spanned<PathBuf>,
) -> Result<(String, PathBuf), super::ConfigError> {
    let path = locate(f.get_ref(), credentials_directory().as_deref());
    let token = read(&path).map_err(|e| src.at(f.span(), Some("token_file"), e))?;
    Ok((token, path))
}

/// Reads the token in `path`: the whole file without the whitespace around it (an editor's final
/// line break), which must leave something, in UTF-8, of at most [`MAX_TOKEN_FILE_BYTES`].
pub(crate) fn read(path: &Path) -> Result<String, String> {
    let shown = path.display();
    let file =
        std::fs::File::open(path).map_err(|e| format!("reading {shown}: {}", io_words(&e)))?;
    warn_if_shared(&file, path);
    let mut bytes = Vec::new();
    file.take(MAX_TOKEN_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("reading {shown}: {}", io_words(&e)))?;
    if bytes.len() as u64 > MAX_TOKEN_FILE_BYTES {
        return Err(format!(
            "{shown} is longer than {MAX_TOKEN_FILE_BYTES} bytes: is it the token file?"
        ));
    }
    let text = String::from_utf8(bytes).map_err(|_| format!("{shown} is not UTF-8 text"))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(format!("{shown} is empty: write the token into it"));
    }
    Ok(token.to_owned())
}

/// An I/O error in plain words, without the "(os error N)" that `Display` adds.
fn io_words(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file".to_owned(),
        std::io::ErrorKind::PermissionDenied => "permission denied".to_owned(),
        _ => e.to_string(),
    }
}

/// Warns when other users may read the token (like ssh about a private key); it is still used,
/// since refusing would break setups where a group is meant to read it.
#[cfg(unix)]
fn warn_if_shared(file: &std::fs::File, path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = file.metadata() {
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            tracing::warn!(
                file = %path.display(),
                mode = format_args!("{:o}", mode & 0o777),
                "the token file can be read by other users: chmod 600 it"
            );
        }
    }
}

#[cfg(not(unix))]
fn warn_if_shared(_file: &std::fs::File, _path: &Path) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_file_is_trimmed_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t");
        std::fs::write(&p, "s3cret\r\n").unwrap();
        assert_eq!(read(&p).unwrap(), "s3cret");
        std::fs::write(&p, " \n").unwrap();
        assert!(read(&p)
            .unwrap_err()
            .ends_with("is empty: write the token into it"));
        std::fs::write(&p, vec![b'a'; MAX_TOKEN_FILE_BYTES as usize + 1]).unwrap();
        assert!(read(&p).unwrap_err().contains("is longer than 4096 bytes"));
        std::fs::write(&p, [0xff, 0xfe]).unwrap();
        assert!(read(&p).unwrap_err().ends_with("is not UTF-8 text"));
        let missing = dir.path().join("nope");
        assert_eq!(
            read(&missing).unwrap_err(),
            format!("reading {}: no such file", missing.display())
        );
    }

    #[test]
    fn a_relative_token_file_is_a_credential_when_systemd_gives_some() {
        let creds = Path::new("/run/credentials/ncx.service");
        assert_eq!(locate(Path::new("alice"), Some(creds)), creds.join("alice"));
        assert_eq!(
            locate(Path::new("/etc/ncx/alice"), Some(creds)),
            Path::new("/etc/ncx/alice")
        );
        assert_eq!(locate(Path::new("alice"), None), Path::new("alice"));
    }
}
