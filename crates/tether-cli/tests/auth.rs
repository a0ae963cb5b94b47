//! JWT connection tokens against the real binary (docs/auth.md): what a
//! token's capabilities allow and refuse, refusals at the handshake (401,
//! 403), the first-message `auth` of browsers, expiry (warned, then
//! closed) and `refresh`, RS256/ES256 PEM keys, and a JWKS file rotated
//! without a restart.

mod common;

use common::{metric, next_envelope as next, v1_bearer as connect, Server, Ws};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tether::{ClientBuilder, CloseCode, Message};
use tokio::time::timeout;

const SECRET: &str = "test-secret-of-tests-auth-rs";
const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/jwt");

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn claims(user: &str, exp: u64, caps: &[&str]) -> Value {
    json!({"sub": user, "exp": exp, "subscribe": caps, "publish": caps, "presence": caps})
}

fn hs256(claims: &Value, secret: &str) -> String {
    encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(secret.as_bytes())).unwrap()
}

fn signed(alg: Algorithm, key_file: &str, kid: Option<&str>, claims: &Value) -> String {
    let pem = std::fs::read(format!("{FIXTURES}/{key_file}")).unwrap();
    let key = match alg {
        Algorithm::ES256 => EncodingKey::from_ec_pem(&pem).unwrap(),
        _ => EncodingKey::from_rsa_pem(&pem).unwrap(),
    };
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_string);
    encode(&header, claims, &key).unwrap()
}


async fn send(ws: &mut Ws, v: Value) {
    ws.send(v.to_string()).await.unwrap();
}

async fn status(server: &Server, path: &str, bearer: Option<&str>) -> Option<u16> {
    connect(server, path, bearer).await.err().and_then(|e| e.http_status())
}

