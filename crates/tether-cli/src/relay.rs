//! Sessions of the HTTP transport across nodes, with no sticky sessions:
//! a POST or a resumed stream that reaches a node other than the one
//! holding its session is sent to that node through Redis Pub/Sub (the
//! broker's Redis), and the answer (the POST's status, the stream's
//! chunks) comes back the same way. Every node listens on its own channel,
//! `tether:relay:<node id>`; the node id is in every session key
//! ([`tether_hub::http::node_of`]). A `PUBLISH` that reaches no subscriber
//! means that node is gone: the client gets 404 and opens a new session.
//!
//! Bounds, each with a test: requests of this node waiting for another
//! node (`max_waiting`, then 503), streams this node serves for others
//! (`max_served`, then 503), chunks buffered per relayed stream (`CHUNKS`:
//! a client that reads slower than its events come has its stream ended,
//! and resumes by `Last-Event-ID`). A relayed stream lasts at most
//! `--http-timeout`, as a direct one does.

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tether_hub::http::{HttpError, HttpSessions, Posted};
use tokio::sync::{mpsc, oneshot};

/// Chunks of a relayed stream buffered for a slow client.
const CHUNKS: usize = 256;
/// How long a request waits for the node holding its session.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// What goes over a relay channel (JSON).
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Wire {
    /// Apply a POST here (the session is here); answer with `Answer`.
    Post { id: u64, from: String, key: String, seq: u64, messages: Vec<String> },
    /// Attach a stream here, resuming after `after`; `Answer`, then `Chunk`s.
    Attach { id: u64, from: String, key: String, after: u64 },
    /// End a session held here (the client closed); answer with `Answer`.
    Close { id: u64, from: String, key: String },
    /// The client of a relayed stream went away.
    Detach { id: u64, from: String },
    /// The HTTP status (and body) of a `Post` or an `Attach`.
    Answer { id: u64, status: u16, body: String },
    /// A piece of a relayed stream.
    Chunk { id: u64, data: String },
    /// The relayed stream is over.
    End { id: u64 },
}

/// A request of this node waiting for another node.
enum Waiter {
    Post(oneshot::Sender<(u16, String)>),
    Stream { answer: Option<oneshot::Sender<(u16, String)>>, chunks: mpsc::Sender<String>, node: String },
}

/// Why a relayed request got no answer.
#[derive(Debug, PartialEq, Eq)]
pub struct Refused(pub u16, pub String);

/// The relay of one node.
pub struct Relay {
    node: String,
    client: redis::Client,
    conn: tokio::sync::Mutex<Option<redis::aio::MultiplexedConnection>>,
    http: Arc<HttpSessions>,
    lifetime: Duration,
    next_id: AtomicU64,
    waiting: Mutex<HashMap<u64, Waiter>>,
    max_waiting: usize,
    /// Streams served here for other nodes: (node, id) -> the task.
    served: Mutex<HashMap<(String, u64), tokio::task::AbortHandle>>,
    max_served: usize,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn channel(node: &str) -> String {
    format!("tether:relay:{node}")
}

fn status_of(e: &HttpError) -> u16 {
    match e {
        HttpError::UnknownSession => 404,
        HttpError::TooManySessions => 503,
        HttpError::OutOfOrder { .. } => 409,
        HttpError::BatchTooLarge { .. } => 413,
    }
}

impl Relay {
    /// The relay of this node over the Redis at `url`, for `http`'s
    /// sessions; relayed streams end after `lifetime`. Starts listening.
    pub fn start(url: &str, http: Arc<HttpSessions>, lifetime: Duration) -> anyhow::Result<Arc<Relay>> {
        let relay = Arc::new(Self::new(url, http, lifetime, 4096, 1024)?);
        tokio::spawn(listen(Arc::downgrade(&relay), relay.client.clone(), channel(&relay.node)));
        Ok(relay)
    }

    fn new(url: &str, http: Arc<HttpSessions>, lifetime: Duration, max_waiting: usize, max_served: usize) -> anyhow::Result<Relay> {
        Ok(Relay {
            node: tether_hub::node_id().to_string(),
            client: redis::Client::open(url)?,
            conn: tokio::sync::Mutex::new(None),
            http,
            lifetime,
            next_id: AtomicU64::new(1),
            waiting: Mutex::new(HashMap::new()),
            max_waiting,
            served: Mutex::new(HashMap::new()),
            max_served,
        })
    }

    /// Whether `key` belongs to another node (so a miss here is routed).
    pub fn elsewhere(&self, key: &str) -> bool {
        tether_hub::http::node_of(key).is_some_and(|n| n != self.node && !n.is_empty())
    }

