//! The HTTP transport on two nodes with no sticky sessions: real Redis,
//! two `tether serve --broker redis://` nodes, nginx round-robin with
//! deploy/nginx-no-websocket.conf (upgrades refused). An HTTP-transport
//! client's POSTs and resumed streams land on both nodes and are routed
//! through Redis to the node holding the session; every message arrives
//! once and in order, at the client itself and at a WebSocket client on
//! the other node, and the WebSocket client's messages reach it.

mod common;
use common::{Nginx, Redis, Server};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use std::time::Duration;

/// A Server-Sent Events stream read through hyper (which undoes nginx's
/// chunked encoding).
struct Sse {
    body: hyper::body::Incoming,
    buf: String,
}

/// One event: its id, its `event:` name and its data.
#[derive(Debug, Default)]
struct Event {
    id: Option<String>,
    name: Option<String>,
    data: String,
}

async fn request(port: u16, req: hyper::Request<String>) -> hyper::Response<hyper::body::Incoming> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.unwrap();
    tokio::spawn(conn);
    send.send_request(req).await.unwrap()
}

impl Sse {
    async fn open(port: u16, path: &str, last_event_id: Option<&str>) -> Sse {
        let mut req = hyper::Request::get(path).header("host", "localhost").header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id);
        }
        let resp = request(port, req.body(String::new()).unwrap()).await;
        assert_eq!(resp.status(), 200, "stream {path} (Last-Event-ID {last_event_id:?})");
        Sse { body: resp.into_body(), buf: String::new() }
    }

    async fn next(&mut self) -> Event {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut event = Event::default();
                let mut data = Vec::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id: ") {
                        event.id = Some(v.to_string());
                    } else if let Some(v) = line.strip_prefix("event: ") {
                        event.name = Some(v.to_string());
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data.push(v);
                    }
                }
                event.data = data.join("\n");
                // Comments (": keep-alive") and "retry:" are not events.
                if event.id.is_some() || event.name.is_some() || !data.is_empty() {
                    return event;
                }
                continue;
            }
            let frame = tokio::time::timeout(Duration::from_secs(10), self.body.frame()).await.expect("no event in 10 s").expect("stream ended").unwrap();
            if let Ok(bytes) = frame.into_data() {
                self.buf.push_str(std::str::from_utf8(&bytes).unwrap());
            }
        }
    }
}

