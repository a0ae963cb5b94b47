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

/// One topic's local subscribers, behind its own lock: delivery to one
/// topic never waits on another, and no hub-wide lock is held while frames
/// are encoded or pushed. With delta subscribers, the previous content of
/// each stream (to patch against) is kept here too.
#[derive(Default)]
struct Subs {
    subs: HashMap<u64, Sub>,
    delta_subs: usize,
    deltas: DeltaCache,
}

impl std::ops::Deref for Subs {
    type Target = HashMap<u64, Sub>;
    fn deref(&self) -> &Self::Target {
        &self.subs
    }
}

impl std::ops::DerefMut for Subs {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.subs
    }
}

type TopicSubs = Arc<Mutex<Subs>>;

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
            if let Some(subs) = hub.topic(topic) {
                for sub in lock(&subs).values().filter(|s| s.conn.json && s.presence) {
                    hub.notify(&sub.conn, frame.clone());
                }
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

    /// Topics with at least one local subscriber.
    pub fn topic_count(&self) -> usize {
        lock(&self.topics).len()
    }

    /// Whether connection `conn` subscribes to `topic` here.
    pub(crate) fn is_subscribed(&self, conn: u64, topic: &str) -> bool {
        self.topic(topic).is_some_and(|subs| lock(&subs).contains_key(&conn))
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
        self.topic(topic).map_or_else(Vec::new, |subs| lock(&subs).values().map(|s| self.presence_member(&s.conn)).collect())
    }

    /// Topics with local subscribers and their local subscriber counts.
    pub fn topic_counts(&self) -> Vec<(Arc<str>, usize)> {
        let topics: Vec<(Arc<str>, TopicSubs)> = lock(&self.topics).iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        topics.into_iter().map(|(k, v)| (k, lock(&v).len())).collect()
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
        let conn = Arc::new(ConnShared::new(id, json));
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
            let mut subs = lock(topics.entry(topic.clone()).or_default());
            let sub = Sub { conn: conn.clone(), pending: Some(Box::default()), epoch: None, last: 0, announced: false, delta, presence };
            subs.delta_subs += usize::from(delta);
            subs.insert(conn.id, sub);
            if !self.shares_presence {
                let frame = EncodedFrame::text(&envelope::presence_of(topic, "join", &conn.session(), user.as_deref(), subs.len()));
                for sub in subs.values().filter(|s| s.conn.json && s.presence) {
                    self.notify(&sub.conn, frame.clone());
                }
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
            let mut subs = lock(&entry);
            let Some(sub) = subs.remove(&conn.id) else { return false };
            if sub.delta {
                subs.delta_subs -= 1;
                conn.forget_topic(topic);
                if subs.delta_subs == 0 {
                    subs.deltas.clear(&self.delta_bytes);
                }
            }
            let count = subs.len();
            if count == 0 {
                topics.remove(topic);
            } else if !self.shares_presence {
                let frame = EncodedFrame::text(&envelope::presence_of(topic, "leave", &conn.session(), user.as_deref(), count));
                for sub in subs.values().filter(|s| s.conn.json && s.presence) {
                    self.notify(&sub.conn, frame.clone());
                }
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
    pub(crate) fn deliver(&self, msg: &Published) {
        let mut frames = Frames::default();
        let (mut delivered, mut bytes, mut dropped) = (0u64, 0u64, 0u64);
        let Some(topic) = self.topic(&msg.topic) else { return };
        let mut subs = lock(&topic);
        let keyed = self.keyed(&mut subs, msg);
        for sub in subs.subs.values_mut() {
            if let Some(held) = &mut sub.pending {
                if held.len() >= self.config.queue_max_messages {
                    held.pop_front();
                    sub.conn.dropped_unreported.fetch_add(1, Ordering::Relaxed);
                    dropped += 1;
                }
                held.push_back(msg.clone());
                continue;
            }
            let (n, b, d) = self.deliver_to(sub, msg, &mut frames, keyed.as_ref());
            (delivered, bytes, dropped) = (delivered + n, bytes + b, dropped + d);
        }
        drop(subs);
        Metrics::add(&self.metrics.messages_out, delivered);
        Metrics::add(&self.metrics.bytes_out, bytes);
        Metrics::add(&self.metrics.dropped_messages, dropped);
    }

    /// What the queues need to know of a message with a key (conflation,
    /// delta patches), made once per message; `None` for a plain message on
    /// a topic without delta subscribers.
    fn keyed(&self, subs: &mut Subs, msg: &Published) -> Option<Arc<KeyedMessage>> {
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
        let Some(conn) = lock(&topic).get(&request.conn).filter(|s| s.pending.is_some()).map(|s| s.conn.clone()) else { return };
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
            let mut subs = lock(&topic);
            let count = subs.len();
            let Some(sub) = subs.get_mut(&request.conn) else { return };
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
        let same_epoch = resume.epoch.as_deref().map_or(true, |e| e == &*history.epoch);
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
        let Some(topic_subs) = self.topic(topic) else { return };
        let mut subs = lock(&topic_subs);
        let epoch: Arc<str> = Arc::from(epoch);
        for sub in subs.values_mut().filter(|s| s.pending.is_none()) {
            let same = sub.epoch.as_deref() == Some(&*epoch);
            if same && sub.last >= last_seq {
                continue;
            }
            let why = if same { "messages could not be delivered (broker outage)" } else { "the topic's history was reset (new epoch)" };
            self.tell_gap(&sub.conn, topic, &epoch, last_seq + 1, why, None);
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

