//! End-to-end tests of `tether serve`: the real binary on a free port, real
//! clients over loopback TCP.

mod common;

use common::{http_get, metric, Server};
use serde_json::{json, Value};
use std::time::Duration;
use tether::{ClientBuilder, CloseCode, Message, WebSocket};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

type Ws = WebSocket<tether::MaybeTlsStream>;

async fn plain(server: &Server, path: &str) -> Ws {
    let mut ws = tether::connect(&server.url(path)).await.unwrap();
    let welcome = next_text(&mut ws).await;
    assert!(welcome.starts_with("Welcome to tether!"), "{welcome}");
    ws
}

async fn v1(server: &Server, path: &str) -> (Ws, String) {
    let (mut ws, resp) = ClientBuilder::new(server.url(path)).protocol("tether.v1").connect().await.unwrap();
    assert_eq!(resp.protocol.as_deref(), Some("tether.v1"));
    let welcome = next_json(&mut ws).await;
    assert_eq!(welcome["type"], "welcome");
    (ws, welcome["session"].as_str().unwrap().to_string())
}

async fn next_text(ws: &mut Ws) -> String {
    loop {
        match timeout(Duration::from_secs(10), ws.recv()).await.expect("timed out waiting for a message") {
            Some(Ok(Message::Text(t))) => return t.to_string(),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("expected text, got {other:?}"),
        }
    }
}

async fn next_json(ws: &mut Ws) -> Value {
    serde_json::from_str(&next_text(ws).await).unwrap()
}

/// The next JSON envelope of `kind`, skipping presence notices.
async fn next_of(ws: &mut Ws, kind: &str) -> Value {
    loop {
        let v = next_json(ws).await;
        if v["type"] == kind {
            return v;
        }
        assert_eq!(v["type"], "presence", "while waiting for {kind}: {v}");
    }
}

#[tokio::test]
async fn http_routes_share_the_port() {
    let server = Server::start(&[]);
    let (status, body) = http_get(server.port, "/").await;
    assert_eq!(status, 200);
    assert!(body.contains("tether chat") && body.contains("/tether.js"));
    let (status, body) = http_get(server.port, "/tether.js").await;
    assert_eq!(status, 200);
    assert!(body.contains("TetherClient"));
    let (status, body) = http_get(server.port, "/health").await;
    assert_eq!(status, 200);
    let health: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["status"], "ok");
    assert_eq!(health["broker"]["name"], "memory");
    let (status, body) = http_get(server.port, "/metrics").await;
    assert_eq!(status, 200);
    assert!(body.contains("# TYPE tether_connections gauge"));
    let (status, _) = http_get(server.port, "/no/such/page").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn plain_clients_get_a_welcome_and_every_broadcast_once_in_order() {
    let server = Server::start(&[]);
    const CLIENTS: usize = 4;
    const EACH: usize = 50;
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        clients.push(plain(&server, "/room-a").await);
    }
    // A client in another room must see none of it.
    let mut other = plain(&server, "/room-b").await;
    for (i, ws) in clients.iter_mut().enumerate() {
        for n in 0..EACH {
            ws.feed(format!("c{i} m{n}")).await.unwrap();
        }
        ws.flush().await.unwrap();
    }
    for ws in clients.iter_mut() {
        let mut next = [0usize; CLIENTS];
        for _ in 0..CLIENTS * EACH {
            let text = next_text(ws).await;
            // "[session] cI mN": prefixed with the sender.
            let (prefix, body) = text.split_once("] ").unwrap();
            assert!(prefix.starts_with('['));
            let (c, m) = body.split_once(' ').unwrap();
            let c: usize = c[1..].parse().unwrap();
            let m: usize = m[1..].parse().unwrap();
            assert_eq!(m, next[c], "client {c}'s messages out of order or duplicated");
            next[c] += 1;
        }
        assert_eq!(next, [EACH; CLIENTS]);
    }
    other.send("only in b").await.unwrap();
    assert!(next_text(&mut other).await.ends_with("only in b"));
}

