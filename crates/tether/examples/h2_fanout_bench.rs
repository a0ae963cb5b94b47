//! Fan-out over WebSocket on HTTP/1.1 and on HTTP/2 (RFC 8441), side by
//! side in one run against one `tether serve` with TLS: for each transport,
//! SUBS subscribers join a room over that transport, a publisher on the
//! same transport sends MSGS timestamped messages, and every subscriber
//! counts deliveries and their latency (send to receive). Rounds alternate
//! the transports so machine load hits both alike.
//!
//!     cargo build --release -p tether-cli
//!     cargo run --release -p tether --features http2 --example h2_fanout_bench -- \
//!         target/release/tether [SUBS=50] [MSGS=2000] [ROUNDS=3]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tether::{ClientBuilder, Message};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let bin = args.get(1).ok_or("usage: h2_fanout_bench PATH/TO/tether [SUBS] [MSGS] [ROUNDS]")?;
    let subs: usize = args.get(2).map_or(Ok(50), |s| s.parse())?;
    let msgs: usize = args.get(3).map_or(Ok(2000), |s| s.parse())?;
    let rounds: usize = args.get(4).map_or(Ok(3), |s| s.parse())?;

    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])?;
    let dir = std::env::temp_dir().join(format!("tether-h2-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, ck.cert.pem())?;
    std::fs::write(&key, ck.key_pair.serialize_pem())?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let mut server = Command::new(bin)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--tls-cert"])
        .arg(&cert)
        .arg("--tls-key")
        .arg(&key)
        .args(["--queue-max-messages", "100000", "--message-rate", "1000000", "--max-connections", "10000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    {
        use std::io::BufRead;
        let mut line = String::new();
        std::io::BufReader::new(server.stdout.take().ok_or("no stdout")?).read_line(&mut line)?;
    }
    let tls = tether::tls::TlsOptions { ca_pem: Some(ck.cert.pem().into_bytes()), ..Default::default() };
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("subscribers {subs}, messages {msgs}, rounds {rounds}; load average before: {}", load.trim());
    let mut results: Vec<(&str, f64, Vec<f64>)> = Vec::new();
    for round in 0..rounds {
        for (name, h2) in [("websocket (HTTP/1.1)", false), ("websocket_h2 (RFC 8441)", true)] {
            let url = format!("wss://localhost:{port}/bench-{round}-{h2}");
            let (rate, lat) = run(&url, &tls, h2, subs, msgs).await?;
            println!("round {round} {name}: {rate:.0} deliveries/s, p50 {:.2} ms, p99 {:.2} ms", pct(&lat, 0.5), pct(&lat, 0.99));
            results.push((name, rate, lat));
        }
    }
    for name in ["websocket (HTTP/1.1)", "websocket_h2 (RFC 8441)"] {
        let mine: Vec<&(&str, f64, Vec<f64>)> = results.iter().filter(|r| r.0 == name).collect();
        let mut rates: Vec<f64> = mine.iter().map(|r| r.1).collect();
        rates.sort_by(f64::total_cmp);
        let mut lat: Vec<f64> = mine.iter().flat_map(|r| r.2.iter().copied()).collect();
        lat.sort_by(f64::total_cmp);
        println!("median {name}: {:.0} deliveries/s, p50 {:.2} ms, p99 {:.2} ms", rates[rates.len() / 2], pct(&lat, 0.5), pct(&lat, 0.99));
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("load average after: {}", load.trim());
    let _ = server.kill();
    let _ = server.wait();
    Ok(())
}

fn pct(sorted_or_not: &[f64], p: f64) -> f64 {
    let mut v = sorted_or_not.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(((v.len() as f64 - 1.0) * p) as usize).copied().unwrap_or(f64::NAN)
}

/// One round on one transport: deliveries per second and latencies (ms).
async fn run(url: &str, tls: &tether::tls::TlsOptions, h2: bool, subs: usize, msgs: usize) -> Result<(f64, Vec<f64>), Box<dyn std::error::Error>> {
    let epoch = Instant::now();
    let client = ClientBuilder::new(url).tls(tls.clone()).http2(h2);
    let mut readers = Vec::new();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(subs);
    for _ in 0..subs {
        let (mut ws, _) = client.connect().await?;
        let ready = ready_tx.clone();
        readers.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(msgs);
            let mut welcomed = false;
            while lat.len() < msgs {
                match tokio::time::timeout(Duration::from_secs(30), ws.recv()).await {
                    Ok(Some(Ok(Message::Text(t)))) => {
                        if !welcomed {
                            welcomed = true;
                            let _ = ready.send(()).await;
                            continue;
                        }
                        if let Some(sent) = t.as_str().rsplit(' ').next().and_then(|n| n.parse::<u64>().ok()) {
                            lat.push((epoch.elapsed().as_nanos() as u64).saturating_sub(sent) as f64 / 1e6);
                        }
                    }
                    Ok(Some(Ok(_))) => {}
                    _ => break,
                }
            }
            lat
        }));
    }
    for _ in 0..subs {
        ready_rx.recv().await;
    }
    let (mut publisher, _) = client.connect().await?;
    let start = Instant::now();
    for _ in 0..msgs {
        publisher.feed(format!("t {}", epoch.elapsed().as_nanos() as u64)).await?;
    }
    publisher.flush().await?;
    let mut lat = Vec::with_capacity(subs * msgs);
    for r in readers {
        lat.extend(r.await?);
    }
    let secs = start.elapsed().as_secs_f64();
    let _ = publisher.close(tether::CloseCode::NORMAL, "").await;
    Ok((lat.len() as f64 / secs, lat))
}
