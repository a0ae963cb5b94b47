//! The hub: registry of connections and topics, delivery (with the
//! per-subscriber position that makes resume exact), heartbeat, shutdown.

use crate::broker::{Body, Broker, BrokerError, DeliverySink, History, Origin, PresenceChange, Published, Resume, SubscribeRequest};
use crate::config::HubConfig;
use crate::envelope;
use crate::keyed::{self, DeltaCache, KeyedMessage};
use crate::metrics::Metrics;
use crate::queue::{flag, ConnShared, Pushed};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tether::v1::heartbeat::{self, Action};
use tether_proto::EncodedFrame;

/// One connection's subscription to one topic.
struct Sub {
    conn: Arc<ConnShared>,
    /// Live messages held back while the broker answers the subscription
    /// (its starting point and any replay): `Some` until then.
    /// Boxed: a subscriber entry lives as long as the subscription, the
    /// held messages only until the broker answers.
    pending: Option<Box<VecDeque<Published>>>,
    /// Position of the last message queued to this subscriber: what lets
    /// delivery skip what a replay already sent and notice any gap.
    epoch: Option<Arc<str>>,
    last: u64,
    /// The join was announced through the broker (so the leave will be).
    announced: bool,
    /// The subscription asked for delta patches (`"delta":"merge-patch"`).
    delta: bool,
    /// It receives the topic's presence events (its grants allow it).
    presence: bool,
}

/// The part of a connection run by no event loop (tokio tasks, HTTP
/// sessions): the last part of every topic.
pub(crate) const NO_LOOP: u16 = u16::MAX;

thread_local! {
    /// The event loop this thread runs ([`Hub::enter_loop`]), if any.
    static LOOP_PART: std::cell::Cell<u16> = const { std::cell::Cell::new(NO_LOOP) };
}

/// Subscribers of one topic on one event loop (or on no loop).
type Part = HashMap<u64, Sub>;

/// One topic's local subscribers, split by the event loop that runs them.
/// Delivery to one topic never waits on another, and no hub-wide lock is
/// held while frames are encoded or pushed. `meta` orders the topic's
/// messages and holds what is made once per message (delta patches); each
/// loop then fans a message out to its own part under that part's lock
/// alone ([`Hub::run_loop`]), so loops do not contend per delivery. The last
/// part holds the connections of other drivers, delivered to at once.
/// Lock order: the hub's topic map, `meta`, then one part (of this topic, or,
/// when a full inbox is fanned out by the delivering thread, a loop's
/// inbox-draining lock and then parts of any topic, one at a time; that
/// path takes no `meta`).
struct TopicEntry {
    meta: Mutex<Meta>,
    parts: Box<[Mutex<Part>]>,
}

#[derive(Default)]
struct Meta {
    delta_subs: usize,
    deltas: DeltaCache,
    /// Subscribers in each part (read without locking the parts).
    part_len: Box<[u32]>,
}

impl Meta {
    /// Subscribers in all parts.
    fn len(&self) -> usize {
        self.part_len.iter().map(|&n| n as usize).sum()
    }
}

impl TopicEntry {
    fn new(loops: usize) -> TopicEntry {
        TopicEntry {
            meta: Mutex::new(Meta { part_len: vec![0; loops + 1].into_boxed_slice(), ..Meta::default() }),
            parts: (0..=loops).map(|_| Mutex::new(Part::new())).collect(),
        }
    }

    /// The index of `conn`'s part.
    fn part_of(&self, conn: &ConnShared) -> usize {
        usize::from(conn.part).min(self.parts.len() - 1)
    }

    /// Call `f` with every subscriber, one part locked at a time.
    fn each(&self, mut f: impl FnMut(&Sub)) {
        for part in self.parts.iter() {
            for sub in lock(part).values() {
                f(sub);
            }
        }
    }

    fn contains(&self, conn: u64) -> bool {
        self.parts.iter().any(|p| lock(p).contains_key(&conn))
    }
}

type TopicSubs = Arc<TopicEntry>;

/// What a loop's inbox holds: work for its part of a topic, in the topic's order.
enum Fanout {
    Message { topic: TopicSubs, msg: Arc<Published>, keyed: Option<Arc<KeyedMessage>> },
    Resync { topic: TopicSubs, name: Arc<str>, epoch: Arc<str>, last_seq: u64 },
}

/// Messages an event loop's inbox holds before the thread that delivers
/// the next one fans the inbox out itself ([`Hub::deliver`]).
pub(crate) const MAX_INBOX_MESSAGES: usize = 4096;
/// Bytes of message bodies an inbox holds before the same.
pub(crate) const MAX_INBOX_BYTES: usize = 16 << 20;

/// One event loop as the hub sees it.
struct LoopInbox {
    queue: Mutex<Inbox>,
    /// Held while the inbox is fanned out (by its loop, or by a publisher
    /// when it is full): batches go out one after the other, in order.
    draining: Mutex<()>,
    wake: Arc<dyn Fn() + Send + Sync>,
}

#[derive(Default)]
struct Inbox {
    items: Vec<Fanout>,
    bytes: usize,
}

