//! Lifecycle webhooks against a real backend process
//! (examples/auth-backend/backend.py, Python's standard library): the
//! backend verifies every signature, and its answers decide what tether
//! does (a 401 for a bad signature is retried, then dropped and counted);
//! a slow backend fills the bounded queue, events are dropped and counted,
//! and clients are served all along.

mod common;

use common::backend::Backend;
use common::Server;
use serde_json::{json, Value};
use std::time::Duration;

async fn client(url: &str) -> (tether::split::WsWriter<tether::MaybeTlsStream>, tokio::sync::mpsc::UnboundedReceiver<Value>) {
    let (mut w, mut r) = common::v1_split(url, "client").await;
    let welcome = tokio::time::timeout(Duration::from_secs(10), r.recv()).await.unwrap().unwrap();
    assert_eq!(welcome["type"], "welcome");
    w.send(json!({"type": "ping", "id": 0}).to_string()).await.unwrap();
    (w, r)
}

async fn ack(r: &mut tokio::sync::mpsc::UnboundedReceiver<Value>, id: &str) {
    loop {
        let v = tokio::time::timeout(Duration::from_secs(15), r.recv()).await.expect("an answer").expect("open");
        if v["type"] == "ack" && v["id"] == id {
            return;
        }
    }
}

fn events_for<'a>(got: &'a [Value], topic: &str) -> Vec<&'a str> {
    got.iter().filter(|v| v["webhook"]["topic"] == topic).map(|v| v["webhook"]["event"].as_str().unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backend_gets_signed_lifecycle_events() {
    let backend = Backend::start("hook-secret", "ok");
    let server = Server::start(&["--webhook-url", &backend.url(), "--webhook-secret", "hook-secret"]);
    let (mut w, mut r) = client(&server.url("/lobby")).await;
    w.send(json!({"type": "subscribe", "topic": "chat", "id": "s"}).to_string()).await.unwrap();
    ack(&mut r, "s").await;
    w.send(json!({"type": "unsubscribe", "topic": "chat", "id": "u"}).to_string()).await.unwrap();
    ack(&mut r, "u").await;
    let got = backend.until(|got| events_for(got, "chat").len() >= 4);
    assert_eq!(events_for(&got, "chat"), ["topic_occupied", "presence_join", "presence_leave", "topic_vacated"], "{got:?}");
    assert!(got.iter().all(|v| v["valid"] == true), "every signature checks out: {got:?}");
    let join = got.iter().find(|v| v["webhook"]["event"] == "presence_join" && v["webhook"]["topic"] == "chat").unwrap();
    assert!(join["webhook"]["session"].as_str().unwrap().contains('-'), "{join}");
    assert_eq!(common::metric(server.port, "tether_webhook_events_total{outcome=\"dropped_failed\"}").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_secret_is_refused_by_the_backend_retried_then_dropped() {
    let backend = Backend::start("hook-secret", "ok");
    let server = Server::start(&["--webhook-url", &backend.url(), "--webhook-secret", "not-the-secret"]);
    let (mut w, mut r) = client(&server.url("/lobby")).await;
    w.send(json!({"type": "subscribe", "topic": "chat", "id": "s"}).to_string()).await.unwrap();
    ack(&mut r, "s").await;
    // The backend sees the batch 5 times, never with a valid signature.
    let got = backend.until(|got| got.iter().filter(|v| v["webhook"]["topic"] == "chat" && v["webhook"]["event"] == "presence_join").count() >= 5);
    assert!(got.iter().all(|v| v["valid"] == false), "{got:?}");
    let name = "tether_webhook_events_total{outcome=\"dropped_failed\"}";
    let mut dropped = 0.0;
    for _ in 0..100 {
        dropped = common::metric(server.port, name).await;
        if dropped > 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(dropped >= 2.0, "the batch (at least the room's and chat's joins) is dropped after 5 refusals: {dropped}");
    assert!(common::metric(server.port, "tether_webhook_failed_attempts_total").await >= 5.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_backend_costs_dropped_events_not_stuck_clients() {
    let backend = Backend::start("hook-secret", "slow");
    let server = Server::start(&["--webhook-url", &backend.url(), "--webhook-secret", "hook-secret", "--webhook-queue", "4", "--webhook-timeout", "300ms"]);
    let (mut w, mut r) = client(&server.url("/lobby")).await;
    // 60 subscriptions and unsubscriptions: 240 events for a queue of 4
    // behind a backend that never answers in time; every request is still answered.
    for i in 0..60 {
        let topic = format!("t{i}");
        w.send(json!({"type": "subscribe", "topic": topic, "id": format!("s{i}")}).to_string()).await.unwrap();
        ack(&mut r, &format!("s{i}")).await;
        w.send(json!({"type": "unsubscribe", "topic": topic, "id": format!("u{i}")}).to_string()).await.unwrap();
        ack(&mut r, &format!("u{i}")).await;
    }
    let full = common::metric(server.port, "tether_webhook_events_total{outcome=\"dropped_queue_full\"}").await;
    // (At most 4 wait and one batch of 100 is in flight: the rest cannot fit.)
    assert!(full > 0.0, "the bounded queue dropped what did not fit: {full}");
    let (status, _) = common::http_get(server.port, "/health").await;
    assert_eq!(status, 200);
    // A new client is served too.
    let (mut w2, mut r2) = client(&server.url("/other")).await;
    w2.send(json!({"type": "subscribe", "topic": "x", "id": "x"}).to_string()).await.unwrap();
    ack(&mut r2, "x").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_and_hooks_go_over_https_to_a_backend_with_its_own_ca() {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let dir = std::env::temp_dir().join(format!("tether-https-backend-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let backend = Backend::start_with("hook-secret", "ok", &["--tls-cert", cert, "--tls-key", key]);
    let webhook = format!("https://localhost:{}/webhook", backend.port);
    let hooks = format!("https://localhost:{}/hooks", backend.port);
    // Without the CA the backend's certificate is not trusted: the connect hook fails closed.
    let untrusted = Server::start(&["--hook-url", &hooks, "--hook-secret", "hook-secret", "--hook-connect", "closed"]);
    let refused = tether::ClientBuilder::new(untrusted.url("/?token=user:alice")).protocol("tether.v1").connect().await.err().and_then(|e| e.http_status());
    assert_eq!(refused, Some(503));
    let server = Server::start(&[
        "--backend-ca", cert, "--webhook-url", &webhook, "--webhook-secret", "hook-secret",
        "--hook-url", &hooks, "--hook-secret", "hook-secret", "--hook-connect", "closed",
    ]);
    // The connect hook (over https) admits alice; the webhooks (over https) report her.
    let (mut w, mut r) = client(&server.url("/?token=user:alice")).await;
    w.send(json!({"type": "subscribe", "topic": "chat:x", "id": "s"}).to_string()).await.unwrap();
    ack(&mut r, "s").await;
    let got = backend.until(|got| events_for(got, "chat:x").contains(&"presence_join"));
    let join = got.iter().find(|v| v["webhook"]["event"] == "presence_join" && v["webhook"]["topic"] == "chat:x").unwrap();
    assert_eq!((join["valid"].as_bool(), join["webhook"]["user"].as_str()), (Some(true), Some("alice")), "{join}");
    assert!(got.iter().any(|v| v["hook"] == "connect" && v["valid"] == true), "{got:?}");
}
