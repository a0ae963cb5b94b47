//! Redis Cluster, for real (#17): a 3-master, 3-replica cluster of Debian's
//! redis-server (`redis-cli --cluster create`, as scripts/redis-cluster.sh
//! does), two `tether serve --broker redis-cluster://...` nodes behind
//! nginx, and tether.v1 clients on both nodes over 1,000 topics (so every
//! shard is used). Checked: every message arrives once and in order;
//! after a master is killed mid-stream and its replica takes over, delivery
//! recovers and every acknowledged message arrives once, in order, or the
//! client is told of a gap (`history_gap`); resume works across nodes and
//! shards (exact replay).

mod common;

use common::{free_port, require_program, Nginx, Server};
use serde_json::{json, Value};
use std::collections::{BTreeSet, HashMap};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tether::split::WsWriter;
use tether::MaybeTlsStream;
use tokio::sync::mpsc;
use tokio::time::timeout;

const TOPICS: usize = 1000;
/// Topics per connection (the hub allows 256 subscriptions per connection).
const PER_CONN: usize = 250;

fn topic(i: usize) -> String {
    format!("t{i}")
}

/// Three masters, three replicas, on free loopback ports.
struct Cluster {
    nodes: HashMap<u16, Child>,
    dir: std::path::PathBuf,
    cli: std::path::PathBuf,
}

