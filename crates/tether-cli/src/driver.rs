//! The lean connection driver: a small event loop per core over `mio`,
//! for plain-TCP WebSocket connections after their handshake (which stays
//! on tokio, with HTTP, TLS and admission). Each connection is a slab entry
//! holding its socket, its `tether_proto::Connection` and its service state
//! (nothing for `tether echo`, the hub's [`tether_hub::Session`] for
//! `tether serve`): no task, no future, no timer and no read buffer per
//! connection. See docs/design.md ("The lean driver").
//!
//! Per loop turn: one `epoll_wait`; for each readable socket one read into
//! the loop's shared buffer (again next turn only if the read filled it: a
//! short read drained the socket, and the edge-triggered registration
//! reports any byte that arrives after it); the bytes go to the connection,
//! whose messages go to the service; then one (vectored) write per
//! connection that has output. Deadlines (closing handshakes, the linger
//! after a protocol error) are checked on a coarse tick, only for the
//! connections that are closing; heartbeats are the hub's own round.

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use slab::Slab;
use std::io::{IoSlice, Read, Write};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{RawWaker, RawWakerVTable, Waker};
use std::time::{Duration, Instant};
use tether_hub::Ending;
use tether_proto::{CloseFrame, Connection, Event, Message};

/// The driver flags of `tether echo` and `tether serve`.
#[derive(clap::Args, Debug, Default, Clone)]
pub struct DriverArgs {
    /// What runs WebSocket connections after their handshake: `loop`, a
    /// small event loop per thread owning its connections (the default:
    /// least memory and CPU per connection; plain TCP only, TLS connections
    /// stay on tokio), or `tokio`, a task per connection.
    #[arg(long, value_enum, default_value_t, env = "TETHER_DRIVER")]
    pub driver: DriverKind,
    /// Event loops with `--driver loop` (tokio worker threads for `tether
    /// echo --driver tokio`) [default: the CPUs this process may run on]
    #[arg(long, env = "TETHER_THREADS", value_parser = clap::value_parser!(u16).range(1..))]
    pub threads: Option<u16>,
}

impl DriverArgs {
    /// `--threads`, or the CPUs this process may run on.
    pub fn threads(&self) -> usize {
        self.threads.map_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()), usize::from)
    }
}

/// What runs connections after the handshake.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DriverKind {
    /// One event loop per thread, connections in a slab.
    #[default]
    Loop,
    /// One tokio task per connection.
    Tokio,
}

/// What runs on the connections of a loop. Called on the loop's thread.
pub(crate) trait Service: Send + Sync + 'static {
    /// What a connection brings to the loop from its handshake.
    type Init: Send + 'static;
    /// Per-connection state, kept in the connection's slab entry.
    type State: Send + 'static;
    /// The connection joined the loop: its state, made on the loop's
    /// thread (so what lives as long as the connection is allocated there,
    /// not among the handshake's short-lived buffers on tokio's threads).
    /// What it queues in `conn` is written before anything else.
    fn open(&self, init: Self::Init, conn: &mut Connection) -> Self::State;
    /// Move what the service has for the connection into it (on every
    /// wake-up and after write progress); `Err` ends it. `waker`
    /// schedules this connection on its loop (for state that other
    /// threads change: the hub's queues); it costs no allocation, so it is
    /// made for each call rather than kept.
    fn pump(&self, _state: &mut Self::State, _conn: &mut Connection, _high_water: usize, _waker: &Waker) -> Result<(), Ending> {
        Ok(())
    }
    /// Whether the loop must stop reading this connection for now.
    fn reading_paused(&self, _state: &Self::State) -> bool {
        false
    }
    /// A message from the peer; `Err` ends the connection.
    fn on_message(&self, state: &mut Self::State, conn: &mut Connection, msg: Message) -> Result<(), Ending>;
    /// The socket side ended (close handshake, protocol error, end of
    /// stream, I/O error) before the service ended it. Called once.
    fn on_closed(&self, state: &mut Self::State) -> Ending;
    /// The server is shutting down: `Some` ends the connection now (the hub
    /// ends its sessions itself, through their flags).
    fn on_shutdown(&self, _state: &mut Self::State) -> Option<Ending> {
        None
    }
    /// The loops exist (none runs yet): `wakers[i]` wakes loop `i`, which
    /// then calls [`on_wake`](Self::on_wake) on its thread.
    fn loops_started(&self, _wakers: Vec<Arc<dyn Fn() + Send + Sync>>) {}
    /// Loop `index` starts running on this thread.
    fn enter_loop(&self, _index: usize) {}
    /// Loop `index` was woken (before it runs the connections woken meanwhile).
    fn on_wake(&self, _index: usize) {}
}