/// A client is in its room once its 101 has arrived, not some time after:
/// a peer that sends as soon as both handshakes are done reaches it (the
/// session is opened before the 101 is written, on every driver). Raced
/// many times, since the window it closes was small.
#[tokio::test]
async fn a_client_is_in_its_room_as_soon_as_its_handshake_completes() {
    for driver in ["loop", "tokio"] {
        let server = Server::start(&["--driver", driver, "--message-rate", "0"]);
        for round in 0..40 {
            let room = format!("/race-{round}");
            // Neither waits for its welcome before alice speaks.
            let mut bob = tether::connect(&server.url(&room)).await.unwrap();
            let mut alice = tether::connect(&server.url(&room)).await.unwrap();
            alice.send("hi bob").await.unwrap();
            assert!(next_text(&mut bob).await.starts_with("Welcome to tether!"));
            let heard = next_text(&mut bob).await;
            assert!(heard.ends_with("hi bob"), "{driver} round {round}: bob heard {heard:?}, not alice's message");
            drop(alice);
        }
    }
}

#[tokio::test]
async fn tether_v1_subscribe_publish_ack_error_presence() {
    let server = Server::start(&[]);
    let (mut a, session_a) = v1(&server, "/lobby").await;
    let (mut b, session_b) = v1(&server, "/lobby").await;
    // a sees itself join (count 1), then b join (count 2).
    let presence = loop {
        let p = next_json(&mut a).await;
        assert_eq!(p["type"], "presence");
        if p["session"] == session_b.as_str() {
            break p;
        }
    };
    assert_eq!((presence["event"].as_str(), presence["count"].as_u64()), (Some("join"), Some(2)));

    b.send(json!({"type":"subscribe","topic":"news","id":"s1"}).to_string()).await.unwrap();
    let ack = next_of(&mut b, "ack").await;
    assert_eq!(ack["id"], "s1");

    a.send(json!({"type":"publish","topic":"news","content":{"headline":"hi"},"id":7}).to_string()).await.unwrap();
    let msg = next_of(&mut b, "message").await;
    assert_eq!(msg["topic"], "news");
    assert_eq!(msg["seq"], 1);
    assert_eq!(msg["sender"], session_a.as_str());
    assert_eq!(msg["content"], json!({"headline":"hi"}));
    assert!(msg["ts"].as_u64().unwrap() > 1_600_000_000_000);
    let ack = next_of(&mut a, "ack").await;
    assert_eq!((ack["id"].clone(), ack["seq"].clone()), (json!(7), json!(1)));

    // Chat goes to the room, including the sender.
    a.send(json!({"type":"chat","content":"Hello"}).to_string()).await.unwrap();
    for ws in [&mut a, &mut b] {
        let m = next_of(ws, "message").await;
        assert_eq!((m["topic"].as_str(), m["content"].as_str()), (Some("/lobby"), Some("Hello")));
    }

    // Bad input gets an error envelope and the connection stays open.
    for (bad, code) in [
        ("{not json".to_string(), "bad_json"),
        (json!({"type":"dance","id":3}).to_string(), "unknown_type"),
        (json!({"type":"publish","content":1}).to_string(), "missing_field"),
        (json!({"type":"unsubscribe","topic":"never"}).to_string(), "not_subscribed"),
    ] {
        a.send(bad).await.unwrap();
        let err = next_of(&mut a, "error").await;
        assert_eq!(err["code"], code, "{err}");
        assert!(err["message"].as_str().unwrap().len() > 5);
    }
    a.send(json!({"type":"ping","id":"p"}).to_string()).await.unwrap();
    assert_eq!(next_of(&mut a, "ack").await["id"], "p");

    // Leaving is announced with the new count.
    b.close(1000, "").await.unwrap();
    let presence = next_of(&mut a, "presence").await;
    assert_eq!((presence["event"].as_str(), presence["count"].as_u64()), (Some("leave"), Some(1)));
}

