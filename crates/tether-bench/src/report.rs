//! What a run measured, as serializable data, and its human-readable form.

use crate::args::BroadcastMode;
use crate::stats::LatencySummary;
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;

/// The result of one benchmark run.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "bench", rename_all = "lowercase")]
pub enum Report {
    /// From [`run_echo`](crate::run_echo).
    Echo(EchoReport),
    /// From [`run_broadcast`](crate::run_broadcast).
    Broadcast(BroadcastReport),
    /// From [`run_connections`](crate::run_connections).
    Connections(ConnectionsReport),
}

impl Report {
    /// Whether anything went wrong: a connection failed or was closed by the
    /// server, a reply did not match, a message was lost. A CLI should exit
    /// non-zero when this is true.
    pub fn had_errors(&self) -> bool {
        self.errors().total() > 0
    }

    /// The error counts of the run.
    pub fn errors(&self) -> &ErrorCounts {
        match self {
            Report::Echo(r) => &r.errors,
            Report::Broadcast(r) => &r.errors,
            Report::Connections(r) => &r.errors,
        }
    }
}

/// Everything that counts as an error, by kind. Kinds that a workload cannot
/// produce stay 0.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorCounts {
    /// Connections refused, timed out, or whose handshake was rejected.
    pub connect_failures: u64,
    /// Open connections the server closed (close frame or EOF) or that broke.
    pub unexpected_closes: u64,
    /// Connections failed because the server broke the framing rules.
    pub protocol_errors: u64,
    /// Echo replies with the wrong type, length, order or content, or unsolicited.
    pub mismatched_echoes: u64,
    /// Broadcast deliveries expected and not received by the end of the drain.
    pub lost_messages: u64,
    /// Broadcast deliveries received more often than expected.
    pub duplicate_messages: u64,
    /// The first error seen, in words.
    pub first_error: Option<String>,
}

impl ErrorCounts {
    /// Sum of all counts.
    pub fn total(&self) -> u64 {
        self.connect_failures
            + self.unexpected_closes
            + self.protocol_errors
            + self.mismatched_echoes
            + self.lost_messages
            + self.duplicate_messages
    }
}

/// Connection set-up figures, common to all workloads.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ConnectSummary {
    /// Connections asked for.
    pub requested: usize,
    /// Connections that completed the handshake.
    pub connected: u64,
    /// Wall time to open them all, in seconds.
    pub open_secs: f64,
    /// Per connection: from `connect()` to the server's 101 response.
    pub connect_time: LatencySummary,
}

/// CPU and memory of the server process over the measurement (`--pid`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ServerUsage {
    /// The process sampled.
    pub pid: u32,
    /// CPU used during the measurement, percent of one core.
    pub cpu_percent: Option<f64>,
    /// VmRSS before connecting, bytes.
    pub rss_before_bytes: u64,
    /// VmRSS at the end of the measurement, bytes.
    pub rss_after_bytes: u64,
}

/// Result of [`run_echo`](crate::run_echo).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EchoReport {
    /// Server URL.
    pub url: String,
    /// Connection set-up.
    pub connect: ConnectSummary,
    /// Payload bytes per message.
    pub size: usize,
    /// Messages in flight per connection.
    pub pipeline: usize,
    /// Whether messages were text (else binary).
    pub text: bool,
    /// Warmup before measuring, seconds.
    pub warmup_secs: f64,
    /// Length of the measurement, seconds.
    pub duration_secs: f64,
    /// Round trips completed during the measurement.
    pub messages: u64,
    /// Round trips per second.
    pub messages_per_sec: f64,
    /// Payload MB/s (10^6 bytes) counted one way: echoed bytes received.
    /// The server moved twice as much (in and out).
    pub mb_per_sec_one_way: f64,
    /// Round-trip time, from queueing a message to parsing its echo.
    pub latency: LatencySummary,
    /// CPU used by this generator during the measurement, percent of one core.
    pub client_cpu_percent: Option<f64>,
    /// The server's CPU and memory, with `--pid`.
    pub server: Option<ServerUsage>,
    /// Errors by kind.
    pub errors: ErrorCounts,
}

