//! A client that survives the network: [`ReconnectingClient`].
//!
//! A single [`WebSocket`](crate::WebSocket) ends when its connection does. Real
//! clients lose connections all the time (Wi-Fi changes, servers redeploy, a
//! NAT forgets an idle flow), so this module wraps [`ClientBuilder`] in a
//! background task that reconnects with exponential backoff and jitter,
//! queues what is sent while disconnected, notices a dead server with a
//! heartbeat, and renews `tether.v1` subscriptions after each reconnect. It
//! mirrors `web/tether.js`, the browser client, option for option.
//!
//! The application sees the events of the classic WebSocket tutorial as an
//! async stream ([`Event`]): `Open`, `Message`, `Close`, `Error`, plus
//! `Reconnecting` and `GaveUp`. Per connection they come in this order:
//! (`Reconnecting`) → `Open` → `Message`* → (`Error`) → `Close`; a failed
//! attempt gives `Error` alone.
//!
//! ```no_run
//! use tether::reconnect::{Event, ReconnectOptions, ReconnectingClient};
//! use tether::ClientBuilder;
//!
//! # async fn demo() {
//! let options = ReconnectOptions { json: true, ..ReconnectOptions::default() };
//! let mut client = ReconnectingClient::new(ClientBuilder::new("ws://127.0.0.1:8080/lobby"), options);
//! let sender = client.sender(); // Clone it into other tasks.
//! tokio::spawn(async move {
//!     let _ = sender.subscribe("news").await; // renewed after every reconnect
//!     let _ = sender.chat("hello");
//! });
//! while let Some(event) = client.next_event().await {
//!     match event {
//!         Event::Open { attempt, .. } => println!("connected (after {attempt} failed attempts)"),
//!         Event::Message(msg) => println!("{msg:?}"),
//!         Event::Close { code, reason, .. } => println!("closed: {code} {reason}"),
//!         Event::Reconnecting { attempt, delay } => println!("retry #{attempt} in {delay:?}"),
//!         other => println!("{other:?}"),
//!     }
//! }
//! # }
//! ```
//!
//! # Delivery
//! Messages given to [`ClientSender::send`] are kept in a bounded queue until
//! the socket takes them, and a queue filled while disconnected is sent, in
//! order and once, after the next connection opens. A message the socket has
//! taken when the connection dies may or may not have reached the server: there
//! is no retransmission (at most once). Applications that need more use acks
//! ([`ClientSender::publish`] resolves with the server's) and ids.

mod shared;
mod task;
mod token;
pub use token::{token_expiry, TokenResult, TokenSource};

pub use crate::v1::Backoff;

use shared::{checked, Outgoing, Shared, State};

use crate::client::ClientBuilder;
use crate::error::Error;
use crate::v1::envelope::Request;
use serde_json::Value;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tether_proto::{CloseCode, CloseFrame, Message};
use tokio::sync::{mpsc, watch, Notify};

/// The subprotocol of `tether serve`'s JSON envelopes (docs/protocol.md); an
/// alias of [`crate::v1::PROTOCOL`].
pub const TETHER_V1: &str = crate::v1::PROTOCOL;

/// How many events the background task may read ahead of the application.
/// Past that it stops reading the socket, so a slow consumer slows the
/// server down (TCP backpressure) instead of growing memory.
const EVENT_BUFFER: usize = 64;

/// What [`ClientSender::send`] does when the queue is full.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum QueueFullPolicy {
    /// Refuse the new message with [`ClientError::QueueFull`]. The default:
    /// nothing is lost silently.
    #[default]
    Reject,
    /// Drop the oldest queued message to make room (for data where only the
    /// latest matters, such as positions or prices).
    DropOldest,
}

