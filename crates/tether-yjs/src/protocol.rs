//! The y-websocket wire format (y-protocols `sync.js` and `awareness.js`),
//! in lib0's binary encoding: unsigned varints (7 bits a byte, low first,
//! high bit = more) and byte arrays prefixed by their varint length.
//!
//! One WebSocket binary message is one protocol message:
//!
//! | first varint | then |
//! |---|---|
//! | 0 sync | varint 0 step 1 (state vector), 1 step 2 (update), 2 update; then a byte array |
//! | 1 awareness | a byte array: varint n, then n × (varint client, varint clock, string JSON state) |
//! | 2 auth | (server to client only; ignored) |
//! | 3 query awareness | nothing: the server answers with every known state |
//!
//! Decoding never trusts a length: every read is checked against what is
//! left of the message, so a hostile message costs nothing beyond itself.

use bytes::Bytes;

/// Message type: document sync.
pub const MESSAGE_SYNC: u64 = 0;
/// Message type: awareness (presence, cursors).
pub const MESSAGE_AWARENESS: u64 = 1;
/// Message type: auth (y-websocket's permission answer).
pub const MESSAGE_AUTH: u64 = 2;
/// Message type: the client asks for every awareness state.
pub const MESSAGE_QUERY_AWARENESS: u64 = 3;

/// Sync sub-type: a state vector, answered with the missing updates.
pub const SYNC_STEP_1: u64 = 0;
/// Sync sub-type: the answer to step 1 (an update).
pub const SYNC_STEP_2: u64 = 1;
/// Sync sub-type: an update.
pub const SYNC_UPDATE: u64 = 2;

/// Why a message could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// The message ended inside a value.
    #[error("message ends inside a value")]
    Truncated,
    /// A varint is longer than 64 bits.
    #[error("varint longer than 64 bits")]
    VarintOverflow,
    /// An unknown message type.
    #[error("unknown message type {0}")]
    UnknownType(u64),
    /// An unknown sync sub-type.
    #[error("unknown sync message type {0}")]
    UnknownSyncType(u64),
    /// An awareness state is not UTF-8.
    #[error("awareness state is not UTF-8")]
    NotUtf8,
    /// Bytes left over after the message.
    #[error("trailing bytes after the message")]
    Trailing,
}

/// A reader over one message.
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    /// Read from `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    /// Whether everything was read.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// An unsigned varint (lib0 `readVarUint`).
    pub fn var_uint(&mut self) -> Result<u64, DecodeError> {
        let mut value: u64 = 0;
        for (i, &byte) in self.buf.iter().enumerate() {
            let shift = 7 * i as u32;
            if shift >= 64 || (shift == 63 && byte & 0x7e != 0) {
                return Err(DecodeError::VarintOverflow);
            }
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                self.buf = &self.buf[i + 1..];
                return Ok(value);
            }
        }
        Err(DecodeError::Truncated)
    }

    /// A length-prefixed byte array (lib0 `readVarUint8Array`).
    pub fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let len = self.var_uint()?;
        let len = usize::try_from(len).map_err(|_| DecodeError::Truncated)?;
        if len > self.buf.len() {
            return Err(DecodeError::Truncated);
        }
        let (head, rest) = self.buf.split_at(len);
        self.buf = rest;
        Ok(head)
    }

    /// A length-prefixed UTF-8 string (lib0 `readVarString`).
    pub fn string(&mut self) -> Result<&'a str, DecodeError> {
        std::str::from_utf8(self.bytes()?).map_err(|_| DecodeError::NotUtf8)
    }
}

/// Append an unsigned varint (lib0 `writeVarUint`).
pub fn write_var_uint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Append a length-prefixed byte array (lib0 `writeVarUint8Array`).
pub fn write_bytes(out: &mut Vec<u8>, data: &[u8]) {
    write_var_uint(out, data.len() as u64);
    out.extend_from_slice(data);
}