/// Result of [`run_broadcast`](crate::run_broadcast).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BroadcastReport {
    /// Server URL.
    pub url: String,
    /// Who sent.
    pub mode: BroadcastMode,
    /// Connection set-up (receivers and publishers together).
    pub connect: ConnectSummary,
    /// Receiving clients asked for.
    pub clients: usize,
    /// Sending connections.
    pub senders: usize,
    /// Receivers each message is expected to reach.
    pub receivers_per_message: u64,
    /// Messages per second per sender, as asked.
    pub rate_per_sender: f64,
    /// Bytes per message sent.
    pub size: usize,
    /// Warmup before measuring, seconds.
    pub warmup_secs: f64,
    /// Length of the measurement, seconds.
    pub duration_secs: f64,
    /// Messages published during the measurement.
    pub published: u64,
    /// Deliveries those messages should make (published x receivers).
    pub expected_deliveries: u64,
    /// Deliveries of those messages received by the end of the drain.
    pub deliveries: u64,
    /// `deliveries` per second of measurement.
    pub deliveries_per_sec: f64,
    /// Publish-to-delivery time, per delivery.
    pub delivery_latency: LatencySummary,
    /// Publish-to-last-delivery time, per message (the slowest receiver),
    /// over messages every receiver got.
    pub last_delivery_latency: LatencySummary,
    /// Messages without a marker of this run (server greetings and the like).
    pub foreign_messages: u64,
    /// Deliveries that came after their message was written off as lost
    /// (later than the drain allows), or were never sent by this run.
    pub late_deliveries: u64,
    /// How far behind its schedule the generator sent, at worst, in µs.
    pub max_send_lag_us: f64,
    /// CPU used by this generator during the measurement, percent of one core.
    pub client_cpu_percent: Option<f64>,
    /// The server's CPU and memory, with `--pid`.
    pub server: Option<ServerUsage>,
    /// Errors by kind (lost and duplicate deliveries included).
    pub errors: ErrorCounts,
}

/// The server's memory before and after the connections were opened.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ServerMemory {
    /// The process sampled.
    pub pid: u32,
    /// VmRSS before connecting, bytes.
    pub rss_before_bytes: u64,
    /// VmRSS with all connections held, bytes.
    pub rss_after_bytes: u64,
    /// After minus before (negative if the server released memory).
    pub rss_delta_bytes: i64,
    /// `rss_delta_bytes` divided by the connections held.
    pub bytes_per_connection: f64,
}

/// Result of [`run_connections`](crate::run_connections).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ConnectionsReport {
    /// Server URL.
    pub url: String,
    /// Connection set-up.
    pub connect: ConnectSummary,
    /// Connections opened per second (completed handshakes / open time).
    pub connections_per_sec: f64,
    /// Source addresses used.
    pub source_ips: u8,
    /// How long the connections were held, seconds.
    pub hold_secs: f64,
    /// Connections still open at the end of the hold.
    pub held_at_end: u64,
    /// The server's memory, with `--pid`.
    pub server_memory: Option<ServerMemory>,
    /// Errors by kind.
    pub errors: ErrorCounts,
}

/// Print `report` to stdout: one JSON object if `json`, else a short table.
pub fn print_report(report: &Report, json: bool) {
    if json {
        println!("{}", serde_json::to_string(report).expect("reports serialize"));
    } else {
        print!("{}", render(report));
    }
}

fn latency_line(out: &mut String, label: &str, l: &LatencySummary) {
    let _ = writeln!(
        out,
        "  {label:<14} p50 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}  (mean {:.1}, n={})",
        l.p50_us, l.p99_us, l.p999_us, l.max_us, l.mean_us, l.count
    );
}

