//! The echo workload: a closed loop of round trips. Each connection keeps
//! `pipeline` messages in flight; each reply is checked and releases the
//! next send. Replies arrive in order on a connection (TCP keeps order, and
//! an echo server answers in turn), so send times wait in a small ring per
//! connection and no timestamp has to travel in the payload.
//!
//! Every message carries its sequence number in its first 16 bytes (as hex,
//! so text stays valid UTF-8) when it is at least that long, which catches
//! lost, duplicated and reordered echoes on every reply; the rest of the
//! payload is compared on one reply in `--verify-every`.

use crate::args::{at_least, seconds, EchoArgs};
use crate::engine::{Engine, EngineOptions, Pace, Workload, DEFAULT_CONCURRENCY};
use crate::net::{self, UsageWatch};
use crate::progress::{phase_label, Progress};
use crate::report::{ConnectSummary, EchoReport, ErrorCounts, Report};
use crate::stats::{mb_per_sec, per_sec, LatencyRecorder};
use crate::wire::FrameWriter;
use anyhow::{bail, Result};
use std::collections::VecDeque;
use std::time::{Duration, Instant};
use tether_proto::frame::OpCode;

/// Bytes at the start of a payload that hold the sequence number.
const SEQ_LEN: usize = 16;

/// Largest payload accepted (each connection buffers `pipeline` of them).
const MAX_SIZE: usize = 64 << 20;

#[derive(Debug, Default)]
struct EchoConn {
    /// Send times (ns) of the messages in flight, oldest first.
    sent_at: VecDeque<u64>,
    next_send: u64,
    next_reply: u64,
}

struct EchoLoad {
    payload: Vec<u8>,
    text: bool,
    pipeline: usize,
    verify_every: u64,
    conns: Vec<EchoConn>,
    sending: bool,
    /// Replies arriving in `[from, until)` (ns) are measured.
    window: (u64, u64),
    latency: LatencyRecorder,
    messages: u64,
    bytes: u64,
    replies: u64,
    mismatched: u64,
    first_mismatch: Option<String>,
}

/// `seq` as 16 lowercase hex digits.
fn seq_stamp(seq: u64) -> [u8; SEQ_LEN] {
    let mut out = [0u8; SEQ_LEN];
    for (i, b) in out.iter_mut().enumerate() {
        *b = b"0123456789abcdef"[(seq >> (60 - 4 * i) & 0xf) as usize];
    }
    out
}

/// The payload template: printable ASCII for text, a byte pattern that is
/// not periodic in 4 (so masking bugs show) for binary.
fn template(size: usize, text: bool) -> Vec<u8> {
    (0..size)
        .map(|i| if text { b'a' + (i % 26) as u8 } else { (i as u32).wrapping_mul(2_654_435_761).rotate_right(13) as u8 })
        .collect()
}

impl EchoLoad {
    fn queue_one(&mut self, id: usize, tx: &mut FrameWriter, now: u64) {
        let conn = &mut self.conns[id];
        let seq = conn.next_send;
        conn.next_send += 1;
        conn.sent_at.push_back(now);
        let payload = &self.payload;
        let opcode = if self.text { OpCode::Text } else { OpCode::Binary };
        tx.queue_with(opcode, payload.len(), |dst| {
            dst.copy_from_slice(payload);
            if dst.len() >= SEQ_LEN {
                dst[..SEQ_LEN].copy_from_slice(&seq_stamp(seq));
            }
        });
    }

    /// Check one reply against what was sent as message `seq`.
    fn check(&mut self, text: bool, reply: &[u8], seq: u64) -> Result<(), String> {
        let kind = |t: bool| if t { "text" } else { "binary" };
        if text != self.text {
            return Err(format!("sent a {} message, the echo was {}", kind(self.text), kind(text)));
        }
        if reply.len() != self.payload.len() {
            return Err(format!("sent {} bytes, the echo had {}", self.payload.len(), reply.len()));
        }
        let seq_len = if reply.len() >= SEQ_LEN {
            if reply[..SEQ_LEN] != seq_stamp(seq) {
                return Err(format!(
                    "echo out of order or corrupted: expected message {seq}, got {:?}",
                    String::from_utf8_lossy(&reply[..SEQ_LEN])
                ));
            }
            SEQ_LEN
        } else {
            0
        };
        if seq_len == 0 || seq.is_multiple_of(self.verify_every) {
            if let Some(at) = reply[seq_len..].iter().zip(&self.payload[seq_len..]).position(|(a, b)| a != b) {
                return Err(format!("echo differs from message {seq} at byte {}", at + seq_len));
            }
        }
        Ok(())
    }
}

