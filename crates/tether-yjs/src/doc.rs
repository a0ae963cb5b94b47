//! One shared document: its yrs state, its peers (connections on this node)
//! and its awareness table. Everything here runs under the document's lock
//! and never waits: messages to peers go into their unbounded channels,
//! whose queued bytes are bounded per peer (a peer over the bound is
//! kicked with 1013).

use crate::protocol::{self, AwarenessEntry, ClientMessage};
use crate::{Access, Closing, YjsConfig};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use tether::{CloseCode, EncodedFrame};
use tokio::sync::{mpsc, Notify};
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{ReadTxn, StateVector, Transact, Update};

/// What a connection shares with the documents that send to it.
#[derive(Debug, Default)]
pub(crate) struct PeerShared {
    /// Bytes in the channel, not yet taken by the connection task.
    pub queued: AtomicUsize,
    /// Set once when the peer must go (queue over its bound, server limit).
    pub kicked: OnceLock<Closing>,
    /// Wakes the connection task after `kicked` is set.
    pub kick: Notify,
}

pub(crate) struct Peer {
    tx: mpsc::UnboundedSender<EncodedFrame>,
    shared: Arc<PeerShared>,
    /// The awareness client ids this connection announced (cleared when it goes).
    controlled: Vec<u64>,
}

struct AwarenessState {
    clock: u64,
    /// JSON text; `None` once the client went away (the clock is kept, as
    /// y-protocols does, so an older state cannot come back).
    state: Option<Box<str>>,
}

/// The mutable state of a document, under its lock.
pub(crate) struct DocState {
    pub ydoc: yrs::Doc,
    /// Updates integrated by the last transaction (filled by the observer).
    integrated: Arc<Mutex<Vec<Vec<u8>>>>,
    /// Bytes of the document: its encoded size when loaded plus every
    /// integrated update since (Yjs documents only grow).
    pub size: usize,
    peers: HashMap<u64, Peer>,
    awareness: HashMap<u64, AwarenessState>,
    /// Updates integrated since the document was last written whole.
    pub unsaved: usize,
    /// Most bytes queued for one peer before it is kicked.
    max_queued: usize,
}

/// What a handled message asks of the connection.
pub(crate) struct Handled {
    /// Send to this connection only.
    pub reply: Option<EncodedFrame>,
    /// Integrated updates, to persist and to relay to other nodes.
    pub updates: Vec<Vec<u8>>,
    /// Accepted awareness entries, re-encoded, to relay to other nodes.
    pub awareness: Option<bytes::Bytes>,
}

impl DocState {
    pub fn new(max_queued: usize) -> Self {
        let ydoc = yrs::Doc::new();
        let integrated = Arc::new(Mutex::new(Vec::new()));
        let sink = integrated.clone();
        // Every transaction's integrated changes (what was new to us), as y-websocket broadcasts.
        let _ = ydoc.observe_update_v1("tether-yjs", move |_txn, event| {
            sink.lock().unwrap_or_else(|p| p.into_inner()).push(event.update.clone());
        });
        DocState { ydoc, integrated, size: 0, peers: HashMap::new(), awareness: HashMap::new(), unsaved: 0, max_queued }
    }

    /// Whether any client has an awareness state now.
    pub fn has_awareness(&self) -> bool {
        self.awareness.values().any(|a| a.state.is_some())
    }

    /// Number of connections on this node.
    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    /// The whole document as one update (v1).
    pub fn encode_state(&self) -> Vec<u8> {
        self.ydoc.transact().encode_state_as_update_v1(&StateVector::default())
    }