/// Settings of a [`ReconnectingClient`]. Names follow `web/tether.js`.
#[derive(Clone, Debug)]
pub struct ReconnectOptions {
    /// Speak `tether.v1`: offer the subprotocol and enable the envelope
    /// helpers ([`ClientSender::subscribe`], [`publish`](ClientSender::publish),
    /// [`chat`](ClientSender::chat)). Also on when the [`ClientBuilder`] offers
    /// `tether.v1` itself. Default false.
    pub json: bool,
    /// Reconnect when a connection fails or closes (unless [`close`](ClientSender::close)
    /// was called). Default true; false gives a single connection with the
    /// same events, queue and heartbeat.
    pub reconnect: bool,
    /// The delays between attempts.
    pub backoff: Backoff,
    /// Give up (emit [`Event::GaveUp`] and end) after this many failed
    /// attempts in a row. Default `None`: keep trying.
    pub max_attempts: Option<u32>,
    /// A connection that stays open this long resets the attempt counter, so
    /// the next drop starts again from `backoff.min_delay`. Default 5 s.
    pub stable_after: Duration,
    /// Messages kept while they wait for a connection (or for the socket to
    /// drain). Default 1000: bounded, so an application that sends while a
    /// server is down for hours does not grow without limit.
    pub queue_limit: usize,
    /// What happens to a message sent when the queue is full. Default
    /// [`QueueFullPolicy::Reject`].
    pub queue_full: QueueFullPolicy,
    /// Send a WebSocket ping this often. Default 25 s, below the idle timeout
    /// of common proxies and NATs (30-60 s). `None` disables the heartbeat.
    pub heartbeat_interval: Option<Duration>,
    /// When nothing at all has been received this long after a heartbeat
    /// ping, the connection is considered dead: it is dropped (code 1006) and
    /// the client reconnects. Default 10 s.
    pub heartbeat_timeout: Duration,
    /// How long the envelope helpers wait for the server's `ack`. Default 10 s.
    pub ack_timeout: Duration,
    /// A connection token (`tether.v1`), sent in each connection's first
    /// message (`auth`); a [`TokenSource::Fetch`] is called for every
    /// connection and refreshes the token before it expires. Default none.
    pub token: Option<TokenSource>,
    /// With a token function: fetch a new token and send a `refresh` this
    /// long before the token's `exp` (and whenever the server warns).
    /// Default 30 s, as web/tether.js.
    pub refresh_ahead: Duration,
}

impl Default for ReconnectOptions {
    fn default() -> Self {
        ReconnectOptions {
            json: false,
            reconnect: true,
            backoff: Backoff::default(),
            max_attempts: None,
            stable_after: Duration::from_secs(5),
            queue_limit: 1000,
            queue_full: QueueFullPolicy::Reject,
            heartbeat_interval: Some(Duration::from_secs(25)),
            heartbeat_timeout: Duration::from_secs(10),
            ack_timeout: Duration::from_secs(10),
            token: None,
            refresh_ahead: Duration::from_secs(30),
        }
    }
}

/// What happened to a [`ReconnectingClient`].
#[derive(Debug)]
#[non_exhaustive]
pub enum Event {
    /// A connection opened. `attempt` counts the failed attempts before it
    /// (0 for a first connection that worked at once).
    Open {
        /// The subprotocol the server selected.
        protocol: Option<String>,
        /// Failed attempts before this connection since the last stable one.
        attempt: u32,
    },
    /// A message from the server: text or binary, or a ping or a pong the
    /// application sent for (heartbeat pongs are not reported). Close frames
    /// are reported as [`Event::Close`].
    Message(Message),
    /// A connection ended.
    Close {
        /// Whether both close frames were exchanged.
        was_clean: bool,
        /// The peer's code; 1005 when its close carried none, 1006 when the
        /// connection ended without a close frame (dropped, heartbeat timeout).
        code: CloseCode,
        /// The peer's reason (empty when none).
        reason: String,
    },
    /// Something failed: a connection attempt (refused, HTTP status, TLS,
    /// timeout) or an open connection (I/O, protocol error, heartbeat
    /// timeout, shown as [`Error::Timeout`]`("heartbeat")`).
    Error(Error),
    /// The client waits `delay` before attempt number `attempt` (1-based).
    Reconnecting {
        /// The attempt about to be made.
        attempt: u32,
        /// How long the client waits first.
        delay: Duration,
    },
    /// `max_attempts` failed attempts in a row: the client stopped. The
    /// stream ends after this event.
    GaveUp {
        /// How many reconnect attempts failed.
        attempts: u32,
    },
}

