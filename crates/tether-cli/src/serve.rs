//! `tether serve`: HTTP and WebSocket on one port. `/` is the chat page,
//! `/tether.js` the browser client (`/tether.mjs`, its ES module view), `/health` and `/metrics` for operators;
//! a WebSocket upgrade on any other path joins the room named by the path.

use crate::settings::{ServeArgs, Settings};
use crate::front::{self, FirstRequest, Prefixed};
use crate::shutdown;
use anyhow::Context;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use crate::admission::{self, AuthFailures, IpGuard, PerIp};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use std::time::Instant;
use tether::axum::WebSocketUpgrade;
use tether_hub::{ConnInfo, Identity, Hub, HubConfig, MemoryBroker, Transport, TransportGuard};

#[path = "serve_h2.rs"]
mod h2;
use tokio::net::TcpListener;

// Through symlinks inside the crate (crates/tether-cli/web/ -> web/), so
// the packaged crate carries the files.
const INDEX_HTML: &str = include_str!("../web/index.html");
const TETHER_JS: &str = include_str!("../web/tether.js");
/// The ES module view of tether.js (it imports `./tether.js`).
const TETHER_MJS: &str = include_str!("../web/tether.mjs");

#[path = "serve_http.rs"]
mod http;

#[path = "serve_hooks.rs"]
mod connect_hook;

struct App {
    hub: Arc<Hub>,
    settings: Settings,
    started: Instant,
    /// `--max-connections` WebSocket slots, taken at accept: connections
    /// still in their handshake count too.
    ws_slots: Arc<Semaphore>,
    /// As many slots again for plain HTTP connections (pages, /health,
    /// /metrics), so a server full of WebSockets still answers operators.
    http_slots: Arc<Semaphore>,
    /// A few slots for connections accepted while the WebSocket slots are
    /// full, just long enough to read their first request and tell a plain
    /// HTTP request (served) from an upgrade (refused with 503).
    spare_slots: Arc<Semaphore>,
    per_ip: Arc<PerIp>,
    /// The event loops of `--driver loop`.
    loops: Option<Arc<Loops>>,
    auth_failures: AuthFailures,
    /// The y-websocket endpoint, `/yjs/<document>`.
    yjs: Arc<tether_yjs::Yjs>,
    /// The server API (`/api/*`; off without `--api-key`).
    api: Arc<crate::api::Api>,
    /// Lifecycle webhooks' counters, when on.
    webhooks: Option<Arc<crate::webhook::WebhookMetrics>>,
    /// Draining: new WebSockets refused, `/health` 503 (src/admin.rs).
    drain: crate::admin::DrainState,
    /// JWT connection tokens (src/auth.rs), if configured.
    jwt: Option<Arc<tether_hub::jwt::JwtVerifier>>,
    /// The sessions of the HTTP fallback transport (SSE + POST).
    http: Arc<tether_hub::http::HttpSessions>,
    /// With `--broker redis://`: HTTP-transport requests for sessions of
    /// other nodes go there (src/relay.rs).
    relay: Option<Arc<crate::relay::Relay>>,
    /// The backend's hooks (src/hooks.rs), if configured.
    hooks: Option<Arc<crate::hooks::HttpHooks>>,
}

/// What a connection holds while it is open: its slot and, unless its
/// address is only known from a proxy header, its per-address count.
pub(crate) struct Slot {
    permit: OwnedSemaphorePermit,
    ip: Option<IpGuard>,
    /// Set once the connection is a WebSocket: counts it by transport.
    transport: Option<TransportGuard>,
}

/// Largest request head (request line and headers) accepted; larger get 431.
const MAX_REQUEST_HEAD: usize = 16 * 1024;

/// Connections accepted beyond the WebSocket slots to read their first request.
const SPARE_SLOTS: usize = 64;

/// Per-connection context handed to the HTTP routes (for an upgrade that
/// arrives as a later request of a keep-alive connection).
#[derive(Clone)]
struct ConnCtx {
    peer: SocketAddr,
    slot: Arc<Mutex<Option<Slot>>>,
    /// WebSockets open on this connection (HTTP/2 streams): an HTTP/2
    /// connection lives past `--http-timeout` while this is not zero.
    websockets: Arc<std::sync::atomic::AtomicUsize>,
}

pub fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    run_with(args, None)
}

/// Something to start on the hub once it exists (an in-process publisher).
pub type OnHub = Box<dyn FnOnce(Arc<Hub>) + Send>;

