//! What permessage-deflate costs an idle connection, measured on the real
//! binary: `tether echo` with and without `--deflate`, its resident memory
//! (VmRSS from /proc) before and after many connections that negotiated
//! compression and exchanged one compressed message each, then went idle.
//!
//! The bounds are the figures documented on `DeflateConfig` with generous
//! slack: without context takeover an idle connection holds no compression
//! state (it costs what a plain one does); with it, about 325 KiB.
//!
//! `TETHER_BIN=target/release/tether` measures a release build (the figures
//! in BENCHMARKS-deflate.md); by default the test uses the debug binary.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tether::{ClientBuilder, Config, DeflateConfig, Message};

struct Echo {
    child: Child,
    port: u16,
}

impl Drop for Echo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_echo(args: &[&str]) -> Echo {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let bin = std::env::var("TETHER_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_tether").to_string());
    let mut child = Command::new(bin)
        .args(["echo", "--threads", "1", "--listen", &format!("127.0.0.1:{port}")])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start tether echo");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    assert!(line.starts_with("listening on "), "unexpected first line: {line:?}");
    Echo { child, port }
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// A JSON-ish message above the default 256-byte threshold: compressed both ways.
fn message(i: usize) -> String {
    format!("{{\"id\":{i},\"user\":\"user{i}\",\"room\":\"/rooms/lobby\",\"text\":\"{}\"}}", "hello there, general kenobi ".repeat(12))
}

/// Open `n` connections to `echo`, one message each, and return the
/// server's growth in resident memory per idle connection, in KiB.
async fn per_connection_kib(echo: &Echo, n: usize, client: Option<DeflateConfig>) -> f64 {
    let url = format!("ws://127.0.0.1:{}/", echo.port);
    let config = Config { deflate: client.clone(), ..Config::default() };
    let open = |i: usize| {
        let (url, config) = (url.clone(), config.clone());
        async move {
            let (mut ws, _) = ClientBuilder::new(url).config(config).connect().await.unwrap();
            ws.send(message(i)).await.unwrap();
            assert_eq!(ws.recv().await.unwrap().unwrap(), Message::text(message(i)));
            ws
        }
    };
    // Warm up: the first compressed messages allocate the per-thread spare
    // state and grow the allocator's arena; that is not per connection.
    let mut warm = Vec::new();
    for i in 0..20 {
        warm.push(open(i).await);
    }
    if client.is_some() {
        assert!(warm[0].connection().deflate_params().is_some(), "deflate negotiated");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = rss_kib(echo.child.id());
    let mut sockets = Vec::with_capacity(n);
    for chunk in (0..n).collect::<Vec<_>>().chunks(50) {
        let batch = futures_util::future::join_all(chunk.iter().map(|&i| open(i))).await;
        sockets.extend(batch);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = rss_kib(echo.child.id());
    let per = (after.saturating_sub(before)) as f64 / n as f64;
    drop(sockets);
    drop(warm);
    per
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_compressed_connections_stay_within_the_documented_memory() {
    const N: usize = 1000;
    let plain = {
        let echo = start_echo(&[]);
        per_connection_kib(&echo, N, None).await
    };
    let deflate = {
        let echo = start_echo(&["--deflate"]);
        per_connection_kib(&echo, N, Some(DeflateConfig::default())).await
    };
    // Context takeover: fewer connections (the client side of this test
    // holds the same state), and a client that keeps context too.
    const N_TAKEOVER: usize = 300;
    let takeover = {
        let echo = start_echo(&["--deflate", "--deflate-context-takeover"]);
        let client = DeflateConfig { context_takeover: true, ..DeflateConfig::default() };
        per_connection_kib(&echo, N_TAKEOVER, Some(client)).await
    };
    let small_window = {
        let echo = start_echo(&["--deflate", "--deflate-context-takeover", "--deflate-window-bits", "9"]);
        let client = DeflateConfig { context_takeover: true, ..DeflateConfig::default() };
        per_connection_kib(&echo, N_TAKEOVER, Some(client)).await
    };
    eprintln!(
        "resident memory per idle connection: plain {plain:.1} KiB, --deflate {deflate:.1} KiB, \
         --deflate-context-takeover {takeover:.1} KiB, with --deflate-window-bits 9 {small_window:.1} KiB"
    );
    // Documented: no compression state between messages, so the same as a
    // plain connection (slack: allocator noise).
    assert!(deflate <= plain + 4.0, "--deflate: {deflate:.1} KiB per idle connection vs {plain:.1} KiB plain");
    // Documented: ≈ 305 KiB compressor + ≈ 19 KiB decompressor at window 15,
    // ≈ 180 + 19 KiB at window 9.
    assert!(takeover <= plain + 400.0, "context takeover: {takeover:.1} KiB per connection");
    assert!(takeover >= plain + 150.0, "context takeover should keep state: {takeover:.1} KiB per connection");
    assert!(small_window <= plain + 260.0, "window 9: {small_window:.1} KiB per connection");
}
