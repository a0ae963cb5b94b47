//! The hub's side of backend hooks, in-process with paused time: a
//! connection may have at most `MAX_PENDING_PER_CONNECTION` hooked requests
//! waiting (then it is not read), answers take effect in the order of the
//! requests, and a waiting request does not hold up the others.

use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tether::{Accept, ClientRequest, Config, Message, WebSocket};
use tether_hub::hooks::{HookAnswer, HookCall, HookFuture, HookRequest, Hooks, MAX_PENDING_PER_CONNECTION};
use tether_hub::namespace::{Namespace, Namespaces};
use tether_hub::{ConnInfo, Hub, HubConfig, MemoryBroker, PROTOCOL_V1};
use tokio::io::DuplexStream;
use tokio::sync::{oneshot, Notify};
use tokio::time::timeout;

type Ws = WebSocket<DuplexStream>;

/// A backend that answers only when the test says so.
#[derive(Default)]
struct Gate {
    calls: Mutex<Vec<(String, Option<oneshot::Sender<HookAnswer>>)>>,
    called: Notify,
}

impl Hooks for Gate {
    fn call(&self, call: HookCall) -> HookFuture {
        let (tx, rx) = oneshot::channel();
        let topic = match call.request {
            HookRequest::Subscribe { topic } => topic.to_string(),
            other => other.kind().to_string(),
        };
        self.calls.lock().unwrap().push((topic, Some(tx)));
        self.called.notify_one();
        Box::pin(async move { rx.await.unwrap_or_else(|_| HookAnswer::refuse("unavailable", "gone")) })
    }
}

impl Gate {
    fn count(&self) -> usize {
        self.calls.lock().unwrap().len()
    }

    async fn wait_for(&self, n: usize) {
        while self.count() < n {
            self.called.notified().await;
        }
    }

    fn answer(&self, i: usize, answer: HookAnswer) {
        let tx = self.calls.lock().unwrap()[i].1.take().expect("not answered yet");
        tx.send(answer).unwrap();
    }
}

async fn join(hub: &Arc<Hub>) -> Ws {
    let (server_io, client_io) = tokio::io::duplex(64 * 1024);
    let hub = hub.clone();
    tokio::spawn(async move {
        let ws = tether::accept_with(server_io, &Config::default(), |_| Ok(Accept { protocol: Some(PROTOCOL_V1.into()), headers: Vec::new() })).await.unwrap();
        hub.run_connection(ws, ConnInfo::new("/")).await;
    });
    let request = ClientRequest { host: "hub.test".into(), target: "/".into(), protocols: vec![PROTOCOL_V1.into()], ..ClientRequest::default() };
    let (mut ws, _) = tether::client_handshake(client_io, &request, &Config::default()).await.unwrap();
    assert_eq!(next(&mut ws).await.unwrap()["type"], "welcome");
    ws
}

/// The next envelope other than presence, or `None` if nothing comes for
/// 5 s (of paused time: only once every task waits).
async fn next(ws: &mut Ws) -> Option<Value> {
    loop {
        match timeout(Duration::from_secs(5), ws.recv()).await {
            Err(_) => return None,
            Ok(Some(Ok(Message::Text(t)))) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                if v["type"] != "presence" {
                    return Some(v);
                }
            }
            Ok(Some(Ok(_))) => continue,
            Ok(other) => panic!("connection ended: {other:?}"),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn hooked_requests_are_bounded_per_connection_and_answered_in_order() {
    let hub = Hub::new(HubConfig::default(), Arc::new(MemoryBroker::new()));
    hub.set_namespaces(Namespaces::new(vec![Namespace { subscribe_hook: true, ..Namespace::new("p:") }]));
    let gate = Arc::new(Gate::default());
    hub.set_hooks(gate.clone());
    let mut ws = join(&hub).await;
    let n = MAX_PENDING_PER_CONNECTION + 4;
    for i in 0..n {
        ws.send(json!({"type": "subscribe", "topic": format!("p:{i}"), "id": format!("s{i}")}).to_string()).await.unwrap();
    }
    ws.send(json!({"type": "ping", "id": "ping"}).to_string()).await.unwrap();

    gate.wait_for(MAX_PENDING_PER_CONNECTION).await;
    // The bound is full: the connection is not read, so neither the next
    // subscribes nor the ping behind them are seen.
    assert_eq!(next(&mut ws).await, None);
    assert_eq!(gate.count(), MAX_PENDING_PER_CONNECTION);
    // An answer to the second request waits for the first one's.
    gate.answer(1, HookAnswer::Allow);
    assert_eq!(next(&mut ws).await, None, "s1 is not applied before s0");
    gate.answer(0, HookAnswer::refuse("forbidden", "not yours"));
    let first = next(&mut ws).await.unwrap();
    assert_eq!((first["id"].as_str(), first["code"].as_str()), (Some("s0"), Some("forbidden")), "{first}");
    assert_eq!(next(&mut ws).await.unwrap()["id"], "s1");
    // Room again: reading resumes and the rest come in.
    gate.wait_for(MAX_PENDING_PER_CONNECTION + 2).await;
    for i in 2..n {
        gate.wait_for(i + 1).await;
        gate.answer(i, HookAnswer::Allow);
    }
    let mut ids = Vec::new();
    while let Some(v) = next(&mut ws).await {
        assert_eq!(v["type"], "ack", "{v}");
        ids.push(v["id"].as_str().unwrap().to_string());
    }
    let subscribes: Vec<String> = ids.iter().filter(|id| id.starts_with('s')).cloned().collect();
    assert_eq!(subscribes, (2..n).map(|i| format!("s{i}")).collect::<Vec<_>>(), "in order");
    assert!(ids.contains(&"ping".to_string()));
    assert_eq!(gate.count(), n, "one call per hooked request");
}