/// [`run`], calling `on_hub` with the hub before accepting connections.
pub fn run_with(args: ServeArgs, on_hub: Option<OnHub>) -> anyhow::Result<ExitCode> {
    let driver = args.driver.clone();
    let settings = Settings::resolve(args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(serve(settings, driver, on_hub))
}

/// The event loops that run plain-TCP WebSocket connections (`--driver loop`).
type Loops = crate::driver::Driver<crate::serve_loop::HubService<Slot>>;

async fn serve(settings: Settings, driver: crate::driver::DriverArgs, on_hub: Option<OnHub>) -> anyhow::Result<ExitCode> {
    let broker: Arc<dyn tether_hub::Broker> = match settings.broker.as_str() {
        "memory" => Arc::new(MemoryBroker::with_history(settings.history.clone())),
        url if url.starts_with("redis://") || url.starts_with("redis-cluster://") => Arc::new(tether_hub::RedisBroker::new(url, settings.history.clone())?),
        other => anyhow::bail!("unknown broker {other:?} (supported: memory, redis://HOST:PORT, redis-cluster://HOST:PORT[,HOST:PORT...])"),
    };
    let tls = match &settings.tls {
        None => None,
        Some((cert, key)) => {
            let cert_pem = std::fs::read(cert).with_context(|| format!("cannot read --tls-cert {}", cert.display()))?;
            let key_pem = std::fs::read(key).with_context(|| format!("cannot read --tls-key {}", key.display()))?;
            // HTTP/2 (with WebSockets on its streams, RFC 8441) or HTTP/1.1 by ALPN.
            Some(tether::tls::acceptor_h2(&cert_pem, &key_pem).context("invalid TLS certificate or key")?)
        }
    };
    let hub_config = HubConfig {
        heartbeat_interval: settings.heartbeat_interval,
        queue_max_messages: settings.queue_max_messages,
        queue_max_bytes: settings.queue_max_bytes,
        slow_consumer: settings.slow_consumer,
        write_stall_timeout: settings.write_stall_timeout,
        message_rate: settings.message_rate,
        subscribe_rate: settings.subscribe_rate,
        conflate_prefixes: settings.live.conflate_prefixes.clone(),
        room_tick: settings.live.room_tick(),
        auth_timeout: settings.auth.auth_timeout,
        token_expiry_warning: settings.auth.expiry_warning,
        token_expiry_grace: settings.auth.expiry_grace,
        ..HubConfig::default()
    };
    let hub = Hub::new(hub_config, broker);
    if !settings.namespaces.is_empty() {
        hub.set_namespaces(tether_hub::namespace::Namespaces::new(settings.namespaces.clone()));
    }
    let jwt = settings.auth.verifier()?;
    if let Some(verifier) = &jwt {
        hub.set_authenticator(verifier.clone());
        tracing::info!(?verifier, "JWT connection tokens on");
    }
    // The API's idempotency keys need one Redis; on a cluster they stay per node.
    let redis_url = settings.broker.starts_with("redis://").then_some(settings.broker.as_str());
    if settings.broker.starts_with("redis-cluster://") {
        tracing::warn!("with redis-cluster:// these stay per node (shared only through redis://): server API idempotency keys, Yjs documents, HTTP fallback sessions");
    }
    let api = crate::api::Api::new(hub.clone(), settings.api.clone(), redis_url)?;
    let webhooks = settings.webhook.clone().map(|w| crate::webhook::start(&hub, w));
    let hooks = settings.hooks.clone().map(crate::hooks::HttpHooks::new);
    if let Some(h) = &hooks {
        hub.set_hooks(h.clone());
        tracing::info!(url = ?settings.hooks.as_ref().map(|h| &h.url), "backend hooks on");
    }
    let loops = match driver.driver {
        crate::driver::DriverKind::Loop => {
            let service = Arc::new(crate::serve_loop::HubService::new(hub.clone()));
            Some(Arc::new(Loops::start(service, driver.threads(), socket_config(&settings).write_buffer_high_water)?))
        }
        crate::driver::DriverKind::Tokio => None,
    };
    if let Some(interval) = settings.live.stats_interval() {
        hub.start_stats(interval);
    }
    if let Some(start) = on_hub {
        start(hub.clone());
    }
    let listener = TcpListener::bind(settings.listen).await.with_context(|| format!("cannot listen on {}", settings.listen))?;
    let addr = listener.local_addr()?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    println!("listening on {scheme}://{addr}");
    tracing::info!(%addr, tls = tls.is_some(), broker = hub.broker().name(), heartbeat = ?settings.heartbeat_interval, "tether serve ready");

    let yjs = if let Some(url) = redis_url {
        // Several nodes: documents kept in Redis and changes relayed
        // through it (tether_yjs::RedisShare), not in --yjs-dir.
        let share = tether_yjs::RedisShare::open(url).context("Yjs documents on Redis")?;
        let yjs = tether_yjs::Yjs::with_relay(settings.yjs.config.clone(), Some(share.clone()), Some(share.clone()));
        share.listen(&yjs);
        yjs
    } else {
        let yjs_store: Option<Arc<dyn tether_yjs::Store>> = match &settings.yjs.dir {
            Some(dir) => Some(Arc::new(tether_yjs::DirStore::open(dir).with_context(|| format!("cannot use --yjs-dir {}", dir.display()))?)),
            None => None,
        };
        tether_yjs::Yjs::new(settings.yjs.config.clone(), yjs_store)
    };
    let http = tether_hub::http::HttpSessions::new(hub.clone(), tether_hub::http::HttpConfig::default());
    let app = Arc::new(App {
        hub: hub.clone(),
        settings: settings.clone(),
        started: Instant::now(),
        ws_slots: Arc::new(Semaphore::new(settings.max_connections)),
        http_slots: Arc::new(Semaphore::new(settings.max_connections)),
        spare_slots: Arc::new(Semaphore::new(SPARE_SLOTS)),
        per_ip: PerIp::new(settings.max_connections_per_ip),
        auth_failures: AuthFailures::new(settings.max_auth_failures),
        loops,
        yjs: yjs.clone(),
        api,
        webhooks,
        drain: crate::admin::DrainState::default(),
        jwt,
        relay: redis_url.map(|url| crate::relay::Relay::start(url, http.clone(), settings.http_timeout)).transpose()?,
        http,
        hooks,
    });
    // One handler: a WebSocket upgrade on any path (including "/") joins the
    // room named by the path; everything else is a plain HTTP route.
    let router = Router::new().fallback(dispatch).with_state(app.clone());

    let signal = shutdown::signal();
    tokio::pin!(signal);
    // SIGTERM with a drain window: keep answering (`/health` 503, upgrades
    // 503) while the clients are closed gradually; stop when they are.
    let mut signalled = false;
    let (drained_tx, mut drained) = tokio::sync::watch::channel(false);
    loop {
        tokio::select! {
            (tcp, peer) = tether_hub::accept(&listener) => {
                let refused = &hub.metrics().refused;
                let Ok(permit) = app.ws_slots.clone().try_acquire_owned().or_else(|_| app.spare_slots.clone().try_acquire_owned()) else {
                    tether_hub::Metrics::add(&refused.max_connections, 1);
                    tracing::warn!(%peer, max = settings.max_connections, "refused a connection: connection limit reached");
                    admission::refuse_early(tcp, peer, 503, "too many connections, try again later", tls.is_some());
                    continue;
                };
                // Behind a trusted proxy the client's address comes with the
                // request: it is counted at the upgrade instead.
                let ip = if app.behind_proxy(peer) {
                    None
                } else if let Some(guard) = app.per_ip.acquire(admission::address_key(peer.ip())) {
                    Some(guard)
                } else {
                    tether_hub::Metrics::add(&refused.per_ip, 1);
                    tracing::info!(%peer, max = settings.max_connections_per_ip, "refused a connection: too many from this address");
                    admission::refuse_early(tcp, peer, 429, "too many connections from your address", tls.is_some());
                    continue;
                };
                let slot = Slot { permit, ip, transport: None };
                let router = router.clone();
                let tls = tls.clone();
                let timeout = settings.handshake_timeout;
                let metrics = hub.metrics().clone();
                let app = app.clone();
                tokio::spawn(async move {
                    match tls {
                        None => serve_stream(tcp, app, router, peer, slot).await,
                        // Boxed: a TLS session is several KiB, and the plain
                        // path should not pay for it in every connection task.
                        Some(acceptor) => Box::pin(async move {
                            match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
                                Ok(Ok(stream)) if stream.get_ref().1.alpn_protocol() == Some(b"h2") => h2::serve_h2(stream, app, router, peer, slot).await,
                                Ok(Ok(stream)) => serve_stream(stream, app, router, peer, slot).await,
                                Ok(Err(e)) => {
                                    tether_hub::Metrics::add(&metrics.handshake_failures, 1);
                                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                                }
                                Err(_) => {
                                    tether_hub::Metrics::add(&metrics.handshake_failures, 1);
                                    tracing::debug!(%peer, "TLS handshake timed out");
                                }
                            }
                        })
                        .await,
                    }
                });
            }
            _ = &mut signal, if !signalled => {
                signalled = true;
                if settings.drain_window.is_zero() {
                    break;
                }
                let task = app.drain.drain(&hub, settings.drain_window);
                let done = drained_tx.clone();
                tokio::spawn(async move {
                    let _ = task.await;
                    let _ = done.send(true);
                });
            }
            _ = drained.changed() => break,
        }
    }
    drop(listener);
    let open = hub.connection_count();
    tracing::info!(open, "shutting down: closing the WebSocket connections left with 1001");
    let deadline = tokio::time::Instant::now() + settings.shutdown_timeout;
    let (left, yjs_left) = tokio::join!(hub.close_all(settings.shutdown_timeout), yjs.close_all(settings.shutdown_timeout));
    let left = left + yjs_left as usize;
    if let Some(loops) = &app.loops {
        // Sessions are gone; let the loops finish their close handshakes.
        loops.wait_closed(deadline).await;
    }
    if left > 0 {
        tracing::warn!(left, "connections still open at the shutdown deadline");
    } else {
        tracing::info!("all connections closed");
    }
    Ok(ExitCode::SUCCESS)
}

