//! The live features through the real binary over loopback TCP: conflation
//! for a client that stops reading, the `tether demo ticker` publisher,
//! and the reserved `$sys:` topics.

mod common;

use common::{metric, Redis, Server};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::Duration;
use tether::{ClientBuilder, Message, WebSocket};
use tokio::time::timeout;

type Ws = WebSocket<tether::MaybeTlsStream>;

async fn v1(server: &Server, path: &str) -> Ws {
    let (mut ws, _) = ClientBuilder::new(server.url(path)).protocol("tether.v1").connect().await.unwrap();
    assert_eq!(next_json(&mut ws).await["type"], "welcome");
    ws
}

async fn next_json(ws: &mut Ws) -> Value {
    loop {
        match timeout(Duration::from_secs(20), ws.recv()).await.expect("a message within 20 s") {
            Some(Ok(Message::Text(t))) => {
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                if v["type"] != "presence" {
                    return v;
                }
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("expected text, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_client_that_stops_reading_still_gets_the_latest_value_of_every_key() {
    let server = Server::start(&["--queue-max-messages", "64", "--message-rate", "0", "--subscribe-rate", "0", "--conflate-prefix", "prices:"]);
    let mut slow = v1(&server, "/slow").await;
    for (i, topic) in ["quotes", "prices:index"].into_iter().enumerate() {
        slow.send(json!({"type": "subscribe", "topic": topic, "id": i}).to_string()).await.unwrap();
        assert_eq!(next_json(&mut slow).await["type"], "ack");
    }
    // While `slow` reads nothing: 50 symbols for 20 rounds, then a long burst
    // of one hot symbol (and of the unkeyed index, conflated by its prefix),
    // far more than the socket buffers hold.
    let mut publisher = v1(&server, "/pub").await;
    let pad = "x".repeat(8 * 1024);
    let mut latest = HashMap::new();
    let mut updates = Vec::new();
    for round in 0..20u64 {
        for s in 0..50u64 {
            updates.push((format!("S{s}"), round * 100 + s));
        }
    }
    updates.extend((0..3000u64).map(|i| ("HOT".to_string(), 10_000 + i)));
    for (i, (symbol, price)) in updates.into_iter().enumerate() {
        latest.insert(symbol.clone(), price);
        let quote = json!({"type": "publish", "topic": "quotes", "key": symbol, "content": {"symbol": symbol, "price": price, "pad": pad}});
        publisher.send(quote.to_string()).await.unwrap();
        if i % 10 == 0 {
            publisher.send(json!({"type": "publish", "topic": "prices:index", "content": {"level": i, "pad": pad}}).to_string()).await.unwrap();
        }
    }
    let last_index = (4000 - 1) / 10 * 10;
    publisher.send(json!({"type": "ping", "id": "done"}).to_string()).await.unwrap();
    assert_eq!(next_json(&mut publisher).await["id"], "done", "every publish was taken");
    // Now read.
    let mut seen = HashMap::new();
    let mut index = 0;
    let mut seqs = Vec::new();
    while seen.get("HOT") != Some(&12_999) || index != last_index {
        let m = next_json(&mut slow).await;
        assert_ne!(m["code"], "lagged", "nothing dropped: {m}");
        match m["topic"].as_str() {
            Some("quotes") => {
                seqs.push(m["seq"].as_u64().unwrap());
                seen.insert(m["key"].as_str().unwrap().to_string(), m["content"]["price"].as_u64().unwrap());
            }
            Some("prices:index") => index = m["content"]["level"].as_u64().unwrap(),
            _ => panic!("unexpected {m}"),
        }
    }
    assert_eq!(seen, latest, "every symbol's latest price arrived");
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in order");
    assert!(seqs.len() < 4000, "older prices were replaced: {} of 4000 delivered", seqs.len());
    assert!(metric(server.port, "tether_conflated_messages_total").await > 0.0);
    assert_eq!(metric(server.port, "tether_dropped_messages_total").await, 0.0);
}

#[tokio::test]
async fn demo_ticker_publishes_keyed_quotes_to_a_running_server_and_sys_topics_are_reserved() {
    let server = Server::start(&["--message-rate", "0"]);
    let mut reader = v1(&server, "/r").await;
    reader.send(json!({"type": "subscribe", "topic": "prices", "id": 1}).to_string()).await.unwrap();
    assert_eq!(next_json(&mut reader).await["type"], "ack");
    let status = tokio::process::Command::new(env!("CARGO_BIN_EXE_tether"))
        .args(["demo", "ticker", "--url", &server.url("/ticker"), "--symbols", "5", "--rate", "500", "--count", "200"])
        .status()
        .await
        .unwrap();
    assert!(status.success());
    // Every quote arrives, or was replaced in the queue by a newer one of its symbol.
    let mut symbols = std::collections::HashSet::new();
    let mut received = 0;
    while received + metric(server.port, "tether_conflated_messages_total").await as u64 != 200 {
        let m = next_json(&mut reader).await;
        assert_eq!(m["key"], m["content"]["symbol"], "{m}");
        symbols.insert(m["key"].as_str().unwrap().to_string());
        received += 1;
    }
    assert_eq!(symbols.len(), 5);
    reader.send(json!({"type": "publish", "topic": "$sys:stats", "content": 1, "id": 2}).to_string()).await.unwrap();
    assert_eq!(next_json(&mut reader).await["code"], "reserved_topic");
    // A bad flag is a usage error.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tether")).args(["demo", "ticker", "--rate=-3"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a rate"));
}

#[tokio::test]
async fn the_dashboard_room_needs_the_metrics_token() {
    let server = Server::start(&["--metrics-token", "m-token"]);
    let refused = ClientBuilder::new(server.url("/$sys/dashboard")).protocol("tether.v1").connect().await.unwrap_err();
    assert_eq!(refused.http_status(), Some(401));
    let mut admin = v1(&server, "/$sys/dashboard?token=m-token").await;
    admin.send(json!({"type": "subscribe", "topic": "$sys:stats", "id": 1}).to_string()).await.unwrap();
    assert_eq!(next_json(&mut admin).await["type"], "ack");
    let stats = next_json(&mut admin).await;
    assert_eq!(stats["topic"], "$sys:stats");
    assert_eq!(stats["content"]["connections"], 1);
    // Other rooms need no token here, and cannot read the system topics.
    let mut user = v1(&server, "/lobby").await;
    user.send(json!({"type": "subscribe", "topic": "$sys:stats", "id": 1}).to_string()).await.unwrap();
    assert_eq!(next_json(&mut user).await["code"], "forbidden");
}

/// Two nodes on one Redis: the dashboard on node A sees a `$sys:stats` line
/// per node (keyed by node id), and a keyed publish on node B reaches a
/// delta subscriber on node A with its key, then as a patch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clustered_stats_come_per_node_and_keys_cross_redis() {
    let Some(redis) = Redis::start() else { return };
    let url = redis.url();
    let a = Server::start(&["--broker", &url, "--message-rate", "0"]);
    let b = Server::start(&["--broker", &url, "--message-rate", "0"]);
    let mut admin = v1(&a, "/$sys/dashboard").await;
    admin.send(json!({"type": "subscribe", "topic": "$sys:stats", "id": 1}).to_string()).await.unwrap();
    assert_eq!(next_json(&mut admin).await["type"], "ack");
    let mut nodes = std::collections::HashSet::new();
    while nodes.len() < 2 {
        let m = next_json(&mut admin).await;
        if m["type"] == "message" {
            assert_eq!(m["key"], m["content"]["node"]);
            assert_eq!(m["content"]["broker"], "redis");
            nodes.insert(m["key"].as_str().unwrap().to_string());
        }
    }
    let mut reader = v1(&a, "/r").await;
    reader.send(json!({"type": "subscribe", "topic": "quotes", "delta": "merge-patch", "id": 1}).to_string()).await.unwrap();
    assert_eq!(next_json(&mut reader).await["type"], "ack");
    let mut publisher = v1(&b, "/p").await;
    let quote = |price: u64| json!({"symbol": "TTR", "name": "Tether Industries Incorporated", "price": price});
    // The second is published once the reader has the first: two quotes of
    // one key queued for the reader together are conflated into the newer.
    let mut received = Vec::new();
    for (i, price) in [100u64, 101].into_iter().enumerate() {
        publisher.send(json!({"type": "publish", "topic": "quotes", "key": "TTR", "content": quote(price), "id": i}).to_string()).await.unwrap();
        assert_eq!(next_json(&mut publisher).await["type"], "ack");
        received.push(next_json(&mut reader).await);
    }
    let [first, second] = <[Value; 2]>::try_from(received).unwrap();
    assert_eq!((first["key"].as_str(), &first["content"]), (Some("TTR"), &quote(100)));
    assert_eq!((second["base"].as_u64(), &second["patch"]), (first["seq"].as_u64(), &json!({"price": 101})), "{second}");
}