impl LoopInbox {
    /// Queue `item`, of `bytes`; the loop is woken when its inbox was
    /// empty (it takes the whole inbox each time it wakes). True if the
    /// inbox is past its bounds.
    fn push(&self, item: Fanout, bytes: usize) -> bool {
        let (first, full) = {
            let mut queue = lock(&self.queue);
            queue.items.push(item);
            queue.bytes += bytes;
            (queue.items.len() == 1, queue.items.len() >= MAX_INBOX_MESSAGES || queue.bytes >= MAX_INBOX_BYTES)
        };
        if first {
            (self.wake)();
        }
        full
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The real-time hub. Create with [`Hub::new`], run each accepted socket with
/// [`Hub::run_connection`].
pub struct Hub {
    pub(crate) config: HubConfig,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) broker: Arc<dyn Broker>,
    shares_presence: bool,
    /// Open connections.
    conns: Mutex<HashMap<u64, Arc<ConnShared>>>,
    /// Topics with local subscribers. Lock order: this map, then a topic
    /// (only to add or remove a subscriber); delivery clones the topic's
    /// `Arc` and locks the topic alone. A broker may call in holding its own
    /// lock (broker, then hub); the hub never calls a broker holding one.
    topics: Mutex<HashMap<Arc<str>, TopicSubs>>,
    /// The event loops that run sessions, if any ([`Hub::attach_loops`]).
    loops: std::sync::OnceLock<Box<[LoopInbox]>>,
    /// The clock of rate limits (nanoseconds since this instant; tokio's,
    /// so tests with paused time control it).
    started: tokio::time::Instant,
    /// The payload of this heartbeat round's ping: only a pong that carries
    /// it proves a client alive (RFC 6455 §5.5.3: a pong echoes the ping's
    /// application data; an unsolicited pong is not an answer).
    ping_token: AtomicU64,
    /// Heartbeat rounds without outbound progress before a connection is dropped.
    stall_rounds: u8,
    /// Bytes of previous contents kept for delta patches, over all topics.
    delta_bytes: AtomicUsize,
    /// `$room:` topics: the latest state per player, published once per tick.
    pub(crate) rooms: crate::room::Rooms,
    /// Server API operations waiting for the broker, and ordered disconnects.
    pub(crate) api: crate::api::Waiters,
    /// Where lifecycle events go (webhooks), if anywhere.
    pub(crate) events: std::sync::OnceLock<Arc<dyn crate::events::EventSink>>,
    /// Checks tokens sent in `auth` and `refresh` envelopes.
    authenticator: std::sync::OnceLock<Arc<dyn crate::auth::Authenticator>>,
    /// Namespaces and their rules (src/namespace.rs).
    pub(crate) namespaces: std::sync::OnceLock<crate::namespace::Namespaces>,
    /// Longest reconnect hint of a drain, in ms (src/drain.rs).
    pub(crate) drain_hint_ms: std::sync::atomic::AtomicU32,
    /// The backend's hooks (src/hooks.rs), if any.
    pub(crate) hooks: std::sync::OnceLock<Arc<dyn crate::hooks::Hooks>>,
    /// Where hook calls run (any driver's thread may start one).
    pub(crate) runtime: tokio::runtime::Handle,
}

struct Sink(Weak<Hub>);

impl DeliverySink for Sink {
    fn deliver(&self, msg: &Published) {
        if let Some(hub) = self.0.upgrade() {
            if &*msg.topic == crate::api::CONTROL_TOPIC {
                return hub.on_control(msg);
            }
            hub.deliver(msg);
        }
    }
    fn ack(&self, origin: &Origin, topic: &str, epoch: &str, seq: u64) {
        let Some(hub) = self.0.upgrade() else { return };
        if origin.id.is_none() && hub.api.acked(origin.conn, epoch, seq) {
            return;
        }
        if let Some(id) = &origin.id {
            hub.reply_to(origin.conn, EncodedFrame::text(&envelope::ack(id, Some(topic), Some((epoch, seq)))));
        }
    }
    fn reject(&self, origin: &Origin, topic: &str, error: &BrokerError) {
        if let Some(hub) = self.0.upgrade() {
            if origin.id.is_none() && hub.api.rejected(origin.conn, error) {
                return;
            }
            Metrics::add(&hub.metrics.client_errors, 1);
            let text = envelope::error("unavailable", &format!("message to {topic:?} not published: {error}"), origin.id.as_ref());
            hub.reply_to(origin.conn, EncodedFrame::text(&text));
        }
    }
    fn subscribed(&self, request: SubscribeRequest, history: History) {
        if let Some(hub) = self.0.upgrade() {
            if hub.api.history(&request, &history) {
                return;
            }
            hub.subscribed(request, history);
        }
    }
    fn presence(&self, topic: &str, joined: bool, session: &str, count: u64) {
        if let Some(hub) = self.0.upgrade() {
            let (session, user) = crate::presence::split_member(session);
            let frame = EncodedFrame::text(&envelope::presence_of(topic, if joined { "join" } else { "leave" }, session, user, count as usize));
            if let Some(entry) = hub.topic(topic) {
                hub.notify_presence(&entry, &frame);
            }
        }
    }
    fn resync(&self, topic: &str, epoch: &str, last_seq: u64) {
        if let Some(hub) = self.0.upgrade() {
            hub.resync(topic, epoch, last_seq);
        }
    }
}

impl Hub {
    /// A hub using `broker` for publishing. Starts the heartbeat task (needs a
    /// tokio runtime).
    pub fn new(config: HubConfig, broker: Arc<dyn Broker>) -> Arc<Hub> {
        let rounds = config.write_stall_timeout.as_nanos().div_ceil(config.heartbeat_interval.as_nanos().max(1));
        let stall_rounds = rounds.clamp(1, u128::from(u8::MAX)) as u8;
        let hub = Arc::new(Hub {
            config,
            metrics: Arc::new(Metrics::default()),
            shares_presence: broker.shares_presence(),
            broker,
            conns: Mutex::new(HashMap::new()),
            topics: Mutex::new(HashMap::new()),
            loops: std::sync::OnceLock::new(),
            started: tokio::time::Instant::now(),
            ping_token: AtomicU64::new(0),
            stall_rounds,
            delta_bytes: AtomicUsize::new(0),
            rooms: crate::room::Rooms::default(),
            api: crate::api::Waiters::default(),
            events: std::sync::OnceLock::new(),
            authenticator: std::sync::OnceLock::new(),
            namespaces: std::sync::OnceLock::new(),
            drain_hint_ms: std::sync::atomic::AtomicU32::new(0),
            hooks: std::sync::OnceLock::new(),
            runtime: tokio::runtime::Handle::current(),
        });
        hub.broker.start(Arc::new(Sink(Arc::downgrade(&hub))));
        let weak = Arc::downgrade(&hub);
        let interval = hub.config.heartbeat_interval;
        tokio::spawn(async move { heartbeat(weak, interval).await });
        tokio::spawn(crate::room::tick_loop(Arc::downgrade(&hub), hub.config.room_tick.max(Duration::from_millis(1))));
        hub
    }

