//! `tether serve` over HTTP/2 (TLS connections that chose `h2` by ALPN):
//! pages, `/health` and `/metrics` as HTTP/2 requests, and WebSockets as
//! HTTP/2 streams opened by extended CONNECT (RFC 8441). The routes are the
//! HTTP/1.1 ones: the WebSocket route accepts an extended CONNECT as it
//! accepts an upgrade (tether's `http2` feature), with the same admission
//! (origin, token, room, connection and per-address caps) and the same hub.

use super::{App, ConnCtx, Slot, MAX_REQUEST_HEAD};
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Streams one HTTP/2 connection may have open at once
/// (SETTINGS_MAX_CONCURRENT_STREAMS): each WebSocket also takes a
/// `--max-connections` slot, this bounds what one connection multiplexes.
pub(crate) const MAX_STREAMS: u32 = 64;

/// Bytes hyper buffers for sending on one stream before a write waits: a
/// WebSocket that stops reading backs up into its hub queue (with its
/// slow-consumer policy), not into an unbounded HTTP/2 buffer.
const MAX_SEND_BUF: usize = 64 * 1024;

/// How long a connection that is being shut down may take to finish.
const DRAIN: Duration = Duration::from_secs(5);

/// One WebSocket open on an HTTP/2 connection, until dropped.
pub(crate) struct OpenStream(Arc<AtomicUsize>);

impl OpenStream {
    pub(crate) fn new(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        OpenStream(count.clone())
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serve one TLS connection that agreed on HTTP/2. It holds an HTTP slot;
/// each WebSocket stream takes a WebSocket slot of its own. The connection
/// lasts `--http-timeout` unless WebSockets are open on it, then as long
/// as they are; HTTP/2 PINGs at the heartbeat interval drop a dead peer.
pub(super) fn serve_h2<S>(stream: S, app: Arc<App>, router: Router, peer: SocketAddr, slot: Slot) -> impl std::future::Future<Output = ()> + Send
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    async move {
        let Some(slot) = app.take_slot(slot, &app.http_slots) else {
            // No HTTP/1.1 503 to write on an HTTP/2 connection: close it.
            tether_hub::Metrics::add(&app.hub.metrics().refused.max_connections, 1);
            tracing::warn!(%peer, max = app.settings.max_connections, "refused an HTTP/2 connection: connection limit reached");
            return;
        };
        let websockets = Arc::new(AtomicUsize::new(0));
        let ctx = ConnCtx { peer, slot: Arc::new(Mutex::new(Some(slot))), websockets: websockets.clone() };
        let service = hyper_util::service::TowerToHyperService::new(router.layer(axum::Extension(ctx)));
        let heartbeat = app.settings.heartbeat_interval;
        let mut http = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        http.timer(TokioTimer::new())
            // RFC 8441 §3: SETTINGS_ENABLE_CONNECT_PROTOCOL = 1.
            .enable_connect_protocol()
            .max_concurrent_streams(MAX_STREAMS)
            .max_header_list_size(MAX_REQUEST_HEAD as u32)
            .max_send_buf_size(MAX_SEND_BUF)
            .keep_alive_interval(heartbeat)
            .keep_alive_timeout(heartbeat);
        let conn = http.serve_connection(TokioIo::new(stream), service);
        tokio::pin!(conn);
        let lifetime = app.settings.http_timeout;
        loop {
            tokio::select! {
                ended = conn.as_mut() => {
                    if let Err(e) = ended {
                        tracing::debug!(%peer, error = %e, "HTTP/2 connection ended with an error");
                    }
                    return;
                }
                _ = tokio::time::sleep(lifetime) => {
                    if websockets.load(Ordering::Relaxed) == 0 {
                        tracing::debug!(%peer, "HTTP/2 connection with no WebSocket closed at --http-timeout");
                        break;
                    }
                }
            }
        }
        // GOAWAY, then let streams in flight finish (bounded).
        conn.as_mut().graceful_shutdown();
        let _ = tokio::time::timeout(DRAIN, conn).await;
    }
}