/// One accepted connection (TCP or TLS): WebSocket upgrades take the lean
/// path; other requests go to hyper.
///
/// A plain `fn` returning `async move` (not an `async fn`): arguments of an
/// `async fn` are stored twice in its future (rust-lang/rust#62958), and this
/// future lives as long as the client.
fn serve_stream<S>(mut stream: S, app: Arc<App>, router: Router, peer: SocketAddr, slot: Slot) -> impl std::future::Future<Output = ()> + Send
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + crate::serve_loop::MaybeTcp + Unpin + Send + 'static,
{
    async move {
    let timeout = app.settings.handshake_timeout;
    let (head, kind) = match tokio::time::timeout(timeout, front::read_first_request(&mut stream, MAX_REQUEST_HEAD)).await {
        Ok(Ok(first)) => first,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "connection failed before a request arrived");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "no request within the handshake timeout");
            return;
        }
    };
    let mut stream = Prefixed::new(head, stream);
    match kind {
        FirstRequest::TooLarge => {
            use tokio::io::AsyncWriteExt;
            tracing::debug!(%peer, "refused a request head over 16 KiB");
            let body = "request head too large (at most 16 KiB)\n";
            let response = format!("HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
            let _ = tokio::time::timeout(timeout, async {
                stream.write_all(response.as_bytes()).await?;
                stream.shutdown().await
            })
            .await;
        }
        FirstRequest::Upgrade => {
            let Some(slot) = app.take_slot(slot, &app.ws_slots) else {
                return app.refuse_busy(stream, peer).await;
            };
            lean_websocket(stream, app, peer, slot).await;
        }
        FirstRequest::Http => {
            let Some(slot) = app.take_slot(slot, &app.http_slots) else {
                return app.refuse_busy(stream, peer).await;
            };
            let lifetime = app.settings.http_timeout;
            let http = Box::pin(async move {
                let ctx = ConnCtx { peer, slot: Arc::new(Mutex::new(Some(slot))), websockets: Default::default() };
                let service = hyper_util::service::TowerToHyperService::new(router.layer(axum::Extension(ctx)));
                let mut http = hyper::server::conn::http1::Builder::new();
                http.timer(TokioTimer::new()).header_read_timeout(timeout).max_buf_size(MAX_REQUEST_HEAD);
                http.serve_connection(TokioIo::new(stream), service).with_upgrades().await
            });
            // Bounded: a client that stops reading a response (or idles on
            // keep-alive) cannot hold the connection and its buffers.
            match tokio::time::timeout(lifetime, http).await {
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "HTTP connection ended with an error"),
                Err(_) => tracing::debug!(%peer, "HTTP connection closed at --http-timeout"),
                Ok(Ok(())) => {}
            }
        }
    }
    }
}