/// The server's `ack` to a `tether.v1` request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ack {
    /// The topic the request concerned (absent for `ping`).
    pub topic: Option<String>,
    /// For `publish` and `chat`: the sequence number the message got.
    pub seq: Option<u64>,
    /// For `rpc`: the backend's answer (`rpc_result`'s `data`).
    pub data: Option<Value>,
}

/// Why a [`ClientSender`] call failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The send queue holds `limit` messages and the policy is
    /// [`QueueFullPolicy::Reject`] (or a request was dropped to make room).
    #[error("the send queue is full ({limit} messages)")]
    QueueFull {
        /// The configured `queue_limit`.
        limit: usize,
    },
    /// The client was closed, gave up, or its [`ReconnectingClient`] was dropped.
    #[error("the client is closed")]
    Closed,
    /// The connection carrying a request ended before the server answered.
    /// The request may or may not have taken effect.
    #[error("the connection was lost before the server answered")]
    Disconnected,
    /// No `ack` arrived within `ack_timeout`.
    #[error("no answer from the server within {0:?}")]
    AckTimeout(Duration),
    /// The server answered with an `error` envelope.
    #[error("the server refused the request: {message} ({code})")]
    Refused {
        /// The machine-readable code, e.g. `invalid_field`.
        code: String,
        /// What was wrong.
        message: String,
    },
    /// The envelope helpers need `tether.v1` ([`ReconnectOptions::json`]).
    #[error("tether.v1 helpers need the `json` option (or the tether.v1 subprotocol)")]
    NotJson,
    /// The message cannot be sent: a close code that may not go on the wire
    /// (RFC 6455 §7.4: 1005, 1006, 1015 and unassigned codes are reserved), a
    /// close reason over 123 bytes, a ping or pong payload over 125 bytes
    /// (§5.5), or a close frame given to `send` (use `close`).
    #[error("invalid message: {0}")]
    InvalidMessage(String),
}

/// A handle that sends through a [`ReconnectingClient`]; clone it into as
/// many tasks as needed. Every method works while disconnected (messages are
/// queued) and fails with [`ClientError::Closed`] once the client is closed.
///
/// The `tether.v1` helpers resolve when the server's `ack` arrives, which the
/// background task reads along with the events: keep consuming events (in
/// another task, or with `select!`) while awaiting one, or the ack waits
/// behind unread events.
#[derive(Clone)]
pub struct ClientSender {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for ClientSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientSender").field("connected", &self.is_connected()).field("queued", &self.queued()).finish()
    }
}

impl ClientSender {
    /// Send a message now or, while disconnected, after the next connection
    /// opens. Never waits: when the queue is full the message is refused or
    /// the oldest one dropped, as [`ReconnectOptions::queue_full`] says.
    pub fn send(&self, msg: impl Into<Message>) -> Result<(), ClientError> {
        let msg = checked(msg.into())?;
        self.shared.enqueue(Outgoing { msg, request: None }, self.shared.queue_full).map_err(|(_, e)| e)
    }

    /// Like [`send`](Self::send), but when the queue is full, wait for room
    /// instead (backpressure for a producer that must not lose data).
    pub async fn send_wait(&self, msg: impl Into<Message>) -> Result<(), ClientError> {
        let mut out = Outgoing { msg: checked(msg.into())?, request: None };
        loop {
            let room = self.shared.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            match self.shared.enqueue(out, QueueFullPolicy::Reject) {
                Ok(()) => return Ok(()),
                Err((back, ClientError::QueueFull { .. })) => out = back,
                Err((_, e)) => return Err(e),
            }
            room.await;
        }
    }

    /// Close for good; no reconnect follows. On an open connection, the
    /// messages queued before this call are sent first, then a close frame
    /// with `code` and `reason`; messages keep arriving until the peer
    /// answers, and [`Event::Close`] is the last event. While disconnected
    /// or connecting, the client stops at once, dropping what is queued
    /// (the event stream just ends). Sends after this call fail with
    /// [`ClientError::Closed`].
    pub fn close(&self, code: impl Into<CloseCode>, reason: &str) -> Result<(), ClientError> {
        let code = code.into();
        if !code.is_allowed_on_wire() {
            return Err(ClientError::InvalidMessage(format!("code {} may not be sent", code.0)));
        }
        if reason.len() > tether_proto::close::MAX_REASON_LEN {
            return Err(ClientError::InvalidMessage(format!("reason of {} bytes (max {})", reason.len(), tether_proto::close::MAX_REASON_LEN)));
        }
        let frame = CloseFrame::new(code, reason);
        self.shared.close.send_if_modified(|current| {
            if current.is_some() {
                return false;
            }
            *current = Some(frame);
            true
        });
        Ok(())
    }

