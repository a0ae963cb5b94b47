//! Hooks into the backend against the real binary and a real backend
//! process (examples/auth-backend/backend.py, Python's standard library):
//! the backend's answers decide who connects, who subscribes to a private
//! topic, what is published (refused or rewritten) and what an `rpc`
//! returns; when it is down, slow or too busy, the documented failure
//! mode happens and no request is left without an answer.

mod common;

use common::backend::Backend;
use common::{next_envelope as next, Server, Ws};
use serde_json::{json, Value};
use std::time::Duration;
use tether::ClientBuilder;

const SECRET: &str = "hook-secret";

/// A config file with a hooked `private:` (subscribe) and `chat:` (publish) namespace.
fn config(name: &str) -> String {
    let dir = std::env::temp_dir().join(format!("tether-hooks-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tether.toml");
    std::fs::write(&path, "[namespaces.\"private:\"]\nsubscribe-hook = true\n\n[namespaces.\"chat:\"]\npublish-hook = true\n").unwrap();
    path.to_string_lossy().into_owned()
}

async fn connect(server: &Server, token: Option<&str>) -> Result<Ws, tether::Error> {
    common::v1_bearer(server, "/", token).await
}

/// Send `request` with `id` and wait for the answer carrying that id.
async fn ask(ws: &mut Ws, mut request: Value, id: &str) -> Value {
    request["id"] = json!(id);
    ws.send(request.to_string()).await.unwrap();
    loop {
        let v = next(ws).await;
        if v["id"] == id {
            return v;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backends_answers_decide_connect_subscribe_publish_and_rpc() {
    let backend = Backend::start(SECRET, "ok");
    let config = config("decide");
    let hooks = backend.hooks_url();
    let server = Server::start(&["--config", &config, "--hook-url", &hooks, "--hook-secret", SECRET, "--hook-connect", "closed", "--hook-rpc", "--hook-timeout", "2s"]);
    // connect: no token 401, a banned user 403, alice admitted as alice.
    assert_eq!(connect(&server, None).await.err().and_then(|e| e.http_status()), Some(401));
    assert_eq!(connect(&server, Some("banned")).await.err().and_then(|e| e.http_status()), Some(403));
    let mut alice = connect(&server, Some("user:alice")).await.unwrap();
    let mut bob = connect(&server, Some("user:bob")).await.unwrap();
    // The capabilities the connect hook gave: chat:* yes, admin:x no.
    assert_eq!(ask(&mut alice, json!({"type": "subscribe", "topic": "chat:lobby"}), "s1").await["type"], "ack");
    let refused = ask(&mut alice, json!({"type": "subscribe", "topic": "admin:x"}), "s2").await;
    assert_eq!((refused["type"].as_str(), refused["code"].as_str()), (Some("error"), Some("forbidden")), "{refused}");
    // subscribe hook: private:alice is alice's, private:bob is not.
    assert_eq!(ask(&mut alice, json!({"type": "subscribe", "topic": "private:alice"}), "s3").await["type"], "ack");
    let refused = ask(&mut alice, json!({"type": "subscribe", "topic": "private:bob"}), "s4").await;
    assert_eq!(refused["code"], "forbidden", "{refused}");
    assert_eq!(refused["message"], "private:bob is not yours");
    // publish hook: rewritten, refused, passed as is; bob sees what the backend decided.
    assert_eq!(ask(&mut bob, json!({"type": "subscribe", "topic": "chat:lobby"}), "b1").await["type"], "ack");
    assert_eq!(ask(&mut alice, json!({"type": "publish", "topic": "chat:lobby", "content": "darn it"}), "p1").await["type"], "ack");
    let refused = ask(&mut alice, json!({"type": "publish", "topic": "chat:lobby", "content": "buy spam"}), "p2").await;
    assert_eq!((refused["code"].as_str(), refused["message"].as_str()), (Some("forbidden"), Some("no spam here")), "{refused}");
    assert_eq!(ask(&mut alice, json!({"type": "publish", "topic": "chat:lobby", "content": {"n": 1}}), "p3").await["type"], "ack");
    let first = next(&mut bob).await;
    assert_eq!((first["content"].as_str(), first["sender"].as_str()), (Some("d**n it"), Some("alice")), "{first}");
    assert_eq!(next(&mut bob).await["content"], json!({"n": 1}), "the refused message never arrived");
    // rpc: answered by the backend, its errors passed on, a slow one times out.
    let sum = ask(&mut alice, json!({"type": "rpc", "method": "add", "data": {"a": 2, "b": 3}}), "r1").await;
    assert_eq!((sum["type"].as_str(), &sum["data"]), (Some("rpc_result"), &json!({"sum": 5})), "{sum}");
    assert_eq!(ask(&mut bob, json!({"type": "rpc", "method": "whoami"}), "r2").await["data"]["user"], "bob");
    let missing = ask(&mut alice, json!({"type": "rpc", "method": "nope"}), "r3").await;
    assert_eq!((missing["type"].as_str(), missing["code"].as_str()), (Some("error"), Some("not_found")), "{missing}");
    let slow = ask(&mut alice, json!({"type": "rpc", "method": "sleep", "data": {"s": 5}}), "r4").await;
    assert_eq!(slow["code"], "timeout", "{slow}");
    // The Rust reconnecting client's rpc(): the answer, or the backend's error code.
    let builder = ClientBuilder::new(server.url("/")).header("Authorization", "Bearer user:carol");
    let mut client = tether::ReconnectingClient::new(builder, tether::reconnect::ReconnectOptions { json: true, ..Default::default() });
    let rust = client.sender();
    tokio::spawn(async move { while client.next_event().await.is_some() {} });
    assert_eq!(rust.rpc("whoami", json!({})).await.unwrap()["user"], "carol");
    assert_eq!(rust.rpc("add", json!({"a": 1, "b": 1})).await.unwrap(), json!({"sum": 2}));
    match rust.rpc("nope", Value::Null).await {
        Err(tether::reconnect::ClientError::Refused { code, .. }) => assert_eq!(code, "not_found"),
        other => panic!("{other:?}"),
    }
    // Every call the backend saw carried a valid signature.
    // (5 connects, 2 subscribes, 3 publishes, 7 rpcs.)
    let calls = backend.until(|got| got.iter().filter(|c| c["hook"].is_string()).count() >= 17);
    assert!(calls.iter().all(|c| c["valid"] == true), "{calls:?}");
    assert!(common::metric(server.port, "tether_hook_calls_total{hook=\"publish\",outcome=\"rewrite\"}").await >= 1.0);
    assert!(common::metric(server.port, "tether_hook_calls_total{hook=\"connect\",outcome=\"deny\"}").await >= 2.0);
}

/// The status of an HTTP-transport stream request (`GET /` for
/// `text/event-stream`, bearer alice) with `extra` headers.
async fn sse_status(port: u16, extra: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let req = format!("GET /?protocol=tether.v1 HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\nAuthorization: Bearer user:alice\r\n{extra}Connection: close\r\n\r\n");
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut head = [0u8; 12];
    tokio::time::timeout(Duration::from_secs(10), tcp.read_exact(&mut head)).await.expect("no answer in 10 s").unwrap();
    std::str::from_utf8(&head[9..12]).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_down_backend_fails_closed_by_default_and_open_when_asked() {
    // Nothing listens there: every call is refused at once.
    let down = format!("http://127.0.0.1:{}/hooks", common::free_port());
    let config = config("down");
    let closed = Server::start(&["--config", &config, "--hook-url", &down, "--hook-connect", "closed"]);
    assert_eq!(connect(&closed, Some("user:alice")).await.err().and_then(|e| e.http_status()), Some(503));
    // The HTTP transport's stream is asked about too, also when it brings a
    // resume id that names no session (a bad Last-Event-ID once skipped the hook).
    assert_eq!(sse_status(closed.port, "").await, 503);
    assert_eq!(sse_status(closed.port, "Last-Event-ID: garbage\r\n").await, 503);
    assert_eq!(sse_status(closed.port, "Last-Event-ID: nope-1.0:5\r\n").await, 404, "a well-formed unknown session");
    let open = Server::start(&["--config", &config, "--hook-url", &down, "--hook-connect", "open", "--hook-subscribe-failure", "open", "--hook-rpc"]);
    let mut ws = connect(&open, Some("user:alice")).await.expect("admitted: the connect hook fails open");
    assert_eq!(ask(&mut ws, json!({"type": "subscribe", "topic": "private:x"}), "s").await["type"], "ack", "subscribe fails open");
    let refused = ask(&mut ws, json!({"type": "publish", "topic": "chat:x", "content": 1}), "p").await;
    assert_eq!(refused["code"], "unavailable", "publish fails closed (its default): {refused}");
    let refused = ask(&mut ws, json!({"type": "rpc", "method": "add"}), "r").await;
    assert_eq!(refused["code"], "unavailable", "an rpc has no open mode: {refused}");
    assert!(common::metric(open.port, "tether_hook_calls_total{hook=\"subscribe\",outcome=\"unavailable\"}").await >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_backend_fills_the_in_flight_bound_then_times_out() {
    let backend = Backend::start(SECRET, "slow");
    let config = config("slow");
    let hooks = backend.hooks_url();
    let server = Server::start(&["--config", &config, "--hook-url", &hooks, "--hook-secret", SECRET, "--hook-timeout", "8s", "--hook-max-in-flight", "4"]);
    let mut a = connect(&server, None).await.unwrap();
    for i in 0..4 {
        a.send(json!({"type": "subscribe", "topic": format!("private:{i}"), "id": format!("s{i}")}).to_string()).await.unwrap();
    }
    // The backend holds 4 calls: the bound is full.
    let mut seen = 0;
    while seen < 4 {
        let v = backend.lines.recv_timeout(Duration::from_secs(20)).expect("the backend gets the calls");
        seen += usize::from(v["hook"] == "subscribe");
    }
    // A fifth is not queued: answered at once by the failure mode (closed).
    let mut b = connect(&server, None).await.unwrap();
    let busy = ask(&mut b, json!({"type": "subscribe", "topic": "private:5"}), "s5").await;
    assert_eq!(busy["code"], "unavailable", "{busy}");
    assert!(busy["message"].as_str().unwrap().contains("too many"), "{busy}");
    // The waiting connection is still served meanwhile.
    assert_eq!(ask(&mut a, json!({"type": "ping"}), "ping").await["type"], "ack");
    // Each of the 4 ends with the timeout's error: none hangs.
    for i in 0..4 {
        let v = loop {
            let v = next(&mut a).await;
            if v["id"] == format!("s{i}") {
                break v;
            }
        };
        assert_eq!(v["code"], "timeout", "{v}");
    }
    assert_eq!(common::metric(server.port, "tether_hook_calls_total{hook=\"subscribe\",outcome=\"busy\"}").await, 1.0);
    assert_eq!(common::metric(server.port, "tether_hook_calls_total{hook=\"subscribe\",outcome=\"timeout\"}").await, 4.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_with_16_requests_waiting_is_not_read_until_they_are_answered() {
    let backend = Backend::start(SECRET, "slow");
    let config = config("paused");
    let hooks = backend.hooks_url();
    let server = Server::start(&["--config", &config, "--hook-url", &hooks, "--hook-secret", SECRET, "--hook-timeout", "2s"]);
    let mut ws = connect(&server, None).await.unwrap();
    for i in 0..20 {
        ws.send(json!({"type": "subscribe", "topic": format!("private:{i}"), "id": format!("s{i}")}).to_string()).await.unwrap();
    }
    ws.send(json!({"type": "ping", "id": "ping"}).to_string()).await.unwrap();
    // Every request is answered (none hangs), the subscribes in order. The ping comes
    // after 20 subscribes and no request is read while 16 wait, so it is
    // read (and answered) only once at least 20 - 16 + 1 = 5 have ended:
    // exactly 16 when the 16 reached the backend together and time out
    // together, fewer when the server read the subscribes in pieces.
    let mut ids = Vec::new();
    while ids.len() < 21 {
        let v = next(&mut ws).await;
        if let Some(id) = v["id"].as_str() {
            if id.starts_with('s') {
                assert_eq!(v["code"], "timeout", "{v}");
            }
            ids.push(id.to_string());
        }
    }
    let ping = ids.iter().position(|id| id == "ping").unwrap();
    assert!(ping >= 5, "the ping was read while 16 subscribes were waiting: {ids:?}");
    let subscribes: Vec<&String> = ids.iter().filter(|id| id.starts_with('s')).collect();
    assert_eq!(subscribes, (0..20).map(|i| format!("s{i}")).collect::<Vec<_>>().iter().collect::<Vec<_>>());
    let seen = backend.until(|got| got.iter().filter(|c| c["hook"] == "subscribe").count() >= 20);
    assert_eq!(seen.iter().filter(|c| c["hook"] == "subscribe").count(), 20);
}
