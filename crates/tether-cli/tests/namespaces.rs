//! Namespaces from the TOML file against the real binary (docs/auth.md):
//! a server-only namespace, one where subscribers publish, presence off,
//! and the latest value on subscribe.

mod common;

use common::Server;
use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::{json, Value};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tether::{ClientBuilder, Message, MaybeTlsStream, WebSocket};
use tokio::time::timeout;

const SECRET: &str = "namespaces-test-secret";
type Ws = WebSocket<MaybeTlsStream>;

fn token(user: &str) -> String {
    let exp = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 600;
    let claims = json!({"sub": user, "exp": exp, "subscribe": ["news:*", "room:*", "prices:*", "chat:*"], "publish": ["prices:*"], "presence": ["*"]});
    encode(&Header::default(), &claims, &EncodingKey::from_secret(SECRET.as_bytes())).unwrap()
}

async fn connect(server: &Server, user: &str) -> Ws {
    let (mut ws, _) = ClientBuilder::new(server.url("/")).protocol("tether.v1").header("Authorization", format!("Bearer {}", token(user))).connect().await.unwrap();
    assert_eq!(next(&mut ws).await["type"], "welcome");
    ws
}

/// The next envelope, presence included.
async fn next(ws: &mut Ws) -> Value {
    loop {
        match timeout(Duration::from_secs(20), ws.recv()).await.expect("a message within 20 s") {
            Some(Ok(Message::Text(t))) => return serde_json::from_str(&t).unwrap(),
            Some(Ok(_)) => continue,
            other => panic!("expected an envelope, got {other:?}"),
        }
    }
}

async fn next_not_presence(ws: &mut Ws) -> Value {
    loop {
        let v = next(ws).await;
        if v["type"] != "presence" {
            return v;
        }
    }
}

async fn send(ws: &mut Ws, v: Value) {
    ws.send(v.to_string()).await.unwrap();
}

/// Envelopes up to and including the next ack.
async fn until_ack(ws: &mut Ws) -> Vec<Value> {
    let mut saw = Vec::new();
    while saw.last().is_none_or(|v: &Value| v["type"] != "ack") {
        saw.push(next(ws).await);
    }
    saw
}

fn server() -> Server {
    let dir = std::env::temp_dir().join(format!("tether-ns-{}-{:?}", std::process::id(), std::thread::current().id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tether.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[jwt]
secret = "{SECRET}"

[namespaces."news:"]
publish = "server"

[namespaces."room:"]
publish = "subscribers"
presence = false

[namespaces."prices:"]
latest-on-subscribe = true
"#
        ),
    )
    .unwrap();
    Server::start(&["--config", path.to_str().unwrap()])
}

#[tokio::test]
async fn publish_rules_of_namespaces() {
    let server = server();
    let mut ws = connect(&server, "ann").await;
    send(&mut ws, json!({"type":"publish","topic":"news:x","content":1,"id":1})).await;
    let v = next(&mut ws).await;
    assert_eq!((v["code"].as_str(), v["id"].as_i64()), (Some("forbidden"), Some(1)), "{v}");
    assert!(v["message"].as_str().unwrap().contains("server API only"), "{v}");
    // room: subscribers publish, whatever the token's publish patterns say.
    send(&mut ws, json!({"type":"publish","topic":"room:a","content":1,"id":2})).await;
    assert_eq!(next(&mut ws).await["code"], "forbidden");
    send(&mut ws, json!({"type":"subscribe","topic":"room:a","id":3})).await;
    assert_eq!(next(&mut ws).await["type"], "ack");
    send(&mut ws, json!({"type":"publish","topic":"room:a","content":"in","id":4})).await;
    let mut got = vec![next(&mut ws).await, next(&mut ws).await];
    got.sort_by_key(|v| v["type"].as_str().unwrap().to_string());
    assert_eq!((got[0]["type"].as_str(), got[1]["type"].as_str(), got[1]["content"].as_str()), (Some("ack"), Some("message"), Some("in")), "{got:?}");
    // Outside any namespace, the token decides: no publish pattern for other:.
    send(&mut ws, json!({"type":"publish","topic":"other:b","content":1,"id":5})).await;
    assert_eq!(next(&mut ws).await["code"], "forbidden");
}

