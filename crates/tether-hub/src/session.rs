//! The sans-I/O session of one client connection: everything the hub does
//! for a connection (welcome, envelopes, rate limits, acks and errors,
//! moving queued frames into the socket's sender, heartbeat pings, the
//! slow-consumer and write-stall decisions, how the connection ends),
//! without any I/O. Every driver runs the same session: the tokio task of
//! [`Hub::run_connection`](crate::Hub::run_connection) and the event loop of
//! `tether serve`; `tests/behaviour.rs` tests it through the first.
//!
//! A driver, for each connection:
//! 1. [`Hub::open_session`] after the handshake; [`Session::set_waker`]
//!    with what wakes the connection (publishers and the heartbeat call it);
//! 2. on every wake-up, [`Session::pump`] with the socket's [`Outbox`]
//!    (it may say the connection must end);
//! 3. read only while [`Session::reading_paused`] is false, and hand each
//!    message to [`Session::on_message`];
//! 4. once an [`End`] is known (or the socket ended: [`End::Closed`]),
//!    [`Hub::end_session`] says how to finish ([`Ending`]).

use crate::auth::Grants;
use auth::AuthState;
use crate::broker::{Body, Origin, Publish, Resume};
use crate::config::SlowConsumerPolicy;
use crate::envelope::{self, ClientMessage};
use crate::hub::Hub;
use crate::limit::{Limiter, RateLimit, Verdict};
use crate::metrics::Metrics;
use crate::queue::{flag, ConnShared};
use std::ops::ControlFlow;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tether::{CloseCode, Message};
use tether_proto::EncodedFrame;

mod auth;
mod hooks;
use hooks::{Action, HookQueue};

/// What the HTTP layer knows about a connection.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    /// The default room: the URL path of the upgrade request.
    pub room: String,
    /// Who the connection is and what it may do, as found at the handshake
    /// (a JWT, a backend's connect hook): see [`Identity`].
    pub identity: Identity,
}

impl ConnInfo {
    /// A connection to `room` without authentication ([`Identity::Anonymous`]).
    pub fn new(room: impl Into<String>) -> ConnInfo {
        ConnInfo { room: room.into(), identity: Identity::Anonymous }
    }

    /// A connection to `room` with `identity`.
    pub fn with_identity(room: impl Into<String>, identity: Identity) -> ConnInfo {
        ConnInfo { room: room.into(), identity }
    }
}

/// The identity attached to a session when it opens: the hook point of
/// every authentication scheme (`tether serve`'s JWT verifier and its
/// backend connect hook produce one of these).
#[derive(Clone, Debug)]
pub enum Identity {
    /// No authentication (none configured, or only the shared token): may
    /// do everything; publishes under its session id.
    Anonymous,
    /// Authenticated: enforced on every request (see [`crate::auth`]).
    Granted(Arc<Grants>),
    /// Must send an `auth` envelope with a token first (a browser that
    /// cannot set headers): nothing else is allowed until then, and the
    /// connection is closed after [`HubConfig::auth_timeout`](crate::HubConfig::auth_timeout).
    AwaitingAuth,
}

/// Just the `id` of a request (to answer a refused one).
#[derive(serde::Deserialize)]
struct IdOnly {
    id: Option<serde_json::Value>,
}

/// Most topics one connection may subscribe to (bounds memory per client).
pub(crate) const MAX_SUBSCRIPTIONS: usize = 256;

pub(crate) fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Where a session puts frames: the sending side of a socket.
#[allow(clippy::result_unit_err)] // `()` is all a closing socket has to say
pub trait Outbox {
    /// Bytes queued and not yet written.
    fn pending_len(&self) -> usize;
    /// Queue a frame encoded once for many sockets; `Err` if the socket is closing.
    fn send_encoded(&mut self, frame: EncodedFrame) -> Result<(), ()>;
}

impl Outbox for tether_proto::Connection {
    fn pending_len(&self) -> usize {
        tether_proto::Connection::pending_len(self)
    }
    fn send_encoded(&mut self, frame: EncodedFrame) -> Result<(), ()> {
        self.sender().send_encoded(frame).map_err(drop)
    }
}

impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> Outbox for tether::WebSocket<S> {
    fn pending_len(&self) -> usize {
        tether::WebSocket::pending_len(self)
    }
    fn send_encoded(&mut self, frame: EncodedFrame) -> Result<(), ()> {
        self.start_send_encoded(frame).map_err(drop)
    }
}

/// Why a session ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// The socket ended: closed by the peer, a protocol error, end of stream.
    Closed,
    /// No answer to the previous heartbeat ping.
    Terminated,
    /// Fell behind under the close policy.
    Slow,
    /// Nothing could be written for the write-stall timeout.
    Stalled,
    /// Kept exceeding its rate limit.
    RateLimited,
    /// The server is shutting down.
    Shutdown,
    /// Its token expired and no `refresh` came within the grace period,
    /// or no `auth` came in time.
    Unauthenticated,
    /// Drained or shed ([`Hub::shed`]): the client should reconnect elsewhere.
    Drained,
}

/// How a driver finishes a connection once its session ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// Close TCP now, without a close handshake (the peer is not answering
    /// or not reading).
    Abort,
    /// Let the socket finish what it started (its close frame after a
    /// protocol error, the close echo, the linger), for at most `within`.
    Finish {
        /// Longest wait.
        within: Duration,
    },
    /// Send a close frame with `code` and `reason` and wait, at most
    /// `within`, for the peer's.
    Close {
        /// The close code (RFC 6455 §7.4).
        code: u16,
        /// The close reason.
        reason: &'static str,
        /// Longest wait for the handshake.
        within: Duration,
    },
    /// Send a close frame with 1012 (service restart) and the reason
    /// [`drain_reason`](crate::drain_reason)`(reconnect_after_ms)`, and wait,
    /// at most `within`, for the peer's.
    Restart {
        /// The client's reconnect hint.
        reconnect_after_ms: u32,
        /// Longest wait for the handshake.
        within: Duration,
    },
}

/// A session's topics: one inline (the room), more on the heap.
type Topics = smallvec::SmallVec<[Arc<str>; 1]>;

/// One client connection's state in the hub, driven by any I/O layer.
pub struct Session {
    conn: Arc<ConnShared>,
    room: Arc<str>,
    /// Its subscriptions (the room among them): inline while there is one,
    /// so an idle client in its room holds no block for the list.
    topics: Topics,
    auth: AuthState,
    /// Requests waiting for the backend's hooks.
    hooks: HookQueue,
    limiter: Limiter,
    /// What the socket had queued when last looked at: less now means the
    /// peer is reading (write progress, for the write-stall check).
    last_pending: usize,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("session", &self.conn.session()).field("room", &self.room).finish()
    }
}

impl Hub {
    /// Register a connection that finished its handshake: `json` when it
    /// speaks `tether.v1`. Queues the welcome and joins the room.
    pub fn open_session(self: &Arc<Self>, json: bool, info: ConnInfo) -> Session {
        let room = self.topic_name(&info.room);
        self.open_session_in(json, room, info.identity)
    }

    /// [`open_session`](Self::open_session) with the room already named
    /// by [`Hub::room_name`] (a driver that opens sessions on another
    /// thread than the handshake's names the room there: no string made by
    /// the handshake is then freed on the driver's thread).
    pub fn open_session_in(self: &Arc<Self>, json: bool, room: Arc<str>, identity: Identity) -> Session {
        let conn = self.register(json);
        let welcome = if json {
            envelope::welcome(&conn.session(), &room)
        } else {
            self.config.welcome.replace("{session}", &conn.session()).replace("{room}", &room)
        };
        self.reply(&conn, EncodedFrame::text(&welcome));
        let auth = match identity {
            Identity::Anonymous => AuthState::Anonymous,
            Identity::Granted(grants) => AuthState::Granted { grants, warned: false },
            Identity::AwaitingAuth => AuthState::Awaiting { until_ms: now_ms().saturating_add(self.config.auth_timeout.as_millis() as u64) },
        };
        // The room (URL path) is joined only if the identity may subscribe
        // to it; an authenticated connection that may not simply has none.
        let joins = match &auth {
            AuthState::Anonymous => true,
            AuthState::Granted { grants, .. } => grants.may_subscribe(&room),
            AuthState::Awaiting { .. } => false,
        };
        // Known before the room is joined: presence names the user.
        if let Some(grants) = auth.grants() {
            self.api.set_user(conn.id, Some(grants.user.clone()));
        }
        let mut topics = Topics::new();
        if joins {
            self.subscribe_granted(&conn, &room, None, None, false, auth.grants());
            topics.push(room.clone());
        }
        tracing::debug!(session = %conn.session(), room = ?room, json, user = ?auth.grants().map(|g| &*g.user), "connected");
        Session { conn, room, topics, auth, hooks: HookQueue::default(), limiter: Limiter::default(), last_pending: 0 }
    }

