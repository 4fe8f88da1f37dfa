//! Reloads from the command line's side: SIGHUP for the server and the client, and the server's
//! admin requests (`ncx status`, `ncx ctl reload`), which re-read the configuration the way it
//! was read at start.

use super::*;

/// SIGHUP, watched from the start of the server or the client: until it is, the signal's default
/// action ends the process, so a reload asked for as soon as the process said it was ready (a
/// systemd `ExecReload`, a script) must find it watched already. Never fires where there is no
/// SIGHUP (Windows) or it cannot be watched.
pub(super) struct Hangups {
    #[cfg(unix)]
    signal: Option<tokio::signal::unix::Signal>,
}

impl Hangups {
    /// Starts watching (within the runtime).
    pub(super) fn watch() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let signal = signal(SignalKind::hangup())
                .map_err(|e| tracing::warn!(error = %e, "cannot watch SIGHUP: no reloads"))
                .ok();
            Hangups { signal }
        }
        #[cfg(not(unix))]
        Hangups {}
    }

    /// The next SIGHUP; pending forever when there is none to watch.
    async fn next(&mut self) {
        #[cfg(unix)]
        if let Some(signal) = &mut self.signal {
            if signal.recv().await.is_some() {
                return;
            }
        }
        std::future::pending().await
    }
}

/// On SIGHUP, re-reads the configuration (the file and the flags, as at start) and reloads the
/// server with it; a configuration that does not check out is refused whole, with its error,
/// and the one in force stays.
pub(super) async fn reload_on_hangup(
    mut hangups: Hangups,
    args: &ServerArgs,
    server: &crate::server::Server,
    status: &str,
) -> std::convert::Infallible {
    loop {
        hangups.next().await;
        let _ = reload(args, server, status);
    }
}

/// On SIGHUP, has the client re-read its configuration and take it (what the reload did, or
/// why it was refused, is logged).
pub(super) async fn client_reload_on_hangup(
    mut hangups: Hangups,
    reloader: crate::client::Reloader,
) -> std::convert::Infallible {
    loop {
        hangups.next().await;
        let _ = reloader.reload().await;
    }
}

/// The server's admin requests: `status`, and `reload` (as SIGHUP does, answered with what it
/// changed or why it was refused).
pub(super) fn server_admin(
    args: ServerArgs,
    server: crate::server::Server,
    status: String,
) -> crate::admin::Handler {
    std::sync::Arc::new(move |request: String| {
        let answer = match request.as_str() {
            "status" => serde_json::to_string(&server.status()),
            "reload" => {
                let report = match reload(&args, &server, &status) {
                    Ok(r) => serde_json::json!({
                        "reloaded": true,
                        "added": r.added.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
                        "removed": r.removed.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
                        "changed": r.changed.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
                        "need_restart": r.need_restart,
                    }),
                    Err(e) => serde_json::json!({ "reloaded": false, "error": e }),
                };
                Ok(report.to_string())
            }
            other => Ok(
                serde_json::json!({ "error": format!("unknown request {other:?}") }).to_string(),
            ),
        };
        let answer =
            answer.unwrap_or_else(|e| serde_json::json!({ "error": e.to_string() }).to_string());
        Box::pin(std::future::ready(answer))
    })
}

/// One reload of the server from `args`, logged with what it changed; the error is the
/// configuration's, when it was refused.
fn reload(
    args: &ServerArgs,
    server: &crate::server::Server,
    status: &str,
) -> Result<crate::server::Reloaded, String> {
    // One reload at a time, whether SIGHUP or `ncx ctl reload` asked for it.
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    crate::notify::reloading();
    let result = match args.clone().settings() {
        Err(e) => {
            tracing::error!("reload refused; the configuration in force stays: {e:#}");
            Err(format!("{e:#}"))
        }
        Ok(new) => {
            let r = server.reload(&new);
            let names = |v: &[ncx_proto::Name]| match v {
                [] => "none".to_owned(),
                v => v
                    .iter()
                    .map(|n| n.to_string())
                    .collect::<Vec<_>>()
                    .join(","),
            };
            tracing::info!(
                added = %names(&r.added),
                removed = %names(&r.removed),
                changed = %names(&r.changed),
                "configuration reloaded"
            );
            if !r.need_restart.is_empty() {
                tracing::warn!(
                    settings = %r.need_restart.join(", "),
                    "these settings changed but apply only at the next start"
                );
            }
            Ok(r)
        }
    };
    crate::notify::ready(status);
    result
}
