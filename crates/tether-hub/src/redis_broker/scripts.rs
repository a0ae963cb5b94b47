//! What the Redis broker keeps in Redis, and the Lua scripts that change it
//! atomically. Keys of one topic share the hash tag `{topic}`:
//!
//! | key | type | holds |
//! | --- | --- | --- |
//! | `tether:{T}:seq` | hash | `epoch` (12 hex digits) and `seq` (last assigned) |
//! | `tether:{T}:log` | stream | the kept messages: fields `s` seq, `f` sender, `t` ts, `k` kind, `b` body |
//! | `tether:{T}:who` | hash | session → node, for every subscriber on every node |
//! | `tether:{T}:ch` | Pub/Sub channel | messages and presence events, in seq order |
//! | `tether:nodes` | set | live node ids |
//! | `tether:node:<id>` | string, 15 s TTL | a node's heartbeat |
//! | `tether:node:<id>:topics` | set | topics where the node has subscribers |

use crate::broker::{Body, Published};
use redis::Value;
use std::sync::Arc;

/// Assign the next seq (creating the epoch if the topic has none), keep the
/// message in the stream (trimmed by count and age), refresh expiries, and
/// fan it out on the topic's channel, all in one atomic step.
///
/// KEYS: seq, log. ARGV: epoch candidate, max messages, max age ms, seq-key
/// expiry ms, channel, sender, ts, kind, body. Returns {seq, epoch}.
pub const PUBLISH: &str = r#"
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  epoch = ARGV[1]
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'seq', 0)
end
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
redis.call('PEXPIRE', KEYS[1], ARGV[4])
if tonumber(ARGV[2]) > 0 then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 's', seq, 'f', ARGV[6], 't', ARGV[7], 'k', ARGV[8], 'b', ARGV[9])
  redis.call('XTRIM', KEYS[2], 'MINID', now - tonumber(ARGV[3]))
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
end
redis.call('PUBLISH', ARGV[5], 'm\n' .. epoch .. '\n' .. seq .. '\n' .. ARGV[6] .. '\n' .. ARGV[7] .. '\n' .. ARGV[8] .. '\n' .. ARGV[9])
return {seq, epoch}
"#;

/// Where a topic stands, and (for a resume) the kept messages after `since`:
/// all of the window if the epoch differs. If the sequence went backwards
/// under the same epoch (Redis came back from an older snapshot), a new
/// epoch is set so nobody mistakes new messages for old ones.
///
/// KEYS: seq, log. ARGV: epoch candidate, seq-key expiry ms, since (-1: no
/// replay), the client's epoch ('*': any), max messages, max age ms.
/// Returns {epoch, seq, entries (newest first)}.
pub const SYNC: &str = r#"
local epoch = redis.call('HGET', KEYS[1], 'epoch')
local seq = tonumber(redis.call('HGET', KEYS[1], 'seq') or '0')
if not epoch then
  epoch = ARGV[1]
  seq = 0
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'seq', 0)
end
local since = tonumber(ARGV[3])
local same = ARGV[4] == '*' or ARGV[4] == epoch
if since >= 0 and same and since > seq then
  epoch = ARGV[1]
  same = false
  redis.call('HSET', KEYS[1], 'epoch', epoch)
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
local entries = {}
local limit = tonumber(ARGV[5])
if since >= 0 and limit > 0 then
  local want = seq
  if same then want = seq - since end
  if want > limit then want = limit end
  if want > 0 then
    local t = redis.call('TIME')
    local cutoff = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) - tonumber(ARGV[6])
    if cutoff < 0 then cutoff = 0 end
    entries = redis.call('XREVRANGE', KEYS[2], '+', cutoff, 'COUNT', want)
  end
end
return {epoch, seq, entries}
"#;

/// A local join or leave: update the topic's session → node hash and the
/// node's topic set, then announce it with the cluster-wide count.
///
/// KEYS: who, node topics. ARGV: 'join' or 'leave', session, node, channel,
/// topic, '1' if the node has no subscriber of the topic left.
pub const PRESENCE: &str = r#"
if ARGV[1] == 'join' then
  redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
  redis.call('SADD', KEYS[2], ARGV[5])
else
  redis.call('HDEL', KEYS[1], ARGV[2])
  if ARGV[6] == '1' then redis.call('SREM', KEYS[2], ARGV[5]) end