    /// The session ended with `end`: leave every topic, count it, log it,
    /// and say how the driver finishes the socket.
    pub fn end_session(&self, session: Session, end: End) -> Ending {
        self.unregister(&session.conn, &session.topics);
        let conn = &session.conn;
        // The server API's disconnect ends a session as a shutdown does,
        // with the code it ordered.
        if session.auth.grants().is_some() {
            self.api.set_user(conn.id, None);
        }
        if let (End::Shutdown, Some(code)) = (end, self.api.take_kick(conn.id)) {
            Metrics::add(&self.metrics.api_disconnects, 1);
            tracing::info!(session = %conn.session(), code, "closed by the server API");
            return Ending::Close { code, reason: "disconnected by the server", within: Duration::from_secs(2) };
        }
        match end {
            End::Closed => Ending::Finish { within: Duration::from_secs(2) },
            End::Terminated => {
                Metrics::add(&self.metrics.terminated_connections, 1);
                tracing::info!(session = %conn.session(), "terminated: no answer to the previous heartbeat ping");
                Ending::Abort
            }
            End::Stalled => {
                Metrics::add(&self.metrics.write_stall_closes, 1);
                tracing::info!(session = %conn.session(), timeout = ?self.config.write_stall_timeout, "dropped: nothing could be written to it for the write-stall timeout");
                Ending::Abort
            }
            End::RateLimited => {
                Metrics::add(&self.metrics.rate_limit_closes, 1);
                tracing::info!(session = %conn.session(), "closing a client that kept exceeding its rate limit");
                Ending::Close { code: CloseCode::POLICY_VIOLATION.0, reason: "rate limit exceeded", within: Duration::from_secs(2) }
            }
            End::Slow => {
                Metrics::add(&self.metrics.slow_consumer_closes, 1);
                let code = match self.config.slow_consumer {
                    SlowConsumerPolicy::Close(code) => code,
                    SlowConsumerPolicy::DropOldest => CloseCode::TRY_AGAIN_LATER.0,
                };
                tracing::info!(session = %conn.session(), code, "closing a client that fell behind");
                Ending::Close { code, reason: "too slow: outbound queue full", within: Duration::from_secs(2) }
            }
            End::Drained => {
                Metrics::add(&self.metrics.drained_connections, 1);
                let reconnect_after_ms = self.reconnect_hint(conn.id);
                tracing::debug!(session = %conn.session(), reconnect_after_ms, "drained: closing with 1012");
                Ending::Restart { reconnect_after_ms, within: Duration::from_secs(3) }
            }
            End::Shutdown => Ending::Close { code: CloseCode::GOING_AWAY.0, reason: "server shutting down", within: Duration::from_secs(3) },
            End::Unauthenticated => {
                let user = session.auth.grants().map(|g| g.user.clone());
                tracing::info!(session = %conn.session(), user = ?user.as_deref().unwrap_or(""), "closing a connection whose credentials expired or never came");
                Ending::Close { code: CloseCode::POLICY_VIOLATION.0, reason: "authentication expired", within: Duration::from_secs(2) }
            }
        }
    }
}

impl Session {
    /// The session id (`<node id>-<n>`).
    pub fn id(&self) -> String {
        self.conn.session()
    }

    /// What wakes this connection's driver when a frame is queued or a flag
    /// is set (a clone is kept; registering the same waker again is cheap).
    pub fn set_waker(&self, waker: &std::task::Waker) {
        self.conn.waker.register(waker);
    }

    /// Whether the client's unsent replies fill half the queue bounds: the
    /// driver stops reading it (TCP backpressure does the rest) until they
    /// drain. A client that does not read what it asked for is not read either.
    /// So is one with [`MAX_PENDING_PER_CONNECTION`](crate::hooks::MAX_PENDING_PER_CONNECTION)
    /// requests waiting for the backend's hooks.
    pub fn reading_paused(&self) -> bool {
        self.conn.replies_over() || self.hooks.full()
    }