impl Workload for EchoLoad {
    fn on_message(&mut self, id: usize, text: bool, payload: &[u8], tx: &mut FrameWriter, now: u64) {
        let conn = &mut self.conns[id];
        let Some(sent) = conn.sent_at.pop_front() else {
            self.mismatched += 1;
            self.first_mismatch.get_or_insert_with(|| format!("connection {id}: a message arrived with nothing in flight"));
            return;
        };
        let seq = conn.next_reply;
        conn.next_reply += 1;
        if let Err(why) = self.check(text, payload, seq) {
            self.mismatched += 1;
            self.first_mismatch.get_or_insert_with(|| format!("connection {id}: {why}"));
        }
        self.replies += 1;
        if now >= self.window.0 && now < self.window.1 {
            self.latency.record_ns(now - sent);
            self.messages += 1;
            self.bytes += payload.len() as u64;
        }
        if self.sending {
            self.queue_one(id, tx, now);
        }
    }
}

/// Run the echo benchmark described by `args` and return its report.
///
/// Opens `args.connections` connections, keeps `args.pipeline` messages of
/// `args.size` bytes in flight on each for `args.warmup + args.duration`
/// seconds, and measures the last `args.duration`. Fails if the arguments
/// are invalid or no connection could be opened; everything else that goes
/// wrong is counted in the report's errors.
pub fn run_echo(args: &EchoArgs) -> Result<Report> {
    at_least("connections", args.connections, 1)?;
    at_least("pipeline", args.pipeline, 1)?;
    if args.size > MAX_SIZE {
        bail!("--size must be at most {MAX_SIZE} bytes");
    }
    if args.verify_every == 0 {
        bail!("--verify-every must be at least 1");
    }
    let warmup = seconds("warmup", args.warmup)?;
    let duration = seconds("duration", args.duration)?;
    if duration.is_zero() {
        bail!("--duration must be greater than 0");
    }
    let connect_timeout = seconds("connect-timeout", args.connect_timeout)?;
    let target = net::parse_target(&args.url)?;
    net::check_source_ips(&target, args.source_ips)?;
    net::ensure_fd_limit(args.connections)?;
    let mut usage = UsageWatch::new(args.pid)?;

    let frame_len = args.size + 14;
    let options = EngineOptions {
        read_buffer: (frame_len * args.pipeline).clamp(16 << 10, 256 << 10).max(frame_len),
        shrink_idle: false,
        connect_timeout,
        source_ips: args.source_ips,
    };
    let clock = Instant::now();
    let mut engine = Engine::new(target, options, clock)?;
    let mut load = EchoLoad {
        payload: template(args.size, args.text),
        text: args.text,
        pipeline: args.pipeline,
        verify_every: args.verify_every,
        conns: (0..args.connections).map(|_| EchoConn { sent_at: VecDeque::with_capacity(args.pipeline), ..Default::default() }).collect(),
        sending: false,
        window: (u64::MAX, u64::MAX),
        latency: LatencyRecorder::new(),
        messages: 0,
        bytes: 0,
        replies: 0,
        mismatched: 0,
        first_mismatch: None,
    };
    let mut progress = Progress::new(false);
    engine.connect(args.connections, Pace { rate: None, concurrency: DEFAULT_CONCURRENCY }, &mut load, &mut progress)?;
    if engine.stats.connected == 0 {
        bail!("no connection to {} succeeded: {}", args.url, engine.stats.first_error.as_deref().unwrap_or("unknown error"));
    }

    // Start the loop: `pipeline` messages on every open connection.
    load.sending = true;
    let now = engine.now();
    for id in 0..args.connections {
        engine.send(id, &mut load, |load, tx| {
            for _ in 0..load.pipeline {
                load.queue_one(id, tx, now);
            }
        });
    }
    let warmup_from = engine.now();
    let measure_from = warmup_from + warmup.as_nanos() as u64;
    let measure_until = measure_from + duration.as_nanos() as u64;
    load.window = (measure_from, measure_until);
    let mut measuring = false;
    let (mut last_replies, mut last_at) = (0u64, Instant::now());
    loop {
        let now = engine.now();
        if !measuring && now >= measure_from {
            measuring = true;
            usage.start();
        }
        if now >= measure_until || engine.open_count() == 0 {
            break;
        }
        let next_edge = if measuring { measure_until } else { measure_from };
        let wait = Duration::from_nanos(next_edge - now).min(Duration::from_millis(100));
        engine.poll_once(wait, &mut load)?;
        let (replies, open, errors) = (load.replies, engine.open_count(), load.mismatched + engine.stats.unexpected_closes);
        let now = engine.now();
        progress.update(|| {
            let rate = per_sec(replies - last_replies, last_at.elapsed().as_secs_f64());
            (last_replies, last_at) = (replies, Instant::now());
            format!("{}: {rate:.0} msg/s, {open} connections, {errors} errors", phase_label(now, warmup_from, measure_from, measure_until))
        });
    }
    let measured_secs = if measuring { (engine.now().min(measure_until) - measure_from) as f64 / 1e9 } else { 0.0 };
    let (client_cpu_percent, server) = if measuring { usage.finish() } else { (None, None) };
    load.sending = false;
    engine.close_all(Duration::from_secs(2), &mut load)?;
    progress.finish();

    let stats = &engine.stats;
    Ok(Report::Echo(EchoReport {
        url: args.url.clone(),
        connect: ConnectSummary {
            requested: args.connections,
            connected: stats.connected,
            open_secs: stats.open_secs,
            connect_time: stats.connect_time.summary(),
        },
        size: args.size,
        pipeline: args.pipeline,
        text: args.text,
        warmup_secs: args.warmup,
        duration_secs: measured_secs,
        messages: load.messages,
        messages_per_sec: per_sec(load.messages, measured_secs),
        mb_per_sec_one_way: mb_per_sec(load.bytes, measured_secs),
        latency: load.latency.summary(),
        client_cpu_percent,
        server,
        errors: ErrorCounts {
            connect_failures: stats.connect_failures,
            unexpected_closes: stats.unexpected_closes,
            protocol_errors: stats.protocol_errors,
            mismatched_echoes: load.mismatched,
            first_error: stats.first_error.clone().or(load.first_mismatch),
            ..Default::default()
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(size: usize, text: bool, verify_every: u64) -> EchoLoad {
        EchoLoad {
            payload: template(size, text),
            text,
            pipeline: 1,
            verify_every,
            conns: vec![EchoConn::default()],
            sending: true,
            window: (0, u64::MAX),
            latency: LatencyRecorder::new(),
            messages: 0,
            bytes: 0,
            replies: 0,
            mismatched: 0,
            first_mismatch: None,
        }
    }

    fn sent_payload(l: &EchoLoad, seq: u64) -> Vec<u8> {
        let mut p = l.payload.clone();
        if p.len() >= SEQ_LEN {
            p[..SEQ_LEN].copy_from_slice(&seq_stamp(seq));
        }
        p
    }

    #[test]
    fn stamps_are_fixed_width_hex() {
        assert_eq!(&seq_stamp(0), b"0000000000000000");
        assert_eq!(&seq_stamp(0xdead_beef), b"00000000deadbeef");
        assert!(std::str::from_utf8(&template(100, true)).is_ok());
    }

    #[test]
    fn checks_catch_what_they_should() {
        let mut l = load(64, true, 1);
        assert_eq!(l.check(true, &sent_payload(&l, 3), 3), Ok(()));
        assert!(l.check(false, &sent_payload(&l, 3), 3).unwrap_err().contains("echo was binary"));
        assert!(l.check(true, &sent_payload(&l, 4), 3).unwrap_err().contains("out of order"));
        assert!(l.check(true, &sent_payload(&l, 3)[..63], 3).unwrap_err().contains("had 63"));
        let mut corrupt = sent_payload(&l, 3);
        corrupt[40] ^= 1;
        assert!(l.check(true, &corrupt, 3).unwrap_err().contains("at byte 40"));
        // With sampling, content is compared only on every Nth message.
        let mut sampled = load(64, false, 4);
        let mut corrupt = sent_payload(&sampled, 3);
        corrupt[63] ^= 1;
        assert_eq!(sampled.check(false, &corrupt, 3), Ok(()));
        let mut corrupt = sent_payload(&sampled, 4);
        corrupt[63] ^= 1;
        assert!(sampled.check(false, &corrupt, 4).is_err());
        // Short payloads carry no sequence number and are always compared.
        let mut short = load(5, false, 1000);
        let mut corrupt = short.payload.clone();
        corrupt[0] ^= 1;
        assert!(short.check(false, &corrupt, 7).is_err());
    }

    #[test]
    fn replies_measure_round_trips_inside_the_window() {
        let mut l = load(32, false, 1);
        l.window = (1_000, 10_000);
        let mut tx = FrameWriter::new(1);
        l.queue_one(0, &mut tx, 500);
        l.queue_one(0, &mut tx, 2_000);
        let (p0, p1) = (sent_payload(&l, 0), sent_payload(&l, 1));
        l.on_message(0, false, &p0, &mut tx, 900); // before the window
        l.on_message(0, false, &p1, &mut tx, 5_000);
        assert_eq!((l.replies, l.messages, l.bytes, l.mismatched), (2, 1, 32, 0));
        assert_eq!(l.latency.count(), 1);
        // Each reply released one more send.
        assert_eq!(l.conns[0].sent_at.len(), 2);
        // A message with nothing in flight is a mismatch.
        l.conns[0].sent_at.clear();
        l.on_message(0, false, &p1, &mut tx, 6_000);
        assert_eq!(l.mismatched, 1);
    }
}
