//! The event loop every workload runs on: one thread, one `mio` poll
//! (epoll, edge-triggered), non-blocking sockets. It opens connections at a
//! bounded pace, performs the opening handshake with `tether-proto`, moves
//! frames in and out through reused buffers, answers pings, expires slow
//! handshakes and performs the closing handshake. What to send and what a
//! received message means is the [`Workload`]'s business.

use crate::net::{self, Target};
use crate::progress::Progress;
use crate::stats::LatencyRecorder;
use crate::wire::{FrameReader, FrameWriter, Incoming, ReadStatus, WireError};
use anyhow::{Context, Result};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use std::io;
use std::time::{Duration, Instant};
use tether_proto::frame::OpCode;
use tether_proto::handshake::{ClientHandshake, ClientRequest};
use tether_proto::CloseCode;

/// What a load pattern does with open connections.
pub(crate) trait Workload {
    /// A data message arrived on connection `id` at `now` (ns since the run
    /// began). Replies go into `tx`; the engine writes them out.
    fn on_message(&mut self, id: usize, text: bool, payload: &[u8], tx: &mut FrameWriter, now: u64);

    /// Connection `id` ended without our asking (it is already counted in
    /// [`EngineStats`]).
    fn on_lost(&mut self, _id: usize) {}
}

/// Tunables of the engine that differ between workloads.
#[derive(Clone, Debug)]
pub(crate) struct EngineOptions {
    /// Initial read buffer per connection (grown to fit the largest frame).
    pub read_buffer: usize,
    /// Free a connection's buffers whenever they are empty (idle connections).
    pub shrink_idle: bool,
    /// Longest time from `connect()` to the server's 101 response.
    pub connect_timeout: Duration,
    /// Spread source addresses over this many loopback addresses.
    pub source_ips: u8,
}

/// How fast to open connections.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Pace {
    /// New connections per second; `None` for as fast as `concurrency` allows.
    pub rate: Option<f64>,
    /// Most connections in the connecting or handshaking state at once
    /// (keeps the server's listen backlog from overflowing into SYN retries).
    pub concurrency: usize,
}

/// Default for [`Pace::concurrency`]: below 128, the listen backlog that
/// std, mio and many servers use, whose overflow costs a connection a 1 s
/// SYN retransmission and would show as a fake connect-time tail.
pub(crate) const DEFAULT_CONCURRENCY: usize = 100;

/// What the engine counted about connections.
#[derive(Debug, Default)]
pub(crate) struct EngineStats {
    /// Connections that completed the handshake.
    pub connected: u64,
    /// Connections that failed before completing it (refused, timed out, rejected).
    pub connect_failures: u64,
    /// Open connections that the server closed or that broke.
    pub unexpected_closes: u64,
    /// Connections failed because the server broke the framing rules.
    pub protocol_errors: u64,
    /// The first error of any kind, for the report.
    pub first_error: Option<String>,
    /// Time from `connect()` to the 101 response, per connection.
    pub connect_time: LatencyRecorder,
    /// Wall time to open all connections.
    pub open_secs: f64,
}

enum Phase {
    Connecting,
    Handshaking(ClientHandshake),
    Open,
    Closing,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum FailKind {
    Connect,
    Unexpected,
    Protocol,
}

enum Outcome {
    Continue,
    Opened,
    Failed(FailKind, String),
    /// Our closing handshake completed (or the socket ended while closing).
    Finished,
}

struct Conn {
    stream: TcpStream,
    phase: Phase,
    rx: FrameReader,
    tx: FrameWriter,
    started_ns: u64,
}

/// Nanoseconds since `clock`.
#[inline]
fn elapsed_ns(clock: Instant) -> u64 {
    clock.elapsed().as_nanos() as u64
}

impl Conn {
    fn drive<W: Workload>(&mut self, id: usize, readable: bool, writable: bool, clock: Instant, request: &ClientRequest, w: &mut W) -> Outcome {
        match self.phase {
            Phase::Connecting if readable || writable => self.finish_connect(request),
            Phase::Connecting => Outcome::Continue,
            Phase::Handshaking(_) => self.read_handshake(readable),
            Phase::Open | Phase::Closing => self.exchange(id, readable, writable, clock, w),
        }
    }

