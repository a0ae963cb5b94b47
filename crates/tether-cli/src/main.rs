//! `tether`: a ready-to-run WebSocket server, an echo server, a client and a
//! load generator.

mod admission;
mod bench;
mod connect;
mod echo;
mod front;
mod logging;
mod serve;
mod settings;
mod shutdown;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// Tether: WebSocket server, client and tools.
#[derive(Parser, Debug)]
#[command(name = "tether", version, about, long_about = None)]
struct Cli {
    /// Log as JSON lines instead of human-readable text.
    #[arg(long, global = true, env = "TETHER_LOG_JSON")]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the real-time server: HTTP and WebSocket on one port, a chat page
    /// at /, broadcast to rooms and topics, heartbeats, /health and /metrics.
    Serve(Box<settings::ServeArgs>),
    /// Load-generate against a WebSocket server (echo, broadcast, idle connections).
    Bench(bench::BenchArgs),
    /// Run a WebSocket echo server (text as text, binary as binary), the lean
    /// accept path used by conformance tests and benchmarks.
    Echo(echo::EchoArgs),
    /// Connect to a WebSocket server and chat with it, like wscat: lines from
    /// stdin are sent, messages received are printed; --reconnect survives
    /// drops. Works at a terminal and in a pipe.
    Connect(connect::ConnectArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.log_json);
    let result = match cli.command {
        Command::Serve(args) => serve::run(*args),
        Command::Echo(args) => echo::run(args),
        Command::Connect(args) => connect::run(args),
        Command::Bench(args) => bench::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
