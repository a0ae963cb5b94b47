//! The hub's behaviour, in-process, over in-memory streams with paused
//! time: heartbeats, slow consumers, resume, presence and rate limits are
//! checked without the binary and without real sleeps (tokio's clock
//! advances only when every task waits).

use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use tether::{Accept, ClientRequest, Config, Message, WebSocket};
use tether_hub::{ConnInfo, Hub, HubConfig, MemoryBroker, RateLimit, PROTOCOL_V1};
use tokio::io::DuplexStream;
use tokio::time::timeout;

type Ws = WebSocket<DuplexStream>;

fn hub(config: HubConfig) -> Arc<Hub> {
    Hub::new(config, Arc::new(MemoryBroker::new()))
}

/// A client on `hub` in room `path` (tether.v1 if `json`), through a real
/// handshake over an in-memory stream. The welcome is read.
async fn join(hub: &Arc<Hub>, path: &str, json: bool) -> Ws {
    let (server_io, client_io) = tokio::io::duplex(64 * 1024);
    let hub = hub.clone();
    let room = path.to_string();
    tokio::spawn(async move {
        let ws = tether::accept_with(server_io, &Config::default(), |req| {
            let protocol = req.protocols().contains(&PROTOCOL_V1).then(|| PROTOCOL_V1.to_string());
            Ok(Accept { protocol, headers: Vec::new() })
        })
        .await
        .expect("server handshake");
        hub.run_connection(ws, ConnInfo::new(room)).await;
    });
    let request = ClientRequest {
        host: "hub.test".into(),
        target: path.into(),
        protocols: if json { vec![PROTOCOL_V1.into()] } else { Vec::new() },
        ..ClientRequest::default()
    };
    let (mut ws, _) = tether::client_handshake(client_io, &request, &Config::default()).await.expect("client handshake");
    let welcome = next_text(&mut ws).await;
    assert!(welcome.contains("elcome"), "{welcome}");
    ws
}

async fn next_text(ws: &mut Ws) -> String {
    loop {
        match timeout(Duration::from_secs(60), ws.recv()).await.expect("a message within 60 s") {
            Some(Ok(Message::Text(t))) => return t.to_string(),
            Some(Ok(_)) => continue,
            other => panic!("expected text, got {other:?}"),
        }
    }
}

/// The next envelope, presence notices included.
async fn next_envelope(ws: &mut Ws) -> Value {
    serde_json::from_str(&next_text(ws).await).unwrap()
}

/// The next envelope that is not a presence notice.
async fn next_json(ws: &mut Ws) -> Value {
    loop {
        let v = next_envelope(ws).await;
        if v["type"] != "presence" {
            return v;
        }
    }
}