/// The WebSocket settings for client connections.
fn socket_config(s: &Settings) -> tether::Config {
    tether::Config {
        max_message_size: s.max_message_size,
        max_frame_size: s.max_message_size,
        handshake_timeout: s.handshake_timeout,
        deflate: s.deflate.clone(),
        ..tether::Config::default()
    }
}

/// What admission looks at in an upgrade request.
struct UpgradeRequest<'a> {
    peer: SocketAddr,
    path: &'a str,
    query: Option<&'a str>,
    origin: Option<&'a str>,
    authorization: Option<&'a str>,
    /// The value of `--client-ip-header`, if configured and present.
    client_ip: Option<&'a str>,
    /// It offers the `tether.v1` subprotocol (and may send its token in
    /// its first message).
    json: bool,
}

impl App {
    /// Keep `slot` if its permit comes from `pool`, else trade it for one of
    /// `pool`'s (`None` if `pool` is full).
    fn take_slot(&self, slot: Slot, pool: &Arc<Semaphore>) -> Option<Slot> {
        if Arc::ptr_eq(slot.permit.semaphore(), pool) {
            return Some(slot);
        }
        let permit = pool.clone().try_acquire_owned().ok()?;
        Some(Slot { permit, ip: slot.ip, transport: slot.transport })
    }

