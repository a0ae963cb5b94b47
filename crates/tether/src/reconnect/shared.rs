//! State shared by the handles of a [`ReconnectingClient`](super::ReconnectingClient)
//! and its background task: the send queue, the subscribed topics and the
//! requests waiting for an ack. Handles only touch this (under a short-lived
//! lock) and wake the task; the task alone touches the socket.

use super::{Ack, ClientError, QueueFullPolicy};
use crate::v1::envelope::{self, Answer, Request};
use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;
use tether_proto::{CloseFrame, Message};
use tokio::sync::{oneshot, watch, Notify};

/// A message waiting for the socket.
pub(super) struct Outgoing {
    pub(super) msg: Message,
    /// The id of the `tether.v1` request it carries, if any.
    pub(super) request: Option<String>,
}

/// A request waiting for its `ack`.
pub(super) struct Pending {
    pub(super) reply: oneshot::Sender<Result<Ack, ClientError>>,
    /// Handed to a socket: a disconnect now fails it (the answer is lost).
    pub(super) sent: bool,
}

#[derive(Default)]
pub(super) struct State {
    pub(super) queue: VecDeque<Outgoing>,
    /// Subscribed through the helpers, in order; renewed after reconnects.
    pub(super) topics: Vec<String>,
    /// Where each subscribed topic stands, `(epoch, seq)` of the newest
    /// message (or of the subscribe ack): where a resume starts. An empty
    /// epoch with seq 0: subscribed to a topic that had no messages yet
    /// (its ack carried no position), so a resume asks for all it keeps.
    pub(super) positions: HashMap<String, (String, u64)>,
    pub(super) pending: HashMap<String, Pending>,
    pub(super) next_id: u64,
    pub(super) connected: bool,
    pub(super) finished: bool,
}

/// What the handles and the background task share.
pub(super) struct Shared {
    pub(super) state: Mutex<State>,
    /// Something was queued: the task should move it to the socket.
    pub(super) queued: Notify,
    /// Room was made in the queue, or the client finished.
    pub(super) room: Notify,
    /// `Some` once a close was requested.
    pub(super) close: watch::Sender<Option<CloseFrame>>,
    pub(super) queue_limit: usize,
    pub(super) queue_full: QueueFullPolicy,
    pub(super) json: bool,
    pub(super) ack_timeout: Duration,
}

impl Shared {
    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(super) fn closing(&self) -> bool {
        self.close.borrow().is_some()
    }

    /// Queue `out`, applying the queue-full policy. `Err` gives it back.
    pub(super) fn enqueue(&self, out: Outgoing, policy: QueueFullPolicy) -> Result<(), (Outgoing, ClientError)> {
        {
            let mut st = self.lock();
            if st.finished || self.closing() {
                return Err((out, ClientError::Closed));
            }
            if st.queue.len() >= self.queue_limit {
                match policy {
                    QueueFullPolicy::Reject => return Err((out, ClientError::QueueFull { limit: self.queue_limit })),
                    QueueFullPolicy::DropOldest => {
                        let dropped = st.queue.pop_front();
                        if let Some(id) = dropped.and_then(|d| d.request) {
                            if let Some(p) = st.pending.remove(&id) {
                                let _ = p.reply.send(Err(ClientError::QueueFull { limit: self.queue_limit }));
                            }
                        }
                    }
                }
            }
            st.queue.push_back(out);
        }
        self.queued.notify_one();
        Ok(())
    }

    /// Send a `tether.v1` request and wait for its ack.
    pub(super) async fn request(&self, request: Request<'_>) -> Result<Ack, ClientError> {
        if !self.json {
            return Err(ClientError::NotJson);
        }
        let (tx, rx) = oneshot::channel();
        let id = {
            let mut st = self.lock();
            st.next_id += 1;
            let id = format!("r{}", st.next_id);
            st.pending.insert(id.clone(), Pending { reply: tx, sent: false });
            id
        };
        let msg = Message::text(request.to_json(Some(&id)));
        if let Err((_, e)) = self.enqueue(Outgoing { msg, request: Some(id.clone()) }, self.queue_full) {
            self.lock().pending.remove(&id);
            return Err(e);
        }
        match tokio::time::timeout(self.ack_timeout, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(ClientError::Closed),
            Err(_) => {
                self.lock().pending.remove(&id);
                Err(ClientError::AckTimeout(self.ack_timeout))
            }
        }
    }

    /// Keep the position of a subscribed topic from a `message` (or, before
    /// any message, from an `ack` carrying an epoch), for resume.
    pub(super) fn track(&self, text: &str) {
        if !text.contains("\"seq\"") && !text.starts_with("{\"type\":\"ack\"") {
            return;
        }
        #[derive(serde::Deserialize)]
        struct Position<'a> {
            #[serde(rename = "type", borrow)]
            kind: std::borrow::Cow<'a, str>,
            #[serde(borrow)]
            topic: Option<std::borrow::Cow<'a, str>>,
            #[serde(borrow)]
            epoch: Option<std::borrow::Cow<'a, str>>,
            seq: Option<u64>,
        }
        let Ok(Position { kind, topic: Some(topic), epoch, seq }) = serde_json::from_str::<Position<'_>>(text) else { return };
        let (epoch, seq) = match (kind.as_ref(), epoch, seq) {
            (_, Some(epoch), Some(seq)) => (epoch, seq),
            // The ack of a subscription to a topic without messages yet.
            ("ack", None, None) => (std::borrow::Cow::Borrowed(""), 0),
            _ => return,
        };
        let mut st = self.lock();
        if !st.topics.iter().any(|t| *t == topic) {
            return;
        }
        match (kind.as_ref(), st.positions.get_mut(topic.as_ref())) {
            ("message", Some(pos)) if pos.0 != epoch || seq > pos.1 => *pos = (epoch.into_owned(), seq),
            ("message" | "ack", None) => {
                st.positions.insert(topic.into_owned(), (epoch.into_owned(), seq));
            }
            _ => {}
        }
    }

    /// If `text` answers a pending request, resolve it.
    pub(super) fn resolve(&self, text: &str) {
        let mut st = self.lock();
        if st.pending.is_empty() {
            return;
        }
        let (id, result) = match envelope::parse_answer(text) {
            Some(Answer::Ack { id, topic, seq }) => (id, Ok(Ack { topic, seq, data: None })),
            Some(Answer::RpcResult { id, data }) => (id, Ok(Ack { topic: None, seq: None, data: Some(data) })),
            Some(Answer::Error { id, code, message }) => (id, Err(ClientError::Refused { code, message })),
            None => return,
        };
        if let Some(p) = st.pending.remove(&id) {
            let _ = p.reply.send(result);
        }
    }
}

/// Refuse, at the call, what the socket would refuse later.
pub(super) fn checked(msg: Message) -> Result<Message, ClientError> {
    match &msg {
        Message::Close(_) => Err(ClientError::InvalidMessage("a close frame is sent with close(), which also stops reconnecting".into())),
        // RFC 6455 §5.5: control frames carry at most 125 bytes.
        Message::Ping(p) | Message::Pong(p) if p.len() > 125 => Err(ClientError::InvalidMessage(format!("ping or pong payload of {} bytes (max 125)", p.len()))),
        _ => Ok(msg),
    }
}
