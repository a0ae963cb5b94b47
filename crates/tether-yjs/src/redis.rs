//! Documents shared by several nodes through Redis (feature `redis`).
//!
//! [`RedisShare`] is both the [`Store`] and the [`Relay`] of every node:
//!
//! - **State.** A document's updates are a Redis list,
//!   `tether:yjs:{NAME}` (every integrated update pushed as it comes), and
//!   the set `tether:yjs:documents` names the documents. A node opening a
//!   document reads the list, so a late joiner on any node gets the whole
//!   state, whether or not another node has the document open. A node
//!   compacts the list into one update (every 500 of its updates, and when
//!   its last connection leaves) under `WATCH`: it merges what the list
//!   holds into its own state first, and if another node pushed in between
//!   it tries again (three times, then pushes its state without deleting
//!   anything), so no node's update is ever dropped.
//! - **Live.** Each integrated update and each accepted awareness change is
//!   published on `tether:yjs-relay:NAME` after it is stored; every node
//!   listens to `tether:yjs-relay:*` on one connection (its own thread) and
//!   hands what another node sent to the document's local connections, if
//!   it has the document open. A node that opens a document asks the others
//!   for their awareness states (presence and cursors show at once). After
//!   the listening connection was lost, each open document is re-read from
//!   its list, so an update missed meanwhile still arrives, and written
//!   back whole (merged) and published whole, so a Redis that restarted
//!   empty has again the state of every document some node has open, and
//!   so have the nodes. (Documents no node has
//!   open live only in Redis: run it with persistence, `appendonly yes`.)
//!
//! Messages are `node id (8 bytes) | kind (1 byte) | payload`. Commands go
//! through one blocking connection per node (with 2 s timeouts) under the
//! document's lock, as the directory store's file appends do: one Redis
//! round trip per update, which the per-connection rate limit bounds.

use crate::{Relay, Store, StoreError, Yjs};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use yrs::updates::decoder::Decode;
use yrs::{ReadTxn, StateVector, Transact, Update};

const DOCUMENTS: &str = "tether:yjs:documents";
const RELAY_PATTERN: &str = "tether:yjs-relay:*";
const RELAY_PREFIX: &str = "tether:yjs-relay:";
const TIMEOUT: Duration = Duration::from_secs(2);
/// Tries of a compaction before pushing the state without deleting.
const COMPACT_TRIES: usize = 3;

/// What a relay message carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Kind {
    /// A Yjs v1 update.
    Update = 0,
    /// A y-websocket awareness message.
    Awareness = 1,
    /// "Send me your awareness states" (no payload).
    QueryAwareness = 2,
}

fn key(name: &str) -> String {
    format!("tether:yjs:{{{name}}}")
}

/// The Redis [`Store`] and [`Relay`] of one node (see the module docs).
pub struct RedisShare {
    client: redis::Client,
    conn: Mutex<Option<redis::Connection>>,
    node: [u8; 8],
}

impl std::fmt::Debug for RedisShare {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisShare").field("node", &self.node).finish_non_exhaustive()
    }
}

impl RedisShare {
    /// Share documents through the Redis server at `url`
    /// (`redis://HOST:PORT`); connects on first use.
    pub fn open(url: &str) -> Result<Arc<RedisShare>, StoreError> {
        let client = redis::Client::open(url).map_err(|source| StoreError::Redis { name: String::new(), source })?;
        let seed = std::collections::hash_map::RandomState::new();
        let node = std::hash::BuildHasher::hash_one(&seed, (std::process::id(), std::time::SystemTime::now())).to_be_bytes();
        Ok(Arc::new(RedisShare { client, conn: Mutex::new(None), node }))
    }

