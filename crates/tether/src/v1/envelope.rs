//! The `tether.v1` JSON envelope (docs/protocol.md): parsing what clients
//! send, with errors that say what is wrong, building what the server sends
//! (the hub), and building what clients send ([`Request`], the reconnecting
//! client).

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

/// A request from a client. Field meanings are those of docs/protocol.md.
#[derive(Debug)]
#[allow(missing_docs)]
pub enum ClientMessage {
    /// `{"type":"chat","content":...}`: a message to the connection's room.
    Chat { content: Box<RawValue>, id: Option<Value> },
    /// `{"type":"publish","topic":"...","content":...,"key"?:"K"}`; a `key`
    /// makes the message conflatable (a newer one with the same topic and key
    /// replaces it in a slow subscriber's queue) and names its delta stream.
    Publish { topic: String, content: Box<RawValue>, id: Option<Value>, key: Option<String> },
    /// `{"type":"subscribe","topic":"...","since"?:N,"epoch"?:"E","delta"?:"merge-patch"}`.
    Subscribe { topic: String, since: Option<u64>, epoch: Option<String>, id: Option<Value>, delta: bool },
    /// `{"type":"unsubscribe","topic":"..."}`.
    Unsubscribe { topic: String, id: Option<Value> },
    /// `{"type":"ping"}`: answered with an ack (an application-level heartbeat).
    Ping { id: Option<Value> },
    /// `{"type":"auth","token":"..."}` (or `"type":"connect"`): the first
    /// message of a connection that could not send its token in the
    /// upgrade request (browsers cannot set headers).
    Auth { token: String, id: Option<Value> },
    /// `{"type":"refresh","token":"..."}`: new credentials for a live
    /// connection whose token is about to expire.
    Refresh { token: String, id: Option<Value> },
    /// `{"type":"rpc","method":"M","data"?:...,"id":I}`: a request the
    /// application's backend answers (the server's RPC hook), with an
    /// `rpc_result` or an `error` carrying the same `id`.
    Rpc { method: String, data: Box<RawValue>, id: Value },
}

/// Longest RPC method name accepted.
pub const MAX_METHOD_LEN: usize = 100;

/// Longest token accepted in an `auth` or `refresh` request.
pub const MAX_TOKEN_LEN: usize = 8192;

/// Why a client message was refused; sent back as an `error` envelope.
#[derive(Debug, Clone, PartialEq)]
pub struct EnvelopeError {
    /// Machine-readable code: `bad_json`, `not_an_object`, `missing_type`,
    /// `unknown_type`, `missing_field`, `invalid_field`.
    pub code: &'static str,
    /// What was wrong, for humans.
    pub message: String,
    /// The request's `id`, if it could be read.
    pub id: Option<Value>,
}

#[derive(Deserialize)]
struct Raw<'a> {
    #[serde(rename = "type")]
    kind: Option<&'a str>,
    id: Option<Value>,
    topic: Option<Value>,
    content: Option<Box<RawValue>>,
    since: Option<Value>,
    epoch: Option<Value>,
    key: Option<Value>,
    delta: Option<Value>,
    token: Option<Value>,
    method: Option<Value>,
    data: Option<Box<RawValue>>,
}

/// Longest topic name accepted.
pub const MAX_TOPIC_LEN: usize = 200;

/// Why a topic (or room) name is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadTopic {
    /// Empty.
    Empty,
    /// Longer than [`MAX_TOPIC_LEN`] bytes.
    TooLong,
    /// Contains a control character (U+0000-U+001F, U+007F-U+009F), which
    /// could forge lines in logs and terminals.
    ControlCharacter,
}

impl std::fmt::Display for BadTopic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BadTopic::Empty => "a topic must not be empty",
            BadTopic::TooLong => "a topic is at most 200 bytes",
            BadTopic::ControlCharacter => "a topic must not contain control characters",
        })
    }
}