    fn finish_connect(&mut self, request: &ClientRequest) -> Outcome {
        match self.stream.take_error() {
            Ok(Some(e)) | Err(e) => return Outcome::Failed(FailKind::Connect, format!("connect: {e}")),
            Ok(None) => {}
        }
        match self.stream.peer_addr() {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotConnected => return Outcome::Continue,
            Err(e) => return Outcome::Failed(FailKind::Connect, format!("connect: {e}")),
        }
        // Small messages must not wait for Nagle's algorithm.
        let _ = self.stream.set_nodelay(true);
        let (handshake, bytes) = ClientHandshake::new(request);
        self.tx.queue_raw(&bytes);
        self.phase = Phase::Handshaking(handshake);
        match self.tx.flush(&mut self.stream) {
            Ok(_) => Outcome::Continue,
            Err(e) => Outcome::Failed(FailKind::Connect, format!("sending the handshake: {e}")),
        }
    }

    fn read_handshake(&mut self, readable: bool) -> Outcome {
        if let Err(e) = self.tx.flush(&mut self.stream) {
            return Outcome::Failed(FailKind::Connect, format!("sending the handshake: {e}"));
        }
        if !readable {
            return Outcome::Continue;
        }
        loop {
            match self.rx.read_from(&mut self.stream) {
                Ok(ReadStatus::Data { drained }) => {
                    let Phase::Handshaking(handshake) = &self.phase else { unreachable!() };
                    match handshake.parse_response(self.rx.unread()) {
                        Ok(Some((_, len))) => {
                            self.rx.consume(len);
                            self.phase = Phase::Open;
                            return Outcome::Opened;
                        }
                        Ok(None) if drained => return Outcome::Continue,
                        Ok(None) => {}
                        Err(e) => return Outcome::Failed(FailKind::Connect, format!("handshake rejected: {e}")),
                    }
                }
                Ok(ReadStatus::WouldBlock) => return Outcome::Continue,
                Ok(ReadStatus::Eof) => {
                    return Outcome::Failed(FailKind::Connect, "server closed the connection during the handshake".into())
                }
                Err(e) => return Outcome::Failed(FailKind::Connect, format!("reading the handshake: {e}")),
            }
        }
    }

    fn exchange<W: Workload>(&mut self, id: usize, readable: bool, writable: bool, clock: Instant, w: &mut W) -> Outcome {
        let closing = matches!(self.phase, Phase::Closing);
        let lost = |kind, msg: String| if closing { Outcome::Finished } else { Outcome::Failed(kind, msg) };
        if readable {
            let mut drained = false;
            let mut now = elapsed_ns(clock);
            loop {
                let mut server_close = None;
                let tx = &mut self.tx;
                let parsed = self.rx.frames(|m| match m {
                    Incoming::Data { text, payload } => w.on_message(id, text, payload, tx, now),
                    // §5.5.2: answer a ping with a pong, unless our close went out (§5.5.1).
                    Incoming::Ping(p) if !tx.close_sent() => tx.queue(OpCode::Pong, p),
                    Incoming::Ping(_) | Incoming::Pong => {}
                    Incoming::Close(code) => server_close = Some(code),
                });
                if let Err(WireError(msg)) = parsed {
                    self.tx.queue_close(Some(CloseCode::PROTOCOL_ERROR.0));
                    let _ = self.tx.flush(&mut self.stream);
                    return lost(FailKind::Protocol, msg);
                }
                if let Some(code) = server_close {
                    if closing {
                        return Outcome::Finished;
                    }
                    // §5.5.1: echo the status code received.
                    self.tx.queue_close(code.filter(|&c| CloseCode(c).is_allowed_on_wire()));
                    let _ = self.tx.flush(&mut self.stream);
                    let code = code.map(|c| format!(" with code {c}")).unwrap_or_default();
                    return Outcome::Failed(FailKind::Unexpected, format!("server closed the connection{code}"));
                }
                if drained {
                    break;
                }
                match self.rx.read_from(&mut self.stream) {
                    Ok(ReadStatus::Data { drained: d }) => {
                        drained = d;
                        now = elapsed_ns(clock);
                    }
                    Ok(ReadStatus::WouldBlock) => break,
                    Ok(ReadStatus::Eof) => {
                        return lost(FailKind::Unexpected, "server closed the TCP connection without a close frame".into())
                    }
                    Err(e) => return lost(FailKind::Unexpected, format!("read: {e}")),
                }
            }
        }
        if readable || writable || self.tx.pending() > 0 {
            if let Err(e) = self.tx.flush(&mut self.stream) {
                return lost(FailKind::Unexpected, format!("write: {e}"));
            }
        }
        Outcome::Continue
    }
}

/// The single-threaded event loop and its connections.
pub(crate) struct Engine {
    poll: Poll,
    events: Events,
    ready: Vec<(usize, bool, bool)>,
    conns: Vec<Option<Conn>>,
    target: Target,
    request: ClientRequest,
    options: EngineOptions,
    clock: Instant,
    seed: u64,
    pending: usize,
    open: usize,
    closing: usize,
    /// Counts about connections, for the report.
    pub stats: EngineStats,
}

impl Engine {
    /// An engine for `target`; `clock` is the run's time origin.
    pub(crate) fn new(target: Target, options: EngineOptions, clock: Instant) -> Result<Self> {
        let request = ClientRequest { host: target.host_header.clone(), target: target.path.clone(), ..Default::default() };
        let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
            ^ u64::from(std::process::id()) << 32;
        Ok(Engine {
            poll: Poll::new().context("creating the epoll instance")?,
            events: Events::with_capacity(1024),
            ready: Vec::with_capacity(1024),
            conns: Vec::new(),
            target,
            request,
            options,
            clock,
            seed,
            pending: 0,
            open: 0,
            closing: 0,
            stats: EngineStats::default(),
        })
    }

