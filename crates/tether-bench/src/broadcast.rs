//! The broadcast workload: open-loop publishing through a relay server.
//! Senders publish at a fixed rate; every text message carries the marker
//! `#b:<sender>:<seq>:<nanos>#` (send time in ns since the run began), found
//! anywhere in what a receiver gets, so a server may wrap or prefix it.
//! Receivers measure publish-to-delivery latency themselves; a per-sender
//! ring of message slots counts receivers per message, which gives
//! publish-to-last-delivery latency, losses and duplicates without any
//! allocation per message.

use crate::args::{at_least, seconds, BroadcastArgs, BroadcastMode};
use crate::engine::{Engine, EngineOptions, Pace, Workload, DEFAULT_CONCURRENCY};
use crate::net::{self, UsageWatch};
use crate::progress::{phase_label, Progress};
use crate::report::{BroadcastReport, ConnectSummary, ErrorCounts, Report};
use crate::stats::{per_sec, round1, LatencyRecorder};
use crate::wire::FrameWriter;
use anyhow::{bail, Result};
use std::io::Write as _;
use std::time::{Duration, Instant};
use tether_proto::frame::OpCode;

/// Most message slots kept (all senders together); bounds memory at ~64 MiB.
const MAX_SLOTS: usize = 2 << 20;

/// What a marker says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Marker {
    sender: u64,
    seq: u64,
    sent_ns: u64,
}

/// Write the marker for `m` into `buf`, returning its length.
fn write_marker(buf: &mut [u8; 72], m: Marker) -> usize {
    let mut cursor = &mut buf[..];
    write!(cursor, "#b:{}:{}:{}#", m.sender, m.seq, m.sent_ns).expect("72 bytes hold three u64s");
    72 - cursor.len()
}

/// A decimal number of 1 to 20 digits followed by `end`.
fn number(p: &[u8], end: u8) -> Option<(u64, &[u8])> {
    let digits = p.iter().take(21).take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || p.get(digits) != Some(&end) {
        return None;
    }
    let mut n: u64 = 0;
    for &d in &p[..digits] {
        n = n.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
    }
    Some((n, &p[digits + 1..]))
}

/// The first well-formed marker anywhere in `payload`.
fn find_marker(payload: &[u8]) -> Option<Marker> {
    let mut from = 0;
    while let Some(pos) = payload[from..].iter().position(|&b| b == b'#') {
        let at = from + pos;
        if let Some(rest) = payload[at..].strip_prefix(b"#b:") {
            let parsed = number(rest, b':').and_then(|(sender, rest)| {
                let (seq, rest) = number(rest, b':')?;
                let (sent_ns, _) = number(rest, b'#')?;
                Some(Marker { sender, seq, sent_ns })
            });
            if parsed.is_some() {
                return parsed;
            }
        }
        from = at + 1;
    }
    None
}

#[derive(Clone, Copy, Debug, Default)]
struct Slot {
    /// seq + 1 of the message in this slot; 0 for empty.
    tag: u64,
    sent_ns: u64,
    received: u32,
    slowest_ns: u64,
    measured: bool,
}

/// Per-message delivery accounting over a ring of `window` slots per sender.
#[derive(Debug)]
struct Tracker {
    receivers: u32,
    window: usize,
    slots: Vec<Slot>,
    published: u64,
    expected: u64,
    deliveries: u64,
    incomplete: u64,
    lost: u64,
    duplicates: u64,
    late: u64,
    delivery: LatencyRecorder,
    last_delivery: LatencyRecorder,
}

impl Tracker {
    fn new(senders: usize, window: usize, receivers: u32) -> Self {
        Tracker {
            receivers,
            window,
            slots: vec![Slot::default(); senders * window],
            published: 0,
            expected: 0,
            deliveries: 0,
            incomplete: 0,
            lost: 0,
            duplicates: 0,
            late: 0,
            delivery: LatencyRecorder::new(),
            last_delivery: LatencyRecorder::new(),
        }
    }

    fn index(&self, sender: usize, seq: u64) -> usize {
        sender * self.window + (seq % self.window as u64) as usize
    }