    /// Apply an update from the store or another node (trusted as far as
    /// decoding goes, but never panicking); returns the integrated updates.
    pub fn apply_stored(&mut self, update: &[u8]) -> Result<Vec<Vec<u8>>, &'static str> {
        self.apply(update)
    }

    fn apply(&mut self, update: &[u8]) -> Result<Vec<Vec<u8>>, &'static str> {
        let ydoc = &self.ydoc;
        // yrs decodes hostile bytes without panicking in the cases we test,
        // but a panic here must not take the server down.
        let applied = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let update = Update::decode_v1(update).map_err(|_| "malformed Yjs update")?;
            ydoc.transact_mut().apply_update(update).map_err(|_| "Yjs update could not be applied")
        }))
        .unwrap_or(Err("Yjs update could not be applied"));
        let integrated = std::mem::take(&mut *self.integrated.lock().unwrap_or_else(|p| p.into_inner()));
        applied?;
        self.size += integrated.iter().map(Vec::len).sum::<usize>();
        self.unsaved += integrated.len();
        Ok(integrated)
    }

    /// Register a connection; returns the greeting: sync step 1, and every
    /// awareness state if there are any (as y-websocket's server does).
    pub fn join(&mut self, conn: u64, tx: mpsc::UnboundedSender<EncodedFrame>, shared: Arc<PeerShared>) -> Vec<EncodedFrame> {
        self.peers.insert(conn, Peer { tx, shared, controlled: Vec::new() });
        let sv = self.ydoc.transact().state_vector().encode_v1();
        let mut greeting = vec![EncodedFrame::binary(&protocol::encode_sync(protocol::SYNC_STEP_1, &sv))];
        if self.awareness.values().any(|a| a.state.is_some()) {
            greeting.push(EncodedFrame::binary(&self.all_awareness()));
        }
        greeting
    }

    /// A connection went: its awareness states are cleared (a null state
    /// with the next clock goes to every other peer). Returns that message,
    /// if any, for relaying to other nodes.
    pub fn leave(&mut self, conn: u64) -> Option<bytes::Bytes> {
        let peer = self.peers.remove(&conn)?;
        let mut cleared = Vec::new();
        for client in peer.controlled {
            if let Some(a) = self.awareness.get_mut(&client) {
                if a.state.take().is_some() {
                    a.clock += 1;
                    cleared.push((client, a.clock));
                }
            }
        }
        if cleared.is_empty() {
            return None;
        }
        let msg = protocol::encode_awareness(cleared.iter().map(|&(client, clock)| AwarenessEntry { client, clock, state: "null" }));
        self.broadcast(&msg, None);
        Some(msg)
    }

    pub fn all_awareness(&self) -> bytes::Bytes {
        protocol::encode_awareness(
            self.awareness
                .iter()
                .filter_map(|(&client, a)| a.state.as_deref().map(|state| AwarenessEntry { client, clock: a.clock, state })),
        )
    }

    /// Send `msg` to every peer except `except`; a peer whose queue passed
    /// its bound is kicked.
    pub fn broadcast(&self, msg: &[u8], except: Option<u64>) {
        let frame = EncodedFrame::binary(msg);
        for (&id, peer) in &self.peers {
            if Some(id) == except || peer.shared.kicked.get().is_some() {
                continue;
            }
            let queued = peer.shared.queued.fetch_add(frame.len(), Ordering::Relaxed) + frame.len();
            if queued > self.max_queued {
                kick(&peer.shared, Closing::new(CloseCode::TRY_AGAIN_LATER, "too far behind: the document changes faster than this connection reads"));
                continue;
            }
            let _ = peer.tx.send(frame.clone());
        }
    }

    /// Handle one message from connection `conn`.
    pub fn handle(&mut self, conn: u64, config: &YjsConfig, access: Access, message: &[u8]) -> Result<Handled, Closing> {
        let mut handled = Handled { reply: None, updates: Vec::new(), awareness: None };
        let msg = protocol::decode(message).map_err(|e| Closing::new(CloseCode::INVALID_PAYLOAD, &format!("malformed y-websocket message: {e}")))?;
        match msg {
            ClientMessage::SyncStep1(sv) => {
                let sv = StateVector::decode_v1(sv).map_err(|_| Closing::new(CloseCode::INVALID_PAYLOAD, "malformed state vector"))?;
                let diff = self.ydoc.transact().encode_diff_v1(&sv);
                handled.reply = Some(EncodedFrame::binary(&protocol::encode_sync(protocol::SYNC_STEP_2, &diff)));
            }
            // A read-only connection's step 2 (what it has that the server
            // lacks: nothing, unless it edited offline) is not applied; an
            // update (an edit) is refused.
            ClientMessage::SyncStep2(_) if !access.may_write() => {}
            ClientMessage::Update(_) if !access.may_write() => {
                return Err(Closing::new(CloseCode::POLICY_VIOLATION, "read-only: the token does not allow writing to this document (publish grant yjs:NAME)"));
            }
            ClientMessage::SyncStep2(update) | ClientMessage::Update(update) => {
                if self.size + update.len() > config.max_document_bytes {
                    return Err(Closing::new(
                        CloseCode::POLICY_VIOLATION,
                        &format!("document would exceed {} bytes (max_document_bytes)", config.max_document_bytes),
                    ));
                }
                let integrated = self.apply(update).map_err(|why| Closing::new(CloseCode::INVALID_PAYLOAD, why))?;
                for u in &integrated {
                    self.broadcast(&protocol::encode_sync(protocol::SYNC_UPDATE, u), Some(conn));
                }
                handled.updates = integrated;
            }
            ClientMessage::Awareness(update) => {
                handled.awareness = self.apply_awareness(Some(conn), config, update)?;
            }
            ClientMessage::QueryAwareness => {
                handled.reply = Some(EncodedFrame::binary(&self.all_awareness()));
            }
            ClientMessage::Auth => {}
        }
        Ok(handled)
    }

    /// Apply an awareness update (from connection `from`, or from another
    /// node when `None`) by y-protocols' rule: a state replaces one with a
    /// lower clock; a null state with the same clock removes it. Accepted
    /// entries go to every peer, the sender included (its client counts
    /// them as the server's sign of life). Returns them re-encoded.
    pub fn apply_awareness(&mut self, from: Option<u64>, config: &YjsConfig, update: &[u8]) -> Result<Option<bytes::Bytes>, Closing> {
        let entries = protocol::decode_awareness(update, config.max_awareness_clients)
            .map_err(|e| Closing::new(CloseCode::INVALID_PAYLOAD, &format!("malformed awareness update: {e}")))?;
        let too_many = || Closing::new(CloseCode::POLICY_VIOLATION, &format!("more than {} awareness clients on one connection (max_awareness_clients)", config.max_awareness_clients));
        if entries.len() > config.max_awareness_clients {
            return Err(too_many());
        }
        let mut accepted = Vec::new();
        for e in entries {
            if e.state.len() > config.max_awareness_bytes {
                return Err(Closing::new(CloseCode::POLICY_VIOLATION, &format!("awareness state over {} bytes (max_awareness_bytes)", config.max_awareness_bytes)));
            }
            if serde_json::from_str::<&serde_json::value::RawValue>(e.state).is_err() {
                return Err(Closing::new(CloseCode::INVALID_PAYLOAD, "awareness state is not JSON"));
            }
            let is_null = e.state.trim() == "null";
            let current = self.awareness.get(&e.client);
            let (clock, present) = current.map_or((0, false), |a| (a.clock, a.state.is_some()));
            if !(clock < e.clock || (clock == e.clock && is_null && present)) {
                continue;
            }
            if current.is_none() && self.awareness.len() >= config.max_awareness_per_document {
                // Forget clients that went away before refusing a new one.
                self.awareness.retain(|_, a| a.state.is_some());
                if self.awareness.len() >= config.max_awareness_per_document {
                    return Err(Closing::new(CloseCode::TRY_AGAIN_LATER, "too many awareness clients in this document"));
                }
            }
            if let Some(peer) = from.and_then(|c| self.peers.get_mut(&c)) {
                if is_null {
                    peer.controlled.retain(|&c| c != e.client);
                } else if !peer.controlled.contains(&e.client) {
                    if peer.controlled.len() >= config.max_awareness_clients {
                        return Err(too_many());
                    }
                    peer.controlled.push(e.client);
                }
            }
            let state = (!is_null).then(|| Box::<str>::from(e.state));
            self.awareness.insert(e.client, AwarenessState { clock: e.clock, state });
            accepted.push(e);
        }
        if accepted.is_empty() {
            return Ok(None);
        }
        let msg = protocol::encode_awareness(accepted);
        self.broadcast(&msg, None);
        Ok(Some(msg))
    }
}