/// The shared read buffer of a loop: one per loop, not per connection.
const READ_BUF: usize = 64 * 1024;
/// A frame needing more than this is read straight into its own buffer.
const LARGE_READ: usize = 64 * 1024;
/// Most slices handed to one vectored write.
const MAX_IOVECS: usize = 64;
/// How often deadlines of closing connections are checked.
const TICK: Duration = Duration::from_millis(100);
/// How often connections that went quiet give their buffers back.
const SWEEP: Duration = Duration::from_secs(1);
/// The token of the loop's waker (connections use slab indices).
const WAKER: Token = Token(usize::MAX);

mod flag {
    /// In the `again` list (read next turn).
    pub const AGAIN: u8 = 1;
    /// In the `dirty` list (write this turn).
    pub const DIRTY: u8 = 2;
    /// The socket's send buffer is full: wait for a writable event.
    pub const WRITE_BLOCKED: u8 = 4;
    /// Not read until the output drains or the service resumes.
    pub const PAUSED: u8 = 8;
    /// The service's part is over (an [`Ending`](super::Ending) is in effect); in the closing list.
    pub const ENDED: u8 = 16;
    /// Our write side is shut after a protocol error: reads are discarded
    /// until the peer closes, so the close frame is not lost to a reset.
    pub const LINGER: u8 = 32;
    /// In the `recent` list: read or written lately, buffers kept.
    pub const RECENT: u8 = 64;
    /// Read or written since the last sweep.
    pub const ACTIVE: u8 = 128;
}

/// One connection: what an idle client costs the loop.
pub(crate) struct Entry<St> {
    tcp: TcpStream,
    flags: u8,
    conn: Connection,
    state: St,
}

/// What other threads use to reach a loop. Each loop's is leaked (loops
/// run as long as the process) and listed in [`NOTIFIERS`], so that a
/// connection's waker is two numbers, the loop's index and the
/// connection's token, packed in the waker's data word: no allocation per
/// connection (an `Arc` per waker cost an idle connection 48 B).
struct Notify {
    waker: mio::Waker,
    /// Set while a wake-up is pending (one eventfd write per turn at most).
    notified: AtomicBool,
    woken: Mutex<Vec<usize>>,
}

impl Notify {
    fn wake(&self) {
        if !self.notified.swap(true, Ordering::AcqRel) {
            let _ = self.waker.wake();
        }
    }

    /// Schedule connection `token` (duplicates are few: the hub's
    /// `AtomicWaker` gives its waker up when it wakes, until the next pump
    /// registers it again; a stale token, whose slab index was reused,
    /// costs one needless pump of another connection).
    fn wake_token(&self, token: usize) {
        self.woken.lock().unwrap_or_else(|p| p.into_inner()).push(token);
        self.wake();
    }
}