    /// Count what a slot's message missed, and empty it.
    fn retire(&mut self, i: usize) {
        let slot = &mut self.slots[i];
        if slot.tag != 0 && slot.measured && slot.received < self.receivers {
            self.lost += u64::from(self.receivers - slot.received);
            self.incomplete -= 1;
        }
        *slot = Slot::default();
    }

    fn published(&mut self, sender: usize, seq: u64, now: u64, measured: bool) {
        let i = self.index(sender, seq);
        self.retire(i);
        self.slots[i] = Slot { tag: seq + 1, sent_ns: now, received: 0, slowest_ns: 0, measured };
        if measured {
            self.published += 1;
            self.expected += u64::from(self.receivers);
            if self.receivers > 0 {
                self.incomplete += 1;
            }
        }
    }

    /// Receiver got message `seq` of `sender`, stamped `sent_ns`, at `now`.
    fn delivered(&mut self, sender: usize, seq: u64, sent_ns: u64, now: u64) {
        let i = self.index(sender, seq);
        let receivers = self.receivers;
        let slot = &mut self.slots[i];
        if slot.tag != seq + 1 || slot.sent_ns != sent_ns {
            // Already written off (or never sent by this run).
            self.late += 1;
            return;
        }
        slot.received += 1;
        if slot.received > receivers {
            self.duplicates += 1;
            return;
        }
        let latency = now.saturating_sub(sent_ns);
        slot.slowest_ns = slot.slowest_ns.max(latency);
        if slot.measured {
            self.deliveries += 1;
            self.delivery.record_ns(latency);
            if slot.received == receivers {
                self.last_delivery.record_ns(slot.slowest_ns);
                self.incomplete -= 1;
            }
        }
    }

    /// Write off every message still waiting for receivers.
    fn finish(&mut self) {
        for i in 0..self.slots.len() {
            self.retire(i);
        }
    }
}

struct BroadcastLoad {
    /// Connections that publish, by sender number.
    sender_ids: Vec<usize>,
    /// Connections below this id do not count as receivers (fanout publishers).
    first_receiver: usize,
    next_seq: Vec<u64>,
    size: usize,
    window: (u64, u64),
    tracker: Tracker,
    received: u64,
    foreign: u64,
}

impl BroadcastLoad {
    fn publish(&mut self, sender: usize, tx: &mut FrameWriter, now: u64) {
        let seq = self.next_seq[sender];
        self.next_seq[sender] += 1;
        let mut marker = [0u8; 72];
        let n = write_marker(&mut marker, Marker { sender: sender as u64, seq, sent_ns: now });
        tx.queue_with(OpCode::Text, self.size.max(n), |dst| {
            dst[..n].copy_from_slice(&marker[..n]);
            dst[n..].fill(b'.');
        });
        let measured = now >= self.window.0 && now < self.window.1;
        self.tracker.published(sender, seq, now, measured);
    }
}

impl Workload for BroadcastLoad {
    fn on_message(&mut self, id: usize, _text: bool, payload: &[u8], _tx: &mut FrameWriter, now: u64) {
        if id < self.first_receiver {
            return;
        }
        self.received += 1;
        match find_marker(payload) {
            Some(m) if (m.sender as usize) < self.sender_ids.len() => self.tracker.delivered(m.sender as usize, m.seq, m.sent_ns, now),
            _ => self.foreign += 1,
        }
    }
}

