//! A stand-alone front end for the library, for running the generator
//! without the `tether` binary:
//! `cargo run --release -p tether-bench --example tether-bench -- echo --url ws://127.0.0.1:9001/`.

use clap::{Parser, Subcommand};
use tether_bench::{print_report, run_broadcast, run_connections, run_echo, BroadcastArgs, ConnectionsArgs, EchoArgs};

/// Load generator for WebSocket servers.
#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Subcommand)]
enum Bench {
    /// Closed-loop round trips against an echo server.
    Echo(EchoArgs),
    /// Publishing through a server that relays every message to every client.
    Broadcast(BroadcastArgs),
    /// Many idle connections: connect time and server memory per connection.
    Connections(ConnectionsArgs),
}

fn main() -> anyhow::Result<()> {
    let (report, json) = match Cli::parse().bench {
        Bench::Echo(a) => (run_echo(&a)?, a.json),
        Bench::Broadcast(a) => (run_broadcast(&a)?, a.json),
        Bench::Connections(a) => (run_connections(&a)?, a.json),
    };
    print_report(&report, json);
    std::process::exit(i32::from(report.had_errors()));
}
