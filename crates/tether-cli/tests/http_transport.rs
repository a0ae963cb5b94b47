//! The HTTP fallback transport of the real `tether serve` over real TCP:
//! SSE stream headers, POSTs (a retry applied once, 404 for an unknown
//! session), resume by Last-Event-ID, the per-transport gauge.

mod common;
use common::{metric, Server};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Open an SSE GET on `path` with extra header lines; returns the socket.
async fn sse(port: u16, path: &str, headers: &str) -> TcpStream {
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    tcp.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n{headers}\r\n").as_bytes()).await.unwrap();
    tcp
}

/// Read from `tcp` until `needle` has been seen; everything read so far.
async fn read_until(tcp: &mut TcpStream, seen: &mut String, needle: &str) {
    let mut buf = [0u8; 4096];
    while !seen.contains(needle) {
        let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf)).await.unwrap_or_else(|_| panic!("no {needle:?} in 10 s; got {seen}")).unwrap();
        assert!(n > 0, "stream ended before {needle:?}: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
}

async fn post(port: u16, path: &str, body: &str) -> (u16, String) {
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    tcp.write_all(format!("POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).as_bytes()).await.unwrap();
    let mut out = String::new();
    tcp.read_to_string(&mut out).await.unwrap();
    let status = out.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default())
}

#[tokio::test]
async fn sse_stream_posts_and_resume() {
    let server = Server::start(&[]);
    let port = server.port;
    let mut stream = sse(port, "/chat?protocol=tether.v1", "").await;
    let mut seen = String::new();
    read_until(&mut stream, &mut seen, "\"welcome\"").await;
    let head = seen.split("\r\n\r\n").next().unwrap().to_ascii_lowercase();
    assert!(head.contains("content-type: text/event-stream"), "{head}");
    assert!(head.contains("x-accel-buffering: no"), "{head}");
    assert!(head.contains("cache-control: no-cache"), "{head}");
    let key = seen.lines().skip_while(|l| *l != "event: session").nth(1).unwrap().strip_prefix("data: ").unwrap().to_string();
    assert_eq!(metric(port, "tether_connections_by_transport{transport=\"http\"}").await, 1.0);

    let batch = r#"["{\"type\":\"chat\",\"content\":\"once\",\"id\":7}"]"#;
    let (status, body) = post(port, &format!("/chat?session={key}&seq=1"), batch).await;
    assert_eq!((status, body.as_str()), (200, "{\"ok\":true}"));
    // The response was lost, the client retries: applied once.
    let (status, body) = post(port, &format!("/chat?session={key}&seq=1"), batch).await;
    assert_eq!((status, body.as_str()), (200, "{\"ok\":true,\"duplicate\":true}"));
    let (status, _) = post(port, &format!("/chat?session={key}&seq=2"), r#"["{\"type\":\"ping\",\"id\":\"last\"}"]"#).await;
    assert_eq!(status, 200);
    read_until(&mut stream, &mut seen, "\"id\":\"last\"").await;
    assert_eq!(seen.matches("\"content\":\"once\"").count(), 1, "{seen}");

    // Unknown session, bad bodies.
    assert_eq!(post(port, "/chat?session=nope-1.0&seq=1", "[]").await.0, 404);
    assert_eq!(post(port, &format!("/chat?session={key}&seq=3"), "{not json").await.0, 400);
    assert_eq!(post(port, &format!("/chat?session={key}&seq=9"), "[]").await.0, 409);

    // The stream breaks; a new one resumes after the welcome (event 1).
    drop(stream);
    let mut resumed = sse(port, "/chat", &format!("Last-Event-ID: {key}:1\r\n")).await;
    let mut again = String::new();
    read_until(&mut resumed, &mut again, "\"id\":\"last\"").await;
    assert!(!again.contains("\"welcome\""), "event 1 is not replayed: {again}");
    assert_eq!(again.matches("\"content\":\"once\"").count(), 1, "{again}");
    assert!(!again.contains("history_gap"), "{again}");
    // An unknown session's resume is a 404: the client opens a new one.
    let mut gone = sse(port, "/chat", "Last-Event-ID: nope-1.0:5\r\nConnection: close\r\n").await;
    let mut out = String::new();
    gone.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 404"), "{out}");
}

#[tokio::test]
async fn a_topic_feed_without_sdk() {
    let server = Server::start(&[]);
    let port = server.port;
    let mut feed = sse(port, "/feed?topic=prices", "").await;
    let mut seen = String::new();
    read_until(&mut feed, &mut seen, "\"welcome\"").await;
    // A tether.v1 WebSocket client publishes to the topic.
    let (mut writer, _rx) = common::v1_split(&server.url("/pub"), "publisher").await;
    writer.send(tether::Message::text(r#"{"type":"publish","topic":"prices","content":{"eur":1.08}}"#)).await.unwrap();
    read_until(&mut feed, &mut seen, "1.08").await;
    assert!(seen.contains("\"topic\":\"prices\""), "{seen}");
    // $ topics are not readable this way.
    let mut refused = sse(port, "/feed?topic=$sys:stats", "Connection: close\r\n").await;
    let mut out = String::new();
    refused.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 403"), "{out}");
}

/// The next envelope of `inbox` that satisfies `pred`, within 10 s.
async fn next_where(inbox: &mut tokio::sync::mpsc::UnboundedReceiver<serde_json::Value>, pred: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    loop {
        let v = tokio::time::timeout(Duration::from_secs(10), inbox.recv()).await.expect("nothing within 10 s").expect("closed");
        if pred(&v) {
            return v;
        }
    }
}

#[tokio::test]
async fn a_close_post_ends_the_session_at_once() {
    // The default 30 s heartbeat: without the close, the session would
    // linger (and its leave come) 30 to 60 s after its stream went away.
    let server = Server::start(&[]);
    let port = server.port;
    let (_writer, mut inbox) = common::v1_split(&server.url("/bye"), "watcher").await;
    let mut stream = sse(port, "/bye?protocol=tether.v1", "").await;
    let mut seen = String::new();
    read_until(&mut stream, &mut seen, "\"welcome\"").await;
    let key = seen.lines().skip_while(|l| *l != "event: session").nth(1).unwrap().strip_prefix("data: ").unwrap().to_string();
    let session = key.split('.').next().unwrap().to_string();
    next_where(&mut inbox, |v| v["type"] == "presence" && v["event"] == "join" && v["session"] == session.as_str()).await;
    drop(stream);
    let (status, body) = post(port, &format!("/bye?session={key}&close=1"), "").await;
    assert_eq!((status, body.as_str()), (200, "{\"ok\":true}"));
    let leave = next_where(&mut inbox, |v| v["type"] == "presence" && v["event"] == "leave").await;
    assert_eq!(leave["session"], session.as_str());
    // Nothing more is taken for it.
    assert_eq!(post(port, &format!("/bye?session={key}&seq=1"), "[]").await.0, 404);
}
