//! Publish on one node, receive on another: deliveries per second and
//! publish-to-delivery latency through the broker (see
//! docs/BENCHMARKS-cluster.md and scripts/bench-cluster.sh).
//!
//! ```sh
//! cargo run --release -p tether-hub --example cluster_bench -- \
//!     --publish ws://127.0.0.1:8081/ --receive ws://127.0.0.1:8082/ \
//!     --receivers 50 --rate 1000 --seconds 10
//! ```
//!
//! `--publishers` tether.v1 connections publish round robin over `--topics` topics (`bench`, or `bench-0`... ; paced at `--rate`
//! messages/s, or with `--rate 0` as fast as a window of 256 unacknowledged
//! publishes allows); `--receivers` connections on the other URL subscribe
//! to it. Each message carries its send time; receivers run in the same
//! process, so latency is measured on one clock.

use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tether::{ClientBuilder, Message};

struct Args {
    publish: String,
    receive: String,
    receivers: usize,
    rate: f64,
    seconds: f64,
    size: usize,
    /// Topics published to (round robin) and followed by every receiver.
    topics: usize,
    /// Publishing connections, each with its own window (or share of the rate).
    publishers: usize,
}

fn args() -> Args {
    let mut a = Args { publish: String::new(), receive: String::new(), receivers: 50, rate: 1000.0, seconds: 10.0, size: 64, topics: 1, publishers: 1 };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--publish" => a.publish = value,
            "--receive" => a.receive = value,
            "--receivers" => a.receivers = value.parse().unwrap(),
            "--rate" => a.rate = value.parse().unwrap(),
            "--seconds" => a.seconds = value.parse().unwrap(),
            "--size" => a.size = value.parse().unwrap(),
            "--topics" => a.topics = value.parse().unwrap(),
            "--publishers" => a.publishers = value.parse().unwrap(),
            other => panic!("unknown flag {other}"),
        }
    }
    assert!(!a.publish.is_empty(), "--publish URL is required");
    if a.receive.is_empty() {
        a.receive = a.publish.clone();
    }
    a
}

type Ws = tether::WebSocket<tether::MaybeTlsStream>;

async fn v1(url: &str) -> Ws {
    let (mut ws, _) = ClientBuilder::new(url).protocol("tether.v1").connect().await.expect("connect");
    next_json(&mut ws).await; // welcome
    ws
}

async fn next_json(ws: &mut Ws) -> Option<Value> {
    loop {
        match ws.recv().await? {
            Ok(Message::Text(t)) => return serde_json::from_str(&t).ok(),
            Ok(_) => continue,
            Err(_) => return None,
        }
    }
}

