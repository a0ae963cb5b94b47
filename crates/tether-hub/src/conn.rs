//! One client connection: read, dispatch, drain the outbound queue, and the
//! ways a connection ends (closed, heartbeat missed, too slow, shutdown).

use crate::broker::{Body, Origin, Publish, Resume};
use crate::config::SlowConsumerPolicy;
use crate::envelope::{self, ClientMessage};
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::queue::{flag, ConnShared};
use crate::limit::{Limiter, RateLimit, Verdict};
use std::future::poll_fn;
use std::ops::ControlFlow;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tether::{CloseCode, Message, WebSocket};
use tether_proto::EncodedFrame;
use tokio::io::{AsyncRead, AsyncWrite};

/// What the HTTP layer knows about a connection.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    /// The default room: the URL path of the upgrade request.
    pub room: String,
}

/// Just the `id` of a request (to answer a refused one).
#[derive(serde::Deserialize)]
struct IdOnly {
    id: Option<serde_json::Value>,
}

/// Most topics one connection may subscribe to (bounds memory per client).
const MAX_SUBSCRIPTIONS: usize = 256;

enum End {
    Closed,
    Terminated,
    Slow,
    Stalled,
    RateLimited,
    Shutdown,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl Hub {
    /// Run one accepted WebSocket until it ends. Plain clients (no
    /// subprotocol) get the tutorial behaviour: a welcome line, and every text
    /// message broadcast to the room; `tether.v1` clients speak JSON envelopes.
    ///
    /// The returned future lives as long as the client, so it is kept small:
    /// a plain `fn` returning an `async move` block stores the socket once
    /// (an `async fn` argument is stored twice, rust-lang/rust#62958), setup
    /// temporaries live in a synchronous helper, and the closing path is boxed.
    pub fn run_connection<'a, S: AsyncRead + AsyncWrite + Unpin + 'a>(self: &'a Arc<Self>, mut ws: WebSocket<S>, info: ConnInfo) -> impl std::future::Future<Output = ()> + 'a {
        async move {
        let (conn, room, mut topics, json) = self.open_connection(ws.protocol() == Some(crate::PROTOCOL_V1), info);

        let mut limiter = Limiter::default();
        // What the socket had queued when last looked at: less now means the
        // peer is reading (write progress, for the write-stall check).
        let mut last_pending = 0usize;
        let end = poll_fn(|cx| loop {
            let flags = conn.flags.load(Ordering::Acquire);
            if flags & (flag::TERMINATE | flag::SLOW_CLOSE | flag::SHUTDOWN | flag::STALLED) != 0 {
                return Poll::Ready(if flags & flag::TERMINATE != 0 {
                    End::Terminated
                } else if flags & flag::STALLED != 0 {
                    End::Stalled
                } else if flags & flag::SLOW_CLOSE != 0 {
                    End::Slow
                } else {
                    End::Shutdown
                });
            }
            conn.waker.register(cx.waker());
            if flags & flag::PING_DUE != 0 {
                conn.clear(flag::PING_DUE);
                // Straight to the socket, not through the queue: a ping is
                // never dropped with the broadcasts, and is bounded (one per round).
                let _ = ws.start_send_encoded(EncodedFrame::ping(&self.ping_payload()));
            }
            // Move queued frames to the socket while it holds less than half
            // its high-water mark: the other half is headroom for the
            // replies the protocol obliges (pongs), so a slow reader's
            // pongs are still read while broadcasts wait for it.
            let pending = ws.pending_len();
            if (pending < last_pending || pending == 0) && flags & flag::PROGRESS == 0 {
                conn.flags.fetch_or(flag::PROGRESS, Ordering::AcqRel);
            }
            while ws.pending_len() < ws.high_water() / 2 {
                let Some(frame) = conn.pop() else { break };
                if ws.start_send_encoded(frame).is_err() {
                    return Poll::Ready(End::Closed);
                }
            }
            last_pending = ws.pending_len();
            if ws.pending_len() < ws.high_water() / 2 {
                // A plain load first: the swap (a write) only when there is news.
                let dropped = if conn.dropped_unreported.load(Ordering::Relaxed) > 0 { conn.dropped_unreported.swap(0, Ordering::Relaxed) } else { 0 };
                if dropped > 0 {
                    // Never silent: the client learns how much it missed.
                    let notice = format!("{dropped} messages were dropped because this connection fell behind");
                    let text = if json { envelope::error("lagged", &notice, None) } else { format!("[tether] {notice}") };
                    let _ = ws.start_send_encoded(EncodedFrame::text(&text));
                }
            }
            if conn.replies_over() {
                // The client is not reading what it asked for: stop reading
                // it (TCP backpressure does the rest) until that drains.
                match ws.poll_write_pending(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Err(_)) => return Poll::Ready(End::Closed),
                    Poll::Ready(Ok(())) => continue,
                }
            }
            match ws.poll_recv(cx) {
                Poll::Pending => {
                    // poll_recv flushed what it could before waiting. If that
                    // took the socket's buffer below the fill mark, move more
                    // queued frames now: nothing else would wake this task
                    // for frames that were already queued (a replay).
                    if ws.pending_len() < ws.high_water() / 2 {
                        if let Some(frame) = conn.pop() {
                            if ws.start_send_encoded(frame).is_err() {
                                return Poll::Ready(End::Closed);
                            }
                            continue;
                        }
                    }
                    // The socket is still full: wait for it (the waker is set).
                    return Poll::Pending;
                }
                Poll::Ready(None) => return Poll::Ready(End::Closed),
                Poll::Ready(Some(Err(e))) => {
                    tracing::debug!(session = %conn.session, error = %e, "connection error");
                    return Poll::Ready(End::Closed);
                }
                Poll::Ready(Some(Ok(msg))) => {
                    if self.handle(&conn, &room, &mut topics, &mut limiter, msg).is_break() {
                        return Poll::Ready(End::RateLimited);
                    }
                }
            }
        })
        .await;

        self.unregister(&conn, &topics);
        Box::pin(self.finish(&mut ws, &conn, end)).await;
        }
    }

    /// How a connection ends (boxed by the caller: rarely reached, and its
    /// close futures would otherwise be sized into every connection's task).
    async fn finish<S: AsyncRead + AsyncWrite + Unpin>(&self, ws: &mut WebSocket<S>, conn: &Arc<ConnShared>, end: End) {
        match end {
            End::Closed => {
                // After a protocol error the socket sends its close frame and
                // lingers briefly, so the peer sees the code, not a reset.
                let _ = tokio::time::timeout(Duration::from_secs(2), async { while ws.recv().await.is_some() {} }).await;
                tracing::debug!(session = %conn.session, code = %ws.close_code(), "disconnected");
            }
            End::Terminated => {
                Metrics::add(&self.metrics.terminated_connections, 1);
                tracing::info!(session = %conn.session, "terminated: no answer to the previous heartbeat ping");
                // Dropping the socket closes TCP without a close handshake:
                // the peer is not answering anyway.
            }
            End::Stalled => {
                Metrics::add(&self.metrics.write_stall_closes, 1);
                tracing::info!(session = %conn.session, timeout = ?self.config.write_stall_timeout, "dropped: nothing could be written to it for the write-stall timeout");
                // No close handshake: the peer is not reading.
            }
            End::RateLimited => {
                Metrics::add(&self.metrics.rate_limit_closes, 1);
                tracing::info!(session = %conn.session, "closing a client that kept exceeding its rate limit");
                let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(CloseCode::POLICY_VIOLATION, "rate limit exceeded")).await;
            }
            End::Slow => {
                Metrics::add(&self.metrics.slow_consumer_closes, 1);
                let code = match self.config.slow_consumer {
                    SlowConsumerPolicy::Close(code) => code,
                    SlowConsumerPolicy::DropOldest => CloseCode::TRY_AGAIN_LATER.0,
                };
                tracing::info!(session = %conn.session, code, "closing a client that fell behind");
                let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(code, "too slow: outbound queue full")).await;
            }
            End::Shutdown => {
                let _ = tokio::time::timeout(Duration::from_secs(3), ws.close(CloseCode::GOING_AWAY, "server shutting down")).await;
            }
        }
    }

    fn open_connection(self: &Arc<Self>, json: bool, info: ConnInfo) -> (Arc<ConnShared>, Arc<str>, Vec<Arc<str>>, bool) {
        let conn = self.register(json);
        let room: Arc<str> = Arc::from(info.room.as_str());
        let mut topics: Vec<Arc<str>> = Vec::new();
        let welcome = if json {
            envelope::welcome(&conn.session, &room)
        } else {
            self.config.welcome.replace("{session}", &conn.session).replace("{room}", &room)
        };
        self.reply(&conn, EncodedFrame::text(&welcome));
        self.subscribe(&conn, &room, None, None);
        topics.push(room.clone());
        tracing::debug!(session = %conn.session, room = ?room, json, "connected");
        (conn, room, topics, json)
    }

    /// One message from the client. `Break` when its rate limit says close.
    fn handle(&self, conn: &Arc<ConnShared>, room: &Arc<str>, topics: &mut Vec<Arc<str>>, limiter: &mut Limiter, msg: Message) -> ControlFlow<()> {
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
            self.publish(conn, room.clone(), body, None);
            return ControlFlow::Continue(());
        }
        let Some(parsed) = parsed else {
            self.reply_error(conn, "binary_not_supported", "tether.v1 messages are JSON text; binary messages are not accepted", None);
            return ControlFlow::Continue(());
        };
        match parsed {
            Err(e) => self.reply_error(conn, e.code, &e.message, e.id.as_ref()),
            Ok(ClientMessage::Chat { content, id }) => self.publish(conn, room.clone(), Body::Json(Arc::from(content)), id),
            Ok(ClientMessage::Publish { topic, content, id, key }) => self.publish_keyed(conn, Arc::from(topic), Body::Json(Arc::from(content)), id, key.map(Arc::from)),
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
                if topics.len() >= MAX_SUBSCRIPTIONS {
                    self.reply_error(conn, "too_many_subscriptions", &format!("at most {MAX_SUBSCRIPTIONS} subscriptions per connection"), id.as_ref());
                    return ControlFlow::Continue(());
                }
                topics.push(topic.clone());
                // The ack (with the starting epoch and seq) comes once the
                // broker has answered, after any replay.
                self.subscribe_with(conn, &topic, since.map(|since| Resume { since, epoch }), id, delta);
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

    fn publish(&self, conn: &Arc<ConnShared>, topic: Arc<str>, body: Body, id: Option<serde_json::Value>) {
        self.publish_keyed(conn, topic, body, id, None);
    }

    fn publish_keyed(&self, conn: &Arc<ConnShared>, topic: Arc<str>, body: Body, id: Option<serde_json::Value>, key: Option<Arc<str>>) {
        if self.intercept_publish(conn, &topic, &body, id.as_ref()) {
            return;
        }
        Metrics::add(&self.metrics.broadcasts, 1);
        let ack_id = id.clone();
        let msg = Publish { topic, sender: Arc::from(&*conn.session), timestamp_ms: now_ms(), body, key, origin: Origin { conn: conn.id, id } };
        if let Err(e) = self.broker.publish(msg) {
            self.reply_error(conn, "unavailable", &format!("message not published: {e}"), ack_id.as_ref());
        }
    }

    fn reply_error(&self, conn: &Arc<ConnShared>, code: &str, message: &str, id: Option<&serde_json::Value>) {
        Metrics::add(&self.metrics.client_errors, 1);
        if conn.json {
            self.reply(conn, EncodedFrame::text(&envelope::error(code, message, id)));
        }
    }
}
