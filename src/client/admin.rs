//! What the client answers on its admin socket: `status` (for `ncx status`) and `reload` (for
//! `ncx ctl reload`, answered in the shape the server's reload has).

use std::sync::Arc;

use super::reload::Reloader;
use super::report::ClientReloaded;

/// The client's admin requests: `status`, and `reload` when the client takes reloads.
pub(super) fn handler(
    status: Arc<std::sync::Mutex<crate::admin::ClientStatus>>,
    reloader: Option<Reloader>,
) -> crate::admin::Handler {
    Arc::new(move |request: String| {
        let status = status.clone();
        let reloader = reloader.clone();
        Box::pin(async move {
            match (request.as_str(), reloader) {
                ("status", _) => {
                    serde_json::to_string(&*status.lock().unwrap_or_else(|e| e.into_inner()))
                        .unwrap_or_default()
                }
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
        }),
        Err(e) => serde_json::json!({ "reloaded": false, "error": e }),
    }
    .to_string()
}
