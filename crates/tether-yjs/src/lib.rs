//! # tether-yjs
//!
//! The y-websocket protocol on tether WebSockets: collaborative Yjs
//! documents that the unchanged `yjs` + `y-websocket` npm client syncs
//! through (`new WebsocketProvider("ws://HOST:PORT/yjs", name, ydoc)`).
//!
//! Each document's state is kept with [`yrs`] (the Rust port of Yjs):
//! sync step 1 is answered with what the client lacks, updates are
//! integrated and sent to the document's other connections, awareness
//! (presence, cursors) goes to every connection, the sender included, and
//! a connection's awareness is cleared (a null state) when it goes.
//! Documents are persisted through a [`Store`] ([`DirStore`]: a directory)
//! and, with the `redis` feature, shared by several nodes through Redis
//! (`RedisShare`: the store and the [`Relay`] of every node).
//!
//! Every resource a client can grow has a bound in [`YjsConfig`]; going over
//! one closes the connection with a close code and a reason that says which.
//!
//! ```no_run
//! use std::sync::Arc;
//! use tether_yjs::{DirStore, Yjs, YjsConfig};
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let yjs = Yjs::new(YjsConfig::default(), Some(Arc::new(DirStore::open("documents")?)));
//!     let listener = tokio::net::TcpListener::bind("127.0.0.1:1234").await?;
//!     loop {
//!         let (tcp, _) = listener.accept().await?;
//!         let yjs = yjs.clone();
//!         tokio::spawn(async move {
//!             let config = tether::Config::default();
//!             let mut path = String::new();
//!             let accepted = tether::accept_with(tcp, &config, |req| {
//!                 path = req.path().to_string();
//!                 Ok(tether::Accept::default())
//!             })
//!             .await;
//!             if let Ok(ws) = accepted {
//!                 if let Some(name) = tether_yjs::document_name(&path) {
//!                     yjs.run_connection(ws, name).await;
//!                 }
//!             }
//!         });
//!     }
//! }
//! ```

mod conn;
mod doc;
pub mod protocol;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
mod redis;
mod remote;
mod store;

#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use crate::redis::RedisShare;
pub use remote::Relay;
pub use store::{DirStore, Store, StoreError};

use doc::DocState;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tether::CloseCode;

/// Where documents are served: `/yjs/<name>`.
pub const PATH_PREFIX: &str = "/yjs/";

/// Longest document name, in bytes.
pub const MAX_NAME_LEN: usize = 128;

/// The document name of a request path under [`PATH_PREFIX`], if it is
/// one and the name is valid (see [`check_name`]).
pub fn document_name(path: &str) -> Option<&str> {
    path.strip_prefix(PATH_PREFIX).filter(|name| check_name(name).is_ok())
}

/// Whether `name` may name a document: 1 to [`MAX_NAME_LEN`] bytes of
/// `A-Z a-z 0-9 . _ ~ % -` (a URL path segment, percent-encoded as sent),
/// not starting with `.`. It is also its file name in a [`DirStore`].
pub fn check_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("empty document name (connect to /yjs/<name>)");
    }
    if name.len() > MAX_NAME_LEN {
        return Err("document name longer than 128 bytes");
    }
    if name.starts_with('.') || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._~%-".contains(&b)) {
        return Err("document names are A-Z a-z 0-9 . _ ~ % - (not starting with '.')");
    }
    Ok(())
}

/// What a connection may do with its document.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Access {
    /// Read and edit (the default).
    #[default]
    ReadWrite,
    /// Read, and show its presence (awareness): its sync step 2 is not
    /// applied, and an update closes it with 1008.
    ReadOnly,
}

impl Access {
    /// Whether edits are accepted.
    pub fn may_write(self) -> bool {
        self == Access::ReadWrite
    }
}

/// Messages per second with a burst (a token bucket).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    /// Sustained messages per second; 0 turns the limit off.
    pub per_second: u32,
    /// Messages allowed at once above the sustained rate (at least 1).
    pub burst: u32,
}

