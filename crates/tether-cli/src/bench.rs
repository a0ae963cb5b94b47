//! `tether bench`: the load generator (crates/tether-bench) behind the CLI.

use std::process::ExitCode;
use tether_bench::{print_report, run_broadcast, run_connections, run_echo, BroadcastArgs, ConnectionsArgs, EchoArgs};

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    #[command(subcommand)]
    workload: Workload,
}

#[derive(clap::Subcommand, Debug)]
enum Workload {
    /// Closed-loop echo round trips: messages/s, MB/s, latency percentiles.
    Echo(EchoArgs),
    /// Broadcast through a relay server (e.g. `tether serve`): deliveries/s,
    /// publish-to-delivery and publish-to-last-delivery latency.
    Broadcast(BroadcastArgs),
    /// Hold many idle connections: connect time and server memory per connection.
    Connections(ConnectionsArgs),
}

pub fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let (report, json) = match &args.workload {
        Workload::Echo(a) => (run_echo(a)?, a.json),
        Workload::Broadcast(a) => (run_broadcast(a)?, a.json),
        Workload::Connections(a) => (run_connections(a)?, a.json),
    };
    print_report(&report, json);
    Ok(if report.had_errors() { ExitCode::from(1) } else { ExitCode::SUCCESS })
}
