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

/// Publish a batch of messages, grouped by topic, in one atomic step: per
/// topic, assign the next seqs (creating the epoch if the topic has none),
/// keep the messages in the stream, trim the stream to its limits (count,
/// age and bytes, oldest first), refresh expiries, and fan each message out
/// on the topic's channel.
///
/// Redis's own work per message is one `XADD` and one `PUBLISH`; the rest
/// is per topic and per batch: one `TIME` per call; per topic one `HMGET`
/// and one `HSET` of the seq hash, and now and then a trim: one `XLEN`,
/// one `XRANGE` of the oldest entries and one `XTRIM MINID` of those that
/// go. A topic's messages are appended first, then published, so a topic
/// refused at its first append has nothing written.
///
/// Trimming waits for slack: until the stream holds a sixteenth more
/// entries than its count limit, or its oldest entry is a sixteenth of the
/// age limit past it; then the stream is trimmed exactly to its limits,
/// oldest first, in one sweep. (Trimming one entry per publish is what
/// costs: each trim leaves a deleted entry at the head of the stream's
/// first node, and every later read of the head walks past all of them.)
/// Clients never see the slack: a replay is at most the count limit, and
/// never older than the age limit. The byte cap has no slack.
///
/// The seq hash keeps, besides `epoch` and `seq`:
///
/// - `bytes`: the running total of what the stream holds (body + sender +
///   64 bytes per entry for its ID and field names), exact: the trim reads
///   what it removes. A message larger than the cap is delivered but not
///   kept (a resume past it is told of the gap). Each entry is added and
///   removed once, so the trimming work per publish is constant on
///   average.
/// - `old`: a lower bound of the oldest entry's time (ms), so that a
///   stream under its limits is only read when its oldest entry may have
///   aged out. (Stream IDs only grow, so the bound holds whoever else
///   appends.)
/// - `count`: the stream's length, so that it is not asked for each time.
///   The topic's first append of a call checks it (`XADD NOMKSTREAM`: a
///   stream that expired is started again from 0), and a trim starts from
///   the stream's own `XLEN`.
/// - `exp`: when the keys' expiries were last refreshed. They are set to
///   their time to live plus a sixteenth of it, and refreshed once that
///   sixteenth has passed (or when the stream was empty), not on every
///   publish: a topic's keys still outlive its last message by at least
///   their time to live.
///
/// A topic whose keys cannot be read (a key of the wrong type) is refused
/// alone: its reply is `{-1, error}`, the other topics are published.
///
/// KEYS: per topic, seq and log. ARGV: epoch candidate, seq-key expiry ms,
/// then per topic: channel, max messages, max age ms, max bytes, message
/// count n, then n times sender, ts, kind, body. Returns per topic
/// {first seq, epoch}.
pub const PUBLISH_BATCH: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local candidate, seq_ttl = ARGV[1], tonumber(ARGV[2])
local overhead = 64
local function int(n) return string.format('%d', n) end
local function ms_of(id) return tonumber(string.match(id, '^%d+')) end
local out = {}
local a = 3
for g = 1, #KEYS / 2 do
  local seqk, logk = KEYS[2 * g - 1], KEYS[2 * g]
  local channel, max, age, cap, n = ARGV[a], tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4])
  local first = a + 5
  a = first + 4 * n
  local h = redis.pcall('HMGET', seqk, 'epoch', 'seq', 'bytes', 'old', 'exp', 'count')
  local err, count = h.err, 0
  if not err and max > 0 then
    if h[1] and h[6] then
      count = tonumber(h[6])
    else
      count = redis.pcall('XLEN', logk)
      if type(count) == 'table' then err, count = count.err, 0 end
    end
  end
  local epoch, seq, bytes, old, exp = candidate, 0, 0, 0, 0
  if not err then
    if h[1] then epoch, seq = h[1], tonumber(h[2] or '0') end
    old, exp = tonumber(h[4] or '0'), tonumber(h[5] or '0')
    if count > 0 then bytes = tonumber(h[3] or '0') end
  end
  local refresh = max > 0 and count == 0
  local start = seq + 1
  -- First what is kept: the first append checks the stream (its type, and
  -- that it did not expire under a count kept in the hash), before
  -- anything of the topic is written.
  local checked = max == 0
  for i = first, a - 1, 4 do
    if err then break end
    local size = #ARGV[i] + #ARGV[i + 3] + overhead
    if max > 0 and size <= cap then
      local s = int(start + (i - first) / 4)
      local id
      if checked then
        id = redis.call('XADD', logk, '*', 's', s, 'f', ARGV[i], 't', ARGV[i + 1], 'k', ARGV[i + 2], 'b', ARGV[i + 3])
      else
        checked = true
        if count > 0 then
          id = redis.pcall('XADD', logk, 'NOMKSTREAM', '*', 's', s, 'f', ARGV[i], 't', ARGV[i + 1], 'k', ARGV[i + 2], 'b', ARGV[i + 3])
          if not id then count, bytes, refresh = 0, 0, true end
        end
        if not id then
          id = redis.pcall('XADD', logk, '*', 's', s, 'f', ARGV[i], 't', ARGV[i + 1], 'k', ARGV[i + 2], 'b', ARGV[i + 3])
        end
        if type(id) == 'table' then err = id.err end
      end
      if not err then
        if count == 0 then old = ms_of(id) end
        bytes = bytes + size
        count = count + 1
      end
    end
  end
  if err then
    out[g] = {-1, err}
  else
    for i = first, a - 1, 4 do
      redis.call('PUBLISH', channel, 'm\n' .. epoch .. '\n' .. int(start + (i - first) / 4) .. '\n' .. ARGV[i] .. '\n' .. ARGV[i + 1] .. '\n' .. ARGV[i + 2] .. '\n' .. ARGV[i + 3])
    end
    seq = start + n - 1
    local fields = {'epoch', epoch, 'seq', int(seq)}
    if max > 0 then
      local cutoff = now - age
      if count > 0 and (count > max + math.floor(max / 16) or bytes > cap or old < cutoff - math.floor(age / 16)) then
        -- The count kept in the hash may be off (another version of this
        -- script appended): trimming starts from the stream's own.
        count = redis.call('XLEN', logk)
        local from, survivor, dropped = '-', nil, 0
        while count > 0 and not survivor do
          local page = count - max
          if page < 1 then page = 1 elseif page > 100 then page = 100 end
          local entries = redis.call('XRANGE', logk, from, '+', 'COUNT', page + 1)
          for _, e in ipairs(entries) do
            local ms = ms_of(e[1])
            if count > max or bytes > cap or ms < cutoff then
              local f, size = e[2], overhead
              for j = 1, #f, 2 do
                if f[j] == 'f' or f[j] == 'b' then size = size + #f[j + 1] end
              end
              bytes, count, dropped, from = bytes - size, count - 1, dropped + 1, '(' .. e[1]
            else
              survivor, old = e[1], ms
              break
            end
          end
          if not survivor and #entries <= page then count = 0 end
        end
        if dropped > 0 then
          if survivor then redis.call('XTRIM', logk, 'MINID', survivor) else redis.call('XTRIM', logk, 'MAXLEN', 0) end
        end
      end
      if count <= 0 or bytes < 0 then bytes = 0 end
      fields[5], fields[6], fields[7], fields[8], fields[9], fields[10] = 'bytes', int(bytes), 'old', int(old), 'count', int(count)
    end
    local every = math.floor(seq_ttl / 16)
    if max > 0 and age < seq_ttl then every = math.floor(age / 16) end
    refresh = refresh or now - exp >= every or now < exp
    if refresh then
      fields[#fields + 1] = 'exp'
      fields[#fields + 1] = int(now)
    end
    redis.call('HSET', seqk, unpack(fields))
    if refresh then
      redis.call('PEXPIRE', seqk, seq_ttl + every)
      if max > 0 then redis.call('PEXPIRE', logk, age + every) end
    end
    out[g] = {start, epoch}
  end
end
return out
"#;

/// Where a topic stands, and the first page of kept messages (newest
/// first) of a replay; the reader pages on with `XREVRANGE` from there.
///
/// Never changes a topic for anyone else: it creates the epoch of a topic
/// that has none, and otherwise only reads. The one exception is a node's
/// own catch-up (ARGV[7] = '1', never a client's resume): if the node
/// delivered a sequence number beyond the topic's under the same epoch,
/// Redis came back from an older snapshot, and a new epoch is set so
/// nobody mistakes new messages for old ones.
///
/// KEYS: seq, log. ARGV: epoch candidate, seq-key expiry ms, since (-1: no
/// replay; at most 2^53), the epoch of `since` ('*': any), most entries to
/// read now, max age ms, '1' for a node's catch-up. Returns {epoch, seq,
/// oldest stream ID still replayed (ms), entries (newest first)}.
pub const SYNC: &str = r#"
local epoch = redis.call('HGET', KEYS[1], 'epoch')
local seq = tonumber(redis.call('HGET', KEYS[1], 'seq') or '0')
local since = tonumber(ARGV[3])
if not epoch then
  epoch = ARGV[1]
  seq = 0
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'seq', 0)
elseif ARGV[7] == '1' and ARGV[4] == epoch and since > seq then
  epoch = ARGV[1]
  redis.call('HSET', KEYS[1], 'epoch', epoch)
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
local t = redis.call('TIME')
local cutoff = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) - tonumber(ARGV[6])
if cutoff < 0 then cutoff = 0 end
local want = 0
if since >= 0 then
  if ARGV[4] == '*' or ARGV[4] == epoch then want = seq - since else want = seq end