    /// Install what checks tokens sent in `auth` (first message) and
    /// `refresh` envelopes. Once per hub: `false` if one was already set.
    pub fn set_authenticator(&self, authenticator: Arc<dyn crate::auth::Authenticator>) -> bool {
        self.authenticator.set(authenticator).is_ok()
    }

    /// Install the backend's hooks (subscribe and publish in namespaces
    /// that ask for them, `rpc`). Once per hub: `false` if already set.
    pub fn set_hooks(&self, hooks: Arc<dyn crate::hooks::Hooks>) -> bool {
        self.hooks.set(hooks).is_ok()
    }

    pub(crate) fn authenticator(&self) -> Option<&Arc<dyn crate::auth::Authenticator>> {
        self.authenticator.get()
    }

    /// Count an auth decision (see [`Metrics::count_auth`]).
    pub(crate) fn count_auth(&self, result: &'static str, reason: &'static str) {
        self.metrics.count_auth(result, reason);
    }

    /// The counters behind `/metrics`.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The broker.
    pub fn broker(&self) -> &Arc<dyn Broker> {
        &self.broker
    }

    /// The settings.
    pub fn config(&self) -> &HubConfig {
        &self.config
    }

    /// Open connections.
    pub fn connection_count(&self) -> usize {
        lock(&self.conns).len()
    }

    /// Run the hub's sessions on event loops that fan messages out to their
    /// own connections: `wakers[i]` wakes loop `i`, which then calls
    /// [`Hub::run_loop`]`(i)`; each loop's thread calls
    /// [`Hub::enter_loop`] first, and the sessions it opens are its own.
    /// Call once, before any session is opened on a loop; false if loops
    /// were attached already.
    ///
    /// Without it (or for sessions opened on other threads) the thread that
    /// delivers a message pushes it into every subscriber's queue itself:
    /// with several loops, their threads would then contend on every
    /// queue of every message.
    pub fn attach_loops(&self, wakers: Vec<Arc<dyn Fn() + Send + Sync>>) -> bool {
        let loops: Box<[LoopInbox]> = wakers.into_iter().map(|wake| LoopInbox { queue: Mutex::new(Inbox::default()), draining: Mutex::new(()), wake }).collect();
        if loops.len() >= usize::from(NO_LOOP) {
            return false;
        }
        self.loops.set(loops).is_ok()
    }

    /// This thread is event loop `index` of [`Hub::attach_loops`].
    pub fn enter_loop(&self, index: usize) {
        if self.loops.get().is_some_and(|l| index < l.len()) {
            LOOP_PART.with(|p| p.set(index as u16));
        }
    }

    /// Fan out what waits in loop `index`'s inbox to its connections (on
    /// that loop's thread): each message to the subscribers of its topic
    /// that this loop runs, in the order the topic's messages came.
    pub fn run_loop(&self, index: usize) {
        if let Some(inbox) = self.loops.get().and_then(|l| l.get(index)) {
            self.drain_inbox(inbox, index);
        }
    }

    /// Put `item` (of `bytes`) in loop `index`'s inbox. If that fills it,
    /// the loop is behind its publishers: this thread fans the inbox out
    /// (after the batch the loop has taken, if any), so an inbox stays
    /// bounded and publishing slows down to what the loops deliver.
    fn hand_to_loop(&self, inbox: &LoopInbox, index: usize, item: Fanout, bytes: usize) {
        if inbox.push(item, bytes) {
            Metrics::add(&self.metrics.inbox_overflows, 1);
            self.drain_inbox(inbox, index);
        }
    }

    /// Fan out what waits in `inbox` (loop `index`'s) to that loop's part of each topic.
    fn drain_inbox(&self, inbox: &LoopInbox, index: usize) {
        let _draining = lock(&inbox.draining);
        let mut items = {
            let mut queue = lock(&inbox.queue);
            queue.bytes = 0;
            std::mem::take(&mut queue.items)
        };
        for item in items.drain(..) {
            match item {
                Fanout::Message { topic, msg, keyed } => {
                    let Some(part) = topic.parts.get(index) else { continue };
                    self.deliver_part(&mut lock(part), &msg, keyed.as_ref());
                }
                Fanout::Resync { topic, name, epoch, last_seq } => {
                    let Some(part) = topic.parts.get(index) else { continue };
                    self.resync_part(&mut lock(part), &name, &epoch, last_seq);
                }
            }
        }
        // The buffer goes back if the inbox is still empty: a steady flow
        // does not allocate one per wake-up.
        let mut queue = lock(&inbox.queue);
        if queue.items.is_empty() && queue.items.capacity() < items.capacity() && items.capacity() <= MAX_INBOX_MESSAGES {
            queue.items = items;
        }
    }