async fn send(ws: &mut Ws, v: Value) {
    ws.send(v.to_string()).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_client_that_answers_pings_stays_and_one_that_does_not_is_dropped_after_two_intervals() {
    let hub = hub(HubConfig { heartbeat_interval: Duration::from_secs(30), ..HubConfig::default() });
    let mut live = join(&hub, "/r", false).await;
    let zombie = join(&hub, "/r", false).await;
    assert_eq!(hub.connection_count(), 2);
    // `live` reads (and so answers pings); `zombie` never reads.
    let reader = tokio::spawn(async move {
        while let Some(Ok(_)) = live.recv().await {}
    });
    tokio::time::sleep(Duration::from_secs(61)).await;
    assert_eq!(hub.connection_count(), 1, "the zombie is gone after two intervals");
    tokio::time::sleep(Duration::from_secs(300)).await;
    assert_eq!(hub.connection_count(), 1, "the live client stays through ten more");
    assert_eq!(hub.metrics().terminated_connections.load(std::sync::atomic::Ordering::Relaxed), 1);
    reader.abort();
    drop(zombie);
}

#[tokio::test(start_paused = true)]
async fn unsolicited_pongs_do_not_keep_a_connection_alive() {
    let hub = hub(HubConfig { heartbeat_interval: Duration::from_secs(10), ..HubConfig::default() });
    let mut ws = join(&hub, "/r", false).await;
    // Never reads (so never answers the server's pings), but sends pongs.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(35);
    while tokio::time::Instant::now() < deadline && hub.connection_count() == 1 {
        let _ = ws.send(Message::Pong("not your payload".into())).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(hub.connection_count(), 0, "pongs that do not echo the ping are not an answer");
}

#[tokio::test(start_paused = true)]
async fn a_slow_consumer_gets_the_newest_messages_and_a_lag_notice() {
    let hub = hub(HubConfig { queue_max_messages: 4, message_rate: RateLimit::OFF, ..HubConfig::default() });
    let mut slow = join(&hub, "/feed", true).await;
    let mut publisher = join(&hub, "/pub", true).await;
    send(&mut slow, json!({"type": "subscribe", "topic": "t", "id": 1})).await;
    assert_eq!(next_json(&mut slow).await["type"], "ack");
    // 200 messages of 4 KiB while `slow` reads nothing: more than its socket holds.
    let body = "x".repeat(4096);
    for i in 0..200 {
        send(&mut publisher, json!({"type": "publish", "topic": "t", "content": format!("{i} {body}")})).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut seqs = Vec::new();
    let mut lagged = None;
    while seqs.last() != Some(&200) {
        let m = next_json(&mut slow).await;
        match m["type"].as_str() {
            Some("message") => seqs.push(m["seq"].as_u64().unwrap()),
            Some("error") if m["code"] == "lagged" => lagged = Some(m),
            _ => {}
        }
    }
    assert!(lagged.is_some(), "the client is told it fell behind");
    assert!(seqs.len() < 200, "some were dropped: {}", seqs.len());
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in order");
    assert!(hub.metrics().dropped_messages.load(std::sync::atomic::Ordering::Relaxed) > 0);
}

#[tokio::test(start_paused = true)]
async fn resume_replays_what_was_missed_and_a_bogus_since_changes_nothing_for_others() {
    let hub = hub(HubConfig::default());
    let mut watcher = join(&hub, "/w", true).await;
    send(&mut watcher, json!({"type": "subscribe", "topic": "t", "id": "w"})).await;
    let ack = next_json(&mut watcher).await;
    let epoch = ack["epoch"].as_str().unwrap().to_string();
    let mut publisher = join(&hub, "/p", true).await;
    for i in 1..=5 {
        send(&mut publisher, json!({"type": "publish", "topic": "t", "content": i})).await;
        assert_eq!(next_json(&mut watcher).await["seq"], i);
    }
    let mut resumer = join(&hub, "/r", true).await;
    send(&mut resumer, json!({"type": "subscribe", "topic": "t", "since": 2, "epoch": epoch, "id": "r"})).await;
    let replay: Vec<Value> = [next_json(&mut resumer).await, next_json(&mut resumer).await, next_json(&mut resumer).await].into();
    assert_eq!(replay.iter().map(|m| m["seq"].as_u64().unwrap()).collect::<Vec<_>>(), vec![3, 4, 5]);
    let ack = next_json(&mut resumer).await;
    assert_eq!((ack["type"].as_str(), ack["seq"].as_u64()), (Some("ack"), Some(5)));
    // A since the topic never reached, and the largest number there is.
    for since in [1005u64, u64::MAX] {
        let mut bogus = join(&hub, "/b", true).await;
        send(&mut bogus, json!({"type": "subscribe", "topic": "t", "since": since, "epoch": epoch, "id": "b"})).await;
        let gap = next_json(&mut bogus).await;
        assert_eq!(gap["code"], "history_gap", "{gap}");
        assert_eq!(next_json(&mut bogus).await["type"], "ack");
    }
    // Nobody else noticed: the next message continues the same epoch.
    send(&mut publisher, json!({"type": "publish", "topic": "t", "content": 6})).await;
    let m = next_json(&mut watcher).await;
    assert_eq!((m["type"].as_str(), m["seq"].as_u64(), m["epoch"].as_str()), (Some("message"), Some(6), Some(epoch.as_str())));
}

#[tokio::test(start_paused = true)]
async fn presence_counts_joins_and_leaves() {
    let hub = hub(HubConfig::default());
    let mut a = join(&hub, "/lobby", true).await;
    // a's own join.
    let first = next_envelope(&mut a).await;
    assert_eq!((first["type"].as_str(), first["count"].as_u64()), (Some("presence"), Some(1)));
    let b = join(&hub, "/lobby", true).await;
    let joined = next_envelope(&mut a).await;
    assert_eq!((joined["event"].as_str(), joined["count"].as_u64()), (Some("join"), Some(2)));
    drop(b);
    let left = next_envelope(&mut a).await;
    assert_eq!((left["event"].as_str(), left["count"].as_u64()), (Some("leave"), Some(1)));
}

#[tokio::test(start_paused = true)]
async fn a_flood_is_refused_then_closed_with_1008_and_a_steady_client_is_not() {
    let hub = hub(HubConfig { message_rate: RateLimit { per_second: 10, burst: 20 }, ..HubConfig::default() });
    let mut flood = join(&hub, "/f", true).await;
    for i in 0..500 {
        if flood.send(json!({"type": "chat", "content": i, "id": i}).to_string()).await.is_err() {
            break;
        }
    }
    let mut limited = 0;
    let close = loop {
        match timeout(Duration::from_secs(30), flood.recv()).await.expect("an answer") {
            Some(Ok(Message::Text(t))) if t.contains("rate_limited") => limited += 1,
            Some(Ok(Message::Close(frame))) => break frame.map(|f| f.code.0),
            Some(Ok(_)) => {}
            other => panic!("unexpected {other:?}"),
        }
    };
    assert!(limited > 0);
    assert_eq!(close, Some(1008));
    // Five messages a second, under the rate: all acked.
    let mut steady = join(&hub, "/s", true).await;
    for i in 0..50 {
        send(&mut steady, json!({"type": "chat", "content": i, "id": i})).await;
        loop {
            let m = next_json(&mut steady).await;
            assert_ne!(m["code"], "rate_limited");
            if m["type"] == "ack" {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(hub.metrics().rate_limit_closes.load(std::sync::atomic::Ordering::Relaxed), 1);
}

#[tokio::test]
async fn serve_runs_a_hub_on_a_listener_and_shuts_down_with_1001() {
    let hub = hub(HubConfig::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/lobby", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(tether_hub::serve(hub.clone(), listener, Config::default(), async {
        let _ = stopped.await;
    }));
    let mut a = tether::connect(&url).await.unwrap();
    let mut b = tether::connect(&url).await.unwrap();
    for ws in [&mut a, &mut b] {
        assert!(matches!(ws.recv().await, Some(Ok(Message::Text(t))) if t.contains("Welcome")));
    }
    a.send("hello").await.unwrap();
    assert!(matches!(b.recv().await, Some(Ok(Message::Text(t))) if t.ends_with("hello")));
    let long = format!("ws://{}/{}", url.split('/').nth(2).unwrap(), "x".repeat(300));
    assert_eq!(tether::connect(&long).await.unwrap_err().http_status(), Some(414));
    stop.send(()).unwrap();
    let code = loop {
        match b.recv().await {
            Some(Ok(Message::Close(f))) => break f.map(|f| f.code.0),
            Some(Ok(_)) => {}
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(code, Some(1001));
    timeout(Duration::from_secs(10), server).await.unwrap().unwrap().unwrap();
}

/// 50 symbols, then a burst of one hot symbol, published while `slow`
/// reads nothing; then `slow` reads. Without conflation the hot burst
/// would push every other symbol's last value out of the queue.
#[tokio::test(start_paused = true)]
async fn conflation_a_slow_client_ends_with_the_latest_value_of_every_key() {
    let hub = hub(HubConfig { queue_max_messages: 64, message_rate: RateLimit::OFF, ..HubConfig::default() });
    let mut slow = join(&hub, "/feed", true).await;
    let mut publisher = join(&hub, "/pub", true).await;
    send(&mut slow, json!({"type": "subscribe", "topic": "prices", "id": 1})).await;
    assert_eq!(next_json(&mut slow).await["type"], "ack");
    let pad = "x".repeat(512);
    let mut latest = std::collections::HashMap::new();
    let mut publish = |symbol: String, price: u64| {
        latest.insert(symbol.clone(), price);
        json!({"type": "publish", "topic": "prices", "key": symbol, "content": {"symbol": symbol, "price": price, "pad": pad}})
    };
    let mut frames = Vec::new();
    for round in 0..20 {
        for s in 0..50 {
            frames.push(publish(format!("S{s}"), round * 100 + s));
        }
    }
    for i in 0..300 {
        frames.push(publish("HOT".into(), 10_000 + i));
    }
    for f in frames {
        send(&mut publisher, f).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut seen = std::collections::HashMap::new();
    let mut seqs = Vec::new();
    while seen.get("HOT") != Some(&10_299) {
        let m = next_json(&mut slow).await;
        if m["type"] == "message" {
            assert_eq!(m["key"], m["content"]["symbol"], "the key rides with the message");
            seqs.push(m["seq"].as_u64().unwrap());
            seen.insert(m["key"].as_str().unwrap().to_string(), m["content"]["price"].as_u64().unwrap());
        }
    }
    assert_eq!(seen, latest, "every symbol's latest value arrived");
    assert!(seqs.len() < 1300, "older values were conflated: {} delivered", seqs.len());
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in order");
    let m = hub.metrics();
    assert!(m.conflated_messages.load(std::sync::atomic::Ordering::Relaxed) > 0);
    assert_eq!(m.dropped_messages.load(std::sync::atomic::Ordering::Relaxed), 0, "nothing dropped: replaced instead");
}

/// The client side of a delta subscription: apply each patch to the
/// content held for its key (RFC 7396), checking it patches what we have.
#[derive(Default)]
struct DeltaClient {
    held: std::collections::HashMap<String, (u64, Value)>,
    patches: usize,
    bytes: usize,
}

impl DeltaClient {
    fn content(&mut self, m: &Value, wire_len: usize) -> Value {
        self.bytes += wire_len;
        let key = m["key"].as_str().unwrap_or("").to_string();
        let seq = m["seq"].as_u64().unwrap();
        let content = if let Some(patch) = m.get("patch") {
            self.patches += 1;
            let (held_seq, held) = self.held.get(&key).cloned().expect("a patch only for a key we have");
            assert_eq!(Some(held_seq), m["base"].as_u64(), "the patch applies to the message we have");
            let mut v = held;
            tether::v1::delta::apply(&mut v, patch);
            v
        } else {
            m["content"].clone()
        };
        self.held.insert(key, (seq, content.clone()));
        content
    }
}

/// The next text that is not a presence notice, as sent.
async fn next_non_presence(ws: &mut Ws) -> String {
    loop {
        let text = next_text(ws).await;
        if !text.starts_with(r#"{"type":"presence""#) {
            return text;
        }
    }
}

fn quote(symbol: &str, i: u64) -> Value {
    json!({"symbol": symbol, "name": format!("{symbol} Holdings Incorporated"), "price": 100 + i % 7, "bid": 99 + i % 5, "volume": 1000 + i, "nothing": null, "tags": ["a", i % 3]})
}

#[tokio::test(start_paused = true)]
async fn delta_patches_reconstruct_every_message_including_after_a_resume() {
    let hub = hub(HubConfig { message_rate: RateLimit::OFF, ..HubConfig::default() });
    let mut publisher = join(&hub, "/pub", true).await;
    let mut client = join(&hub, "/c", true).await;
    send(&mut client, json!({"type": "subscribe", "topic": "prices", "delta": "merge-patch", "id": "s"})).await;
    let ack = next_json(&mut client).await;
    let epoch = ack["epoch"].as_str().unwrap().to_string();
    let mut dc = DeltaClient::default();
    let symbols = ["TTR", "ACME", "INIT"];
    let mut last_seq = 0;
    for i in 0..30u64 {
        let symbol = symbols[i as usize % 3];
        let content = if i == 20 { json!("halted") } else { quote(symbol, i) };
        send(&mut publisher, json!({"type": "publish", "topic": "prices", "key": symbol, "content": content})).await;
        let text = next_non_presence(&mut client).await;
        let m: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(dc.content(&m, text.len()), content, "message {i}");
        last_seq = m["seq"].as_u64().unwrap();
    }
    assert!(dc.patches >= 20, "most messages were patches: {}", dc.patches);
    drop(client);
    // Missed while away, then a resume on a new connection: the replay is
    // full, and patches follow on top of what the replay delivered.
    for i in 30..36u64 {
        let symbol = symbols[i as usize % 3];
        send(&mut publisher, json!({"type": "publish", "topic": "prices", "key": symbol, "content": quote(symbol, i)})).await;
    }
    let mut client = join(&hub, "/c", true).await;
    send(&mut client, json!({"type": "subscribe", "topic": "prices", "delta": "merge-patch", "since": last_seq, "epoch": epoch, "id": "r"})).await;
    let before = dc.patches;
    for i in 30..36u64 {
        let text = next_non_presence(&mut client).await;
        let m: Value = serde_json::from_str(&text).unwrap();
        assert!(m.get("patch").is_none(), "a replay is sent in full");
        assert_eq!(dc.content(&m, text.len()), quote(symbols[i as usize % 3], i));
    }
    assert_eq!(next_json(&mut client).await["type"], "ack");
    for i in 36..45u64 {
        let symbol = symbols[i as usize % 3];
        send(&mut publisher, json!({"type": "publish", "topic": "prices", "key": symbol, "content": quote(symbol, i)})).await;
        let text = next_non_presence(&mut client).await;
        let m: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(dc.content(&m, text.len()), quote(symbol, i));
    }
    assert!(dc.patches > before, "patches again after the resume");
    // A subscriber without deltas gets full messages of the same topic.
    let mut full = join(&hub, "/f", true).await;
    send(&mut full, json!({"type": "subscribe", "topic": "prices", "id": 1})).await;
    next_json(&mut full).await;
    send(&mut publisher, json!({"type": "publish", "topic": "prices", "key": "TTR", "content": quote("TTR", 99)})).await;
    assert_eq!(next_json(&mut full).await["content"], quote("TTR", 99));
    assert!(hub.metrics().delta_patches.load(std::sync::atomic::Ordering::Relaxed) > 0);
}

/// Frames a watcher of `$room:arena` receives while `players` players each
/// send 10 positions per tick for 10 ticks, and the last frame it got.
async fn room_frames(players: usize) -> (usize, Value, u64) {
    let tick = Duration::from_millis(50);
    let hub = hub(HubConfig { room_tick: tick, message_rate: RateLimit::OFF, ..HubConfig::default() });
    let mut watcher = join(&hub, "/w", true).await;
    send(&mut watcher, json!({"type": "subscribe", "topic": "$room:arena", "id": 0})).await;
    assert_eq!(next_json(&mut watcher).await["type"], "ack");
    let mut ps = Vec::new();
    for i in 0..players {
        let mut p = join(&hub, "/p", true).await;
        send(&mut p, json!({"type": "subscribe", "topic": "$room:arena", "id": i})).await;
        assert_eq!(next_json(&mut p).await["type"], "ack");
        ps.push(p);
    }
    let start = tokio::time::Instant::now();
    for round in 0..10u64 {
        for (i, p) in ps.iter_mut().enumerate() {
            for step in 0..10u64 {
                send(p, json!({"type": "publish", "topic": "$room:arena", "content": {"x": round * 10 + step, "y": i}})).await;
            }
        }
        tokio::time::sleep(tick).await;
    }
    tokio::time::sleep(tick * 2).await;
    let ticks = (tokio::time::Instant::now() - start).as_millis() as u64 / 50 + 1;
    let mut frames = 0;
    let mut last = Value::Null;
    loop {
        let m = match timeout(Duration::from_secs(1), next_json(&mut watcher)).await {
            Ok(m) => m,
            Err(_) => break,
        };
        if m["type"] == "message" {
            frames += 1;
            last = m["content"].clone();
        }
    }
    (frames, last, ticks)
}

#[tokio::test(start_paused = true)]
async fn a_room_sends_one_frame_per_tick_whatever_the_number_of_players() {
    for players in [1, 8] {
        let (frames, last, ticks) = room_frames(players).await;
        assert!(frames as u64 <= ticks, "{players} players: {frames} frames in {ticks} ticks (one per tick at most), for {} updates", players * 100);
        assert!(frames >= 5, "frames kept coming: {frames}");
        let positions = last["players"].as_object().expect("players").clone();
        assert_eq!(positions.len(), players, "{last}");
        assert!(positions.values().all(|p| p["x"] == 99), "the latest state of every player: {last}");
    }
}

#[tokio::test(start_paused = true)]
async fn system_topics_are_reserved_and_only_for_system_rooms() {
    let hub = hub(HubConfig::default());
    hub.start_stats(Duration::from_secs(1));
    let mut user = join(&hub, "/lobby", true).await;
    send(&mut user, json!({"type": "publish", "topic": "$sys:stats", "content": {"connections": 1e9}, "id": 1})).await;
    assert_eq!(next_json(&mut user).await["code"], "reserved_topic");
    send(&mut user, json!({"type": "subscribe", "topic": "$sys:stats", "id": 2})).await;
    assert_eq!(next_json(&mut user).await["code"], "forbidden");
    let mut admin = join(&hub, "/$sys/dashboard", true).await;
    send(&mut admin, json!({"type": "subscribe", "topic": "$sys:stats", "delta": "merge-patch", "id": 3})).await;
    assert_eq!(next_json(&mut admin).await["type"], "ack");
    let m = loop {
        let m = next_json(&mut admin).await;
        if m["type"] == "message" {
            break m;
        }
    };
    assert_eq!(m["content"]["connections"], 2);
    assert_eq!(m["key"], m["content"]["node"]);
    // Leaving a room removes the player from the next frame.
    let mut a = join(&hub, "/a", true).await;
    let mut b = join(&hub, "/b", true).await;
    for (i, p) in [&mut a, &mut b].into_iter().enumerate() {
        send(p, json!({"type": "subscribe", "topic": "$room:r", "id": i})).await;
        next_json(p).await;
        send(p, json!({"type": "publish", "topic": "$room:r", "content": {"x": i}, "id": "m"})).await;
        assert_eq!(next_json(p).await["type"], "ack");
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(b);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut last = Value::Null;
    while let Ok(m) = timeout(Duration::from_millis(500), next_json(&mut a)).await {
        if m["type"] == "message" {
            last = m["content"].clone();
        }
    }
    let players: Vec<Value> = last["players"].as_object().expect("a frame").values().cloned().collect();
    assert_eq!(players, vec![json!({"x": 0})], "only a is left: {last}");
}
