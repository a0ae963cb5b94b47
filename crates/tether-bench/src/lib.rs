//! # tether-bench
//!
//! A lean load generator for WebSocket servers, behind `tether bench`. One
//! thread drives every connection through a `mio` poll (epoll) with
//! non-blocking sockets; `tether-proto` does the opening handshake and the
//! frame header codec and masking; buffers are reused, so the steady state
//! allocates nothing per message. Pinned to one core, it keeps a server
//! pinned to another core busy.
//!
//! Three workloads, each a clap [`Args`](clap::Args) struct and a `run_*`
//! function returning a serializable [`Report`]:
//!
//! - [`run_echo`] ([`EchoArgs`]): closed-loop round trips, `--pipeline`
//!   messages in flight per connection, every reply checked; messages/s,
//!   MB/s and round-trip latency percentiles.
//! - [`run_broadcast`] ([`BroadcastArgs`]): open-loop publishing through a
//!   relay server; deliveries/s, publish-to-delivery and
//!   publish-to-last-delivery latency, lost and duplicate deliveries.
//! - [`run_connections`] ([`ConnectionsArgs`]): many idle connections held
//!   open; connect time and the server's memory per connection.
//!
//! [`print_report`] prints a report as text or JSON; [`Report::had_errors`]
//! tells a CLI whether to exit non-zero. Latencies come from HdrHistogram
//! (3 significant digits) and are reported in microseconds. While a run
//! goes, a status line is drawn on stderr if stdout and stderr are terminals.
//!
//! Only `ws://` is supported: TLS would measure the TLS stack, not the
//! server. Each client frame gets a fresh masking key (RFC 6455 §5.3) from a
//! fast non-cryptographic generator, which is enough for a benchmark.
//!
//! ```no_run
//! use tether_bench::{run_echo, print_report, EchoArgs};
//! let args = EchoArgs {
//!     url: "ws://127.0.0.1:9001/".into(), connections: 64, size: 64, duration: 5.0,
//!     pipeline: 1, binary: true, text: false, warmup: 1.0, verify_every: 16, pid: None,
//!     source_ips: 1, connect_timeout: 10.0, json: false,
//! };
//! let report = run_echo(&args)?;
//! print_report(&report, args.json);
//! std::process::exit(if report.had_errors() { 1 } else { 0 });
//! # Ok::<(), anyhow::Error>(())
//! ```

mod args;
mod broadcast;
mod connections;
mod echo;
mod engine;
mod net;
mod progress;
mod report;
mod stats;
mod units;
mod wire;

pub use args::{BroadcastArgs, BroadcastMode, ConnectionsArgs, EchoArgs};
pub use broadcast::run_broadcast;
pub use connections::run_connections;
pub use echo::run_echo;
pub use report::{
    print_report, BroadcastReport, ConnectSummary, ConnectionsReport, EchoReport, ErrorCounts, Report, ServerMemory, ServerUsage,
};
pub use stats::{LatencyRecorder, LatencySummary};
pub use units::{format_size, parse_size};
