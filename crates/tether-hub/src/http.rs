//! The HTTP fallback transport: a hub [`Session`] driven over plain HTTP,
//! for networks where a proxy strips `Upgrade` or kills long-lived upgraded
//! connections. Server to client is a Server-Sent Events stream of the same
//! frames a WebSocket would carry (one event each, with an id); client to
//! server is `POST`s of batches of messages, each batch with a sequence
//! number so a retried POST is applied once.
//!
//! This module knows nothing of HTTP framing: [`HttpSessions`] opens,
//! resumes and feeds sessions, and an [`EventStream`] yields the SSE text
//! chunks a server writes into its response body (`tether serve` wires both
//! into axum routes). Every session runs the same [`Session`] logic as a
//! WebSocket connection (acks, errors, presence, history, rate limits,
//! slow-consumer policy).
//!
//! Bounds, all fixed by [`HttpConfig`]: sessions per node, events kept per
//! session for resume (count and bytes; undelivered events count towards
//! the session's queue so a client that stops reading meets the
//! slow-consumer policy), messages per POST. POST sequence numbers need no
//! map: a session keeps only the last one it applied.
//!
//! Liveness: while a stream is attached, the session answers the hub's
//! heartbeat ping itself (and sends the client an envelope-level `ping`
//! event); once the stream is gone nobody answers, and the hub ends the
//! session after one to two heartbeat intervals. Until then a client may
//! reattach and resume.

use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::session::{ConnInfo, End, Ending, Outbox, Session};
use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::future::poll_fn;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Poll;
use std::time::Duration;
use tether::Message;
use tether_proto::{EncodedFrame, FrameHeader, OpCode};

/// Limits of the HTTP transport. Every field bounds something a client can fill.
#[derive(Clone, Debug)]
pub struct HttpConfig {
    /// Most HTTP sessions open on this node at once. Default 10 000 (a
    /// server also caps them with its connection limit).
    pub max_sessions: usize,
    /// Most delivered events a session keeps for resume. Default 256.
    pub window_events: usize,
    /// Most bytes of delivered events a session keeps for resume; events
    /// not yet delivered may take half as much again. Default 256 KiB.
    pub window_bytes: usize,
    /// Most messages in one POST. Default 64.
    pub max_batch: usize,
    /// A comment line is sent on an idle stream this often, so proxies do
    /// not time it out. Default 15 s.
    pub keepalive: Duration,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig { max_sessions: 10_000, window_events: 256, window_bytes: 256 << 10, max_batch: 64, keepalive: Duration::from_secs(15) }
    }
}

/// Why a request about a session could not be served.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    /// No such session here: it never existed, expired or ended (HTTP 404).
    /// The client opens a new one.
    #[error("unknown or expired session; open a new one")]
    UnknownSession,
    /// The node holds `max_sessions` already (HTTP 503).
    #[error("too many HTTP sessions, try again later")]
    TooManySessions,
    /// A POST skipped sequence numbers (HTTP 409): the client must send
    /// `expected` next.
    #[error("POST sequence number out of order: expected {expected}")]
    OutOfOrder {
        /// The next sequence number this session applies.
        expected: u64,
    },
    /// More messages in one POST than `max_batch` (HTTP 413).
    #[error("too many messages in one POST (at most {max})")]
    BatchTooLarge {
        /// The limit.
        max: usize,
    },
}

/// What a POST did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Posted {
    /// The batch was applied.
    Applied,
    /// The batch had been applied already (a retry): nothing was done.
    Duplicate,
}

/// The sessions of the HTTP transport on one node.
pub struct HttpSessions {
    hub: Arc<Hub>,
    config: HttpConfig,
    sessions: Mutex<HashMap<Arc<str>, Arc<Shared>>>,
}

impl std::fmt::Debug for HttpSessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpSessions").field("sessions", &self.len()).finish()
    }
}

/// Something held for as long as a session lives (a connection slot).
pub type Guard = Box<dyn Send + Sync>;

struct Shared {
    key: Arc<str>,
    state: Mutex<State>,
    /// Wakes the attached stream when events arrive.
    notify: tokio::sync::Notify,
}

struct State {
    /// `None` once the session ended.
    session: Option<Session>,
    ring: Ring,
    /// Which stream is attached (a new one takes over).
    generation: u64,
    attached: bool,
    /// The last POST sequence number applied.
    last_post: u64,
    /// Why the session ends, when a POST found out (rate limit).
    end: Option<End>,
    /// The close event, once the session ended.
    closed: Option<String>,
}

