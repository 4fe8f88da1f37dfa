//! What a reload of the server's identities means for one session: the part of [`Control`]'s
//! state machine that follows the identities in force.

use super::*;

impl Control {
    /// Follows a reload: a session whose identity was removed, or whose credentials changed,
    /// is closed with the reason (visitors in flight get the drain deadline); one whose new
    /// policy no longer allows a port it serves is asked to open a fresh session, which
    /// registers its services under the new policy while visitors here finish; otherwise later
    /// registrations follow the new policy and nothing else changes. A session already draining
    /// (replaced, or shutting down) ends at once when its identity lost its credentials: its
    /// visitors are reset rather than served under credentials that no longer hold.
    pub(super) async fn reloaded(&mut self) -> Option<Outcome> {
        let new = self
            .identities
            .borrow_and_update()
            .get(&self.identity)
            .cloned();
        let drain = self.ctx.shared.settings.timing.drain_timeout;
        let identity = self.identity.clone();
        if self.phase.is_draining() {
            let revoked = match &new {
                None => "was removed from the server's configuration",
                Some(new) if new.auth != self.services.policy().auth => {
                    "had its credentials changed on the server"
                }
                Some(_) => return None,
            };
            info!("the identity {revoked}; ending its draining session");
            return Some(Outcome::Abort(format!("identity {identity} {revoked}")));
        }
        match new {
            None => {
                info!("the identity was removed from the configuration; closing its session");
                let why =
                    format!("identity {identity} was removed from the server's configuration");
                self.go_away(ErrorCode::NotAllowed, &why).await;
                self.begin_drain(drain, &why).await;
            }
            Some(new) if new.auth != self.services.policy().auth => {
                info!("the identity's credentials changed; closing its session");
                let why = format!("the credentials of identity {identity} changed on the server");
                self.go_away(ErrorCode::NotAllowed, &why).await;
                self.begin_drain(drain, &why).await;
            }
            Some(new) if self.services.outgrown_by(&new) && !self.phase.rotation_asked() => {
                info!(ports = %new.ports_text(), bind = %new.bind, "the identity's ports changed; asking the client for a fresh session");
                self.services.set_policy(new);
                self.ask_rotation(
                    "the server's ports for this identity changed; open a new session",
                )
                .await;
            }
            Some(new) => {
                if new != *self.services.policy() {
                    info!(ports = %new.ports_text(), bind = %new.bind, "the identity's policy changed; later registrations follow it");
                }
                self.services.set_policy(new);
            }
        }
        None
    }
}
