//! `tether serve`: HTTP and WebSocket on one port. `/` is the chat page,
//! `/tether.js` the browser client, `/health` and `/metrics` for operators;
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
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;
use tether::axum::WebSocketUpgrade;
use tether_hub::{ConnInfo, Hub, HubConfig, MemoryBroker};
use tokio::net::TcpListener;

const INDEX_HTML: &str = include_str!("../../../web/index.html");
const TETHER_JS: &str = include_str!("../../../web/tether.js");

struct App {
    hub: Arc<Hub>,
    settings: Settings,
    started: Instant,
}

pub fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let settings = Settings::resolve(args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(serve(settings))
}

async fn serve(settings: Settings) -> anyhow::Result<ExitCode> {
    let broker: Arc<dyn tether_hub::Broker> = match settings.broker.as_str() {
        "memory" => Arc::new(MemoryBroker::with_history(settings.history.clone())),
        url if url.starts_with("redis://") => Arc::new(tether_hub::RedisBroker::new(url, settings.history.clone())?),
        other => anyhow::bail!("unknown broker {other:?} (supported: memory, redis://HOST:PORT)"),
    };
    let tls = match &settings.tls {
        None => None,
        Some((cert, key)) => {
            let cert_pem = std::fs::read(cert).with_context(|| format!("cannot read --tls-cert {}", cert.display()))?;
            let key_pem = std::fs::read(key).with_context(|| format!("cannot read --tls-key {}", key.display()))?;
            Some(tether::tls::acceptor(&cert_pem, &key_pem).context("invalid TLS certificate or key")?)
        }
    };
    let hub_config = HubConfig {
        heartbeat_interval: settings.heartbeat_interval,
        queue_max_messages: settings.queue_max_messages,
        queue_max_bytes: settings.queue_max_bytes,
        slow_consumer: settings.slow_consumer,
        ..HubConfig::default()
    };
    let hub = Hub::new(hub_config, broker);
    let listener = TcpListener::bind(settings.listen).await.with_context(|| format!("cannot listen on {}", settings.listen))?;
    let addr = listener.local_addr()?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    println!("listening on {scheme}://{addr}");
    tracing::info!(%addr, tls = tls.is_some(), broker = hub.broker().name(), heartbeat = ?settings.heartbeat_interval, "tether serve ready");

    let app = Arc::new(App { hub: hub.clone(), settings: settings.clone(), started: Instant::now() });
    // One handler: a WebSocket upgrade on any path (including "/") joins the
    // room named by the path; everything else is a plain HTTP route.
    let router = Router::new().fallback(dispatch).with_state(app.clone());

    let signal = shutdown::signal();
    tokio::pin!(signal);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (tcp, peer) = match accepted {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                let router = router.clone();
                let tls = tls.clone();
                let timeout = settings.handshake_timeout;
                let metrics = hub.metrics().clone();
                let app = app.clone();
                tokio::spawn(async move {
                    match tls {
                        None => serve_stream(tcp, app, router, peer).await,
                        // Boxed: a TLS session is several KiB, and the plain
                        // path should not pay for it in every connection task.
                        Some(acceptor) => Box::pin(async move {
                            match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
                                Ok(Ok(stream)) => serve_stream(stream, app, router, peer).await,
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
            _ = &mut signal => break,
        }
    }
    drop(listener);
    let open = hub.connection_count();
    tracing::info!(open, "shutting down: closing WebSocket connections with 1001");
    hub.shutdown();
    let deadline = tokio::time::Instant::now() + settings.shutdown_timeout;
    while hub.connection_count() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let left = hub.connection_count();
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
fn serve_stream<S>(mut stream: S, app: Arc<App>, router: Router, peer: std::net::SocketAddr) -> impl std::future::Future<Output = ()> + Send
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    async move {
    let timeout = app.settings.handshake_timeout;
    let (head, kind) = match tokio::time::timeout(timeout, front::read_first_request(&mut stream, 16 * 1024)).await {
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
    let stream = Prefixed::new(head, stream);
    match kind {
        FirstRequest::Upgrade => lean_websocket(stream, app).await,
        FirstRequest::Http => {
            let http = Box::pin(async move {
                let service = hyper_util::service::TowerToHyperService::new(router);
                let mut http = hyper::server::conn::http1::Builder::new();
                http.timer(TokioTimer::new()).header_read_timeout(timeout);
                http.serve_connection(TokioIo::new(stream), service).with_upgrades().await
            });
            if let Err(e) = http.await {
                tracing::debug!(%peer, error = %e, "HTTP connection ended with an error");
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

/// Origin allowlist, bearer token (header or `?token=`), connection limit.
/// A refusal is counted before it is answered.
fn admit(app: &App, origin: Option<&str>, authorization: Option<&str>, query: Option<&str>) -> Result<(), (StatusCode, &'static str)> {
    let refused = check_admission(app, origin, authorization, query);
    if refused.is_err() {
        tether_hub::Metrics::add(&app.hub.metrics().handshake_failures, 1);
    }
    refused
}

fn check_admission(app: &App, origin: Option<&str>, authorization: Option<&str>, query: Option<&str>) -> Result<(), (StatusCode, &'static str)> {
    let s = &app.settings;
    if !s.allowed_origins.is_empty() && !s.allowed_origins.iter().any(|o| Some(o.as_str()) == origin) {
        tracing::info!(origin = origin.unwrap_or(""), "refused upgrade: origin not allowed");
        return Err((StatusCode::FORBIDDEN, "origin not allowed"));
    }
    if let Some(token) = &s.token {
        let bearer = authorization.and_then(|v| v.strip_prefix("Bearer "));
        let in_query = query.and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("token=")));
        if bearer != Some(token.as_str()) && in_query != Some(token.as_str()) {
            return Err((StatusCode::UNAUTHORIZED, "missing or wrong bearer token"));
        }
    }
    if app.hub.connection_count() >= s.max_connections {
        tracing::warn!(max = s.max_connections, "refused upgrade: connection limit reached");
        return Err((StatusCode::SERVICE_UNAVAILABLE, "too many connections, try again later"));
    }
    Ok(())
}

/// The lean WebSocket path: handshake straight on the stream.
fn lean_websocket<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static>(stream: S, app: Arc<App>) -> impl std::future::Future<Output = ()> + Send {
    async move {
    let mut room = String::new();
    // Scoped so the config and the handshake state are gone before the
    // connection runs: this task lives as long as the client stays.
    let accepted = {
        let config = socket_config(&app.settings);
        Box::pin(tether::accept_with(stream, &config, |req| {
            admit(&app, req.origin(), req.header_str("authorization"), req.query()).map_err(|(status, msg)| tether::Reject::new(status.as_u16(), msg))?;
            room = req.path().to_string();
            let protocol = req.protocols().contains(&tether_hub::PROTOCOL_V1).then(|| tether_hub::PROTOCOL_V1.to_string());
            Ok(tether::Accept { protocol, headers: Vec::new() })
        }))
        .await
    };
    match accepted {
        Ok(ws) => app.hub.run_connection(ws, ConnInfo { room }).await,
        Err(tether::Error::Rejected { status }) => tracing::debug!(status, "WebSocket upgrade refused"),
        Err(e) => {
            tether_hub::Metrics::add(&app.hub.metrics().handshake_failures, 1);
            tracing::debug!(error = %e, "WebSocket handshake failed");
        }
    }
    }
}

async fn dispatch(State(app): State<Arc<App>>, req: Request) -> Response {
    if tether::upgrade::is_upgrade_request(&req) {
        return websocket(app, req).await;
    }
    if req.method() != axum::http::Method::GET && req.method() != axum::http::Method::HEAD {
        return (StatusCode::METHOD_NOT_ALLOWED, "only GET\n").into_response();
    }
    match req.uri().path() {
        "/" => index().await.into_response(),
        "/tether.js" => script().await.into_response(),
        "/health" => health(app).await.into_response(),
        "/metrics" => metrics(app).await.into_response(),
        "/favicon.ico" => StatusCode::NO_CONTENT.into_response(),
        _ => (StatusCode::NOT_FOUND, "not found; WebSocket clients connect to any path with an Upgrade request\n").into_response(),
    }
}

async fn index() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], INDEX_HTML)
}

async fn script() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], TETHER_JS)
}

async fn health(app: Arc<App>) -> impl IntoResponse {
    let broker = app.hub.broker().health();
    let body = serde_json::json!({
        "status": if broker.ok { "ok" } else { "degraded" },
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": app.started.elapsed().as_secs(),
        "connections": app.hub.connection_count(),
        "topics": app.hub.topic_count(),
        "broker": { "name": app.hub.broker().name(), "ok": broker.ok, "detail": broker.detail },
    });
    let status = if broker.ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string())
}

async fn metrics(app: Arc<App>) -> impl IntoResponse {
    let broker_ok = if app.hub.broker().health().ok { 1.0 } else { 0.0 };
    let text = app.hub.metrics().render_prometheus(&[("tether_broker_up", "Whether the message broker is reachable.", broker_ok)]);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}

fn refuse(status: StatusCode, message: &str) -> Response {
    (status, [(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"))], format!("{message}\n")).into_response()
}

/// Any other path: a WebSocket upgrade joins the room named by the path.
async fn websocket(app: Arc<App>, req: Request) -> Response {
    let (mut parts, _body) = req.into_parts();
    let header = |name| parts.headers.get(name).and_then(|v: &HeaderValue| v.to_str().ok());
    if let Err((status, message)) = admit(&app, header(header::ORIGIN), header(header::AUTHORIZATION), parts.uri.query()) {
        return refuse(status, message);
    }
    let upgrade = match <WebSocketUpgrade as axum::extract::FromRequestParts<()>>::from_request_parts(&mut parts, &()).await {
        Ok(u) => u,
        Err(rejection) => {
            tether_hub::Metrics::add(&app.hub.metrics().handshake_failures, 1);
            return rejection.into_response();
        }
    };
    let config = socket_config(&app.settings);
    let room = parts.uri.path().to_string();
    let hub = app.hub.clone();
    upgrade.protocols([tether_hub::PROTOCOL_V1]).config(config).on_upgrade(move |ws| async move {
        hub.run_connection(ws, ConnInfo { room }).await;
    })
}