/// Run the broadcast benchmark described by `args` and return its report.
///
/// Connects the clients (and in `fanout` mode the publishers), publishes at
/// `args.rate` per sender for `args.warmup + args.duration` seconds, then
/// waits up to `args.drain` seconds for the deliveries still due. Fails if
/// the arguments are invalid or no connection could be opened.
pub fn run_broadcast(args: &BroadcastArgs) -> Result<Report> {
    at_least("clients", args.clients, 1)?;
    if !(args.rate.is_finite() && args.rate > 0.0) {
        bail!("--rate must be a positive number of messages per second");
    }
    let (publishers, senders) = match args.mode {
        BroadcastMode::All => {
            let senders = args.senders.unwrap_or(args.clients);
            if senders == 0 || senders > args.clients {
                bail!("--senders must be between 1 and --clients ({})", args.clients);
            }
            (0, senders)
        }
        BroadcastMode::Fanout => {
            at_least("publishers", args.publishers, 1)?;
            (args.publishers, args.publishers)
        }
    };
    let warmup = seconds("warmup", args.warmup)?;
    let duration = seconds("duration", args.duration)?;
    let drain = seconds("drain", args.drain)?;
    if duration.is_zero() {
        bail!("--duration must be greater than 0");
    }
    let connect_timeout = seconds("connect-timeout", args.connect_timeout)?;
    let target = net::parse_target(&args.url)?;
    net::check_source_ips(&target, args.source_ips)?;
    let total = publishers + args.clients;
    net::ensure_fd_limit(total)?;
    let mut usage = UsageWatch::new(args.pid)?;

    // A slot is reused after `window / rate` seconds: keep it past the drain.
    let wanted = (args.rate * (args.drain + 2.0)).ceil() as usize + 16;
    let window = wanted.next_power_of_two().min((MAX_SLOTS / senders).max(16));
    let options = EngineOptions { read_buffer: 16 << 10, shrink_idle: false, connect_timeout, source_ips: args.source_ips };
    let clock = Instant::now();
    let mut engine = Engine::new(target, options, clock)?;
    let mut load = BroadcastLoad {
        sender_ids: (0..senders).collect(),
        first_receiver: publishers,
        next_seq: vec![0; senders],
        size: args.size,
        window: (u64::MAX, u64::MAX),
        tracker: Tracker::new(senders, window, 0),
        received: 0,
        foreign: 0,
    };
    let mut progress = Progress::new(false);
    engine.connect(total, Pace { rate: None, concurrency: DEFAULT_CONCURRENCY }, &mut load, &mut progress)?;
    if engine.stats.connected == 0 {
        bail!("no connection to {} succeeded: {}", args.url, engine.stats.first_error.as_deref().unwrap_or("unknown error"));
    }
    let open_receivers = (publishers..total).filter(|&id| engine.is_open(id)).count() as u32;
    let sender_excluded = args.exclude_sender && args.mode == BroadcastMode::All;
    let receivers = open_receivers.saturating_sub(u32::from(sender_excluded));
    load.tracker.receivers = receivers;

    let interval = ((1e9 / args.rate) as u64).max(1);
    let start = engine.now();
    // Stagger senders across one interval so they do not publish in bursts.
    let mut next_send: Vec<u64> = (0..senders as u64).map(|i| start + interval * i / senders as u64).collect();
    let warmup_from = start;
    let measure_from = start + warmup.as_nanos() as u64;
    let measure_until = measure_from + duration.as_nanos() as u64;
    let drain_until = measure_until + drain.as_nanos() as u64;
    load.window = (measure_from, measure_until);
    let mut measuring = false;
    let mut max_lag = 0u64;
    let (mut last_received, mut last_at) = (0u64, Instant::now());
    loop {
        let now = engine.now();
        if !measuring && now >= measure_from {
            measuring = true;
            usage.start();
        }
        if now >= measure_until {
            break;
        }
        for (sender, due) in next_send.iter_mut().enumerate() {
            while *due <= now {
                max_lag = max_lag.max(now - *due);
                let id = load.sender_ids[sender];
                engine.send(id, &mut load, |load, tx| load.publish(sender, tx, now));
                *due += interval;
            }
        }
        engine.poll_once(Duration::from_millis(1), &mut load)?;
        let (received, open, lost) = (load.received, engine.open_count(), engine.stats.unexpected_closes);
        progress.update(|| {
            let rate = per_sec(received - last_received, last_at.elapsed().as_secs_f64());
            (last_received, last_at) = (received, Instant::now());
            format!("{}: {rate:.0} deliveries/s, {open} connections, {lost} dropped", phase_label(now, warmup_from, measure_from, measure_until))
        });
    }
    let measured_secs = (measure_until - measure_from) as f64 / 1e9;
    let (client_cpu_percent, server) = usage.finish();
    while load.tracker.incomplete > 0 && engine.now() < drain_until && engine.open_count() > 0 {
        progress.update(|| "waiting for late deliveries".to_string());
        engine.poll_once(Duration::from_millis(10), &mut load)?;
    }
    load.tracker.finish();
    engine.close_all(Duration::from_secs(2), &mut load)?;
    progress.finish();

    let t = &load.tracker;
    let stats = &engine.stats;
    Ok(Report::Broadcast(BroadcastReport {
        url: args.url.clone(),
        mode: args.mode,
        connect: ConnectSummary { requested: total, connected: stats.connected, open_secs: stats.open_secs, connect_time: stats.connect_time.summary() },
        clients: args.clients,
        senders,
        receivers_per_message: u64::from(receivers),
        rate_per_sender: args.rate,
        size: args.size,
        warmup_secs: args.warmup,
        duration_secs: measured_secs,
        published: t.published,
        expected_deliveries: t.expected,
        deliveries: t.deliveries,
        deliveries_per_sec: per_sec(t.deliveries, measured_secs),
        delivery_latency: t.delivery.summary(),
        last_delivery_latency: t.last_delivery.summary(),
        foreign_messages: load.foreign,
        late_deliveries: t.late,
        max_send_lag_us: round1(max_lag as f64 / 1000.0),
        client_cpu_percent,
        server,
        errors: ErrorCounts {
            connect_failures: stats.connect_failures,
            unexpected_closes: stats.unexpected_closes,
            protocol_errors: stats.protocol_errors,
            lost_messages: t.lost,
            duplicate_messages: t.duplicates,
            first_error: stats.first_error.clone(),
            ..Default::default()
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_round_trip_and_are_found_inside_wrappers() {
        let m = Marker { sender: 12, seq: 3456, sent_ns: u64::MAX };
        let mut buf = [0u8; 72];
        let n = write_marker(&mut buf, m);
        assert_eq!(&buf[..n], format!("#b:12:3456:{}#", u64::MAX).as_bytes());
        assert_eq!(find_marker(&buf[..n]), Some(m));
        let wrapped = format!(r##"{{"from":"#b:x","data":"#b:1:2#b:12:3456:{}#....."}}"##, u64::MAX);
        assert_eq!(find_marker(wrapped.as_bytes()), Some(m));
        assert_eq!(find_marker(b"#b:1:2:3"), None);
        assert_eq!(find_marker(b"#b:1:2:99999999999999999999999#"), None);
        assert_eq!(find_marker(b"hello"), None);
        assert_eq!(find_marker(b"##b:0:0:0#"), Some(Marker { sender: 0, seq: 0, sent_ns: 0 }));
    }

    #[test]
    fn tracker_counts_latency_losses_and_duplicates() {
        let mut t = Tracker::new(2, 4, 3);
        t.published(0, 0, 1_000, true);
        t.published(1, 0, 1_000, true);
        t.published(0, 1, 2_000, false); // warmup: not counted
        for (now, sender) in [(1_500, 0), (3_000, 0), (2_000, 0), (1_200, 1), (1_300, 1)] {
            t.delivered(sender, 0, 1_000, now);
        }
        t.delivered(0, 1, 2_000, 2_500);
        t.delivered(0, 0, 1_000, 9_000); // fourth copy for three receivers
        t.delivered(1, 0, 999, 9_000); // wrong timestamp: not this run's message
        assert_eq!(t.late, 1);
        assert_eq!((t.published, t.expected, t.deliveries, t.duplicates), (2, 6, 5, 1));
        assert_eq!(t.delivery.count(), 5);
        // Only sender 0's message reached all three; its slowest took 2000 ns.
        assert_eq!(t.last_delivery.count(), 1);
        assert_eq!(t.last_delivery.summary().max_us, 2.0);
        assert_eq!(t.incomplete, 1);
        t.finish();
        assert_eq!((t.lost, t.incomplete), (1, 0));
    }

    #[test]
    fn reused_slot_writes_off_the_old_message() {
        let mut t = Tracker::new(1, 2, 2);
        t.published(0, 0, 0, true);
        t.delivered(0, 0, 0, 10);
        t.published(0, 1, 0, true);
        t.published(0, 2, 0, true); // reuses seq 0's slot: one delivery missing
        assert_eq!(t.lost, 1);
        t.delivered(0, 0, 0, 20); // too late
        assert_eq!(t.late, 1);
    }
}
