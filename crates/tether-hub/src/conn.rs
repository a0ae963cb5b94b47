//! One client connection: read, dispatch, drain the outbound queue, and the
//! ways a connection ends (closed, heartbeat missed, too slow, shutdown).

use crate::broker::{Body, Origin, Publish, Resume};
use crate::config::SlowConsumerPolicy;
use crate::envelope::{self, ClientMessage};
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::queue::{flag, ConnShared};
use std::future::poll_fn;
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

/// Most topics one connection may subscribe to (bounds memory per client).
const MAX_SUBSCRIPTIONS: usize = 256;

enum End {
    Closed,
    Terminated,
    Slow,
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

        let end = poll_fn(|cx| loop {
            let flags = conn.flags.load(Ordering::Acquire);
            if flags & flag::TERMINATE != 0 {
                return Poll::Ready(End::Terminated);
            }
            if flags & flag::SLOW_CLOSE != 0 {
                return Poll::Ready(End::Slow);
            }
            if flags & flag::SHUTDOWN != 0 {
                return Poll::Ready(End::Shutdown);
            }
            conn.waker.register(cx.waker());
            // Move queued frames to the socket while under its high-water mark.
            while ws.pending_len() < ws.high_water() {
                let Some(frame) = conn.pop() else { break };
                if ws.start_send_encoded(frame).is_err() {
                    return Poll::Ready(End::Closed);
                }
            }
            let dropped = conn.dropped_unreported.swap(0, Ordering::Relaxed);
            if dropped > 0 {
                // Never silent: the client learns how much it missed.
                let notice = format!("{dropped} messages were dropped because this connection fell behind");
                let text = if json { envelope::error("lagged", &notice, None) } else { format!("[tether] {notice}") };
                let _ = ws.start_send_encoded(EncodedFrame::text(&text));
            }
            match ws.poll_recv(cx) {
                Poll::Pending => {
                    // poll_recv flushed what it could before waiting. If that
                    // took the socket's buffer below its mark, move more
                    // queued frames now: nothing else would wake this task
                    // for frames that were already queued (a replay).
                    if ws.pending_len() < ws.high_water() {
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
                Poll::Ready(Some(Ok(msg))) => self.handle(&conn, &room, &mut topics, msg),
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
            End::Closed => tracing::debug!(session = %conn.session, code = %ws.close_code(), "disconnected"),
            End::Terminated => {
                Metrics::add(&self.metrics.terminated_connections, 1);
                tracing::info!(session = %conn.session, "terminated: no answer to the previous heartbeat ping");
                // Dropping the socket closes TCP without a close handshake:
                // the peer is not answering anyway.
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
        conn.push_unbounded(EncodedFrame::text(&welcome));
        self.subscribe(&conn, &room, None, None);
        topics.push(room.clone());
        tracing::debug!(session = %conn.session, room = %room, json, "connected");
        (conn, room, topics, json)
    }

    fn handle(&self, conn: &Arc<ConnShared>, room: &Arc<str>, topics: &mut Vec<Arc<str>>, msg: Message) {
        match &msg {
            Message::Pong(_) => {
                conn.clear(flag::AWAITING_PONG);
                return;
            }
            Message::Ping(_) | Message::Close(_) => return,
            Message::Text(_) | Message::Binary(_) => {}
        }
        Metrics::add(&self.metrics.messages_in, 1);
        Metrics::add(&self.metrics.bytes_in, msg.len() as u64);
        if !conn.json {
            let body = match msg {
                Message::Text(t) => Body::Text(Arc::from(t.as_str())),
                Message::Binary(b) => Body::Binary(b),
                _ => return,
            };
            self.publish(conn, room.clone(), body, None);
            return;
        }
        let text = match &msg {
            Message::Text(t) => t.as_str(),
            _ => {
                self.reply_error(conn, "binary_not_supported", "tether.v1 messages are JSON text; binary messages are not accepted", None);
                return;
            }
        };
        match envelope::parse(text) {
            Err(e) => self.reply_error(conn, e.code, &e.message, e.id.as_ref()),
            Ok(ClientMessage::Chat { content, id }) => self.publish(conn, room.clone(), Body::Json(Arc::from(content)), id),
            Ok(ClientMessage::Publish { topic, content, id }) => self.publish(conn, Arc::from(topic), Body::Json(Arc::from(content)), id),
            Ok(ClientMessage::Subscribe { topic, since, epoch, id }) => {
                let topic: Arc<str> = Arc::from(topic);
                if topics.contains(&topic) {
                    // Already live: nothing to replay (a resume needs a new subscription).
                    if let Some(id) = id {
                        conn.push_unbounded(EncodedFrame::text(&envelope::ack(&id, Some(&topic), None)));
                    }
                    return;
                }
                if topics.len() >= MAX_SUBSCRIPTIONS {
                    self.reply_error(conn, "too_many_subscriptions", &format!("at most {MAX_SUBSCRIPTIONS} subscriptions per connection"), id.as_ref());
                    return;
                }
                topics.push(topic.clone());
                // The ack (with the starting epoch and seq) comes once the
                // broker has answered, after any replay.
                self.subscribe(conn, &topic, since.map(|since| Resume { since, epoch }), id);
            }
            Ok(ClientMessage::Unsubscribe { topic, id }) => {
                if let Some(pos) = topics.iter().position(|t| **t == *topic) {
                    let topic = topics.swap_remove(pos);
                    self.unsubscribe(conn, &topic);
                    if let Some(id) = id {
                        conn.push_unbounded(EncodedFrame::text(&envelope::ack(&id, Some(&topic), None)));
                    }
                } else {
                    self.reply_error(conn, "not_subscribed", &format!("not subscribed to {topic:?}"), id.as_ref());
                }
            }
            Ok(ClientMessage::Ping { id }) => {
                let id = id.unwrap_or(serde_json::Value::Null);
                conn.push_unbounded(EncodedFrame::text(&envelope::ack(&id, None, None)));
            }
        }
    }

    fn publish(&self, conn: &Arc<ConnShared>, topic: Arc<str>, body: Body, id: Option<serde_json::Value>) {
        Metrics::add(&self.metrics.broadcasts, 1);
        let ack_id = id.clone();
        let msg = Publish { topic, sender: Arc::from(&*conn.session), timestamp_ms: now_ms(), body, origin: Origin { conn: conn.id, id } };
        if let Err(e) = self.broker.publish(msg) {
            self.reply_error(conn, "unavailable", &format!("message not published: {e}"), ack_id.as_ref());
        }
    }

    fn reply_error(&self, conn: &Arc<ConnShared>, code: &str, message: &str, id: Option<&serde_json::Value>) {
        Metrics::add(&self.metrics.client_errors, 1);
        if conn.json {
            conn.push_unbounded(EncodedFrame::text(&envelope::error(code, message, id)));
        }
    }
}