/// A decoded client message (borrowing the payload).
#[derive(Debug, PartialEq, Eq)]
pub enum ClientMessage<'a> {
    /// Sync step 1: the client's state vector (v1 encoding).
    SyncStep1(&'a [u8]),
    /// Sync step 2: what the server lacks, as an update (v1).
    SyncStep2(&'a [u8]),
    /// An update (v1).
    Update(&'a [u8]),
    /// An awareness update (still encoded; see [`decode_awareness`]).
    Awareness(&'a [u8]),
    /// Auth: a server-to-client message, ignored when a client sends it.
    Auth,
    /// The client asks for every awareness state.
    QueryAwareness,
}

/// Decode one client message.
pub fn decode(message: &[u8]) -> Result<ClientMessage<'_>, DecodeError> {
    let mut r = Reader::new(message);
    let msg = match r.var_uint()? {
        MESSAGE_SYNC => match r.var_uint()? {
            SYNC_STEP_1 => ClientMessage::SyncStep1(r.bytes()?),
            SYNC_STEP_2 => ClientMessage::SyncStep2(r.bytes()?),
            SYNC_UPDATE => ClientMessage::Update(r.bytes()?),
            other => return Err(DecodeError::UnknownSyncType(other)),
        },
        MESSAGE_AWARENESS => ClientMessage::Awareness(r.bytes()?),
        // Whatever follows an auth message is not ours to read.
        MESSAGE_AUTH => return Ok(ClientMessage::Auth),
        MESSAGE_QUERY_AWARENESS => ClientMessage::QueryAwareness,
        other => return Err(DecodeError::UnknownType(other)),
    };
    if !r.is_empty() {
        return Err(DecodeError::Trailing);
    }
    Ok(msg)
}

/// One client's awareness state in an awareness update.
#[derive(Debug, PartialEq, Eq, Clone)]
pub struct AwarenessEntry<'a> {
    /// The Yjs client id.
    pub client: u64,
    /// Its awareness clock: a state replaces one with a lower clock.
    pub clock: u64,
    /// The state as JSON text; `"null"` when the client went away.
    pub state: &'a str,
}

/// Decode the entries of an awareness update, refusing more than `max_entries`.
pub fn decode_awareness(update: &[u8], max_entries: usize) -> Result<Vec<AwarenessEntry<'_>>, DecodeError> {
    let mut r = Reader::new(update);
    let n = r.var_uint()?;
    // Each entry takes at least 3 bytes: a count beyond that is a lie.
    if n > (update.len() / 3) as u64 {
        return Err(DecodeError::Truncated);
    }
    let mut entries = Vec::with_capacity((n as usize).min(max_entries));
    for _ in 0..n {
        let client = r.var_uint()?;
        let clock = r.var_uint()?;
        let state = r.string()?;
        entries.push(AwarenessEntry { client, clock, state });
    }
    if !r.is_empty() {
        return Err(DecodeError::Trailing);
    }
    Ok(entries)
}

/// Encode a sync message of `kind` (`SYNC_STEP_1`, `SYNC_STEP_2`, `SYNC_UPDATE`).
pub fn encode_sync(kind: u64, payload: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(payload.len() + 8);
    write_var_uint(&mut out, MESSAGE_SYNC);
    write_var_uint(&mut out, kind);
    write_bytes(&mut out, payload);
    out.into()
}

/// Encode an awareness message carrying `entries`.
pub fn encode_awareness<'a>(entries: impl IntoIterator<Item = AwarenessEntry<'a>>) -> Bytes {
    let mut inner = Vec::new();
    let mut count = 0u64;
    let mut body = Vec::new();
    for e in entries {
        count += 1;
        write_var_uint(&mut body, e.client);
        write_var_uint(&mut body, e.clock);
        write_bytes(&mut body, e.state.as_bytes());
    }
    write_var_uint(&mut inner, count);
    inner.extend_from_slice(&body);
    let mut out = Vec::with_capacity(inner.len() + 6);
    write_var_uint(&mut out, MESSAGE_AWARENESS);
    write_bytes(&mut out, &inner);
    out.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip_as_lib0_writes_them() {
        // lib0: writeVarUint(300) = [0xac, 0x02].
        let mut out = Vec::new();
        write_var_uint(&mut out, 300);
        assert_eq!(out, [0xac, 0x02]);
        for v in [0, 1, 127, 128, 16383, 16384, u32::MAX as u64, (1 << 53) - 1, u64::MAX] {
            let mut out = Vec::new();
            write_var_uint(&mut out, v);
            assert_eq!(Reader::new(&out).var_uint(), Ok(v));
        }
    }

    #[test]
    fn hostile_lengths_and_varints_are_refused() {
        assert_eq!(Reader::new(&[0xff; 11]).var_uint(), Err(DecodeError::VarintOverflow));
        assert_eq!(Reader::new(&[0x80]).var_uint(), Err(DecodeError::Truncated));
        // A byte array claiming 2^40 bytes in a 10-byte message.
        let mut msg = vec![0, 2];
        write_var_uint(&mut msg, 1 << 40);
        assert_eq!(decode(&msg), Err(DecodeError::Truncated));
        // An awareness update claiming a million entries.
        let mut update = Vec::new();
        write_var_uint(&mut update, 1_000_000);
        assert_eq!(decode_awareness(&update, 16), Err(DecodeError::Truncated));
        assert_eq!(decode(&[9]), Err(DecodeError::UnknownType(9)));
        assert_eq!(decode(&[0, 7, 0]), Err(DecodeError::UnknownSyncType(7)));
        assert_eq!(decode(&[3, 0]), Err(DecodeError::Trailing));
    }

    #[test]
    fn messages_decode_as_encoded() {
        assert_eq!(decode(&encode_sync(SYNC_UPDATE, b"abc")), Ok(ClientMessage::Update(b"abc")));
        assert_eq!(decode(&encode_sync(SYNC_STEP_1, b"")), Ok(ClientMessage::SyncStep1(b"")));
        assert_eq!(decode(&[3]), Ok(ClientMessage::QueryAwareness));
        let msg = encode_awareness([AwarenessEntry { client: 7, clock: 3, state: r#"{"user":"a"}"# }]);
        let ClientMessage::Awareness(update) = decode(&msg).unwrap() else { panic!("not awareness") };
        assert_eq!(decode_awareness(update, 16).unwrap(), vec![AwarenessEntry { client: 7, clock: 3, state: r#"{"user":"a"}"# }]);
    }
}