#[tokio::test]
async fn presence_off_and_the_latest_value_on_subscribe() {
    let server = server();
    let mut a = connect(&server, "a").await;
    let mut b = connect(&server, "b").await;
    let mut saw = Vec::new();
    for ws in [&mut a, &mut b] {
        for (id, topic) in [(1, "room:q"), (2, "chat:q")] {
            send(ws, json!({"type":"subscribe","topic":topic,"id":id})).await;
            saw.extend(until_ack(ws).await);
        }
    }
    // a hears b join chat:q (presence on): after it, nothing more is queued
    // for a but what comes next; room:q (presence off) was never announced.
    let v = next(&mut a).await;
    assert_eq!((v["type"].as_str(), v["topic"].as_str(), v["event"].as_str()), (Some("presence"), Some("chat:q"), Some("join")), "{v}");
    assert!(saw.iter().any(|v| v["type"] == "presence"), "presence is on for chat:q: {saw:?}");
    assert!(saw.iter().all(|v| v["topic"] != "room:q" || v["type"] != "presence"), "no presence for room:q: {saw:?}");
    send(&mut a, json!({"type":"publish","topic":"room:q","content":"x","id":"r"})).await;
    let v = next(&mut a).await;
    assert!(v["type"] != "presence", "{v}");

    for price in [1, 2] {
        send(&mut a, json!({"type":"publish","topic":"prices:ttr","content":price,"id":format!("p{price}")})).await;
        loop {
            if next(&mut a).await["id"] == format!("p{price}") {
                break;
            }
        }
    }
    let mut c = connect(&server, "c").await;
    send(&mut c, json!({"type":"subscribe","topic":"prices:ttr","id":"s"})).await;
    let first = next_not_presence(&mut c).await;
    assert_eq!((first["type"].as_str(), first["content"].as_i64()), (Some("message"), Some(2)), "the newest at once: {first}");
    assert_eq!(next_not_presence(&mut c).await["id"], "s");
    send(&mut a, json!({"type":"publish","topic":"prices:ttr","content":3})).await;
    let live = next_not_presence(&mut c).await;
    assert_eq!(live["content"], 3, "then live, and never the older 1: {live}");
}

/// Messages a fresh subscriber resuming from the start (`since` 0) is
/// replayed, by sequence number.
async fn replayed(ws: &mut Ws, topic: &str) -> Vec<u64> {
    send(ws, json!({"type":"subscribe","topic":topic,"since":0,"id":format!("s-{topic}")})).await;
    until_ack(ws).await.iter().filter(|v| v["type"] == "message").map(|v| v["seq"].as_u64().unwrap()).collect()
}

async fn history_per_namespace(broker: &str) {
    let dir = std::env::temp_dir().join(format!("tether-ns-history-{}-{}", std::process::id(), broker.len()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tether.toml");
    let config = format!("[jwt]\nsecret = \"{SECRET}\"\n\n[namespaces.\"prices:short:\"]\nhistory-size = 2\n\n[namespaces.\"prices:brief:\"]\nhistory-ttl = \"1ms\"\n");
    std::fs::write(&path, config).unwrap();
    let server = Server::start(&["--config", path.to_str().unwrap(), "--broker", broker, "--history-size", "4"]);
    // Until the broker is connected, publishes are refused.
    while common::http_get(server.port, "/health").await.0 != 200 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut a = connect(&server, "a").await;
    for topic in ["prices:short:x", "prices:brief:x", "prices:x"] {
        for n in 1..=6 {
            let id = format!("{topic}-{n}");
            send(&mut a, json!({"type":"publish","topic":topic,"content":n,"id":id})).await;
            let answer = loop {
                let v = next(&mut a).await;
                if v["id"] == id {
                    break v;
                }
            };
            assert_eq!(answer["type"], "ack", "{answer}");
        }
    }
    // Older than prices:brief:'s 1 ms for sure.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut b = connect(&server, "b").await;
    assert_eq!(replayed(&mut b, "prices:short:x").await, [5, 6], "its namespace keeps 2 ({broker})");
    assert_eq!(replayed(&mut b, "prices:x").await, [3, 4, 5, 6], "the server-wide --history-size 4 ({broker})");
    assert_eq!(replayed(&mut b, "prices:brief:x").await, Vec::<u64>::new(), "its namespace keeps 1 ms ({broker})");
}

#[tokio::test]
async fn history_size_and_age_per_namespace() {
    history_per_namespace("memory").await;
    if let Some(redis) = common::Redis::start() {
        history_per_namespace(&redis.url()).await;
    }
}