    /// Answer a request that found no slot: 503 with Retry-After.
    async fn refuse_busy<S: tokio::io::AsyncWrite + Unpin>(&self, mut stream: S, peer: SocketAddr) {
        use tokio::io::AsyncWriteExt;
        tether_hub::Metrics::add(&self.hub.metrics().refused.max_connections, 1);
        tether_hub::Metrics::add(&self.hub.metrics().handshake_failures, 1);
        tracing::warn!(%peer, max = self.settings.max_connections, "refused a connection: connection limit reached");
        let body = "too many connections, try again later\n";
        let response = format!("HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\nRetry-After: 5\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
            stream.write_all(response.as_bytes()).await?;
            stream.shutdown().await
        })
        .await;
    }

    /// Whether `peer` is a trusted proxy whose client-address header counts.
    fn behind_proxy(&self, peer: SocketAddr) -> bool {
        self.settings.client_ip_header.is_some() && self.settings.trusted_proxies.contains(&peer.ip())
    }

    /// Room name, Origin allowlist, failed-token throttling, bearer token
    /// (header or `?token=`), and, behind a trusted proxy, connections per
    /// client address. A refusal is counted before it is answered; the
    /// returned guard (if any) is held by the connection.
    fn admit(&self, req: &UpgradeRequest<'_>) -> Result<(Option<IpGuard>, Identity), (StatusCode, &'static str)> {
        let refused = self.check_admission(req);
        if refused.is_err() {
            tether_hub::Metrics::add(&self.hub.metrics().handshake_failures, 1);
        }
        refused
    }

    fn check_admission(&self, req: &UpgradeRequest<'_>) -> Result<(Option<IpGuard>, Identity), (StatusCode, &'static str)> {
        let s = &self.settings;
        let refused = &self.hub.metrics().refused;
        let count = |c: &std::sync::atomic::AtomicU64| tether_hub::Metrics::add(c, 1);
        if self.drain.is_draining() {
            count(&refused.max_connections);
            return Err((StatusCode::SERVICE_UNAVAILABLE, "this node is draining: connect to another one"));
        }
        // The path names the room: it obeys the topic rules.
        if let Some(name) = req.path.strip_prefix(tether_yjs::PATH_PREFIX) {
            if let Err(why) = tether_yjs::check_name(name) {
                count(&refused.bad_room);
                return Err((StatusCode::BAD_REQUEST, why));
            }
        } else if let Err(why) = tether_hub::envelope::check_topic(req.path) {
            count(&refused.bad_room);
            return Err(match why {
                tether_hub::envelope::BadTopic::TooLong => (StatusCode::URI_TOO_LONG, "room name (the URL path) is longer than 200 bytes"),
                _ => (StatusCode::BAD_REQUEST, "invalid room name (the URL path)"),
            });
        }
        if !s.allowed_origins.is_empty() && !s.allowed_origins.iter().any(|o| Some(o.as_str()) == req.origin) {
            count(&refused.origin);
            tracing::info!(origin = ?req.origin.unwrap_or(""), "refused upgrade: origin not allowed");
            return Err((StatusCode::FORBIDDEN, "origin not allowed"));
        }
        let ip = admission::client_ip(req.peer.ip(), req.client_ip, self.behind_proxy(req.peer), &s.trusted_proxies);
        // The system rooms (/$sys...) may read $sys: topics: with a metrics
        // token, that token admits them (and nothing else does).
        let system = tether_hub::system::may_subscribe_system(req.path);
        let token = if system { s.metrics_token.as_ref().or(s.token.as_ref()) } else { s.token.as_ref() };
        let jwt = if system { None } else { self.jwt.as_deref() };
        let mut identity = Identity::Anonymous;
        if token.is_some() || jwt.is_some() {
            if self.auth_failures.throttled(ip) {
                count(&refused.auth_throttled);
                return Err((StatusCode::TOO_MANY_REQUESTS, "too many failed authentication attempts from your address, try again in a minute"));
            }
            let metrics = self.hub.metrics();
            // The shared token keeps working beside JWTs: it admits an
            // anonymous connection (allowed everything).
            let shared = token.is_some_and(|t| admission::has_token(t, req.authorization, req.query));
            match (shared, jwt) {
                (true, _) => metrics.count_auth("allowed", "shared_token"),
                (false, None) => {
                    count(&refused.auth);
                    metrics.count_auth("refused", "shared_token");
                    self.auth_failures.record(ip);
                    tracing::info!(client = %ip, "refused upgrade: missing or wrong bearer token");
                    return Err((StatusCode::UNAUTHORIZED, "missing or wrong bearer token"));
                }
                (false, Some(verifier)) => match crate::auth::identify(verifier, crate::auth::presented_token(req.authorization, req.query), req.json) {
                    Ok(found) => {
                        let document = req.path.strip_prefix(tether_yjs::PATH_PREFIX);
                        if let Identity::Granted(grants) = &found {
                            // A room (URL path) other than "/" must be
                            // allowed; a Yjs document needs the subscribe
                            // grant `yjs:NAME` (writing needs publish, see `yjs_access`).
                            let allowed = match document {
                                Some(name) => grants.may_subscribe(&format!("yjs:{name}")),
                                None => req.path == "/" || grants.may_subscribe(req.path),
                            };
                            if !allowed {
                                metrics.count_auth("refused", "room");
                                tracing::info!(client = %ip, user = %grants.user, room = ?req.path, "refused upgrade: the token does not allow this room");
                                return Err((StatusCode::FORBIDDEN, match document {
                                    Some(_) => "the token does not allow this Yjs document (subscribe grant yjs:NAME)",
                                    None => "the token does not allow this room (URL path)",
                                }));
                            }
                            metrics.count_auth("allowed", "jwt");
                            tracing::debug!(client = %ip, user = %grants.user, "admitted with a JWT");
                        } else if document.is_some() {
                            // y-websocket cannot send a tether.v1 auth message.
                            count(&refused.auth);
                            metrics.count_auth("refused", "missing_token");
                            self.auth_failures.record(ip);
                            return Err((StatusCode::UNAUTHORIZED, "a Yjs document needs a token at the handshake (?token= or Authorization: Bearer)"));
                        } else {
                            metrics.count_auth("deferred", "auth_message");
                        }
                        identity = found;
                    }
                    Err(e) => {
                        count(&refused.auth);
                        metrics.count_auth("refused", e.code);
                        self.auth_failures.record(ip);
                        tracing::info!(client = %ip, reason = e.code, "refused upgrade: {}", e.message);
                        return Err((StatusCode::UNAUTHORIZED, crate::auth::refusal_message(e.code)));
                    }
                },
            }
        }
        if !self.behind_proxy(req.peer) {
            return Ok((None, identity));
        }
        match self.per_ip.acquire(ip) {
            Some(guard) => Ok((Some(guard), identity)),
            None => {
                count(&refused.per_ip);
                tracing::info!(client = %ip, max = s.max_connections_per_ip, "refused upgrade: too many connections from this address");
                Err((StatusCode::TOO_MANY_REQUESTS, "too many connections from your address"))
            }
        }
    }
}