#[tokio::test]
async fn oversized_message_closes_with_1009() {
    let server = Server::start(&["--max-message-size", "1024"]);
    let mut ws = plain(&server, "/").await;
    ws.send(vec![0u8; 4096]).await.unwrap();
    loop {
        match timeout(Duration::from_secs(5), ws.recv()).await.unwrap() {
            Some(Ok(Message::Close(Some(frame)))) => {
                assert_eq!(frame.code, CloseCode::MESSAGE_TOO_BIG);
                break;
            }
            Some(Ok(_)) => continue,
            other => panic!("expected close 1009, got {other:?}"),
        }
    }
}

const RAW_UPGRADE: &str = "GET /zombies HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

#[tokio::test]
async fn zombie_that_never_answers_pings_is_terminated_within_two_intervals() {
    let server = Server::start(&["--heartbeat-interval", "300ms"]);
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", server.port)).await.unwrap();
    tcp.write_all(RAW_UPGRADE.as_bytes()).await.unwrap();
    let mut buf = [0u8; 512];
    let n = tcp.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 101"));
    // A well-behaved client on the same server stays connected throughout:
    // it keeps reading, so it answers every ping.
    let mut alive = plain(&server, "/zombies").await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let (out_tx, mut out_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                msg = alive.recv() => match msg {
                    Some(Ok(Message::Text(t))) => { let _ = tx.send(t.to_string()); }
                    Some(Ok(_)) => {}
                    _ => return,
                },
                Some(text) = out_rx.recv() => { alive.send(text).await.unwrap(); }
            }
        }
    });
    // Now the raw client goes silent: it never reads and never answers a ping.
    let start = std::time::Instant::now();
    loop {
        if metric(server.port, "tether_terminated_connections_total").await >= 1.0 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "zombie not terminated");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Two intervals (plus scheduling slack): the ping at t=300ms goes
    // unanswered, the check at t=600ms terminates.
    assert!(start.elapsed() < Duration::from_millis(300 * 2 + 700), "took {:?}", start.elapsed());
    assert_eq!(metric(server.port, "tether_connections").await, 1.0);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(metric(server.port, "tether_terminated_connections_total").await, 1.0, "a live client was terminated");
    out_tx.send("still here".into()).unwrap();
    let echoed = timeout(Duration::from_secs(5), rx.recv()).await.unwrap().unwrap();
    assert!(echoed.ends_with("still here"), "{echoed}");
}

#[tokio::test]
async fn a_stalled_reader_neither_delays_others_nor_grows_memory() {
    let server = Server::start(&["--queue-max-bytes", "262144", "--message-rate", "0"]);
    // The stalled client: upgrades, then never reads a byte.
    let mut stalled = tokio::net::TcpStream::connect(("127.0.0.1", server.port)).await.unwrap();
    stalled.write_all(RAW_UPGRADE.replace("/zombies", "/feed").as_bytes()).await.unwrap();
    let mut reader = plain(&server, "/feed").await;
    let mut writer = plain(&server, "/feed").await;
    let rss_before = server.rss_kib();
    // 20 MB in bursts of 100 KB; the reader keeps up with each burst.
    let payload = "x".repeat(1000);
    let mut i = 0;
    for _burst in 0..200 {
        for _ in 0..100 {
            writer.feed(format!("{i} {payload}")).await.unwrap();
            i += 1;
        }
        writer.flush().await.unwrap();
        for expect in i - 100..i {
            let text = timeout(Duration::from_secs(10), next_text(&mut reader)).await.expect("reader was delayed");
            let body = text.split_once("] ").unwrap().1;
            assert_eq!(body.split_once(' ').unwrap().0, expect.to_string(), "a reader that keeps up lost or reordered a message");
        }
    }
    let rss_after = server.rss_kib();
    // 20 MB went past a client that read nothing: its queue is bounded
    // (256 KiB), the rest was dropped and counted.
    assert!(metric(server.port, "tether_dropped_messages_total").await > 0.0);
    assert!(rss_after < rss_before + 32 * 1024, "server memory grew from {rss_before} KiB to {rss_after} KiB");
    drop(stalled);
}

