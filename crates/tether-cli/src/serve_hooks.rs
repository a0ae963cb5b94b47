//! The connect hook at the handshake (src/hooks.rs): what the backend is
//! told about an admitted upgrade, and the identity (or the refusal) its
//! answer gives. Every upgrade path (lean, hyper, HTTP/2, the HTTP
//! transport's streams) asks through these.

use super::{admission, App, UpgradeRequest};
use axum::http::StatusCode;
use tether_hub::Identity;

impl App {
    /// What to ask the connect hook about an admitted upgrade, if it is on
    /// (not for system rooms, which have their own rules). Yjs documents
    /// are asked about too: the grants the hook gives count as a JWT's
    /// (`yjs:NAME`, checked by serve.rs's `yjs_access`).
    pub(super) fn connect_request(&self, req: &UpgradeRequest<'_>, cookie: Option<&str>, identity: Identity) -> Option<crate::hooks::ConnectRequest> {
        self.hooks.as_ref().filter(|h| h.connect_on())?;
        if tether_hub::system::may_subscribe_system(req.path) {
            return None;
        }
        let ip = admission::client_ip(req.peer.ip(), req.client_ip, self.behind_proxy(req.peer), &self.settings.trusted_proxies);
        Some(crate::hooks::ConnectRequest {
            room: req.path.to_string(),
            client_ip: ip.to_string(),
            origin: req.origin.map(str::to_string),
            token: crate::auth::presented_token(req.authorization, req.query).map(str::to_string),
            cookie: cookie.map(str::to_string),
            identity,
        })
    }

    /// Ask the connect hook: the identity the connection gets, or the refusal.
    pub(super) async fn connect_hook(&self, ask: crate::hooks::ConnectRequest, path: &str) -> Result<Identity, (StatusCode, String)> {
        let Some(hooks) = &self.hooks else { return Ok(ask.identity) };
        let refused = |status: u16, message: String| {
            tether_hub::Metrics::add(&self.hub.metrics().handshake_failures, 1);
            tether_hub::Metrics::add(&self.hub.metrics().refused.auth, 1);
            (StatusCode::from_u16(status).unwrap_or(StatusCode::FORBIDDEN), message)
        };
        match hooks.connect(ask).await {
            crate::hooks::Admission::Refuse(status, message) => {
                self.hub.metrics().count_auth("refused", "connect_hook");
                Err(refused(status, message))
            }
            // A room (URL path) must be allowed; a Yjs document's grant is
            // `yjs:NAME`, checked with the final identity (`yjs_access`).
            crate::hooks::Admission::Admit(Identity::Granted(grants)) if path != "/" && !path.starts_with(tether_yjs::PATH_PREFIX) && !grants.may_subscribe(path) => {
                self.hub.metrics().count_auth("refused", "room");
                Err(refused(403, "the backend does not allow this room (URL path)".into()))
            }
            crate::hooks::Admission::Admit(identity) => {
                self.hub.metrics().count_auth("allowed", "connect_hook");
                Ok(identity)
            }
        }
    }
}