    /// Nanoseconds since the run began.
    #[inline]
    pub(crate) fn now(&self) -> u64 {
        elapsed_ns(self.clock)
    }

    /// Connections currently open.
    pub(crate) fn open_count(&self) -> usize {
        self.open
    }

    /// Whether connection `id` is open.
    pub(crate) fn is_open(&self, id: usize) -> bool {
        matches!(self.conns.get(id), Some(Some(Conn { phase: Phase::Open, .. })))
    }

    fn note_error(&mut self, msg: String) {
        if self.stats.first_error.is_none() {
            self.stats.first_error = Some(msg);
        }
    }

    /// Open `count` connections and complete their handshakes at `pace`,
    /// polling all the while. Returns when each has opened or failed.
    pub(crate) fn connect<W: Workload>(&mut self, count: usize, pace: Pace, w: &mut W, progress: &mut Progress) -> Result<()> {
        let begin = Instant::now();
        let mut next = 0;
        let mut last_expiry = Instant::now();
        self.conns.reserve(count);
        while next < count || self.pending > 0 {
            let allowed = match pace.rate {
                Some(rate) => ((begin.elapsed().as_secs_f64() * rate) as usize + 1).min(count),
                None => count,
            };
            while next < allowed && self.pending < pace.concurrency.max(1) {
                self.open_one(next);
                next += 1;
            }
            let timeout = if next < count && pace.rate.is_some() { Duration::from_millis(1) } else { Duration::from_millis(20) };
            self.poll_once(timeout, w)?;
            if last_expiry.elapsed() >= Duration::from_millis(100) {
                last_expiry = Instant::now();
                self.expire_handshakes(w);
            }
            let (open, failed) = (self.open, self.stats.connect_failures);
            progress.update(|| format!("connecting: {open}/{count} open, {failed} failed"));
        }
        self.stats.open_secs = begin.elapsed().as_secs_f64();
        Ok(())
    }

    fn open_one(&mut self, id: usize) {
        debug_assert_eq!(id, self.conns.len());
        let source = net::source_ip(id, self.options.source_ips);
        let started_ns = self.now();
        let opened = net::open_socket(self.target.addr, source).and_then(|mut stream| {
            self.poll.registry().register(&mut stream, Token(id), Interest::READABLE | Interest::WRITABLE)?;
            Ok(stream)
        });
        match opened {
            Ok(stream) => {
                let seed = self.seed ^ (id as u64).wrapping_mul(0xA076_1D64_78BD_642F);
                self.conns.push(Some(Conn {
                    stream,
                    phase: Phase::Connecting,
                    rx: FrameReader::new(self.options.read_buffer),
                    tx: FrameWriter::new(seed),
                    started_ns,
                }));
                self.pending += 1;
            }
            Err(e) => {
                self.conns.push(None);
                self.stats.connect_failures += 1;
                let hint = if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) {
                    " (out of local ports: spread over more source addresses with --source-ips)"
                } else {
                    ""
                };
                self.note_error(format!("connect to {}: {e}{hint}", self.target.addr));
            }
        }
    }

    fn expire_handshakes<W: Workload>(&mut self, w: &mut W) {
        if self.pending == 0 {
            return;
        }
        let now = self.now();
        let limit = self.options.connect_timeout.as_nanos() as u64;
        for id in 0..self.conns.len() {
            let expired = matches!(&self.conns[id], Some(c) if matches!(c.phase, Phase::Connecting | Phase::Handshaking(_))
                && now.saturating_sub(c.started_ns) > limit);
            if expired {
                let msg = format!("no handshake response within {:?}", self.options.connect_timeout);
                self.settle(id, Outcome::Failed(FailKind::Connect, msg), w);
            }
        }
    }