end
local page = tonumber(ARGV[5])
if want > page then want = page end
local entries = {}
if want > 0 then
  entries = redis.call('XREVRANGE', KEYS[2], '+', string.format('%d', cutoff), 'COUNT', want)
end
return {epoch, seq, cutoff, entries}
"#;

/// A local join or leave: update the topic's session → node hash and the
/// node's topic set, then announce it with the cluster-wide count (only if
/// it changed something: applying a change twice announces it once).
///
/// KEYS: who, node topics (on Redis Cluster only who: the node's topic set
/// is in another slot and updated apart). ARGV: 'join' or 'leave', session,
/// node, channel, topic, '1' if the node has no subscriber of the topic left.
pub const PRESENCE: &str = r#"
local changed
if ARGV[1] == 'join' then
  changed = redis.call('HSET', KEYS[1], ARGV[2], ARGV[3]) == 1
  if KEYS[2] then redis.call('SADD', KEYS[2], ARGV[5]) end
else
  changed = redis.call('HDEL', KEYS[1], ARGV[2]) == 1
  if KEYS[2] and ARGV[6] == '1' then redis.call('SREM', KEYS[2], ARGV[5]) end
end
local count = redis.call('HLEN', KEYS[1])
if changed then
  redis.call('PUBLISH', ARGV[4], 'p\n' .. ARGV[1] .. '\n' .. ARGV[2] .. '\n' .. count)