#[tokio::test]
async fn a_chat_token_subscribes_to_chat_lobby_and_is_refused_admin_with_a_code() {
    let server = Server::start(&["--jwt-secret", SECRET]);
    let token = hs256(&claims("alice", now() + 600, &["chat:*"]), SECRET);
    let mut ws = connect(&server, "/", Some(&token)).await.unwrap();
    send(&mut ws, json!({"type":"subscribe","topic":"chat:lobby","id":1})).await;
    let ack = next(&mut ws).await;
    assert_eq!((ack["type"].as_str(), ack["id"].as_i64()), (Some("ack"), Some(1)), "{ack}");
    send(&mut ws, json!({"type":"subscribe","topic":"admin:x","id":2})).await;
    let refused = next(&mut ws).await;
    assert_eq!((refused["type"].as_str(), refused["code"].as_str(), refused["id"].as_i64()), (Some("error"), Some("forbidden"), Some(2)), "{refused}");
    send(&mut ws, json!({"type":"publish","topic":"admin:x","content":1,"id":3})).await;
    assert_eq!(next(&mut ws).await["code"], "forbidden");
    // ?token= works too, and what alice publishes carries her name.
    let (mut bob, _) = ClientBuilder::new(server.url(&format!("/?token={}", hs256(&claims("bob", now() + 600, &["chat:*"]), SECRET)))).protocol("tether.v1").connect().await.unwrap();
    assert_eq!(next(&mut bob).await["type"], "welcome");
    send(&mut bob, json!({"type":"subscribe","topic":"chat:lobby","id":1})).await;
    assert_eq!(next(&mut bob).await["type"], "ack");
    send(&mut ws, json!({"type":"publish","topic":"chat:lobby","content":"hello"})).await;
    let msg = next(&mut bob).await;
    assert_eq!((msg["type"].as_str(), msg["sender"].as_str(), msg["content"].as_str()), (Some("message"), Some("alice"), Some("hello")), "{msg}");
    assert_eq!(metric(server.port, r#"tether_auth_decisions_total{result="allowed",reason="jwt"}"#).await, 2.0);
    assert_eq!(metric(server.port, r#"tether_auth_decisions_total{result="refused",reason="subscribe"}"#).await, 1.0);
}

#[tokio::test]
async fn expired_badly_signed_and_missing_tokens_are_refused_at_the_handshake() {
    let server = Server::start(&["--jwt-secret", SECRET, "--token", "shared-s3cret"]);
    let caps = ["chat:*", "/lobby"];
    assert_eq!(status(&server, "/", Some(&hs256(&claims("eve", now() - 5, &caps), SECRET))).await, Some(401), "expired");
    assert_eq!(status(&server, "/", Some(&hs256(&claims("eve", now() + 600, &caps), "another-secret"))).await, Some(401), "bad signature");
    let good = hs256(&claims("eve", now() + 600, &caps), SECRET);
    let mut parts: Vec<String> = good.split('.').map(str::to_string).collect();
    parts[1] = hs256(&claims("root", now() + 600, &["*"]), SECRET).split('.').nth(1).unwrap().to_string();
    assert_eq!(status(&server, "/", Some(&parts.join("."))).await, Some(401), "payload swapped under a valid signature");
    assert_eq!(status(&server, "/", Some("not-a-jwt")).await, Some(401), "garbage");
    // A room (URL path) the token does not allow: 403.
    assert_eq!(status(&server, "/admin", Some(&good)).await, Some(403));
    // Plain clients cannot send an auth message: no token is a 401.
    let err = ClientBuilder::new(server.url("/")).connect().await.unwrap_err();
    assert_eq!(err.http_status(), Some(401));
    // The good token and the shared token both work.
    connect(&server, "/lobby", Some(&good)).await.unwrap();
    let mut shared = connect(&server, "/", Some("shared-s3cret")).await.unwrap();
    send(&mut shared, json!({"type":"subscribe","topic":"admin:x","id":1})).await;
    assert_eq!(next(&mut shared).await["type"], "ack", "the shared token allows everything, as before");
    assert_eq!(metric(server.port, r#"tether_auth_decisions_total{result="refused",reason="expired"}"#).await, 1.0);
    assert_eq!(metric(server.port, r#"tether_auth_decisions_total{result="refused",reason="bad_signature"}"#).await, 2.0);
}

#[tokio::test]
async fn a_browser_sends_its_token_in_a_first_auth_message() {
    let server = Server::start(&["--jwt-secret", SECRET]);
    let mut ws = connect(&server, "/", None).await.unwrap();
    send(&mut ws, json!({"type":"subscribe","topic":"chat:a","id":1})).await;
    assert_eq!(next(&mut ws).await["code"], "unauthorized");
    send(&mut ws, json!({"type":"auth","token":hs256(&claims("eve", now() - 5, &["chat:*"]), SECRET),"id":2})).await;
    let v = next(&mut ws).await;
    assert_eq!((v["code"].as_str(), v["id"].as_i64()), (Some("expired"), Some(2)), "{v}");
    send(&mut ws, json!({"type":"connect","token":hs256(&claims("eve", now() + 600, &["chat:*"]), SECRET),"id":3})).await;
    let v = next(&mut ws).await;
    assert_eq!((v["type"].as_str(), v["user"].as_str()), (Some("authenticated"), Some("eve")), "{v}");
    send(&mut ws, json!({"type":"subscribe","topic":"chat:a","id":4})).await;
    assert_eq!(next(&mut ws).await["type"], "ack");
}

#[tokio::test]
async fn an_expiring_connection_is_warned_then_closed_unless_it_refreshes() {
    let server = Server::start(&["--jwt-secret", SECRET, "--token-expiry-warning", "2s", "--token-expiry-grace", "1s", "--heartbeat-interval", "300ms"]);
    let exp = now() + 3;
    let mut lazy = connect(&server, "/", Some(&hs256(&claims("lazy", exp, &["chat:*"]), SECRET))).await.unwrap();
    // Read by a task all along (so it keeps answering the heartbeat).
    let keen_url = server.url(&format!("/?token={}", hs256(&claims("keen", exp, &["chat:*"]), SECRET)));
    let (mut keen, mut keen_inbox) = common::v1_split(&keen_url, "keen").await;
    let mut keen_next = async || loop {
        let v = timeout(Duration::from_secs(20), keen_inbox.recv()).await.expect("a message within 20 s").unwrap();
        if v["type"] != "presence" && v["type"] != "welcome" {
            return v;
        }
    };
    for warning in [next(&mut lazy).await, keen_next().await] {
        assert_eq!((warning["type"].as_str(), warning["expires_at"].as_u64()), (Some("token_expiring"), Some(exp)), "{warning}");
        assert!(warning["close_at"].as_u64().unwrap() >= exp);
    }
    let refresh = json!({"type":"refresh","token":hs256(&claims("keen", now() + 600, &["chat:*"]), SECRET),"id":"r"});
    keen.send(Message::text(refresh.to_string())).await.unwrap();
    let v = keen_next().await;
    assert_eq!((v["type"].as_str(), v["id"].as_str()), (Some("authenticated"), Some("r")), "{v}");
    // The lazy one is closed with 1008...
    loop {
        match timeout(Duration::from_secs(20), lazy.recv()).await.expect("closed within 20 s") {
            Some(Ok(Message::Close(Some(frame)))) => {
                assert_eq!(frame.code, CloseCode::POLICY_VIOLATION);
                assert_eq!(&*frame.reason, "authentication expired");
                break;
            }
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
    // ...and, past the same deadline, the one that refreshed still answers.
    keen.send(Message::text(json!({"type":"ping","id":"still-here"}).to_string())).await.unwrap();
    assert_eq!(keen_next().await["id"], "still-here");
    assert_eq!(metric(server.port, r#"tether_auth_decisions_total{result="closed",reason="expired"}"#).await, 1.0);
}

#[tokio::test]
async fn rs256_and_es256_public_keys_in_pem() {
    let rsa = format!("{FIXTURES}/rsa1.pub");
    let ec = format!("{FIXTURES}/ec1.pub");
    let server = Server::start(&["--jwt-public-key", &rsa, "--jwt-public-key", &ec]);
    let c = claims("rita", now() + 600, &["chat:*"]);
    connect(&server, "/", Some(&signed(Algorithm::RS256, "rsa1.key", None, &c))).await.unwrap();
    connect(&server, "/", Some(&signed(Algorithm::ES256, "ec1.key", None, &c))).await.unwrap();
    assert_eq!(status(&server, "/", Some(&signed(Algorithm::RS256, "rsa2.key", None, &c))).await, Some(401), "an unknown RSA key");
    // An HS256 token cannot borrow the public key as its secret.
    let pem = std::fs::read_to_string(&rsa).unwrap();
    assert_eq!(status(&server, "/", Some(&hs256(&c, &pem))).await, Some(401), "alg confusion");
}

#[tokio::test]
async fn a_rotated_jwks_file_takes_effect_without_a_restart() {
    let dir = std::env::temp_dir().join(format!("tether-jwks-{}-{}", std::process::id(), now()));
    std::fs::create_dir_all(&dir).unwrap();
    let jwks = dir.join("jwks.json");
    std::fs::copy(format!("{FIXTURES}/jwks-k1.json"), &jwks).unwrap();
    let server = Server::start(&["--jwt-jwks-file", jwks.to_str().unwrap()]);
    let c = claims("kim", now() + 600, &["chat:*"]);
    let k1 = signed(Algorithm::RS256, "rsa1.key", Some("k1"), &c);
    let k2 = signed(Algorithm::RS256, "rsa2.key", Some("k2"), &c);
    connect(&server, "/", Some(&k1)).await.unwrap();
    assert_eq!(status(&server, "/", Some(&k2)).await, Some(401), "k2 is not published yet");
    // Rotate: write the new set beside it and rename it into place.
    let next_set = dir.join("jwks.json.new");
    std::fs::copy(format!("{FIXTURES}/jwks-k1-k2.json"), &next_set).unwrap();
    std::fs::rename(&next_set, &jwks).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        match connect(&server, "/", Some(&k2)).await {
            Ok(_) => break,
            Err(e) if e.http_status() == Some(401) && std::time::Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(200)).await,
            Err(e) => panic!("k2 still refused after the rotation: {e}"),
        }
    }
    connect(&server, "/", Some(&k1)).await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_client_sends_a_token_from_its_function_and_refreshes_it_before_it_expires() {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;
    use tether::reconnect::{Event, ReconnectOptions, TokenSource};
    let server = Server::start(&["--jwt-secret", SECRET, "--token-expiry-warning", "2s", "--token-expiry-grace", "1s", "--heartbeat-interval", "300ms"]);
    let calls = Arc::new(AtomicU32::new(0));
    let first_exp = now() + 3;
    let counted = calls.clone();
    let token = TokenSource::fetch(move || {
        let n = counted.fetch_add(1, Ordering::SeqCst);
        async move { Ok(hs256(&claims("ruby", if n == 0 { first_exp } else { now() + 600 }, &["chat:*"]), SECRET)) }
    });
    // No header: the token goes in the first message, as a browser's.
    let options = ReconnectOptions { json: true, token: Some(token), refresh_ahead: Duration::from_secs(1), ..ReconnectOptions::default() };
    let mut client = tether::ReconnectingClient::new(ClientBuilder::new(server.url("/")), options);
    let sender = client.sender();
    let (tx, mut authenticated) = tokio::sync::mpsc::unbounded_channel();
    let (lost_tx, mut lost) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(event) = client.next_event().await {
            match event {
                Event::Message(Message::Text(t)) if t.contains("\"authenticated\"") => {
                    let _ = tx.send(serde_json::from_str::<Value>(&t).unwrap());
                }
                Event::Close { .. } | Event::Reconnecting { .. } => {
                    let _ = lost_tx.send(());
                }
                _ => {}
            }
        }
    });
    let first = timeout(Duration::from_secs(20), authenticated.recv()).await.unwrap().unwrap();
    assert_eq!((first["user"].as_str(), first["id"].as_str(), first["expires_at"].as_u64()), (Some("ruby"), Some("auth"), Some(first_exp)), "{first}");
    assert_eq!(sender.subscribe("chat:lobby").await.unwrap().topic.as_deref(), Some("chat:lobby"), "the grants of the token are in force");
    let renewed = timeout(Duration::from_secs(20), authenticated.recv()).await.unwrap().unwrap();
    assert_eq!(renewed["id"], "refresh", "{renewed}");
    assert!(renewed["expires_at"].as_u64().unwrap() > first_exp + 60, "{renewed}");
    // Past the first token's close_at (exp + 1 s of grace), the same connection answers.
    while now() <= first_exp + 2 {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    sender.publish("chat:lobby", json!("still here")).await.unwrap();
    assert!(lost.try_recv().is_err(), "the connection was never lost");
    assert_eq!(calls.load(Ordering::SeqCst), 2, "one token per connection, one per refresh");
    let (_, metrics) = common::http_get(server.port, "/metrics").await;
    assert!(!metrics.contains(r#"result="closed",reason="expired""#), "no connection was closed for an expired token");
}

/// The next presence event.
async fn next_presence(ws: &mut Ws) -> Value {
    loop {
        match timeout(Duration::from_secs(20), ws.recv()).await.expect("a message within 20 s") {
            Some(Ok(Message::Text(t))) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                if v["type"] == "presence" {
                    return v;
                }
            }
            Some(Ok(_)) => continue,
            other => panic!("expected an envelope, got {other:?}"),
        }
    }
}

async fn api_presence(port: u16, topic: &str) -> Value {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = json!({ "topic": topic }).to_string();
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let head = format!("POST /api/presence HTTP/1.1\r\nHost: localhost\r\nX-API-Key: k\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
    tcp.write_all(format!("{head}{body}").as_bytes()).await.unwrap();
    let mut out = String::new();
    tcp.read_to_string(&mut out).await.unwrap();
    serde_json::from_str(out.split_once("\r\n\r\n").unwrap().1).unwrap()
}

async fn presence_names_the_user(broker: &str) {
    let server = Server::start(&["--jwt-secret", SECRET, "--broker", broker, "--api-key", "k"]);
    let caps = ["chat:*"];
    let mut ann = connect(&server, "/", Some(&hs256(&claims("ann", now() + 600, &caps), SECRET))).await.unwrap();
    let mut bob = connect(&server, "/", Some(&hs256(&claims("bob", now() + 600, &caps), SECRET))).await.unwrap();
    send(&mut ann, json!({"type":"subscribe","topic":"chat:p","id":1})).await;
    assert_eq!(next(&mut ann).await["type"], "ack");
    send(&mut bob, json!({"type":"subscribe","topic":"chat:p","id":2})).await;
    assert_eq!(next(&mut bob).await["type"], "ack");
    let join = loop {
        let v = next_presence(&mut ann).await;
        if v["event"] == "join" && v["user"] == "bob" {
            break v;
        }
        assert_eq!(v["user"], "ann", "only ann's own join comes before: {v}");
    };
    assert!(join["session"].as_str().unwrap().contains('-'), "the session too: {join}");
    let listed = api_presence(server.port, "chat:p").await;
    let mut users: Vec<&str> = listed["sessions"].as_array().unwrap().iter().map(|s| s["user"].as_str().unwrap()).collect();
    users.sort();
    assert_eq!(users, ["ann", "bob"], "{listed} ({broker})");
    send(&mut bob, json!({"type":"unsubscribe","topic":"chat:p","id":3})).await;
    let leave = next_presence(&mut ann).await;
    assert_eq!((leave["event"].as_str(), leave["user"].as_str()), (Some("leave"), Some("bob")), "{leave} ({broker})");
}

#[tokio::test]
async fn presence_events_and_the_api_name_the_user() {
    presence_names_the_user("memory").await;
    if let Some(redis) = common::Redis::start() {
        presence_names_the_user(&redis.url()).await;
    }
}
