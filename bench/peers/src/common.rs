//! Shared by the peer binaries: `--listen ADDR` parsing and the TCP accept loop.

use std::{future::Future, time::Duration};
use tokio::net::{TcpListener, TcpStream};

pub const DEFAULT_LISTEN: &str = "127.0.0.1:9001";

/// Accepts `--listen ADDR` or `--listen=ADDR`; defaults to 127.0.0.1:9001.
pub fn listen_addr() -> String {
    let mut addr = DEFAULT_LISTEN.to_string();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--listen" {
            addr = args.next().unwrap_or_else(|| usage("--listen needs an address"));
        } else if let Some(value) = arg.strip_prefix("--listen=") {
            addr = value.to_string();
        } else {
            usage(&format!("unknown argument: {arg}"));
        }
    }
    addr
}

fn usage(msg: &str) -> ! {
    eprintln!("{msg}\nusage: {} [--listen ADDR]  (default {DEFAULT_LISTEN})", std::env::args().next().unwrap_or_default());
    std::process::exit(2)
}

/// A peer that vanished mid-conversation: not worth a log line per connection in a benchmark.
#[allow(dead_code)] // not every binary uses it
pub fn is_disconnect(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(e.kind(), ConnectionReset | BrokenPipe | ConnectionAborted | UnexpectedEof)
}

/// Binds, prints `listening on ADDR` once bound, then spawns `handle` for every connection.
pub async fn serve<F, Fut>(handle: F) -> std::io::Result<()>
where
    F: Fn(TcpStream) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind(listen_addr()).await?;
    println!("listening on {}", listener.local_addr()?);
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                // Every peer disables Nagle so none is penalised in latency runs (ws does the same).
                let _ = stream.set_nodelay(true);
                tokio::spawn(handle(stream));
            }
            Err(e) => {
                // e.g. EMFILE: back off instead of spinning.
                eprintln!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
