//! Where the server keeps its self-signed certificate when no `auto_cert_dir` is named: a place
//! that does not depend on the directory it was started from, so a restart from elsewhere keeps the
//! identity that clients pin.

use std::path::{Path, PathBuf};

/// The directory name of the self-signed certificate, inside whichever directory holds it.
pub const DEFAULT_AUTO_CERT_DIR: &str = "certs";

/// The certificate's file name inside the directory (see `crate::certs`); its presence in the
/// working directory's `certs` marks a server that kept it there before.
const SELF_SIGNED_CERT_FILE: &str = "ncx-server.crt";

/// In order: `certs` in `$STATE_DIRECTORY` (systemd's `StateDirectory=`, its first entry); `certs`
/// beside the configuration file; for a server configured by flags only, `certs` in the
/// platform's directory for program state ([`platform_state_dir`]) — except that a `certs` of the
/// working directory that already holds a certificate is kept, so a server set up by an earlier
/// version, which kept it there, does not change identity. The working directory is the last
/// resort, when the platform names no directory.
///
/// `config_dir` is the configuration file's directory, if a file is used.
pub(super) fn default_auto_cert_dir(config_dir: Option<&Path>) -> PathBuf {
    let from_env = |name: &str| {
        std::env::var_os(name)
            .and_then(|v| std::env::split_paths(&v).next())
            .filter(|d| !d.as_os_str().is_empty())
    };
    if let Some(dir) = from_env("STATE_DIRECTORY") {
        return dir.join(DEFAULT_AUTO_CERT_DIR);
    }
    if let Some(dir) = config_dir {
        return dir.join(DEFAULT_AUTO_CERT_DIR);
    }
    let legacy = Path::new(DEFAULT_AUTO_CERT_DIR);
    if legacy.join(SELF_SIGNED_CERT_FILE).exists() {
        return std::path::absolute(legacy).unwrap_or_else(|_| legacy.to_owned());
    }
    match platform_state_dir_from(from_env) {
        Some(dir) => dir.join("ncx").join(DEFAULT_AUTO_CERT_DIR),
        None => legacy.to_owned(),
    }
}

/// The platform's directory for a program's state, from the environment `var` reads:
/// `%ProgramData%` on Windows (a service runs as LocalSystem, whose profile is no place for
/// it), `~/Library/Application Support` on macOS, and `$XDG_STATE_HOME` or `~/.local/state`
/// elsewhere (the XDG base directory specification).
pub(super) fn platform_state_dir_from(var: impl Fn(&str) -> Option<PathBuf>) -> Option<PathBuf> {
    if cfg!(windows) {
        var("ProgramData").or_else(|| var("LOCALAPPDATA"))
    } else if cfg!(target_os = "macos") {
        var("HOME").map(|h| h.join("Library/Application Support"))
    } else {
        var("XDG_STATE_HOME")
            .filter(|d| d.is_absolute())
            .or_else(|| var("HOME").map(|h| h.join(".local/state")))
    }
}

/// The platform's directory for program state (see [`platform_state_dir_from`]), from the
/// environment.
pub fn platform_state_dir() -> Option<PathBuf> {
    platform_state_dir_from(|name| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_directory_follows_the_platform() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| PathBuf::from(v))
            }
        };
        if cfg!(windows) {
            assert_eq!(
                platform_state_dir_from(env(&[("ProgramData", "C:\\ProgramData")])),
                Some(PathBuf::from("C:\\ProgramData"))
            );
        } else if !cfg!(target_os = "macos") {
            assert_eq!(
                platform_state_dir_from(env(&[("HOME", "/home/a"), ("XDG_STATE_HOME", "/s")])),
                Some(PathBuf::from("/s"))
            );
            // The specification says a relative XDG_STATE_HOME is to be ignored.
            assert_eq!(
                platform_state_dir_from(env(&[("HOME", "/home/a"), ("XDG_STATE_HOME", "rel")])),
                Some(PathBuf::from("/home/a/.local/state"))
            );
            assert_eq!(platform_state_dir_from(env(&[])), None);
        }
    }
}