    /// Start listening for the other nodes' messages to `yjs`'s documents
    /// (a thread that ends once `yjs` is dropped).
    pub fn listen(self: &Arc<Self>, yjs: &Arc<Yjs>) {
        let share = self.clone();
        let yjs = Arc::downgrade(yjs);
        let spawned = std::thread::Builder::new().name("tether-yjs-redis".into()).spawn(move || share.listen_loop(&yjs));
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the Yjs Redis listener");
        }
    }

    fn listen_loop(&self, yjs: &Weak<Yjs>) {
        let mut first = true;
        let mut backoff = Duration::from_millis(100);
        loop {
            if yjs.strong_count() == 0 {
                return;
            }
            match self.subscribe(yjs, &mut first) {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "Yjs Redis listener lost its connection; reconnecting");
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// One listening connection, until it fails (`Err`) or `yjs` is gone.
    fn subscribe(&self, yjs: &Weak<Yjs>, first: &mut bool) -> redis::RedisResult<()> {
        let mut con = self.client.get_connection_with_timeout(TIMEOUT)?;
        let mut pubsub = con.as_pubsub();
        pubsub.psubscribe(RELAY_PATTERN)?;
        pubsub.set_read_timeout(Some(Duration::from_secs(1)))?;
        if !std::mem::take(first) {
            // Messages may have been missed while the connection was down.
            match yjs.upgrade() {
                Some(yjs) => yjs.reload_all(),
                None => return Ok(()),
            }
        }
        loop {
            let msg = match pubsub.get_message() {
                Ok(msg) => msg,
                Err(e) if e.is_timeout() => {
                    if yjs.strong_count() == 0 {
                        return Ok(());
                    }
                    continue;
                }
                Err(e) => return Err(e),
            };
            let Some(yjs) = yjs.upgrade() else { return Ok(()) };
            let Some(name) = msg.get_channel_name().strip_prefix(RELAY_PREFIX) else { continue };
            let payload = msg.get_payload_bytes();
            if payload.len() < 9 || payload[..8] == self.node || crate::check_name(name).is_err() {
                continue;
            }
            let body = &payload[9..];
            match payload[8] {
                k if k == Kind::Update as u8 => yjs.apply_remote_update(name, body),
                k if k == Kind::Awareness as u8 => yjs.apply_remote_awareness(name, body),
                k if k == Kind::QueryAwareness as u8 => {
                    if let Some(states) = yjs.awareness_of(name) {
                        self.publish(name, Kind::Awareness, &states);
                    }
                }
                _ => {}
            }
        }
    }

    /// Run `f` on the command connection, (re)connecting first if needed.
    /// A failed command drops the connection; one that failed on a broken
    /// connection (Redis restarted, the link dropped) is tried once more on
    /// a new one (a command that ran twice pushes an update twice, which
    /// Yjs ignores).
    fn with_conn<T>(&self, name: &str, f: impl Fn(&mut redis::Connection) -> redis::RedisResult<T>) -> Result<T, StoreError> {
        let mut guard = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let err = |source| StoreError::Redis { name: name.to_string(), source };
        let mut tries = 0;
        loop {
            tries += 1;
            if guard.is_none() {
                let con = self.client.get_connection_with_timeout(TIMEOUT).map_err(err)?;
                con.set_read_timeout(Some(TIMEOUT)).map_err(err)?;
                con.set_write_timeout(Some(TIMEOUT)).map_err(err)?;
                *guard = Some(con);
            }
            match f(guard.as_mut().expect("connected above")) {
                Ok(v) => return Ok(v),
                Err(e) => {
                    *guard = None;
                    if tries >= 2 || !(e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error()) {
                        return Err(err(e));
                    }
                }
            }
        }
    }

    fn publish(&self, name: &str, kind: Kind, body: &[u8]) {
        let mut msg = Vec::with_capacity(9 + body.len());
        msg.extend_from_slice(&self.node);
        msg.push(kind as u8);
        msg.extend_from_slice(body);
        let published = self.with_conn(name, |con| redis::cmd("PUBLISH").arg(format!("{RELAY_PREFIX}{name}")).arg(&msg).query::<()>(con));
        if let Err(e) = published {
            tracing::warn!(document = name, error = %e, "cannot relay a Yjs message to the other nodes");
        }
    }

    /// One compaction try: `Some(())` if it committed, `None` if another
    /// node wrote the list in between.
    fn try_compact(con: &mut redis::Connection, key: &str, state: &[u8]) -> redis::RedisResult<Option<()>> {
        redis::cmd("WATCH").arg(key).query::<()>(con)?;
        let stored: Vec<Vec<u8>> = redis::cmd("LRANGE").arg(key).arg(0).arg(-1).query(con)?;
        let merged = merge(&stored, state);
        redis::pipe().atomic().del(key).ignore().rpush(key, merged).ignore().sadd(DOCUMENTS, key).ignore().query::<Option<()>>(con)
    }
}

/// `state` with every update of `stored` merged in (a Yjs merge: nothing
/// either holds is lost). An update that does not decode is left out.
fn merge(stored: &[Vec<u8>], state: &[u8]) -> Vec<u8> {
    let doc = yrs::Doc::new();
    let mut txn = doc.transact_mut();
    for update in stored.iter().map(Vec::as_slice).chain([state]) {
        let applied = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match Update::decode_v1(update) {
            Ok(u) => txn.apply_update(u).is_ok(),
            Err(_) => false,
        }));
        if !matches!(applied, Ok(true)) {
            tracing::warn!("leaving out a stored Yjs update that does not apply");
        }
    }
    txn.encode_state_as_update_v1(&StateVector::default())
}

