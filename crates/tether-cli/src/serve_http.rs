//! The HTTP fallback transport of `tether serve` (see docs/protocol.md,
//! "HTTP transport"): `GET <room>` with `Accept: text/event-stream` opens
//! (or, with `Last-Event-ID` / `?last_event_id=`, resumes) a session whose
//! events come as Server-Sent Events; `POST <room>?session=KEY&seq=N` with a
//! JSON array of messages feeds it (`&close=1` instead ends the session).
//! `?topic=NAME` makes a read-only feed of
//! one topic for `EventSource` and `curl -N`. The same admission (origin,
//! token, connection slots, per-address limits) as a WebSocket upgrade.

use super::{refuse, App, ConnCtx, Slot, UpgradeRequest};
use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use std::sync::Arc;
use tether_hub::http::{parse_event_id, HttpError, Posted};
use tether_hub::ConnInfo;

/// Whether `req` is for the HTTP transport: an event stream asked for, or
/// a POST of messages.
pub(super) fn is_http_transport(req: &Request) -> bool {
    let wants_events = req.headers().get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|a| a.contains("text/event-stream"));
    (req.method() == axum::http::Method::GET && wants_events) || req.method() == axum::http::Method::POST
}

/// One query parameter (first occurrence), percent-decoding `%XX`.
fn param<'a>(query: Option<&'a str>, name: &str) -> Option<std::borrow::Cow<'a, str>> {
    let value = query?.split('&').find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))?;
    if !value.contains('%') && !value.contains('+') {
        return Some(value.into());
    }
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match u8::from_str_radix(std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"), 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    Some(String::from_utf8_lossy(&out).into_owned().into())
}

fn upgrade_request<'a>(app: &App, ctx: &ConnCtx, path: &'a str, query: Option<&'a str>, headers: &'a HeaderMap, json: bool) -> UpgradeRequest<'a> {
    let header = |name: &str| headers.get(name).and_then(|v: &HeaderValue| v.to_str().ok());
    UpgradeRequest {
        peer: ctx.peer,
        path,
        query,
        origin: header("origin"),
        authorization: header("authorization"),
        client_ip: app.settings.client_ip_header.as_deref().and_then(|h| headers.get(h).and_then(|v| v.to_str().ok())),
        json,
    }
}

fn error_response(e: &HttpError) -> Response {
    let status = match e {
        HttpError::UnknownSession => StatusCode::NOT_FOUND,
        HttpError::TooManySessions => StatusCode::SERVICE_UNAVAILABLE,
        HttpError::OutOfOrder { .. } => StatusCode::CONFLICT,
        HttpError::BatchTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
    };
    refuse(status, &e.to_string())
}

/// Serve an HTTP-transport request (see [`is_http_transport`]).
pub(super) async fn serve(app: Arc<App>, ctx: ConnCtx, req: Request) -> Response {
    if req.method() == axum::http::Method::POST {
        return post(app, ctx, req).await;
    }
    let (parts, _body) = req.into_parts();
    let path = parts.uri.path();
    let query = parts.uri.query();
    let json = param(query, "topic").is_some() || param(query, "protocol").is_some_and(|p| p == tether_hub::PROTOCOL_V1);
    let upgrade = upgrade_request(&app, &ctx, path, query, &parts.headers, json);
    let (ip_guard, identity) = match app.admit(&upgrade) {
        Ok(guard) => guard,
        Err((status, message)) => return refuse(status, message),
    };
    // Resume: the header EventSource sends when it reconnects by itself,
    // or the parameter a fresh EventSource (or a page) can set.
    let last = parts.headers.get("last-event-id").and_then(|v| v.to_str().ok()).map(str::to_string).or_else(|| param(query, "last_event_id").map(|c| c.into_owned()));
    let stream = match last.as_deref().and_then(parse_event_id) {
        // Another node holds the session: its stream comes through Redis.
        Some((key, after)) if !app.http.contains(key) && app.relay.as_ref().is_some_and(|r| r.elsewhere(key)) => {
            let Some(relay) = app.relay.clone() else { return refuse(StatusCode::NOT_FOUND, "unknown session") };
            return match relay.stream(key, after).await {
                Ok(chunks) => sse_response(chunks.map(bytes_of)),
                Err(crate::relay::Refused(status, body)) => refuse(StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY), body.trim()),
            };
        }
        Some((key, after)) => match app.http.resume(key, after) {
            Ok(stream) => stream,
            // Unknown here: the client opens a new session (after a
            // restart, or the session expired).
            Err(e) => return error_response(&e),
        },
        // A new session (also when the resume id does not parse: a bad
        // `Last-Event-ID` must not skip the hook). The connect hook decides
        // it as it does a WebSocket; a resumed session was decided when it
        // was opened.
        None => {
            let cookie = parts.headers.get(header::COOKIE).and_then(|v| v.to_str().ok());
            let identity = match app.connect_request(&upgrade, cookie, identity.clone()) {
                Some(ask) => match app.connect_hook(ask, path).await {
                    Ok(found) => found,
                    Err((status, message)) => return refuse(status, &message),
                },
                None => identity,
            };
            let topic = param(query, "topic");
            if let Some(topic) = &topic {
                if let Err(why) = tether_hub::envelope::check_topic(topic) {
                    return refuse(StatusCode::BAD_REQUEST, &format!("invalid topic: {why}"));
                }
                // A feed reads public topics only: $sys: and $room: have their own rules.
                if topic.starts_with('$') {
                    return refuse(StatusCode::FORBIDDEN, "a feed cannot read topics that start with $");
                }
            }
            // The session takes a connection slot, as a WebSocket does.
            let Ok(permit) = app.ws_slots.clone().try_acquire_owned() else {
                tether_hub::Metrics::add(&app.hub.metrics().refused.max_connections, 1);
                return refuse(StatusCode::SERVICE_UNAVAILABLE, "too many connections, try again later");
            };
            let ip = ctx.slot.lock().unwrap_or_else(|p| p.into_inner()).as_mut().and_then(|s| s.ip.take());
            let guard = Box::new((Slot { permit, ip, transport: None }, ip_guard));
            let room = topic.map_or_else(|| path.to_string(), |t| t.into_owned());
            match app.http.open(json, ConnInfo::with_identity(room, identity), guard) {
                Ok(stream) => stream,
                Err(e) => return error_response(&e),
            }
        }
    };
    let body = futures_util::stream::unfold(stream, |mut stream| async move {
        let chunk = stream.next_chunk().await?;
        Some((bytes_of(chunk), stream))
    });
    sse_response(body)
}