    /// Wake the connection's driver (as a queued frame would).
    pub fn wake(&self) {
        self.conn.waker.wake();
    }

    /// Move every queued frame into `out`, whatever it holds already (the
    /// last frames of a session that ends on a transport without a socket).
    pub fn drain_into(&self, out: &mut impl Outbox) -> Result<(), End> {
        while let Some(frame) = self.conn.pop() {
            out.send_encoded(frame).map_err(|()| End::Closed)?;
        }
        Ok(())
    }

    /// Whether frames wait in the queue.
    pub fn has_queued(&self) -> bool {
        self.conn.has_queued()
    }

    /// Everything a wake-up may bring, in order: the flags that end the
    /// connection (terminate, stalled, too slow, shutdown), a heartbeat
    /// ping, write progress, queued frames moved into `out` while it holds
    /// less than half of `high_water` (the other half is headroom for the
    /// replies the protocol obliges, pongs, so a slow reader's pongs are
    /// still read while broadcasts wait for it), and the notice of frames
    /// the slow-consumer policy dropped.
    pub fn pump(&mut self, hub: &Hub, out: &mut impl Outbox, high_water: usize) -> Result<(), End> {
        if !matches!(self.auth, AuthState::Anonymous) {
            self.check_expiry(hub, out)?;
        }
        self.apply_hook_answers(hub);
        let conn = &self.conn;
        let flags = conn.flags.load(Ordering::Acquire);
        if flags & (flag::TERMINATE | flag::SLOW_CLOSE | flag::SHUTDOWN | flag::STALLED | flag::DRAIN) != 0 {
            return Err(if flags & flag::TERMINATE != 0 {
                End::Terminated
            } else if flags & flag::STALLED != 0 {
                End::Stalled
            } else if flags & flag::SLOW_CLOSE != 0 {
                End::Slow
            } else if flags & flag::DRAIN != 0 {
                // A drained client asked to reconnect elsewhere keeps its
                // hint even if shutdown follows before it closes.
                End::Drained
            } else {
                End::Shutdown
            });
        }
        if flags & flag::PING_DUE != 0 {
            conn.clear(flag::PING_DUE);
            // Straight to the socket, not through the queue: a ping is
            // never dropped with the broadcasts, and is bounded (one per round).
            let _ = out.send_encoded(EncodedFrame::ping(&hub.ping_payload()));
        }
        let pending = out.pending_len();
        if (pending < self.last_pending || pending == 0) && flags & flag::PROGRESS == 0 {
            conn.flags.fetch_or(flag::PROGRESS, Ordering::AcqRel);
        }
        while out.pending_len() < high_water / 2 {
            let Some(frame) = conn.pop() else { break };
            if out.send_encoded(frame).is_err() {
                return Err(End::Closed);
            }
        }
        self.last_pending = out.pending_len();
        if out.pending_len() < high_water / 2 {
            // A plain load first: the swap (a write) only when there is news.
            let dropped = if conn.dropped_unreported.load(Ordering::Relaxed) > 0 { conn.dropped_unreported.swap(0, Ordering::Relaxed) } else { 0 };
            if dropped > 0 {
                // Never silent: the client learns how much it missed.
                let notice = format!("{dropped} messages were dropped because this connection fell behind");
                let text = if conn.json { envelope::error("lagged", &notice, None) } else { format!("[tether] {notice}") };
                let _ = out.send_encoded(EncodedFrame::text(&text));
            }
        }
        Ok(())
    }

    /// The user this session is authenticated as, if any.
    pub fn user(&self) -> Option<Arc<str>> {
        self.auth.grants().map(|g| g.user.clone())
    }