/// Bits of a waker's data word that name the loop; the rest is the token.
const LOOP_BITS: u32 = 12;
/// Most event loops one process may start (all drivers together).
const MAX_LOOPS: usize = 1 << LOOP_BITS;
const TOKEN_BITS: u32 = usize::BITS - LOOP_BITS;
const TOKEN_MASK: usize = (1 << TOKEN_BITS) - 1;
/// Every loop's [`Notify`], by index.
static NOTIFIERS: [AtomicPtr<Notify>; MAX_LOOPS] = [const { AtomicPtr::new(std::ptr::null_mut()) }; MAX_LOOPS];
static NEXT_LOOP: AtomicUsize = AtomicUsize::new(0);

/// Register a loop's `notify` for the lifetime of the process: its index.
fn register_loop(notify: Notify) -> std::io::Result<(usize, &'static Notify)> {
    let index = NEXT_LOOP.fetch_add(1, Ordering::Relaxed);
    if index >= MAX_LOOPS {
        return Err(std::io::Error::other(format!("at most {MAX_LOOPS} event loops per process")));
    }
    let notify: &'static Notify = Box::leak(Box::new(notify));
    NOTIFIERS[index].store(std::ptr::from_ref(notify).cast_mut(), Ordering::Release);
    Ok((index, notify))
}

/// The waker of connection `token` on loop `index`.
fn conn_waker(index: usize, token: usize) -> Waker {
    debug_assert!(index < MAX_LOOPS && token <= TOKEN_MASK);
    let data = ((index << TOKEN_BITS) | (token & TOKEN_MASK)) as *const ();
    // SAFETY: the vtable's functions never dereference `data` (a pair of
    // integers, see `wake_data`); cloning copies it and dropping it is a
    // no-op, so the RawWaker contract (clone/wake/drop on any thread, any
    // number of times) holds.
    #[allow(unsafe_code)]
    unsafe {
        Waker::from_raw(RawWaker::new(data, &CONN_WAKER))
    }
}

static CONN_WAKER: RawWakerVTable = RawWakerVTable::new(clone_data, wake_data, wake_data, drop_data);

fn clone_data(data: *const ()) -> RawWaker {
    RawWaker::new(data, &CONN_WAKER)
}

fn wake_data(data: *const ()) {
    let data = data as usize;
    let notify = NOTIFIERS[data >> TOKEN_BITS].load(Ordering::Acquire);
    // SAFETY: a registered pointer comes from `Box::leak` (never freed),
    // and a waker exists only for a registered loop.
    #[allow(unsafe_code)]
    if let Some(notify) = unsafe { notify.as_ref() } {
        notify.wake_token(data & TOKEN_MASK);
    }
}

fn drop_data(_: *const ()) {}

/// A connection handed to a loop.
struct Adopt<I> {
    tcp: std::net::TcpStream,
    conn: Connection,
    init: I,
}

struct Shared<I> {
    notify: &'static Notify,
    inbox: Mutex<Vec<Adopt<I>>>,
    shutdown: AtomicBool,
}

/// A set of loops (one thread each) sharing a service.
pub(crate) struct Driver<S: Service> {
    loops: Vec<Arc<Shared<S::Init>>>,
    next: AtomicUsize,
    live: Arc<AtomicUsize>,
}

impl<S: Service> Driver<S> {
    /// Start `threads` loops (at least one) for `service`; connections stop
    /// being read while `high_water` bytes wait to be written to them.
    pub fn start(service: Arc<S>, threads: usize, high_water: usize) -> std::io::Result<Self> {
        let live = Arc::new(AtomicUsize::new(0));
        let mut loops = Vec::new();
        let mut made = Vec::new();
        for _ in 0..threads.max(1) {
            let poll = Poll::new()?;
            let waker = mio::Waker::new(poll.registry(), WAKER)?;
            let (index, notify) = register_loop(Notify { waker, notified: AtomicBool::new(false), woken: Mutex::new(Vec::new()) })?;
            made.push((poll, index, notify));
        }
        service.loops_started(made.iter().map(|&(_, _, notify)| Arc::new(move || notify.wake()) as Arc<dyn Fn() + Send + Sync>).collect());
        for (i, (poll, index, notify)) in made.into_iter().enumerate() {
            let shared = Arc::new(Shared { notify, inbox: Mutex::new(Vec::new()), shutdown: AtomicBool::new(false) });
            let mut lp = Loop {
                poll,
                index,
                position: i,
                slab: Slab::new(),
                again: Vec::new(),
                dirty: Vec::new(),
                closing: Vec::new(),
                recent: Vec::new(),
                buf: vec![0; READ_BUF].into_boxed_slice(),
                spare_inbox: Vec::new(),
                spare_woken: Vec::new(),
                service: service.clone(),
                shared: shared.clone(),
                live: live.clone(),
                high_water,
                shutting_down: false,
            };
            std::thread::Builder::new().name(format!("tether-loop-{i}")).spawn(move || lp.run())?;
            loops.push(shared);
        }
        Ok(Driver { loops, next: AtomicUsize::new(0), live })
    }

