//! Several nodes serving the same documents: what a node hands to the
//! others ([`Relay`]), and what it does with what they send (the
//! `apply_remote_*` methods of [`Yjs`]). `RedisShare` (feature `redis`)
//! carries both through Redis.

use crate::protocol;
use crate::Yjs;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Carries a node's document changes to the other nodes. Called under the
/// document's lock, after the change was stored; must not wait long.
pub trait Relay: Send + Sync + 'static {
    /// An update integrated on this node (Yjs v1).
    fn update(&self, name: &str, update: &[u8]);
    /// An awareness change accepted on this node, as the y-websocket
    /// awareness message sent to clients (message type 1, then the
    /// y-protocols update), including the null states of a connection that
    /// left.
    fn awareness(&self, name: &str, message: &[u8]);
    /// This node opened `name`: the others may send their awareness states
    /// (answered through [`Yjs::awareness_of`]).
    fn opened(&self, name: &str);
}

impl Yjs {
    fn open_document(&self, name: &str) -> Option<Arc<crate::Document>> {
        self.docs.lock().unwrap_or_else(|p| p.into_inner()).get(name).cloned()
    }

    /// An update from another node: integrated into `name` if it is open
    /// here and sent to its connections (what was new); ignored otherwise
    /// (the shared store has it for whoever opens the document).
    pub fn apply_remote_update(&self, name: &str, update: &[u8]) {
        let Some(doc) = self.open_document(name) else { return };
        let mut state = doc.lock();
        match state.apply_stored(update) {
            Ok(integrated) => {
                self.metrics.updates_total.fetch_add(integrated.len() as u64, Ordering::Relaxed);
                for u in &integrated {
                    state.broadcast(&protocol::encode_sync(protocol::SYNC_UPDATE, u), None);
                }
            }
            Err(why) => tracing::warn!(document = name, why, "ignoring an update from another node"),
        }
    }

    /// An awareness message from another node (see [`Relay::awareness`]):
    /// applied to `name` if it is open here (by the usual clock rule) and
    /// sent to its connections.
    pub fn apply_remote_awareness(&self, name: &str, message: &[u8]) {
        let Some(doc) = self.open_document(name) else { return };
        let Ok(protocol::ClientMessage::Awareness(update)) = protocol::decode(message) else {
            tracing::warn!(document = name, "ignoring a malformed awareness message from another node");
            return;
        };
        let applied = doc.lock().apply_awareness(None, &self.config, update);
        if let Err(closing) = applied {
            tracing::warn!(document = name, reason = %closing.reason, "ignoring an awareness update from another node");
        }
    }

    /// Every awareness state of `name` this node knows, as one awareness
    /// message (`None` if the document is not open here or has none).
    pub fn awareness_of(&self, name: &str) -> Option<bytes::Bytes> {
        let doc = self.open_document(name)?;
        let state = doc.lock();
        state.has_awareness().then(|| state.all_awareness())
    }

    /// Re-read every open document from the store and send its
    /// connections what they lacked, then write it back whole (merged with
    /// what the store holds) and relay it whole: after a relay lost
    /// messages, or the shared store restarted empty.
    pub fn reload_all(&self) {
        let Some(store) = &self.store else { return };
        let docs: Vec<_> = self.docs.lock().unwrap_or_else(|p| p.into_inner()).values().cloned().collect();
        for doc in docs {
            let updates = match store.load(&doc.name) {
                Ok(updates) => updates,
                Err(e) => {
                    self.metrics.store_errors_total.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(document = %doc.name, error = %e, "cannot reload a document");
                    continue;
                }
            };
            let mut state = doc.lock();
            for update in updates {
                if let Ok(integrated) = state.apply_stored(&update) {
                    for u in &integrated {
                        state.broadcast(&protocol::encode_sync(protocol::SYNC_UPDATE, u), None);
                    }
                }
            }
            self.write_whole(&doc.name, &mut state, store.as_ref());
            if let Some(relay) = &self.relay {
                relay.update(&doc.name, &state.encode_state());
            }
        }
    }
}
