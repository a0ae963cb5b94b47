//! Redis Cluster key slots, and key names that keep all of one topic's
//! keys in one slot whatever the topic's name: the groundwork for a broker
//! on Redis Cluster (#17, design in docs/scaling.md).
//!
//! Redis Cluster maps a key to one of 16,384 slots by CRC16 (XMODEM) of its
//! hash tag: the part between the first `{` and the first `}` after it, if
//! that part is not empty, else the whole key. A topic's keys
//! (`tether:{TOPIC}:seq`, `:log`, `:who`, `:ch`) share a tag so that its
//! scripts touch one slot; but a topic containing `}` (or starting with
//! it) would cut the tag short or empty it, and split its keys over slots
//! (every script on it then fails with `CROSSSLOT`). [`topic_tag`]
//! percent-encodes `%`, `{` and `}`, so the tag is always the whole topic.

use std::borrow::Cow;

/// Slots in a Redis Cluster.
pub const SLOTS: u16 = 16384;

/// CRC16/XMODEM (polynomial 0x1021, initial value 0), the checksum Redis
/// Cluster uses for slots.
fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in bytes {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 { (crc << 1) ^ 0x1021 } else { crc << 1 };
        }
    }
    crc
}

/// The slot of `key`, as `CLUSTER KEYSLOT` computes it.
pub fn key_slot(key: &[u8]) -> u16 {
    let hashed = match key.iter().position(|&b| b == b'{') {
        Some(open) => match key[open + 1..].iter().position(|&b| b == b'}') {
            Some(len) if len > 0 => &key[open + 1..open + 1 + len],
            _ => key,
        },
        None => key,
    };
    crc16(hashed) % SLOTS
}

/// The hash tag of `topic`: the topic itself, with `%`, `{` and `}`
/// percent-encoded (`%25`, `%7B`, `%7D`), and `%` alone for the empty
/// topic (an empty tag would hash whole keys). Topics without those
/// characters keep their name, so their keys are the same as the
/// single-Redis broker's.
pub fn topic_tag(topic: &str) -> Cow<'_, str> {
    if topic.is_empty() {
        return Cow::Borrowed("%");
    }
    if !topic.contains(['%', '{', '}']) {
        return Cow::Borrowed(topic);
    }
    let mut tag = String::with_capacity(topic.len() + 8);
    for c in topic.chars() {
        match c {
            '%' => tag.push_str("%25"),
            '{' => tag.push_str("%7B"),
            '}' => tag.push_str("%7D"),
            c => tag.push(c),
        }
    }
    Cow::Owned(tag)
}

/// A key (or shard channel) of `topic` for Redis Cluster:
/// `tether:{TAG}:suffix`, in the same slot for every suffix.
pub fn topic_key(topic: &str, suffix: &str) -> String {
    format!("tether:{{{}}}:{suffix}", topic_tag(topic))
}

/// The slot that holds every key of `topic`.
pub fn topic_slot(topic: &str) -> u16 {
    crc16(topic_tag(topic).as_bytes()) % SLOTS
}

/// The topic of a key made by [`topic_key`] with `suffix`, decoded.
pub fn topic_of_key(key: &str, suffix: &str) -> Option<String> {
    let tag = key.strip_prefix("tether:{")?.strip_suffix(suffix)?.strip_suffix("}:")?;
    if tag == "%" {
        return Some(String::new());
    }
    let mut topic = String::with_capacity(tag.len());
    let mut rest = tag;
    while let Some(at) = rest.find('%') {
        topic.push_str(&rest[..at]);
        let code = rest.get(at + 1..at + 3)?;
        topic.push(match code {
            "25" => '%',
            "7B" => '{',
            "7D" => '}',
            _ => return None,
        });
        rest = &rest[at + 3..];
    }
    if rest.contains(['{', '}']) {
        return None;
    }
    topic.push_str(rest);
    Some(topic)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis() {
        // Expected values from `redis-cli cluster keyslot KEY` on Redis 7.0.15.
        for (key, slot) in [
            ("somekey", 11058),
            ("foo", 12182),
            ("{user1000}.following", 3443),
            ("tether:{/lobby}:seq", 6205),
            ("tether:{%7Dx}:seq", 13737),
            ("tether:{a:b}:ch", 2785),
            ("123456789", 12739),
            ("{}x", 10595),
            ("a{}{b}", 15033),
        ] {
            assert_eq!(key_slot(key.as_bytes()), slot, "{key}");
        }
        assert_eq!(crc16(b"123456789"), 0x31C3, "the CRC16/XMODEM check value");
    }

    #[test]
    fn every_key_of_a_topic_is_in_its_slot() {
        for topic in ["/lobby", "a:b", "x}y", "}x", "{weird}", "{", "}", "%", "%7D", "", "{}", "ünï{cödé}"] {
            let slot = topic_slot(topic);
            for suffix in ["seq", "log", "who", "ch"] {
                let key = topic_key(topic, suffix);
                assert_eq!(key_slot(key.as_bytes()), slot, "{topic:?} {suffix}");
                assert_eq!(topic_of_key(&key, suffix).as_deref(), Some(topic), "{key}");
            }
        }
        // Plain topics keep the single-Redis broker's key names.
        assert_eq!(topic_key("/lobby", "seq"), "tether:{/lobby}:seq");
        // Escapes are distinct: "%7D" and "}" are different topics.
        assert_ne!(topic_key("%7D", "ch"), topic_key("}", "ch"));
    }

    #[test]
    fn foreign_keys_do_not_decode() {
        for key in ["tether:{a}:log", "other:{a}:ch", "tether:{a}b}:ch", "tether:{%7}:ch", "tether:{%41}:ch", "tether:{a%}:ch"] {
            assert_eq!(topic_of_key(key, "ch"), None, "{key}");
        }
    }
}