    /// Topics with at least one local subscriber.
    pub fn topic_count(&self) -> usize {
        lock(&self.topics).len()
    }

    /// Whether connection `conn` subscribes to `topic` here.
    pub(crate) fn is_subscribed(&self, conn: u64, topic: &str) -> bool {
        self.topic(topic).is_some_and(|entry| entry.contains(conn))
    }

    /// A topic's subscribers, if it has any here.
    /// The name of `name` as a shared string: the topic map's own key when
    /// the topic has local subscribers (a room's name is not copied per client).
    /// The topic of the room at URL path `path`, shared with the hub's own
    /// copy of the name while the room has subscribers (for
    /// [`Hub::open_session_in`]).
    pub fn room_name(&self, path: &str) -> Arc<str> {
        self.topic_name(path)
    }

    pub(crate) fn topic_name(&self, name: &str) -> Arc<str> {
        lock(&self.topics).get_key_value(name).map_or_else(|| Arc::from(name), |(k, _)| k.clone())
    }

    /// The open connection `id`.
    pub(crate) fn connection(&self, id: u64) -> Option<Arc<ConnShared>> {
        lock(&self.conns).get(&id).cloned()
    }

    /// The sessions subscribed to `topic` on this node.
    pub(crate) fn local_subscribers(&self, topic: &str) -> Vec<String> {
        let mut members = Vec::new();
        if let Some(entry) = self.topic(topic) {
            entry.each(|s| members.push(self.presence_member(&s.conn)));
        }
        members
    }

    /// Topics with local subscribers and their local subscriber counts.
    pub fn topic_counts(&self) -> Vec<(Arc<str>, usize)> {
        let topics: Vec<(Arc<str>, TopicSubs)> = lock(&self.topics).iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        topics.into_iter().map(|(k, v)| (k, lock(&v.meta).len())).collect()
    }

    fn topic(&self, name: &str) -> Option<TopicSubs> {
        lock(&self.topics).get(name).cloned()
    }

    /// Ask every connection to close with 1001 (server going away).
    pub fn shutdown(&self) {
        for conn in lock(&self.conns).values() {
            conn.set(flag::SHUTDOWN);
        }
    }

    /// The open connections, for a drain.
    pub(crate) fn snapshot_conns(&self) -> Vec<Arc<ConnShared>> {
        lock(&self.conns).values().cloned().collect()
    }

    pub(crate) fn register(&self, json: bool) -> Arc<ConnShared> {
        // Process-wide, so sessions stay unique even with several hubs in one process.
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let part = if self.loops.get().is_some() { LOOP_PART.with(|p| p.get()) } else { NO_LOOP };
        let conn = Arc::new(ConnShared::on_loop(id, json, part));
        lock(&self.conns).insert(id, conn.clone());
        self.metrics.connections.fetch_add(1, Ordering::Relaxed);
        Metrics::add(&self.metrics.connections_total, 1);
        conn
    }

    pub(crate) fn unregister(&self, conn: &Arc<ConnShared>, topics: &[Arc<str>]) {
        lock(&self.conns).remove(&conn.id);
        for topic in topics {
            self.unsubscribe(conn, topic);
        }
        self.metrics.connections.fetch_sub(1, Ordering::Relaxed);
    }

    /// Add `conn` to `topic`: live messages are held until the broker says
    /// where the subscription starts ([`Hub::subscribed`]), which replays
    /// what a resuming client missed and acks `id`. Delta patches if
    /// `delta` (`tether.v1` clients only: plain clients get text lines);
    /// `grants` (`None`: anonymous) decide whether it gets the topic's
    /// presence events.
    pub(crate) fn subscribe_granted(&self, conn: &Arc<ConnShared>, topic: &Arc<str>, resume: Option<Resume>, id: Option<serde_json::Value>, delta: bool, grants: Option<&Arc<crate::auth::Grants>>) {
        let delta = delta && conn.json;
        let resuming = resume.is_some();
        let presence = grants.is_none_or(|g| g.may_see_presence(topic)) && self.presence_on(topic);
        // Latest value on subscribe: ask the broker for the kept window and
        // replay only its newest message (see `subscribed`).
        let resume = match resume {
            None if self.latest_on_subscribe(topic) => Some(Resume { since: 0, epoch: Some(crate::namespace::LATEST.into()) }),
            other => other,
        };
        let user = self.user_of(conn.id);
        let occupied = {
            let mut topics = lock(&self.topics);
            let occupied = !topics.contains_key(topic);
            let loops = self.loops.get().map_or(0, |l| l.len());
            let entry = topics.entry(topic.clone()).or_insert_with(|| Arc::new(TopicEntry::new(loops)));
            let mut meta = lock(&entry.meta);
            let sub = Sub { conn: conn.clone(), pending: Some(Box::default()), epoch: None, last: 0, announced: false, delta, presence };
            let part = entry.part_of(conn);
            if lock(&entry.parts[part]).insert(conn.id, sub).is_none() {
                meta.part_len[part] += 1;
            }
            meta.delta_subs += usize::from(delta);
            if !self.shares_presence {
                let frame = EncodedFrame::text(&envelope::presence_of(topic, "join", &conn.session(), user.as_deref(), meta.len()));
                self.notify_presence(entry, &frame);
            }
            occupied
        };
        if occupied {
            self.emit(|| crate::events::LifecycleEvent::Occupied { topic: topic.clone() });
        }
        self.emit(|| crate::events::LifecycleEvent::Join { topic: topic.clone(), session: conn.session(), user: user.clone() });
        if resuming {
            Metrics::add(&self.metrics.resumes, 1);
        }
        if crate::room::is_room(topic) {
            self.rooms.joined(topic);
        }
        // Not under the hub lock: the broker may answer right away.
        self.broker.subscribe(SubscribeRequest { conn: conn.id, topic: topic.clone(), resume, id });
    }

