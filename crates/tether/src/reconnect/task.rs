//! The background task of a [`ReconnectingClient`](super::ReconnectingClient):
//! connect, run the connection until it ends, wait out the backoff, repeat.
//!
//! One task owns the socket, so no lock is held across I/O: handles only
//! touch the shared queue and wake the task. While connected the task waits
//! on everything at once (socket, queue, close request, heartbeat, stable
//! timer) and reads the socket only when the application has room for one
//! more event, so a slow consumer applies TCP backpressure to the server.

use super::{ClientError, Event, ReconnectOptions, Shared, TETHER_V1};
use crate::client::ClientBuilder;
use crate::error::{Error, Result};
use crate::socket::WebSocket;
use crate::stream::MaybeTlsStream;
use crate::v1::envelope::Request;
use crate::v1::{Action, Heartbeat};
use bytes::Bytes;
use std::future::poll_fn;
use std::sync::Arc;
use std::task::{Context, Poll};
use tether_proto::{CloseCode, CloseFrame, Message};
use tokio::sync::mpsc::{self, Permit};
use tokio::sync::watch;
use tokio::time::Instant;

type Socket = WebSocket<MaybeTlsStream>;

/// Payload of heartbeat pings; the pongs that echo it are not reported.
const HEARTBEAT: &[u8] = b"tether-heartbeat";

/// How a connection ended.
enum Ended {
    /// Dropped or closed by the server: reconnect (if enabled), after the
    /// server's reconnect hint if it gave one (1012 from a drain,
    /// docs/protocol.md "Drain"), else after the backoff.
    Lost { hint: Option<std::time::Duration> },
    /// Closed on request, or nobody listens any more: stop.
    Stop,
}

pub(super) async fn run(builder: ClientBuilder, options: ReconnectOptions, shared: Arc<Shared>, events: mpsc::Sender<Event>) {
    let mut driver = Driver { builder, options, shared, events, attempt: 0 };
    driver.run().await;
    driver.shared.finish();
}

struct Driver {
    builder: ClientBuilder,
    options: ReconnectOptions,
    shared: Arc<Shared>,
    events: mpsc::Sender<Event>,
    /// Failed attempts since the last stable connection.
    attempt: u32,
}

