//! `ncx service`: an `ncx client` or `ncx visit` command line registered as a Windows service,
//! which starts at boot and lets its visitors drain when it is stopped, through the service
//! control manager (`windows.rs`, with the `windows-service` crate). What is checked before
//! anything is registered (the name, the command, where the token comes from) is
//! platform-independent and lives in `plan.rs`; the command line itself is parsed by `cli` (its
//! `service.rs`), which calls in here, and the binary runs the service. On other platforms the
//! commands say what to use instead.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};

mod plan;
#[cfg(windows)]
mod windows;

pub use plan::{check_name, plan, Inspected, Job, Plan};

/// The service's name when `--name` is not given.
pub const DEFAULT_NAME: &str = "ncx";

/// `ncx service`.
#[derive(Debug, Args)]
pub struct ServiceArgs {
    #[command(subcommand)]
    pub action: ServiceAction,
}

/// What `ncx service` does.
#[derive(Debug, Subcommand)]
pub enum ServiceAction {
    /// Register the command after the options (`client …` or `visit …`) as a Windows service that
    /// starts at boot, as LocalSystem. Start it now with `sc start NAME`; `sc stop NAME` lets its
    /// visitors drain first.
    Install {
        /// The service's name.
        #[arg(long, default_value = DEFAULT_NAME)]
        name: String,
        /// Where the service writes its log [default: ncx\NAME.log in %ProgramData%].
        #[arg(long)]
        log_file: Option<PathBuf>,
        /// The command the service runs, e.g. `client --config C:\ncx\client.toml`.
        #[arg(
            required = true,
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "COMMAND"
        )]
        command: Vec<OsString>,
    },
    /// Stop the service (its visitors drain first) and remove it.
    Uninstall {
        /// The service's name.
        #[arg(long, default_value = DEFAULT_NAME)]
        name: String,
    },
    /// Run as the service: what the service control manager starts.
    #[command(hide = true)]
    Run {
        /// The service's name.
        #[arg(long)]
        name: String,
        /// The directory `install` ran in: relative paths of the command mean what they meant
        /// there (a service starts in the system directory).
        #[arg(long)]
        dir: PathBuf,
        /// The log file.
        #[arg(long)]
        log_file: PathBuf,
        /// The command to run.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<OsString>,
    },
}

/// Registers the planned service and says how to start it.
#[cfg(windows)]
pub fn install(plan: &Plan) -> anyhow::Result<()> {
    windows::install(plan)?;
    crate::say!(
        "installed service {} ({}): it starts at boot; start it now with `sc start {}`; it logs to {}",
        plan.name,
        plan.display_name,
        plan.name,
        plan.log_file.display()
    );
    Ok(())
}

/// Stops (draining) and removes the service `name`.
#[cfg(windows)]
pub fn uninstall(name: &str) -> anyhow::Result<()> {
    windows::uninstall(name)?;
    crate::say!("removed service {name}");
    Ok(())
}

/// Runs as the service `name` until the service manager stops it: `job`, whose visitors may take
/// `drain` to finish once stopped (the wait hint the service manager is given).
#[cfg(windows)]
pub fn run_as_service(name: String, drain: Duration, job: Job) -> anyhow::Result<()> {
    windows::run(name, drain, job)
}

#[cfg(not(windows))]
const ELSEWHERE: &str = "`ncx service` registers Windows services; on Linux run ncx under systemd (or another service manager), on macOS as a launchd job";

/// Registers the planned service: only on Windows.
#[cfg(not(windows))]
pub fn install(_plan: &Plan) -> anyhow::Result<()> {
    anyhow::bail!(ELSEWHERE)
}

/// Removes the service: only on Windows.
#[cfg(not(windows))]
pub fn uninstall(_name: &str) -> anyhow::Result<()> {
    anyhow::bail!(ELSEWHERE)
}

/// Runs as the service `name`: only on Windows.
#[cfg(not(windows))]
pub fn run_as_service(_name: String, _drain: Duration, _job: Job) -> anyhow::Result<()> {
    anyhow::bail!(ELSEWHERE)
}