    pub(crate) fn unsubscribe(&self, conn: &Arc<ConnShared>, topic: &Arc<str>) -> bool {
        let user = self.user_of(conn.id);
        let (announced, count) = {
            let mut topics = lock(&self.topics);
            let Some(entry) = topics.get(topic).cloned() else { return false };
            let mut meta = lock(&entry.meta);
            let part = entry.part_of(conn);
            let Some(sub) = lock(&entry.parts[part]).remove(&conn.id) else { return false };
            meta.part_len[part] -= 1;
            if sub.delta {
                meta.delta_subs -= 1;
                conn.forget_topic(topic);
                if meta.delta_subs == 0 {
                    meta.deltas.clear(&self.delta_bytes);
                }
            }
            let count = meta.len();
            if count == 0 {
                topics.remove(topic);
            } else if !self.shares_presence {
                let frame = EncodedFrame::text(&envelope::presence_of(topic, "leave", &conn.session(), user.as_deref(), count));
                self.notify_presence(&entry, &frame);
            }
            (sub.announced, count)
        };
        self.emit(|| crate::events::LifecycleEvent::Leave { topic: topic.clone(), session: conn.session(), user: user.clone() });
        if count == 0 {
            self.emit(|| crate::events::LifecycleEvent::Vacated { topic: topic.clone() });
        }
        if crate::room::is_room(topic) {
            self.rooms.left(topic, &conn.session());
        }
        if announced {
            let member = crate::presence::member(conn.session(), user.as_deref());
            self.broker.presence(PresenceChange { topic: topic.clone(), session: Arc::from(member), joined: false, local_count: count });
        }
        self.broker.unsubscribe(topic);
        true
    }

    /// Queue a reply to `conn`'s own request (counted against its bounds, never dropped).
    pub(crate) fn reply(&self, conn: &ConnShared, frame: EncodedFrame) {
        let dropped = conn.push_reply(frame, self.config.queue_max_messages, self.config.queue_max_bytes, self.config.slow_consumer);
        Metrics::add(&self.metrics.dropped_messages, dropped);
    }

    /// Queue a presence event to the subscribers of `entry` that receive them.
    fn notify_presence(&self, entry: &TopicEntry, frame: &EncodedFrame) {
        entry.each(|sub| {
            if sub.conn.json && sub.presence {
                self.notify(&sub.conn, frame.clone());
            }
        });
    }

    /// Queue a notice (presence) to `conn`: a broadcast, dropped like one.
    fn notify(&self, conn: &ConnShared, frame: EncodedFrame) {
        match conn.push(frame, self.config.queue_max_messages, self.config.queue_max_bytes, self.config.slow_consumer) {
            Pushed::DroppedOldest(n) | Pushed::Replaced(n) => Metrics::add(&self.metrics.dropped_messages, n),
            Pushed::Dropped => Metrics::add(&self.metrics.dropped_messages, 1),
            Pushed::Queued | Pushed::Closing => {}
        }
    }

    fn reply_to(&self, conn: u64, frame: EncodedFrame) {
        let target = lock(&self.conns).get(&conn).cloned();
        if let Some(c) = target {
            self.reply(&c, frame);
        }
    }