/// What a connection to Yjs document `name` may do, from its final
/// identity (a JWT's, or the connect hook's): with grants, reading needs
/// `subscribe` of `yjs:NAME` (else 403) and editing `publish` (else
/// read-only); an identity still waiting for an `auth` message is refused
/// (401: y-websocket cannot send one).
fn yjs_access(identity: &Identity, name: &str) -> Result<tether_yjs::Access, (StatusCode, &'static str)> {
    let topic = format!("yjs:{name}");
    match identity {
        Identity::Anonymous => Ok(tether_yjs::Access::ReadWrite),
        Identity::AwaitingAuth => Err((StatusCode::UNAUTHORIZED, "a Yjs document needs a token at the handshake (?token= or Authorization: Bearer)")),
        Identity::Granted(grants) if !grants.may_subscribe(&topic) => Err((StatusCode::FORBIDDEN, "the token does not allow this Yjs document (subscribe grant yjs:NAME)")),
        Identity::Granted(grants) if grants.may_publish(&topic) => Ok(tether_yjs::Access::ReadWrite),
        Identity::Granted(_) => Ok(tether_yjs::Access::ReadOnly),
    }
}

/// The lean WebSocket path: handshake straight on the stream.
fn lean_websocket<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + crate::serve_loop::MaybeTcp + Unpin + Send + 'static>(stream: Prefixed<S>, app: Arc<App>, peer: SocketAddr, mut slot: Slot) -> impl std::future::Future<Output = ()> + Send {
    async move {
    let mut room = String::new();
    // Who the client is, as the callback found it: its session is opened
    // before the 101 is written (on the event loop, which writes the 101
    // itself, or here on the tokio driver): by the time the client can
    // send (or a peer can count on it being there), it is in its room.
    let mut session = None;
    let mut access = tether_yjs::Access::ReadWrite;
    // Scoped so the config and the handshake state are gone before the
    // connection runs: this task lives as long as the client stays.
    let accepted = {
        let config = socket_config(&app.settings);
        let header = app.settings.client_ip_header.clone();
        let session = &mut session;
        let access = &mut access;
        let room = &mut room;
        let slot = &mut slot;
        let hook_app = app.clone();
        Box::pin(tether::accept_deferred_async(stream, &config, |req| {
            let upgrade = UpgradeRequest {
                peer,
                path: req.path(),
                query: req.query(),
                origin: req.origin(),
                authorization: req.header_str("authorization"),
                client_ip: header.as_deref().and_then(|h| req.header_str(h)),
                json: req.protocols().contains(&tether_hub::PROTOCOL_V1),
            };
            let admitted = app.admit(&upgrade).map_err(|(status, msg)| tether::Reject::new(status.as_u16(), msg));
            let protocol = req.protocols().contains(&tether_hub::PROTOCOL_V1).then(|| tether_hub::PROTOCOL_V1.to_string());
            let path = req.path().to_string();
            let json = upgrade.json;
            let ask = admitted.as_ref().ok().and_then(|(_, found)| hook_app.connect_request(&upgrade, req.header_str("cookie"), found.clone()));
            async move {
                let (guard, found) = admitted?;
                let found = match ask {
                    Some(ask) => hook_app.connect_hook(ask, &path).await.map_err(|(status, msg)| tether::Reject::new(status.as_u16(), msg))?,
                    None => found,
                };
                if let Some(guard) = guard {
                    slot.ip = Some(guard);
                }
                match path.strip_prefix(tether_yjs::PATH_PREFIX) {
                    Some(name) => *access = yjs_access(&found, name).map_err(|(status, msg)| tether::Reject::new(status.as_u16(), msg))?,
                    None => *session = Some((json, found)),
                }
                *room = path;
                Ok(tether::Accept { protocol, headers: Vec::new() })
            }
        }))
        .await
    };
    match accepted {
        Ok(accepted) if room.starts_with(tether_yjs::PATH_PREFIX) => {
            slot.transport = Some(TransportGuard::new(app.hub.metrics(), Transport::WebSocket));
            let ws = match accepted.finish().await {
                Ok(ws) => ws,
                Err(e) => return handshake_failed(&app, e),
            };
            let name = &room[tether_yjs::PATH_PREFIX.len()..];
            app.yjs.run_connection_with(ws, name, access).await;
            drop(slot);
        }
        Ok(accepted) => {
            let Some((json, identity)) = session else { return };
            slot.transport = Some(TransportGuard::new(app.hub.metrics(), Transport::WebSocket));
            let info = ConnInfo::with_identity(room, identity);
            let (accepted, info, slot) = match &app.loops {
                // The loop opens the session and writes the 101 after it.
                Some(loops) => match crate::serve_loop::hand_off(&app.hub, loops, accepted, info, slot) {
                    Ok(()) => return,
                    Err(back) => back,
                },
                None => (accepted, info, slot),
            };
            let session = app.hub.open_session(json, info);
            match accepted.finish().await {
                Ok(ws) => app.hub.run_session(ws, session).await,
                Err(e) => {
                    // The 101 could not be written: the session opened for it ends.
                    app.hub.end_session(session, tether_hub::End::Closed);
                    handshake_failed(&app, e);
                }
            }
            drop(slot);
        }
        Err(tether::Error::Rejected { status }) => tracing::debug!(status, "WebSocket upgrade refused"),
        Err(e) => handshake_failed(&app, e),
    }
    }
}

