//! What an application's backend asks of the hub through the server API
//! (`tether serve`'s `/api/*`): publish and wait for the message's
//! `(epoch, seq)`, read a topic's kept history, list who is subscribed
//! here, and disconnect a session on whichever node holds it.
//!
//! A publish or history read goes through the broker like a client's, under
//! a connection id of its own that no socket has: the broker's answer (ack,
//! rejection, subscription) comes back to the sink, which hands it to the
//! waiting caller instead of a connection. Waiters are bounded
//! ([`MAX_WAITERS`]) and each is given up after its timeout, so a broker
//! that never answers costs a caller an error, never memory.
//!
//! Disconnects cross nodes as a message on [`CONTROL_TOPIC`], a topic no
//! client can name (it starts with a control character, which every client
//! topic is refused for), so every node with the control channel on
//! ([`Hub::start_control`]) closes the sessions it holds.

use crate::broker::{node_id, Body, BrokerError, History, Origin, Publish, Published, Resume, SubscribeRequest};
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::queue::flag;
use serde_json::value::RawValue;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;

/// The topic that carries disconnect orders between nodes. Its first
/// character is a control character: no client can subscribe or publish to it.
pub const CONTROL_TOPIC: &str = "\u{1}tether:control";

/// Most API operations waiting for the broker at once; more are refused
/// with [`ApiError::Busy`] (a stuck broker cannot make waiters pile up).
pub const MAX_WAITERS: usize = 4096;

/// Why an API operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The broker refused or could not take the message.
    #[error("{0}")]
    Broker(#[from] BrokerError),
    /// The broker did not answer within the timeout.
    #[error("the broker did not answer within {0:?}")]
    Timeout(Duration),
    /// Too many API operations wait for the broker already.
    #[error("too many API operations in flight (at most {MAX_WAITERS}), try again")]
    Busy,
    /// The content is not JSON.
    #[error("content is not JSON: {0}")]
    BadContent(String),
}

/// Where a published message landed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Position {
    /// The topic's epoch.
    pub epoch: Arc<str>,
    /// The message's sequence number.
    pub seq: u64,
}

enum Waiter {
    Publish(oneshot::Sender<Result<Position, String>>),
    History(oneshot::Sender<History>),
}

/// Operations waiting for the broker, by the connection id they use.
#[derive(Default)]
pub(crate) struct Waiters {
    map: Mutex<HashMap<u64, Waiter>>,
    /// Sessions to close, with their close code (entries go when the session ends).
    kicked: Mutex<HashMap<u64, u16>>,
    /// The user of each authenticated connection (for disconnects by user).
    users: Mutex<HashMap<u64, Arc<str>>>,
}

/// Ids for API operations: from the top of the range, far from connection ids.
fn next_api_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1 << 62);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Removes a waiter when its caller stops waiting (timeout or cancel).
struct Registered<'a> {
    waiters: &'a Waiters,
    id: u64,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        lock(&self.waiters.map).remove(&self.id);
    }
}