    /// Register a waiter; `None` when `max_waiting` are waiting already.
    fn reserve(&self, waiter: Waiter) -> Option<u64> {
        let mut waiting = lock(&self.waiting);
        if waiting.len() >= self.max_waiting {
            return None;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        waiting.insert(id, waiter);
        Some(id)
    }

    fn busy() -> Refused {
        Refused(503, "too many requests waiting for other nodes, try again".into())
    }

    /// Send `wire` to `node`; the number of nodes that got it (0: gone).
    async fn publish(&self, node: &str, wire: &Wire) -> Result<usize, Refused> {
        let text = serde_json::to_string(wire).map_err(|e| Refused(500, e.to_string()))?;
        let mut guard = self.conn.lock().await;
        if guard.is_none() {
            let config = redis::AsyncConnectionConfig::new().set_connection_timeout(Duration::from_secs(2)).set_response_timeout(Duration::from_secs(5));
            match self.client.get_multiplexed_async_connection_with_config(&config).await {
                Ok(c) => *guard = Some(c),
                Err(e) => return Err(Refused(503, format!("cannot reach Redis to route the request: {e}"))),
            }
        }
        let Some(conn) = guard.as_mut() else { return Err(Self::busy()) };
        let sent: redis::RedisResult<usize> = redis::cmd("PUBLISH").arg(channel(node)).arg(text).query_async(conn).await;
        sent.map_err(|e| {
            *guard = None;
            Refused(503, format!("cannot reach Redis to route the request: {e}"))
        })
    }

    /// Send and wait for the answer of a request registered as `id`.
    async fn ask(&self, node: &str, id: u64, wire: Wire, answer: oneshot::Receiver<(u16, String)>) -> Result<(u16, String), Refused> {
        let sent = self.publish(node, &wire).await;
        let result = match sent {
            Ok(0) => Err(Refused(404, "unknown or expired session (its node is gone); open a new one".into())),
            Ok(_) => match tokio::time::timeout(ANSWER_TIMEOUT, answer).await {
                Ok(Ok(answer)) => Ok(answer),
                _ => Err(Refused(503, "the node holding this session did not answer in time; try again".into())),
            },
            Err(e) => Err(e),
        };
        if !matches!(result, Ok((200, _))) {
            lock(&self.waiting).remove(&id);
        }
        result
    }

    /// Apply a POST on the node holding session `key`: its status and body.
    pub async fn post(&self, key: &str, seq: u64, messages: Vec<String>) -> Result<(u16, String), Refused> {
        let node = tether_hub::http::node_of(key).unwrap_or_default().to_string();
        let (tx, rx) = oneshot::channel();
        let id = self.reserve(Waiter::Post(tx)).ok_or_else(Self::busy)?;
        let wire = Wire::Post { id, from: self.node.clone(), key: key.to_string(), seq, messages };
        let answer = self.ask(&node, id, wire, rx).await;
        lock(&self.waiting).remove(&id);
        answer
    }

    /// End session `key` on the node holding it: its status and body.
    pub async fn close(&self, key: &str) -> Result<(u16, String), Refused> {
        let node = tether_hub::http::node_of(key).unwrap_or_default().to_string();
        let (tx, rx) = oneshot::channel();
        let id = self.reserve(Waiter::Post(tx)).ok_or_else(Self::busy)?;
        let wire = Wire::Close { id, from: self.node.clone(), key: key.to_string() };
        let answer = self.ask(&node, id, wire, rx).await;
        lock(&self.waiting).remove(&id);
        answer
    }

    /// Resume session `key`'s stream (after event `after`) from the node
    /// holding it: its chunks, ending when that stream does.
    pub async fn stream(self: &Arc<Self>, key: &str, after: u64) -> Result<impl futures_util::Stream<Item = String> + Send + 'static, Refused> {
        let node = tether_hub::http::node_of(key).unwrap_or_default().to_string();
        let (tx, rx) = oneshot::channel();
        let (chunks, mut incoming) = mpsc::channel(CHUNKS);
        let id = self.reserve(Waiter::Stream { answer: Some(tx), chunks, node: node.clone() }).ok_or_else(Self::busy)?;
        let wire = Wire::Attach { id, from: self.node.clone(), key: key.to_string(), after };
        match self.ask(&node, id, wire, rx).await? {
            (200, _) => {}
            (status, body) => return Err(Refused(status, body)),
        }
        // Dropped with the response body: the other node stops serving it.
        let detach = Detach { relay: self.clone(), id, node };
        Ok(futures_util::stream::poll_fn(move |cx| {
            let _ = &detach;
            incoming.poll_recv(cx)
        }))
    }