impl RateLimit {
    /// GCRA: whether one more message at `now_ns` fits; `tat` is the
    /// theoretical arrival time of the next one.
    fn allow(&self, tat: &mut u64, now_ns: u64) -> bool {
        if self.per_second == 0 {
            return true;
        }
        let interval = 1_000_000_000 / u64::from(self.per_second);
        let tolerance = interval.saturating_mul(u64::from(self.burst.max(1) - 1));
        let start = (*tat).max(now_ns);
        if start - now_ns > tolerance {
            return false;
        }
        *tat = start + interval;
        true
    }
}

/// Bounds and timings of the Yjs endpoint. Every default is safe against a
/// hostile client.
#[derive(Clone, Debug)]
pub struct YjsConfig {
    /// Largest document, in bytes of Yjs updates: an update that would pass
    /// it is refused and its connection closed with 1008. Default 16 MiB.
    pub max_document_bytes: usize,
    /// Most documents open at once (with a connection on this node); a
    /// connection to one more is closed with 1013. Default 10 000.
    pub max_documents: usize,
    /// Most documents a store may hold; a connection that would create one
    /// more is closed with 1013. Default 100 000.
    pub max_stored_documents: usize,
    /// Messages (updates and awareness) per second per connection; over it
    /// the connection is closed with 1008. Default 100/s, burst 500 (a
    /// client syncing a backlog sends many at once).
    pub message_rate: RateLimit,
    /// Largest awareness state of one client, in bytes of JSON (1008).
    /// Default 16 KiB.
    pub max_awareness_bytes: usize,
    /// Most awareness client ids one connection may announce (1008).
    /// Default 8 (a y-websocket provider has one).
    pub max_awareness_clients: usize,
    /// Most awareness clients one document keeps (1013). Default 4096.
    pub max_awareness_per_document: usize,
    /// Most bytes queued for one connection that reads too slowly (1013).
    /// Default 16 MiB.
    pub max_queued_bytes: usize,
    /// How often a quiet connection is sent a sign of life (an empty
    /// awareness update, which y-websocket counts as a message: it
    /// reconnects after 30 s without one) and a ping. Default 10 s.
    pub keepalive: Duration,
    /// Updates after which a stored document is rewritten whole. Default 500.
    pub compact_after: usize,
}

impl Default for YjsConfig {
    fn default() -> Self {
        YjsConfig {
            max_document_bytes: 16 << 20,
            max_documents: 10_000,
            max_stored_documents: 100_000,
            message_rate: RateLimit { per_second: 100, burst: 500 },
            max_awareness_bytes: 16 << 10,
            max_awareness_clients: 8,
            max_awareness_per_document: 4096,
            max_queued_bytes: 16 << 20,
            keepalive: Duration::from_secs(10),
            compact_after: 500,
        }
    }
}

/// Why the server closes a connection: the close code and its reason.
#[derive(Clone, Debug)]
pub struct Closing {
    /// The close code.
    pub code: CloseCode,
    /// The reason (at most 123 bytes go on the wire).
    pub reason: String,
}

impl Closing {
    pub(crate) fn new(code: CloseCode, reason: &str) -> Closing {
        let mut end = reason.len().min(123);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        Closing { code, reason: reason[..end].to_string() }
    }
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct YjsMetrics {
    /// Connections accepted on `/yjs/`.
    pub connections_total: AtomicU64,
    /// Connections open now.
    pub connections: AtomicU64,
    /// Updates integrated (from clients, the store and other nodes).
    pub updates_total: AtomicU64,
    /// Awareness updates accepted.
    pub awareness_total: AtomicU64,
    /// Connections closed for breaking a limit or the protocol.
    pub refused_total: AtomicU64,
    /// Store failures (the document stays in memory), Redis included.
    pub store_errors_total: AtomicU64,
}

/// One document shared by its connections.
pub(crate) struct Document {
    pub name: Arc<str>,
    pub state: Mutex<DocState>,
}

impl Document {
    pub fn lock(&self) -> std::sync::MutexGuard<'_, DocState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The Yjs endpoint: open documents and their connections.
pub struct Yjs {
    config: YjsConfig,
    store: Option<Arc<dyn Store>>,
    relay: Option<Arc<dyn Relay>>,
    docs: Mutex<HashMap<Arc<str>, Arc<Document>>>,
    next_conn: AtomicU64,
    metrics: YjsMetrics,
    started: std::time::Instant,
}

impl std::fmt::Debug for Yjs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Yjs").field("config", &self.config).field("documents", &self.document_count()).finish()
    }
}

