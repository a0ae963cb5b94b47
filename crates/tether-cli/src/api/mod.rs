//! The server API: what an application's backend calls, over HTTP on the
//! same port as the WebSockets, behind `X-API-Key` (`--api-key`). Every
//! endpoint is `POST /api/<name>` with a JSON body and a JSON answer;
//! errors are `{"error":{"code":..,"message":..}}` with the HTTP status
//! that fits. The contract is docs/openapi.json, served at
//! `/api/openapi.json` and checked against the running server by
//! schemathesis (scripts/test.sh).
//!
//! Without `--api-key` the API is off: every `/api/` path answers 404
//! `api_disabled`. A missing key is 401, a wrong one 403, and wrong keys
//! count towards the same per-address throttle as WebSocket tokens (429).

mod store;

use crate::admission::AuthFailures;
use axum::extract::Request;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use store::{Claim, Outcome, Store};
use tether_hub::api::{ApiError as HubError, Position};
use tether_hub::Hub;

/// The OpenAPI 3 document of this API (docs/openapi.json).
pub const OPENAPI: &str = include_str!("../../web/openapi.json");

/// Most topics in one `/api/broadcast`.
pub const MAX_BROADCAST_TOPICS: usize = 1000;
/// Most messages one `/api/history` answer carries.
pub const MAX_HISTORY: usize = 1000;
/// How often a node publishes its figures for `/api/info` (Redis broker).
const BEAT: Duration = Duration::from_secs(5);

/// The API's settings (from `tether serve`'s).
#[derive(Clone, Debug)]
pub struct ApiSettings {
    pub key: Option<String>,
    pub idempotency_window: Duration,
    pub timeout: Duration,
    pub max_body: usize,
    pub max_content: usize,
}

/// The server API of one node.
pub struct Api {
    hub: Arc<Hub>,
    settings: ApiSettings,
    store: Store,
    started: Instant,
    metrics: ApiMetrics,
}

/// Requests by endpoint and status, for `/metrics`.
#[derive(Default)]
struct ApiMetrics {
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
    replays: AtomicU64,
}

/// An API error: HTTP status, code, message.
struct Failure(StatusCode, &'static str, String);

impl Failure {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Failure {
        Failure(status, code, message.into())
    }
}

impl From<HubError> for Failure {
    fn from(e: HubError) -> Failure {
        match e {
            HubError::Timeout(_) => Failure::new(StatusCode::GATEWAY_TIMEOUT, "timeout", e.to_string()),
            HubError::Busy => Failure::new(StatusCode::SERVICE_UNAVAILABLE, "busy", e.to_string()),
            HubError::BadContent(_) => Failure::new(StatusCode::BAD_REQUEST, "invalid_request", e.to_string()),
            HubError::Broker(_) => Failure::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e.to_string()),
        }
    }
}

impl From<store::StoreError> for Failure {
    fn from(e: store::StoreError) -> Failure {
        Failure::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", format!("idempotency store: {e}"))
    }
}