    /// A message on this node's channel.
    async fn on_wire(self: &Arc<Self>, wire: Wire) {
        match wire {
            Wire::Post { id, from, key, seq, messages } => {
                let (status, body) = match self.http.post(&key, seq, messages) {
                    Ok(Posted::Applied) => (200, "{\"ok\":true}".to_string()),
                    Ok(Posted::Duplicate) => (200, "{\"ok\":true,\"duplicate\":true}".to_string()),
                    Err(e) => (status_of(&e), e.to_string()),
                };
                let _ = self.publish(&from, &Wire::Answer { id, status, body }).await;
            }
            Wire::Close { id, from, key } => {
                let (status, body) = match self.http.close(&key) {
                    Ok(()) => (200, "{\"ok\":true}".to_string()),
                    Err(e) => (status_of(&e), e.to_string()),
                };
                let _ = self.publish(&from, &Wire::Answer { id, status, body }).await;
            }
            Wire::Attach { id, from, key, after } => self.serve(id, from, &key, after).await,
            Wire::Detach { id, from } => {
                if let Some(task) = lock(&self.served).remove(&(from, id)) {
                    task.abort();
                }
            }
            Wire::Answer { id, status, body } => {
                let mut waiting = lock(&self.waiting);
                match waiting.get_mut(&id) {
                    Some(Waiter::Post(_)) => {
                        if let Some(Waiter::Post(tx)) = waiting.remove(&id) {
                            let _ = tx.send((status, body));
                        }
                    }
                    Some(Waiter::Stream { answer, .. }) => {
                        if let Some(tx) = answer.take() {
                            let _ = tx.send((status, body));
                        }
                        if status != 200 {
                            waiting.remove(&id);
                        }
                    }
                    None => {}
                }
            }
            Wire::Chunk { id, data } => {
                let full = match lock(&self.waiting).get(&id) {
                    Some(Waiter::Stream { chunks, node, .. }) => chunks.try_send(data).is_err().then(|| node.clone()),
                    _ => None,
                };
                // A client slower than its events (or gone): end its stream;
                // it resumes by Last-Event-ID, nothing is lost.
                if let Some(node) = full {
                    lock(&self.waiting).remove(&id);
                    let _ = self.publish(&node, &Wire::Detach { id, from: self.node.clone() }).await;
                }
            }
            Wire::End { id } => {
                lock(&self.waiting).remove(&id);
            }
        }
    }

    /// Serve a stream of a session held here to node `from`.
    async fn serve(self: &Arc<Self>, id: u64, from: String, key: &str, after: u64) {
        let refused = self.start_serving(id, &from, key, after);
        if let Err((status, body)) = refused {
            let _ = self.publish(&from, &Wire::Answer { id, status, body }).await;
        }
    }

