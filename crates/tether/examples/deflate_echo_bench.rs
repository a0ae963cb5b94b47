//! Compressed echo throughput and memory of a server under test, with a
//! client that negotiates permessage-deflate (RFC 7692).
//!
//! ```text
//! cargo run --release -p tether --example deflate_echo_bench -- ws://127.0.0.1:9001 --pid PID \
//!     [--connections 50] [--seconds 5] [--size 2048] [--context-takeover]
//! ```
//!
//! Each connection sends a JSON-like text message, waits for its echo, and
//! repeats until the time is up. With `--pid` (the server's process id) it
//! also reports the server's CPU time per message and its resident memory
//! per connection (VmRSS before and after connecting). Results:
//! `crates/tether-proto/BENCHMARKS-deflate.md`.

use std::time::{Duration, Instant};
use tether::{ClientBuilder, Config, DeflateConfig, Message};

fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn proc_stat(pid: u32) -> (f64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the ")" that ends the command name: utime is the 12th, stime the 13th.
    let rest: Vec<&str> = stat.rsplit_once(')').map(|(_, r)| r.split_whitespace().collect()).unwrap_or_default();
    let ticks = |i: usize| rest.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    let cpu = (ticks(11) + ticks(12)) / 100.0;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()).unwrap_or(0);
    (cpu, rss)
}

fn payload(size: usize, seed: usize) -> String {
    let mut out = String::from("[");
    let mut i = seed;
    while out.len() < size {
        out.push_str(&format!("{{\"id\":{i},\"user\":\"user{}\",\"room\":\"/rooms/{}\",\"text\":\"message number {i} from the load generator\"}},", i % 97, i % 13));
        i += 7919;
    }
    out.truncate(size - 1);
    out.push(']');
    out
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let url = args.first().cloned().unwrap_or_else(|| "ws://127.0.0.1:9001".into());
    let connections: usize = arg(&args, "--connections", 50);
    let seconds: f64 = arg(&args, "--seconds", 5.0);
    let size: usize = arg(&args, "--size", 2048);
    let pid: u32 = arg(&args, "--pid", 0);
    let takeover = args.iter().any(|a| a == "--context-takeover");
    let deflate = DeflateConfig { context_takeover: takeover, ..DeflateConfig::default() };
    let config = Config { deflate: Some(deflate), ..Config::default() };

    let (_, rss_before) = proc_stat(pid);
    let mut sockets = Vec::new();
    let mut answer = String::new();
    for _ in 0..connections {
        let (ws, response) = ClientBuilder::new(&url).config(config.clone()).connect().await?;
        answer = response.extensions.iter().map(|e| format!("{e:?}")).collect::<Vec<_>>().join(", ");
        sockets.push(ws);
    }
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let (cpu_before, _) = proc_stat(pid);
    let started = Instant::now();
    let tasks: Vec<_> = sockets
        .into_iter()
        .enumerate()
        .map(|(c, mut ws)| {
            tokio::spawn(async move {
                let mut n = 0u64;
                while Instant::now() < deadline {
                    let msg = payload(size, c * 1000 + n as usize % 50);
                    ws.send(msg.as_str()).await.expect("send");
                    match ws.recv().await {
                        Some(Ok(Message::Text(t))) if t.as_str() == msg => n += 1,
                        other => panic!("bad echo: {other:?}"),
                    }
                }
                (n, ws)
            })
        })
        .collect();
    let mut total = 0;
    let mut sockets = Vec::new();
    for t in tasks {
        let (n, ws) = t.await?;
        total += n;
        sockets.push(ws);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let (cpu_after, rss_after) = proc_stat(pid);
    println!("negotiated: {answer}");
    println!("{connections} connections, {size}-byte text messages, {elapsed:.1} s: {:.0} echoes/s", total as f64 / elapsed);
    if pid != 0 {
        println!(
            "server: {:.1} µs CPU per echo, RSS {} KiB -> {} KiB ({:.1} KiB per connection)",
            (cpu_after - cpu_before) * 1e6 / total as f64,
            rss_before,
            rss_after,
            (rss_after as f64 - rss_before as f64) / connections as f64
        );
    }
    for mut ws in sockets {
        let _ = ws.close(1000, "").await;
    }
    Ok(())
}