async fn post(port: u16, path: &str, body: String) -> (u16, String) {
    let req = hyper::Request::post(path).header("host", "localhost").header("content-type", "text/plain").body(body).unwrap();
    let resp = request(port, req).await;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Wait until `n` nodes listen on their relay channels.
async fn wait_relays(redis: &Redis, n: usize) {
    let client = redis::Client::open(redis.url()).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    for _ in 0..500 {
        let channels: Vec<String> = redis::cmd("PUBSUB").arg("CHANNELS").arg("tether:relay:*").query_async(&mut con).await.unwrap();
        if channels.len() >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the nodes' relays did not subscribe");
}

fn chat_batch(content: &str, id: usize) -> String {
    serde_json::to_string(&vec![serde_json::json!({"type": "chat", "content": content, "id": id}).to_string()]).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_sessions_route_between_nodes_behind_round_robin() {
    let Some(redis) = Redis::start() else { return };
    let broker = redis.url();
    let args = ["--broker", broker.as_str(), "--heartbeat-interval", "5s"];
    let a = Server::start(&args);
    let mut b = Server::start(&args);
    let Some(nginx) = Nginx::start_conf("nginx-no-websocket.conf", &[a.port, b.port], "max_fails=1 fail_timeout=5s") else { return };
    wait_relays(&redis, 2).await;

    // This proxy refuses upgrades.
    let refused = tether::ClientBuilder::new(nginx.url("/mixed")).protocol("tether.v1").connect().await;
    assert!(refused.is_err(), "a WebSocket through nginx-no-websocket.conf");

    // A WebSocket client straight on node A.
    let (mut ws, mut ws_inbox) = common::v1_split(&a.url("/mixed"), "ws").await;
    assert_eq!(ws_inbox.recv().await.unwrap()["type"], "welcome");

    // The HTTP-transport client, through nginx.
    let mut sse = Sse::open(nginx.port, "/mixed?protocol=tether.v1", None).await;
    let first = sse.next().await;
    assert_eq!(first.name.as_deref(), Some("session"));
    let key = first.data;
    let mut last_id = None;
    let mut seen_http = Vec::new(); // chat contents, as the HTTP client sees them
    const N: usize = 40;
    for i in 0..N {
        let (status, body) = post(nginx.port, &format!("/mixed?session={key}&seq={}", i + 1), chat_batch(&format!("h{i}"), i)).await;
        assert_eq!(status, 200, "POST {i}: {body}\n{}", nginx.error_log());
        if i % 4 == 0 {
            let text = tether::Message::text(serde_json::json!({"type": "chat", "content": format!("w{}", i / 4)}).to_string());
            ws.send(text).await.unwrap();
        }
        // Every 8 POSTs the stream drops and resumes through nginx, on
        // whichever node round-robin picks.
        if i % 8 == 7 {
            while seen_http.last() != Some(&format!("h{i}")) {
                let ev = sse.next().await;
                if ev.id.is_some() {
                    last_id = ev.id.clone();
                }
                let env: serde_json::Value = serde_json::from_str(&ev.data).unwrap_or_default();
                if env["type"] == "message" {
                    seen_http.push(env["content"].as_str().unwrap_or_default().to_string());
                }
            }
            drop(sse);
            sse = Sse::open(nginx.port, "/mixed?protocol=tether.v1", last_id.as_deref()).await;
        }
    }
    let want_h: Vec<String> = (0..N).map(|i| format!("h{i}")).collect();
    let want_w: Vec<String> = (0..N / 4).map(|i| format!("w{i}")).collect();
    while !(seen_http.iter().filter(|c| c.starts_with('w')).count() == want_w.len() && seen_http.contains(&want_h[N - 1])) {
        let ev = sse.next().await;
        let env: serde_json::Value = serde_json::from_str(&ev.data).unwrap_or_default();
        if env["type"] == "message" {
            seen_http.push(env["content"].as_str().unwrap_or_default().to_string());
        }
    }
    // Once each, in order, across five resumes.
    assert_eq!(seen_http.iter().filter(|c| c.starts_with('h')).cloned().collect::<Vec<_>>(), want_h);
    assert_eq!(seen_http.iter().filter(|c| c.starts_with('w')).cloned().collect::<Vec<_>>(), want_w);

    // The WebSocket client got the HTTP client's messages once, in order.
    let mut seen_ws = Vec::new();
    while seen_ws.iter().filter(|c: &&String| c.starts_with('h')).count() < N {
        let env = tokio::time::timeout(Duration::from_secs(10), ws_inbox.recv()).await.expect("ws: no message in 10 s").unwrap();
        if env["type"] == "message" {
            seen_ws.push(env["content"].as_str().unwrap_or_default().to_string());
        }
    }
    assert_eq!(seen_ws.iter().filter(|c| c.starts_with('h')).cloned().collect::<Vec<_>>(), want_h);

    // The POSTs and the resumed streams landed on both nodes.
    let log = nginx.access_log();
    for (what, pred) in [("POST", Box::new(|l: &str| l.starts_with("POST ")) as Box<dyn Fn(&str) -> bool>), ("resume", Box::new(|l: &str| l.starts_with("GET ") && l.split(' ').nth(2).is_some_and(|id| id != "-")))] {
        for node in [a.port, b.port] {
            let n = log.lines().filter(|l| pred(l) && l.contains(&format!("127.0.0.1:{node}"))).count();
            assert!(n > 0, "no {what} reached node {node}:\n{log}");
        }
    }

    // The client closes: sent to the node that does not hold the session,
    // the close is routed to the one that does, and the WebSocket client
    // hears the leave at once (not after the heartbeat gives up on it).
    let holder_is_b = {
        let (_, body) = common::http_get(b.port, "/metrics").await;
        body.lines().any(|l| l.starts_with("tether_connections_by_transport{transport=\"http\"} 1"))
    };
    let other = if holder_is_b { a.port } else { b.port };
    drop(sse);
    let (status, body) = post(other, &format!("/mixed?session={key}&close=1"), String::new()).await;
    assert_eq!((status, body.as_str()), (200, "{\"ok\":true}"));
    let session = key.split('.').next().unwrap().to_string();
    loop {
        let env = tokio::time::timeout(Duration::from_secs(10), ws_inbox.recv()).await.expect("ws: no leave in 10 s").unwrap();
        if env["type"] == "presence" && env["event"] == "leave" && env["session"] == session.as_str() {
            break;
        }
    }

    // The node holding the session dies: its key routes nowhere, 404 (the
    // client opens a new session), from either node.
    if holder_is_b {
        b.signal("KILL");
        b.wait_exit(Duration::from_secs(5));
    } else {
        drop(a);
    }
    let mut status = 0;
    for _ in 0..4 {
        status = post(nginx.port, &format!("/mixed?session={key}&seq={}", N + 1), chat_batch("late", 99)).await.0;
        if status == 404 {
            break;
        }
    }
    assert_eq!(status, 404, "a POST for a session whose node is gone");
}
