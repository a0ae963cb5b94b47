//! Lifecycle events for the application's backend (webhooks in `tether
//! serve`): a topic gained its first subscriber on this node or lost its
//! last one, a session joined or left a topic. The hub hands each to an
//! [`EventSink`] as it happens, without waiting: the sink must only queue
//! it (bounded), never do I/O in the call.
//!
//! Joins and leaves are those of this node's sessions, so over a cluster
//! each is reported once, by the node that holds the session; occupied and
//! vacated are per node.

use crate::hub::Hub;
use std::sync::Arc;

/// Something that happened to a topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LifecycleEvent {
    /// The topic got its first subscriber on this node.
    Occupied {
        /// The topic.
        topic: Arc<str>,
    },
    /// The topic's last subscriber on this node left.
    Vacated {
        /// The topic.
        topic: Arc<str>,
    },
    /// A session of this node subscribed to the topic.
    Join {
        /// The topic.
        topic: Arc<str>,
        /// The session.
        session: String,
        /// Its user, if authenticated.
        user: Option<Arc<str>>,
    },
    /// A session of this node left the topic (unsubscribed or disconnected).
    Leave {
        /// The topic.
        topic: Arc<str>,
        /// The session.
        session: String,
        /// Its user, if authenticated.
        user: Option<Arc<str>>,
    },
}

/// Where the hub reports [`LifecycleEvent`]s ([`Hub::set_event_sink`]).
pub trait EventSink: Send + Sync + 'static {
    /// One event. Called with no hub lock held; must not block.
    fn event(&self, event: LifecycleEvent);
}

impl Hub {
    /// Report lifecycle events to `sink` from now on (once; later calls
    /// are ignored).
    pub fn set_event_sink(&self, sink: Arc<dyn EventSink>) {
        let _ = self.events.set(sink);
    }

    pub(crate) fn emit(&self, event: impl FnOnce() -> LifecycleEvent) {
        if let Some(sink) = self.events.get() {
            sink.event(event());
        }
    }
}