impl Store for RedisShare {
    fn load(&self, name: &str) -> Result<Vec<Vec<u8>>, StoreError> {
        self.with_conn(name, |con| redis::cmd("LRANGE").arg(key(name)).arg(0).arg(-1).query(con))
    }

    fn exists(&self, name: &str) -> bool {
        self.with_conn(name, |con| redis::cmd("EXISTS").arg(key(name)).query::<bool>(con)).unwrap_or(false)
    }

    fn count(&self) -> usize {
        self.with_conn("", |con| redis::cmd("SCARD").arg(DOCUMENTS).query::<usize>(con)).unwrap_or(0)
    }

    fn append(&self, name: &str, update: &[u8]) -> Result<(), StoreError> {
        let key = key(name);
        self.with_conn(name, |con| redis::pipe().rpush(&key, update).ignore().sadd(DOCUMENTS, &key).ignore().query::<()>(con))
    }

    fn replace(&self, name: &str, state: &[u8]) -> Result<(), StoreError> {
        let key = key(name);
        self.with_conn(name, |con| {
            for _ in 0..COMPACT_TRIES {
                if Self::try_compact(con, &key, state)?.is_some() {
                    return Ok(());
                }
            }
            // Busy: keep everything, add our state (a later compaction merges it).
            redis::cmd("UNWATCH").query::<()>(con)?;
            redis::pipe().rpush(&key, state).ignore().sadd(DOCUMENTS, &key).ignore().query::<()>(con)
        })
    }
}

impl Relay for RedisShare {
    fn update(&self, name: &str, update: &[u8]) {
        self.publish(name, Kind::Update, update);
    }

    fn awareness(&self, name: &str, message: &[u8]) {
        self.publish(name, Kind::Awareness, message);
    }

    fn opened(&self, name: &str) {
        self.publish(name, Kind::QueryAwareness, &[]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use yrs::{GetString, Text};

    fn edit(doc: &yrs::Doc, at: u32, s: &str) -> Vec<u8> {
        let text = doc.get_or_insert_text("t");
        let before = doc.transact().state_vector();
        text.insert(&mut doc.transact_mut(), at, s);
        doc.transact().encode_diff_v1(&before)
    }

    #[test]
    fn a_compaction_keeps_what_another_node_pushed_meanwhile() {
        // Node one's state, and an update node two pushed that node one never saw.
        let one = yrs::Doc::new();
        let first = edit(&one, 0, "one ");
        let two = yrs::Doc::new();
        let theirs = edit(&two, 0, "two ");
        let merged = merge(&[first, theirs, b"not an update".to_vec()], &one.transact().encode_state_as_update_v1(&StateVector::default()));
        let check = yrs::Doc::new();
        let text = check.get_or_insert_text("t");
        check.transact_mut().apply_update(Update::decode_v1(&merged).unwrap()).unwrap();
        let s = text.get_string(&check.transact());
        assert!(s.contains("one ") && s.contains("two ") && s.len() == 8, "{s:?}");
    }
}