#[tokio::test]
async fn slow_consumer_close_policy_closes_with_1013() {
    let server = Server::start(&["--queue-max-messages", "16", "--slow-consumer", "close"]);
    let mut slow = tokio::net::TcpStream::connect(("127.0.0.1", server.port)).await.unwrap();
    slow.write_all(RAW_UPGRADE.replace("/zombies", "/fast").as_bytes()).await.unwrap();
    let mut writer = plain(&server, "/fast").await;
    let payload = "y".repeat(4000);
    for i in 0..5000 {
        writer.feed(format!("{i} {payload}")).await.unwrap();
        if metric_nonzero(&server).await {
            break;
        }
    }
    writer.flush().await.unwrap();
    let start = std::time::Instant::now();
    while !metric_nonzero(&server).await {
        assert!(start.elapsed() < Duration::from_secs(5), "slow consumer never closed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn metric_nonzero(server: &Server) -> bool {
    metric(server.port, "tether_slow_consumer_closes_total").await >= 1.0
}

#[tokio::test]
async fn limits_origin_token_and_connection_count() {
    let server = Server::start(&["--allowed-origin", "http://good.example", "--token", "s3cret", "--max-connections", "2"]);
    let url = server.url("/x?token=s3cret");
    let err = ClientBuilder::new(&url).header("Origin", "http://evil.example").connect().await.unwrap_err();
    assert_eq!(err.http_status(), Some(403));
    let err = ClientBuilder::new(server.url("/x")).header("Origin", "http://good.example").connect().await.unwrap_err();
    assert_eq!(err.http_status(), Some(401));
    // A refused socket keeps its connection slot until the server has shut
    // it down, which can be just after the client read the refusal: a 503
    // here is retried for a moment.
    let connect = |builder: ClientBuilder| async move {
        for _ in 0..50 {
            match builder.clone().connect().await {
                Err(e) if e.http_status() == Some(503) => tokio::time::sleep(Duration::from_millis(20)).await,
                other => return other.unwrap(),
            }
        }
        panic!("the slots of refused sockets were never given back");
    };
    let ok1 = connect(ClientBuilder::new(server.url("/x")).header("Origin", "http://good.example").header("Authorization", "Bearer s3cret")).await;
    let ok2 = connect(ClientBuilder::new(&url).header("Origin", "http://good.example")).await;
    let err = ClientBuilder::new(&url).header("Origin", "http://good.example").connect().await.unwrap_err();
    assert_eq!(err.http_status(), Some(503));
    assert!(metric(server.port, "tether_handshake_failures_total").await >= 3.0);
    drop((ok1, ok2));
}

#[tokio::test]
async fn graceful_shutdown_closes_everyone_with_1001_and_exits_0() {
    // No drain window: SIGTERM closes everyone at once (tests/drain.rs has the drain).
    let mut server = Server::start(&["--drain-window", "0s"]);
    let mut a = plain(&server, "/").await;
    let (mut b, _) = v1(&server, "/").await;
    server.signal("TERM");
    for ws in [&mut a, &mut b] {
        loop {
            match timeout(Duration::from_secs(5), ws.recv()).await.unwrap() {
                Some(Ok(Message::Close(Some(frame)))) => {
                    assert_eq!(frame.code, CloseCode::GOING_AWAY);
                    break;
                }
                Some(Ok(_)) => continue,
                other => panic!("expected close 1001, got {other:?}"),
            }
        }
    }
    assert_eq!(server.wait_exit(Duration::from_secs(10)), Some(0));
}

#[tokio::test]
async fn wss_on_the_same_port_with_tls_cert_and_key() {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let dir = std::env::temp_dir().join(format!("tether-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
    let server = Server::start(&["--tls-cert", cert.to_str().unwrap(), "--tls-key", key.to_str().unwrap()]);
    assert_eq!(server.scheme, "wss");
    let tls = tether::tls::TlsOptions { ca_pem: Some(ck.cert.pem().into_bytes()), ..Default::default() };
    let (mut ws, _) = ClientBuilder::new(format!("wss://localhost:{}/secure", server.port)).tls(tls).connect().await.unwrap();
    assert!(next_text(&mut ws).await.starts_with("Welcome"));
    ws.send("over wss").await.unwrap();
    assert!(next_text(&mut ws).await.ends_with("over wss"));
}