/// The events of one session: those delivered (kept for resume, bounded)
/// and those not yet delivered. Also the [`Outbox`] the session pumps into.
struct Ring {
    events: VecDeque<(u64, Arc<str>)>,
    /// The id the next event gets (ids start at 1).
    next_id: u64,
    /// The highest id handed to the attached stream.
    sent: u64,
    sent_bytes: usize,
    total_bytes: usize,
    /// A heartbeat ping the session asked for, not answered yet.
    ping: Option<Vec<u8>>,
    /// An envelope-level ping for the stream.
    ping_event: bool,
    window_events: usize,
    window_bytes: usize,
}

impl Ring {
    fn push(&mut self, text: Arc<str>) {
        self.total_bytes += text.len();
        self.events.push_back((self.next_id, text));
        self.next_id += 1;
        self.evict();
    }

    /// Forget the oldest delivered events beyond the window.
    fn evict(&mut self) {
        while let Some((id, text)) = self.events.front() {
            let over = self.sent_bytes > self.window_bytes || self.events.len() > self.window_events + self.unsent_count();
            if *id > self.sent || !over {
                break;
            }
            self.sent_bytes -= text.len();
            self.total_bytes -= text.len();
            self.events.pop_front();
        }
    }

    fn unsent_count(&self) -> usize {
        (self.next_id - 1 - self.sent) as usize
    }

    fn first_id(&self) -> u64 {
        self.events.front().map_or(self.next_id, |(id, _)| *id)
    }

    /// Set the stream's position to `sent` (a resume may rewind it).
    fn rewind(&mut self, sent: u64) {
        self.sent = sent;
        self.sent_bytes = self.events.iter().filter(|(id, _)| *id <= sent).map(|(_, t)| t.len()).sum();
    }
}

