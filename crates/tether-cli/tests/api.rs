//! The server API (`/api/*`) against the real binary: keys and errors,
//! publish (with idempotency keys) reaching WebSocket subscribers, history,
//! presence, info, and disconnect; then on two nodes sharing one Redis,
//! where a retried publish sent to the other node is applied once and a
//! disconnect reaches the node that holds the session.

mod common;

use common::{Redis, Server};
use serde_json::{json, Value};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::timeout;

const KEY: &str = "test-api-key-0123";

/// One HTTP/1.1 request; returns (status, body as JSON or a string).
async fn http(port: u16, method: &str, path: &str, key: Option<&str>, body: &str) -> (u16, Value) {
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let key = key.map_or(String::new(), |k| format!("X-API-Key: {k}\r\n"));
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\n{key}Content-Length: {}\r\n\r\n",
        body.len()
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    tcp.write_all(body.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    timeout(Duration::from_secs(20), tcp.read_to_end(&mut out)).await.expect("answer in time").unwrap();
    let out = String::from_utf8_lossy(&out).to_string();
    let status = out.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, serde_json::from_str(&body).unwrap_or(Value::String(body)))
}

async fn api(port: u16, endpoint: &str, body: Value) -> (u16, Value) {
    http(port, "POST", &format!("/api/{endpoint}"), Some(KEY), &body.to_string()).await
}

/// A tether.v1 client: envelopes on a channel, `{"type":"_closed","code":N}` at the end.
struct Client {
    session: String,
    writer: tether::split::WsWriter<tether::MaybeTlsStream>,
    inbox: mpsc::UnboundedReceiver<Value>,
}