    /// One message from the client (pongs and pings included: they count
    /// for the heartbeat and the rate limit).
    pub fn on_message(&mut self, hub: &Hub, msg: Message) -> Result<(), End> {
        if let Message::Text(t) = &msg {
            if self.conn.json && t.as_str().contains("\"token\"") {
                let request = match envelope::parse(t.as_str()) {
                    Ok(ClientMessage::Auth { token, id }) => Some((token, id, false)),
                    Ok(ClientMessage::Refresh { token, id }) => Some((token, id, true)),
                    _ => None,
                };
                if let Some((token, id, refresh)) = request {
                    // Counts against the message rate like any request.
                    return match self.limiter.message(&hub.config.message_rate, hub.now_ns()) {
                        Verdict::Close => Err(End::RateLimited),
                        Verdict::Refuse => {
                            hub.reply_error(&self.conn, "rate_limited", "rate limited: this request was not processed", id.as_ref());
                            Ok(())
                        }
                        Verdict::Allow => {
                            self.authenticate(hub, &token, id.as_ref(), refresh);
                            hub.api.set_user(self.conn.id, self.user());
                            Ok(())
                        }
                    };
                }
            }
        }
        if let AuthState::Awaiting { .. } = self.auth {
            if !matches!(msg, Message::Pong(_) | Message::Ping(_) | Message::Close(_)) {
                let id = match &msg {
                    Message::Text(t) => serde_json::from_str::<IdOnly>(t.as_str()).ok().and_then(|r| r.id),
                    _ => None,
                };
                hub.reply_error(&self.conn, "unauthorized", "send {\"type\":\"auth\",\"token\":\"...\"} first", id.as_ref());
                return Ok(());
            }
        }
        match hub.handle(&self.conn, &self.room, &mut self.topics, self.auth.grants(), &mut self.limiter, &mut self.hooks, msg) {
            ControlFlow::Continue(()) => Ok(()),
            ControlFlow::Break(()) => Err(End::RateLimited),
        }
    }
}