    /// Wait up to `timeout` for socket events and handle them.
    pub(crate) fn poll_once<W: Workload>(&mut self, timeout: Duration, w: &mut W) -> Result<()> {
        match self.poll.poll(&mut self.events, Some(timeout)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
            Err(e) => return Err(e).context("waiting for socket events"),
        }
        self.ready.clear();
        for ev in self.events.iter() {
            let readable = ev.is_readable() || ev.is_read_closed() || ev.is_error();
            let writable = ev.is_writable() || ev.is_error();
            self.ready.push((ev.token().0, readable, writable));
        }
        for i in 0..self.ready.len() {
            let (id, readable, writable) = self.ready[i];
            self.drive(id, readable, writable, w);
        }
        Ok(())
    }

    fn drive<W: Workload>(&mut self, id: usize, readable: bool, writable: bool, w: &mut W) {
        let Some(Some(conn)) = self.conns.get_mut(id) else { return };
        let outcome = conn.drive(id, readable, writable, self.clock, &self.request, w);
        self.settle(id, outcome, w);
        if self.options.shrink_idle {
            if let Some(Some(conn)) = self.conns.get_mut(id) {
                conn.rx.shrink_if_idle();
                conn.tx.shrink_if_idle();
            }
        }
    }

    fn settle<W: Workload>(&mut self, id: usize, outcome: Outcome, w: &mut W) {
        match outcome {
            Outcome::Continue => {}
            Outcome::Opened => {
                self.pending -= 1;
                self.open += 1;
                self.stats.connected += 1;
                let now = self.now();
                if let Some(Some(conn)) = self.conns.get(id) {
                    self.stats.connect_time.record_ns(now.saturating_sub(conn.started_ns));
                }
                // Frames may have come with the 101, and more may wait in the socket.
                self.drive(id, true, true, w);
            }
            Outcome::Failed(kind, msg) => {
                let was_open = matches!(self.conns.get(id), Some(Some(Conn { phase: Phase::Open, .. })));
                self.conns[id] = None;
                match kind {
                    FailKind::Connect => {
                        self.pending -= 1;
                        self.stats.connect_failures += 1;
                    }
                    FailKind::Unexpected => self.stats.unexpected_closes += 1,
                    FailKind::Protocol => self.stats.protocol_errors += 1,
                }
                if was_open {
                    self.open -= 1;
                    w.on_lost(id);
                }
                self.note_error(msg);
            }
            Outcome::Finished => {
                self.conns[id] = None;
                self.closing -= 1;
            }
        }
    }

    /// Queue frames on connection `id` with `fill` (which also gets the
    /// workload) and write them out now. Does nothing if `id` is not open.
    pub(crate) fn send<W: Workload>(&mut self, id: usize, w: &mut W, fill: impl FnOnce(&mut W, &mut FrameWriter)) {
        let Some(Some(conn)) = self.conns.get_mut(id) else { return };
        if !matches!(conn.phase, Phase::Open) {
            return;
        }
        fill(w, &mut conn.tx);
        if let Err(e) = conn.tx.flush(&mut conn.stream) {
            self.settle(id, Outcome::Failed(FailKind::Unexpected, format!("write: {e}")), w);
        }
    }

    /// Run the closing handshake on every open connection, waiting at most
    /// `timeout` for the server's replies, then drop every socket.
    pub(crate) fn close_all<W: Workload>(&mut self, timeout: Duration, w: &mut W) -> Result<()> {
        for slot in &mut self.conns {
            let Some(conn) = slot else { continue };
            match conn.phase {
                Phase::Open => {
                    conn.tx.queue_close(Some(CloseCode::NORMAL.0));
                    self.open -= 1;
                    if conn.tx.flush(&mut conn.stream).is_ok() {
                        conn.phase = Phase::Closing;
                        self.closing += 1;
                    } else {
                        *slot = None;
                    }
                }
                Phase::Connecting | Phase::Handshaking(_) => {
                    self.pending -= 1;
                    *slot = None;
                }
                Phase::Closing => {}
            }
        }
        let deadline = Instant::now() + timeout;
        while self.closing > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            self.poll_once(left.min(Duration::from_millis(50)), w)?;
        }
        self.conns.clear();
        self.closing = 0;
        Ok(())
    }
}