    /// `tether.v1`: subscribe to `topic`, now and after every reconnect.
    /// Resolves with the server's ack.
    pub async fn subscribe(&self, topic: &str) -> Result<Ack, ClientError> {
        if !self.shared.json {
            return Err(ClientError::NotJson);
        }
        {
            let mut st = self.shared.lock();
            if !st.topics.iter().any(|t| t == topic) {
                st.topics.push(topic.to_owned());
            }
        }
        let result = self.shared.request(Request::Subscribe { topic, since: None, epoch: None, delta: false }).await;
        if let Err(ClientError::Refused { .. }) = result {
            let mut st = self.shared.lock();
            st.topics.retain(|t| t != topic);
            st.positions.remove(topic);
        }
        result
    }

    /// `tether.v1`: stop receiving `topic` (and stop renewing it).
    pub async fn unsubscribe(&self, topic: &str) -> Result<Ack, ClientError> {
        if !self.shared.json {
            return Err(ClientError::NotJson);
        }
        {
            let mut st = self.shared.lock();
            st.topics.retain(|t| t != topic);
            st.positions.remove(topic);
        }
        self.shared.request(Request::Unsubscribe { topic }).await
    }

    /// `tether.v1`: publish `content` (any JSON) to `topic`. Resolves with
    /// the ack, which carries the message's sequence number.
    pub async fn publish(&self, topic: &str, content: impl Into<Value>) -> Result<Ack, ClientError> {
        self.shared.request(Request::Publish { topic, content: &content.into(), key: None }).await
    }

    /// `tether.v1`: publish `content` to `topic` with a conflation `key`
    /// (e.g. a ticker symbol): a subscriber that falls behind gets the
    /// newest message of each key instead of every one (docs/protocol.md).
    pub async fn publish_keyed(&self, topic: &str, key: &str, content: impl Into<Value>) -> Result<Ack, ClientError> {
        self.shared.request(Request::Publish { topic, content: &content.into(), key: Some(key) }).await
    }

    /// `tether.v1`: send `content` (any JSON) to this connection's room.
    pub async fn chat(&self, content: impl Into<Value>) -> Result<Ack, ClientError> {
        self.shared.request(Request::Chat { content: &content.into() }).await
    }

    /// `tether.v1`: call `method` on the application's backend (the
    /// server's RPC hook) with `data` (any JSON); resolves with the
    /// backend's answer, or [`ClientError::Refused`] with its error code
    /// (`timeout` and `unavailable` when the backend cannot answer).
    pub async fn rpc(&self, method: &str, data: impl Into<Value>) -> Result<Value, ClientError> {
        let ack = self.shared.request(Request::Rpc { method, data: &data.into() }).await?;
        Ok(ack.data.unwrap_or(Value::Null))
    }

    /// The topics that are renewed after a reconnect.
    pub fn topics(&self) -> Vec<String> {
        self.shared.lock().topics.clone()
    }

    /// Whether a connection is open right now.
    pub fn is_connected(&self) -> bool {
        self.shared.lock().connected
    }

    /// Messages waiting for the socket.
    pub fn queued(&self) -> usize {
        self.shared.lock().queue.len()
    }
}

/// A WebSocket client that reconnects: events as an async stream, sends
/// through a bounded queue, a heartbeat, and `tether.v1` helpers. See the
/// [module documentation](self).
///
/// A background task owns the socket; this handle receives its events
/// ([`next_event`](Self::next_event), or as a `Stream`) and sends through it
/// (the methods of [`ClientSender`], also available here). Dropping it stops
/// the client (the open connection is closed with 1000).
pub struct ReconnectingClient {
    sender: ClientSender,
    events: mpsc::Receiver<Event>,
}

