//! The connections workload: open many idle WebSocket connections, hold
//! them, and weigh what they cost the server. Connection buffers on our side
//! are freed whenever empty, so the generator itself stays small too.

use crate::args::{at_least, seconds, ConnectionsArgs};
use crate::engine::{Engine, EngineOptions, Pace, Workload};
use crate::net;
use crate::progress::Progress;
use crate::report::{ConnectSummary, ConnectionsReport, ErrorCounts, Report, ServerMemory};
use crate::stats::per_sec;
use anyhow::{bail, Result};
use std::time::{Duration, Instant};

/// Idle connections: whatever the server sends is counted and dropped.
struct Idle {
    messages: u64,
}

impl Workload for Idle {
    fn on_message(&mut self, _id: usize, _text: bool, _payload: &[u8], _tx: &mut crate::wire::FrameWriter, _now: u64) {
        self.messages += 1;
    }
}

/// `rss_after - rss_before`, and that spread over `connections`.
pub(crate) fn memory_per_connection(pid: u32, before: u64, after: u64, connections: u64) -> ServerMemory {
    let delta = after as i64 - before as i64;
    let per = if connections > 0 { (delta as f64 / connections as f64).round() } else { 0.0 };
    ServerMemory { pid, rss_before_bytes: before, rss_after_bytes: after, rss_delta_bytes: delta, bytes_per_connection: per }
}

/// Run the connections benchmark described by `args` and return its report.
///
/// Opens `args.count` connections (at `args.rate` per second if given, with
/// at most `args.concurrency` handshakes in flight), holds them for
/// `args.hold` seconds answering pings, and with `args.pid` reports the
/// server's VmRSS before and at the end of the hold. Fails if the arguments
/// are invalid, the open-file limit is too low, or no connection opened.
pub fn run_connections(args: &ConnectionsArgs) -> Result<Report> {
    at_least("count", args.count, 1)?;
    at_least("concurrency", args.concurrency, 1)?;
    if let Some(rate) = args.rate {
        if !(rate.is_finite() && rate > 0.0) {
            bail!("--rate must be a positive number of connections per second");
        }
    }
    let hold = seconds("hold", args.hold)?;
    let connect_timeout = seconds("connect-timeout", args.connect_timeout)?;
    let target = net::parse_target(&args.url)?;
    net::check_source_ips(&target, args.source_ips)?;
    net::ensure_fd_limit(args.count)?;
    let rss_before = args.pid.map(net::vm_rss_bytes).transpose()?;

    let options = EngineOptions { read_buffer: 4096, shrink_idle: true, connect_timeout, source_ips: args.source_ips };
    let clock = Instant::now();
    let mut engine = Engine::new(target, options, clock)?;
    let mut idle = Idle { messages: 0 };
    let mut progress = Progress::new(false);
    engine.connect(args.count, Pace { rate: args.rate, concurrency: args.concurrency }, &mut idle, &mut progress)?;
    if engine.stats.connected == 0 {
        bail!("no connection to {} succeeded: {}", args.url, engine.stats.first_error.as_deref().unwrap_or("unknown error"));
    }

    let held_from = Instant::now();
    while held_from.elapsed() < hold && engine.open_count() > 0 {
        let left = hold.saturating_sub(held_from.elapsed());
        engine.poll_once(left.min(Duration::from_millis(100)), &mut idle)?;
        let open = engine.open_count();
        progress.update(|| format!("holding {open} connections, {:.1}s left", hold.saturating_sub(held_from.elapsed()).as_secs_f64()));
    }
    let hold_secs = held_from.elapsed().as_secs_f64();
    let held_at_end = engine.open_count() as u64;
    let server_memory = match (args.pid, rss_before) {
        (Some(pid), Some(before)) => Some(memory_per_connection(pid, before, net::vm_rss_bytes(pid)?, held_at_end)),
        _ => None,
    };
    engine.close_all(Duration::from_secs(5), &mut idle)?;
    progress.finish();

    let stats = &engine.stats;
    Ok(Report::Connections(ConnectionsReport {
        url: args.url.clone(),
        connect: ConnectSummary {
            requested: args.count,
            connected: stats.connected,
            open_secs: stats.open_secs,
            connect_time: stats.connect_time.summary(),
        },
        connections_per_sec: per_sec(stats.connected, stats.open_secs),
        source_ips: args.source_ips,
        hold_secs,
        held_at_end,
        server_memory,
        errors: ErrorCounts {
            connect_failures: stats.connect_failures,
            unexpected_closes: stats.unexpected_closes,
            protocol_errors: stats.protocol_errors,
            first_error: stats.first_error.clone(),
            ..Default::default()
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_arithmetic() {
        let m = memory_per_connection(1, 10_000_000, 30_000_000, 1000);
        assert_eq!((m.rss_delta_bytes, m.bytes_per_connection), (20_000_000, 20_000.0));
        let m = memory_per_connection(1, 30_000_000, 29_000_000, 0);
        assert_eq!((m.rss_delta_bytes, m.bytes_per_connection), (-1_000_000, 0.0));
    }
}
