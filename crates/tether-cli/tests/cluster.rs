//! Several nodes, for real: `tether serve --broker redis://...` twice on one
//! redis-server, behind nginx, with tether.v1 clients that check every
//! message's `(epoch, seq)`: each arrives once, in order, and any gap is
//! announced by a `history_gap` notice. The harness starts its own
//! redis-server and nginx (installed by scripts/deps.sh) on free ports.

mod common;

use common::{http_get, metric, Nginx, Redis, Server};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};
use tether::split::WsWriter;
use tether::MaybeTlsStream;
use tokio::sync::mpsc;
use tokio::time::timeout;

const FEED: &str = "feed";

/// A tether.v1 client that follows FEED and checks what it gets.
struct Peer {
    name: String,
    session: String,
    writer: WsWriter<MaybeTlsStream>,
    inbox: mpsc::UnboundedReceiver<Value>,
    /// Position in FEED: the last (epoch, seq) received.
    epoch: Option<String>,
    last: u64,
    /// Contents received on FEED, in order.
    got: Vec<Value>,
    /// A history_gap notice allows the next message to skip (or change epoch).
    gap_allowed: bool,
    gaps: Vec<Value>,
    presence: Vec<Value>,
    acks: Vec<Value>,
    errors: Vec<Value>,
    closed: bool,
}

impl Peer {
    async fn connect(url: &str, name: &str) -> Peer {
        let (writer, mut inbox) = common::v1_split(url, name).await;
        let welcome = timeout(Duration::from_secs(10), inbox.recv()).await.expect("welcome").expect("welcome");
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        let session = welcome["session"].as_str().unwrap().to_string();
        Peer {
            name: name.into(),
            session,
            writer,
            inbox,
            epoch: None,
            last: 0,
            got: Vec::new(),
            gap_allowed: false,
            gaps: Vec::new(),
            presence: Vec::new(),
            acks: Vec::new(),
            errors: Vec::new(),
            closed: false,
        }
    }

    /// Connect again (same recorded state, new session).
    async fn reconnect(&mut self, url: &str) {
        let fresh = Peer::connect(url, &self.name).await;
        self.session = fresh.session;
        self.writer = fresh.writer;
        self.inbox = fresh.inbox;
        self.closed = false;
    }

    /// The node part of the session id.
    fn node(&self) -> &str {
        self.session.split('-').next().unwrap()
    }

    async fn send(&mut self, v: Value) {
        self.writer.send(v.to_string()).await.unwrap_or_else(|e| panic!("{}: send: {e}", self.name));
    }

    /// Receive one envelope, checking and recording it.
    async fn next(&mut self) -> Value {
        let v = timeout(Duration::from_secs(15), self.inbox.recv())
            .await
            .unwrap_or_else(|_| panic!("{}: nothing received for 15 s (at seq {})", self.name, self.last))
            .unwrap_or_else(|| json!({"type": "_closed"}));
        match v["type"].as_str().unwrap() {
            "message" if v["topic"] == FEED => self.record(&v),
            // (The room, also a topic, gets its own notices: not followed here.)
            "error" if v["code"] == "history_gap" && v["topic"] != FEED => {}
            "error" if v["code"] == "history_gap" => {
                self.gap_allowed = true;
                self.gaps.push(v.clone());
            }
            "error" => self.errors.push(v.clone()),
            "presence" if v["topic"] == FEED => self.presence.push(v.clone()),
            "ack" => self.acks.push(v.clone()),
            "_closed" => self.closed = true,
            _ => {}
        }
        v
    }

    /// Once, in order: within an epoch the sequence has no hole and no
    /// repeat, unless a history_gap notice came first.
    fn record(&mut self, v: &Value) {
        let epoch = v["epoch"].as_str().unwrap().to_string();
        let seq = v["seq"].as_u64().unwrap();
        let allowed = std::mem::take(&mut self.gap_allowed);
        match &self.epoch {
            Some(e) if *e == epoch => {
                assert!(seq > self.last, "{}: duplicate or reordered seq {seq} after {}", self.name, self.last);
                assert!(seq == self.last + 1 || allowed, "{}: silent gap: seq {seq} after {}", self.name, self.last);
            }
            Some(e) => assert!(allowed, "{}: epoch changed from {e} to {epoch} without a history_gap notice", self.name),
            None => {}
        }
        self.epoch = Some(epoch);
        self.last = seq;
        self.got.push(v["content"].clone());
    }