    /// Nanoseconds since the hub started (the clock of rate limits).
    pub(crate) fn now_ns(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// This round's ping payload.
    pub(crate) fn ping_payload(&self) -> [u8; 8] {
        self.ping_token.load(Ordering::Acquire).to_be_bytes()
    }

    /// Deliver a published message to this node's subscribers: each format
    /// (plain text, JSON envelope) is encoded at most once and shared.
    ///
    /// Each event loop with subscribers of the topic gets the message once
    /// in its inbox and fans it out to them on its own thread; subscribers
    /// of other drivers get it here.
    pub(crate) fn deliver(&self, msg: &Published) {
        let Some(topic) = self.topic(&msg.topic) else { return };
        let mut meta = lock(&topic.meta);
        let keyed = self.keyed(&mut meta, msg);
        if let Some(loops) = self.loops.get() {
            let mut shared: Option<Arc<Published>> = None;
            for (i, (inbox, &n)) in loops.iter().zip(meta.part_len.iter()).enumerate() {
                if n == 0 {
                    continue;
                }
                let msg = shared.get_or_insert_with(|| Arc::new(msg.clone())).clone();
                let bytes = msg.body.len();
                self.hand_to_loop(inbox, i, Fanout::Message { topic: topic.clone(), msg, keyed: keyed.clone() }, bytes);
            }
        }
        let last = topic.parts.len() - 1;
        if meta.part_len[last] > 0 {
            self.deliver_part(&mut lock(&topic.parts[last]), msg, keyed.as_ref());
        }
    }

    /// Deliver `msg` to the subscribers of one part of its topic.
    fn deliver_part(&self, part: &mut Part, msg: &Published, keyed: Option<&Arc<KeyedMessage>>) {
        let mut frames = Frames::default();
        let (mut delivered, mut bytes, mut dropped) = (0u64, 0u64, 0u64);
        for sub in part.values_mut() {
            if let Some(held) = &mut sub.pending {
                if held.len() >= self.config.queue_max_messages {
                    held.pop_front();
                    sub.conn.dropped_unreported.fetch_add(1, Ordering::Relaxed);
                    dropped += 1;
                }
                held.push_back(msg.clone());
                continue;
            }
            let (n, b, d) = self.deliver_to(sub, msg, &mut frames, keyed);
            (delivered, bytes, dropped) = (delivered + n, bytes + b, dropped + d);
        }
        Metrics::add(&self.metrics.messages_out, delivered);
        Metrics::add(&self.metrics.bytes_out, bytes);
        Metrics::add(&self.metrics.dropped_messages, dropped);
    }

    /// What the queues need to know of a message with a key (conflation,
    /// delta patches), made once per message; `None` for a plain message on
    /// a topic without delta subscribers.
    fn keyed(&self, subs: &mut Meta, msg: &Published) -> Option<Arc<KeyedMessage>> {
        let conflate = msg.key.is_some() || keyed::conflated_topic(&self.config.conflate_prefixes, &msg.topic);
        if !conflate && subs.delta_subs == 0 {
            return None;
        }
        let patch = if subs.delta_subs > 0 { subs.deltas.patch(msg, &self.delta_bytes, self.config.delta_cache_bytes) } else { None };
        if patch.is_some() {
            Metrics::add(&self.metrics.delta_patches, 1);
        }
        let key = msg.key.clone().unwrap_or_else(|| Arc::from(""));
        Some(Arc::new(KeyedMessage { stream: (msg.topic.clone(), key), conflate, epoch: msg.epoch.clone(), seq: msg.seq, patch }))
    }

    /// Queue `msg` to one live subscriber unless it already has it; tell it
    /// first if messages are missing before it. Returns (delivered, bytes, dropped).
    fn deliver_to(&self, sub: &mut Sub, msg: &Published, frames: &mut Frames, keyed: Option<&Arc<KeyedMessage>>) -> (u64, u64, u64) {
        let missed = match &sub.epoch {
            Some(e) if Arc::ptr_eq(e, &msg.epoch) || **e == *msg.epoch => {
                if msg.seq <= sub.last {
                    return (0, 0, 0); // already replayed
                }
                (msg.seq > sub.last + 1).then_some("messages before this one could not be delivered")
            }
            Some(_) => Some("the topic's history was reset (new epoch)"),
            None => None,
        };
        sub.epoch = Some(msg.epoch.clone());
        sub.last = msg.seq;
        if let Some(why) = missed {
            self.tell_gap(&sub.conn, &msg.topic, &msg.epoch, msg.seq, why, None);
        }
        let frame = if sub.conn.json { frames.json.get_or_insert_with(|| json_frame(msg)) } else { frames.plain.get_or_insert_with(|| plain_frame(msg)) };
        let Some(frame) = frame else { return (0, 0, 0) };
        let (max_messages, max_bytes, policy) = (self.config.queue_max_messages, self.config.queue_max_bytes, self.config.slow_consumer);
        let keyed = keyed.map(|k| (k.clone(), sub.delta));
        match sub.conn.push_keyed(frame.clone(), keyed, max_messages, max_bytes, policy) {
            Pushed::Queued => (1, frame.len() as u64, 0),
            Pushed::Replaced(n) => {
                Metrics::add(&self.metrics.conflated_messages, 1);
                (1, frame.len() as u64, n)
            }
            Pushed::DroppedOldest(n) => (1, frame.len() as u64, n),
            Pushed::Dropped => (0, 0, 1),
            // Counted once per connection by the connection task.
            Pushed::Closing => (0, 0, 0),
        }
    }

    fn tell_gap(&self, conn: &ConnShared, topic: &str, epoch: &str, first_seq: u64, why: &str, id: Option<&serde_json::Value>) {
        Metrics::add(&self.metrics.history_gaps, 1);
        let text = if conn.json {
            envelope::history_gap(topic, epoch, first_seq, why, id)
        } else {
            format!("[tether] {why} ({topic})")
        };
        self.reply(conn, EncodedFrame::text(&text));
    }

    /// The broker's answer to a subscription: tell a resuming client about
    /// any gap, replay, ack, then release the held live messages, skipping
    /// those the replay (or the starting point) already covers.
    ///
    /// A replay is encoded outside the hub lock and never larger than the
    /// room left in the client's queue: if what it missed does not fit, it
    /// gets the newest part and a `history_gap` naming where that starts.
    /// Nothing here changes the topic for anyone else.
    fn subscribed(&self, request: SubscribeRequest, history: History) {
        let Some(topic) = self.topic(&request.topic) else { return };
        let Some(conn) = topic.parts.iter().find_map(|p| lock(p).get(&request.conn).filter(|s| s.pending.is_some()).map(|s| s.conn.clone())) else { return };
        let (replay, gap) = match &request.resume {
            Some(resume) if resume.epoch.as_deref() == Some(crate::namespace::LATEST) => {
                let newest = history.messages.last().and_then(|m| if conn.json { json_frame(m) } else { plain_frame(m) }.map(|f| (m.seq, f)));
                (newest.into_iter().collect(), None)
            }
            Some(resume) => self.plan_replay(&conn, resume, &history),
            None => (Vec::new(), None),
        };
        let mut frames = Frames::default();
        let announce = {
            let count = lock(&topic.meta).len();
            let mut part = lock(&topic.parts[topic.part_of(&conn)]);
            let Some(sub) = part.get_mut(&request.conn) else { return };
            let Some(held) = sub.pending.take() else { return };
            if let Some((first, why)) = gap {
                self.tell_gap(&conn, &request.topic, &history.epoch, first, why, request.id.as_ref());
            }
            let (max_messages, max_bytes, policy) = (self.config.queue_max_messages, self.config.queue_max_bytes, self.config.slow_consumer);
            let mut last = history.last_seq;
            for (seq, frame) in replay {
                conn.push(frame, max_messages, max_bytes, policy);
                last = last.max(seq);
            }
            sub.epoch = Some(history.epoch.clone());
            sub.last = last;
            if let Some(id) = &request.id {
                self.reply(&conn, EncodedFrame::text(&envelope::ack(id, Some(&request.topic), Some((&history.epoch, history.last_seq)))));
            }
            for msg in held.iter() {
                // Held back while the broker answered: conflatable, but sent in
                // full (the delta cache has moved past them).
                let conflate = msg.key.is_some() || keyed::conflated_topic(&self.config.conflate_prefixes, &msg.topic);
                let keyed = conflate.then(|| {
                    let key = msg.key.clone().unwrap_or_else(|| Arc::from(""));
                    Arc::new(KeyedMessage { stream: (msg.topic.clone(), key), conflate, epoch: msg.epoch.clone(), seq: msg.seq, patch: None })
                });
                self.deliver_to(sub, msg, &mut frames, keyed.as_ref());
            }
            sub.announced = self.shares_presence;
            self.shares_presence.then_some((conn, count))
        };
        if let Some((conn, local_count)) = announce {
            self.broker.presence(PresenceChange { topic: request.topic, session: Arc::from(self.presence_member(&conn)), joined: true, local_count });
        }
    }

    /// What a resuming client gets: the frames to replay (with their
    /// sequence numbers, oldest first, within the room left in its queue)
    /// and the gap to report first, if any.
    fn plan_replay(&self, conn: &ConnShared, resume: &Resume, history: &History) -> (Vec<(u64, EncodedFrame)>, Option<(u64, &'static str)>) {
        let same_epoch = resume.epoch.as_deref().is_none_or(|e| e == &*history.epoch);
        // A different epoch replays the whole window; `since` 0 asked for everything anyway.
        let after = if same_epoch { resume.since } else { 0 };
        let expected = after.saturating_add(1);
        let first_kept = history.messages.first().map_or(history.last_seq.saturating_add(1), |m| m.seq);
        let mut gap = if !same_epoch && resume.since > 0 {
            Some((first_kept, "the topic's history was reset (new epoch) since you received that message; reload"))
        } else if same_epoch && resume.since > history.last_seq {
            Some((first_kept, "this server has never sent that sequence number; reload"))
        } else if first_kept > expected {
            Some((first_kept, "messages you missed are no longer kept; reload"))
        } else {
            None
        };
        let (mut room_messages, mut room_bytes) = conn.room(self.config.queue_max_messages, self.config.queue_max_bytes);
        let mut replay = Vec::new();
        // Newest first, so what fits is the part closest to live delivery.
        for msg in history.messages.iter().rev().filter(|m| m.seq > after) {
            let Some(frame) = (if conn.json { json_frame(msg) } else { plain_frame(msg) }) else { continue };
            if room_messages == 0 || frame.len() > room_bytes {
                Metrics::add(&self.metrics.dropped_messages, 1);
                gap = Some((msg.seq.saturating_add(1), "what you missed is more than this connection can queue; reload"));
                break;
            }
            room_messages -= 1;
            room_bytes -= frame.len();
            replay.push((msg.seq, frame));
        }
        replay.reverse();
        (replay, gap)
    }

    /// The broker could not deliver some messages of `topic` here before
    /// `(epoch, last_seq)`: tell the subscribers that are behind.
    fn resync(&self, topic: &str, epoch: &str, last_seq: u64) {
        let Some(entry) = self.topic(topic) else { return };
        let meta = lock(&entry.meta);
        let epoch: Arc<str> = Arc::from(epoch);
        // In the topic's order: after the messages the loops have yet to fan out.
        if let Some(loops) = self.loops.get() {
            for (i, (inbox, &n)) in loops.iter().zip(meta.part_len.iter()).enumerate() {
                if n > 0 {
                    self.hand_to_loop(inbox, i, Fanout::Resync { topic: entry.clone(), name: Arc::from(topic), epoch: epoch.clone(), last_seq }, 0);
                }
            }
        }
        let last = entry.parts.len() - 1;
        self.resync_part(&mut lock(&entry.parts[last]), topic, &epoch, last_seq);
    }

    fn resync_part(&self, part: &mut Part, topic: &str, epoch: &Arc<str>, last_seq: u64) {
        for sub in part.values_mut().filter(|s| s.pending.is_none()) {
            let same = sub.epoch.as_deref() == Some(epoch);
            if same && sub.last >= last_seq {
                continue;
            }
            let why = if same { "messages could not be delivered (broker outage)" } else { "the topic's history was reset (new epoch)" };
            self.tell_gap(&sub.conn, topic, epoch, last_seq + 1, why, None);
            sub.epoch = Some(epoch.clone());
            sub.last = last_seq;
        }
    }

    /// One heartbeat: a connection that has not answered the previous
    /// round's ping is terminated, one that wrote nothing for the
    /// write-stall timeout is dropped, every other one is sent a new ping.
    fn heartbeat_round(&self) {
        let token = {
            use std::hash::{BuildHasher, Hasher};
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u64(self.now_ns());
            h.finish()
        };
        self.ping_token.store(token, Ordering::Release);
        let conns: Vec<Arc<ConnShared>> = lock(&self.conns).values().cloned().collect();
        for conn in conns {
            conn.shrink_if_empty();
            let flags = conn.flags.fetch_and(!flag::PROGRESS, Ordering::AcqRel);
            if flags & flag::PROGRESS != 0 {
                conn.stalled_rounds.store(0, Ordering::Relaxed);
            } else if conn.stalled_rounds.fetch_add(1, Ordering::Relaxed).saturating_add(1) >= self.stall_rounds {
                conn.set(flag::STALLED);
                continue;
            }
            // The shared rule (tether::v1::heartbeat) at this round's time,
            // with a timeout of one interval. RFC 6455 §5.5.2: a live peer
            // answers a ping; one awaiting a pong did not answer the previous one.
            match heartbeat::decide((), (flags & flag::AWAITING_PONG != 0).then_some(()), ()) {
                Some(Action::PeerDead) => conn.set(flag::TERMINATE),
                Some(Action::SendPing) | None => conn.set(flag::AWAITING_PONG | flag::PING_DUE),
            }
        }
    }
}

/// A message encoded at most once per format.
#[derive(Default)]
struct Frames {
    plain: Option<Option<EncodedFrame>>,
    json: Option<Option<EncodedFrame>>,
}

fn plain_frame(msg: &Published) -> Option<EncodedFrame> {
    Some(match &msg.body {
        Body::Text(t) => EncodedFrame::text(&format!("[{}] {}", msg.sender, t)),
        Body::Json(raw) => match serde_json::from_str::<String>(raw.get()) {
            Ok(s) => EncodedFrame::text(&format!("[{}] {}", msg.sender, s)),
            Err(_) => EncodedFrame::text(&format!("[{}] {}", msg.sender, raw.get())),
        },
        Body::Binary(b) => EncodedFrame::binary(b),
    })
}

fn json_frame(msg: &Published) -> Option<EncodedFrame> {
    let content = match &msg.body {
        Body::Text(t) => serde_json::to_string(&**t).ok()?,
        Body::Json(raw) => raw.get().to_string(),
        Body::Binary(_) => return None,
    };
    Some(EncodedFrame::text(&envelope::keyed_message(&msg.topic, &msg.epoch, msg.seq, &msg.sender, msg.timestamp_ms, msg.key.as_deref(), &content)))
}

async fn heartbeat(hub: Weak<Hub>, interval: Duration) {
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some(hub) = hub.upgrade() else { return };
        hub.heartbeat_round();
    }
}


#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::{Publish, Origin};
    use crate::MemoryBroker;