impl Waiters {
    fn register(&self, waiter: Waiter) -> Result<Registered<'_>, ApiError> {
        let id = next_api_id();
        let mut map = lock(&self.map);
        if map.len() >= MAX_WAITERS {
            return Err(ApiError::Busy);
        }
        map.insert(id, waiter);
        Ok(Registered { waiters: self, id })
    }

    /// An ack for an API publish: `true` if `conn` was one.
    pub(crate) fn acked(&self, conn: u64, epoch: &str, seq: u64) -> bool {
        match lock(&self.map).remove(&conn) {
            Some(Waiter::Publish(tx)) => {
                let _ = tx.send(Ok(Position { epoch: Arc::from(epoch), seq }));
                true
            }
            Some(other) => {
                lock(&self.map).insert(conn, other);
                false
            }
            None => false,
        }
    }

    /// A rejection for an API publish: `true` if `conn` was one.
    pub(crate) fn rejected(&self, conn: u64, error: &BrokerError) -> bool {
        match lock(&self.map).remove(&conn) {
            Some(Waiter::Publish(tx)) => {
                let _ = tx.send(Err(error.to_string()));
                true
            }
            Some(other) => {
                lock(&self.map).insert(conn, other);
                false
            }
            None => false,
        }
    }

    /// A subscription answer for an API history read: `true` if it was one
    /// (the caller then ends the subscription).
    pub(crate) fn history(&self, request: &SubscribeRequest, history: &History) -> bool {
        if request.conn < (1 << 62) {
            return false;
        }
        match lock(&self.map).remove(&request.conn) {
            Some(Waiter::History(tx)) => {
                let _ = tx.send(history.clone());
                true
            }
            Some(other) => {
                lock(&self.map).insert(request.conn, other);
                false
            }
            // A read whose caller gave up: still the API's.
            None => true,
        }
    }

    /// Connection `conn` is now authenticated as `user` (`None`: forget it).
    pub(crate) fn set_user(&self, conn: u64, user: Option<Arc<str>>) {
        let mut users = lock(&self.users);
        match user {
            Some(u) => {
                users.insert(conn, u);
            }
            None => {
                users.remove(&conn);
            }
        }
    }

    pub(crate) fn user_of(&self, conn: u64) -> Option<Arc<str>> {
        lock(&self.users).get(&conn).cloned()
    }

    fn connections_of(&self, user: &str) -> Vec<u64> {
        lock(&self.users).iter().filter(|(_, u)| &***u == user).map(|(c, _)| *c).collect()
    }

    /// The close code ordered for connection `conn`, taken.
    pub(crate) fn take_kick(&self, conn: u64) -> Option<u16> {
        lock(&self.kicked).remove(&conn)
    }
}

/// A disconnect order, as carried on [`CONTROL_TOPIC`].
#[derive(serde::Serialize, serde::Deserialize)]
struct Disconnect {
    #[serde(default)]
    session: String,
    #[serde(default)]
    user: Option<String>,
    code: u16,
}

impl Hub {
    /// Publish `content` (JSON text) to `topic` as `sender` and wait, at most
    /// `timeout`, for the broker's `(epoch, seq)`. Every node's subscribers
    /// get it like any client's message.
    pub async fn publish_and_wait(&self, topic: &str, content: &str, key: Option<&str>, sender: &str, timeout: Duration) -> Result<Position, ApiError> {
        let raw = RawValue::from_string(content.to_string()).map_err(|e| ApiError::BadContent(e.to_string()))?;
        let (tx, rx) = oneshot::channel();
        let registered = self.api.register(Waiter::Publish(tx))?;
        Metrics::add(&self.metrics.broadcasts, 1);
        self.broker.publish(Publish {
            topic: Arc::from(topic),
            sender: Arc::from(sender),
            timestamp_ms: crate::system::now_ms(),
            body: Body::Json(Arc::from(raw)),
            key: key.map(Arc::from),
            origin: Origin { conn: registered.id, id: None },
        })?;
        let answer = tokio::time::timeout(timeout, rx).await;
        drop(registered);
        match answer {
            Ok(Ok(Ok(position))) => Ok(position),
            Ok(Ok(Err(why))) => Err(ApiError::Broker(BrokerError::Unavailable(why))),
            Ok(Err(_)) => Err(ApiError::Broker(BrokerError::Unavailable("the broker dropped the message".into()))),
            Err(_) => Err(ApiError::Timeout(timeout)),
        }
    }

    /// The kept messages of `topic` after `since` (all kept ones for 0), oldest
    /// first, and where the topic stands; waits at most `timeout`.
    pub async fn read_history(&self, topic: &str, since: u64, timeout: Duration) -> Result<History, ApiError> {
        let (tx, rx) = oneshot::channel();
        let registered = self.api.register(Waiter::History(tx))?;
        let topic: Arc<str> = Arc::from(topic);
        self.broker.subscribe(SubscribeRequest { conn: registered.id, topic: topic.clone(), resume: Some(Resume { since, epoch: None }), id: None });
        let answer = tokio::time::timeout(timeout, rx).await;
        drop(registered);
        // One subscribe, one unsubscribe: the broker forgets the read.
        self.broker.unsubscribe(&topic);
        match answer {
            Ok(Ok(history)) => Ok(history),
            Ok(Err(_)) => Err(ApiError::Broker(BrokerError::Unavailable("the broker dropped the request".into()))),
            Err(_) => Err(ApiError::Timeout(timeout)),
        }
    }