fn json_response(status: StatusCode, body: Value) -> Response {
    (status, [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body.to_string()).into_response()
}

impl Failure {
    fn into_response(self) -> Response {
        let mut response = json_response(self.0, json!({ "error": { "code": self.1, "message": self.2 } }));
        if self.0 == StatusCode::METHOD_NOT_ALLOWED {
            // RFC 9110 §15.5.6: a 405 lists the methods that are allowed.
            let allow = if self.2.starts_with("GET") { "GET, HEAD" } else { "POST" };
            response.headers_mut().insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        response
    }
}

const ENDPOINTS: &[&str] = &["publish", "broadcast", "disconnect", "presence", "history", "info"];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishRequest {
    topic: String,
    content: Box<RawValue>,
    key: Option<String>,
    idempotency_key: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BroadcastRequest {
    topics: Vec<String>,
    content: Box<RawValue>,
    key: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DisconnectRequest {
    session: Option<String>,
    user: Option<String>,
    code: Option<u16>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TopicRequest {
    topic: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryRequest {
    topic: String,
    /// Signed, as in the OpenAPI document (int64): larger is refused.
    since: Option<i64>,
    limit: Option<usize>,
}

/// The close code a disconnect may use: 1000, 1001, 1008, 1011, 1013, or an
/// application's 3000-4999 (RFC 6455 §7.4.2).
fn valid_close_code(code: u16) -> bool {
    matches!(code, 1000 | 1001 | 1008 | 1011 | 1013 | 3000..=4999)
}

/// A topic the API may publish to or read: the client rules, and not one
/// of the server's own (`$sys:`, `$room:`).
/// One present session in `/api/presence`: its id, node and (authenticated) user.
fn entry(member: &str, node: &str) -> Value {
    match tether_hub::presence::split_member(member) {
        (session, Some(user)) => json!({ "session": session, "user": user, "node": node }),
        (session, None) => json!({ "session": session, "node": node }),
    }
}

fn check_topic(topic: &str, field: &str) -> Result<(), Failure> {
    if let Err(why) = tether_hub::envelope::check_topic(topic) {
        return Err(Failure::new(StatusCode::BAD_REQUEST, "invalid_topic", format!("{field}: {why}")));
    }
    if tether_hub::system::is_system_topic(topic) || tether_hub::room::is_room(topic) {
        return Err(Failure::new(StatusCode::BAD_REQUEST, "reserved_topic", format!("{field}: $sys: and $room: topics are the server's")));
    }
    Ok(())
}

fn check_key(key: Option<&str>, field: &str) -> Result<(), Failure> {
    match key.map(tether_hub::envelope::check_topic) {
        Some(Err(why)) => Err(Failure::new(StatusCode::BAD_REQUEST, "invalid_request", format!("{field}: {}", why.to_string().replace("topic", field)))),
        _ => Ok(()),
    }
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Failure> {
    serde_json::from_slice(body).map_err(|e| Failure::new(StatusCode::BAD_REQUEST, "invalid_request", format!("request body: {e}")))
}

impl Api {
    /// The API of `hub`; with a Redis broker at `redis`, idempotency keys
    /// and presence are cluster-wide and this node's figures are published
    /// for `/api/info`.
    pub fn new(hub: Arc<Hub>, settings: ApiSettings, redis: Option<&str>) -> anyhow::Result<Arc<Api>> {
        let store = match redis {
            Some(url) => Store::redis(url)?,
            None => Store::memory(),
        };
        let api = Arc::new(Api { hub, settings, store, started: Instant::now(), metrics: ApiMetrics::default() });
        if api.settings.key.is_some() {
            api.hub.start_control();
            if redis.is_some() {
                let weak = Arc::downgrade(&api);
                tokio::spawn(async move {
                    let mut ticker = tokio::time::interval(BEAT);
                    loop {
                        ticker.tick().await;
                        let Some(api) = weak.upgrade() else { return };
                        if let Err(e) = api.store.beat(tether_hub::node_id(), &api.node_info(), BEAT).await {
                            tracing::debug!(error = %e, "could not publish this node's figures for /api/info");
                        }
                    }
                });
            }
        }
        Ok(api)
    }

    /// Answer one request under `/api/`.
    pub async fn handle(&self, auth: &AuthFailures, ip: IpAddr, req: Request) -> Response {
        let path = req.uri().path().to_string();
        let name = path.strip_prefix("/api/").unwrap_or("");
        if name == "openapi.json" {
            if req.method() != Method::GET && req.method() != Method::HEAD {
                return Failure::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "GET /api/openapi.json").into_response();
            }
            return ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response();
        }
        let endpoint = ENDPOINTS.iter().copied().find(|e| *e == name).unwrap_or("other");
        let response = match self.answer(endpoint, auth, ip, req).await {
            Ok(body) => json_response(StatusCode::OK, body),
            Err(failure) => failure.into_response(),
        };
        let mut requests = self.metrics.requests.lock().unwrap_or_else(|p| p.into_inner());
        *requests.entry((endpoint, response.status().as_u16())).or_default() += 1;
        response
    }

    async fn answer(&self, endpoint: &'static str, auth: &AuthFailures, ip: IpAddr, req: Request) -> Result<Value, Failure> {
        let Some(key) = &self.settings.key else {
            return Err(Failure::new(StatusCode::NOT_FOUND, "api_disabled", "the server API is off: start tether serve with --api-key (or TETHER_API_KEY)"));
        };
        if endpoint == "other" {
            return Err(Failure::new(StatusCode::NOT_FOUND, "not_found", format!("no such endpoint; the API has POST /api/{{{}}}", ENDPOINTS.join(","))));
        }
        if req.method() != Method::POST {
            return Err(Failure::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", format!("POST /api/{endpoint}")));
        }
        if auth.throttled(ip) {
            return Err(Failure::new(StatusCode::TOO_MANY_REQUESTS, "throttled", "too many failed authentication attempts from your address, try again in a minute"));
        }
        match req.headers().get("x-api-key").map(|v| v.as_bytes()) {
            None => return Err(Failure::new(StatusCode::UNAUTHORIZED, "unauthorized", "missing X-API-Key header")),
            Some(given) => {
                use subtle::ConstantTimeEq;
                if !bool::from(given.ct_eq(key.as_bytes())) {
                    auth.record(ip);
                    tracing::info!(client = %ip, "refused an API request: wrong X-API-Key");
                    return Err(Failure::new(StatusCode::FORBIDDEN, "forbidden", "wrong X-API-Key"));
                }
            }
        }
        let limit = self.settings.max_body;
        let too_large = || Failure::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", format!("request body over {limit} bytes (--api-max-body)"));
        let declared = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit as u64) {
            return Err(too_large());
        }
        let body = tokio::time::timeout(self.settings.timeout, axum::body::to_bytes(req.into_body(), limit))
            .await
            .map_err(|_| Failure::new(StatusCode::REQUEST_TIMEOUT, "timeout", "request body not received in time"))?
            .map_err(|_| too_large())?;
        match endpoint {
            "publish" => self.publish(parse(&body)?).await,
            "broadcast" => self.broadcast(parse(&body)?).await,
            "disconnect" => {
                // `session` and `user` are strings when given (null is not "not given").
                let v: Value = parse(&body)?;
                if ["session", "user"].iter().any(|f| v.get(f).is_some_and(Value::is_null)) {
                    return Err(Failure::new(StatusCode::BAD_REQUEST, "invalid_request", "session and user are strings when given"));
                }
                self.disconnect(serde_json::from_value(v).map_err(|e| Failure::new(StatusCode::BAD_REQUEST, "invalid_request", format!("request body: {e}")))?)
            }
            "presence" => self.presence(parse(&body)?).await,
            "history" => self.history(parse(&body)?).await,
            _ => {
                // No body (JSON whitespace at most), or `{}`. Not
                // `u8::is_ascii_whitespace`: it takes a form feed, which
                // JSON does not (found by schemathesis).
                if !body.iter().all(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r')) {
                    let v: Value = parse(&body)?;
                    if v.as_object().is_none_or(|o| !o.is_empty()) {
                        return Err(Failure::new(StatusCode::BAD_REQUEST, "invalid_request", "request body: /api/info takes {} (or no body)"));
                    }
                }
                self.info().await
            }
        }
    }

    fn check_content(&self, content: &RawValue) -> Result<(), Failure> {
        let max = self.settings.max_content;
        if content.get().len() > max {
            return Err(Failure::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", format!("content over {max} bytes (--max-message-size)")));
        }
        Ok(())
    }

    fn sender() -> String {
        format!("{}-api", tether_hub::node_id())
    }

    async fn publish(&self, req: PublishRequest) -> Result<Value, Failure> {
        check_topic(&req.topic, "topic")?;
        check_key(req.key.as_deref(), "key")?;
        check_key(req.idempotency_key.as_deref(), "idempotency_key")?;
        self.check_content(&req.content)?;
        let Some(idem) = &req.idempotency_key else {
            let Position { epoch, seq } = self.hub.publish_and_wait(&req.topic, req.content.get(), req.key.as_deref(), &Self::sender(), self.settings.timeout).await?;
            return Ok(json!({ "topic": req.topic, "epoch": &*epoch, "seq": seq, "duplicate": false }));
        };
        let window = self.settings.idempotency_window;
        // Another request with the key in progress: wait for it (a retry
        // that overtook its original), at most the timeout.
        let deadline = tokio::time::Instant::now() + self.settings.timeout;
        loop {
            match self.store.claim(idem, window).await? {
                Claim::New => break,
                Claim::Done(outcome) => {
                    if outcome.topic != req.topic {
                        return Err(Failure::new(StatusCode::CONFLICT, "idempotency_conflict", format!("idempotency_key was used for topic {:?} within the window", outcome.topic)));
                    }
                    self.metrics.replays.fetch_add(1, Ordering::Relaxed);
                    return Ok(json!({ "topic": outcome.topic, "epoch": outcome.epoch, "seq": outcome.seq, "duplicate": true }));
                }
                Claim::Pending if tokio::time::Instant::now() >= deadline => {
                    return Err(Failure::new(StatusCode::CONFLICT, "idempotency_in_progress", "a request with this idempotency_key is still being applied; retry"));
                }
                Claim::Pending => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
        match self.hub.publish_and_wait(&req.topic, req.content.get(), req.key.as_deref(), &Self::sender(), self.settings.timeout).await {
            Ok(Position { epoch, seq }) => {
                let outcome = Outcome { topic: req.topic.clone(), epoch: epoch.to_string(), seq };
                if let Err(e) = self.store.complete(idem, &outcome, window).await {
                    // Published, but a retry could publish again: say so in the log.
                    tracing::warn!(error = %e, "published, but could not record the idempotency key");
                }
                Ok(json!({ "topic": req.topic, "epoch": &*epoch, "seq": seq, "duplicate": false }))
            }
            Err(e) => {
                // A timeout may still be published later: keep the claim
                // (it expires) rather than risk a second copy.
                if !matches!(e, HubError::Timeout(_)) {
                    self.store.release(idem).await;
                }
                Err(e.into())
            }
        }
    }

    async fn broadcast(&self, req: BroadcastRequest) -> Result<Value, Failure> {
        if req.topics.is_empty() || req.topics.len() > MAX_BROADCAST_TOPICS {
            return Err(Failure::new(StatusCode::BAD_REQUEST, "invalid_request", format!("topics: 1 to {MAX_BROADCAST_TOPICS} topics")));
        }
        for topic in &req.topics {
            check_topic(topic, "topics")?;
        }
        check_key(req.key.as_deref(), "key")?;
        self.check_content(&req.content)?;
        let sender = Self::sender();
        let publishes = req.topics.iter().map(|topic| self.hub.publish_and_wait(topic, req.content.get(), req.key.as_deref(), &sender, self.settings.timeout));
        let results = futures_util::future::join_all(publishes).await;
        let results: Vec<Value> = req
            .topics
            .iter()
            .zip(results)
            .map(|(topic, r)| match r {
                Ok(Position { epoch, seq }) => json!({ "topic": topic, "epoch": &*epoch, "seq": seq }),
                Err(e) => {
                    let Failure(_, code, message) = e.into();
                    json!({ "topic": topic, "error": { "code": code, "message": message } })
                }
            })
            .collect();
        Ok(json!({ "results": results }))
    }

    fn disconnect(&self, req: DisconnectRequest) -> Result<Value, Failure> {
        let code = req.code.unwrap_or(4000);
        if !valid_close_code(code) {
            return Err(Failure::new(StatusCode::BAD_REQUEST, "invalid_request", "code: 1000, 1001, 1008, 1011, 1013 or 3000-4999"));
        }
        let unavailable = |e: tether_hub::BrokerError| Failure::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e.to_string());
        match (req.session, req.user) {
            (Some(session), None) => {
                if session.is_empty() || session.len() > 64 || session.chars().any(char::is_control) {
                    return Err(Failure::new(StatusCode::BAD_REQUEST, "invalid_request", "session: a session id as in the welcome (1-64 bytes)"));
                }
                let local = self.hub.disconnect(&session, code).map_err(unavailable)?;
                Ok(json!({ "session": session, "code": code, "local": local }))
            }
            (None, Some(user)) => {
                if user.is_empty() || user.len() > 200 || user.chars().any(char::is_control) {
                    return Err(Failure::new(StatusCode::BAD_REQUEST, "invalid_request", "user: the token's sub (1-200 bytes)"));
                }
                let local = self.hub.disconnect_user(&user, code).map_err(unavailable)?;
                Ok(json!({ "user": user, "code": code, "local_sessions": local }))
            }
            _ => Err(Failure::new(StatusCode::BAD_REQUEST, "invalid_request", "give exactly one of session and user")),
        }
    }

    async fn presence(&self, req: TopicRequest) -> Result<Value, Failure> {
        if let Err(why) = tether_hub::envelope::check_topic(&req.topic) {
            return Err(Failure::new(StatusCode::BAD_REQUEST, "invalid_topic", format!("topic: {why}")));
        }
        let sessions: Vec<Value> = match self.store.presence(&req.topic).await? {
            Some(who) => who.into_iter().map(|(member, node)| entry(&member, &node)).collect(),
            None => {
                let mut local = self.hub.local_sessions(&req.topic);
                local.sort();
                local.into_iter().map(|member| entry(&member, tether_hub::node_id())).collect()
            }
        };
        Ok(json!({ "topic": req.topic, "count": sessions.len(), "sessions": sessions }))
    }

    async fn history(&self, req: HistoryRequest) -> Result<Value, Failure> {
        check_topic(&req.topic, "topic")?;
        let limit = req.limit.unwrap_or(100);
        if limit == 0 || limit > MAX_HISTORY {
            return Err(Failure::new(StatusCode::BAD_REQUEST, "invalid_request", format!("limit: 1 to {MAX_HISTORY}")));
        }
        let since = u64::try_from(req.since.unwrap_or(0)).map_err(|_| Failure::new(StatusCode::BAD_REQUEST, "invalid_request", "since: a sequence number, 0 or more"))?;
        let history = self.hub.read_history(&req.topic, since, self.settings.timeout).await?;
        let skip = history.messages.len().saturating_sub(limit);
        let messages: Vec<Value> = history.messages[skip..]
            .iter()
            .filter_map(|m| {
                let content: Value = match &m.body {
                    tether_hub::Body::Json(raw) => serde_json::from_str(raw.get()).ok()?,
                    tether_hub::Body::Text(t) => Value::String(t.to_string()),
                    tether_hub::Body::Binary(_) => return None,
                };
                let mut v = json!({ "seq": m.seq, "sender": &*m.sender, "ts": m.timestamp_ms, "content": content });
                if let Some(k) = &m.key {
                    v["key"] = Value::String(k.to_string());
                }
                Some(v)
            })
            .collect();
        Ok(json!({ "topic": req.topic, "epoch": &*history.epoch, "last_seq": history.last_seq, "messages": messages }))
    }

    fn node_info(&self) -> Value {
        json!({
            "node": tether_hub::node_id(),
            "connections": self.hub.connection_count(),
            "topics": self.hub.topic_count(),
            "uptime_seconds": self.started.elapsed().as_secs(),
        })
    }

    async fn info(&self) -> Result<Value, Failure> {
        let here = self.node_info();
        let mut nodes = self.store.nodes().await?.unwrap_or_else(|| vec![here.clone()]);
        // This node's own figures are live, the others' up to 5 s old.
        for node in nodes.iter_mut().filter(|n| n["node"] == here["node"]) {
            *node = here.clone();
        }
        let sum = |field: &str| nodes.iter().filter_map(|n| n[field].as_u64()).sum::<u64>();
        Ok(json!({
            "node": tether_hub::node_id(),
            "broker": self.hub.broker().name(),
            "connections": sum("connections"),
            "topics": sum("topics"),
            "nodes": nodes,
        }))
    }

    /// The API's lines of `/metrics`.
    pub fn render_metrics(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let name = "tether_api_requests_total";
        let _ = writeln!(out, "# HELP {name} Server API requests, by endpoint and HTTP status.\n# TYPE {name} counter");
        for ((endpoint, status), n) in self.metrics.requests.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            let _ = writeln!(out, "{name}{{endpoint=\"{endpoint}\",status=\"{status}\"}} {n}");
        }
        let name = "tether_api_idempotent_replays_total";
        let _ = writeln!(out, "# HELP {name} Publishes answered from an idempotency key instead of published again.\n# TYPE {name} counter\n{name} {}", self.metrics.replays.load(Ordering::Relaxed));
        out
    }
}