    /// Subscribe to FEED (resuming from the recorded position if `resume`);
    /// returns the ack, after any replay.
    async fn subscribe(&mut self, resume: bool) -> Value {
        let mut req = json!({"type": "subscribe", "topic": FEED, "id": "sub"});
        if resume {
            req["since"] = json!(self.last);
            req["epoch"] = json!(self.epoch.clone().unwrap());
        }
        self.send(req).await;
        loop {
            let v = self.next().await;
            if v["type"] == "ack" && v["id"] == "sub" {
                let (epoch, seq) = (v["epoch"].as_str().unwrap().to_string(), v["seq"].as_u64().unwrap());
                if resume {
                    // The replay brought us exactly to the starting point.
                    assert_eq!((self.epoch.as_deref(), self.last), (Some(epoch.as_str()), seq), "{}: replay ended elsewhere than the ack", self.name);
                }
                self.epoch = Some(epoch);
                self.last = seq;
                return v;
            }
            assert!(!self.closed, "{}: closed while subscribing", self.name);
        }
    }

    async fn publish(&mut self, content: Value, id: &str) {
        self.send(json!({"type": "publish", "topic": FEED, "content": content, "id": id})).await;
    }

    /// Read until `done` holds (or 30 s pass).
    async fn until(&mut self, what: &str, done: impl Fn(&Peer) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !done(self) {
            assert!(Instant::now() < deadline, "{}: timed out waiting for {what}", self.name);
            assert!(!self.closed, "{}: connection closed while waiting for {what}", self.name);
            self.next().await;
        }
    }

    /// Close the connection (1000) and wait for the end.
    async fn disconnect(&mut self) {
        let _ = self.writer.close(1000, "bye").await;
        self.until_closed().await;
    }

    /// Read until the connection drops.
    async fn until_closed(&mut self) {
        while !self.closed {
            self.next().await;
        }
    }
}

/// Wait until a node reports its broker healthy (or not).
async fn wait_health(port: u16, ok: bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, body) = http_get(port, "/health").await;
        if (status == 200) == ok {
            let health: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(health["status"], if ok { "ok" } else { "degraded" }, "{health}");
            assert_eq!(health["broker"]["name"], "redis");
            return;
        }
        assert!(Instant::now() < deadline, "node {port} never became {}: {body}", if ok { "healthy" } else { "degraded" });
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn node(redis: &Redis, extra: &[&str]) -> Server {
    let url = redis.url();
    let mut args = vec!["--broker", url.as_str()];
    args.extend_from_slice(extra);
    Server::start(&args)
}