impl Outbox for Ring {
    fn pending_len(&self) -> usize {
        self.total_bytes - self.sent_bytes
    }
    fn send_encoded(&mut self, frame: EncodedFrame) -> Result<(), ()> {
        let bytes = frame.as_bytes();
        let Ok(Some((header, len))) = FrameHeader::parse(bytes) else { return Err(()) };
        let payload = &bytes[len..];
        match header.opcode {
            OpCode::Ping => self.ping = Some(payload.to_vec()),
            OpCode::Text => self.push(Arc::from(String::from_utf8_lossy(payload))),
            // SSE carries text: a plain-mode binary message is announced, not shown.
            OpCode::Binary => self.push(Arc::from(format!("[tether] a binary message of {} bytes (not shown over HTTP)", payload.len()))),
            _ => {}
        }
        Ok(())
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A key nobody can guess: the session id and 128 random bits (from the
/// OS-seeded keys of the standard library's hasher).
fn new_key(session: &str) -> String {
    use std::hash::{BuildHasher, Hasher};
    let part = |n: u64| {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(n);
        h.finish()
    };
    format!("{session}.{:016x}{:016x}", part(1), part(2))
}

/// Parse a `Last-Event-ID` (`<session key>:<n>`).
pub fn parse_event_id(id: &str) -> Option<(&str, u64)> {
    let (key, n) = id.rsplit_once(':')?;
    Some((key, n.parse().ok()?))
}

/// The node id inside a session key (to route a request to its node).
pub fn node_of(key: &str) -> Option<&str> {
    key.rsplit_once('-').map(|(node, _)| node)
}

impl HttpSessions {
    /// The HTTP transport of `hub`.
    pub fn new(hub: Arc<Hub>, config: HttpConfig) -> Arc<HttpSessions> {
        Arc::new(HttpSessions { hub, config, sessions: Mutex::new(HashMap::new()) })
    }

    /// Open sessions.
    pub fn len(&self) -> usize {
        lock(&self.sessions).len()
    }

    /// Whether no session is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The limits.
    pub fn config(&self) -> &HttpConfig {
        &self.config
    }

    /// Whether the session with `key` lives on this node.
    pub fn contains(&self, key: &str) -> bool {
        lock(&self.sessions).contains_key(key)
    }

    /// Open a session (`json` when it speaks `tether.v1`) and attach a
    /// stream to it: its first event names the session key, then the
    /// welcome follows. `guard` is dropped when the session ends.
    pub fn open(self: &Arc<Self>, json: bool, info: ConnInfo, guard: Guard) -> Result<EventStream, HttpError> {
        let mut sessions = lock(&self.sessions);
        if sessions.len() >= self.config.max_sessions {
            return Err(HttpError::TooManySessions);
        }
        let session = self.hub.open_session(json, info);
        let key: Arc<str> = Arc::from(new_key(&session.id()));
        let ring = Ring {
            events: VecDeque::new(),
            next_id: 1,
            sent: 0,
            sent_bytes: 0,
            total_bytes: 0,
            ping: None,
            ping_event: false,
            window_events: self.config.window_events,
            window_bytes: self.config.window_bytes,
        };
        let state = State { session: Some(session), ring, generation: 1, attached: true, last_post: 0, end: None, closed: None };
        let shared = Arc::new(Shared { key: key.clone(), state: Mutex::new(state), notify: tokio::sync::Notify::new() });
        sessions.insert(key.clone(), shared.clone());
        drop(sessions);
        let counted = crate::metrics::TransportGuard::new(self.hub.metrics(), crate::metrics::Transport::Http);
        tokio::spawn(drive(self.clone(), shared.clone(), Box::new((guard, counted))));
        let mut prelude = String::from(": tether\nretry: 1000\n\n");
        let _ = write!(prelude, "event: session\ndata: {key}\n\n");
        Ok(EventStream { shared, generation: 1, cursor: 0, prelude: Some(prelude), keepalive: self.config.keepalive })
    }

    /// Attach a new stream to session `key`, resuming after event `after`
    /// (the number in the last event id seen; 0 for everything kept). The
    /// previous stream of the session ends. Events no longer kept are
    /// announced with a `history_gap` error event.
    pub fn resume(&self, key: &str, after: u64) -> Result<EventStream, HttpError> {
        let shared = lock(&self.sessions).get(key).cloned().ok_or(HttpError::UnknownSession)?;
        let mut st = lock(&shared.state);
        if st.closed.is_some() && st.ring.next_id - 1 <= after {
            return Err(HttpError::UnknownSession);
        }
        let after = after.min(st.ring.next_id - 1);
        st.generation += 1;
        st.attached = true;
        st.ring.rewind(after);
        let mut prelude = String::from(": tether\nretry: 1000\n\n");
        let first = st.ring.first_id();
        if after + 1 < first {
            Metrics::add(&self.hub.metrics().history_gaps, 1);
            let text = format!(
                r#"{{"type":"error","code":"history_gap","message":"events {} to {} of this session are no longer kept; resubscribe with since to resume topics","id":null,"first_event":{first}}}"#,
                after + 1,
                first - 1
            );
            let _ = write!(prelude, "data: {text}\n\n");
        }
        let generation = st.generation;
        drop(st);
        // The driver may move more frames now that the cursor moved.
        shared.notify.notify_one();
        Ok(EventStream { shared, generation, cursor: after, prelude: Some(prelude), keepalive: self.config.keepalive })
    }

    /// Apply a batch of messages POSTed for session `key` with sequence
    /// number `seq` (1 for the first batch, then one more each time). A
    /// retried batch (a `seq` applied already) is acknowledged and ignored.
    pub fn post(&self, key: &str, seq: u64, messages: Vec<String>) -> Result<Posted, HttpError> {
        if messages.len() > self.config.max_batch {
            return Err(HttpError::BatchTooLarge { max: self.config.max_batch });
        }
        let shared = lock(&self.sessions).get(key).cloned().ok_or(HttpError::UnknownSession)?;
        let mut st = lock(&shared.state);
        if st.end.is_some() || st.closed.is_some() {
            return Err(HttpError::UnknownSession);
        }
        if seq <= st.last_post {
            return Ok(Posted::Duplicate);
        }
        if seq != st.last_post + 1 {
            return Err(HttpError::OutOfOrder { expected: st.last_post + 1 });
        }
        st.last_post = seq;
        let State { session, end, .. } = &mut *st;
        let Some(session) = session.as_mut() else { return Err(HttpError::UnknownSession) };
        for text in messages {
            if let Err(e) = session.on_message(&self.hub, Message::text(text)) {
                *end = Some(e);
                break;
            }
        }
        if st.end.is_some() {
            // Wake the driver: it ends the session.
            shared.notify.notify_one();
            if let Some(s) = &st.session {
                s.wake();
            }
        }
        Ok(Posted::Applied)
    }
}

impl HttpSessions {
    /// End session `key` as a client's close frame would (its leave is
    /// announced at once, not after the heartbeat gives up on it). Closing
    /// a session that is ending already is not an error.
    pub fn close(&self, key: &str) -> Result<(), HttpError> {
        let shared = lock(&self.sessions).get(key).cloned().ok_or(HttpError::UnknownSession)?;
        let mut st = lock(&shared.state);
        if st.end.is_none() && st.closed.is_none() {
            st.end = Some(End::Closed);
            // Wake the driver: it ends the session.
            if let Some(s) = &st.session {
                s.wake();
            }
        }
        drop(st);
        shared.notify.notify_one();
        Ok(())
    }
}

/// The task of one HTTP session: pump the hub's frames into the ring,
/// answer heartbeats while a stream is attached, end the session.
async fn drive(sessions: Arc<HttpSessions>, shared: Arc<Shared>, guard: Guard) {
    let hub = sessions.hub.clone();
    let high_water = sessions.config.window_bytes;
    let end = poll_fn(|cx| {
        let mut st = lock(&shared.state);
        let State { session, ring, attached, end, .. } = &mut *st;
        let Some(session) = session.as_mut() else { return Poll::Ready(End::Closed) };
        if let Some(end) = end {
            return Poll::Ready(*end);
        }
        session.set_waker(cx.waker());
        let before = ring.next_id;
        let pumped = session.pump(&hub, ring, high_water);
        if let Some(payload) = ring.ping.take().filter(|_| *attached) {
            ring.ping_event = true;
            let _ = session.on_message(&hub, Message::Pong(payload.into()));
        }
        let news = ring.next_id != before || ring.ping_event;
        if let Err(end) = pumped {
            return Poll::Ready(end);
        }
        if news {
            shared.notify.notify_one();
        }
        // The stream wakes this task (through the session's waker) when it
        // takes events, which makes room to pump more.
        Poll::Pending
    })
    .await;
    let session = {
        let mut st = lock(&shared.state);
        let session = st.session.take();
        if let Some(session) = session {
            // Frames already queued go out before the close event.
            let _ = session.drain_into(&mut st.ring);
            let ending = hub.end_session(session, end);
            let (code, reason) = match ending {
                Ending::Close { code, reason, .. } => (code, reason.to_string()),
                Ending::Restart { reconnect_after_ms, .. } => (1012, crate::drain_reason(reconnect_after_ms)),
                Ending::Abort | Ending::Finish { .. } => (1006, "session ended".to_string()),
            };
            let data = serde_json::json!({ "code": code, "reason": reason });
            st.closed = Some(format!("event: close\ndata: {data}\n\n"));
            Some(())
        } else {
            None
        }
    };
    shared.notify.notify_one();
    drop((session, guard));
    // Keep the key a little while so a stream still attached can read the
    // last events and the close event; then forget it.
    tokio::time::sleep(Duration::from_secs(5)).await;
    lock(&sessions.sessions).remove(&shared.key);
}

/// The SSE stream of one session: call [`next_chunk`](Self::next_chunk)
/// and write each chunk into the response body, flushing it.
pub struct EventStream {
    shared: Arc<Shared>,
    generation: u64,
    cursor: u64,
    prelude: Option<String>,
    keepalive: Duration,
}

impl std::fmt::Debug for EventStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventStream").field("session", &self.shared.key).field("cursor", &self.cursor).finish()
    }
}

/// Most bytes of events put into one chunk.
const CHUNK: usize = 64 << 10;

impl EventStream {
    /// The session key (the `session` event carries it too).
    pub fn key(&self) -> &str {
        &self.shared.key
    }

