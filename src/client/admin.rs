//! What the client answers on its admin socket: `status` (for `ncx status`) and `reload` (for
//! `ncx ctl reload`, answered in the shape the server's reload has).

use std::sync::Arc;

use super::reload::Reloader;
use super::report::ClientReloaded;
use super::several::StatusBoard;

/// The client's admin requests: `status`, and `reload` when the client takes reloads.
pub(super) fn handler(board: StatusBoard, reloader: Option<Reloader>) -> crate::admin::Handler {
    Arc::new(move |request: String| {
        let board = board.clone();
        let reloader = reloader.clone();
        Box::pin(async move {
            match (request.as_str(), reloader) {
                ("status", _) => serde_json::to_string(&board.view()).unwrap_or_default(),
                ("reload", Some(reloader)) => reload_answer(reloader.reload().await),
                (other, _) => serde_json::json!({
                    "error": format!("this client does not answer {other:?}")
                })
                .to_string(),
            }
        })
    })
}

/// A reload's outcome as `ncx ctl reload` reads it (the server's shape, and what a client adds).
fn reload_answer(result: Result<ClientReloaded, String>) -> String {
    let names = |v: &[ncx_proto::Name]| v.iter().map(|n| n.to_string()).collect::<Vec<_>>();
    match result {
        Ok(r) => serde_json::json!({
            "reloaded": true,
            "added": names(&r.added),
            "removed": names(&r.removed),
            "changed": names(&r.changed),
            "new_session": r.new_session,
            "need_restart": r.need_restart,
            "refused": r.refused,
            "servers_added": r.servers_added,
            "servers_removed": r.servers_removed,
        }),
        Err(e) => serde_json::json!({ "reloaded": false, "error": e }),
    }
    .to_string()
}