#[tokio::main]
async fn main() {
    let a = args();
    let start = Instant::now();
    let delivered = Arc::new(AtomicU64::new(0));
    let measuring = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut receivers = Vec::new();
    let topic = |i: usize| if a.topics == 1 { "bench".to_string() } else { format!("bench-{i}") };
    for _ in 0..a.receivers {
        let mut ws = v1(&a.receive).await;
        for i in 0..a.topics {
            ws.send(json!({"type": "subscribe", "topic": topic(i), "id": "s"}).to_string()).await.unwrap();
        }
        let mut acks = 0;
        while acks < a.topics {
            let v = next_json(&mut ws).await.expect("subscribe ack");
            if v["type"] == "ack" {
                acks += 1;
            }
        }
        let (delivered, measuring, topics) = (delivered.clone(), measuring.clone(), a.topics);
        receivers.push(tokio::spawn(async move {
            let mut latencies_us: Vec<u32> = Vec::new();
            let mut last_seq: HashMap<String, u64> = HashMap::new();
            let mut stops = 0;
            while let Some(v) = next_json(&mut ws).await {
                if v["type"] != "message" {
                    continue;
                }
                let seq = v["seq"].as_u64().unwrap_or(0);
                let last = last_seq.entry(v["topic"].as_str().unwrap_or("").to_string()).or_default();
                assert!(seq > *last, "out of order");
                *last = seq;
                if v["content"]["stop"] == true {
                    stops += 1;
                    if stops == topics {
                        break;
                    }
                    continue;
                }
                if measuring.load(Ordering::Relaxed) {
                    let sent = Duration::from_micros(v["content"]["t"].as_u64().unwrap());
                    latencies_us.push((start.elapsed() - sent).as_micros() as u32);
                    delivered.fetch_add(1, Ordering::Relaxed);
                }
            }
            latencies_us
        }));
    }

    let warmup = Duration::from_secs(1);
    let total = warmup + Duration::from_secs_f64(a.seconds);
    let published = Arc::new(AtomicU64::new(0));
    let mut publishers = Vec::new();
    for k in 0..a.publishers {
        let (url, published, measuring) = (a.publish.clone(), published.clone(), measuring.clone());
        let (rate, size, topics, n) = (a.rate / a.publishers as f64, a.size, a.topics, a.publishers);
        let topic = move |i: usize| if topics == 1 { "bench".to_string() } else { format!("bench-{i}") };
        publishers.push(tokio::spawn(async move {
            let mut publisher = v1(&url).await;
            let pad = "x".repeat(size.saturating_sub(40));
            let (mut sent, mut acked) = (0u64, 0u64);
            let window = 256;
            while start.elapsed() < total {
                if rate > 0.0 {
                    let due = Duration::from_secs_f64(sent as f64 / rate);
                    if let Some(wait) = due.checked_sub(start.elapsed()) {
                        tokio::time::sleep(wait).await;
                    }
                } else {
                    while sent - acked >= window {
                        let v = next_json(&mut publisher).await.expect("ack");
                        if v["type"] == "ack" {
                            acked += 1;
                        } else if v["type"] == "error" {
                            panic!("publish refused: {v}");
                        }
                    }
                }
                let t = start.elapsed().as_micros() as u64;
                let mut msg = json!({"type": "publish", "topic": topic((sent as usize * n + k) % topics), "content": {"t": t, "p": pad}});
                if rate == 0.0 {
                    msg["id"] = json!(sent); // acks pace the window
                }
                publisher.feed(msg.to_string()).await.unwrap();
                sent += 1;
                if measuring.load(Ordering::Relaxed) {
                    published.fetch_add(1, Ordering::Relaxed);
                }
                if rate > 0.0 || sent - acked >= window {
                    publisher.flush().await.unwrap();
                }
            }
            publisher
        }));
    }
    tokio::time::sleep(warmup.saturating_sub(start.elapsed())).await;
    measuring.store(true, Ordering::Relaxed);
    delivered.store(0, Ordering::Relaxed);
    published.store(0, Ordering::Relaxed);
    let from = Instant::now();
    let mut conns = Vec::new();
    for p in publishers {
        conns.push(p.await.unwrap());
    }
    measuring.store(false, Ordering::Relaxed);
    let elapsed = from.elapsed().as_secs_f64();
    let deliveries = delivered.load(Ordering::Relaxed);
    let mut publisher = conns.pop().unwrap();
    for i in 0..a.topics {
        publisher.send(json!({"type": "publish", "topic": topic(i), "content": {"stop": true}}).to_string()).await.unwrap();
    }
    let mut all: Vec<u32> = Vec::new();
    for r in receivers {
        if let Ok(Ok(l)) = tokio::time::timeout(Duration::from_secs(30), r).await {
            all.extend(l);
        }
    }
    all.sort_unstable();
    let pct = |p: f64| all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1))).copied().unwrap_or(0) as f64 / 1000.0;
    let published = published.load(Ordering::Relaxed) as f64 / elapsed;
    println!(
        "publish {} receive {} receivers {} topics {} publishers {} size {}: published {published:.0}/s, deliveries {:.0}/s, latency ms p50 {:.2} p90 {:.2} p99 {:.2} max {:.2} ({} samples)",
        a.publish,
        a.receive,
        a.receivers,
        a.topics,
        a.publishers,
        a.size,
        deliveries as f64 / elapsed,
        pct(0.5),
        pct(0.9),
        pct(0.99),
        pct(1.0),
        all.len()
    );
}