/// A `text/event-stream` response of `chunks`, proxy-safe.
fn sse_response(chunks: impl futures_util::Stream<Item = axum::body::Bytes> + Send + 'static) -> Response {
    let body = chunks.map(Ok::<_, std::convert::Infallible>);
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream")),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache, no-store")),
            // nginx: do not buffer this response.
            (header::HeaderName::from_static("x-accel-buffering"), HeaderValue::from_static("no")),
        ],
        axum::body::Body::from_stream(body),
    )
        .into_response()
}

fn bytes_of(chunk: String) -> axum::body::Bytes {
    axum::body::Bytes::from(chunk)
}

/// `POST <room>?session=KEY&seq=N`, body a JSON array of strings (each one
/// message, as a WebSocket text message would carry it).
async fn post(app: Arc<App>, ctx: ConnCtx, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let query = parts.uri.query();
    // Origin and token as at the stream (no slot: the session holds one).
    if let Err((status, message)) = app.admit(&upgrade_request(&app, &ctx, parts.uri.path(), query, &parts.headers, true)) {
        return refuse(status, message);
    }
    let Some(key) = param(query, "session") else {
        return refuse(StatusCode::BAD_REQUEST, "POST needs ?session=KEY (from the stream's session event) and &seq=N");
    };
    // `&close=1`: the client is done; the session ends now (its leave is
    // announced at once) instead of when the heartbeat gives up on it.
    if param(query, "close").is_some() {
        if !app.http.contains(&key) {
            if let Some(relay) = app.relay.as_ref().filter(|r| r.elsewhere(&key)) {
                return match relay.close(&key).await {
                    Ok((200, body)) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
                    Ok((status, body)) | Err(crate::relay::Refused(status, body)) => refuse(StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY), body.trim()),
                };
            }
        }
        return match app.http.close(&key) {
            Ok(()) => ([(header::CONTENT_TYPE, "application/json")], "{\"ok\":true}").into_response(),
            Err(e) => error_response(&e),
        };
    }
    let Some(seq) = param(query, "seq").and_then(|s| s.parse::<u64>().ok()).filter(|&s| s > 0) else {
        return refuse(StatusCode::BAD_REQUEST, "POST needs &seq=N, a number from 1, one more for each batch");
    };
    // One batch is at most one message's size (--max-message-size).
    let limit = app.settings.max_message_size;
    let bytes = match axum::body::to_bytes(body, limit).await {
        Ok(b) => b,
        Err(_) => return refuse(StatusCode::PAYLOAD_TOO_LARGE, &format!("a POST body may have at most {limit} bytes (--max-message-size)")),
    };
    let messages: Vec<String> = match serde_json::from_slice(&bytes) {
        Ok(m) => m,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, &format!("the body must be a JSON array of strings: {e}")),
    };
    if !app.http.contains(&key) {
        if let Some(relay) = app.relay.as_ref().filter(|r| r.elsewhere(&key)) {
            // Another node holds the session: applied there, through Redis.
            return match relay.post(&key, seq, messages).await {
                Ok((200, body)) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
                Ok((status, body)) | Err(crate::relay::Refused(status, body)) => refuse(StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY), body.trim()),
            };
        }
    }
    match app.http.post(&key, seq, messages) {
        Ok(Posted::Applied) => ([(header::CONTENT_TYPE, "application/json")], "{\"ok\":true}").into_response(),
        Ok(Posted::Duplicate) => ([(header::CONTENT_TYPE, "application/json")], "{\"ok\":true,\"duplicate\":true}").into_response(),
        Err(e) => error_response(&e),
    }
}
