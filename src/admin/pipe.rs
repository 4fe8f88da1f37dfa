//! The admin endpoint on Windows: a named pipe (`\\.\pipe\NAME`). The first instance is created
//! as the first of its name, so a process that is already serving the name (or squatting it) is
//! an error at start rather than a second server behind the same name; remote clients are
//! refused. The pipe's default security gives write access only to the creating user,
//! administrators and SYSTEM.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::windows::named_pipe::{ClientOptions, NamedPipeServer, ServerOptions};
use tokio_util::sync::CancellationToken;

use super::*;
use crate::tasks::TaskGroup;

/// The bound admin pipe: its first instance, waiting for a client.
pub struct Listener {
    first: NamedPipeServer,
}

/// What Windows answers when every instance of a pipe is busy.
const ERROR_PIPE_BUSY: i32 = 231;
/// How often `ncx status` tries a busy pipe again, and how long it pauses between tries.
const BUSY_TRIES: u32 = 50;
const BUSY_PAUSE: Duration = Duration::from_millis(20);

/// Refuses a name that is not a local pipe's.
fn check_name(path: &Path) -> anyhow::Result<()> {
    let name = path.to_string_lossy();
    let prefix = r"\\.\pipe\";
    let is_pipe = name.len() > prefix.len()
        && name
            .get(..prefix.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(prefix));
    if !is_pipe {
        anyhow::bail!(
            "admin socket {}: on Windows it is a named pipe, \\\\.\\pipe\\NAME",
            path.display()
        );
    }
    Ok(())
}

fn instance(path: &Path, first: bool) -> std::io::Result<NamedPipeServer> {
    ServerOptions::new()
        .first_pipe_instance(first)
        .reject_remote_clients(true)
        .create(path.as_os_str())
}

/// Creates the admin pipe at `path`; an error when another process already serves the name.
pub async fn bind(path: &Path) -> anyhow::Result<Listener> {
    use anyhow::Context;
    check_name(path)?;
    // Windows refuses a first instance of a name that exists; asking it first says so in the
    // same words where that flag is not enforced (wine).
    match ClientOptions::new().open(path.as_os_str()) {
        Err(e) if e.raw_os_error() != Some(ERROR_PIPE_BUSY) => {}
        _ => anyhow::bail!("admin pipe {}: another process serves it", path.display()),
    }
    let first = instance(path, true).with_context(|| {
        format!(
            "creating the admin pipe {} (does another process serve it?)",
            path.display()
        )
    })?;
    Ok(Listener { first })
}

/// Serves the pipe with `handler` until `shutdown`. A new instance is created before a connected
/// one is handed to its task, so a client finds the pipe at every moment.
pub async fn serve(
    listener: Listener,
    path: PathBuf,
    handler: Handler,
    shutdown: CancellationToken,
) {
    tracing::info!(path = %path.display(), "admin pipe listening (ncx status, ncx ctl reload)");
    let group = TaskGroup::child_of(&shutdown);
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let failures = crate::ratelimit::LogLimiter::default();
    let mut waiting = listener.first;
    loop {
        let connected = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = waiting.connect() => r,
        };
        let next = loop {
            match instance(&path, false) {
                Ok(next) => break Some(next),
                Err(e) => {
                    if let Some(held_back) = failures.allow() {
                        tracing::warn!(error = %e, held_back, "admin pipe: cannot create the next instance; trying again");
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => break None,
                        _ = tokio::time::sleep(crate::accept::ACCEPT_ERROR_BACKOFF) => {}
                    }
                }
            }
        };
        let Some(next) = next else { break };
        let stream = std::mem::replace(&mut waiting, next);
        // A client that left before the connect completed leaves nothing to answer.
        if connected.is_err() {
            continue;
        }
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            continue;
        };
        let handler = handler.clone();
        let stop = group.token().clone();
        group.spawn(async move {
            tokio::select! {
                () = answer(stream, &handler) => {}
                () = stop.cancelled() => {}
            }
            drop(permit);
        });
    }
    group.close_and_wait().await;
}

/// Sends `request` to the admin pipe at `path` and returns the answer; a pipe whose instances
/// are all busy is tried again for about a second.
pub async fn request(path: &Path, request: &str) -> anyhow::Result<String> {
    use anyhow::Context;
    check_name(path)?;
    let mut tries = 0;
    let mut client = loop {
        match ClientOptions::new().open(path.as_os_str()) {
            Ok(client) => break client,
            Err(e) if e.raw_os_error() == Some(ERROR_PIPE_BUSY) && tries < BUSY_TRIES => {
                tries += 1;
                tokio::time::sleep(BUSY_PAUSE).await;
            }
            Err(e) => {
                return Err(e).with_context(|| {
                    format!(
                        "connecting to the admin pipe {} (is ncx running with admin_socket there?)",
                        path.display()
                    )
                })
            }
        }
    };
    ask(&mut client, request).await
}