impl Client {
    async fn connect(url: &str) -> Client {
        let (ws, _) = tether::ClientBuilder::new(url).protocol("tether.v1").connect().await.unwrap();
        let (mut reader, writer) = ws.split();
        let (tx, mut inbox) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                match reader.recv().await {
                    Some(Ok(tether::Message::Text(t))) => {
                        let _ = tx.send(serde_json::from_str::<Value>(&t).unwrap());
                    }
                    Some(Ok(tether::Message::Close(frame))) => {
                        let _ = tx.send(json!({"type": "_closed", "code": frame.map(|f| f.code.0)}));
                        return;
                    }
                    Some(Ok(_)) => {}
                    _ => {
                        let _ = tx.send(json!({"type": "_closed", "code": null}));
                        return;
                    }
                }
            }
        });
        let welcome = timeout(Duration::from_secs(10), inbox.recv()).await.unwrap().unwrap();
        let session = welcome["session"].as_str().unwrap().to_string();
        Client { session, writer, inbox }
    }

    async fn next(&mut self) -> Value {
        timeout(Duration::from_secs(15), self.inbox.recv()).await.expect("a message within 15 s").expect("open")
    }

    /// The next envelope of `kind` (others skipped).
    async fn next_of(&mut self, kind: &str) -> Value {
        loop {
            let v = self.next().await;
            if v["type"] == kind || v["type"] == "_closed" {
                return v;
            }
        }
    }

    async fn subscribe(&mut self, topic: &str) {
        self.writer.send(json!({"type": "subscribe", "topic": topic, "id": topic}).to_string()).await.unwrap();
        let ack = self.next_of("ack").await;
        assert_eq!(ack["id"], topic, "{ack}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_errors_and_limits() {
    let off = Server::start(&[]);
    let (status, body) = api(off.port, "publish", json!({"topic": "t", "content": 1})).await;
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("api_disabled")), "{body}");

    let on = Server::start(&["--api-key", KEY, "--api-max-body", "4KiB", "--max-auth-failures", "3"]);
    let p = on.port;
    let body = json!({"topic": "t", "content": 1}).to_string();
    let (status, v) = http(p, "POST", "/api/publish", None, &body).await;
    assert_eq!((status, v["error"]["code"].as_str()), (401, Some("unauthorized")), "{v}");
    let (status, v) = http(p, "POST", "/api/publish", Some("wrong"), &body).await;
    assert_eq!((status, v["error"]["code"].as_str()), (403, Some("forbidden")), "{v}");
    let (status, v) = http(p, "GET", "/api/publish", Some(KEY), "").await;
    assert_eq!((status, v["error"]["code"].as_str()), (405, Some("method_not_allowed")), "{v}");
    let (status, v) = api(p, "nothing", json!({})).await;
    assert_eq!((status, v["error"]["code"].as_str()), (404, Some("not_found")), "{v}");
    let (status, v) = http(p, "POST", "/api/publish", Some(KEY), "{not json").await;
    assert_eq!((status, v["error"]["code"].as_str()), (400, Some("invalid_request")), "{v}");
    let (status, v) = api(p, "publish", json!({"topic": "t"})).await;
    assert_eq!((status, v["error"]["code"].as_str()), (400, Some("invalid_request")), "{v}");
    let (status, v) = api(p, "publish", json!({"topic": "t", "content": 1, "extra": true})).await;
    assert_eq!(status, 400, "unknown fields are refused: {v}");
    let (status, v) = api(p, "publish", json!({"topic": "$sys:stats", "content": 1})).await;
    assert_eq!((status, v["error"]["code"].as_str()), (400, Some("reserved_topic")), "{v}");
    let (status, v) = api(p, "publish", json!({"topic": "a\u{7}b", "content": 1})).await;
    assert_eq!((status, v["error"]["code"].as_str()), (400, Some("invalid_topic")), "{v}");
    let (status, v) = api(p, "publish", json!({"topic": "t", "content": "x".repeat(8000)})).await;
    assert_eq!((status, v["error"]["code"].as_str()), (413, Some("too_large")), "{v}");
    let (status, v) = api(p, "disconnect", json!({"session": "x", "code": 1005})).await;
    assert_eq!(status, 400, "1005 is not a code to send: {v}");
    let (status, v) = api(p, "broadcast", json!({"topics": [], "content": 1})).await;
    assert_eq!(status, 400, "{v}");
    let (status, doc) = http(p, "GET", "/api/openapi.json", None, "").await;
    assert_eq!(status, 200);
    assert_eq!(doc["openapi"].as_str().map(|v| &v[..2]), Some("3."), "an OpenAPI 3 document");
    assert!(doc["paths"]["/api/publish"]["post"].is_object());
    // /api/info takes no body or `{}`; JSON whitespace is no body, a form
    // feed is not JSON (schemathesis sent one).
    let (status, v) = http(p, "POST", "/api/info", Some(KEY), " \r\n\t").await;
    assert_eq!(status, 200, "{v}");
    let (status, v) = http(p, "POST", "/api/info", Some(KEY), "\x0c").await;
    assert_eq!(status, 400, "{v}");
    // Wrong keys are throttled per address, like WebSocket tokens: the
    // wrong key above and these two make the 3 allowed per minute.
    for _ in 0..2 {
        http(p, "POST", "/api/info", Some("guess"), "{}").await;
    }
    let (status, v) = api(p, "info", json!({})).await;
    assert_eq!((status, v["error"]["code"].as_str()), (429, Some("throttled")), "{v}");
    let (_, metrics) = http(p, "GET", "/metrics", None, "").await;
    let metrics = metrics.as_str().unwrap().to_string();
    assert!(metrics.contains("tether_api_requests_total{endpoint=\"publish\",status=\"401\"} 1"), "{metrics}");
    assert!(metrics.contains("tether_api_requests_total{endpoint=\"info\",status=\"429\"} 1"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_history_presence_info_disconnect_in_memory() {
    let server = Server::start(&["--api-key", KEY]);
    let p = server.port;
    let mut alice = Client::connect(&server.url("/lobby")).await;
    alice.subscribe("news").await;

    let (status, first) = api(p, "publish", json!({"topic": "news", "content": {"n": 1}, "idempotency_key": "order-1"})).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["duplicate"], false);
    let (status, again) = api(p, "publish", json!({"topic": "news", "content": {"n": 1}, "idempotency_key": "order-1"})).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!((&again["epoch"], &again["seq"], &again["duplicate"]), (&first["epoch"], &first["seq"], &json!(true)));
    let (status, v) = api(p, "publish", json!({"topic": "other", "content": 1, "idempotency_key": "order-1"})).await;
    assert_eq!((status, v["error"]["code"].as_str()), (409, Some("idempotency_conflict")), "{v}");
    let (_, after) = api(p, "publish", json!({"topic": "news", "content": "after"})).await;
    assert_eq!(after["seq"].as_u64(), first["seq"].as_u64().map(|s| s + 1), "the retry took no sequence number");

    // One delivery of the keyed publish, then the next one.
    let m = alice.next_of("message").await;
    assert_eq!((&m["content"], &m["seq"]), (&json!({"n": 1}), &first["seq"]), "{m}");
    assert!(m["sender"].as_str().unwrap().ends_with("-api"), "{m}");
    let m = alice.next_of("message").await;
    assert_eq!(m["content"], "after", "the retry was not delivered again: {m}");

    let (status, b) = api(p, "broadcast", json!({"topics": ["news", "/lobby"], "content": "both"})).await;
    assert_eq!(status, 200, "{b}");
    assert_eq!(b["results"].as_array().unwrap().len(), 2);
    let mut got = vec![alice.next_of("message").await["topic"].clone(), alice.next_of("message").await["topic"].clone()];
    got.sort_by_key(|t| t.to_string());
    assert_eq!(got, vec![json!("/lobby"), json!("news")]);

    let (status, h) = api(p, "history", json!({"topic": "news", "limit": 2})).await;
    assert_eq!(status, 200, "{h}");
    let contents: Vec<&Value> = h["messages"].as_array().unwrap().iter().map(|m| &m["content"]).collect();
    assert_eq!(contents, vec![&json!("after"), &json!("both")], "{h}");
    assert_eq!(h["last_seq"], 3);
    let (_, h) = api(p, "history", json!({"topic": "news", "since": 2})).await;
    assert_eq!(h["messages"].as_array().unwrap().len(), 1, "{h}");

    let (status, pr) = api(p, "presence", json!({"topic": "news"})).await;
    assert_eq!(status, 200, "{pr}");
    assert_eq!(pr["sessions"], json!([{"session": alice.session, "node": alice.session.split('-').next().unwrap()}]));
    let (status, info) = api(p, "info", json!({})).await;
    assert_eq!(status, 200, "{info}");
    assert_eq!((info["connections"].as_u64(), info["nodes"].as_array().map(Vec::len)), (Some(1), Some(1)), "{info}");

    let (status, d) = api(p, "disconnect", json!({"session": alice.session, "code": 4321})).await;
    assert_eq!((status, &d["local"]), (200, &json!(true)), "{d}");
    let closed = alice.next_of("_closed").await;
    assert_eq!(closed["code"], 4321, "{closed}");
    let (status, d) = api(p, "disconnect", json!({"session": alice.session})).await;
    assert_eq!((status, &d["local"]), (200, &json!(false)), "already gone: {d}");
}

/// An HS256 JWT for `user`, allowed every topic, valid for an hour.
fn token(secret: &str, user: &str) -> String {
    use base64::Engine;
    let b64 = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
    let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 3600;
    let head = b64(br#"{"alg":"HS256","typ":"JWT"}"#);
    let claims = b64(json!({"sub": user, "exp": exp, "subscribe": ["*"], "publish": ["*"], "presence": ["*"]}).to_string().as_bytes());
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let sig = ring::hmac::sign(&key, format!("{head}.{claims}").as_bytes());
    format!("{head}.{claims}.{}", b64(sig.as_ref()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_a_user_closes_each_of_its_sessions() {
    let secret = "jwt-secret-for-the-api-test";
    let server = Server::start(&["--api-key", KEY, "--jwt-secret", secret]);
    let mut bob1 = Client::connect(&server.url(&format!("/lobby?token={}", token(secret, "bob")))).await;
    let mut bob2 = Client::connect(&server.url(&format!("/lobby?token={}", token(secret, "bob")))).await;
    let mut carol = Client::connect(&server.url(&format!("/lobby?token={}", token(secret, "carol")))).await;
    let (status, d) = api(server.port, "disconnect", json!({"user": "bob", "code": 4002})).await;
    assert_eq!(status, 200, "{d}");
    assert_eq!(d["local_sessions"], 2, "{d}");
    for bob in [&mut bob1, &mut bob2] {
        let closed = bob.next_of("_closed").await;
        assert_eq!(closed["code"], 4002, "{closed}");
    }
    carol.subscribe("still-here").await;
    let (status, d) = api(server.port, "disconnect", json!({"user": "bob", "session": carol.session})).await;
    assert_eq!(status, 400, "one of session and user: {d}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_on_redis_apply_a_retried_publish_once() {
    let Some(redis) = Redis::start() else { return };
    let url = redis.url();
    let a = Server::start(&["--broker", &url, "--api-key", KEY]);
    let b = Server::start(&["--broker", &url, "--api-key", KEY]);
    // Until a node has connected to Redis its publishes are refused (503).
    for node in [&a, &b] {
        for _ in 0..200 {
            if common::http_get(node.port, "/health").await.0 == 200 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let mut sub = Client::connect(&a.url("/room")).await;
    sub.subscribe("orders").await;

    // The publish goes to node b; its retry (say the answer was lost) to node a.
    let body = json!({"topic": "orders", "content": {"id": 7}, "idempotency_key": "order-7"});
    let (status, first) = api(b.port, "publish", body.clone()).await;
    assert_eq!(status, 200, "{first}");
    let (status, retry) = api(a.port, "publish", body).await;
    assert_eq!(status, 200, "{retry}");
    assert_eq!((&retry["epoch"], &retry["seq"], &retry["duplicate"]), (&first["epoch"], &first["seq"], &json!(true)), "{retry}");
    let (_, next) = api(a.port, "publish", json!({"topic": "orders", "content": "next"})).await;
    let m = sub.next_of("message").await;
    assert_eq!((&m["content"], &m["seq"]), (&json!({"id": 7}), &first["seq"]), "{m}");
    let m = sub.next_of("message").await;
    assert_eq!((&m["content"], &m["seq"]), (&json!("next"), &next["seq"]), "one delivery only: {m}");

    // Presence and info cover both nodes; a disconnect sent to b closes a's session.
    let (_, pr) = api(b.port, "presence", json!({"topic": "orders"})).await;
    assert_eq!(pr["sessions"][0]["session"], sub.session.as_str(), "{pr}");
    let mut nodes = 0;
    for _ in 0..100 {
        let (_, info) = api(b.port, "info", json!({})).await;
        // Each node's figures are refreshed every 5 s.
        nodes = info["nodes"].as_array().map_or(0, |n| n.iter().filter(|n| n["connections"].is_u64()).count());
        if nodes == 2 && info["connections"] == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(nodes, 2, "both nodes' figures in /api/info, with the one connection");
    let (status, d) = api(b.port, "disconnect", json!({"session": sub.session, "code": 4001})).await;
    assert_eq!((status, &d["local"]), (200, &json!(false)), "{d}");
    let closed = sub.next_of("_closed").await;
    assert_eq!(closed["code"], 4001, "{closed}");
    let (_, h) = api(b.port, "history", json!({"topic": "orders"})).await;
    assert_eq!(h["messages"].as_array().map(Vec::len), Some(2), "{h}");
}