/// The rules every topic and room name obeys: 1 to [`MAX_TOPIC_LEN`]
/// bytes, no control characters.
pub fn check_topic(topic: &str) -> Result<(), BadTopic> {
    if topic.is_empty() {
        Err(BadTopic::Empty)
    } else if topic.len() > MAX_TOPIC_LEN {
        Err(BadTopic::TooLong)
    } else if topic.chars().any(char::is_control) {
        Err(BadTopic::ControlCharacter)
    } else {
        Ok(())
    }
}

/// Longest conflation key accepted (the rules of topics apply to keys).
pub const MAX_KEY_LEN: usize = MAX_TOPIC_LEN;

/// Longest epoch accepted in a `subscribe` (servers send 12 characters).
pub const MAX_EPOCH_LEN: usize = 64;

/// Parse one text message from a `tether.v1` client.
pub fn parse(text: &str) -> Result<ClientMessage, EnvelopeError> {
    let err = |code, message: String, id: Option<Value>| EnvelopeError { code, message, id };
    let trimmed = text.trim_start();
    if !trimmed.starts_with('{') {
        return Err(if serde_json::from_str::<Value>(text).is_ok() {
            err("not_an_object", "a message must be a JSON object like {\"type\":\"chat\",\"content\":\"hi\"}".into(), None)
        } else {
            err("bad_json", "message is not valid JSON".into(), None)
        });
    }
    let raw: Raw = serde_json::from_str(text).map_err(|e| err("bad_json", format!("message is not valid JSON: {e}"), None))?;
    let id = raw.id.clone();
    if let Some(v) = &id {
        if !(v.is_string() || v.is_number()) {
            return Err(err("invalid_field", "\"id\" must be a string or a number".into(), None));
        }
    }
    let kind = raw.kind.ok_or_else(|| err("missing_type", "missing field \"type\" (chat, publish, subscribe, unsubscribe, ping)".into(), id.clone()))?;
    let topic = |raw: &Raw| -> Result<String, EnvelopeError> {
        match &raw.topic {
            None => Err(err("missing_field", format!("\"{kind}\" needs a \"topic\""), id.clone())),
            Some(Value::String(t)) => match check_topic(t) {
                Ok(()) => Ok(t.clone()),
                Err(why) => Err(err("invalid_field", format!("\"topic\" is not valid: {why}"), id.clone())),
            },
            Some(_) => Err(err("invalid_field", format!("\"topic\" must be a non-empty string of at most {MAX_TOPIC_LEN} bytes"), id.clone())),
        }
    };
    let content = |raw: Raw| -> Result<Box<RawValue>, EnvelopeError> {
        raw.content.ok_or_else(|| err("missing_field", format!("\"{kind}\" needs a \"content\""), id.clone()))
    };
    match kind {
        "chat" => Ok(ClientMessage::Chat { content: content(raw)?, id }),
        "publish" => {
            let topic = topic(&raw)?;
            let key = match &raw.key {
                None | Some(Value::Null) => None,
                Some(Value::String(k)) => match check_topic(k) {
                    Ok(()) => Some(k.clone()),
                    Err(why) => return Err(err("invalid_field", format!("\"key\" is not valid: {}", why.to_string().replace("topic", "key")), id.clone())),
                },
                Some(_) => return Err(err("invalid_field", format!("\"key\" must be a non-empty string of at most {MAX_KEY_LEN} bytes"), id.clone())),
            };
            Ok(ClientMessage::Publish { topic, content: content(raw)?, id, key })
        }
        "subscribe" => {
            let topic = topic(&raw)?;
            let since = match &raw.since {
                None | Some(Value::Null) => None,
                Some(v) => Some(v.as_u64().ok_or_else(|| err("invalid_field", "\"since\" must be a non-negative integer sequence number".into(), id.clone()))?),
            };
            let epoch = match &raw.epoch {
                None | Some(Value::Null) => None,
                Some(Value::String(e)) if !e.is_empty() && e.len() <= MAX_EPOCH_LEN => Some(e.clone()),
                Some(_) => return Err(err("invalid_field", format!("\"epoch\" must be a non-empty string of at most {MAX_EPOCH_LEN} bytes"), id.clone())),
            };
            if epoch.is_some() && since.is_none() {
                return Err(err("missing_field", "\"epoch\" goes with \"since\" (the last sequence number received)".into(), id.clone()));
            }
            let delta = match &raw.delta {
                None | Some(Value::Null) | Some(Value::Bool(false)) => false,
                Some(Value::String(d)) if d == super::delta::MERGE_PATCH => true,
                Some(_) => return Err(err("invalid_field", format!("\"delta\" must be {:?} (JSON Merge Patch, RFC 7396)", super::delta::MERGE_PATCH), id.clone())),
            };
            Ok(ClientMessage::Subscribe { topic, since, epoch, id, delta })
        }
        "unsubscribe" => Ok(ClientMessage::Unsubscribe { topic: topic(&raw)?, id }),
        "ping" => Ok(ClientMessage::Ping { id }),
        "auth" | "connect" | "refresh" => {
            let token = match &raw.token {
                Some(Value::String(t)) if !t.is_empty() && t.len() <= MAX_TOKEN_LEN => t.clone(),
                None => return Err(err("missing_field", format!("\"{kind}\" needs a \"token\""), id)),
                Some(_) => return Err(err("invalid_field", format!("\"token\" must be a non-empty string of at most {MAX_TOKEN_LEN} bytes"), id)),
            };
            Ok(if kind == "refresh" { ClientMessage::Refresh { token, id } } else { ClientMessage::Auth { token, id } })
        }
        "rpc" => {
            let method = match &raw.method {
                Some(Value::String(m)) if !m.is_empty() && m.len() <= MAX_METHOD_LEN && !m.chars().any(char::is_control) => m.clone(),
                None => return Err(err("missing_field", "\"rpc\" needs a \"method\"".into(), id)),
                Some(_) => return Err(err("invalid_field", format!("\"method\" must be a non-empty string of at most {MAX_METHOD_LEN} bytes without control characters"), id)),
            };
            let Some(request_id) = id else {
                return Err(err("missing_field", "\"rpc\" needs an \"id\" (its answer carries it)".into(), None));
            };
            let data = raw.data.unwrap_or_else(|| RawValue::from_string("null".into()).expect("null is JSON"));
            Ok(ClientMessage::Rpc { method, data, id: request_id })
        }
        other => Err(err("unknown_type", format!("unknown message type {other:?} (expected chat, publish, subscribe, unsubscribe, ping, auth, refresh or rpc)"), id)),
    }
}