    /// Hand a connection whose handshake is done to a loop (round-robin).
    /// `tcp` must be in non-blocking mode (tokio's `into_std` leaves it so).
    pub fn adopt(&self, tcp: std::net::TcpStream, conn: Connection, init: S::Init) {
        let shared = &self.loops[self.next.fetch_add(1, Ordering::Relaxed) % self.loops.len()];
        self.live.fetch_add(1, Ordering::Relaxed);
        shared.inbox.lock().unwrap_or_else(|p| p.into_inner()).push(Adopt { tcp, conn, init });
        shared.notify.wake();
    }

    /// Ask every loop to end its connections ([`Service::on_shutdown`]).
    pub fn shutdown(&self) {
        for shared in &self.loops {
            shared.shutdown.store(true, Ordering::Release);
            shared.notify.wake();
        }
    }

    /// Connections open on the loops (adopted and not yet closed).
    pub fn live(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    /// Wait (polling, at shutdown) until no connection is open or `deadline` passed.
    pub async fn wait_closed(&self, deadline: tokio::time::Instant) {
        while self.live() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

struct Loop<S: Service> {
    poll: Poll,
    /// This loop's index in [`NOTIFIERS`].
    index: usize,
    /// Its place among its driver's loops (for the service).
    position: usize,
    slab: Slab<Entry<S::State>>,
    /// Read next turn: the last read filled the buffer, or reading resumed.
    again: Vec<usize>,
    /// Write this turn.
    dirty: Vec<usize>,
    /// Connections whose ending is in progress, with the time to give up.
    closing: Vec<(usize, Instant)>,
    /// Connections that moved data lately: their buffers (the receiver's,
    /// the sender's) are kept while they stay busy, so a steady flow does
    /// not allocate and free them for every message, and released at the
    /// first sweep that finds them quiet: an idle connection holds none.
    recent: Vec<usize>,
    buf: Box<[u8]>,
    /// Emptied lists, swapped with the inbox and the woken list.
    spare_inbox: Vec<Adopt<S::Init>>,
    spare_woken: Vec<usize>,
    service: Arc<S>,
    shared: Arc<Shared<S::Init>>,
    live: Arc<AtomicUsize>,
    high_water: usize,
    shutting_down: bool,
}

impl<S: Service> Loop<S> {
    fn run(&mut self) {
        self.service.enter_loop(self.position);
        let mut events = Events::with_capacity(1024);
        let mut next_tick = Instant::now() + TICK;
        let mut next_sweep = Instant::now() + SWEEP;
        loop {
            let timeout = if !self.again.is_empty() || !self.dirty.is_empty() {
                Some(Duration::ZERO)
            } else if !self.closing.is_empty() {
                Some(next_tick.saturating_duration_since(Instant::now()))
            } else if !self.recent.is_empty() {
                Some(next_sweep.saturating_duration_since(Instant::now()))
            } else {
                None
            };
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                tracing::error!(error = %e, "event loop failed");
                return;
            }
            for ev in events.iter() {
                if ev.token() == WAKER {
                    self.take_messages();
                    continue;
                }
                let t = ev.token().0;
                if ev.is_writable() {
                    if let Some(e) = self.slab.get_mut(t) {
                        e.flags &= !flag::WRITE_BLOCKED;
                        if e.conn.pending_len() > 0 {
                            mark(&mut self.dirty, e, t);
                        }
                    }
                }
                if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                    self.read(t);
                }
            }
            for t in std::mem::take(&mut self.again) {
                if let Some(e) = self.slab.get_mut(t) {
                    e.flags &= !flag::AGAIN;
                    self.read(t);
                }
            }
            let dirty = std::mem::take(&mut self.dirty);
            for &t in &dirty {
                if let Some(e) = self.slab.get_mut(t) {
                    e.flags &= !flag::DIRTY;
                    self.flush(t);
                }
            }
            if !self.closing.is_empty() || !self.recent.is_empty() {
                let now = Instant::now();
                if now >= next_tick {
                    next_tick = now + TICK;
                    self.tick(now);
                }
                if now >= next_sweep {
                    next_sweep = now + SWEEP;
                    self.sweep();
                }
            }
        }
    }

    /// The waker fired: new connections, woken connections, shutdown.
    fn take_messages(&mut self) {
        // Cleared first: a wake-up after this point wakes the loop again.
        self.shared.notify.notified.store(false, Ordering::Release);
        // The lists are swapped with this loop's spares, not taken: their
        // buffers go back and forth and are never freed here (a small block
        // that another thread allocated, freed on this one, would come back
        // from the allocator's cache as a long-lived block of a connection).
        let mut adopted = std::mem::take(&mut self.spare_inbox);
        std::mem::swap(&mut adopted, &mut *self.shared.inbox.lock().unwrap_or_else(|p| p.into_inner()));
        for a in adopted.drain(..) {
            self.insert(a);
        }
        self.spare_inbox = adopted;
        // Work the service was handed for this loop (the hub's fan-out),
        // which wakes connections: they are in the list taken next.
        self.service.on_wake(self.position);
        let mut woken = std::mem::take(&mut self.spare_woken);
        std::mem::swap(&mut woken, &mut *self.shared.notify.woken.lock().unwrap_or_else(|p| p.into_inner()));
        for t in woken.drain(..) {
            self.process(t);
        }
        self.spare_woken = woken;
        if !self.shutting_down && self.shared.shutdown.load(Ordering::Acquire) {
            self.shutting_down = true;
            let tokens: Vec<usize> = self.slab.iter().map(|(t, _)| t).collect();
            for t in tokens {
                let Some(e) = self.slab.get_mut(t) else { continue };
                if e.flags & flag::ENDED != 0 {
                    continue;
                }
                if let Some(ending) = self.service.on_shutdown(&mut e.state) {
                    self.begin_ending(t, ending);
                }
            }
        }
    }

    fn insert(&mut self, a: Adopt<S::Init>) {
        let Adopt { tcp, mut conn, init } = a;
        let mut tcp = TcpStream::from_std(tcp);
        let slot = self.slab.vacant_entry();
        let t = slot.key();
        if let Err(e) = self.poll.registry().register(&mut tcp, Token(t), Interest::READABLE | Interest::WRITABLE) {
            tracing::warn!(error = %e, "cannot add a connection to the event loop");
            self.live.fetch_sub(1, Ordering::Relaxed);
            return;
        }
        let state = self.service.open(init, &mut conn);
        slot.insert(Entry { tcp, flags: 0, conn, state });
        if self.shutting_down {
            if let Some(ending) = self.service.on_shutdown(&mut self.slab[t].state) {
                self.begin_ending(t, ending);
            }
        }
        // Bytes that came with the handshake, the service's first frames
        // (after the 101 if the loop writes it), written now. What the
        // write took (the sender's buffers) is given back at once if it all
        // went: most clients then wait, and a buffer kept until the sweep
        // would leave a gap in the heap when freed among the long-lived
        // allocations of the connections that joined meanwhile.
        self.process(t);
        if self.slab.get(t).is_some_and(|e| e.flags & flag::DIRTY != 0) {
            self.flush(t);
            if let Some(e) = self.slab.get_mut(t) {
                if e.conn.pending_len() == 0 {
                    e.conn.shrink_if_idle();
                }
            }
        }
    }

    /// One read for connection `t`, then its messages.
    fn read(&mut self, t: usize) {
        let Some(e) = self.slab.get_mut(t) else { return };
        if e.flags & flag::LINGER != 0 {
            return self.discard(t);
        }
        if e.flags & flag::PAUSED != 0 || (e.flags & flag::ENDED == 0 && self.service.reading_paused(&e.state)) || e.conn.pending_len() >= self.high_water {
            e.flags |= flag::PAUSED;
            return;
        }
        let needed = e.conn.receiver().bytes_needed().unwrap_or(0);
        let result = if needed > LARGE_READ {
            // A large frame is arriving: read into its buffer, no copy.
            // Capped so that a header alone cannot claim memory.
            let buf = e.conn.receiver().read_buffer();
            let start = buf.len();
            let want = needed.min(1 << 20);
            buf.resize(start + want, 0);
            let r = e.tcp.read(&mut buf[start..]);
            buf.truncate(start + *r.as_ref().unwrap_or(&0));
            // A read that filled what it asked for may have left bytes in
            // the socket, and the edge-triggered registration will not
            // report them again: read again next turn, as for a full
            // shared buffer. (Without this a 16 MiB message stalled after
            // its first MiB: Autobahn 9.1.6.)
            r.map(|n| (n, n == want))
        } else {
            match e.tcp.read(&mut self.buf) {
                Ok(n) => {
                    e.conn.receive_data(&self.buf[..n]);
                    Ok((n, n == self.buf.len()))
                }
                Err(err) => Err(err),
            }
        };
        match result {
            Ok((0, _)) => e.conn.receive_eof(),
            Ok((_, full)) => {
                if full {
                    // Maybe more waiting: read again next turn (after the others).
                    again(&mut self.again, e, t);
                }
                active(&mut self.recent, e, t);
            }
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => return,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {
                again(&mut self.again, e, t);
                return;
            }
            Err(err) => {
                tracing::debug!(error = %err, "read failed");
                return self.remove(t);
            }
        }
        self.process(t);
    }

    /// Read and throw away until the peer closes (the linger after a failure).
    fn discard(&mut self, t: usize) {
        let Some(e) = self.slab.get_mut(t) else { return };
        loop {
            match e.tcp.read(&mut self.buf) {
                Ok(0) => return self.remove(t),
                Ok(_) => continue,
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => return self.remove(t),
            }
        }
    }

    /// Let the service and the protocol act on what arrived or was queued.
    fn process(&mut self, t: usize) {
        let Some(e) = self.slab.get_mut(t) else { return };
        if e.flags & flag::LINGER != 0 {
            return;
        }
        let mut ending = None;
        if e.flags & flag::ENDED == 0 {
            if let Err(end) = self.service.pump(&mut e.state, &mut e.conn, self.high_water, &conn_waker(self.index, t)) {
                ending = Some(end);
            }
        }
        while ending.is_none() {
            let ended = e.flags & flag::ENDED != 0;
            if e.conn.pending_len() >= self.high_water || (!ended && self.service.reading_paused(&e.state)) {
                // The peer is not reading: decode nothing more (each ping
                // would queue a pong) until the output drains.
                e.flags |= flag::PAUSED;
                break;
            }
            match e.conn.next_event() {
                Ok(Some(Event::Message(msg))) => {
                    if !ended {
                        // As the tokio driver does between messages: what
                        // the message queued (replies, errors) moves to the
                        // socket before the next message is handled.
                        let result = self.service.on_message(&mut e.state, &mut e.conn, msg).and_then(|()| self.service.pump(&mut e.state, &mut e.conn, self.high_water, &conn_waker(self.index, t)));
                        if let Err(end) = result {
                            ending = Some(end);
                        }
                    }
                    // While closing, messages are discarded (as `WebSocket::close` does).
                }
                Ok(Some(Event::Fragment { .. })) => unreachable!("next_event assembles messages"),
                Ok(None) => break,
                Err(err) => {
                    // The close frame naming the failure is queued.
                    tracing::debug!(error = %err, "connection failed");
                    break;
                }
            }
        }
        if ending.is_none() && e.flags & flag::ENDED == 0 && e.conn.should_close_transport() {
            ending = Some(self.service.on_closed(&mut e.state));
        }
        if let Some(ending) = ending {
            self.begin_ending(t, ending);
        }
        let Some(e) = self.slab.get_mut(t) else { return };
        if e.conn.pending_len() > 0 {
            mark(&mut self.dirty, e, t);
        } else if e.flags & flag::ENDED != 0 && e.conn.should_close_transport() {
            self.close_transport(t);
        }
    }

    /// The service's part is over: carry out `ending`.
    fn begin_ending(&mut self, t: usize, ending: Ending) {
        let Some(e) = self.slab.get_mut(t) else { return };
        if e.flags & flag::ENDED != 0 {
            return;
        }
        e.flags |= flag::ENDED;
        let within = match ending {
            Ending::Abort => return self.remove(t),
            Ending::Finish { within } => within,
            Ending::Close { code, reason, within } => {
                if e.conn.close(Some(CloseFrame::new(code, reason))).is_ok() {
                    mark(&mut self.dirty, e, t);
                }
                within
            }
            Ending::Restart { reconnect_after_ms, within } => {
                let reason = tether_hub::drain_reason(reconnect_after_ms);
                if e.conn.close(Some(CloseFrame::new(tether_proto::CloseCode::SERVICE_RESTART, &reason))).is_ok() {
                    mark(&mut self.dirty, e, t);
                }
                within
            }
        };
        let now = Instant::now();
        let mut give_up = now + within;
        if let Some(deadline) = e.conn.poll_timeout(now) {
            give_up = give_up.min(deadline);
        }
        self.closing.push((t, give_up));
        // Messages are no longer handed to the service, so reading resumes.
        if e.flags & flag::PAUSED != 0 && e.conn.pending_len() < self.high_water {
            e.flags &= !flag::PAUSED;
            again(&mut self.again, e, t);
        }
    }

    /// All output written and the protocol says the transport is done.
    fn close_transport(&mut self, t: usize) {
        let Some(e) = self.slab.get_mut(t) else { return };
        if e.conn.failure().is_some() && !e.conn.timed_out() && e.flags & flag::LINGER == 0 {
            // Shut our side and linger: closing a socket with unread data
            // sends a reset, which can destroy the close frame that says
            // what was wrong (1009, 1002...) before the peer reads it.
            let _ = e.tcp.shutdown(std::net::Shutdown::Write);
            e.flags |= flag::LINGER;
            return self.discard(t);
        }
        self.remove(t);
    }

    /// One write of what connection `t` has queued.
    fn flush(&mut self, t: usize) {
        let Some(e) = self.slab.get_mut(t) else { return };
        if e.flags & (flag::WRITE_BLOCKED | flag::LINGER) != 0 {
            return;
        }
        if e.conn.pending_len() > 0 {
            let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
            let n = e.conn.data_to_send(&mut slices);
            let written = if n == 1 { e.tcp.write(&slices[0]) } else { e.tcp.write_vectored(&slices[..n]) };
            match written {
                Ok(0) => return self.remove(t),
                Ok(n) => {
                    e.conn.consume_sent(n);
                    active(&mut self.recent, e, t);
                }
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                    e.flags |= flag::WRITE_BLOCKED;
                    return;
                }
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {
                    mark(&mut self.dirty, e, t);
                    return;
                }
                Err(err) => {
                    tracing::debug!(error = %err, "write failed");
                    return self.remove(t);
                }
            }
        }
        if e.flags & flag::PAUSED != 0 && e.conn.pending_len() < self.high_water {
            e.flags &= !flag::PAUSED;
            again(&mut self.again, e, t);
        }
        // Room again: the service may move more (its queue), and buffered
        // input may be decoded. What this adds is written next turn.
        let pending = e.conn.pending_len();
        self.process(t);
        if pending > 0 {
            // Short write: the rest goes next turn (a full send buffer then
            // answers WouldBlock and the writable event resumes it).
            if let Some(e) = self.slab.get_mut(t) {
                mark(&mut self.dirty, e, t);
            }
        }
    }

