//! `ncx service install` and `uninstall` as the command line has them: the command to register is
//! parsed and its configuration checked here, then `crate::service` plans and registers it.

use std::ffi::OsString;

use anyhow::Context;
use clap::Parser;

use super::{Cli, Command};
use crate::service::{Inspected, ServiceAction};

impl ServiceAction {
    /// Runs `install` or `uninstall`.
    pub(super) fn execute(self) -> anyhow::Result<()> {
        match self {
            ServiceAction::Install {
                name,
                log_file,
                command,
            } => {
                crate::service::check_name(&name)?;
                let inspected = inspect(&command)?;
                let cwd = std::env::current_dir().context("reading the working directory")?;
                let state = crate::config::platform_state_dir();
                let plan = crate::service::plan(
                    &name,
                    log_file.as_deref(),
                    &command,
                    &inspected,
                    &cwd,
                    state.as_deref(),
                )?;
                crate::service::install(&plan)
            }
            ServiceAction::Uninstall { name } => {
                crate::service::check_name(&name)?;
                crate::service::uninstall(&name)
            }
            ServiceAction::Run { name, .. } => anyhow::bail!(
                "`ncx service run` is what the service manager starts: start the service with `sc start {name}`"
            ),
        }
    }
}

/// Parses `command` as `ncx` would (`client …` or `visit …`) and checks the settings it would run
/// with.
fn inspect(command: &[OsString]) -> anyhow::Result<Inspected> {
    let command = parse(command)?;
    let (kind, token_on_command_line) = match &command {
        Command::Client(args) => ("client", args.connect.token.is_some()),
        Command::Visit(args) => ("visit", args.connect.token.is_some()),
        _ => anyhow::bail!("a service runs `client …` or `visit …`, e.g. `ncx service install client --config C:\\ncx\\client.toml`"),
    };
    let settings = command
        .client_settings()
        .context("checking the service's configuration")?;
    Ok(Inspected {
        kind,
        token_on_command_line,
        token_from_environment: settings.token_source.as_deref()
            == Some(crate::config::ENV_TOKEN_SOURCE),
    })
}

/// A service's command, parsed as `ncx` parses its own: the global options it has (`--log-level`)
/// and the command.
pub fn parse(command: &[OsString]) -> anyhow::Result<Command> {
    Ok(parse_cli(command)?.command)
}

/// [`parse`], keeping the global options.
pub fn parse_cli(command: &[OsString]) -> anyhow::Result<Cli> {
    let argv = std::iter::once(OsString::from("ncx")).chain(command.iter().cloned());
    Cli::try_parse_from(argv).map_err(|e| anyhow::anyhow!("the service's command: {e}"))
}
