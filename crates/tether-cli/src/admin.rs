//! The operator API of `tether serve` and the drain state it shares with
//! SIGTERM: `POST /admin/drain` (stop accepting, close every client over
//! `--drain-window`), `POST /admin/shed?fraction=F` (close that fraction of
//! the clients over the window, keep accepting: rebalancing), `POST
//! /admin/resume` (accept again). All behind `--admin-token` (a bearer
//! token) or the server API's `--api-key` (`X-API-Key`); without either
//! the API is off (404). While draining, `/health`
//! answers 503 and upgrades are refused with 503, so load balancers send new
//! connections elsewhere. The closes themselves are the hub's
//! ([`tether_hub::Hub::shed`]): 1012 with a jittered reconnect hint.

use crate::admission;
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tether_hub::Hub;

/// Whether this node is draining (refuses new WebSockets, `/health` 503).
#[derive(Default)]
pub(crate) struct DrainState {
    draining: AtomicBool,
}

impl DrainState {
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Stop accepting and close every client over `window` (SIGTERM and
    /// `POST /admin/drain`). Returns how many connections are being closed.
    pub fn drain(&self, hub: &Arc<Hub>, window: Duration) -> tokio::task::JoinHandle<usize> {
        self.draining.store(true, Ordering::Release);
        tracing::info!(connections = hub.connection_count(), ?window, "draining: refusing new connections, closing clients with 1012");
        shed(hub, 1.0, window)
    }
}

fn shed(hub: &Arc<Hub>, fraction: f64, window: Duration) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(hub.shed(fraction, window))
}

fn json(status: StatusCode, body: serde_json::Value) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

fn error(status: StatusCode, message: &str) -> Response {
    json(status, serde_json::json!({ "error": message }))
}

/// The value of `fraction=` in a query string.
fn fraction(query: Option<&str>) -> Result<f64, &'static str> {
    let raw = query.and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("fraction="))).ok_or("missing ?fraction= (a number above 0, at most 1)")?;
    match raw.parse::<f64>() {
        Ok(f) if f > 0.0 && f <= 1.0 => Ok(f),
        _ => Err("fraction must be a number above 0 and at most 1, e.g. ?fraction=0.25"),
    }
}

/// One request to `/admin/*`.
pub(crate) fn handle(hub: &Arc<Hub>, state: &DrainState, settings: &crate::settings::Settings, req: &axum::extract::Request) -> Response {
    let window = settings.drain_window;
    let (method, path, query, headers) = (req.method(), req.uri().path(), req.uri().query(), req.headers());
    // The admin token, or the server API's key (`--api-key`, `X-API-Key`).
    if settings.admin_token.is_none() && settings.api.key.is_none() {
        return error(StatusCode::NOT_FOUND, "the operator API is off (start tether serve with --admin-token or --api-key)");
    }
    let authorization = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let by_token = settings.admin_token.as_deref().is_some_and(|t| admission::has_token(t, authorization, None));
    let given_key = headers.get("x-api-key").map(|v| v.as_bytes());
    let by_key = match (settings.api.key.as_deref(), given_key) {
        (Some(key), Some(given)) => bool::from(subtle::ConstantTimeEq::ct_eq(given, key.as_bytes())),
        _ => false,
    };
    if !(by_token | by_key) {
        return error(StatusCode::UNAUTHORIZED, "/admin needs the admin token (Authorization: Bearer ...) or the API key (X-API-Key)");
    }
    if method != Method::POST {
        return error(StatusCode::METHOD_NOT_ALLOWED, "only POST");
    }
    let window_ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
    match path {
        "/admin/drain" => {
            let connections = hub.connection_count();
            drop(state.drain(hub, window));
            json(StatusCode::ACCEPTED, serde_json::json!({ "draining": true, "connections": connections, "window_ms": window_ms }))
        }
        "/admin/shed" => match fraction(query) {
            Ok(f) => {
                let connections = ((hub.connection_count() as f64) * f).ceil() as usize;
                tracing::info!(fraction = f, connections, ?window, "shedding connections");
                drop(shed(hub, f, window));
                json(StatusCode::ACCEPTED, serde_json::json!({ "shedding": connections, "fraction": f, "window_ms": window_ms }))
            }
            Err(why) => error(StatusCode::BAD_REQUEST, why),
        },
        "/admin/resume" => {
            state.draining.store(false, Ordering::Release);
            tracing::info!("resumed: accepting connections again");
            json(StatusCode::OK, serde_json::json!({ "draining": false }))
        }
        _ => error(StatusCode::NOT_FOUND, "no such operator endpoint (POST /admin/drain, /admin/shed?fraction=F, /admin/resume)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fractions_outside_zero_to_one_are_refused() {
        assert_eq!(fraction(Some("fraction=0.25")), Ok(0.25));
        assert_eq!(fraction(Some("x=1&fraction=1")), Ok(1.0));
        for bad in ["fraction=0", "fraction=1.5", "fraction=-1", "fraction=NaN", "fraction=abc", "fraction=inf"] {
            assert!(fraction(Some(bad)).is_err(), "{bad}");
        }
        assert!(fraction(None).is_err());
    }
}
