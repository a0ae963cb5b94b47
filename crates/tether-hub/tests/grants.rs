//! [`Grants`] enforced by the hub, in-process over in-memory streams: what
//! a token's capabilities allow and refuse (with coded errors), the sender
//! name, presence filtering, and the `auth` / `refresh` requests checked
//! by an [`Authenticator`].

use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use tether::{Accept, ClientRequest, Config, Message, WebSocket};
use tether_hub::{AuthError, ConnInfo, Grants, Hub, HubConfig, Identity, MemoryBroker, TopicPatterns, PROTOCOL_V1};
use tokio::io::DuplexStream;
use tokio::time::timeout;

type Ws = WebSocket<DuplexStream>;

fn grants(user: &str, subscribe: &[&str], publish: &[&str], presence: &[&str]) -> Identity {
    let p = |l: &[&str]| TopicPatterns::new(l.iter().copied()).unwrap();
    Identity::Granted(Arc::new(Grants { user: user.into(), subscribe: p(subscribe), publish: p(publish), presence: p(presence), expires_at: None }))
}

async fn join(hub: &Arc<Hub>, path: &str, identity: Identity) -> Ws {
    let (server_io, client_io) = tokio::io::duplex(64 * 1024);
    let hub = hub.clone();
    let room = path.to_string();
    tokio::spawn(async move {
        let ws = tether::accept_with(server_io, &Config::default(), |_req| Ok(Accept { protocol: Some(PROTOCOL_V1.to_string()), headers: Vec::new() })).await.expect("server handshake");
        hub.run_connection(ws, ConnInfo::with_identity(room, identity)).await;
    });
    let request = ClientRequest { host: "hub.test".into(), target: path.into(), protocols: vec![PROTOCOL_V1.into()], ..ClientRequest::default() };
    let (mut ws, _) = tether::client_handshake(client_io, &request, &Config::default()).await.expect("client handshake");
    assert_eq!(next(&mut ws).await["type"], "welcome");
    ws
}

