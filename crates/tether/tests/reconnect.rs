//! `ReconnectingClient` against real servers over loopback: servers that die
//! and come back on the same port, servers that go silent, ports where
//! nobody listens. Timeouts are generous and only bound how long a broken
//! build may hang; nothing here measures speed.

use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tether::reconnect::{Ack, Backoff, ClientError, Event, QueueFullPolicy, ReconnectOptions, ReconnectingClient};
use tether::{Accept, ClientBuilder, CloseCode, Config, Message};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

const WAIT: Duration = Duration::from_secs(15);

/// Quick retries so tests do not sit in backoff.
fn fast() -> ReconnectOptions {
    ReconnectOptions {
        backoff: Backoff { min_delay: Duration::from_millis(20), max_delay: Duration::from_millis(200), factor: 2.0, jitter: 0.5 },
        heartbeat_interval: None,
        ..ReconnectOptions::default()
    }
}

/// A port where nothing listens (until a test starts a server on it).
fn closed_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

async fn bind(addr: SocketAddr) -> TcpListener {
    // The previous listener on this port may still be shutting down.
    for _ in 0..100 {
        if let Ok(listener) = TcpListener::bind(addr).await {
            return listener;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("cannot bind {addr}");
}

/// An echo server that records every text message it receives. Stopping it
/// drops the listener and every connection, as a killed process would.
struct EchoServer {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<String>>>,
    task: JoinHandle<()>,
}

impl EchoServer {
    async fn start(addr: SocketAddr) -> EchoServer {
        let listener = bind(addr).await;
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let log = received.clone();
        let task = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let log = log.clone();
                connections.spawn(async move {
                    let Ok(mut ws) = tether::accept(tcp).await else { return };
                    while let Some(Ok(msg)) = ws.recv().await {
                        if let Message::Text(t) = &msg {
                            log.lock().unwrap().push(t.to_string());
                        }
                        if msg.is_data() && ws.send(msg).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        EchoServer { addr, received, task }
    }

    fn url(&self) -> String {
        format!("ws://{}/", self.addr)
    }

    fn received(&self) -> Vec<String> {
        self.received.lock().unwrap().clone()
    }

    async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

async fn next(client: &mut ReconnectingClient) -> Event {
    match tokio::time::timeout(WAIT, client.next_event()).await {
        Ok(Some(event)) => event,
        Ok(None) => panic!("the event stream ended"),
        Err(_) => panic!("no event within {WAIT:?}"),
    }
}

/// Skip events until one matches; returns it.
async fn until(client: &mut ReconnectingClient, what: &str, pred: impl Fn(&Event) -> bool) -> Event {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, client.next_event()).await {
            Ok(Some(event)) if pred(&event) => return event,
            Ok(Some(_)) => {}
            Ok(None) => panic!("the event stream ended while waiting for {what}"),
            Err(_) => panic!("no {what} within {WAIT:?}"),
        }
    }
}

async fn text(client: &mut ReconnectingClient) -> String {
    match until(client, "a text message", |e| matches!(e, Event::Message(Message::Text(_)))).await {
        Event::Message(Message::Text(t)) => t.to_string(),
        _ => unreachable!(),
    }
}

fn is_open(e: &Event) -> bool {
    matches!(e, Event::Open { .. })
}

fn is_close(e: &Event) -> bool {
    matches!(e, Event::Close { .. })
}

#[tokio::test]
async fn reconnects_after_the_server_restarts_and_delivers_the_queue_once() {
    let server = EchoServer::start("127.0.0.1:0".parse().unwrap()).await;
    let addr = server.addr;
    let mut client = ReconnectingClient::new(ClientBuilder::new(server.url()), fast());
    assert!(matches!(next(&mut client).await, Event::Open { attempt: 0, protocol: None }));
    assert!(client.is_connected());
    client.send("before").unwrap();
    assert_eq!(text(&mut client).await, "before");

    server.stop().await;
    match until(&mut client, "the close", is_close).await {
        Event::Close { was_clean, code, .. } => assert!(!was_clean && code == CloseCode::ABNORMAL, "{was_clean} {code}"),
        _ => unreachable!(),
    }
    assert!(!client.is_connected());
    for i in 1..=3 {
        client.send(format!("queued-{i}")).unwrap();
    }
    assert_eq!(client.sender().queued(), 3);
    // Let a few attempts fail against the dead port first.
    until(&mut client, "a second retry", |e| matches!(e, Event::Reconnecting { attempt: 2.., .. })).await;

    let server = EchoServer::start(addr).await;
    match until(&mut client, "the reconnection", is_open).await {
        Event::Open { attempt, .. } => assert!(attempt >= 2, "attempt {attempt}"),
        _ => unreachable!(),
    }
    for i in 1..=3 {
        assert_eq!(text(&mut client).await, format!("queued-{i}"));
    }
    client.send("after").unwrap();
    assert_eq!(text(&mut client).await, "after");
    assert_eq!(server.received(), ["queued-1", "queued-2", "queued-3", "after"], "each queued message arrives exactly once");

    client.close(CloseCode::NORMAL, "done").unwrap();
    match until(&mut client, "the final close", is_close).await {
        Event::Close { was_clean, code, .. } => assert!(was_clean && code == CloseCode::NORMAL, "{was_clean} {code}"),
        _ => unreachable!(),
    }
    assert!(tokio::time::timeout(WAIT, client.next_event()).await.unwrap().is_none(), "no reconnect after close()");
    assert_eq!(client.send("late"), Err(ClientError::Closed));
}

#[tokio::test]
async fn close_sends_everything_queued_before_it() {
    let server = EchoServer::start("127.0.0.1:0".parse().unwrap()).await;
    let mut client = ReconnectingClient::new(ClientBuilder::new(server.url()), fast());
    until(&mut client, "the connection", is_open).await;
    // Far more than the socket's write buffer takes at once (128 KiB).
    let chunk = "x".repeat(4096);
    for i in 0..300 {
        client.send(format!("{i:03}{chunk}")).unwrap();
    }
    client.close(CloseCode::NORMAL, "").unwrap();
    assert_eq!(client.send("too late"), Err(ClientError::Closed));
    for i in 0..300 {
        let echo = text(&mut client).await;
        assert_eq!(&echo[..3], format!("{i:03}"));
    }
    assert!(matches!(next(&mut client).await, Event::Close { was_clean: true, .. }));
    assert!(client.next_event().await.is_none());
    assert_eq!(server.received().len(), 300);
}

#[tokio::test]
async fn heartbeat_notices_a_server_that_stops_answering() {
    // The first connection completes the handshake, then is never read
    // again: TCP stays open, pings go unanswered. Later ones echo.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut silent = Vec::new();
        let mut first = true;
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            if std::mem::take(&mut first) {
                silent.push(tether::accept(tcp).await.unwrap());
                continue;
            }
            tokio::spawn(async move {
                let mut ws = tether::accept(tcp).await.unwrap();
                while let Some(Ok(msg)) = ws.recv().await {
                    if msg.is_data() && ws.send(msg).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    let options = ReconnectOptions {
        heartbeat_interval: Some(Duration::from_millis(200)),
        heartbeat_timeout: Duration::from_secs(1),
        ..fast()
    };
    let mut client = ReconnectingClient::new(ClientBuilder::new(format!("ws://{addr}/")), options);
    assert!(matches!(next(&mut client).await, Event::Open { attempt: 0, .. }));
    match next(&mut client).await {
        Event::Error(e) => assert!(e.is_timeout() && e.to_string().contains("heartbeat"), "{e}"),
        other => panic!("expected the heartbeat timeout, got {other:?}"),
    }
    assert!(matches!(next(&mut client).await, Event::Close { was_clean: false, code: CloseCode::ABNORMAL, .. }));
    assert!(matches!(next(&mut client).await, Event::Reconnecting { attempt: 1, .. }));
    assert!(matches!(next(&mut client).await, Event::Open { attempt: 1, .. }));
    // The live connection answers the heartbeat: it stays up well past the timeout.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    client.send("still here").unwrap();
    assert!(matches!(next(&mut client).await, Event::Message(Message::Text(t)) if t == "still here"));
}

#[tokio::test]
async fn a_handshake_that_never_answers_times_out_and_is_retried() {
    // Accepts TCP, reads nothing, answers nothing.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held: Vec<TcpStream> = Vec::new();
        loop {
            held.push(listener.accept().await.unwrap().0);
        }
    });
    let config = Config { handshake_timeout: Duration::from_millis(200), ..Config::default() };
    let options = ReconnectOptions { max_attempts: Some(1), ..fast() };
    let mut client = ReconnectingClient::new(ClientBuilder::new(format!("ws://{addr}/")).config(config), options);
    assert!(matches!(next(&mut client).await, Event::Error(e) if e.is_timeout()));
    assert!(matches!(next(&mut client).await, Event::Reconnecting { attempt: 1, .. }));
    assert!(matches!(next(&mut client).await, Event::Error(e) if e.is_timeout()));
    assert!(matches!(next(&mut client).await, Event::GaveUp { attempts: 1 }));
    assert!(client.next_event().await.is_none());
}

#[tokio::test]
async fn backoff_delays_grow_with_jitter_within_bounds() {
    let backoff = Backoff { min_delay: Duration::from_millis(10), max_delay: Duration::from_millis(80), factor: 2.0, jitter: 0.5 };
    // The delay function itself, deterministically at the edges of the draw.
    for attempt in 1..=6 {
        let (lo, hi) = backoff.bounds(attempt);
        assert_eq!(backoff.delay_with(attempt, 0.0), lo);
        assert_eq!(backoff.delay_with(attempt, 1.0), hi);
        assert!(lo < hi && hi <= backoff.max_delay, "attempt {attempt}: {lo:?}..{hi:?}");
        if attempt > 1 {
            assert!(lo >= backoff.bounds(attempt - 1).0, "lower bounds never shrink");
        }
    }
    assert_eq!(backoff.bounds(1), (Duration::from_millis(5), Duration::from_millis(15)));
    assert_eq!(backoff.bounds(3), (Duration::from_millis(20), Duration::from_millis(60)));
    assert_eq!(backoff.bounds(6).1, Duration::from_millis(80), "capped at max_delay");

    // And what a client does against a port where nobody listens.
    let options = ReconnectOptions { backoff: backoff.clone(), max_attempts: Some(6), ..fast() };
    let started = std::time::Instant::now();
    let mut client = ReconnectingClient::new(ClientBuilder::new(format!("ws://{}/", closed_port())), options);
    let mut delays = Vec::new();
    loop {
        match tokio::time::timeout(WAIT, client.next_event()).await.expect("events keep coming") {
            Some(Event::Error(e)) => assert!(e.to_string().contains("refused"), "a readable error: {e}"),
            Some(Event::Reconnecting { attempt, delay }) => {
                assert_eq!(attempt as usize, delays.len() + 1);
                let (lo, hi) = backoff.bounds(attempt);
                assert!(delay >= lo && delay <= hi, "attempt {attempt}: {delay:?} not in {lo:?}..={hi:?}");
                delays.push(delay);
            }
            Some(Event::GaveUp { attempts }) => {
                assert_eq!(attempts, 6);
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(client.next_event().await.is_none());
    assert_eq!(delays.len(), 6);
    // Jittered: six draws that all land exactly on the unjittered delay do not happen.
    assert!(delays.iter().enumerate().any(|(i, d)| *d != backoff.base_delay(i as u32 + 1)), "{delays:?}");
    // The client really waited (a lower bound only: sleeps never end early).
    assert!(started.elapsed() >= delays.iter().sum::<Duration>());
}

#[tokio::test]
async fn a_full_queue_rejects() {
    let options = ReconnectOptions { queue_limit: 3, queue_full: QueueFullPolicy::Reject, ..fast() };
    let client = ReconnectingClient::new(ClientBuilder::new(format!("ws://{}/", closed_port())), options);
    for i in 0..3 {
        client.send(format!("m{i}")).unwrap();
    }
    assert_eq!(client.send("one too many"), Err(ClientError::QueueFull { limit: 3 }));
    assert_eq!(client.sender().queued(), 3);
    assert!(matches!(client.send(Message::Ping(vec![0u8; 126].into())), Err(ClientError::InvalidMessage(_))));
    assert!(matches!(client.close(CloseCode::ABNORMAL, ""), Err(ClientError::InvalidMessage(_))), "1006 is never sent");
}

#[tokio::test]
async fn a_full_queue_can_drop_the_oldest_instead() {
    let addr = closed_port();
    let options = ReconnectOptions { queue_limit: 3, queue_full: QueueFullPolicy::DropOldest, ..fast() };
    let mut client = ReconnectingClient::new(ClientBuilder::new(format!("ws://{addr}/")), options);
    for i in 1..=5 {
        client.send(format!("m{i}")).unwrap();
    }
    until(&mut client, "a retry", |e| matches!(e, Event::Reconnecting { .. })).await;
    let server = EchoServer::start(addr).await;
    until(&mut client, "the connection", is_open).await;
    for expected in ["m3", "m4", "m5"] {
        assert_eq!(text(&mut client).await, expected);
    }
    assert_eq!(server.received(), ["m3", "m4", "m5"]);
}

#[tokio::test]
async fn send_wait_waits_for_room_instead_of_failing() {
    let addr = closed_port();
    let options = ReconnectOptions { queue_limit: 1, ..fast() };
    let mut client = ReconnectingClient::new(ClientBuilder::new(format!("ws://{addr}/")), options);
    client.send("first").unwrap();
    assert_eq!(client.send("second"), Err(ClientError::QueueFull { limit: 1 }));
    let sender = client.sender();
    let waiting = tokio::spawn(async move { sender.send_wait("second").await });
    until(&mut client, "a retry", |e| matches!(e, Event::Reconnecting { attempt: 2.., .. })).await;
    assert!(!waiting.is_finished(), "no room while the server is down");
    let server = EchoServer::start(addr).await;
    until(&mut client, "the connection", is_open).await;
    assert_eq!(text(&mut client).await, "first");
    assert_eq!(text(&mut client).await, "second");
    tokio::time::timeout(WAIT, waiting).await.unwrap().unwrap().unwrap();
    assert_eq!(server.received(), ["first", "second"]);
}

#[tokio::test]
async fn the_attempt_counter_resets_after_a_stable_connection() {
    // Every connection is closed by the server after 500 ms.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut ws = tether::accept(tcp).await.unwrap();
                tokio::time::sleep(Duration::from_millis(500)).await;
                let _ = ws.close(CloseCode::SERVICE_RESTART, "restarting").await;
            });
        }
    });
    let url = format!("ws://{addr}/");
    let attempts = |stable_after: Duration| {
        let url = url.clone();
        async move {
            let mut client = ReconnectingClient::new(ClientBuilder::new(url), ReconnectOptions { stable_after, ..fast() });
            let mut seen = Vec::new();
            while seen.len() < 3 {
                match next(&mut client).await {
                    Event::Reconnecting { attempt, .. } => seen.push(attempt),
                    Event::Close { was_clean, code, reason } => {
                        assert!(was_clean);
                        assert_eq!((code, reason.as_str()), (CloseCode::SERVICE_RESTART, "restarting"));
                    }
                    _ => {}
                }
            }
            seen
        }
    };
    assert_eq!(attempts(Duration::from_millis(100)).await, [1, 1, 1], "each connection outlived stable_after");
    assert_eq!(attempts(Duration::from_secs(60)).await, [1, 2, 3], "short-lived connections count as failures");
}

/// A tether.v1 stand-in: acks requests that carry an id (errors for the
/// topic "forbidden") and records what each connection asked for.
async fn fake_hub(addr: SocketAddr, log: Arc<Mutex<Vec<(usize, Value)>>>, first_conn: usize) -> JoinHandle<()> {
    let listener = bind(addr).await;
    tokio::spawn(async move {
        let mut connections = JoinSet::new();
        for conn in first_conn.. {
            let (tcp, _) = listener.accept().await.unwrap();
            let log = log.clone();
            connections.spawn(async move {
                let accept = |req: &tether::Request| {
                    let protocol = req.protocols().contains(&"tether.v1").then(|| "tether.v1".to_string());
                    Ok(Accept { protocol, ..Accept::default() })
                };
                let mut ws = tether::accept_with(tcp, &Config::default(), accept).await.unwrap();
                let mut seq = 0;
                while let Some(Ok(Message::Text(t))) = ws.recv().await {
                    let req: Value = serde_json::from_str(&t).unwrap();
                    log.lock().unwrap().push((conn, req.clone()));
                    let Some(id) = req.get("id") else { continue };
                    let topic = req.get("topic").cloned().unwrap_or(json!("/"));
                    seq += 1;
                    let reply = if topic == "forbidden" {
                        json!({"type": "error", "code": "forbidden", "message": "not for you", "id": id})
                    } else {
                        json!({"type": "ack", "id": id, "topic": topic, "seq": seq})
                    };
                    ws.send(reply.to_string()).await.unwrap();
                }
            });
        }
    })
}

#[tokio::test]
async fn tether_v1_subscriptions_are_renewed_after_a_reconnect() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let addr = closed_port();
    let hub = fake_hub(addr, log.clone(), 1).await;
    let options = ReconnectOptions { json: true, ..fast() };
    let mut client = ReconnectingClient::new(ClientBuilder::new(format!("ws://{addr}/lobby")), options);
    assert!(matches!(next(&mut client).await, Event::Open { protocol: Some(p), .. } if p == "tether.v1"));

    let ack = client.subscribe("news").await.unwrap();
    assert_eq!(ack.topic.as_deref(), Some("news"));
    let Ack { seq, .. } = client.publish("news", json!({"headline": "hi"})).await.unwrap();
    assert!(seq.is_some());
    client.chat("hello").await.unwrap();
    match client.subscribe("forbidden").await {
        Err(ClientError::Refused { code, message }) => assert_eq!((code.as_str(), message.as_str()), ("forbidden", "not for you")),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(client.sender().topics(), ["news"], "a refused subscription is not renewed");

    hub.abort();
    let _ = hub.await;
    until(&mut client, "the close", is_close).await;
    let _hub = fake_hub(addr, log.clone(), 100).await;
    until(&mut client, "the reconnection", is_open).await;
    // Acks travel with the events: keep reading them while waiting.
    let sender = client.sender();
    let ack = tokio::select! {
        ack = sender.publish("news", 2) => ack.unwrap(),
        _ = until(&mut client, "nothing", |_| false) => unreachable!(),
    };
    assert_eq!(ack.topic.as_deref(), Some("news"));
    let second: Vec<Value> = log.lock().unwrap().iter().filter(|(conn, _)| *conn >= 100).map(|(_, v)| v.clone()).collect();
    assert_eq!(second[0], json!({"type": "subscribe", "topic": "news"}), "renewed first, before anything else: {second:?}");
    assert_eq!(second.iter().filter(|v| v["type"] == "subscribe").count(), 1, "only the accepted topic: {second:?}");
    assert_eq!(second[1]["type"], "publish");
}

#[tokio::test]
async fn helpers_need_tether_v1_and_plain_clients_get_plain_messages() {
    let server = EchoServer::start("127.0.0.1:0".parse().unwrap()).await;
    let mut client = ReconnectingClient::new(ClientBuilder::new(server.url()), fast());
    assert_eq!(client.subscribe("news").await, Err(ClientError::NotJson));
    until(&mut client, "the connection", is_open).await;
    client.send(vec![1u8, 2, 3]).unwrap();
    client.send(Message::Ping("are you there".into())).unwrap();
    assert!(matches!(next(&mut client).await, Event::Message(Message::Binary(b)) if b[..] == [1, 2, 3]));
    assert!(matches!(next(&mut client).await, Event::Message(Message::Pong(p)) if p[..] == b"are you there"[..]));
}