end
return count
"#;

/// After a reconnect: make the topic's presence match this node's sessions
/// (ARGV[4..]); sessions of this node that left meanwhile are announced as
/// leaves, and sessions Redis lost (it restarted empty, or another node
/// reaped this one during a partition) as joins.
/// KEYS: who, node topics (only who on Redis Cluster). ARGV: node, channel,
/// topic, sessions...
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
if KEYS[2] then
  if #ARGV >= 4 then redis.call('SADD', KEYS[2], ARGV[3]) else redis.call('SREM', KEYS[2], ARGV[3]) end
end
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

/// Redis Cluster's [`REAP`], one topic at a time (the topic's keys are in
/// its own slot): remove the sessions of the dead node ARGV[1] from the
/// topic's presence, announcing each as a leave. KEYS: who. ARGV: node,
/// channel. Returns sessions removed.
pub const REAP_TOPIC: &str = r#"
local h = redis.call('HGETALL', KEYS[1])
local removed = 0
for i = 1, #h, 2 do
  if h[i + 1] == ARGV[1] then
    redis.call('HDEL', KEYS[1], h[i])
    redis.call('PUBLISH', ARGV[2], 'p\nleave\n' .. h[i] .. '\n' .. redis.call('HLEN', KEYS[1]))
    removed = removed + 1
  end
end
return removed
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

/// The kind and bytes of a body, as stored and published. A message with a
/// conflation key has the key after the kind letter and a colon (`j:AAPL`);
/// keys have no control characters, so the newline-separated layout holds.
pub fn encode_body<'a>(body: &'a Body, key: Option<&str>) -> (std::borrow::Cow<'static, str>, &'a [u8]) {
    let (kind, bytes): (&'static str, &[u8]) = match body {
        Body::Text(t) => ("t", t.as_bytes()),
        Body::Json(j) => ("j", j.get().as_bytes()),
        Body::Binary(b) => ("b", b),
    };
    match key {
        None => (kind.into(), bytes),
        Some(key) => (format!("{kind}:{key}").into(), bytes),
    }
}