fn common_tail(out: &mut String, connect: &ConnectSummary, client_cpu: Option<f64>, server: &Option<ServerUsage>, errors: &ErrorCounts) {
    latency_line(out, "connect µs", &connect.connect_time);
    let mut cpu = String::new();
    if let Some(c) = client_cpu {
        let _ = write!(cpu, "client {c:.0}%");
    }
    if let Some(s) = server {
        if let Some(c) = s.cpu_percent {
            let _ = write!(cpu, "  server {c:.0}% (pid {})", s.pid);
        }
        let _ = write!(cpu, "  server rss {:.1} -> {:.1} MiB", mib(s.rss_before_bytes), mib(s.rss_after_bytes));
    }
    if !cpu.is_empty() {
        let _ = writeln!(out, "  {:<14} {cpu}", "cpu");
    }
    errors_line(out, errors);
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn errors_line(out: &mut String, e: &ErrorCounts) {
    if e.total() == 0 {
        let _ = writeln!(out, "  {:<14} none", "errors");
        return;
    }
    let kinds = [
        ("connect failures", e.connect_failures),
        ("unexpected closes", e.unexpected_closes),
        ("protocol errors", e.protocol_errors),
        ("mismatched echoes", e.mismatched_echoes),
        ("lost messages", e.lost_messages),
        ("duplicates", e.duplicate_messages),
    ];
    let list: Vec<String> = kinds.iter().filter(|(_, n)| *n > 0).map(|(k, n)| format!("{k} {n}")).collect();
    let _ = writeln!(out, "  {:<14} {}", "errors", list.join(", "));
    if let Some(first) = &e.first_error {
        let _ = writeln!(out, "  {:<14} {first}", "first error");
    }
}

/// The human-readable form of a report.
pub(crate) fn render(report: &Report) -> String {
    let mut out = String::new();
    match report {
        Report::Echo(r) => {
            let kind = if r.text { "text" } else { "binary" };
            let _ = writeln!(
                out,
                "echo {}: {}/{} connections, {} B {kind}, pipeline {}, {:.1} s (+{:.1} s warmup)",
                r.url, r.connect.connected, r.connect.requested, r.size, r.pipeline, r.duration_secs, r.warmup_secs
            );
            let _ = writeln!(out, "  {:<14} {} ({:.0} msg/s)", "round trips", r.messages, r.messages_per_sec);
            let _ = writeln!(out, "  {:<14} {:.2} MB/s payload one way ({:.2} MB/s both ways)", "throughput", r.mb_per_sec_one_way, r.mb_per_sec_one_way * 2.0);
            latency_line(&mut out, "latency µs", &r.latency);
            common_tail(&mut out, &r.connect, r.client_cpu_percent, &r.server, &r.errors);
        }
        Report::Broadcast(r) => {
            let mode = match r.mode {
                BroadcastMode::All => "all",
                BroadcastMode::Fanout => "fanout",
            };
            let _ = writeln!(
                out,
                "broadcast {} ({mode}): {} senders x {}/s to {} receivers, {} B, {:.1} s (+{:.1} s warmup)",
                r.url, r.senders, r.rate_per_sender, r.receivers_per_message, r.size, r.duration_secs, r.warmup_secs
            );
            let _ = writeln!(out, "  {:<14} {} published, {} of {} delivered ({:.0} deliveries/s)", "messages", r.published, r.deliveries, r.expected_deliveries, r.deliveries_per_sec);
            latency_line(&mut out, "delivery µs", &r.delivery_latency);
            latency_line(&mut out, "last recv µs", &r.last_delivery_latency);
            if r.late_deliveries > 0 {
                let _ = writeln!(out, "  {:<14} {} deliveries after their message was written off", "late", r.late_deliveries);
            }
            if r.foreign_messages > 0 {
                let _ = writeln!(out, "  {:<14} {} messages without a marker (ignored)", "foreign", r.foreign_messages);
            }
            let _ = writeln!(out, "  {:<14} {:.1} µs max behind schedule", "send lag", r.max_send_lag_us);
            common_tail(&mut out, &r.connect, r.client_cpu_percent, &r.server, &r.errors);
        }
        Report::Connections(r) => {
            let _ = writeln!(
                out,
                "connections {}: {}/{} open in {:.2} s ({:.0}/s), held {:.1} s, {} still open",
                r.url, r.connect.connected, r.connect.requested, r.connect.open_secs, r.connections_per_sec, r.hold_secs, r.held_at_end
            );
            if let Some(m) = &r.server_memory {
                let _ = writeln!(
                    out,
                    "  {:<14} {:.1} -> {:.1} MiB ({:+} bytes, {:.0} bytes per connection, pid {})",
                    "server rss", mib(m.rss_before_bytes), mib(m.rss_after_bytes), m.rss_delta_bytes, m.bytes_per_connection, m.pid
                );
            }
            common_tail(&mut out, &r.connect, None, &None, &r.errors);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Report {
        Report::Connections(ConnectionsReport {
            url: "ws://127.0.0.1:1/".into(),
            connect: ConnectSummary { requested: 10, connected: 10, open_secs: 0.5, connect_time: LatencySummary::default() },
            connections_per_sec: 20.0,
            source_ips: 1,
            hold_secs: 1.0,
            held_at_end: 10,
            server_memory: Some(ServerMemory { pid: 7, rss_before_bytes: 1 << 20, rss_after_bytes: 2 << 20, rss_delta_bytes: 1 << 20, bytes_per_connection: 104857.6 }),
            errors: ErrorCounts::default(),
        })
    }

    #[test]
    fn errors_decide_had_errors() {
        let mut r = sample();
        assert!(!r.had_errors());
        if let Report::Connections(c) = &mut r {
            c.errors.lost_messages = 1;
        }
        assert!(r.had_errors());
        assert!(render(&r).contains("lost messages 1"));
    }

    #[test]
    fn json_round_trip_is_tagged() {
        let r = sample();
        let json = serde_json::to_string(&r).unwrap();
        assert!(json.starts_with(r#"{"bench":"connections""#), "{json}");
        let back: Report = serde_json::from_str(&json).unwrap();
        assert_eq!(serde_json::to_string(&back).unwrap(), json);
        assert!(render(&r).contains("104858 bytes per connection"));
    }
}