impl Yjs {
    /// An endpoint keeping documents in `store` (`None`: in memory only,
    /// gone when their last connection leaves).
    pub fn new(config: YjsConfig, store: Option<Arc<dyn Store>>) -> Arc<Yjs> {
        Yjs::with_relay(config, store, None)
    }

    /// An endpoint that also hands every integrated update and awareness
    /// change to `relay`, for the other nodes serving the same documents
    /// (see `RedisShare`, feature `redis`). The store should then be shared
    /// by those nodes too, so that a document opened on any node has its
    /// whole state.
    pub fn with_relay(config: YjsConfig, store: Option<Arc<dyn Store>>, relay: Option<Arc<dyn Relay>>) -> Arc<Yjs> {
        Arc::new(Yjs {
            config,
            store,
            relay,
            docs: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(1),
            metrics: YjsMetrics::default(),
            started: std::time::Instant::now(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &YjsConfig {
        &self.config
    }

    /// Counters.
    pub fn metrics(&self) -> &YjsMetrics {
        &self.metrics
    }

    /// Documents open now.
    pub fn document_count(&self) -> usize {
        self.docs.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// The figures for `/metrics`: `(name, help, value)`.
    pub fn prometheus_gauges(&self) -> Vec<(&'static str, &'static str, f64)> {
        let m = &self.metrics;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed) as f64;
        vec![
            ("tether_yjs_documents", "Yjs documents open now.", self.document_count() as f64),
            ("tether_yjs_connections", "Yjs connections open now.", get(&m.connections)),
            ("tether_yjs_connections_total", "Yjs connections accepted.", get(&m.connections_total)),
            ("tether_yjs_updates_total", "Yjs updates integrated.", get(&m.updates_total)),
            ("tether_yjs_awareness_total", "Yjs awareness updates accepted.", get(&m.awareness_total)),
            ("tether_yjs_refused_total", "Yjs connections closed for breaking a limit or the protocol.", get(&m.refused_total)),
            ("tether_yjs_store_errors_total", "Yjs document store failures.", get(&m.store_errors_total)),
        ]
    }

    fn now_ns(&self) -> u64 {
        self.started.elapsed().as_nanos() as u64
    }

    /// Open (or find) document `name` and count one more connection on it.
    fn open(&self, name: &str) -> Result<Arc<Document>, Closing> {
        let mut docs = self.docs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(doc) = docs.get(name) {
            return Ok(doc.clone());
        }
        if docs.len() >= self.config.max_documents {
            return Err(Closing::new(CloseCode::TRY_AGAIN_LATER, &format!("too many open documents (max_documents {})", self.config.max_documents)));
        }
        let mut state = DocState::new(self.config.max_queued_bytes);
        if let Some(store) = &self.store {
            if !store.exists(name) && store.count() >= self.config.max_stored_documents {
                return Err(Closing::new(
                    CloseCode::TRY_AGAIN_LATER,
                    &format!("too many stored documents (max_stored_documents {})", self.config.max_stored_documents),
                ));
            }
            // Loaded under the registry lock, so that a document being
            // written by its last connection's departure is never read half-way.
            match store.load(name) {
                Ok(updates) => {
                    for update in updates {
                        if let Err(why) = state.apply_stored(&update) {
                            tracing::warn!(document = name, why, "skipping a stored update that does not apply");
                        }
                    }
                    state.unsaved = 0;
                }
                Err(e) => {
                    self.metrics.store_errors_total.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(document = name, error = %e, "cannot load a document");
                    return Err(Closing::new(CloseCode::INTERNAL_ERROR, "the document cannot be loaded"));
                }
            }
        }
        let doc = Arc::new(Document { name: name.into(), state: Mutex::new(state) });
        docs.insert(doc.name.clone(), doc.clone());
        drop(docs);
        if let Some(relay) = &self.relay {
            relay.opened(name);
        }
        Ok(doc)
    }

    /// Connection `conn` left `doc`: clear its awareness; if it was the
    /// last, write the document whole and close it.
    fn close(&self, doc: &Arc<Document>, conn: u64) {
        let mut docs = self.docs.lock().unwrap_or_else(|p| p.into_inner());
        let mut state = doc.lock();
        if let (Some(cleared), Some(relay)) = (state.leave(conn), &self.relay) {
            relay.awareness(&doc.name, &cleared);
        }
        if state.peer_count() > 0 {
            return;
        }
        if let Some(store) = &self.store {
            if state.unsaved > 0 {
                self.write_whole(&doc.name, &mut state, store.as_ref());
            }
        }
        docs.remove(&doc.name);
    }

    fn write_whole(&self, name: &str, state: &mut DocState, store: &dyn Store) {
        match store.replace(name, &state.encode_state()) {
            Ok(()) => state.unsaved = 0,
            Err(e) => {
                self.metrics.store_errors_total.fetch_add(1, Ordering::Relaxed);
                tracing::error!(document = name, error = %e, "cannot write a document");
            }
        }
    }

    /// After a message was handled: persist what it integrated, then
    /// relay it (and the accepted awareness) to the other nodes.
    fn persist(&self, doc: &Document, state: &mut DocState, updates: &[Vec<u8>], awareness: Option<&[u8]>) {
        self.store_updates(doc, state, updates);
        if let Some(relay) = &self.relay {
            for update in updates {
                relay.update(&doc.name, update);
            }
            if let Some(awareness) = awareness {
                relay.awareness(&doc.name, awareness);
            }
        }
    }

    fn store_updates(&self, doc: &Document, state: &mut DocState, updates: &[Vec<u8>]) {
        let Some(store) = &self.store else { return };
        if state.unsaved >= self.config.compact_after {
            return self.write_whole(&doc.name, state, store.as_ref());
        }
        for update in updates {
            if let Err(e) = store.append(&doc.name, update) {
                self.metrics.store_errors_total.fetch_add(1, Ordering::Relaxed);
                tracing::error!(document = %doc.name, error = %e, "cannot store an update");
            }
        }
    }

    /// Close every connection with 1001 (server shutting down) and wait up
    /// to `timeout` for them to go; returns how many are left. Documents
    /// are written whole as their last connection leaves.
    pub async fn close_all(&self, timeout: Duration) -> u64 {
        let closing = Closing::new(CloseCode::GOING_AWAY, "server shutting down");
        let docs: Vec<_> = self.docs.lock().unwrap_or_else(|p| p.into_inner()).values().cloned().collect();
        for doc in docs {
            doc.lock().kick_all(&closing);
        }
        let deadline = tokio::time::Instant::now() + timeout;
        while self.metrics.connections.load(Ordering::Relaxed) > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.flush_all();
        self.metrics.connections.load(Ordering::Relaxed)
    }

    /// Write every open document whole (at shutdown).
    pub fn flush_all(&self) {
        let Some(store) = &self.store else { return };
        let docs: Vec<_> = self.docs.lock().unwrap_or_else(|p| p.into_inner()).values().cloned().collect();
        for doc in docs {
            let mut state = doc.lock();
            if state.unsaved > 0 {
                self.write_whole(&doc.name, &mut state, store.as_ref());
            }
        }
    }
}
