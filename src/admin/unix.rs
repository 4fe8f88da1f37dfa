//! The admin endpoint on a Unix socket: binding it safely, serving requests, and asking one.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;

use super::*;
use crate::tasks::TaskGroup;

/// The bound admin endpoint.
pub type Listener = UnixListener;

/// Binds the admin socket at `path`, mode 0600. A socket file left by a process that is gone is
/// replaced; one a running process still answers on is an error, as is anything that is not a
/// socket.
pub async fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    use anyhow::Context;
    use std::os::unix::fs::FileTypeExt;
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            anyhow::bail!(
                "admin socket {}: the path exists and is not a socket",
                path.display()
            );
        }
        if UnixStream::connect(path).await.is_ok() {
            anyhow::bail!(
                "admin socket {}: another process answers on it",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("removing the stale admin socket {}", path.display()))?;
    }
    // Nobody else may connect between the bind and the chmod: the socket is made under a umask
    // that leaves it to the owner alone.
    let listener = {
        let _umask = Umask::owner_only();
        UnixListener::bind(path)
    }
    .with_context(|| format!("binding the admin socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("setting the mode of {}", path.display()))?;
    Ok(listener)
}

/// Serves `listener` with `handler` until `shutdown`, then removes the socket file at `path`.
pub async fn serve(
    listener: UnixListener,
    path: std::path::PathBuf,
    handler: Handler,
    shutdown: CancellationToken,
) {
    tracing::info!(path = %path.display(), "admin socket listening (ncx status, ncx ctl reload)");
    let group = TaskGroup::child_of(&shutdown);
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let conn = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => r,
        };
        let Ok((stream, _)) = conn else {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(crate::accept::ACCEPT_ERROR_BACKOFF) => continue,
            }
        };
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
    let _ = std::fs::remove_file(&path);
}

/// Sends `request` to the admin socket at `path` and returns the answer.
pub async fn request(path: &Path, request: &str) -> anyhow::Result<String> {
    use anyhow::Context;
    let mut stream = UnixStream::connect(path).await.with_context(|| {
        format!(
            "connecting to the admin socket {} (is ncx running with admin_socket there, and may this user open it?)",
            path.display()
        )
    })?;
    ask(&mut stream, request).await
}

/// Sets the process umask to 0o077 while alive.
struct Umask(rustix::fs::Mode);

impl Umask {
    fn owner_only() -> Self {
        Umask(rustix::process::umask(rustix::fs::Mode::from_raw_mode(
            0o077,
        )))
    }
}

impl Drop for Umask {
    fn drop(&mut self) {
        rustix::process::umask(self.0);
    }
}
