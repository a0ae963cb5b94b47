//! [`serve`]: a hub on a TCP listener, as a library call. Every path is a
//! room (the tutorial's server); `tether.v1` is chosen when offered. For
//! embedding, and so that the hub can be tested in-process; `tether serve`
//! adds HTTP routes, TLS and admission limits in front of the same hub.

use crate::envelope::{check_topic, BadTopic};
use crate::{ConnInfo, Hub, PROTOCOL_V1};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// How long [`serve`] waits, after `shutdown`, for clients to answer the
/// 1001 close before it returns.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);

/// Accept WebSocket connections on `listener` and run each on `hub` until
/// `shutdown` resolves; then stop accepting, close every connection with
/// 1001 (going away) and wait up to 5 s for them to finish.
///
/// The URL path names the room (it obeys the topic rules: a longer path is
/// refused with 414, a control character with 400); a client offering
/// `tether.v1` speaks JSON envelopes. `config` sets the WebSocket limits.
///
/// ```no_run
/// # async fn run() -> std::io::Result<()> {
/// use std::sync::Arc;
/// use tether_hub::{Hub, HubConfig, MemoryBroker};
/// let hub = Hub::new(HubConfig::default(), Arc::new(MemoryBroker::new()));
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
/// tether_hub::serve(hub, listener, tether::Config::default(), async { let _ = tokio::signal::ctrl_c().await; }).await
/// # }
/// ```
pub async fn serve(hub: Arc<Hub>, listener: TcpListener, config: tether::Config, shutdown: impl Future<Output = ()>) -> std::io::Result<()> {
    let config = Arc::new(config);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            (tcp, peer) = accept(&listener) => {
                tokio::spawn(run_one(hub.clone(), tcp, peer, config.clone()));
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    hub.close_all(SHUTDOWN_WAIT).await;
    Ok(())
}

/// The next connection on `listener`, with Nagle's algorithm off. A failed
/// accept (out of file descriptors and the like) is logged and retried after
/// a short pause rather than in a busy loop.
pub async fn accept(listener: &TcpListener) -> (tokio::net::TcpStream, std::net::SocketAddr) {
    loop {
        match listener.accept().await {
            Ok((tcp, peer)) => {
                let _ = tcp.set_nodelay(true);
                return (tcp, peer);
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

impl Hub {
    /// Close every connection with 1001 (going away) and wait, up to
    /// `within`, for them to finish. Returns how many were still open.
    pub async fn close_all(&self, within: Duration) -> usize {
        self.shutdown();
        let deadline = tokio::time::Instant::now() + within;
        while self.connection_count() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.connection_count()
    }
}

/// One accepted socket: the handshake, then the hub. A plain `fn` returning
/// `async move` so the socket is stored once in the task (rust-lang/rust#62958).
fn run_one(hub: Arc<Hub>, tcp: tokio::net::TcpStream, peer: std::net::SocketAddr, config: Arc<tether::Config>) -> impl Future<Output = ()> + Send {
    async move {
        let mut room = String::new();
        let accepted = Box::pin(tether::accept_with(tcp, &config, |req| {
            if let Err(why) = check_topic(req.path()) {
                let status = if why == BadTopic::TooLong { 414 } else { 400 };
                return Err(tether::Reject::new(status, format!("invalid room name (the URL path): {why}")));
            }
            room = req.path().to_string();
            let protocol = req.protocols().contains(&PROTOCOL_V1).then(|| PROTOCOL_V1.to_string());
            Ok(tether::Accept { protocol, headers: Vec::new() })
        }))
        .await;
        match accepted {
            Ok(ws) => hub.run_connection(ws, ConnInfo::new(room)).await,
            Err(e) => tracing::debug!(%peer, error = %e, "WebSocket handshake failed"),
        }
    }
}