impl Driver {
    async fn run(&mut self) {
        let mut close = self.shared.close.subscribe();
        loop {
            // A token (fetched anew for every connection) goes in the first message.
            let token = match self.options.token.clone() {
                None => Ok(None),
                Some(source) => tokio::select! {
                    biased;
                    _ = close_requested(&mut close) => return,
                    _ = self.events.closed() => return,
                    fetched = source.get() => fetched.map(Some).map_err(|e| Error::Token(e.to_string())),
                },
            };
            let connected = match token {
                Err(e) => Err(e),
                Ok(token) => tokio::select! {
                    biased;
                    _ = close_requested(&mut close) => return,
                    _ = self.events.closed() => return,
                    result = self.builder.connect() => result.map(|(ws, _)| (ws, token)),
                },
            };
            let mut hint = None;
            match connected {
                Ok((ws, token)) => {
                    let ended = self.connected(ws, token).await;
                    self.shared.disconnected();
                    match ended {
                        Ended::Stop => return,
                        Ended::Lost { hint: h } => hint = h,
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, attempt = self.attempt, "connection attempt failed");
                    // A malformed URL does not get better by retrying.
                    let permanent = matches!(e, Error::InvalidUrl(_));
                    if self.events.send(Event::Error(e)).await.is_err() || permanent {
                        return;
                    }
                }
            }
            if !self.options.reconnect {
                return;
            }
            self.attempt = self.attempt.saturating_add(1);
            if self.options.max_attempts.is_some_and(|max| self.attempt > max) {
                let _ = self.events.send(Event::GaveUp { attempts: self.attempt - 1 }).await;
                return;
            }
            // A drained node's hint replaces the backoff: it spreads the
            // clients of that node over its drain window.
            let delay = hint.unwrap_or_else(|| self.options.backoff.delay(self.attempt));
            if self.events.send(Event::Reconnecting { attempt: self.attempt, delay }).await.is_err() {
                return;
            }
            tokio::select! {
                biased;
                _ = close_requested(&mut close) => return,
                _ = self.events.closed() => return,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// Run one open connection until it ends.
    async fn connected(&mut self, mut ws: Socket, token: Option<String>) -> Ended {
        let protocol = ws.protocol().map(str::to_owned);
        if self.shared.json && protocol.as_deref() != Some(TETHER_V1) {
            tracing::warn!(?protocol, "the server did not select tether.v1: it may not understand the envelopes");
        }
        // The token first: the server handles messages in order, so what
        // follows is already authenticated.
        if let (true, Some(t)) = (self.shared.json, &token) {
            let _ = ws.start_send(Message::text(Request::Auth { token: t }.to_json(Some("auth"))));
        }
        let mut refresh_at = token.as_deref().and_then(|t| self.refresh_deadline(t));
        let (token_tx, mut token_rx) = mpsc::channel::<super::TokenResult>(1);
        let mut fetching = false;
        // tether.v1 subscriptions belong to a connection: renew them, ahead
        // of anything queued while disconnected.
        let topics = self.shared.lock().topics.clone();
        for topic in topics {
            // Resume where the last connection left off (docs/protocol.md, "Resume").
            let position = self.shared.lock().positions.get(&topic).cloned();
            // No epoch yet (the topic was empty at subscribe): `since` 0 in
            // the current epoch, everything the topic kept.
            let (epoch, since) = position.map_or((None, None), |(e, s)| ((!e.is_empty()).then_some(e), Some(s)));
            let _ = ws.start_send(Message::text(Request::Subscribe { topic: &topic, since, epoch: epoch.as_deref(), delta: false }.to_json(None)));
        }
        self.shared.lock().connected = true;
        if self.events.send(Event::Open { protocol, attempt: self.attempt }).await.is_err() {
            return abandon(ws).await;
        }

        let events = self.events.clone();
        let mut close = self.shared.close.subscribe();
        // Room for one event, reserved before reading so that a message read
        // is never held back.
        let mut permit: Option<Permit<'_, Event>> = None;
        let heartbeat_timeout = self.options.heartbeat_timeout;
        // The shared rule (crate::v1::heartbeat): a ping each interval unless
        // one is unanswered; anything received answers it.
        let mut heartbeat = self.options.heartbeat_interval.filter(|every| !every.is_zero()).map(|every| Heartbeat::new(every, heartbeat_timeout, Instant::now()));
        let stable = tokio::time::sleep(self.options.stable_after);
        tokio::pin!(stable);
        let mut stable_reached = false;
        // close() was called: drain the queue, then send the close frame.
        let mut close_wanted = false;
        let mut close_sent = false;
        let ended = |close_wanted: bool, ws: &Socket| if close_wanted { Ended::Stop } else { Ended::Lost { hint: drain_hint(ws) } };

        loop {
            let queued = !close_sent && self.shared.pump(&mut ws);
            if close_wanted && !close_sent && !queued {
                close_sent = true;
                // The close handshake has its own timeout (Config::close_timeout).
                heartbeat = None;
                let frame = self.shared.close.borrow().clone();
                if let Err(e) = ws.start_send(Message::Close(frame)) {
                    tracing::debug!(error = %e, "close frame not queued");
                }
            }
            let reading = permit.is_some();
            tokio::select! {
                biased;
                _ = close_requested(&mut close), if !close_wanted => close_wanted = true,
                _ = events.closed() => return abandon(ws).await,
                step = poll_fn(|cx| drive(&mut ws, cx, reading, queued)) => match step {
                    Step::Drained => {}
                    Step::Received(Some(Ok(msg))) => {
                        if let Some(hb) = heartbeat.as_mut() {
                            hb.on_answer(Instant::now());
                        }
                        match msg {
                            // Reported as Event::Close once the handshake completes.
                            Message::Close(_) => {}
                            Message::Pong(ref payload) if payload.as_ref() == HEARTBEAT => {}
                            msg => {
                                if let (true, Message::Text(text)) = (self.shared.json, &msg) {
                                    self.shared.track(text);
                                    self.shared.resolve(text);
                                    // The server closes at close_at unless a new token comes first.
                                    if text.starts_with("{\"type\":\"token_expiring\"") && self.options.token.as_ref().is_some_and(|t| t.refreshes()) {
                                        refresh_at = Some(Instant::now());
                                    }
                                }
                                emit(&events, &mut permit, Event::Message(msg)).await;
                            }
                        }
                    }
                    Step::Received(Some(Err(e))) => {
                        tracing::debug!(error = %e, "connection failed");
                        let close = Event::Close { was_clean: false, code: ws.close_code(), reason: peer_reason(&ws) };
                        emit(&events, &mut permit, Event::Error(e)).await;
                        emit(&events, &mut permit, close).await;
                        return ended(close_wanted, &ws);
                    }
                    Step::Received(None) => {
                        let close = Event::Close { was_clean: ws.was_clean(), code: ws.close_code(), reason: peer_reason(&ws) };
                        emit(&events, &mut permit, close).await;
                        return ended(close_wanted, &ws);
                    }
                },
                reserved = events.reserve(), if !reading => match reserved {
                    Ok(p) => {
                        permit = Some(p);
                        // The socket was not read while the application was
                        // busy: that silence is not the server's.
                        if let Some(hb) = heartbeat.as_mut() {
                            hb.defer(Instant::now());
                        }
                    }
                    Err(_) => return abandon(ws).await,
                },
                _ = self.shared.queued.notified(), if !close_sent => {}
                _ = tokio::time::sleep_until(heartbeat.as_ref().map_or_else(Instant::now, Heartbeat::next_wake)), if heartbeat.is_some() => {
                    let Some(hb) = heartbeat.as_mut() else { continue };
                    match hb.poll(Instant::now()) {
                        Some(Action::SendPing) if !(reading && ws.start_send(Message::Ping(Bytes::from_static(HEARTBEAT))).is_ok()) => {
                            hb.ping_not_sent();
                        }
                        Some(Action::PeerDead) => {
                            // Nothing received since the ping: the server, or the
                            // path to it, is gone. Drop the TCP connection at once;
                            // a close handshake would only wait for the same silence.
                            tracing::debug!(timeout = ?heartbeat_timeout, "no answer to the heartbeat: dropping the connection");
                            emit(&events, &mut permit, Event::Error(Error::Timeout("heartbeat"))).await;
                            emit(&events, &mut permit, Event::Close { was_clean: false, code: CloseCode::ABNORMAL, reason: String::new() }).await;
                            return ended(close_wanted, &ws);
                        }
                        Some(Action::SendPing) | None => {}
                    }
                }
                _ = tokio::time::sleep_until(refresh_at.unwrap_or_else(Instant::now)), if refresh_at.is_some() && !fetching => {
                    refresh_at = None;
                    if let Some(source) = self.options.token.clone() {
                        fetching = true;
                        let tx = token_tx.clone();
                        // Fetched aside: the connection keeps being served meanwhile.
                        tokio::spawn(async move {
                            let _ = tx.send(source.get().await).await;
                        });
                    }
                }
                Some(fetched) = token_rx.recv(), if fetching => {
                    fetching = false;
                    match fetched {
                        Ok(t) => {
                            let _ = ws.start_send(Message::text(Request::Refresh { token: &t }.to_json(Some("refresh"))));
                            refresh_at = self.refresh_deadline(&t);
                        }
                        Err(e) => {
                            emit(&events, &mut permit, Event::Error(Error::Token(e.to_string()))).await;
                            // Try again soon: the server's grace period is running.
                            refresh_at = Some(Instant::now() + std::time::Duration::from_secs(1));
                        }
                    }
                }
                _ = &mut stable, if !stable_reached => {
                    stable_reached = true;
                    self.attempt = 0;
                }
            }
        }
    }
}

impl Driver {
    /// When to refresh `token` (a function's, with an `exp`): `refresh_ahead`
    /// before it expires, at least a second from now.
    fn refresh_deadline(&self, token: &str) -> Option<Instant> {
        if !self.options.token.as_ref().is_some_and(|t| t.refreshes()) {
            return None;
        }
        let exp_ms = super::token_expiry(token)?.saturating_mul(1000);
        let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let ahead_ms = self.options.refresh_ahead.as_millis() as u64;
        let delay = exp_ms.saturating_sub(now_ms).saturating_sub(ahead_ms).max(1000);
        Some(Instant::now() + std::time::Duration::from_millis(delay))
    }
}

/// What [`drive`] made progress on.
enum Step {
    /// The socket's write buffer drained while messages wait in the queue.
    Drained,
    /// What [`WebSocket::recv`] returned.
    Received(Option<Result<Message>>),
}

/// Write what the socket has buffered and, when `reading`, receive. Returns
/// [`Step::Drained`] when the buffer emptied and `queued` messages can follow.
fn drive(ws: &mut Socket, cx: &mut Context<'_>, reading: bool, queued: bool) -> Poll<Step> {
    if ws.pending_len() > 0 {
        match ws.poll_write_pending(cx) {
            Poll::Ready(Err(e)) => return Poll::Ready(Step::Received(Some(Err(e.into())))),
            Poll::Ready(Ok(())) if queued => return Poll::Ready(Step::Drained),
            _ => {}
        }
    }
    if reading {
        ws.poll_recv(cx).map(Step::Received)
    } else {
        Poll::Pending
    }
}

/// Deliver `event`, through the reserved slot when there is one.
async fn emit(events: &mpsc::Sender<Event>, permit: &mut Option<Permit<'_, Event>>, event: Event) {
    match permit.take() {
        Some(p) => p.send(event),
        None => {
            let _ = events.send(event).await;
        }
    }
}

/// Close a connection nobody listens to any more (bounded by the close timeout).
async fn abandon(mut ws: Socket) -> Ended {
    let _ = ws.close(CloseCode::NORMAL, "").await;
    Ended::Stop
}

/// Resolves once a close was requested (without holding the watch's lock).
async fn close_requested(close: &mut watch::Receiver<Option<CloseFrame>>) {
    let _ = close.wait_for(Option::is_some).await;
}

/// The reconnect hint of a 1012 close from a draining server, if any.
fn drain_hint(ws: &Socket) -> Option<std::time::Duration> {
    match ws.connection().received_close() {
        Some(Some(frame)) if frame.code.0 == crate::v1::DRAIN_CLOSE_CODE => crate::v1::reconnect_hint(&frame.reason),
        _ => None,
    }
}

fn peer_reason(ws: &Socket) -> String {
    match ws.connection().received_close() {
        Some(Some(frame)) => frame.reason.to_string(),
        _ => String::new(),
    }
}

impl Shared {
    /// Move queued messages into the socket while it is below its high-water
    /// mark. Returns whether messages remain queued.
    fn pump(&self, ws: &mut Socket) -> bool {
        let mut st = self.lock();
        if ws.connection().is_closing() {
            // The server is closing: keep them for the next connection.
            return !st.queue.is_empty();
        }
        let mut moved = false;
        while ws.pending_len() < ws.high_water() {
            let Some(out) = st.queue.pop_front() else { break };
            moved = true;
            if let Some(p) = out.request.as_ref().and_then(|id| st.pending.get_mut(id)) {
                p.sent = true;
            }
            if let Err(e) = ws.start_send(out.msg) {
                tracing::debug!(error = %e, "queued message dropped");
            }
        }
        let remaining = !st.queue.is_empty();
        drop(st);
        if moved {
            self.room.notify_waiters();
        }
        remaining
    }

    /// A connection ended: requests it carried will get no answer.
    fn disconnected(&self) {
        let mut st = self.lock();
        st.connected = false;
        let lost: Vec<String> = st.pending.iter().filter(|(_, p)| p.sent).map(|(id, _)| id.clone()).collect();
        for id in lost {
            if let Some(p) = st.pending.remove(&id) {
                let _ = p.reply.send(Err(ClientError::Disconnected));
            }
        }
    }

    /// The task is done: everything still waiting fails with `Closed`.
    fn finish(&self) {
        let mut st = self.lock();
        st.finished = true;
        st.connected = false;
        if !st.queue.is_empty() {
            tracing::debug!(dropped = st.queue.len(), "client stopped with messages still queued");
            st.queue.clear();
        }
        for (_, p) in st.pending.drain() {
            let _ = p.reply.send(Err(ClientError::Closed));
        }
        drop(st);
        self.room.notify_waiters();
    }
}