    /// The sessions subscribed to `topic` on this node, as presence member
    /// names (`<session>` or `<session>@<user>`, [`crate::presence::split_member`]).
    pub fn local_sessions(&self, topic: &str) -> Vec<String> {
        self.local_subscribers(topic)
    }

    /// Subscribe this node to [`CONTROL_TOPIC`], so that disconnect orders
    /// from any node ([`Hub::disconnect`]) reach it. Call once.
    pub fn start_control(&self) {
        self.broker.subscribe(SubscribeRequest { conn: 0, topic: Arc::from(CONTROL_TOPIC), resume: None, id: None });
    }

    /// Close session `session` (on whichever node holds it) with close code
    /// `code`: ordered through the broker, so every node with
    /// [`Hub::start_control`] on acts on it. Returns whether the session was
    /// on this node (and is being closed).
    pub fn disconnect(&self, session: &str, code: u16) -> Result<bool, BrokerError> {
        let local = self.kick_local(session, code);
        if !local {
            let order = serde_json::to_string(&Disconnect { session: session.to_string(), user: None, code }).expect("serializable");
            self.broker.publish(Publish {
                topic: Arc::from(CONTROL_TOPIC),
                sender: Arc::from(format!("{}-server", node_id())),
                timestamp_ms: crate::system::now_ms(),
                body: Body::Json(Arc::from(RawValue::from_string(order).expect("JSON"))),
                key: None,
                origin: Origin { conn: 0, id: None },
            })?;
        }
        Ok(local)
    }

    /// Close every session of `user` (authenticated by a token or a hook)
    /// on every node with [`Hub::start_control`] on, with close code
    /// `code`. Returns how many were on this node.
    pub fn disconnect_user(&self, user: &str, code: u16) -> Result<usize, BrokerError> {
        let local = self.kick_user_local(user, code);
        let order = serde_json::to_string(&Disconnect { session: String::new(), user: Some(user.to_string()), code }).expect("serializable");
        self.broker.publish(Publish {
            topic: Arc::from(CONTROL_TOPIC),
            sender: Arc::from(format!("{}-server", node_id())),
            timestamp_ms: crate::system::now_ms(),
            body: Body::Json(Arc::from(RawValue::from_string(order).expect("JSON"))),
            key: None,
            origin: Origin { conn: 0, id: None },
        })?;
        Ok(local)
    }

    fn kick_user_local(&self, user: &str, code: u16) -> usize {
        let conns = self.api.connections_of(user);
        let mut n = 0;
        for id in conns {
            if let Some(conn) = self.connection(id) {
                lock(&self.api.kicked).insert(id, code);
                conn.set(flag::SHUTDOWN);
                n += 1;
            }
        }
        if n > 0 {
            tracing::info!(user, sessions = n, code, "disconnecting a user's sessions (server API)");
        }
        n
    }

    /// A message on [`CONTROL_TOPIC`] (from any node).
    pub(crate) fn on_control(&self, msg: &Published) {
        let Body::Json(raw) = &msg.body else { return };
        if let Ok(order) = serde_json::from_str::<Disconnect>(raw.get()) {
            match &order.user {
                Some(user) => {
                    self.kick_user_local(user, order.code);
                }
                None => {
                    self.kick_local(&order.session, order.code);
                }
            }
        }
    }

    /// Close `session` if it is on this node.
    fn kick_local(&self, session: &str, code: u16) -> bool {
        let Some(id) = session.strip_prefix(node_id()).and_then(|rest| rest.strip_prefix('-')).and_then(|n| n.parse::<u64>().ok()) else {
            return false;
        };
        let Some(conn) = self.connection(id) else { return false };
        lock(&self.api.kicked).insert(id, code);
        // The shutdown flag ends the session; its code is the one kept here.
        conn.set(flag::SHUTDOWN);
        tracing::info!(session, code, "disconnecting a session (server API)");
        true
    }
}
