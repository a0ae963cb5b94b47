//! Where the server API keeps what must hold across requests and nodes:
//! idempotency keys (in this process with the memory broker, in Redis with
//! SET NX and an expiry with the Redis broker, so that a retry sent to
//! another node is still applied once), cluster-wide presence (the Redis
//! broker's `tether:{T}:who` hash) and each node's figures for `/api/info`.

use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Most idempotency keys remembered by one process (memory broker); past
/// it, expired keys are swept, and if none is, new keyed publishes get 503.
pub const MAX_MEMORY_KEYS: usize = 100_000;

/// What a publish with an idempotency key got: kept for the window.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Outcome {
    pub topic: String,
    pub epoch: String,
    pub seq: u64,
}

/// The answer to claiming a key.
#[derive(Debug)]
pub enum Claim {
    /// First use: publish, then [`Store::complete`] (or [`Store::release`]).
    New,
    /// Applied before, within the window: answer with the same outcome.
    Done(Outcome),
    /// Another request with this key is being applied right now.
    Pending,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("too many idempotency keys remembered (at most {MAX_MEMORY_KEYS}); try again later")]
    Full,
    #[error("redis: {0}")]
    Redis(String),
}

pub enum Entry {
    Pending,
    Done(Outcome),
}

/// Idempotency keys and cluster queries.
pub enum Store {
    Memory(Mutex<HashMap<String, (Instant, Entry)>>),
    Redis(RedisStore),
}

/// A pending claim expires this long after it was made if the node that
/// made it never completes it (it crashed), so the key becomes usable again.
const PENDING_TTL: Duration = Duration::from_secs(30);

pub struct RedisStore {
    client: redis::Client,
    /// One multiplexed connection, made again after an error.
    conn: Mutex<Option<redis::aio::MultiplexedConnection>>,
}

fn idem_key(key: &str) -> String {
    format!("tether:idem:{key}")
}

fn redis_err(e: redis::RedisError) -> StoreError {
    StoreError::Redis(e.to_string())
}

impl Store {
    pub fn memory() -> Store {
        Store::Memory(Mutex::new(HashMap::new()))
    }

    pub fn redis(url: &str) -> anyhow::Result<Store> {
        Ok(Store::Redis(RedisStore { client: redis::Client::open(url)?, conn: Mutex::new(None) }))
    }

    /// Claim `key` for `window` (see [`Claim`]).
    pub async fn claim(&self, key: &str, window: Duration) -> Result<Claim, StoreError> {
        match self {
            Store::Memory(map) => {
                let now = Instant::now();
                let mut map = map.lock().unwrap_or_else(|p| p.into_inner());
                if let Some((expires, entry)) = map.get(key) {
                    if *expires > now {
                        return Ok(match entry {
                            Entry::Pending => Claim::Pending,
                            Entry::Done(o) => Claim::Done(o.clone()),
                        });
                    }
                }
                if map.len() >= MAX_MEMORY_KEYS && !map.contains_key(key) {
                    map.retain(|_, (expires, _)| *expires > now);
                    if map.len() >= MAX_MEMORY_KEYS {
                        return Err(StoreError::Full);
                    }
                }
                map.insert(key.to_string(), (now + window.min(PENDING_TTL), Entry::Pending));
                Ok(Claim::New)
            }
            Store::Redis(r) => r.reset(async {
                let mut conn = r.conn().await?;
                let ttl = window.min(PENDING_TTL).as_millis().max(1) as u64;
                let set: Option<String> =
                    redis::cmd("SET").arg(idem_key(key)).arg("pending").arg("NX").arg("PX").arg(ttl).query_async(&mut conn).await.map_err(redis_err)?;
                if set.is_some() {
                    return Ok(Claim::New);
                }
                let value: Option<String> = conn.get(idem_key(key)).await.map_err(redis_err)?;
                Ok(match value.as_deref() {
                    // Expired between the two commands: treat as in progress; a retry claims it.
                    None | Some("pending") => Claim::Pending,
                    Some(v) => serde_json::from_str(v).map(Claim::Done).unwrap_or(Claim::Pending),
                })
            }
            .await),
        }
    }

