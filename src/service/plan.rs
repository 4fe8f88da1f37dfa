//! What `ncx service install` registers: the plan checked before anything reaches the service
//! manager, and the job a running service runs.

use std::ffi::OsString;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;

use anyhow::bail;
use tokio_util::sync::CancellationToken;

/// A service ready to register: everything checked.
#[derive(Debug)]
pub struct Plan {
    /// The service's name.
    pub name: String,
    /// What the service manager shows.
    pub display_name: String,
    /// The arguments the service manager starts `ncx` with.
    pub arguments: Vec<OsString>,
    /// The log file.
    pub log_file: PathBuf,
}

/// What the command a service is to run turned out to be, as `cli` parsed and checked it.
#[derive(Debug)]
pub struct Inspected {
    /// `client` or `visit`.
    pub kind: &'static str,
    /// The token was given with `--token`.
    pub token_on_command_line: bool,
    /// The token would come from `NCX_TOKEN`.
    pub token_from_environment: bool,
}

/// Plans the service `name` for `command` (which `cli` has parsed and whose configuration it has
/// checked, so a mistake shows at install rather than at the next boot): a name the service
/// manager takes and a token the service will find. A token on the command line or in
/// `NCX_TOKEN` is refused: the service's command line is readable by every local user, and a
/// service does not see the installing user's environment. `cwd` is the directory relative paths
/// are resolved in when the service runs; `state_dir` the platform's state directory.
pub fn plan(
    name: &str,
    log_file: Option<&Path>,
    command: &[OsString],
    inspected: &Inspected,
    cwd: &Path,
    state_dir: Option<&Path>,
) -> anyhow::Result<Plan> {
    check_name(name)?;
    if inspected.token_on_command_line {
        bail!("--token would be stored in the service's command line, which every local user can read: put the token in a file and pass --token-file (or `token_file` in the configuration)");
    }
    if inspected.token_from_environment {
        bail!("the token comes from NCX_TOKEN, which a service does not see: put it in a file and set `token_file` (or pass --token-file)");
    }
    let log_file = match log_file {
        Some(p) => cwd.join(p),
        None => state_dir
            .map(|d| d.join("ncx"))
            .unwrap_or_else(|| cwd.to_owned())
            .join(format!("{name}.log")),
    };
    let mut arguments: Vec<OsString> = ["service", "run", "--name", name, "--dir"]
        .into_iter()
        .map(OsString::from)
        .collect();
    arguments.push(cwd.into());
    arguments.push("--log-file".into());
    arguments.push(log_file.clone().into());
    arguments.push("--".into());
    arguments.extend(command.iter().cloned());
    Ok(Plan {
        name: name.to_owned(),
        display_name: format!("ncx {} ({name})", inspected.kind),
        arguments,
        log_file,
    })
}

/// A name the service manager takes and a shell needs no quotes for.
pub fn check_name(name: &str) -> anyhow::Result<()> {
    let ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if !ok {
        bail!("service name {name:?}: use 1-64 of A-Z a-z 0-9 . _ -");
    }
    Ok(())
}

/// What a service runs: the command, started with the token that a stop cancels.
pub type Job = Box<
    dyn FnOnce(CancellationToken) -> Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>
        + Send,
>;