    /// The next piece of the response body, `None` once the stream is over
    /// (the session ended, or another stream took it over). Waits for
    /// events; an idle stream gets a comment line every keep-alive period.
    pub async fn next_chunk(&mut self) -> Option<String> {
        if let Some(prelude) = self.prelude.take() {
            return Some(prelude);
        }
        let shared = self.shared.clone();
        loop {
            let notified = shared.notify.notified();
            if let Some(chunk) = self.take()? {
                return Some(chunk);
            }
            tokio::select! {
                () = notified => {}
                () = tokio::time::sleep(self.keepalive) => return Some(": keep-alive\n\n".to_string()),
            }
        }
    }

    /// What is ready to send: `Some(None)` if nothing yet, `None` if over.
    fn take(&mut self) -> Option<Option<String>> {
        let mut st = lock(&self.shared.state);
        if st.generation != self.generation {
            return None;
        }
        let mut out = String::new();
        if std::mem::take(&mut st.ring.ping_event) {
            let _ = write!(out, "event: ping\ndata: {{\"type\":\"ping\",\"ts\":{}}}\n\n", now_ms());
        }
        let key = self.shared.key.clone();
        let from = self.cursor;
        for (id, text) in st.ring.events.iter().filter(|(id, _)| *id > from) {
            if out.len() >= CHUNK {
                break;
            }
            let _ = writeln!(out, "id: {key}:{id}");
            for line in text.split('\n') {
                let _ = writeln!(out, "data: {}", line.trim_end_matches('\r'));
            }
            out.push('\n');
            self.cursor = *id;
        }
        if self.cursor > st.ring.sent {
            let cursor = self.cursor;
            st.ring.rewind(cursor);
            st.ring.evict();
            // Room in the ring: let the driver pump more.
            if let Some(s) = &st.session {
                s.wake();
            }
        }
        if out.is_empty() {
            if let Some(close) = &st.closed {
                if self.cursor + 1 >= st.ring.next_id {
                    let close = close.clone();
                    // The next call ends the stream.
                    st.generation += 1;
                    return Some(Some(close));
                }
            }
            return Some(None);
        }
        Some(Some(out))
    }
}

impl Drop for EventStream {
    fn drop(&mut self) {
        let mut st = lock(&self.shared.state);
        if st.generation == self.generation {
            st.attached = false;
        }
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}
