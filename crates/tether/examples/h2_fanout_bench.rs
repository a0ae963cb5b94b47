//! Fan-out over WebSocket on HTTP/1.1, on HTTP/2 (RFC 8441) and over the
//! HTTP fallback's Server-Sent Events, side by side in one run against one
//! `tether serve` with TLS: for each transport, SUBS subscribers join a
//! room over that transport, a publisher (on the same transport; a
//! WebSocket for SSE, whose subscribers only listen) sends MSGS timestamped
//! messages, and every subscriber counts deliveries and their latency
//! (send to receive). Rounds alternate the transports so machine load hits
//! all alike.
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
        for (name, kind) in TRANSPORTS {
            let url = format!("wss://localhost:{port}/bench-{round}-{}", kind as u8);
            let (rate, lat) = run(&url, &tls, kind, subs, msgs).await?;
            println!("round {round} {name}: {rate:.0} deliveries/s, p50 {:.2} ms, p99 {:.2} ms", pct(&lat, 0.5), pct(&lat, 0.99));
            results.push((name, rate, lat));
        }
    }
    for (name, _) in TRANSPORTS {
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

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    H1,
    H2,
    Sse,
}

const TRANSPORTS: [(&str, Kind); 3] = [("websocket (HTTP/1.1)", Kind::H1), ("websocket_h2 (RFC 8441)", Kind::H2), ("sse (HTTP fallback)", Kind::Sse)];

/// An SSE subscriber of `path` over TLS (HTTP/1.1): latencies of `msgs`
/// messages; `ready` once its session is open (it is in the room then).
async fn sse_subscriber(port: u16, path: String, tls: tether::tls::TlsOptions, epoch: Instant, msgs: usize, ready: tokio::sync::mpsc::Sender<()>) -> Vec<f64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let config = tether::tls::client_config(&tls).expect("TLS config");
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let mut stream = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await.expect("TLS");
    stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n\r\n").as_bytes()).await.expect("request");
    let mut lat = Vec::with_capacity(msgs);
    let mut buf = vec![0u8; 64 << 10];
    let mut line = Vec::new();
    let mut ready = Some(ready);
    while lat.len() < msgs {
        let n = match tokio::time::timeout(Duration::from_secs(30), stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => n,
            _ => break,
        };
        // Line by line: chunk-size lines of the chunked body stand alone
        // (every chunk is whole events).
        for &b in &buf[..n] {
            if b != b'\n' {
                line.push(b);
                continue;
            }
            if line.starts_with(b"event: session") {
                if let Some(r) = ready.take() {
                    let _ = r.send(()).await;
                }
            } else if let Some(data) = line.strip_prefix(b"data: ") {
                if let Some(sent) = std::str::from_utf8(data).ok().and_then(|t| t.rsplit(' ').next()).and_then(|n| n.parse::<u64>().ok()) {
                    lat.push((epoch.elapsed().as_nanos() as u64).saturating_sub(sent) as f64 / 1e6);
                }
            }
            line.clear();
        }
    }
    lat
}

fn pct(sorted_or_not: &[f64], p: f64) -> f64 {
    let mut v = sorted_or_not.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(((v.len() as f64 - 1.0) * p) as usize).copied().unwrap_or(f64::NAN)
}

/// One round on one transport: deliveries per second and latencies (ms).
async fn run(url: &str, tls: &tether::tls::TlsOptions, kind: Kind, subs: usize, msgs: usize) -> Result<(f64, Vec<f64>), Box<dyn std::error::Error>> {
    let epoch = Instant::now();
    let client = ClientBuilder::new(url).tls(tls.clone()).http2(kind == Kind::H2);
    let mut readers = Vec::new();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(subs);
    for _ in 0..subs {
        if kind == Kind::Sse {
            let (port, path) = url.trim_start_matches("wss://localhost:").split_once('/').ok_or("url")?;
            readers.push(tokio::spawn(sse_subscriber(port.parse()?, format!("/{path}"), tls.clone(), epoch, msgs, ready_tx.clone())));
            continue;
        }
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
