//! Hostile peers against `tether serve --broker redis://...` (issue #11):
//! real redis-server, real nodes, real tether.v1 clients. A client's
//! resume only gets that client an answer; replays, kept history and
//! queues stay bounded; `/health` and errors never show Redis's address.

mod common;

use common::{find_program, http_get, Redis, Server};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tether::split::WsWriter;
use tether::MaybeTlsStream;
use tokio::sync::mpsc;
use tokio::time::timeout;

/// A tether.v1 client that records everything it receives.
struct Client {
    name: String,
    writer: WsWriter<MaybeTlsStream>,
    inbox: mpsc::UnboundedReceiver<Value>,
    /// Every envelope received, in order.
    seen: Vec<Value>,
}

impl Client {
    async fn connect(url: &str, name: &str) -> Client {
        let (writer, inbox) = common::v1_split(url, name).await;
        let mut client = Client { name: name.into(), writer, inbox, seen: Vec::new() };
        let welcome = client.next().await;
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        client
    }

    async fn send(&mut self, v: Value) {
        self.writer.send(v.to_string()).await.unwrap_or_else(|e| panic!("{}: send: {e}", self.name));
    }

    async fn next(&mut self) -> Value {
        let v = timeout(Duration::from_secs(15), self.inbox.recv())
            .await
            .unwrap_or_else(|_| panic!("{}: nothing received for 15 s; saw {} envelopes, last {}", self.name, self.seen.len(), short(self.seen.last())))
            .unwrap_or_else(|| json!({"type": "_closed"}));
        assert_ne!(v["type"], "_closed", "{}: connection closed", self.name);
        self.seen.push(v.clone());
        v
    }

    /// Read until an envelope matches; returns it.
    async fn until(&mut self, what: &str, matches: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            assert!(Instant::now() < deadline, "{}: timed out waiting for {what}", self.name);
            let v = self.next().await;
            if matches(&v) {
                return v;
            }
        }
    }

    /// Send a request with `id` and read until its ack; returns the ack.
    async fn request(&mut self, mut req: Value, id: &str) -> Value {
        req["id"] = json!(id);
        let first = self.seen.len();
        self.send(req).await;
        let ack = self.until(&format!("the ack of {id}"), |v| v["type"] == "ack" && v["id"] == id).await;
        let refused = self.seen[first..].iter().find(|v| v["type"] == "error" && v["id"] == id && v["code"] != "history_gap");
        assert!(refused.is_none(), "{}: {id} refused: {refused:?}", self.name);
        ack
    }

    /// Messages of `topic` received, as (epoch, seq).
    fn positions(&self, topic: &str) -> Vec<(String, u64)> {
        self.seen.iter().filter(|v| v["type"] == "message" && v["topic"] == topic).map(|v| (v["epoch"].as_str().unwrap().to_string(), v["seq"].as_u64().unwrap())).collect()
    }

    fn gaps(&self, topic: &str) -> Vec<&Value> {
        self.seen.iter().filter(|v| v["type"] == "error" && v["code"] == "history_gap" && v["topic"] == topic).collect()
    }
}

/// An envelope for a failure message, without kilobytes of content.
fn short(v: Option<&Value>) -> String {
    let text = v.map_or_else(|| "none".to_string(), Value::to_string);
    text.chars().take(300).collect()
}

fn node(redis: &Redis, extra: &[&str]) -> Server {
    let url = redis.url();
    let mut args = vec!["--broker", url.as_str()];
    args.extend_from_slice(extra);
    Server::start(&args)
}

/// Wait until a node's /health says ok (`ok`) or degraded; returns the body.
async fn wait_health(port: u16, ok: bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, body) = http_get(port, "/health").await;
        if (status == 200) == ok {
            return body;
        }
        assert!(Instant::now() < deadline, "node {port} never became {}: {body}", if ok { "healthy" } else { "degraded" });
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Publish `n` messages on `topic` and wait for the last ack; returns it.
async fn publish_many(publisher: &mut Client, topic: &str, n: usize, content: impl Fn(usize) -> Value) -> Value {
    for i in 0..n - 1 {
        publisher.send(json!({"type": "publish", "topic": topic, "content": content(i), "id": format!("p{i}")})).await;
    }
    publisher.request(json!({"type": "publish", "topic": topic, "content": content(n - 1)}), &format!("p{}", n - 1)).await
}