impl DocState {
    /// Close every connection of this document with `closing`.
    pub fn kick_all(&self, closing: &Closing) {
        for peer in self.peers.values() {
            kick(&peer.shared, closing.clone());
        }
    }
}

/// Tell a peer's connection task to close.
pub(crate) fn kick(peer: &PeerShared, closing: Closing) {
    if peer.kicked.set(closing).is_ok() {
        peer.kick.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_that_does_not_read_is_kicked_when_its_queue_passes_the_bound() {
        let mut state = DocState::new(1000);
        let (tx, _rx) = mpsc::unbounded_channel();
        let slow = Arc::new(PeerShared::default());
        state.join(1, tx, slow.clone());
        let (tx2, _rx2) = mpsc::unbounded_channel();
        let sender = Arc::new(PeerShared::default());
        state.join(2, tx2, sender.clone());
        let config = YjsConfig::default();
        let mut kicked_after = None;
        for i in 0..100 {
            // A fresh client each time: every update is new to the document.
            let other = yrs::Doc::new();
            {
                use yrs::Text;
                let t = other.get_or_insert_text("t");
                t.insert(&mut other.transact_mut(), 0, &"x".repeat(100));
            }
            let update = other.transact().encode_state_as_update_v1(&StateVector::default());
            state.handle(2, &config, Access::ReadWrite, &protocol::encode_sync(protocol::SYNC_UPDATE, &update)).unwrap();
            if slow.kicked.get().is_some() {
                kicked_after = Some(i);
                break;
            }
        }
        let kicked = slow.kicked.get().expect("the slow peer was never kicked");
        assert_eq!(kicked.code, CloseCode::TRY_AGAIN_LATER);
        assert!(kicked_after.unwrap() < 12, "kicked only after {kicked_after:?} updates");
        assert!(sender.kicked.get().is_none(), "the sender gets none of its own updates");
    }
}