fn handshake_failed(app: &App, e: tether::Error) {
    tether_hub::Metrics::add(&app.hub.metrics().handshake_failures, 1);
    tracing::debug!(error = %e, "WebSocket handshake failed");
}

async fn dispatch(State(app): State<Arc<App>>, axum::Extension(ctx): axum::Extension<ConnCtx>, req: Request) -> Response {
    if tether::upgrade::is_upgrade_request(&req) {
        return websocket(app, ctx, req).await;
    }
    if req.uri().path().starts_with("/api/") {
        let client_ip = app.settings.client_ip_header.as_deref().and_then(|h| req.headers().get(h)).and_then(|v| v.to_str().ok());
        let ip = admission::client_ip(ctx.peer.ip(), client_ip, app.behind_proxy(ctx.peer), &app.settings.trusted_proxies);
        return app.api.handle(&app.auth_failures, ip, req).await;
    }
    if req.uri().path().starts_with("/admin/") {
        return crate::admin::handle(&app.hub, &app.drain, &app.settings, &req);
    }
    if http::is_http_transport(&req) {
        return http::serve(app, ctx, req).await;
    }
    if req.method() != axum::http::Method::GET && req.method() != axum::http::Method::HEAD {
        return (StatusCode::METHOD_NOT_ALLOWED, "only GET\n").into_response();
    }
    match req.uri().path() {
        "/" => index().await.into_response(),
        "/tether.js" => script(TETHER_JS).await.into_response(),
        "/tether.mjs" => script(TETHER_MJS).await.into_response(),
        "/health" => health(app).await.into_response(),
        "/metrics" => {
            if let Some(token) = &app.settings.metrics_token {
                let authorization = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
                if !admission::has_token(token, authorization, None) {
                    return refuse(StatusCode::UNAUTHORIZED, "/metrics needs the metrics token (Authorization: Bearer ...)");
                }
            }
            metrics(app).await.into_response()
        }
        "/favicon.ico" => StatusCode::NO_CONTENT.into_response(),
        path if crate::live::page(path).is_some() => {
            let (kind, body) = crate::live::page(path).expect("checked");
            ([(header::CONTENT_TYPE, kind)], body).into_response()
        }
        _ => (StatusCode::NOT_FOUND, "not found; WebSocket clients connect to any path with an Upgrade request\n").into_response(),
    }
}

async fn index() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], INDEX_HTML)
}

async fn script(source: &'static str) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], source)
}

async fn health(app: Arc<App>) -> impl IntoResponse {
    let broker = app.hub.broker().health();
    let draining = app.drain.is_draining();
    let body = serde_json::json!({
        "status": if draining { "draining" } else if broker.ok { "ok" } else { "degraded" },
        "draining": draining,
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": app.started.elapsed().as_secs(),
        "connections": app.hub.connection_count(),
        "topics": app.hub.topic_count(),
        "broker": { "name": app.hub.broker().name(), "ok": broker.ok, "detail": broker.detail },
    });
    let status = if broker.ok && !draining { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string())
}