end
local count = redis.call('HLEN', KEYS[1])
redis.call('PUBLISH', ARGV[4], 'p\n' .. ARGV[1] .. '\n' .. ARGV[2] .. '\n' .. count)
return count
"#;

/// After a reconnect: make the topic's presence match this node's sessions
/// (ARGV[4..]); sessions of this node that left meanwhile are announced as
/// leaves, and sessions Redis lost (it restarted empty, or another node
/// reaped this one during a partition) as joins.
/// KEYS: who, node topics. ARGV: node, channel, topic, sessions...
pub const RESYNC: &str = r#"
local mine = {}
for i = 4, #ARGV do mine[ARGV[i]] = true end
local h = redis.call('HGETALL', KEYS[1])
for i = 1, #h, 2 do
  if h[i + 1] == ARGV[1] and not mine[h[i]] then
    redis.call('HDEL', KEYS[1], h[i])
    redis.call('PUBLISH', ARGV[2], 'p\nleave\n' .. h[i] .. '\n' .. redis.call('HLEN', KEYS[1]))
  end
end
for i = 4, #ARGV do
  if redis.call('HSET', KEYS[1], ARGV[i], ARGV[1]) == 1 then
    redis.call('PUBLISH', ARGV[2], 'p\njoin\n' .. ARGV[i] .. '\n' .. redis.call('HLEN', KEYS[1]))
  end
end
if #ARGV >= 4 then redis.call('SADD', KEYS[2], ARGV[3]) else redis.call('SREM', KEYS[2], ARGV[3]) end
return redis.call('HLEN', KEYS[1])
"#;

/// Remove the sessions of nodes whose heartbeat key expired (crashed or cut
/// off), announcing each as a leave. Builds key names, so it needs a single
/// Redis (not Redis Cluster). KEYS: nodes set. Returns nodes reaped.
pub const REAP: &str = r#"
local reaped = 0
for _, node in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if redis.call('EXISTS', 'tether:node:' .. node) == 0 then
    local topics = 'tether:node:' .. node .. ':topics'
    for _, topic in ipairs(redis.call('SMEMBERS', topics)) do
      local who = 'tether:{' .. topic .. '}:who'
      local h = redis.call('HGETALL', who)
      for i = 1, #h, 2 do
        if h[i + 1] == node then
          redis.call('HDEL', who, h[i])
          redis.call('PUBLISH', 'tether:{' .. topic .. '}:ch', 'p\nleave\n' .. h[i] .. '\n' .. redis.call('HLEN', who))
        end
      end
    end
    redis.call('DEL', topics)
    redis.call('SREM', KEYS[1], node)
    reaped = reaped + 1
  end
end
return reaped
"#;

/// The set of live nodes.
pub const NODES: &str = "tether:nodes";

/// A key or channel of `topic`.
pub fn key(topic: &str, suffix: &str) -> String {
    format!("tether:{{{topic}}}:{suffix}")
}

/// A node's heartbeat key.
pub fn node_key(node: &str) -> String {
    format!("tether:node:{node}")
}

/// The set of topics where `node` has subscribers.
pub fn node_topics(node: &str) -> String {
    format!("tether:node:{node}:topics")
}

/// The topic of a channel name.
pub fn topic_of_channel(channel: &str) -> Option<&str> {
    channel.strip_prefix("tether:{")?.strip_suffix("}:ch")
}

/// The kind and bytes of a body, as stored and published.
pub fn encode_body(body: &Body) -> (&'static str, &[u8]) {
    match body {
        Body::Text(t) => ("t", t.as_bytes()),
        Body::Json(j) => ("j", j.get().as_bytes()),
        Body::Binary(b) => ("b", b),
    }
}

fn decode_body(kind: &[u8], bytes: &[u8]) -> Option<Body> {
    Some(match kind {
        b"t" => Body::Text(Arc::from(std::str::from_utf8(bytes).ok()?)),
        b"j" => Body::Json(Arc::from(serde_json::value::RawValue::from_string(String::from_utf8(bytes.to_vec()).ok()?).ok()?)),
        b"b" => Body::Binary(bytes::Bytes::copy_from_slice(bytes)),
        _ => return None,
    })
}