fn redis_cli(redis: &Redis, args: &[&str]) -> String {
    let cli = find_program("redis-cli").expect("redis-cli (installed with redis-server)");
    let out = std::process::Command::new(cli).arg("-p").arg(redis.port.to_string()).args(args).output().expect("run redis-cli");
    assert!(out.status.success(), "redis-cli {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_resumes_only_answer_the_client_that_sent_them() {
    const T: &str = "feed";
    let Some(redis) = Redis::start() else { return };
    let a = node(&redis, &[]);
    let b = node(&redis, &[]);
    wait_health(a.port, true).await;
    wait_health(b.port, true).await;
    // Watchers on both nodes; the hostile client and the publisher on a.
    let mut on_b = Client::connect(&b.url("/"), "watcher-b").await;
    let mut on_a = Client::connect(&a.url("/"), "watcher-a").await;
    let start = on_b.request(json!({"type": "subscribe", "topic": T}), "w").await;
    on_a.request(json!({"type": "subscribe", "topic": T}), "w").await;
    let epoch = start["epoch"].as_str().unwrap().to_string();
    let mut publisher = Client::connect(&a.url("/"), "publisher").await;
    let ack = publish_many(&mut publisher, T, 5, |i| json!(i)).await;
    assert_eq!((ack["epoch"].as_str(), ack["seq"].as_u64()), (Some(epoch.as_str()), Some(5)), "{ack}");
    for w in [&mut on_a, &mut on_b] {
        w.until("seq 5", |v| v["type"] == "message" && v["seq"] == 5).await;
    }

    let mut hostile = Client::connect(&a.url("/"), "hostile").await;
    let attempts = [
        json!({"since": 5 + 1000, "epoch": epoch}),
        json!({"since": 5 + 1000}),
        json!({"since": u64::MAX, "epoch": epoch}),
        json!({"since": u64::MAX}),
        json!({"since": 3, "epoch": "000000000000"}),
        json!({"since": u64::MAX, "epoch": "ffffffffffff"}),
    ];
    for (i, attempt) in attempts.iter().enumerate() {
        let mut req = json!({"type": "subscribe", "topic": T});
        req.as_object_mut().unwrap().extend(attempt.as_object().unwrap().clone());
        let id = format!("h{i}");
        let first = hostile.seen.len();
        let ack = hostile.request(req, &id).await;
        // The topic as it stands, for this client: told, explicitly.
        assert_eq!((ack["epoch"].as_str(), ack["seq"].as_u64()), (Some(epoch.as_str()), Some(5)), "{attempt}: {ack}");
        let told = hostile.seen[first..].iter().any(|v| v["code"] == "history_gap" && v["id"] == id.as_str() && v["epoch"] == epoch.as_str());
        assert!(told, "{attempt}: no history_gap for the hostile client: {:?}", &hostile.seen[first..]);
        hostile.request(json!({"type": "unsubscribe", "topic": T}), &format!("u{i}")).await;
    }

    // Nothing changed for anyone else: the next message continues the
    // same epoch, and the watchers saw 1..=6 once each, no notice.
    let ack = publish_many(&mut publisher, T, 1, |_| json!("after")).await;
    assert_eq!((ack["epoch"].as_str(), ack["seq"].as_u64()), (Some(epoch.as_str()), Some(6)), "{ack}");
    for w in [&mut on_a, &mut on_b] {
        w.until("seq 6", |v| v["type"] == "message" && v["seq"] == 6).await;
        let expected: Vec<(String, u64)> = (1..=6).map(|s| (epoch.clone(), s)).collect();
        assert_eq!(w.positions(T), expected, "{}: replayed, repeated or re-epoched messages", w.name);
        assert!(w.gaps(T).is_empty(), "{}: {:?}", w.name, w.gaps(T));
    }
    // A well-formed resume still replays exactly what was missed.
    let mut late = Client::connect(&b.url("/"), "late").await;
    let ack = late.request(json!({"type": "subscribe", "topic": T, "since": 4, "epoch": epoch}), "r").await;
    assert_eq!(ack["seq"], 6);
    assert_eq!(late.positions(T), vec![(epoch.clone(), 5), (epoch.clone(), 6)]);
    assert!(late.gaps(T).is_empty(), "{:?}", late.gaps(T));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_loop_over_a_large_history_stays_bounded() {
    const T: &str = "big";
    let Some(redis) = Redis::start() else { return };
    // Rate limits off: the publisher fills the history and the hostile
    // client resumes as fast as they can (what is measured is memory).
    let unlimited = ["--message-rate", "0", "--subscribe-rate", "0"];
    let a = node(&redis, &unlimited);
    let b = node(&redis, &unlimited);
    wait_health(a.port, true).await;
    wait_health(b.port, true).await;
    let mut watcher = Client::connect(&b.url("/"), "watcher").await;
    let start = watcher.request(json!({"type": "subscribe", "topic": T}), "w").await;
    let epoch = start["epoch"].as_str().unwrap().to_string();
    let mut publisher = Client::connect(&b.url("/"), "publisher").await;
    // 1000 kept messages of ~1 KB (the default history size).
    let filler = "x".repeat(1000);
    publish_many(&mut publisher, T, 1000, |i| json!(format!("{i} {filler}"))).await;
    watcher.until("seq 1000", |v| v["type"] == "message" && v["seq"] == 1000).await;

    // The hostile client on node a reads everything it is sent (a replay of
    // the whole window for a wrong epoch, a notice for a `since` beyond the
    // newest), 200 times.
    let mut hostile = Client::connect(&a.url("/"), "hostile").await;
    let mut rss_after_warmup = 0;
    let mut replayed = 0;
    for i in 0..200u64 {
        let resume = if i % 2 == 0 { json!({"since": 10, "epoch": "000000000000"}) } else { json!({"since": 5000 + i, "epoch": epoch}) };
        let mut req = json!({"type": "subscribe", "topic": T});
        req.as_object_mut().unwrap().extend(resume.as_object().unwrap().clone());
        let first = hostile.seen.len();
        hostile.request(req, &format!("h{i}")).await;
        replayed += hostile.seen[first..].iter().filter(|v| v["type"] == "message").count();
        hostile.request(json!({"type": "unsubscribe", "topic": T}), &format!("u{i}")).await;
        hostile.seen.clear();
        if i % 20 == 0 {
            // The well-behaved subscriber keeps receiving, in order.
            let ack = publisher.request(json!({"type": "publish", "topic": T, "content": format!("live {i}")}), &format!("l{i}")).await;
            let seq = ack["seq"].as_u64().unwrap();
            watcher.until("the live message", |v| v["type"] == "message" && v["seq"] == seq).await;
        }
        if i == 20 {
            rss_after_warmup = a.rss_kib();
        }
    }
    assert!(replayed >= 100 * 1000, "the wrong-epoch resumes were not replayed the window: {replayed}");
    let rss = a.rss_kib();
    eprintln!("resume loop: node RSS {rss_after_warmup} KiB after 20 resumes, {rss} KiB after 200; {replayed} messages replayed");
    assert!(rss < rss_after_warmup + 32 * 1024, "RSS grew from {rss_after_warmup} KiB to {rss} KiB over 180 resumes");

    let live: Vec<(String, u64)> = watcher.positions(T);
    assert!(live.iter().all(|(e, _)| *e == epoch), "the watcher saw another epoch");
    assert!(live.windows(2).all(|w| w[1].1 == w[0].1 + 1), "the watcher saw a gap or a repeat");
    assert!(watcher.gaps(T).is_empty(), "{:?}", watcher.gaps(T));
    assert_eq!(live.last().unwrap().1, 1010);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topics_kept_bytes_are_capped() {
    const T: &str = "large";
    const SIZE: usize = 700_000;
    // The default cap (HistoryConfig::max_topic_bytes): 4 MiB.
    const CAP: usize = 4 << 20;
    let Some(redis) = Redis::start() else { return };
    let a = node(&redis, &[]);
    wait_health(a.port, true).await;
    let mut publisher = Client::connect(&a.url("/"), "publisher").await;
    let ack = publish_many(&mut publisher, T, 12, |i| json!(format!("{i:02}{}", "y".repeat(SIZE)))).await;
    let epoch = ack["epoch"].as_str().unwrap().to_string();
    assert_eq!(ack["seq"], 12);

    // In Redis: within the cap (6 messages would not fit).
    let log = format!("tether:{{{T}}}:log");
    let kept: usize = redis_cli(&redis, &["XLEN", &log]).parse().unwrap();
    let memory: usize = redis_cli(&redis, &["MEMORY", "USAGE", &log]).parse().unwrap();
    eprintln!("byte cap: {kept} messages kept, stream uses {memory} bytes");
    assert_eq!(kept, 5, "messages kept");
    assert!(memory <= CAP + (64 << 10), "the stream holds {memory} bytes");

    // What a resume from the start gets: the newest 5, after a notice.
    let mut reader = Client::connect(&a.url("/"), "reader").await;
    let ack = reader.request(json!({"type": "subscribe", "topic": T, "since": 0, "epoch": epoch}), "r").await;
    assert_eq!(ack["seq"], 12);
    let got: Vec<u64> = reader.positions(T).iter().map(|(_, s)| *s).collect();
    assert_eq!(got, (8..=12).collect::<Vec<_>>());
    let gaps = reader.gaps(T);
    assert_eq!((gaps.len(), gaps[0]["first_seq"].as_u64()), (1, Some(8)), "{gaps:?}");
    let replay_bytes: usize = reader.seen.iter().filter(|v| v["type"] == "message").map(|v| v["content"].as_str().unwrap().len()).sum();
    assert!(replay_bytes <= CAP, "replayed {replay_bytes} bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_errors_never_show_the_redis_address() {
    let Some(mut redis) = Redis::start() else { return };
    let port = redis.port.to_string();
    let a = node(&redis, &[]);
    let body = wait_health(a.port, true).await;
    assert!(!body.contains(&port) && !body.contains("127.0.0.1"), "/health shows the redis address: {body}");
    let mut client = Client::connect(&a.url("/"), "client").await;
    client.request(json!({"type": "publish", "topic": "t", "content": 1}), "ok").await;

    redis.kill();
    let body = wait_health(a.port, false).await;
    let health: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["broker"]["ok"], false, "{body}");
    assert!(!body.contains(&port) && !body.contains("127.0.0.1"), "/health shows the redis address: {body}");

    client.send(json!({"type": "publish", "topic": "t", "content": 2, "id": "down"})).await;
    let error = client.until("the refusal", |v| v["type"] == "error" && v["id"] == "down").await;
    assert_eq!(error["code"], "unavailable", "{error}");
    let text = error.to_string();
    assert!(!text.contains(&port) && !text.contains("127.0.0.1"), "the error shows the redis address: {text}");
}

/// Issue #12: one connection's requests take effect in order. A client that
/// subscribes and publishes right away (without waiting for the ack)
/// receives its own message, after the ack, on a topic new to the node and
/// on one the node already follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_then_publish_on_one_connection_receives_the_message() {
    let Some(redis) = Redis::start() else { return };
    let a = node(&redis, &[]);
    wait_health(a.port, true).await;
    // Topics followed[i] already have a subscriber on this node.
    let mut other = Client::connect(&a.url("/"), "other").await;
    for i in 0..10 {
        other.request(json!({"type": "subscribe", "topic": format!("followed{i}")}), &format!("o{i}")).await;
    }
    let mut client = Client::connect(&a.url("/"), "client").await;
    let topics: Vec<String> = (0..10).flat_map(|i| [format!("new{i}"), format!("followed{i}")]).collect();
    for topic in &topics {
        client.send(json!({"type": "subscribe", "topic": topic, "id": format!("s-{topic}")})).await;
        client.send(json!({"type": "publish", "topic": topic, "content": format!("x-{topic}"), "id": format!("p-{topic}")})).await;
    }
    for topic in &topics {
        client.until(&format!("its own message on {topic}"), |v| v["type"] == "message" && v["topic"] == topic.as_str()).await;
        let at = |pred: &dyn Fn(&Value) -> bool| client.seen.iter().position(pred);
        let sub_ack = at(&|v| v["type"] == "ack" && v["id"] == format!("s-{topic}").as_str()).expect("the subscribe ack");
        let message = at(&|v| v["type"] == "message" && v["topic"] == topic.as_str()).unwrap();
        assert!(sub_ack < message, "{topic}: the message came before the subscribe's ack");
        let m = &client.seen[message];
        assert_eq!(m["content"], format!("x-{topic}"), "{m}");
        // The subscription started before the message: at seq - 1.
        assert_eq!(client.seen[sub_ack]["seq"].as_u64().unwrap() + 1, m["seq"].as_u64().unwrap(), "{topic}");
    }
}

/// Issue #17: publishes go to Redis in one script call per batch, grouped
/// by topic. A flood over many topics, without waiting for acks, so that
/// batches carry several messages of several topics: each topic's acks and
/// deliveries are 1..=n in order, its stream keeps exactly the newest
/// `--history-size` entries with the byte total matching what the stream
/// holds, and a topic whose key is of the wrong type (planted with
/// redis-cli) is refused alone, with `unavailable`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_over_many_topics_keeps_every_topic_exact_and_refuses_a_broken_one_alone() {
    const TOPICS: usize = 20;
    const EACH: usize = 60;
    const KEPT: usize = 25;
    let Some(redis) = Redis::start() else { return };
    let a = node(&redis, &["--history-size", &KEPT.to_string(), "--message-rate", "0"]);
    wait_health(a.port, true).await;
    redis_cli(&redis, &["SET", "tether:{broken}:seq", "not a hash"]);
    let mut reader = Client::connect(&a.url("/"), "reader").await;
    for t in 0..TOPICS {
        reader.request(json!({"type": "subscribe", "topic": format!("t{t}")}), &format!("s{t}")).await;
    }
    let mut publisher = Client::connect(&a.url("/"), "publisher").await;
    for i in 0..EACH {
        for t in 0..TOPICS {
            publisher.send(json!({"type": "publish", "topic": format!("t{t}"), "content": format!("{i}-{}", "z".repeat(i * 7)), "id": format!("p{t}-{i}")})).await;
        }
        publisher.send(json!({"type": "publish", "topic": "broken", "content": i, "id": format!("b{i}")})).await;
    }
    // Every answer: an ack per good publish, an error per broken one.
    let (mut acks, mut refused) = (std::collections::HashMap::<String, Vec<u64>>::new(), 0);
    while acks.values().map(Vec::len).sum::<usize>() < TOPICS * EACH || refused < EACH {
        let v = publisher.next().await;
        let id = v["id"].as_str().unwrap_or_default().to_string();
        match v["type"].as_str() {
            Some("ack") => {
                assert!(id.starts_with('p'), "{v}");
                let topic = id[1..].split('-').next().unwrap().to_string();
                acks.entry(topic).or_default().push(v["seq"].as_u64().unwrap());
            }
            Some("error") => {
                assert!(id.starts_with('b'), "a good topic's publish was refused: {v}");
                assert_eq!(v["code"], "unavailable", "{v}");
                refused += 1;
            }
            _ => {}
        }
    }
    for t in 0..TOPICS {
        assert_eq!(acks[&t.to_string()], (1..=EACH as u64).collect::<Vec<_>>(), "t{t}: acks");
    }
    for t in 0..TOPICS {
        let topic = format!("t{t}");
        while reader.positions(&topic).len() < EACH {
            reader.next().await;
        }
        let seqs: Vec<u64> = reader.positions(&topic).iter().map(|(_, s)| *s).collect();
        assert_eq!(seqs, (1..=EACH as u64).collect::<Vec<_>>(), "{topic}: deliveries");
        // In Redis: the newest entries, KEPT plus at most a sixteenth
        // (trimming waits for that slack), and `bytes` is what they hold.
        let log = format!("tether:{{{topic}}}:log");
        let entries = redis_cli(&redis, &["XRANGE", &log, "-", "+"]);
        let lines: Vec<&str> = entries.lines().collect();
        // redis-cli prints per entry: id, then s, seq, f, sender, t, ts, k, kind, b, body.
        let kept = lines.len() / 11;
        assert!(lines.len().is_multiple_of(11) && (KEPT..=KEPT + KEPT / 16).contains(&kept), "{topic}: {kept} kept: {entries}");
        let mut bytes = 0;
        for (n, entry) in lines.chunks(11).enumerate() {
            assert_eq!(entry[2], (EACH - kept + n + 1).to_string(), "{topic}: kept seq");
            bytes += 64 + entry[4].len() + entry[10].len();
        }
        let total: usize = redis_cli(&redis, &["HGET", &format!("tether:{{{topic}}}:seq"), "bytes"]).parse().unwrap();
        assert_eq!(total, bytes, "{topic}: the byte total");
        let ttl: i64 = redis_cli(&redis, &["PTTL", &log]).parse().unwrap();
        assert!(ttl > 0, "{topic}: the stream has no expiry ({ttl})");
    }
    // A resume from the start gets the newest KEPT (not the slack), after a notice.
    let mut late = Client::connect(&a.url("/"), "late").await;
    let ack = late.request(json!({"type": "subscribe", "topic": "t0", "since": 0}), "r").await;
    assert_eq!(ack["seq"], EACH);
    let got: Vec<u64> = late.positions("t0").iter().map(|(_, s)| *s).collect();
    assert_eq!(got, ((EACH - KEPT + 1) as u64..=EACH as u64).collect::<Vec<_>>());
    assert_eq!(late.gaps("t0").len(), 1, "{:?}", late.gaps("t0"));
    assert_eq!(redis_cli(&redis, &["GET", "tether:{broken}:seq"]), "not a hash");

    // The stream's length is kept in the seq hash: a stream that expired
    // (deleted here) under it starts again from one entry...
    redis_cli(&redis, &["DEL", "tether:{t1}:log"]);
    let ack = publisher.request(json!({"type": "publish", "topic": "t1", "content": "after"}), "again").await;
    assert_eq!(ack["seq"], EACH + 1);
    assert_eq!(redis_cli(&redis, &["XLEN", "tether:{t1}:log"]), "1");
    assert_eq!(redis_cli(&redis, &["HGET", "tether:{t1}:seq", "count"]), "1");
    let sender = redis_cli(&redis, &["XRANGE", "tether:{t1}:log", "-", "+"]).lines().nth(4).unwrap().len();
    assert_eq!(redis_cli(&redis, &["HGET", "tether:{t1}:seq", "bytes"]), (64 + sender + "\"after\"".len()).to_string());
    // ...and a stream replaced by a key of another type refuses its topic
    // with nothing written.
    redis_cli(&redis, &["SET", "tether:{t2}:log", "not a stream"]);
    publisher.send(json!({"type": "publish", "topic": "t2", "content": "x", "id": "wrong"})).await;
    let error = publisher.until("the refusal", |v| v["id"] == "wrong").await;
    assert_eq!((error["type"].as_str(), error["code"].as_str()), (Some("error"), Some("unavailable")), "{error}");
    assert_eq!(redis_cli(&redis, &["HGET", "tether:{t2}:seq", "seq"]), EACH.to_string());
}