    /// Connections that were quiet since the last sweep give their empty
    /// buffers back (only a partly received frame or unsent bytes are kept).
    fn sweep(&mut self) {
        let slab = &mut self.slab;
        self.recent.retain(|&t| {
            let Some(e) = slab.get_mut(t) else { return false };
            if e.flags & flag::ACTIVE != 0 {
                e.flags &= !flag::ACTIVE;
                return true;
            }
            e.flags &= !flag::RECENT;
            e.conn.shrink_if_idle();
            false
        });
    }

    /// Give up on connections whose ending took too long.
    fn tick(&mut self, now: Instant) {
        let mut expired = Vec::new();
        self.closing.retain(|&(t, at)| {
            if now >= at {
                expired.push(t);
            }
            now < at
        });
        for t in expired {
            if let Some(e) = self.slab.get_mut(t) {
                // An index reused by a connection that is not ending is
                // not this deadline's.
                if e.flags & flag::ENDED != 0 {
                    e.conn.handle_timeout(now);
                    self.remove(t);
                }
            }
        }
    }

    /// Drop connection `t` (the socket closes; the service hears of it if
    /// it did not end it).
    fn remove(&mut self, t: usize) {
        // Its index may stay in `recent` or `closing` (a removal does not
        // search them): a sweep of a reused index only shrinks idle
        // buffers, and a deadline applies only to a connection that is
        // ending (see `tick`).
        let Some(mut e) = self.slab.try_remove(t) else { return };
        if e.flags & flag::ENDED == 0 {
            let _ = self.service.on_closed(&mut e.state);
        }
        // Closing the descriptor (dropping `e`) removes it from epoll.
        self.live.fetch_sub(1, Ordering::Relaxed);
    }
}

fn mark<St>(dirty: &mut Vec<usize>, e: &mut Entry<St>, t: usize) {
    if e.flags & flag::DIRTY == 0 {
        e.flags |= flag::DIRTY;
        dirty.push(t);
    }
}

fn active<St>(recent: &mut Vec<usize>, e: &mut Entry<St>, t: usize) {
    e.flags |= flag::ACTIVE;
    if e.flags & flag::RECENT == 0 {
        e.flags |= flag::RECENT;
        recent.push(t);
    }
}

fn again<St>(list: &mut Vec<usize>, e: &mut Entry<St>, t: usize) {
    if e.flags & flag::AGAIN == 0 {
        e.flags |= flag::AGAIN;
        list.push(t);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The memory of an idle `tether echo` connection in the loop, beside
    /// the kernel's socket: the slab entry (no heap at rest).
    #[test]
    fn an_idle_echo_connection_is_one_small_slab_entry() {
        let size = std::mem::size_of::<Entry<()>>();
        println!("echo slab entry: {size} bytes");
        // 208 B measured (#16: 312 B before the protocol's idle buffers
        // became one pointer each).
        assert!(size <= 240, "an echo connection's slab entry grew to {size} bytes");
    }
}
