//! The authentication side of a [`Session`]: its [`AuthState`], expiry
//! (warning, grace, close) and the `auth` / `refresh` requests.

use super::{now_ms, End, Outbox, Session};
use crate::auth::Grants;
use crate::envelope;
use crate::hub::Hub;
use std::sync::Arc;
use tether_proto::EncodedFrame;

/// Where a session stands with authentication (kept small: one per connection).
pub(super) enum AuthState {
    Anonymous,
    /// Granted; `warned`: the expiry warning was sent.
    Granted { grants: Arc<Grants>, warned: bool },
    /// Waiting for the `auth` envelope until this time (Unix ms).
    Awaiting { until_ms: u64 },
}

impl AuthState {
    pub(super) fn grants(&self) -> Option<&Arc<Grants>> {
        match self {
            AuthState::Granted { grants, .. } => Some(grants),
            _ => None,
        }
    }
}

impl Session {
    /// Credentials running out: warn once, `warning` ahead of expiry; end
    /// the session `grace` after it (checked on every wake-up, so at
    /// least once per heartbeat interval).
    pub(super) fn check_expiry(&mut self, hub: &Hub, out: &mut impl Outbox) -> Result<(), End> {
        let now = now_ms();
        match &mut self.auth {
            AuthState::Anonymous => Ok(()),
            AuthState::Awaiting { until_ms } => if now >= *until_ms { Err(End::Unauthenticated) } else { Ok(()) },
            AuthState::Granted { grants, warned } => {
                let Some(exp) = grants.expires_at else { return Ok(()) };
                let exp_ms = exp.saturating_mul(1000);
                let close_ms = exp_ms.saturating_add(hub.config.token_expiry_grace.as_millis() as u64);
                if now >= close_ms {
                    hub.count_auth("closed", "expired");
                    return Err(End::Unauthenticated);
                }
                if !*warned && now.saturating_add(hub.config.token_expiry_warning.as_millis() as u64) >= exp_ms {
                    *warned = true;
                    if self.conn.json {
                        let _ = out.send_encoded(EncodedFrame::text(&envelope::token_expiring(exp, close_ms / 1000)));
                    }
                    tracing::info!(session = %self.conn.session(), user = %grants.user, expires_at = exp, "warned: token about to expire");
                }
                Ok(())
            }
        }
    }

    /// An `auth` or `refresh` request: check the token with the hub's
    /// authenticator and, if good, take its grants.
    pub(super) fn authenticate(&mut self, hub: &Hub, token: &str, id: Option<&serde_json::Value>, refresh: bool) {
        let conn = &self.conn;
        match (&self.auth, refresh) {
            (AuthState::Anonymous, _) => return hub.reply_error(conn, "not_authenticated", "this connection does not use tokens", id),
            (AuthState::Granted { .. }, false) => return hub.reply_error(conn, "already_authenticated", "already authenticated: send \"refresh\" to renew the token", id),
            (AuthState::Awaiting { .. }, true) => return hub.reply_error(conn, "unauthorized", "send \"auth\" with a token first", id),
            _ => {}
        }
        let Some(authenticator) = hub.authenticator() else {
            return hub.reply_error(conn, "unavailable", "this server has no authenticator for tokens sent in messages", id);
        };
        let grants = match authenticator.authenticate(token) {
            Ok(g) => g,
            Err(e) => {
                hub.count_auth("refused", e.code);
                tracing::info!(session = %conn.session(), reason = e.code, refresh, "refused credentials sent in a message");
                return hub.reply_error(conn, e.code, &e.message, id);
            }
        };
        if let AuthState::Granted { grants: old, .. } = &self.auth {
            if old.user != grants.user {
                hub.count_auth("refused", "user_changed");
                return hub.reply_error(conn, "forbidden", "a refresh must be for the same user (sub)", id);
            }
        }
        hub.count_auth("allowed", if refresh { "refresh" } else { "message" });
        tracing::info!(session = %conn.session(), user = %grants.user, expires_at = ?grants.expires_at, refresh, "authenticated");
        let grants = Arc::new(grants);
        // Subscriptions the new grants no longer allow end now.
        let gone: Vec<Arc<str>> = self.topics.iter().filter(|t| !grants.may_subscribe(t)).cloned().collect();
        for topic in gone {
            self.topics.retain(|t| *t != topic);
            hub.unsubscribe(conn, &topic);
            hub.reply_error(conn, "forbidden", &format!("the new token does not allow {topic:?}: unsubscribed"), None);
        }
        let first = matches!(self.auth, AuthState::Awaiting { .. });
        hub.reply(conn, EncodedFrame::text(&envelope::authenticated(&grants.user, grants.expires_at, id)));
        hub.api.set_user(conn.id, Some(grants.user.clone()));
        if first && grants.may_subscribe(&self.room) {
            hub.subscribe_granted(conn, &self.room, None, None, false, Some(&grants));
            self.topics.push(self.room.clone());
        }
        self.auth = AuthState::Granted { grants, warned: false };
    }

}