impl std::fmt::Debug for ReconnectingClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReconnectingClient").field("sender", &self.sender).finish()
    }
}

impl ReconnectingClient {
    /// A client for `url` with default settings.
    ///
    /// # Panics
    /// Outside a tokio runtime (the connection runs in a spawned task).
    pub fn connect(url: impl Into<String>) -> Self {
        Self::new(ClientBuilder::new(url), ReconnectOptions::default())
    }

    /// A client that opens connections with `builder` (URL, headers,
    /// subprotocols, TLS, [`Config`](crate::Config) and timeouts apply to every
    /// attempt) and reconnects as `options` say. Starts connecting at once.
    ///
    /// # Panics
    /// Outside a tokio runtime (the connection runs in a spawned task).
    pub fn new(mut builder: ClientBuilder, options: ReconnectOptions) -> Self {
        let offers_v1 = builder.protocols().iter().any(|p| p == TETHER_V1);
        if options.json && !offers_v1 {
            builder = builder.protocol(TETHER_V1);
        }
        let (close, _) = watch::channel(None);
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            queued: Notify::new(),
            room: Notify::new(),
            close,
            queue_limit: options.queue_limit.max(1),
            queue_full: options.queue_full,
            json: options.json || offers_v1,
            ack_timeout: options.ack_timeout,
        });
        let (events_tx, events) = mpsc::channel(EVENT_BUFFER);
        tokio::spawn(task::run(builder, options, shared.clone(), events_tx));
        ReconnectingClient { sender: ClientSender { shared }, events }
    }

    /// The next event; `None` once the client has stopped (after
    /// [`close`](Self::close), [`Event::GaveUp`], or a failure when
    /// `reconnect` is off). Cancel-safe.
    pub async fn next_event(&mut self) -> Option<Event> {
        self.events.recv().await
    }

    /// A handle for sending from other tasks.
    pub fn sender(&self) -> ClientSender {
        self.sender.clone()
    }

    /// See [`ClientSender::send`].
    pub fn send(&self, msg: impl Into<Message>) -> Result<(), ClientError> {
        self.sender.send(msg)
    }

    /// See [`ClientSender::send_wait`].
    pub async fn send_wait(&self, msg: impl Into<Message>) -> Result<(), ClientError> {
        self.sender.send_wait(msg).await
    }

    /// See [`ClientSender::close`].
    pub fn close(&self, code: impl Into<CloseCode>, reason: &str) -> Result<(), ClientError> {
        self.sender.close(code, reason)
    }

    /// See [`ClientSender::subscribe`].
    pub async fn subscribe(&self, topic: &str) -> Result<Ack, ClientError> {
        self.sender.subscribe(topic).await
    }

    /// See [`ClientSender::unsubscribe`].
    pub async fn unsubscribe(&self, topic: &str) -> Result<Ack, ClientError> {
        self.sender.unsubscribe(topic).await
    }

    /// See [`ClientSender::publish`].
    pub async fn publish(&self, topic: &str, content: impl Into<Value>) -> Result<Ack, ClientError> {
        self.sender.publish(topic, content).await
    }

    /// See [`ClientSender::publish_keyed`].
    pub async fn publish_keyed(&self, topic: &str, key: &str, content: impl Into<Value>) -> Result<Ack, ClientError> {
        self.sender.publish_keyed(topic, key, content).await
    }

    /// See [`ClientSender::chat`].
    pub async fn chat(&self, content: impl Into<Value>) -> Result<Ack, ClientError> {
        self.sender.chat(content).await
    }

    /// See [`ClientSender::rpc`].
    pub async fn rpc(&self, method: &str, data: impl Into<Value>) -> Result<Value, ClientError> {
        self.sender.rpc(method, data).await
    }

    /// Whether a connection is open right now.
    pub fn is_connected(&self) -> bool {
        self.sender.is_connected()
    }
}

impl Drop for ReconnectingClient {
    fn drop(&mut self) {
        let _ = self.sender.close(CloseCode::NORMAL, "");
    }
}

impl futures_core::Stream for ReconnectingClient {
    type Item = Event;
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.get_mut().events.poll_recv(cx)
    }
}