    fn publish(hub: &Hub, topic: &Arc<str>, i: usize) {
        let body = Body::Text(Arc::from(format!("m{i}")));
        let msg = Publish { topic: topic.clone(), sender: Arc::from("test"), timestamp_ms: 0, body, key: None, origin: Origin { conn: 0, id: None } };
        hub.broker.publish(msg).unwrap();
    }

    /// Loop 0 never runs (its waker does nothing): its inbox is fanned out
    /// by the publishing thread whenever it is full, so it never holds more
    /// than its bound, and its subscriber still gets every message once and
    /// in order. Loop 1's subscriber is served by loop 1's own fan-out.
    #[tokio::test]
    async fn a_loop_that_falls_behind_has_a_bounded_inbox_and_loses_nothing() {
        let config = HubConfig { queue_max_messages: 1 << 20, queue_max_bytes: 1 << 30, ..HubConfig::default() };
        let hub = Hub::new(config, Arc::new(MemoryBroker::new()));
        let wakes = Arc::new(AtomicUsize::new(0));
        let counted = wakes.clone();
        assert!(hub.attach_loops(vec![Arc::new(|| {}), Arc::new(move || {
            counted.fetch_add(1, Ordering::Relaxed);
        })]));
        assert!(!hub.attach_loops(Vec::new()), "attached once");
        let topic: Arc<str> = Arc::from("t");
        let on_loop = |index: usize| {
            let hub = hub.clone();
            let topic = topic.clone();
            std::thread::spawn(move || {
                hub.enter_loop(index);
                let conn = hub.register(false);
                hub.subscribe_granted(&conn, &topic, None, None, false, None);
                conn
            })
            .join()
            .unwrap()
        };
        let (a, b) = (on_loop(0), on_loop(1));
        assert_eq!((a.part, b.part), (0, 1));
        let n = 3 * MAX_INBOX_MESSAGES + 10;
        let inbox_len = |i: usize| lock(&hub.loops.get().unwrap()[i].queue).items.len();
        for i in 0..n {
            publish(&hub, &topic, i);
            assert!(inbox_len(0) < MAX_INBOX_MESSAGES, "loop 0's inbox stays under its bound");
            if i % 100 == 99 {
                hub.run_loop(1);
            }
        }
        assert_eq!(hub.metrics.inbox_overflows.load(Ordering::Relaxed), 3, "fanned out by the publisher at each bound");
        assert_eq!(inbox_len(0), n - 3 * MAX_INBOX_MESSAGES);
        assert!(wakes.load(Ordering::Relaxed) >= n / 100, "loop 1 woken when its inbox had news");
        // Nothing reached the queues of loop 0 that its fan-out has not done.
        hub.run_loop(0);
        hub.run_loop(1);
        for conn in [&a, &b] {
            let mut got = Vec::new();
            while let Some(frame) = conn.pop() {
                got.push(String::from_utf8_lossy(&frame.as_bytes()[2..]).into_owned());
            }
            let want: Vec<String> = (0..n).map(|i| format!("[test] m{i}")).collect();
            assert!(got == want, "every message once and in order, to the subscriber of each loop ({} of {n})", got.len());
        }
        assert_eq!(hub.metrics.dropped_messages.load(Ordering::Relaxed), 0);
    }
}