fn quote(s: &str) -> String {
    serde_json::to_string(s).expect("strings serialize")
}

/// `{"type":"welcome",...}`.
pub fn welcome(session: &str, room: &str) -> String {
    format!(r#"{{"type":"welcome","session":{},"room":{},"protocol":{}}}"#, quote(session), quote(room), quote(super::PROTOCOL))
}

/// `{"type":"message",...}`: `content_json` must be valid JSON.
pub fn message(topic: &str, epoch: &str, seq: u64, sender: &str, timestamp_ms: u64, content_json: &str) -> String {
    keyed_message(topic, epoch, seq, sender, timestamp_ms, None, content_json)
}

/// `{"type":"message",...,"key":"K","content":...}`: a message published
/// with a conflation key (`None`: as [`message`]).
pub fn keyed_message(topic: &str, epoch: &str, seq: u64, sender: &str, timestamp_ms: u64, key: Option<&str>, content_json: &str) -> String {
    let key = key.map_or(String::new(), |k| format!(r#","key":{}"#, quote(k)));
    format!(
        r#"{{"type":"message","topic":{},"epoch":{},"seq":{seq},"sender":{},"ts":{timestamp_ms}{key},"content":{content_json}}}"#,
        quote(topic),
        quote(epoch),
        quote(sender)
    )
}

/// `{"type":"message",...,"base":B,"patch":...}`: a message for a
/// delta subscription, as a JSON Merge Patch (RFC 7396) of the content of
/// the message `base` of the same topic and key, which the client has.
#[allow(clippy::too_many_arguments)]
pub fn patch_message(topic: &str, epoch: &str, seq: u64, sender: &str, timestamp_ms: u64, key: Option<&str>, base: u64, patch_json: &str) -> String {
    let key = key.map_or(String::new(), |k| format!(r#","key":{}"#, quote(k)));
    format!(
        r#"{{"type":"message","topic":{},"epoch":{},"seq":{seq},"sender":{},"ts":{timestamp_ms}{key},"base":{base},"patch":{patch_json}}}"#,
        quote(topic),
        quote(epoch),
        quote(sender)
    )
}

/// `{"type":"ack",...}`; `position` is the `(epoch, seq)` a publish got, or
/// where a subscription starts.
pub fn ack(id: &Value, topic: Option<&str>, position: Option<(&str, u64)>) -> String {
    let mut out = format!(r#"{{"type":"ack","id":{id}"#);
    if let Some(t) = topic {
        out.push_str(&format!(r#","topic":{}"#, quote(t)));
    }
    if let Some((epoch, seq)) = position {
        out.push_str(&format!(r#","epoch":{},"seq":{seq}"#, quote(epoch)));
    }
    out.push('}');
    out
}

/// `{"type":"error","code":"history_gap",...}`: messages of `topic` before
/// `first_seq` (of `epoch`) cannot be delivered; what follows starts there.
pub fn history_gap(topic: &str, epoch: &str, first_seq: u64, message: &str, id: Option<&Value>) -> String {
    let id = id.map_or("null".to_string(), |v| v.to_string());
    format!(
        r#"{{"type":"error","code":"history_gap","message":{},"id":{id},"topic":{},"epoch":{},"first_seq":{first_seq}}}"#,
        quote(message),
        quote(topic),
        quote(epoch)
    )
}

/// `{"type":"error",...}`.
pub fn error(code: &str, message: &str, id: Option<&Value>) -> String {
    let id = id.map_or("null".to_string(), |v| v.to_string());
    format!(r#"{{"type":"error","code":{},"message":{},"id":{id}}}"#, quote(code), quote(message))
}

/// `{"type":"token_expiring","expires_at":E,"close_at":C}`: the
/// connection's token expires at `E` (Unix seconds) and the connection is
/// closed at `C` unless it sends a `refresh` with a new token first.
pub fn token_expiring(expires_at: u64, close_at: u64) -> String {
    format!(r#"{{"type":"token_expiring","expires_at":{expires_at},"close_at":{close_at}}}"#)
}

/// `{"type":"authenticated","user":U,"expires_at":E|null,"id":I}`: the
/// answer to an `auth` or `refresh` that was accepted.
pub fn authenticated(user: &str, expires_at: Option<u64>, id: Option<&Value>) -> String {
    let id = id.map_or("null".to_string(), |v| v.to_string());
    let exp = expires_at.map_or("null".to_string(), |e| e.to_string());
    format!(r#"{{"type":"authenticated","user":{},"expires_at":{exp},"id":{id}}}"#, quote(user))
}

/// `{"type":"rpc_result","id":I,"data":D}`: the backend's answer to an
/// `rpc` request; `data_json` must be valid JSON.
pub fn rpc_result(id: &Value, data_json: &str) -> String {
    format!(r#"{{"type":"rpc_result","id":{id},"data":{data_json}}}"#)
}

/// `{"type":"presence",...}`.
pub fn presence(topic: &str, event: &str, session: &str, count: usize) -> String {
    format!(r#"{{"type":"presence","topic":{},"event":{},"session":{},"count":{count}}}"#, quote(topic), quote(event), quote(session))
}

/// `{"type":"presence",...,"user":U}`: with the user (a token's `sub`) of
/// an authenticated session.
pub fn presence_of(topic: &str, event: &str, session: &str, user: Option<&str>, count: usize) -> String {
    match user {
        None => presence(topic, event, session, count),
        Some(u) => format!(r#"{{"type":"presence","topic":{},"event":{},"session":{},"user":{},"count":{count}}}"#, quote(topic), quote(event), quote(session), quote(u)),
    }
}

/// A request a client sends; [`Request::to_json`] gives its text, which
/// [`parse`] reads back as the matching [`ClientMessage`].
#[derive(Clone, Copy, Debug)]
pub enum Request<'a> {
    /// `{"type":"chat","content":...}`.
    Chat {
        /// Any JSON.
        content: &'a Value,
    },
    /// `{"type":"publish","topic":"...","content":...,"key"?:"K"}`.
    Publish {
        /// The topic.
        topic: &'a str,
        /// Any JSON.
        content: &'a Value,
        /// The conflation key (e.g. a ticker symbol), if any.
        key: Option<&'a str>,
    },
    /// `{"type":"subscribe","topic":"...","since"?:N,"epoch"?:"E","delta"?:"merge-patch"}`.
    Subscribe {
        /// The topic.
        topic: &'a str,
        /// Resume after this sequence number.
        since: Option<u64>,
        /// The epoch `since` belongs to.
        epoch: Option<&'a str>,
        /// Ask for JSON Merge Patch deltas ([`super::delta`]).
        delta: bool,
    },
    /// `{"type":"unsubscribe","topic":"..."}`.
    Unsubscribe {
        /// The topic.
        topic: &'a str,
    },
    /// `{"type":"ping"}`.
    Ping,
    /// `{"type":"auth","token":"..."}`: the first message of a connection
    /// that sends its token in a message.
    Auth {
        /// The token.
        token: &'a str,
    },
    /// `{"type":"refresh","token":"..."}`: a new token for a live connection.
    Refresh {
        /// The token.
        token: &'a str,
    },
    /// `{"type":"rpc","method":"M","data":...}`: answered by the
    /// application's backend ([`Answer::RpcResult`] or an error).
    Rpc {
        /// The method name (at most [`MAX_METHOD_LEN`] bytes).
        method: &'a str,
        /// Any JSON.
        data: &'a Value,
    },
}

impl Request<'_> {
    /// The envelope's `type`.
    pub fn kind(&self) -> &'static str {
        match self {
            Request::Chat { .. } => "chat",
            Request::Publish { .. } => "publish",
            Request::Subscribe { .. } => "subscribe",
            Request::Unsubscribe { .. } => "unsubscribe",
            Request::Ping => "ping",
            Request::Rpc { .. } => "rpc",
            Request::Auth { .. } => "auth",
            Request::Refresh { .. } => "refresh",
        }
    }

    /// The envelope as JSON text, with the request `id` when given.
    pub fn to_json(&self, id: Option<&str>) -> String {
        let mut out = format!(r#"{{"type":{}"#, quote(self.kind()));
        match *self {
            Request::Chat { content } => out.push_str(&format!(r#","content":{content}"#)),
            Request::Publish { topic, content, key } => {
                out.push_str(&format!(r#","topic":{},"content":{content}"#, quote(topic)));
                if let Some(key) = key {
                    out.push_str(&format!(r#","key":{}"#, quote(key)));
                }
            }
            Request::Subscribe { topic, since, epoch, delta } => {
                out.push_str(&format!(r#","topic":{}"#, quote(topic)));
                if let Some(since) = since {
                    out.push_str(&format!(r#","since":{since}"#));
                }
                if let Some(epoch) = epoch {
                    out.push_str(&format!(r#","epoch":{}"#, quote(epoch)));
                }
                if delta {
                    out.push_str(&format!(r#","delta":{}"#, quote(super::delta::MERGE_PATCH)));
                }
            }
            Request::Unsubscribe { topic } => out.push_str(&format!(r#","topic":{}"#, quote(topic))),
            Request::Ping => {}
            Request::Rpc { method, data } => out.push_str(&format!(r#","method":{},"data":{data}"#, quote(method))),
            Request::Auth { token } | Request::Refresh { token } => out.push_str(&format!(r#","token":{}"#, quote(token))),
        }
        if let Some(id) = id {
            out.push_str(&format!(r#","id":{}"#, quote(id)));
        }
        out.push('}');
        out
    }
}

/// A server's answer to a request: an `ack` or an `error` that carries the
/// request's string `id` (what [`Request::to_json`] sent).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// `{"type":"ack",...}`.
    Ack {
        /// The request's id.
        id: String,
        /// The topic the request concerned.
        topic: Option<String>,
        /// For `publish` and `chat`: the sequence number the message got.
        seq: Option<u64>,
    },
    /// `{"type":"error",...}`.
    Error {
        /// The request's id.
        id: String,
        /// The machine-readable code.
        code: String,
        /// What was wrong.
        message: String,
    },
    /// `{"type":"rpc_result",...}`: the backend's answer to an `rpc`.
    RpcResult {
        /// The request's id.
        id: String,
        /// What the backend answered.
        data: Value,
    },
}

/// Read `text` from a server as an [`Answer`]; `None` for anything else
/// (messages, presence, errors without a string id, not JSON).
pub fn parse_answer(text: &str) -> Option<Answer> {
    if !text.contains("\"id\"") {
        return None;
    }
    let v: Value = serde_json::from_str(text).ok()?;
    let id = v.get("id").and_then(Value::as_str)?.to_owned();
    let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
    match v.get("type").and_then(Value::as_str)? {
        "ack" => Some(Answer::Ack { id, topic: s("topic"), seq: v.get("seq").and_then(Value::as_u64) }),
        "error" => Some(Answer::Error { id, code: s("code").unwrap_or_default(), message: s("message").unwrap_or_default() }),
        "rpc_result" => Some(Answer::RpcResult { id, data: v.get("data").cloned().unwrap_or(Value::Null) }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_type() {
        assert!(matches!(parse(r#"{"type":"chat","content":"Hello"}"#), Ok(ClientMessage::Chat { .. })));
        assert!(matches!(parse(r#"{"type":"publish","topic":"news","content":{"a":1},"id":7}"#), Ok(ClientMessage::Publish { ref topic, id: Some(_), .. }) if topic == "news"));
        assert!(matches!(parse(r#"{"type":"subscribe","topic":"news","since":3}"#), Ok(ClientMessage::Subscribe { since: Some(3), epoch: None, .. })));
        assert!(matches!(parse(r#"{"type":"subscribe","topic":"news","since":3,"epoch":"e1"}"#), Ok(ClientMessage::Subscribe { since: Some(3), epoch: Some(ref e), .. }) if e == "e1"));
        assert!(matches!(parse(r#"{"type":"unsubscribe","topic":"news"}"#), Ok(ClientMessage::Unsubscribe { .. })));
        assert!(matches!(parse(r#"{"type":"ping","id":"x"}"#), Ok(ClientMessage::Ping { .. })));
    }

    #[test]
    fn errors_say_what_is_wrong() {
        let code = |s: &str| parse(s).unwrap_err().code;
        assert_eq!(code("{not json"), "bad_json");
        assert_eq!(code("hello"), "bad_json");
        assert_eq!(code("[1,2]"), "not_an_object");
        assert_eq!(code(r#"{"content":"x"}"#), "missing_type");
        assert_eq!(code(r#"{"type":"dance"}"#), "unknown_type");
        assert_eq!(code(r#"{"type":"chat"}"#), "missing_field");
        assert_eq!(code(r#"{"type":"publish","content":1}"#), "missing_field");
        assert_eq!(code(r#"{"type":"publish","topic":5,"content":1}"#), "invalid_field");
        assert_eq!(code(r#"{"type":"subscribe","topic":"a\nINFO forged"}"#), "invalid_field");
        assert_eq!(code(&format!(r#"{{"type":"subscribe","topic":"{}"}}"#, "t".repeat(201))), "invalid_field");
        assert_eq!(code(r#"{"type":"subscribe","topic":""}"#), "invalid_field");
        assert_eq!(code(r#"{"type":"subscribe","topic":"t","since":-1}"#), "invalid_field");
        assert_eq!(code(r#"{"type":"subscribe","topic":"t","since":1,"epoch":7}"#), "invalid_field");
        assert_eq!(code(r#"{"type":"subscribe","topic":"t","epoch":"e"}"#), "missing_field");
        assert_eq!(code(r#"{"type":"subscribe","topic":"t","delta":"fossil"}"#), "invalid_field");
        assert_eq!(code(r#"{"type":"publish","topic":"t","content":1,"key":5}"#), "invalid_field");
        assert_eq!(code(r#"{"type":"publish","topic":"t","content":1,"key":""}"#), "invalid_field");
        assert_eq!(code(r#"{"type":"publish","topic":"t","content":1,"key":"a\u0000b"}"#), "invalid_field");
        assert_eq!(code(r#"{"type":"rpc","method":"m"}"#), "missing_field");
        assert_eq!(code(r#"{"type":"rpc","id":1}"#), "missing_field");
        assert_eq!(code(r#"{"type":"rpc","method":"","id":1}"#), "invalid_field");
        assert_eq!(code(&format!(r#"{{"type":"rpc","method":"{}","id":1}}"#, "m".repeat(101))), "invalid_field");
        assert!(matches!(parse(r#"{"type":"rpc","method":"m","id":1}"#), Ok(ClientMessage::Rpc { ref data, .. }) if data.get() == "null"));
        let e = parse(r#"{"type":"dance","id":42}"#).unwrap_err();
        assert_eq!(e.id, Some(serde_json::json!(42)));
    }

    #[test]
    fn built_envelopes_are_valid_json() {
        for s in [
            welcome("s-1", "/room \"x\""),
            message("news", "e1", 3, "s-1", 1700000000000, r#"{"a":[1,2]}"#),
            keyed_message("news", "e1", 3, "s-1", 1700000000000, Some("k\"1"), r#"{"a":[1,2]}"#),
            patch_message("news", "e1", 4, "s-1", 1700000000000, Some("k"), 3, r#"{"a":null}"#),
            ack(&serde_json::json!("req-1"), Some("news"), Some(("e1", 3))),
            history_gap("news", "e1", 4, "missed", Some(&serde_json::json!(2))),
            error("bad_json", "message is not \"valid\" JSON", None),
            presence("news", "join", "s-1", 2),
        ] {
            let v: Value = serde_json::from_str(&s).unwrap_or_else(|e| panic!("{s}: {e}"));
            assert!(v["type"].is_string());
        }
    }

    #[test]
    fn requests_parse_back() {
        let content = serde_json::json!({"a": [1, "x\"y"]});
        let kinds = [
            (Request::Chat { content: &content }, "chat"),
            (Request::Publish { topic: "news", content: &content, key: Some("k") }, "publish"),
            (Request::Subscribe { topic: "news", since: Some(3), epoch: Some("e1"), delta: true }, "subscribe"),
            (Request::Unsubscribe { topic: "news" }, "unsubscribe"),
            (Request::Ping, "ping"),
            (Request::Rpc { method: "cart.add", data: &content }, "rpc"),
            (Request::Auth { token: "a.b.c" }, "auth"),
            (Request::Refresh { token: "a.b.c" }, "refresh"),
        ];
        for (request, kind) in kinds {
            let text = request.to_json(Some("r1"));
            let v: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(v["type"], kind);
            assert_eq!(v["id"], "r1");
            parse(&text).unwrap_or_else(|e| panic!("{text}: {e:?}"));
        }
        assert!(matches!(parse(&Request::Subscribe { topic: "t", since: Some(3), epoch: Some("e"), delta: true }.to_json(None)),
            Ok(ClientMessage::Subscribe { since: Some(3), epoch: Some(_), id: None, delta: true, .. })));
        assert!(matches!(parse(&Request::Publish { topic: "t", content: &content, key: Some("AAPL") }.to_json(None)),
            Ok(ClientMessage::Publish { key: Some(ref k), .. }) if k == "AAPL"));
    }

    #[test]
    fn answers() {
        assert_eq!(parse_answer(&ack(&serde_json::json!("r1"), Some("news"), Some(("e1", 3)))),
            Some(Answer::Ack { id: "r1".into(), topic: Some("news".into()), seq: Some(3) }));
        assert_eq!(parse_answer(&error("invalid_field", "no", Some(&serde_json::json!("r2")))),
            Some(Answer::Error { id: "r2".into(), code: "invalid_field".into(), message: "no".into() }));
        assert_eq!(parse_answer(&error("bad_json", "no", None)), None);
        assert_eq!(parse_answer(&rpc_result(&serde_json::json!("r3"), r#"{"total":3}"#)),
            Some(Answer::RpcResult { id: "r3".into(), data: serde_json::json!({"total": 3}) }));
        assert_eq!(parse_answer(&welcome("s", "r")), None);
    }
}
