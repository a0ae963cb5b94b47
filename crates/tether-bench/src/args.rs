//! Command-line arguments of the three workloads, as clap `Args` structs the
//! `tether` binary flattens into its `bench` subcommands.

use anyhow::{bail, Result};
use serde::Serialize;
use std::time::Duration;

/// `bench echo`: closed-loop round trips against an echo server.
#[derive(clap::Args, Clone, Debug)]
pub struct EchoArgs {
    /// Server URL: ws://HOST:PORT/path.
    #[arg(long)]
    pub url: String,
    /// Concurrent connections.
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// Payload size of each message (e.g. 64, 16KiB, 1MiB).
    #[arg(long, default_value = "64B", value_parser = crate::parse_size)]
    pub size: usize,
    /// Seconds to measure, after the warmup.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Messages in flight per connection: each reply releases the next send.
    #[arg(long, default_value_t = 1)]
    pub pipeline: usize,
    /// Send binary messages (the default).
    #[arg(long, conflicts_with = "text")]
    pub binary: bool,
    /// Send text messages.
    #[arg(long)]
    pub text: bool,
    /// Seconds of traffic before measuring starts.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Compare one reply in N byte for byte with what was sent (length,
    /// type and sequence number are checked on every reply).
    #[arg(long, default_value_t = 16, value_name = "N")]
    pub verify_every: u64,
    /// Server process id: report its CPU use and memory (VmRSS).
    #[arg(long)]
    pub pid: Option<u32>,
    /// Spread connections over this many source addresses 127.0.0.1, .2, ...
    /// (IPv4 loopback targets only), for more than ~28k connections.
    #[arg(long, default_value_t = 1)]
    pub source_ips: u8,
    /// Seconds allowed per connection for TCP connect and handshake.
    #[arg(long, default_value_t = 10.0)]
    pub connect_timeout: f64,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// Who sends in a broadcast run.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BroadcastMode {
    /// Every client (or the first `--senders`) sends; every client receives
    /// every message: clients x senders deliveries per round.
    All,
    /// `--publishers` extra connections send; the `--clients` only receive.
    Fanout,
}

/// `bench broadcast`: open-loop publishing through a server that relays
/// every text message to every connected client.
#[derive(clap::Args, Clone, Debug)]
pub struct BroadcastArgs {
    /// Server URL: ws://HOST:PORT/path.
    #[arg(long)]
    pub url: String,
    /// Receiving clients.
    #[arg(long, default_value_t = 50)]
    pub clients: usize,
    /// `all`: clients send and receive; `fanout`: publishers send, clients receive.
    #[arg(long, value_enum, default_value_t = BroadcastMode::All)]
    pub mode: BroadcastMode,
    /// In `all` mode, how many of the clients send (default: all of them).
    #[arg(long)]
    pub senders: Option<usize>,
    /// In `fanout` mode, publishing connections (in addition to the clients).
    #[arg(long, default_value_t = 1)]
    pub publishers: usize,
    /// Messages per second from each sender.
    #[arg(long, default_value_t = 10.0)]
    pub rate: f64,
    /// Size of each message (e.g. 64, 1KiB), at least the marker (~30 bytes).
    #[arg(long, default_value = "64B", value_parser = crate::parse_size)]
    pub size: usize,
    /// Seconds to measure, after the warmup.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Seconds of traffic before measuring starts.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Seconds to wait after the last send for late deliveries; a message
    /// not delivered by then is counted as lost.
    #[arg(long, default_value_t = 2.0)]
    pub drain: f64,
    /// The server does not send a message back to its sender (in `all`
    /// mode each message is then expected by clients - 1 receivers).
    #[arg(long)]
    pub exclude_sender: bool,
    /// Server process id: report its CPU use and memory (VmRSS).
    #[arg(long)]
    pub pid: Option<u32>,
    /// Spread connections over this many source addresses 127.0.0.1, .2, ...
    #[arg(long, default_value_t = 1)]
    pub source_ips: u8,
    /// Seconds allowed per connection for TCP connect and handshake.
    #[arg(long, default_value_t = 10.0)]
    pub connect_timeout: f64,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// `bench connections`: open idle connections and hold them, to measure
/// connect time and the server's memory per connection.
#[derive(clap::Args, Clone, Debug)]
pub struct ConnectionsArgs {
    /// Server URL: ws://HOST:PORT/path.
    #[arg(long)]
    pub url: String,
    /// Connections to open.
    #[arg(long, default_value_t = 1000)]
    pub count: usize,
    /// Server process id: report its VmRSS before and after, and per connection.
    #[arg(long)]
    pub pid: Option<u32>,
    /// Seconds to hold the connections open once all are up.
    #[arg(long, default_value_t = 5.0)]
    pub hold: f64,
    /// New connections per second (default: as fast as --concurrency allows).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Most handshakes in progress at once. Above the server's listen
    /// backlog (often 128) connects overflow it and wait 1 s for a SYN retry.
    #[arg(long, default_value_t = 100)]
    pub concurrency: usize,
    /// Spread connections over this many source addresses 127.0.0.1, .2, ...
    /// (IPv4 loopback targets only): each address has ~28k local ports.
    #[arg(long, default_value_t = 1)]
    pub source_ips: u8,
    /// Seconds allowed per connection for TCP connect and handshake.
    #[arg(long, default_value_t = 10.0)]
    pub connect_timeout: f64,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// A non-negative, finite number of seconds as a `Duration`.
pub(crate) fn seconds(flag: &str, value: f64) -> Result<Duration> {
    if !value.is_finite() || value < 0.0 {
        bail!("--{flag} must be a non-negative number of seconds, not {value}");
    }
    Ok(Duration::from_secs_f64(value))
}

/// Fail unless `value` is at least `min`.
pub(crate) fn at_least(flag: &str, value: usize, min: usize) -> Result<()> {
    if value < min {
        bail!("--{flag} must be at least {min}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    enum Cli {
        Echo(EchoArgs),
        Broadcast(BroadcastArgs),
        Connections(ConnectionsArgs),
    }

    #[test]
    fn defaults_and_flags_parse() {
        let Cli::Echo(a) = Cli::parse_from(["t", "echo", "--url", "ws://127.0.0.1:1/", "--text", "--pipeline", "4"]) else {
            panic!()
        };
        assert_eq!((a.connections, a.size, a.pipeline, a.text, a.binary), (64, 64, 4, true, false));
        assert!(Cli::try_parse_from(["t", "echo", "--url", "ws://x/", "--text", "--binary"]).is_err());
        let Cli::Broadcast(b) = Cli::parse_from(["t", "broadcast", "--url", "ws://x/", "--mode", "fanout", "--rate", "2.5"]) else {
            panic!()
        };
        assert_eq!((b.mode, b.rate, b.publishers, b.senders), (BroadcastMode::Fanout, 2.5, 1, None));
        let Cli::Connections(c) =
            Cli::parse_from(["t", "connections", "--url", "ws://x/", "--count", "10", "--pid", "42", "--source-ips", "4"])
        else {
            panic!()
        };
        assert_eq!((c.count, c.pid, c.source_ips, c.rate), (10, Some(42), 4, None));
    }

    #[test]
    fn validation() {
        assert_eq!(seconds("d", 1.5).unwrap(), Duration::from_millis(1500));
        assert!(seconds("d", -1.0).is_err());
        assert!(seconds("d", f64::NAN).is_err());
        assert!(at_least("connections", 0, 1).is_err());
    }
}