impl Cluster {
    fn start() -> Option<Cluster> {
        let server = require_program("redis-server")?;
        let cli = require_program("redis-cli")?;
        // One directory per cluster: the tests of this file run at once.
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("tether-redis-cluster-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut ports = BTreeSet::new();
        while ports.len() < 6 {
            // The cluster bus listens on port + 10000: both must be free.
            let p = free_port();
            if p < 55535 && std::net::TcpListener::bind(("127.0.0.1", p + 10000)).is_ok() {
                ports.insert(p);
            }
        }
        let mut nodes = HashMap::new();
        for &p in &ports {
            let d = dir.join(p.to_string());
            std::fs::create_dir_all(&d).unwrap();
            let child = Command::new(&server)
                .args(["--port", &p.to_string(), "--bind", "127.0.0.1", "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"])
                .args(["--cluster-node-timeout", "2000", "--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(&d)
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("start redis-server");
            nodes.insert(p, child);
        }
        let cluster = Cluster { nodes, dir, cli };
        for &p in &ports {
            let deadline = Instant::now() + Duration::from_secs(10);
            while cluster.redis(p, &["ping"]).trim() != "PONG" {
                assert!(Instant::now() < deadline, "redis-server {p} did not start");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let out = Command::new(&cluster.cli).args(["--cluster", "create"]).args(&addrs).args(["--cluster-replicas", "1", "--cluster-yes"]).output().unwrap();
        assert!(out.status.success(), "redis-cli --cluster create: {}", String::from_utf8_lossy(&out.stdout));
        for &p in &ports {
            cluster.wait_ok(p);
        }
        Some(cluster)
    }

    fn redis(&self, port: u16, args: &[&str]) -> String {
        let out = Command::new(&self.cli).args(["-p", &port.to_string()]).args(args).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn wait_ok(&self, port: u16) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.redis(port, &["cluster", "info"]).contains("cluster_state:ok") {
            assert!(Instant::now() < deadline, "cluster not ok on {port}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn url(&self) -> String {
        let seeds: Vec<String> = self.nodes.keys().map(|p| format!("127.0.0.1:{p}")).collect();
        format!("redis-cluster://{}", seeds.join(","))
    }

    /// The port of the master serving `slot`, as node `asking` sees it.
    fn master_of(&self, asking: u16, slot: u16) -> Option<u16> {
        for line in self.redis(asking, &["cluster", "nodes"]).lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 9 || !f[2].contains("master") || f[2].contains("fail") {
                continue;
            }
            let port: u16 = f[1].split(['@', ':']).nth(1)?.parse().ok()?;
            for range in &f[8..] {
                let (a, b) = range.split_once('-').unwrap_or((range, range));
                if let (Ok(a), Ok(b)) = (a.parse::<u16>(), b.parse::<u16>()) {
                    if (a..=b).contains(&slot) {
                        return Some(port);
                    }
                }
            }
        }
        None
    }

    fn kill(&mut self, port: u16) {
        let mut child = self.nodes.remove(&port).unwrap();
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in self.nodes.values_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Where a client stands in one topic.
#[derive(Default)]
struct Position {
    epoch: Option<String>,
    last: u64,
    gap_allowed: bool,
    gaps: usize,
    /// (seq, n) received, in order.
    got: Vec<(u64, u64)>,
}

/// A tether.v1 client following every topic and checking what it gets.
struct Peer {
    name: String,
    /// The topics (indexes) this connection follows.
    range: std::ops::Range<usize>,
    writer: WsWriter<MaybeTlsStream>,
    inbox: mpsc::UnboundedReceiver<Value>,
    topics: HashMap<String, Position>,
    /// Acks of publishes: id -> (topic, epoch, seq); refusals: id -> code.
    acks: HashMap<String, (String, String, u64)>,
    refused: HashMap<String, String>,
    sub_acks: usize,
}

impl Peer {
    async fn connect(url: &str, name: &str, range: std::ops::Range<usize>) -> Peer {
        let (writer, mut inbox) = common::v1_split(url, name).await;
        let welcome = timeout(Duration::from_secs(10), inbox.recv()).await.expect("welcome").expect("welcome");
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        Peer { name: name.into(), range, writer, inbox, topics: HashMap::new(), acks: HashMap::new(), refused: HashMap::new(), sub_acks: 0 }
    }

    async fn send(&mut self, v: Value) {
        self.writer.send(v.to_string()).await.unwrap_or_else(|e| panic!("{}: send: {e}", self.name));
    }

    /// Handle everything received within `wait`; false if nothing came.
    async fn pump(&mut self, wait: Duration) -> bool {
        let Ok(v) = timeout(wait, self.inbox.recv()).await else { return false };
        let v = v.unwrap_or_else(|| panic!("{}: connection closed", self.name));
        self.handle(v);
        while let Ok(v) = self.inbox.try_recv() {
            self.handle(v);
        }
        true
    }

    fn handle(&mut self, v: Value) {
        let id = v["id"].as_str().unwrap_or("").to_string();
        match v["type"].as_str().unwrap_or("") {
            "message" => self.record(&v),
            "error" if v["code"] == "history_gap" => {
                let p = self.topics.entry(v["topic"].as_str().unwrap().to_string()).or_default();
                p.gap_allowed = true;
                p.gaps += 1;
            }
            "error" if id.starts_with('p') => drop(self.refused.insert(id, v["code"].as_str().unwrap_or("").to_string())),
            "error" if v["code"] == "unavailable" || v["code"] == "overloaded" => {}
            "error" => panic!("{}: unexpected error {v}", self.name),
            "ack" if id.starts_with('s') => {
                let p = self.topics.entry(v["topic"].as_str().unwrap().to_string()).or_default();
                (p.epoch, p.last) = (Some(v["epoch"].as_str().unwrap().to_string()), v["seq"].as_u64().unwrap());
                self.sub_acks += 1;
            }
            "ack" if id.starts_with('p') => {
                let (t, e, s) = (v["topic"].as_str().unwrap(), v["epoch"].as_str().unwrap(), v["seq"].as_u64().unwrap());
                self.acks.insert(id, (t.to_string(), e.to_string(), s));
            }
            _ => {}
        }
    }

    /// Once, in order: within an epoch no hole and no repeat, unless a
    /// history_gap notice came first.
    fn record(&mut self, v: &Value) {
        let name = self.name.clone();
        let t = v["topic"].as_str().unwrap().to_string();
        let p = self.topics.entry(t.clone()).or_default();
        let epoch = v["epoch"].as_str().unwrap().to_string();
        let seq = v["seq"].as_u64().unwrap();
        let allowed = std::mem::take(&mut p.gap_allowed);
        match &p.epoch {
            Some(e) if *e == epoch => {
                assert!(seq > p.last, "{name}: {t}: duplicate or reordered seq {seq} after {}", p.last);
                assert!(seq == p.last + 1 || allowed, "{name}: {t}: silent gap: seq {seq} after {}", p.last);
            }
            Some(e) => assert!(allowed, "{name}: {t}: epoch changed from {e} to {epoch} without a history_gap notice"),
            None => {}
        }
        p.epoch = Some(epoch);
        p.last = seq;
        p.got.push((seq, v["content"]["n"].as_u64().unwrap()));
    }

    /// Subscribe to every topic (resuming from the recorded positions).
    async fn subscribe_all(&mut self, resume: bool) {
        self.sub_acks = 0;
        for i in self.range.clone() {
            let t = topic(i);
            let mut req = json!({"type": "subscribe", "topic": t, "id": format!("s{i}")});
            if let Some(p) = self.topics.get(&t).filter(|_| resume) {
                req["since"] = json!(p.last);
                req["epoch"] = json!(p.epoch.clone().unwrap());
            }
            self.send(req).await;
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.sub_acks < self.range.len() {
            assert!(Instant::now() < deadline, "{}: {} of {} subscriptions answered", self.name, self.sub_acks, self.range.len());
            self.pump(Duration::from_millis(200)).await;
        }
    }

    /// Whether this client got message `n` on `topic` at `seq` (or was
    /// told of a gap on that topic).
    fn has(&self, topic: &str, seq: u64, n: u64) -> bool {
        self.topics.get(topic).is_some_and(|p| p.gaps > 0 || p.got.iter().any(|&(s, m)| s == seq && m == n))
    }
}

/// Publish one message per topic (`round`), ids `p{round}-{i}`; `mid` runs
/// after the first third has been sent.
async fn publish_round(publisher: &mut Peer, round: u64, mut mid: impl FnMut()) {
    for i in 0..TOPICS {
        if i == TOPICS / 3 {
            mid();
        }
        let n = round * TOPICS as u64 + i as u64;
        publisher.send(json!({"type": "publish", "topic": topic(i), "content": {"n": n}, "id": format!("p{round}-{i}")})).await;
    }
}

/// Wait until every publish of `rounds` was acked or refused.
async fn answered(publisher: &mut Peer, rounds: std::ops::Range<u64>) {
    let want = (rounds.end - rounds.start) as usize * TOPICS;
    let count = |p: &Peer| p.acks.keys().chain(p.refused.keys()).filter(|id| rounds.clone().any(|r| id.starts_with(&format!("p{r}-")))).count();
    let deadline = Instant::now() + Duration::from_secs(60);
    while count(publisher) < want {
        assert!(Instant::now() < deadline, "publisher: {} of {want} publishes answered", count(publisher));
        publisher.pump(Duration::from_millis(200)).await;
    }
}

/// One client's connections, following every topic between them.
async fn subscriber(url: &str, name: &str) -> Vec<Peer> {
    let mut conns = Vec::new();
    for start in (0..TOPICS).step_by(PER_CONN) {
        let mut p = Peer::connect(url, &format!("{name}[{start}..]"), start..(start + PER_CONN).min(TOPICS)).await;
        p.subscribe_all(false).await;
        conns.push(p);
    }
    conns
}

/// Wait until every connection of `subs` has every acknowledged message
/// of its topics.
async fn delivered(publisher: &Peer, subs: &mut [&mut Vec<Peer>]) {
    let acked: Vec<(usize, String, u64, u64)> = publisher
        .acks
        .iter()
        .map(|(id, (t, _, seq))| {
            let (round, i) = id[1..].split_once('-').unwrap();
            let i: usize = i.parse().unwrap();
            (i, t.clone(), *seq, round.parse::<u64>().unwrap() * TOPICS as u64 + i as u64)
        })
        .collect();
    for sub in subs.iter_mut().flat_map(|s| s.iter_mut()) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let missing = acked.iter().filter(|(i, t, seq, n)| sub.range.contains(i) && !sub.has(t, *seq, *n)).count();
            if missing == 0 {
                break;
            }
            if Instant::now() > deadline {
                let first: Vec<String> = acked
                    .iter()
                    .filter(|(i, t, seq, n)| sub.range.contains(i) && !sub.has(t, *seq, *n))
                    .take(5)
                    .map(|(_, t, seq, n)| {
                        let p = &sub.topics[t];
                        format!("{t} seq {seq} n {n} (has last {} epoch {:?}, tail {:?})", p.last, p.epoch, &p.got[p.got.len().saturating_sub(4)..])
                    })
                    .collect();
                panic!("{}: {missing} acknowledged messages never arrived, e.g. {first:?}", sub.name);
            }
            sub.pump(Duration::from_millis(200)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_delivers_once_in_order_through_failover_and_resume() {
    let Some(mut cluster) = Cluster::start() else { return };
    let url = cluster.url();
    let args = ["--broker", url.as_str(), "--message-rate", "0", "--subscribe-rate", "0", "--queue-max-messages", "65536", "--max-connections-per-ip", "10000"];
    let (a, b) = (Server::start(&args), Server::start(&args));
    let Some(nginx) = Nginx::start(&[a.port, b.port]) else { return };
    let health = common::http_get(a.port, "/health").await;
    assert!(health.1.contains("redis-cluster"), "{health:?}");

    let mut on_a = subscriber(&format!("ws://127.0.0.1:{}/", a.port), "sub-a").await;
    let mut on_b = subscriber(&format!("ws://127.0.0.1:{}/", b.port), "sub-b").await;
    let mut publisher = Peer::connect(&nginx.url("/"), "publisher", 0..0).await;

    // 1. Every shard, both nodes: once and in order.
    for round in 0..2 {
        publish_round(&mut publisher, round, || {}).await;
    }
    answered(&mut publisher, 0..2).await;
    assert!(publisher.refused.is_empty(), "refused with a healthy cluster: {:?}", publisher.refused.iter().take(5).collect::<Vec<_>>());
    delivered(&publisher, &mut [&mut on_a, &mut on_b]).await;
    let shards: BTreeSet<u16> = (0..TOPICS).filter_map(|i| cluster.master_of(*cluster.nodes.keys().next().unwrap(), tether_hub::slots::topic_slot(&topic(i)))).collect();
    assert_eq!(shards.len(), 3, "1,000 topics use every shard");

    // 2. Kill the master of t0's shard mid-stream; its replica takes over.
    let seed = *cluster.nodes.keys().next().unwrap();
    let slot = tether_hub::slots::topic_slot(&topic(0));
    // (redis-cli can come back empty on a busy machine: ask again.)
    let deadline = Instant::now() + Duration::from_secs(10);
    let victim = loop {
        if let Some(port) = cluster.master_of(seed, slot) {
            break port;
        }
        assert!(Instant::now() < deadline, "no master for t0's slot {slot}: {}", cluster.redis(seed, &["cluster", "nodes"]));
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut killed = false;
    publish_round(&mut publisher, 2, || {
        cluster.kill(victim);
        killed = true;
    })
    .await;
    assert!(killed);
    answered(&mut publisher, 2..3).await;
    let survivor = *cluster.nodes.keys().next().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while cluster.master_of(survivor, slot).is_none_or(|m| m == victim) {
        assert!(Instant::now() < deadline, "no replica took over slot {slot}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cluster.wait_ok(survivor);
    // Publishing recovers on the promoted replica (refused meanwhile, never reordered).
    let mut round = 3;
    loop {
        publish_round(&mut publisher, round, || {}).await;
        answered(&mut publisher, round..round + 1).await;
        let refused = (0..TOPICS).filter(|i| publisher.refused.contains_key(&format!("p{round}-{i}"))).count();
        round += 1;
        if refused == 0 {
            break;
        }
        assert!(round < 40, "publishes still refused {round} rounds after the failover: {refused}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let refused_total = publisher.refused.len();
    eprintln!("failover: {refused_total} publishes refused while the shard was down, {round} rounds");
    // Every acknowledged message arrives, once, in order (or a gap is told).
    delivered(&publisher, &mut [&mut on_a, &mut on_b]).await;
    let gaps: usize = on_a.iter().chain(on_b.iter()).map(|p| p.topics.values().filter(|p| p.gaps > 0).count()).sum();
    eprintln!("failover: topics with a history_gap notice: {gaps}");

    // 3. Resume across nodes and shards: a's connections move to B, b's
    // to A (through their own ports), missing a round meanwhile; the
    // replay is exact.
    let positions = |group: &mut Vec<Peer>| group.iter_mut().map(|p| (p.range.clone(), p.name.clone(), std::mem::take(&mut p.topics))).collect::<Vec<_>>();
    let (a_state, b_state) = (positions(&mut on_a), positions(&mut on_b));
    drop(on_a);
    drop(on_b);
    publish_round(&mut publisher, round, || {}).await;
    answered(&mut publisher, round..round + 1).await;
    assert!((0..TOPICS).all(|i| !publisher.refused.contains_key(&format!("p{round}-{i}"))), "refused after recovery");
    let mut moved = Vec::new();
    for (group, port) in [(a_state, b.port), (b_state, a.port)] {
        let mut conns = Vec::new();
        for (range, name, topics) in group {
            let gaps: HashMap<String, usize> = topics.iter().map(|(t, p)| (t.clone(), p.gaps)).collect();
            let mut p = Peer::connect(&format!("ws://127.0.0.1:{port}/"), &format!("{name}-moved"), range).await;
            p.topics = topics;
            p.subscribe_all(true).await;
            conns.push((p, gaps));
        }
        moved.push(conns);
    }
    let (mut a2, gaps_a): (Vec<Peer>, Vec<_>) = moved.remove(0).into_iter().unzip();
    let (mut b2, gaps_b): (Vec<Peer>, Vec<_>) = moved.remove(0).into_iter().unzip();
    delivered(&publisher, &mut [&mut a2, &mut b2]).await;
    for (p, before) in a2.iter().zip(&gaps_a).chain(b2.iter().zip(&gaps_b)) {
        let gapped = p.topics.iter().filter(|(t, pos)| pos.gaps != before.get(*t).copied().unwrap_or(0)).count();
        assert_eq!(gapped, 0, "{}: a resume within the kept history had gaps", p.name);
    }
    drop(nginx);
}

/// The bounded push queue (#17): with room for 8 pushes, a burst of
/// publishes overflows it; the node says so, drops the pushes and catches
/// every topic up from its stream, so the subscriber still gets every
/// acknowledged message once and in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_push_queue_drops_then_catches_up_from_the_streams() {
    let Some(cluster) = Cluster::start() else { return };
    let url = format!("{}?push_queue=8", cluster.url());
    let log = cluster.dir.join("node.log");
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tether"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--broker", &url, "--message-rate", "0", "--subscribe-rate", "0", "--queue-max-messages", "65536"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("start tether serve");
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut line).unwrap();
    assert!(line.starts_with("listening on "), "{line:?}");
    let node = format!("ws://127.0.0.1:{port}/");
    let mut sub = Peer::connect(&node, "sub", 0..PER_CONN).await;
    sub.subscribe_all(false).await;
    let mut publisher = Peer::connect(&node, "publisher", 0..0).await;
    for round in 0..20 {
        for i in 0..PER_CONN {
            let n = round * TOPICS as u64 + i as u64;
            publisher.send(json!({"type": "publish", "topic": topic(i), "content": {"n": n}, "id": format!("p{round}-{i}")})).await;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while publisher.acks.len() + publisher.refused.len() < 20 * PER_CONN {
        assert!(Instant::now() < deadline, "publishes not answered");
        publisher.pump(Duration::from_millis(200)).await;
    }
    assert!(publisher.refused.is_empty(), "refused: {:?}", publisher.refused.iter().take(3).collect::<Vec<_>>());
    let mut subs = vec![sub];
    delivered(&publisher, &mut [&mut subs]).await;
    let gaps: usize = subs[0].topics.values().map(|p| p.gaps).sum();
    assert_eq!(gaps, 0, "the streams keep everything: no gap to report");
    let _ = child.kill();
    let _ = child.wait();
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(log.contains("pub/sub queue full"), "the burst never filled the 8-push queue:\n{log}");
}