impl Hub {
    /// One message from the client. `Break` when its rate limit says close.
    #[allow(clippy::too_many_arguments)]
    fn handle(&self, conn: &Arc<ConnShared>, room: &Arc<str>, topics: &mut Topics, grants: Option<&Arc<Grants>>, limiter: &mut Limiter, hooks: &mut HookQueue, msg: Message) -> ControlFlow<()> {
        match &msg {
            Message::Pong(payload) => {
                // Only the answer to this round's ping counts (RFC 6455 §5.5.3).
                if payload[..] == self.ping_payload() {
                    conn.clear(flag::AWAITING_PONG);
                }
                return ControlFlow::Continue(());
            }
            // Pings are answered by the library, but count towards the rate.
            Message::Ping(_) => {
                return match limiter.message(&self.config.message_rate, self.now_ns()) {
                    Verdict::Close => ControlFlow::Break(()),
                    Verdict::Refuse => {
                        Metrics::add(&self.metrics.rate_limited, 1);
                        ControlFlow::Continue(())
                    }
                    Verdict::Allow => ControlFlow::Continue(()),
                };
            }
            Message::Close(_) => return ControlFlow::Continue(()),
            Message::Text(_) | Message::Binary(_) => {}
        }
        Metrics::add(&self.metrics.messages_in, 1);
        Metrics::add(&self.metrics.bytes_in, msg.len() as u64);
        // Subscribe and unsubscribe requests have their own limit; every
        // other message counts against the message rate.
        let parsed = match &msg {
            Message::Text(t) if conn.json => Some(envelope::parse(t.as_str())),
            _ => None,
        };
        if let Some(Ok(ClientMessage::Subscribe { id, .. } | ClientMessage::Unsubscribe { id, .. })) = &parsed {
            match limiter.subscription(&self.config.subscribe_rate, self.now_ns()) {
                Verdict::Allow => {}
                Verdict::Refuse => {
                    Metrics::add(&self.metrics.rate_limited, 1);
                    let RateLimit { per_second, burst } = self.config.subscribe_rate;
                    let why = format!("rate limited: at most {per_second} subscribe or unsubscribe requests per second (bursts of {burst})");
                    self.reply_error(conn, "rate_limited", &why, id.as_ref());
                    return ControlFlow::Continue(());
                }
                Verdict::Close => return ControlFlow::Break(()),
            }
        } else {
            match limiter.message(&self.config.message_rate, self.now_ns()) {
                Verdict::Allow => {}
                Verdict::Refuse => {
                    let RateLimit { per_second, burst } = self.config.message_rate;
                    self.refuse_rate(conn, &msg, &format!("rate limited: at most {per_second} messages per second (bursts of {burst}); this one was not delivered"));
                    return ControlFlow::Continue(());
                }
                Verdict::Close => return ControlFlow::Break(()),
            }
        }
        if !conn.json {
            let body = match msg {
                Message::Text(t) => Body::Text(Arc::from(t.as_str())),
                Message::Binary(b) => Body::Binary(b),
                _ => return ControlFlow::Continue(()),
            };
            if let Err(why) = self.client_may_publish(room, grants, topics.contains(room)) {
                self.count_auth("refused", "publish");
                self.reply(conn, EncodedFrame::text(&format!("[tether] forbidden: {why}")));
                return ControlFlow::Continue(());
            }
            if self.publish_hooked(room) {
                self.start_hook(conn, grants, hooks, Action::Publish { topic: room.clone(), body, id: None, key: None }, None);
                return ControlFlow::Continue(());
            }
            self.publish(conn, grants, room.clone(), body, None);
            return ControlFlow::Continue(());
        }
        let Some(parsed) = parsed else {
            self.reply_error(conn, "binary_not_supported", "tether.v1 messages are JSON text; binary messages are not accepted", None);
            return ControlFlow::Continue(());
        };
        match parsed {
            Err(e) => self.reply_error(conn, e.code, &e.message, e.id.as_ref()),
            Ok(ClientMessage::Chat { content, id }) => {
                if !self.may_publish(conn, grants, topics, room, id.as_ref()) {
                } else if self.publish_hooked(room) {
                    self.start_hook(conn, grants, hooks, Action::Publish { topic: room.clone(), body: Body::Json(Arc::from(content)), id, key: None }, None);
                } else {
                    self.publish(conn, grants, room.clone(), Body::Json(Arc::from(content)), id);
                }
            }
            Ok(ClientMessage::Publish { topic, content, id, key }) => {
                if !self.may_publish(conn, grants, topics, &topic, id.as_ref()) {
                } else if self.publish_hooked(&topic) {
                    let action = Action::Publish { topic: Arc::from(topic), body: Body::Json(Arc::from(content)), id, key: key.map(Arc::from) };
                    self.start_hook(conn, grants, hooks, action, None);
                } else {
                    self.publish_keyed(conn, grants, Arc::from(topic), Body::Json(Arc::from(content)), id, key.map(Arc::from));
                }
            }
            Ok(ClientMessage::Subscribe { topic, since, epoch, id, delta }) => {
                let topic: Arc<str> = Arc::from(topic);
                if topics.contains(&topic) {
                    // Already live: nothing to replay (a resume needs a new subscription).
                    if let Some(id) = id {
                        self.reply(conn, EncodedFrame::text(&envelope::ack(&id, Some(&topic), None)));
                    }
                    return ControlFlow::Continue(());
                }
                if let Err(why) = self.may_subscribe(room, &topic) {
                    self.reply_error(conn, "forbidden", &why, id.as_ref());
                    return ControlFlow::Continue(());
                }
                if let Some(g) = grants {
                    if !g.may_subscribe(&topic) {
                        self.count_auth("refused", "subscribe");
                        tracing::info!(session = %conn.session(), user = %g.user, topic = ?topic, "refused subscribe: not in the token's capabilities");
                        self.reply_error(conn, "forbidden", &format!("this token may not subscribe to {topic:?}"), id.as_ref());
                        return ControlFlow::Continue(());
                    }
                }
                if topics.len() >= MAX_SUBSCRIPTIONS {
                    self.reply_error(conn, "too_many_subscriptions", &format!("at most {MAX_SUBSCRIPTIONS} subscriptions per connection"), id.as_ref());
                    return ControlFlow::Continue(());
                }
                let resume = since.map(|since| Resume { since, epoch });
                if self.subscribe_hooked(&topic) {
                    // Subscribed (or refused) once the backend answers.
                    self.start_hook(conn, grants, hooks, Action::Subscribe { topic, resume, id, delta }, None);
                    return ControlFlow::Continue(());
                }
                topics.push(topic.clone());
                // The ack (with the starting epoch and seq) comes once the
                // broker has answered, after any replay.
                self.subscribe_granted(conn, &topic, resume, id, delta, grants);
            }
            Ok(ClientMessage::Unsubscribe { topic, id }) => {
                if let Some(pos) = topics.iter().position(|t| **t == *topic) {
                    let topic = topics.swap_remove(pos);
                    self.unsubscribe(conn, &topic);
                    if let Some(id) = id {
                        self.reply(conn, EncodedFrame::text(&envelope::ack(&id, Some(&topic), None)));
                    }
                } else {
                    self.reply_error(conn, "not_subscribed", &format!("not subscribed to {topic:?}"), id.as_ref());
                }
            }
            Ok(ClientMessage::Ping { id }) => {
                let id = id.unwrap_or(serde_json::Value::Null);
                self.reply(conn, EncodedFrame::text(&envelope::ack(&id, None, None)));
            }
            Ok(ClientMessage::Rpc { method, data, id }) => {
                if self.hooks.get().is_none() {
                    self.reply_error(conn, "unavailable", "this server has no RPC hook (tether serve --hook-url with rpc on)", Some(&id));
                } else {
                    self.start_hook(conn, grants, hooks, Action::Rpc { id }, Some((Arc::from(method), Arc::from(data))));
                }
            }
            // Handled by the session before it gets here.
            Ok(ClientMessage::Auth { id, .. } | ClientMessage::Refresh { id, .. }) => self.reply_error(conn, "invalid_field", "a token is expected", id.as_ref()),
        }
        ControlFlow::Continue(())
    }