    /// The claimed publish got `outcome`: remember it for `window`.
    pub async fn complete(&self, key: &str, outcome: &Outcome, window: Duration) -> Result<(), StoreError> {
        match self {
            Store::Memory(map) => {
                let mut map = map.lock().unwrap_or_else(|p| p.into_inner());
                map.insert(key.to_string(), (Instant::now() + window, Entry::Done(outcome.clone())));
                Ok(())
            }
            Store::Redis(r) => r.reset(async {
                let mut conn = r.conn().await?;
                let value = serde_json::to_string(outcome).expect("serializable");
                let () = conn.pset_ex(idem_key(key), value, window.as_millis().max(1) as u64).await.map_err(redis_err)?;
                Ok(())
            }
            .await),
        }
    }

    /// The claimed publish failed: forget the key, so a retry applies it.
    pub async fn release(&self, key: &str) {
        match self {
            Store::Memory(map) => {
                map.lock().unwrap_or_else(|p| p.into_inner()).remove(key);
            }
            Store::Redis(r) => {
                if let Ok(mut conn) = r.conn().await {
                    let _: Result<(), _> = conn.del(idem_key(key)).await;
                }
            }
        }
    }

    /// Cluster-wide subscribers of `topic` (session → node), Redis only.
    pub async fn presence(&self, topic: &str) -> Result<Option<Vec<(String, String)>>, StoreError> {
        let Store::Redis(r) = self else { return Ok(None) };
        r.reset(async {
        let mut conn = r.conn().await?;
        let who: HashMap<String, String> = conn.hgetall(format!("tether:{{{topic}}}:who")).await.map_err(redis_err)?;
        let mut who: Vec<(String, String)> = who.into_iter().collect();
        who.sort();
        Ok(Some(who))
        }.await)
    }

    /// Publish this node's figures for `/api/info` (kept 3 × `every`).
    pub async fn beat(&self, node: &str, info: &serde_json::Value, every: Duration) -> Result<(), StoreError> {
        let Store::Redis(r) = self else { return Ok(()) };
        r.reset(async {
        let mut conn = r.conn().await?;
        let () = conn.pset_ex(format!("tether:node:{node}:info"), info.to_string(), (every * 3).as_millis() as u64).await.map_err(redis_err)?;
        Ok(())
        }.await)
    }

    /// Every live node's figures (Redis only; `None` with the memory broker).
    pub async fn nodes(&self) -> Result<Option<Vec<serde_json::Value>>, StoreError> {
        let Store::Redis(r) = self else { return Ok(None) };
        r.reset(async {
        let mut conn = r.conn().await?;
        let mut nodes: Vec<String> = conn.smembers("tether:nodes").await.map_err(redis_err)?;
        nodes.sort();
        let mut out = Vec::new();
        for node in nodes {
            let info: Option<String> = conn.get(format!("tether:node:{node}:info")).await.map_err(redis_err)?;
            match info.and_then(|i| serde_json::from_str::<serde_json::Value>(&i).ok()) {
                Some(v) => out.push(v),
                // A node without the API on: known to be alive, figures unknown.
                None => out.push(serde_json::json!({ "node": node })),
            }
        }
        Ok(Some(out))
        }.await)
    }
}

impl RedisStore {
    async fn conn(&self) -> Result<redis::aio::MultiplexedConnection, StoreError> {
        if let Some(conn) = self.conn.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            return Ok(conn);
        }
        let config = redis::AsyncConnectionConfig::new().set_connection_timeout(Duration::from_secs(2)).set_response_timeout(Duration::from_secs(5));
        let conn = self.client.get_multiplexed_async_connection_with_config(&config).await.map_err(redis_err)?;
        *self.conn.lock().unwrap_or_else(|p| p.into_inner()) = Some(conn.clone());
        Ok(conn)
    }

    /// Forget the connection after an error (the next call makes a new one).
    fn reset<T>(&self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        if result.is_err() {
            *self.conn.lock().unwrap_or_else(|p| p.into_inner()) = None;
        }
        result
    }
}