async fn metrics(app: Arc<App>) -> impl IntoResponse {
    let broker_ok = if app.hub.broker().health().ok { 1.0 } else { 0.0 };
    let mut gauges = vec![("tether_broker_up", "Whether the message broker is reachable.", broker_ok)];
    gauges.extend(app.yjs.prometheus_gauges());
    let mut text = app.hub.metrics().render_prometheus(&gauges);
    text.push_str(&app.api.render_metrics());
    if let Some(w) = &app.webhooks {
        text.push_str(&w.render());
    }
    if let Some(h) = &app.hooks {
        text.push_str(&h.metrics.render());
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}

fn refuse(status: StatusCode, message: &str) -> Response {
    (status, [(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"))], format!("{message}\n")).into_response()
}

/// Any other path: a WebSocket upgrade joins the room named by the path.
async fn websocket(app: Arc<App>, ctx: ConnCtx, req: Request) -> Response {
    let (mut parts, _body) = req.into_parts();
    let header = |name: &str| parts.headers.get(name).and_then(|v: &HeaderValue| v.to_str().ok());
    let upgrade = UpgradeRequest {
        peer: ctx.peer,
        path: parts.uri.path(),
        query: parts.uri.query(),
        origin: header("origin"),
        authorization: header("authorization"),
        client_ip: app.settings.client_ip_header.as_deref().and_then(header),
        json: header("sec-websocket-protocol").is_some_and(|p| p.split(',').any(|p| p.trim() == tether_hub::PROTOCOL_V1)),
    };
    let (ip_guard, identity) = match app.admit(&upgrade) {
        Ok(found) => found,
        Err((status, message)) => return refuse(status, message),
    };
    let identity = match app.connect_request(&upgrade, header("cookie"), identity.clone()) {
        Some(ask) => match app.connect_hook(ask, parts.uri.path()).await {
            Ok(found) => found,
            Err((status, message)) => return refuse(status, &message),
        },
        None => identity,
    };
    let access = match parts.uri.path().strip_prefix(tether_yjs::PATH_PREFIX).map(|name| yjs_access(&identity, name)) {
        Some(Err((status, message))) => return refuse(status, message),
        Some(Ok(access)) => access,
        None => tether_yjs::Access::ReadWrite,
    };
    // The upgraded socket outlives this HTTP connection: it takes a
    // WebSocket slot, and the address count along.
    let Ok(permit) = app.ws_slots.clone().try_acquire_owned() else {
        tether_hub::Metrics::add(&app.hub.metrics().refused.max_connections, 1);
        return refuse(StatusCode::SERVICE_UNAVAILABLE, "too many connections, try again later");
    };
    let mut ip = ctx.slot.lock().unwrap_or_else(|p| p.into_inner()).as_mut().and_then(|s| s.ip.take());
    let upgrade = match <WebSocketUpgrade as axum::extract::FromRequestParts<()>>::from_request_parts(&mut parts, &()).await {
        Ok(u) => u,
        Err(rejection) => {
            tether_hub::Metrics::add(&app.hub.metrics().handshake_failures, 1);
            return rejection.into_response();
        }
    };
    if ip.is_none() && ip_guard.is_none() && !app.behind_proxy(ctx.peer) {
        // A later stream of an HTTP/2 connection (the first took the
        // connection's count): every WebSocket counts against the address.
        match app.per_ip.acquire(admission::address_key(ctx.peer.ip())) {
            Some(guard) => ip = Some(guard),
            None => {
                tether_hub::Metrics::add(&app.hub.metrics().refused.per_ip, 1);
                tether_hub::Metrics::add(&app.hub.metrics().handshake_failures, 1);
                return refuse(StatusCode::TOO_MANY_REQUESTS, "too many connections from your address");
            }
        }
    }
    let transport = if upgrade.is_http2() { Transport::WebSocketH2 } else { Transport::WebSocket };
    let slot = Slot { permit, ip, transport: Some(TransportGuard::new(app.hub.metrics(), transport)) };
    let open = h2::OpenStream::new(&ctx.websockets);
    let config = socket_config(&app.settings);
    let room = parts.uri.path().to_string();
    let hub = app.hub.clone();
    let yjs = app.yjs.clone();
    upgrade.protocols([tether_hub::PROTOCOL_V1]).config(config).on_upgrade(move |ws| async move {
        let _held = (slot, ip_guard, open);
        match room.strip_prefix(tether_yjs::PATH_PREFIX) {
            Some(name) => yjs.run_connection_with(ws, name, access).await,
            None => hub.run_connection(ws, ConnInfo::with_identity(room, identity)).await,
        }
    })
}