    fn start_serving(self: &Arc<Self>, id: u64, from: &str, key: &str, after: u64) -> Result<(), (u16, String)> {
        let mut served = lock(&self.served);
        if served.len() >= self.max_served {
            return Err((503, "too many relayed streams on the node holding this session, try again".to_string()));
        }
        let mut stream = self.http.resume(key, after).map_err(|e| (status_of(&e), e.to_string()))?;
        let relay = self.clone();
        let to = from.to_string();
        // One task publishes the answer and then the chunks, in order. It
        // removes itself from `served` at the end, after the insert below
        // (the lock is held until then).
        let task = tokio::spawn(async move {
            if relay.publish(&to, &Wire::Answer { id, status: 200, body: String::new() }).await.is_ok() {
                let deadline = tokio::time::sleep(relay.lifetime);
                tokio::pin!(deadline);
                loop {
                    tokio::select! {
                        chunk = stream.next_chunk() => {
                            let Some(data) = chunk else { break };
                            if relay.publish(&to, &Wire::Chunk { id, data }).await.is_err() {
                                break;
                            }
                        }
                        () = &mut deadline => break,
                    }
                }
                let _ = relay.publish(&to, &Wire::End { id }).await;
            }
            lock(&relay.served).remove(&(to, id));
        });
        served.insert((from.to_string(), id), task.abort_handle());
        Ok(())
    }
}

/// Sends `Detach` when a relayed stream's response body is dropped.
struct Detach {
    relay: Arc<Relay>,
    id: u64,
    node: String,
}

impl Drop for Detach {
    fn drop(&mut self) {
        if lock(&self.relay.waiting).remove(&self.id).is_none() {
            return; // ended by the other side
        }
        let (relay, id, node) = (self.relay.clone(), self.id, std::mem::take(&mut self.node));
        tokio::spawn(async move {
            let _ = relay.publish(&node, &Wire::Detach { id, from: relay.node.clone() }).await;
        });
    }
}

/// Listen on this node's channel until the relay is dropped, reconnecting.
async fn listen(relay: std::sync::Weak<Relay>, client: redis::Client, channel: String) {
    loop {
        match client.get_async_pubsub().await {
            Ok(mut pubsub) => match pubsub.subscribe(&channel).await {
                Ok(()) => {
                    tracing::info!(%channel, "HTTP transport relay listening");
                    let mut messages = pubsub.on_message();
                    while let Some(msg) = messages.next().await {
                        let Some(relay) = relay.upgrade() else { return };
                        let Ok(text) = msg.get_payload::<String>() else { continue };
                        match serde_json::from_str::<Wire>(&text) {
                            // Each in its own task: a slow publish does not hold up the channel.
                            Ok(wire @ (Wire::Post { .. } | Wire::Attach { .. } | Wire::Close { .. })) => drop(tokio::spawn(async move { relay.on_wire(wire).await })),
                            // In order: chunks of a stream must not overtake each other.
                            Ok(wire) => relay.on_wire(wire).await,
                            Err(e) => tracing::warn!(error = %e, "HTTP transport relay: ignored a malformed message"),
                        }
                    }
                    tracing::warn!(%channel, "HTTP transport relay: Redis subscription lost, reconnecting");
                }
                Err(e) => tracing::warn!(%channel, error = %e, "HTTP transport relay: cannot subscribe"),
            },
            Err(e) => tracing::warn!(error = %e, "HTTP transport relay: cannot reach Redis"),
        }
        if relay.strong_count() == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relay(max_waiting: usize, max_served: usize) -> Arc<Relay> {
        let hub = tether_hub::Hub::new(tether_hub::HubConfig::default(), Arc::new(tether_hub::MemoryBroker::new()));
        let http = HttpSessions::new(hub, tether_hub::http::HttpConfig::default());
        // Nothing listens on port 1: only the maps are exercised.
        Arc::new(Relay::new("redis://127.0.0.1:1", http, Duration::from_secs(1), max_waiting, max_served).unwrap())
    }

    #[tokio::test]
    async fn waiting_requests_are_bounded() {
        let relay = relay(3, 1);
        let mut held = Vec::new();
        for _ in 0..3 {
            let (tx, rx) = oneshot::channel();
            held.push(rx);
            assert!(relay.reserve(Waiter::Post(tx)).is_some());
        }
        let (tx, _rx) = oneshot::channel();
        assert!(relay.reserve(Waiter::Post(tx)).is_none(), "a fourth waiter beyond max_waiting = 3");
        // A POST refused at the bound answers 503, without touching Redis.
        let refused = relay.post("aaaaaaaaaaaa-1.00", 1, vec!["x".into()]).await.unwrap_err();
        assert_eq!(refused.0, 503);
        // An answer frees its slot.
        let id = *lock(&relay.waiting).keys().min().unwrap();
        relay.on_wire(Wire::Answer { id, status: 200, body: String::new() }).await;
        assert_eq!(lock(&relay.waiting).len(), 2);
        assert_eq!(held.remove(0).await.unwrap().0, 200);
    }

    #[tokio::test]
    async fn a_relayed_stream_that_falls_behind_is_ended() {
        let relay = relay(8, 1);
        let (tx, mut rx) = mpsc::channel(CHUNKS);
        let id = relay.reserve(Waiter::Stream { answer: None, chunks: tx, node: "bbbbbbbbbbbb".into() }).unwrap();
        for n in 0..CHUNKS {
            relay.on_wire(Wire::Chunk { id, data: format!("{n}") }).await;
        }
        assert_eq!(lock(&relay.waiting).len(), 1, "{CHUNKS} chunks fit");
        // One more than the buffer holds: the stream ends (the client resumes).
        relay.on_wire(Wire::Chunk { id, data: "over".into() }).await;
        assert!(lock(&relay.waiting).is_empty());
        let mut got = 0;
        while rx.recv().await.is_some() {
            got += 1;
        }
        assert_eq!(got, CHUNKS);
    }

    #[tokio::test]
    async fn streams_served_for_other_nodes_are_bounded() {
        let relay = relay(8, 1);
        // One stream served already (a task that never ends).
        let task = tokio::spawn(std::future::pending::<()>());
        lock(&relay.served).insert(("cccccccccccc".into(), 1), task.abort_handle());
        // The next attach is refused without resuming the session (the
        // answer cannot be published here: no Redis), and nothing is added.
        relay.serve(2, "cccccccccccc".into(), "nope", 0).await;
        assert_eq!(lock(&relay.served).len(), 1);
        // A detach ends the served stream and frees its slot.
        relay.on_wire(Wire::Detach { id: 1, from: "cccccccccccc".into() }).await;
        assert!(lock(&relay.served).is_empty());
        assert!(task.await.unwrap_err().is_cancelled());
    }
}