/// Per-publisher order: contents `{"from": f, "n": n}` from one publisher
/// arrive with n = 0, 1, 2, ...
fn assert_per_publisher_order(peer: &Peer, publishers: usize, each: u64) {
    let mut next: BTreeMap<u64, u64> = BTreeMap::new();
    for c in &peer.got {
        let (from, n) = (c["from"].as_u64().unwrap(), c["n"].as_u64().unwrap());
        let expected = next.entry(from).or_insert(0);
        assert_eq!(n, *expected, "{}: publisher {from}'s messages out of order", peer.name);
        *expected += 1;
    }
    assert_eq!(next.len(), publishers, "{}: {next:?}", peer.name);
    assert!(next.values().all(|&n| n == each), "{}: {next:?}", peer.name);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_behind_nginx_deliver_once_in_order_and_survive_a_node_kill() {
    let started = Instant::now();
    let Some(redis) = Redis::start() else { return };
    let a = node(&redis, &[]);
    let b = node(&redis, &[]);
    wait_health(a.port, true).await;
    wait_health(b.port, true).await;
    let Some(nginx) = Nginx::start(&[a.port, b.port]) else { return };

    // Four clients through the load balancer land on both nodes.
    let mut peers = Vec::new();
    for i in 0..4 {
        peers.push(Peer::connect(&nginx.url("/lobby"), &format!("peer{i}")).await);
    }
    let nodes: HashSet<String> = peers.iter().map(|p| p.node().to_string()).collect();
    assert_eq!(nodes.len(), 2, "nginx sent every client to one node: {nodes:?}\n{}", nginx.error_log());
    for p in &mut peers {
        let ack = p.subscribe(false).await;
        assert_eq!(ack["seq"], 0, "{ack}");
    }

    // Presence is cluster-wide: a fifth subscriber, on node b, is counted
    // by everyone, whichever node they are on.
    let mut fifth = Peer::connect(&format!("ws://127.0.0.1:{}/lobby", b.port), "fifth").await;
    fifth.subscribe(false).await;
    for p in peers.iter_mut() {
        let session = fifth.session.clone();
        p.until("the fifth join", |p| p.presence.iter().any(|e| e["session"] == session.as_str() && e["event"] == "join" && e["count"] == 5)).await;
    }
    fifth.disconnect().await;
    for p in peers.iter_mut() {
        p.until("the fifth leave", |p| p.presence.iter().any(|e| e["event"] == "leave" && e["count"] == 4)).await;
    }

    // Everyone publishes; everyone receives every message once, in one
    // global order (seq 1..=100 without holes), each publisher's in order.
    const EACH: u64 = 25;
    for n in 0..EACH {
        for (i, p) in peers.iter_mut().enumerate() {
            p.publish(json!({"from": i, "n": n}), &format!("p{i}-{n}")).await;
        }
    }
    for p in peers.iter_mut() {
        p.until("100 messages", |p| p.got.len() == 4 * EACH as usize).await;
        assert_eq!(p.last, 4 * EACH);
        assert_per_publisher_order(p, 4, EACH);
        p.until("its acks", |p| p.acks.iter().filter(|a| a["id"].as_str().is_some_and(|id| id.starts_with('p'))).count() == EACH as usize).await;
        assert!(p.gaps.is_empty() && p.errors.is_empty(), "{}: {:?} {:?}", p.name, p.gaps, p.errors);
    }
    let exchange = started.elapsed();

    // Kill node a while a publisher on node b keeps going. a's clients
    // reconnect through nginx (to b) and resume from their last seq.
    let node_a = {
        let probe = Peer::connect(&format!("ws://127.0.0.1:{}/", a.port), "probe").await;
        probe.node().to_string()
    };
    let mut publisher = Peer::connect(&format!("ws://127.0.0.1:{}/", b.port), "publisher").await;
    const MORE: u64 = 300;
    let publishing = tokio::spawn(async move {
        for n in 0..MORE {
            publisher.publish(json!({"from": 9, "n": n}), &format!("q{n}")).await;
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        publisher.until("its acks", |p| p.acks.len() == MORE as usize).await;
        publisher
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut a = a;
    let killed_at = Instant::now();
    a.child.kill().unwrap();
    let _ = a.child.wait();
    let mut moved = Vec::new();
    for p in peers.iter_mut().filter(|p| p.node() == node_a) {
        moved.push(p.session.clone());
        p.until_closed().await;
        p.reconnect(&nginx.url("/lobby")).await;
        assert_ne!(p.node(), node_a, "nginx sent a reconnect to the dead node");
        p.subscribe(true).await;
    }
    assert_eq!(moved.len(), 2);
    let failover = killed_at.elapsed();
    let publisher = publishing.await.unwrap();
    let last = publisher.acks.iter().filter_map(|a| a["seq"].as_u64()).max().unwrap();
    assert_eq!(last, 4 * EACH + MORE);
    for p in peers.iter_mut() {
        p.until("every message", |p| p.last == last).await;
        assert!(p.gaps.is_empty(), "{}: {:?}", p.name, p.gaps);
        let from_publisher: Vec<u64> = p.got.iter().filter(|c| c["from"] == 9).map(|c| c["n"].as_u64().unwrap()).collect();
        assert_eq!(from_publisher, (0..MORE).collect::<Vec<_>>(), "{}: lost or repeated messages across the failover", p.name);
    }

    // The dead node's sessions are removed from presence by a live node
    // once its heartbeat key expires (15 s).
    let survivor = &mut peers.iter_mut().find(|p| !moved.contains(&p.session)).unwrap();
    for gone in &moved {
        survivor.until("the dead node's sessions to leave", |p| p.presence.iter().any(|e| e["event"] == "leave" && e["session"] == gone.as_str())).await;
    }
    let count = survivor.presence.last().unwrap()["count"].as_u64().unwrap();
    assert_eq!(count, 4, "cluster-wide count after the dead node was reaped");
    eprintln!(
        "cluster timings: exchange {exchange:?}, failover (kill to both resumed) {failover:?}, reap {:?}, total {:?}",
        killed_at.elapsed(),
        started.elapsed()
    );
    drop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_mid_stream_degrades_then_recovers_without_silent_loss() {
    let Some(mut redis) = Redis::start() else { return };
    let a = node(&redis, &[]);
    let b = node(&redis, &[]);
    wait_health(a.port, true).await;
    wait_health(b.port, true).await;
    let mut watchers = [
        Peer::connect(&format!("ws://127.0.0.1:{}/", a.port), "on-a").await,
        Peer::connect(&format!("ws://127.0.0.1:{}/", b.port), "on-b").await,
    ];
    for w in watchers.iter_mut() {
        w.subscribe(false).await;
    }
    let mut publisher = Peer::connect(&format!("ws://127.0.0.1:{}/", a.port), "publisher").await;
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let publishing = tokio::spawn(async move {
        let mut n = 0u64;
        while !*stop_rx.borrow_and_update() {
            publisher.publish(json!({"from": 0, "n": n}), &format!("r{n}")).await;
            n += 1;
            // Read what came back meanwhile (acks, refusals).
            while let Ok(Some(v)) = timeout(Duration::from_millis(10), publisher.inbox.recv()).await {
                match v["type"].as_str() {
                    Some("ack") => publisher.acks.push(v),
                    Some("error") => publisher.errors.push(v),
                    _ => {}
                }
            }
        }
        (publisher, n)
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let killed = Instant::now();
    redis.kill();
    wait_health(a.port, false).await;
    assert_eq!(metric(a.port, "tether_broker_up").await, 0.0);
    let degraded_after = killed.elapsed();
    tokio::time::sleep(Duration::from_millis(700)).await;
    redis.restart();
    wait_health(a.port, true).await;
    wait_health(b.port, true).await;
    let recovered_after = killed.elapsed();
    assert_eq!(metric(a.port, "tether_broker_up").await, 1.0);
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop_tx.send(true).unwrap();
    let (publisher, sent) = publishing.await.unwrap();
    // Let the last acks arrive.
    let acked: HashSet<u64> = publisher.acks.iter().filter_map(|a| a["id"].as_str()?.strip_prefix('r')?.parse().ok()).collect();
    let refused: Vec<&Value> = publisher.errors.iter().filter(|e| e["code"] == "unavailable").collect();
    assert!(!refused.is_empty(), "nothing was refused while redis was down");
    assert!(refused.iter().all(|e| e["id"].is_string()), "a refusal without the request id: {refused:?}");
    let last_acked = *acked.iter().max().unwrap();
    let last_refused = refused.iter().filter_map(|e| e["id"].as_str()?.strip_prefix('r')?.parse::<u64>().ok()).max().unwrap();
    assert!(last_acked > last_refused, "no publish succeeded after the restart");
    for w in watchers.iter_mut() {
        w.until("the last acked message", |w| w.got.iter().any(|c| c["n"] == last_acked)).await;
        let got: Vec<u64> = w.got.iter().map(|c| c["n"].as_u64().unwrap()).collect();
        assert!(got.windows(2).all(|p| p[0] < p[1]), "{}: duplicates or disorder: {got:?}", w.name);
        let received: HashSet<u64> = got.iter().copied().collect();
        let missing: Vec<u64> = acked.iter().copied().filter(|n| !received.contains(n)).collect();
        assert!(missing.is_empty(), "{}: acked messages never delivered: {missing:?}", w.name);
        // Redis came back empty: the topic has a new epoch, and the
        // subscriber was told so.
        assert!(!w.gaps.is_empty(), "{}: the history reset was not announced", w.name);
    }
    eprintln!(
        "redis restart: {sent} published, {} acked, {} refused; degraded {degraded_after:?} after the kill, healthy {recovered_after:?} after it",
        acked.len(),
        refused.len()
    );
}

/// Resume within and beyond the history window, and with a stale epoch.
async fn resume_scenarios(url: &str) {
    let mut publisher = Peer::connect(url, "publisher").await;
    let mut x = Peer::connect(url, "x").await;
    let ack = x.subscribe(false).await;
    let epoch = ack["epoch"].as_str().unwrap().to_string();
    let mut n = 0;
    let mut publish = |count: u64| {
        let mut batch = Vec::new();
        for _ in 0..count {
            batch.push(json!({"from": 0, "n": n}));
            n += 1;
        }
        batch
    };
    for c in publish(3) {
        publisher.publish(c, "p").await;
    }
    x.until("3 messages", |x| x.last == 3).await;
    x.disconnect().await;

    // Within the window (5 kept): exactly what was missed, then live.
    for c in publish(2) {
        publisher.publish(c, "p").await;
    }
    publisher.until("acks", |p| p.acks.iter().any(|a| a["seq"] == 5)).await;
    x.reconnect(url).await;
    let ack = x.subscribe(true).await;
    assert_eq!((ack["seq"].as_u64(), x.got.len()), (Some(5), 5));
    assert!(x.gaps.is_empty(), "{:?}", x.gaps);
    x.disconnect().await;

    // Beyond the window: told explicitly, with the first seq it will get.
    for c in publish(10) {
        publisher.publish(c, "p").await;
    }
    publisher.until("acks", |p| p.acks.iter().any(|a| a["seq"] == 15)).await;
    x.reconnect(url).await;
    let ack = x.subscribe(true).await;
    assert_eq!(ack["seq"], 15);
    assert_eq!(x.gaps.len(), 1, "{:?}", x.gaps);
    let gap = &x.gaps[0];
    assert_eq!((gap["id"].as_str(), gap["epoch"].as_str(), gap["first_seq"].as_u64()), (Some("sub"), Some(epoch.as_str()), Some(11)), "{gap}");
    let tail: Vec<u64> = x.got[5..].iter().map(|c| c["n"].as_u64().unwrap()).collect();
    assert_eq!(tail, vec![10, 11, 12, 13, 14], "after the notice: the kept window, in order");
    for c in publish(1) {
        publisher.publish(c, "p").await;
    }
    x.until("live delivery after the resume", |x| x.last == 16).await;

    // A stale epoch (the history was reset since): told, with the window.
    let mut y = Peer::connect(url, "y").await;
    y.send(json!({"type": "subscribe", "topic": FEED, "since": 2, "epoch": "000000000000", "id": "s"})).await;
    y.until("the ack", |y| y.acks.iter().any(|a| a["id"] == "s")).await;
    assert_eq!(y.gaps.len(), 1);
    assert_eq!((y.gaps[0]["epoch"].as_str(), y.gaps[0]["first_seq"].as_u64()), (Some(epoch.as_str()), Some(12)), "{}", y.gaps[0]);
    assert_eq!(y.got.len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_beyond_the_window_is_told_redis() {
    let Some(redis) = Redis::start() else { return };
    let a = node(&redis, &["--history-size", "5"]);
    wait_health(a.port, true).await;
    resume_scenarios(&format!("ws://127.0.0.1:{}/", a.port)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_beyond_the_window_is_told_memory() {
    let a = Server::start(&["--history-size", "5"]);
    resume_scenarios(&format!("ws://127.0.0.1:{}/", a.port)).await;
}