fn decode_body(kind: &[u8], bytes: &[u8]) -> Option<(Body, Option<Arc<str>>)> {
    let (kind, key) = match kind.iter().position(|&b| b == b':') {
        Some(at) => (&kind[..at], Some(Arc::from(std::str::from_utf8(&kind[at + 1..]).ok()?))),
        None => (kind, None),
    };
    let body = match kind {
        b"t" => Body::Text(Arc::from(std::str::from_utf8(bytes).ok()?)),
        b"j" => Body::Json(Arc::from(serde_json::value::RawValue::from_string(String::from_utf8(bytes.to_vec()).ok()?).ok()?)),
        b"b" => Body::Binary(bytes::Bytes::copy_from_slice(bytes)),
        _ => return None,
    };
    Some((body, key))
}

fn num(bytes: &[u8]) -> Option<u64> {
    std::str::from_utf8(bytes).ok()?.parse().ok()
}

/// Something received on a topic channel.
pub enum Event {
    /// A published message (its epoch not yet interned).
    Message { epoch: String, seq: u64, sender: Arc<str>, timestamp_ms: u64, body: Body, key: Option<Arc<str>> },
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
            let (body, key) = decode_body(kind, parts.next().unwrap_or(b""))?;
            Some(Event::Message { epoch, seq, sender, timestamp_ms, body, key })
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

/// Where a topic stands, as [`SYNC`] reports it.
pub struct Sync {
    pub epoch: String,
    pub seq: u64,
    /// Entries with an ID before this (ms) are too old to replay.
    pub cutoff_ms: u64,
    /// The first page of entries, newest first.
    pub entries: Value,
}

/// Parse the reply of [`SYNC`].
pub fn decode_sync(reply: Value) -> Option<Sync> {
    let Value::Array(mut parts) = reply else { return None };
    if parts.len() != 4 {
        return None;
    }
    let entries = parts.pop()?;
    let cutoff_ms: u64 = redis::from_redis_value(&parts[2]).ok()?;
    let seq: u64 = redis::from_redis_value(&parts[1]).ok()?;
    let epoch: String = redis::from_redis_value(&parts[0]).ok()?;
    Some(Sync { epoch, seq, cutoff_ms, entries })
}

/// Parse stream entries (`XRANGE`/`XREVRANGE` replies) in the order given,
/// each with its stream ID; malformed entries are skipped.
pub fn decode_entries(topic: &Arc<str>, epoch: &Arc<str>, entries: Value) -> Vec<(String, Published)> {
    let Value::Array(entries) = entries else { return Vec::new() };
    let mut messages = Vec::with_capacity(entries.len());
    for entry in entries {
        // [id, [field, value, ...]]
        let Value::Array(mut pair) = entry else { continue };
        let (Some(Value::Array(fields)), Some(Value::BulkString(id))) = (pair.pop(), pair.pop()) else { continue };
        let Ok(id) = String::from_utf8(id) else { continue };
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
        let Some((body, key)) = decode_body(kind, b.unwrap_or(b"")) else { continue };
        messages.push((id, Published { topic: topic.clone(), epoch: epoch.clone(), seq, sender, timestamp_ms: t.unwrap_or(0), body, key }));
    }
    messages
}

/// The stream ID just before `id` (`ms-n`), for paging backwards with an
/// inclusive range; `None` before the first possible ID.
pub fn id_before(id: &str) -> Option<String> {
    let (ms, n) = id.split_once('-')?;
    let (ms, n): (u64, u64) = (ms.parse().ok()?, n.parse().ok()?);
    Some(match (ms, n) {
        (_, 1..) => format!("{ms}-{}", n - 1),
        (1.., 0) => format!("{}-{}", ms - 1, u64::MAX),
        (0, 0) => return None,
    })
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
        // A conflation key rides after the kind.
        let body = Body::Text(Arc::from("42"));
        let (kind, bytes) = encode_body(&body, Some("AAPL:x"));
        let payload = [b"m\nabc\n8\ns-1\n123\n".as_slice(), kind.as_bytes(), b"\n", bytes].concat();
        let Some(Event::Message { key, body: Body::Text(t), .. }) = decode_event(&payload) else { panic!("not a message") };
        assert_eq!((key.as_deref(), &*t), (Some("AAPL:x"), "42"));
    }

    #[test]
    fn ids_step_back() {
        assert_eq!(id_before("1700000000000-3").as_deref(), Some("1700000000000-2"));
        assert_eq!(id_before("1700000000000-0").as_deref(), Some("1699999999999-18446744073709551615"));
        assert_eq!(id_before("0-0"), None);
        assert_eq!(id_before("garbage"), None);
    }
}
