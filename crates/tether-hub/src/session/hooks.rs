//! The hook side of a [`Session`]: hooked requests set aside while the
//! backend answers ([`HookQueue`]), and their answers applied in order on
//! the connection's next wake-up (see [`crate::hooks`]).

use super::{Session, MAX_SUBSCRIPTIONS};
use crate::auth::Grants;
use crate::broker::{Body, Resume};
use crate::envelope;
use crate::hooks::{HookAnswer, HookCall, HookRequest, MAX_PENDING_PER_CONNECTION};
use crate::hub::Hub;
use crate::queue::ConnShared;
use serde_json::value::RawValue;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use tether_proto::EncodedFrame;

/// What to do once the answer comes.
pub(crate) enum Action {
    Subscribe { topic: Arc<str>, resume: Option<Resume>, id: Option<serde_json::Value>, delta: bool },
    Publish { topic: Arc<str>, body: Body, id: Option<serde_json::Value>, key: Option<Arc<str>> },
    Rpc { id: serde_json::Value },
}

struct Pending {
    action: Action,
    answer: Arc<Mutex<Option<HookAnswer>>>,
}

/// A session's hooked requests waiting for their answers (allocated on
/// the first one: an idle connection pays one pointer).
#[derive(Default)]
pub(crate) struct HookQueue(Option<Box<VecDeque<Pending>>>);

impl HookQueue {
    /// As many wait as a connection may have: stop reading it.
    pub(crate) fn full(&self) -> bool {
        self.0.as_ref().is_some_and(|q| q.len() >= MAX_PENDING_PER_CONNECTION)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The content a hook sees: JSON as sent, a plain client's text as a JSON string.
fn content_of(body: &Body) -> Option<Arc<RawValue>> {
    match body {
        Body::Json(raw) => Some(raw.clone()),
        Body::Text(t) => RawValue::from_string(serde_json::to_string(&**t).ok()?).ok().map(Arc::from),
        Body::Binary(_) => None,
    }
}

impl Hub {
    /// Ask the backend about `action` for `conn`, and set it aside in
    /// `queue` until the answer comes (the call runs on the hub's runtime
    /// and wakes the connection when it is done).
    pub(crate) fn start_hook(&self, conn: &Arc<ConnShared>, grants: Option<&Arc<Grants>>, queue: &mut HookQueue, action: Action, method: Option<(Arc<str>, Arc<RawValue>)>) {
        let Some(hooks) = self.hooks.get() else { return };
        let request = match (&action, method) {
            (Action::Subscribe { topic, .. }, _) => HookRequest::Subscribe { topic: topic.clone() },
            (Action::Publish { topic, body, id, .. }, _) => match content_of(body) {
                Some(content) => HookRequest::Publish { topic: topic.clone(), content },
                None => return self.refuse(conn, "binary_not_supported", "binary messages cannot be published to a hooked namespace", id.as_ref()),
            },
            (Action::Rpc { .. }, Some((method, data))) => HookRequest::Rpc { method, data },
            (Action::Rpc { id }, None) => return self.refuse(conn, "invalid_field", "an rpc needs a method", Some(id)),
        };
        let call = HookCall { session: conn.session(), user: grants.map(|g| g.user.clone()), request };
        let answer = Arc::new(Mutex::new(None));
        let future = hooks.call(call);
        let (slot, waiting) = (answer.clone(), conn.clone());
        self.runtime.spawn(async move {
            let got = future.await;
            *lock(&slot) = Some(got);
            waiting.waker.wake();
        });
        queue.0.get_or_insert_with(Box::default).push_back(Pending { action, answer });
    }

    /// An `error` envelope (or, to a plain client, a text line).
    fn refuse(&self, conn: &Arc<ConnShared>, code: &str, message: &str, id: Option<&serde_json::Value>) {
        if conn.json {
            self.reply_error(conn, code, message, id);
        } else {
            self.reply(conn, EncodedFrame::text(&format!("[tether] {code}: {message}")));
        }
    }
}

impl Session {
    /// Apply the answers that came, oldest first, stopping at the first
    /// still awaited (so answers take effect in the order of the requests).
    pub(super) fn apply_hook_answers(&mut self, hub: &Hub) {
        let Some(queue) = &mut self.hooks.0 else { return };
        while let Some(front) = queue.front() {
            let Some(answer) = lock(&front.answer).take() else { break };
            let Some(Pending { action, .. }) = queue.pop_front() else { break };
            apply(hub, &self.conn, &mut self.topics, self.auth.grants(), action, answer);
        }
        if queue.is_empty() {
            self.hooks.0 = None;
        }
    }
}

fn apply(hub: &Hub, conn: &Arc<ConnShared>, topics: &mut super::Topics, grants: Option<&Arc<Grants>>, action: Action, answer: HookAnswer) {
    match (action, answer) {
        (Action::Subscribe { topic, id, .. }, HookAnswer::Refuse { code, message }) => {
            hub.count_auth("refused", "subscribe_hook");
            tracing::info!(session = %conn.session(), user = ?grants.map(|g| &*g.user), topic = ?topic, code, "refused subscribe: the backend's hook");
            hub.refuse(conn, &code, &message, id.as_ref());
        }
        (Action::Subscribe { topic, resume, id, delta }, _) => {
            if topics.contains(&topic) {
                if let Some(id) = id {
                    hub.reply(conn, EncodedFrame::text(&envelope::ack(&id, Some(&topic), None)));
                }
                return;
            }
            // A refresh while the hook was asked may have narrowed the grants.
            if grants.is_some_and(|g| !g.may_subscribe(&topic)) {
                return hub.refuse(conn, "forbidden", &format!("this token may not subscribe to {topic:?}"), id.as_ref());
            }
            if topics.len() >= MAX_SUBSCRIPTIONS {
                return hub.refuse(conn, "too_many_subscriptions", &format!("at most {MAX_SUBSCRIPTIONS} subscriptions per connection"), id.as_ref());
            }
            hub.count_auth("allowed", "subscribe_hook");
            topics.push(topic.clone());
            hub.subscribe_granted(conn, &topic, resume, id, delta, grants);
        }
        (Action::Publish { topic, id, .. }, HookAnswer::Refuse { code, message }) => {
            hub.count_auth("refused", "publish_hook");
            tracing::info!(session = %conn.session(), user = ?grants.map(|g| &*g.user), topic = ?topic, code, "refused publish: the backend's hook");
            hub.refuse(conn, &code, &message, id.as_ref());
        }
        (Action::Publish { topic, body, id, key }, answer) => {
            hub.count_auth("allowed", "publish_hook");
            let body = match answer {
                HookAnswer::Content(rewritten) => Body::Json(Arc::from(rewritten)),
                _ => body,
            };
            hub.publish_keyed(conn, grants, topic, body, id, key);
        }
        (Action::Rpc { id }, HookAnswer::Refuse { code, message }) => hub.refuse(conn, &code, &message, Some(&id)),
        (Action::Rpc { id }, HookAnswer::Content(data)) => hub.reply(conn, EncodedFrame::text(&envelope::rpc_result(&id, data.get()))),
        (Action::Rpc { id }, HookAnswer::Allow) => hub.reply(conn, EncodedFrame::text(&envelope::rpc_result(&id, "null"))),
    }
}