    /// Tell a client its message was refused by the rate limit: an error
    /// envelope (with the request's id when it has one) or a text line.
    fn refuse_rate(&self, conn: &Arc<ConnShared>, msg: &Message, why: &str) {
        Metrics::add(&self.metrics.rate_limited, 1);
        if conn.json {
            let id = match msg {
                Message::Text(t) => serde_json::from_str::<IdOnly>(t.as_str()).ok().and_then(|r| r.id),
                _ => None,
            };
            self.reply_error(conn, "rate_limited", why, id.as_ref());
        } else {
            self.reply(conn, EncodedFrame::text(&format!("[tether] {why}")));
        }
    }

    /// Whether `grants` (if any) allow publishing to `topic`; refused (and
    /// answered, and counted) if not.
    fn may_publish(&self, conn: &Arc<ConnShared>, grants: Option<&Arc<Grants>>, topics: &[Arc<str>], topic: &str, id: Option<&serde_json::Value>) -> bool {
        match self.client_may_publish(topic, grants, topics.iter().any(|t| **t == *topic)) {
            Ok(()) => true,
            Err(why) => {
                self.count_auth("refused", "publish");
                tracing::info!(session = %conn.session(), user = ?grants.map(|g| &*g.user), topic = ?topic, "refused publish: {why}");
                self.reply_error(conn, "forbidden", &why, id);
                false
            }
        }
    }

    fn publish(&self, conn: &Arc<ConnShared>, grants: Option<&Arc<Grants>>, topic: Arc<str>, body: Body, id: Option<serde_json::Value>) {
        self.publish_keyed(conn, grants, topic, body, id, None);
    }

    fn publish_keyed(&self, conn: &Arc<ConnShared>, grants: Option<&Arc<Grants>>, topic: Arc<str>, body: Body, id: Option<serde_json::Value>, key: Option<Arc<str>>) {
        if self.intercept_publish(conn, &topic, &body, id.as_ref()) {
            return;
        }
        Metrics::add(&self.metrics.broadcasts, 1);
        let ack_id = id.clone();
        // An authenticated connection publishes as its user.
        let sender = match grants {
            Some(g) => g.user.clone(),
            None => Arc::from(&*conn.session()),
        };
        let msg = Publish { topic, sender, timestamp_ms: now_ms(), body, key, origin: Origin { conn: conn.id, id } };
        if let Err(e) = self.broker.publish(msg) {
            self.reply_error(conn, "unavailable", &format!("message not published: {e}"), ack_id.as_ref());
        }
    }

    pub(crate) fn reply_error(&self, conn: &Arc<ConnShared>, code: &str, message: &str, id: Option<&serde_json::Value>) {
        Metrics::add(&self.metrics.client_errors, 1);
        if conn.json {
            self.reply(conn, EncodedFrame::text(&envelope::error(code, message, id)));
        }
    }
}