async fn next(ws: &mut Ws) -> Value {
    loop {
        match timeout(Duration::from_secs(10), ws.recv()).await.expect("a message within 10 s") {
            Some(Ok(Message::Text(t))) => return serde_json::from_str(t.as_str()).unwrap(),
            Some(Ok(_)) => continue,
            other => panic!("expected text, got {other:?}"),
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

#[tokio::test]
async fn capabilities_allow_matching_topics_and_refuse_others_with_a_code() {
    let hub = Hub::new(HubConfig::default(), Arc::new(MemoryBroker::new()));
    let mut alice = join(&hub, "/", grants("alice", &["chat:*"], &["chat:*"], &["*"])).await;
    send(&mut alice, json!({"type":"subscribe","topic":"chat:lobby","id":1})).await;
    let ack = next_not_presence(&mut alice).await;
    assert_eq!((ack["type"].as_str(), ack["id"].as_i64()), (Some("ack"), Some(1)), "{ack}");
    send(&mut alice, json!({"type":"subscribe","topic":"admin:x","id":2})).await;
    let refused = next_not_presence(&mut alice).await;
    assert_eq!((refused["type"].as_str(), refused["code"].as_str(), refused["id"].as_i64()), (Some("error"), Some("forbidden"), Some(2)), "{refused}");
    send(&mut alice, json!({"type":"publish","topic":"admin:x","content":"no","id":3})).await;
    let refused = next_not_presence(&mut alice).await;
    assert_eq!((refused["code"].as_str(), refused["id"].as_i64()), (Some("forbidden"), Some(3)), "{refused}");
    // Allowed: delivered, with the user as the sender.
    send(&mut alice, json!({"type":"publish","topic":"chat:lobby","content":"hi","id":4})).await;
    let mut got = Vec::new();
    while got.len() < 2 {
        got.push(next_not_presence(&mut alice).await);
    }
    let msg = got.iter().find(|v| v["type"] == "message").expect("the message came back");
    assert_eq!((msg["sender"].as_str(), msg["content"].as_str()), (Some("alice"), Some("hi")));
    assert!(got.iter().any(|v| v["type"] == "ack" && v["id"] == 4));
    assert_eq!(hub.metrics().auth_decisions("refused", "subscribe"), 1);
    assert_eq!(hub.metrics().auth_decisions("refused", "publish"), 1);
    assert!(hub.metrics().render_prometheus(&[]).contains(r#"tether_auth_decisions_total{result="refused",reason="subscribe"} 1"#));
}

#[tokio::test]
async fn a_room_the_token_does_not_allow_is_not_joined_and_presence_needs_its_capability() {
    let hub = Hub::new(HubConfig::default(), Arc::new(MemoryBroker::new()));
    // Room "/" is not in bob's capabilities: chat to it is refused.
    let mut bob = join(&hub, "/", grants("bob", &["chat:*"], &["chat:*"], &[])).await;
    send(&mut bob, json!({"type":"chat","content":"x","id":"c"})).await;
    assert_eq!(next(&mut bob).await["code"], "forbidden");
    let mut carol = join(&hub, "/", grants("carol", &["chat:*"], &[], &["chat:*"])).await;
    for ws in [&mut bob, &mut carol] {
        send(ws, json!({"type":"subscribe","topic":"chat:a","id":1})).await;
    }
    // Carol sees presence, bob (no presence capability) does not: his
    // next envelope after the ack is the message, not carol's join.
    let mut dave = join(&hub, "/", grants("dave", &["chat:*"], &["chat:*"], &[])).await;
    send(&mut dave, json!({"type":"subscribe","topic":"chat:a","id":1})).await;
    assert_eq!(next(&mut dave).await["type"], "ack");
    send(&mut dave, json!({"type":"publish","topic":"chat:a","content":"m"})).await;
    let mut carol_saw = Vec::new();
    loop {
        let v = next(&mut carol).await;
        carol_saw.push(v["type"].as_str().unwrap().to_string());
        if v["type"] == "message" {
            break;
        }
    }
    assert!(carol_saw.contains(&"presence".to_string()), "{carol_saw:?}");
    assert_eq!(next(&mut bob).await["type"], "ack");
    let v = next(&mut bob).await;
    assert_eq!((v["type"].as_str(), v["sender"].as_str()), (Some("message"), Some("dave")), "{v}");
}

#[tokio::test]
async fn auth_in_a_first_message_and_refresh_go_through_the_authenticator() {
    let hub = Hub::new(HubConfig::default(), Arc::new(MemoryBroker::new()));
    hub.set_authenticator(Arc::new(|token: &str| match token {
        "good-eve" => Ok(Grants { expires_at: Some(4_000_000_000), ..Grants::everything("eve") }),
        "narrow-eve" => Ok(Grants { subscribe: TopicPatterns::new(["chat:*"]).unwrap(), ..Grants::everything("eve") }),
        "good-mallory" => Ok(Grants::everything("mallory")),
        _ => Err(AuthError::new("bad_signature", "the token's signature does not verify")),
    }));
    let mut eve = join(&hub, "/", Identity::AwaitingAuth).await;
    send(&mut eve, json!({"type":"subscribe","topic":"chat:a","id":1})).await;
    assert_eq!(next(&mut eve).await["code"], "unauthorized");
    send(&mut eve, json!({"type":"auth","token":"forged","id":2})).await;
    let v = next(&mut eve).await;
    assert_eq!((v["code"].as_str(), v["id"].as_i64()), (Some("bad_signature"), Some(2)));
    send(&mut eve, json!({"type":"auth","token":"good-eve","id":3})).await;
    let v = next(&mut eve).await;
    assert_eq!((v["type"].as_str(), v["user"].as_str(), v["expires_at"].as_u64(), v["id"].as_i64()), (Some("authenticated"), Some("eve"), Some(4_000_000_000), Some(3)), "{v}");
    send(&mut eve, json!({"type":"subscribe","topic":"admin:x","id":4})).await;
    assert_eq!(next_not_presence(&mut eve).await["type"], "ack");
    // A refresh for someone else is refused; one with fewer capabilities
    // ends the subscriptions it no longer allows.
    send(&mut eve, json!({"type":"refresh","token":"good-mallory","id":5})).await;
    let v = next_not_presence(&mut eve).await;
    assert_eq!((v["code"].as_str(), v["id"].as_i64()), (Some("forbidden"), Some(5)), "{v}");
    send(&mut eve, json!({"type":"refresh","token":"narrow-eve","id":6})).await;
    let mut saw = Vec::new();
    while !saw.iter().any(|v: &Value| v["type"] == "authenticated") {
        saw.push(next_not_presence(&mut eve).await);
    }
    assert!(saw.iter().any(|v| v["code"] == "forbidden" && v["message"].as_str().unwrap().contains("admin:x")), "{saw:?}");
    send(&mut eve, json!({"type":"subscribe","topic":"admin:x","id":7})).await;
    assert_eq!(next_not_presence(&mut eve).await["code"], "forbidden");
    assert_eq!(hub.metrics().auth_decisions("refused", "bad_signature"), 1);
    assert_eq!(hub.metrics().auth_decisions("allowed", "refresh"), 1);
}
