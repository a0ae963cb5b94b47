//! The client side of Autobahn|Testsuite: run every case of a fuzzing server.
//!
//! `cargo run --release -p tether --example autobahn_client -- ws://127.0.0.1:9002`
//!
//! `--deflate` offers permessage-deflate (cases 12.x and 13.x need it), with
//! the library's default settings (no context takeover);
//! `--deflate-context-takeover` offers it with context takeover instead.
//! The URL is the last argument (conformance/run.sh appends it).

use tether::{Config, DeflateConfig, Message};

const AGENT: &str = "tether";

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let deflate = if args.iter().any(|a| a == "--deflate-context-takeover") {
        Some(DeflateConfig { context_takeover: true, ..DeflateConfig::default() })
    } else if args.iter().any(|a| a == "--deflate") {
        Some(DeflateConfig::default())
    } else {
        None
    };
    let base = args.iter().rfind(|a| !a.starts_with("--")).cloned().unwrap_or_else(|| "ws://127.0.0.1:9002".into());
    let mut ws = tether::connect(&format!("{base}/getCaseCount")).await?;
    let count: u32 = match ws.recv().await {
        Some(Ok(Message::Text(t))) => t.parse()?,
        other => return Err(format!("unexpected answer to /getCaseCount: {other:?}").into()),
    };
    let _ = ws.close(1000, "").await;
    eprintln!("running {count} cases against {base} (permessage-deflate: {deflate:?})");
    for case in 1..=count {
        let url = format!("{base}/runCase?case={case}&agent={AGENT}");
        let config = Config { max_message_size: 64 << 20, max_frame_size: 64 << 20, deflate: deflate.clone(), ..Config::default() };
        let (mut ws, _) = match tether::ClientBuilder::new(&url).config(config).connect().await {
            Ok(ok) => ok,
            Err(e) => {
                eprintln!("case {case}: connect failed: {e}");
                continue;
            }
        };
        while let Some(msg) = ws.recv().await {
            match msg {
                Ok(msg @ (Message::Text(_) | Message::Binary(_))) => {
                    // Queue the echo; it is flushed when the reader next waits.
                    if ws.feed(msg).await.is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        if case % 50 == 0 {
            eprintln!("{case}/{count} cases done");
        }
    }
    let mut ws = tether::connect(&format!("{base}/updateReports?agent={AGENT}")).await?;
    let _ = ws.close(1000, "").await;
    eprintln!("reports updated");
    Ok(())
}