fn num(bytes: &[u8]) -> Option<u64> {
    std::str::from_utf8(bytes).ok()?.parse().ok()
}

/// Something received on a topic channel.
pub enum Event {
    /// A published message (its epoch not yet interned).
    Message { epoch: String, seq: u64, sender: Arc<str>, timestamp_ms: u64, body: Body },
    /// A join or leave with the cluster-wide count.
    Presence { joined: bool, session: String, count: u64 },
}

/// Parse a channel payload (see the scripts above for the layout).
pub fn decode_event(payload: &[u8]) -> Option<Event> {
    let mut parts = payload.splitn(7, |&b| b == b'\n');
    match parts.next()? {
        b"m" => {
            let epoch = String::from_utf8(parts.next()?.to_vec()).ok()?;
            let seq = num(parts.next()?)?;
            let sender = Arc::from(std::str::from_utf8(parts.next()?).ok()?);
            let timestamp_ms = num(parts.next()?)?;
            let kind = parts.next()?;
            let body = decode_body(kind, parts.next().unwrap_or(b""))?;
            Some(Event::Message { epoch, seq, sender, timestamp_ms, body })
        }
        b"p" => {
            let joined = parts.next()? == b"join";
            let session = String::from_utf8(parts.next()?.to_vec()).ok()?;
            let count = num(parts.next()?)?;
            Some(Event::Presence { joined, session, count })
        }
        _ => None,
    }
}

/// Parse the reply of [`SYNC`]: (epoch, seq, messages oldest first).
pub fn decode_sync(topic: &Arc<str>, reply: Value) -> Option<(String, u64, Vec<Published>)> {
    let Value::Array(mut parts) = reply else { return None };
    if parts.len() != 3 {
        return None;
    }
    let entries = parts.pop()?;
    let seq: u64 = redis::from_redis_value(&parts[1]).ok()?;
    let epoch: String = redis::from_redis_value(&parts[0]).ok()?;
    let epoch_arc: Arc<str> = Arc::from(epoch.as_str());
    let Value::Array(entries) = entries else { return Some((epoch, seq, Vec::new())) };
    let mut messages = Vec::with_capacity(entries.len());
    for entry in entries.into_iter().rev() {
        // [id, [field, value, ...]]
        let Value::Array(mut pair) = entry else { continue };
        let Some(Value::Array(fields)) = pair.pop() else { continue };
        let (mut s, mut f, mut t, mut k, mut b) = (None, None, None, None, None);
        for kv in fields.chunks(2) {
            let (Value::BulkString(name), Some(Value::BulkString(value))) = (&kv[0], kv.get(1)) else { continue };
            match name.as_slice() {
                b"s" => s = num(value),
                b"f" => f = std::str::from_utf8(value).ok().map(Arc::<str>::from),
                b"t" => t = num(value),
                b"k" => k = Some(value.as_slice()),
                b"b" => b = Some(value.as_slice()),
                _ => {}
            }
        }
        let (Some(seq), Some(sender), Some(kind)) = (s, f, k) else { continue };
        let Some(body) = decode_body(kind, b.unwrap_or(b"")) else { continue };
        messages.push(Published { topic: topic.clone(), epoch: epoch_arc.clone(), seq, sender, timestamp_ms: t.unwrap_or(0), body });
    }
    Some((epoch, seq, messages))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_names_round_trip() {
        for topic in ["/lobby", "a:b", "x}y", "{weird}"] {
            assert_eq!(topic_of_channel(&key(topic, "ch")), Some(topic));
        }
    }

    #[test]
    fn events_decode() {
        let Some(Event::Message { epoch, seq, sender, body: Body::Json(j), .. }) = decode_event(b"m\nabc\n7\ns-1\n123\nj\n{\"a\":\n\"x\"}") else {
            panic!("not a message")
        };
        assert_eq!((epoch.as_str(), seq, &*sender, j.get()), ("abc", 7, "s-1", "{\"a\":\n\"x\"}"));
        let Some(Event::Presence { joined, session, count }) = decode_event(b"p\nleave\ns-2\n3") else { panic!("not presence") };
        assert_eq!((joined, session.as_str(), count), (false, "s-2", 3));
        assert!(decode_event(b"m\nabc\nnot-a-number").is_none());
    }
}
