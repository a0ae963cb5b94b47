//! Game rooms: topics under `$room:` batch their players' updates.
//!
//! In a room each player publishes its own state (a position, at up to
//! 60 Hz). Broadcasting each update would cost N² frames a second for N
//! players; instead the hub keeps the latest state per player and, once per
//! tick (`HubConfig::room_tick`), publishes one message to the room:
//! `{"players":{"<session>":<state>,...}}`, keyed by the node id. Every
//! subscriber gets one frame per tick whatever the number of players; a
//! late joiner gets the whole state at the next tick; a player who leaves
//! (unsubscribes or disconnects) is gone from the next one. With
//! `"delta":"merge-patch"` a subscriber receives only what changed (a
//! departed player is `null`, as RFC 7396 removes members).
//!
//! A player must be subscribed to the room it publishes to (so that its
//! leaving is seen). Bounded: [`MAX_PLAYERS`] per room, [`MAX_STATE_BYTES`]
//! per state, one room per subscribed topic. Each node batches its own
//! players (with Redis, each node's message has its node id as key).

use crate::broker::{node_id, Body};
use crate::hub::Hub;
use serde_json::value::RawValue;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

/// Topics under this prefix are rooms.
pub const ROOM_PREFIX: &str = "$room:";

/// Most players in one room (per node); more are refused.
pub const MAX_PLAYERS: usize = 256;

/// Largest state one player may publish.
pub const MAX_STATE_BYTES: usize = 1024;

/// Whether `topic` is a room.
pub fn is_room(topic: &str) -> bool {
    topic.starts_with(ROOM_PREFIX)
}

#[derive(Default)]
struct Room {
    /// Session → latest state. Ordered, so frames are stable for patches.
    players: BTreeMap<Arc<str>, Arc<RawValue>>,
    /// Something changed since the last tick (or someone joined).
    dirty: bool,
}

/// The rooms of one hub.
#[derive(Default)]
pub(crate) struct Rooms {
    rooms: Mutex<HashMap<Arc<str>, Room>>,
}

/// Why a room refused an update.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    NotSubscribed,
    TooLarge,
    Full,
}

impl Refused {
    pub fn message(&self) -> String {
        match self {
            Refused::NotSubscribed => "subscribe to a room before publishing to it".into(),
            Refused::TooLarge => format!("a room state is at most {MAX_STATE_BYTES} bytes"),
            Refused::Full => format!("the room is full ({MAX_PLAYERS} players)"),
        }
    }
}

impl Rooms {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Room>> {
        self.rooms.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `session` (subscribed: `subscribed`) sets its state in room `topic`.
    pub fn update(&self, topic: &Arc<str>, session: &str, subscribed: bool, body: &Body) -> Result<(), Refused> {
        if !subscribed {
            return Err(Refused::NotSubscribed);
        }
        let Body::Json(state) = body else { return Err(Refused::TooLarge) };
        if state.get().len() > MAX_STATE_BYTES {
            return Err(Refused::TooLarge);
        }
        let mut rooms = self.lock();
        let room = rooms.entry(topic.clone()).or_default();
        if room.players.len() >= MAX_PLAYERS && !room.players.contains_key(session) {
            return Err(Refused::Full);
        }
        room.players.insert(Arc::from(session), state.clone());
        room.dirty = true;
        Ok(())
    }

    /// Someone subscribed: send the whole state at the next tick.
    pub fn joined(&self, topic: &str) {
        if let Some(room) = self.lock().get_mut(topic) {
            room.dirty = true;
        }
    }

    /// `session` left room `topic`. A room nobody plays in any more sends
    /// one last (empty) frame at the next tick and is then forgotten.
    pub fn left(&self, topic: &str, session: &str) {
        if let Some(room) = self.lock().get_mut(topic) {
            if room.players.remove(session).is_some() {
                room.dirty = true;
            }
        }
    }

    /// The frames of this tick: one `(topic, content)` per changed room.
    pub fn tick(&self) -> Vec<(Arc<str>, String)> {
        let mut out = Vec::new();
        let mut rooms = self.lock();
        rooms.retain(|topic, room| {
            if room.dirty {
                room.dirty = false;
                let mut text = String::from(r#"{"players":{"#);
                for (i, (session, state)) in room.players.iter().enumerate() {
                    if i > 0 {
                        text.push(',');
                    }
                    text.push_str(&serde_json::to_string(&**session).unwrap_or_default());
                    text.push(':');
                    text.push_str(state.get());
                }
                text.push_str("}}");
                out.push((topic.clone(), text));
            }
            !room.players.is_empty()
        });
        out
    }

    /// Rooms held (for tests).
    #[cfg(test)]
    pub fn count(&self) -> usize {
        self.lock().len()
    }
}

/// Publish each changed room once per `tick` while the hub lives.
pub(crate) async fn tick_loop(hub: Weak<Hub>, tick: Duration) {
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some(hub) = hub.upgrade() else { return };
        for (topic, content) in hub.rooms.tick() {
            if let Err(e) = hub.publish_json(&topic, Some(node_id()), &content) {
                tracing::debug!(%topic, error = %e, "could not publish a room tick");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(x: u32) -> Body {
        Body::Json(Arc::from(RawValue::from_string(format!(r#"{{"x":{x}}}"#)).unwrap()))
    }

    #[test]
    fn one_frame_per_tick_with_the_latest_state_of_each_player() {
        let rooms = Rooms::default();
        let topic: Arc<str> = Arc::from("$room:a");
        assert_eq!(rooms.update(&topic, "p1", false, &state(1)), Err(Refused::NotSubscribed));
        for x in 0..60 {
            rooms.update(&topic, "p1", true, &state(x)).unwrap();
            rooms.update(&topic, "p2", true, &state(100 + x)).unwrap();
        }
        let frames = rooms.tick();
        assert_eq!(frames, vec![(topic.clone(), r#"{"players":{"p1":{"x":59},"p2":{"x":159}}}"#.to_string())]);
        assert!(rooms.tick().is_empty(), "nothing changed: no frame");
        rooms.joined(&topic);
        assert_eq!(rooms.tick().len(), 1, "a late joiner gets the state");
        rooms.left(&topic, "p1");
        assert_eq!(rooms.tick()[0].1, r#"{"players":{"p2":{"x":159}}}"#);
        rooms.left(&topic, "p2");
        assert_eq!(rooms.tick()[0].1, r#"{"players":{}}"#, "the last frame says the room is empty");
        assert_eq!(rooms.count(), 0, "then the room is forgotten");
    }

    #[test]
    fn rooms_are_bounded() {
        let rooms = Rooms::default();
        let topic: Arc<str> = Arc::from("$room:b");
        for p in 0..MAX_PLAYERS {
            rooms.update(&topic, &format!("p{p}"), true, &state(1)).unwrap();
        }
        assert_eq!(rooms.update(&topic, "late", true, &state(1)), Err(Refused::Full));
        rooms.update(&topic, "p0", true, &state(2)).expect("a player already in may move");
        let big = Body::Json(Arc::from(RawValue::from_string(format!(r#""{}""#, "x".repeat(MAX_STATE_BYTES))).unwrap()));
        assert_eq!(rooms.update(&topic, "p1", true, &big), Err(Refused::TooLarge));
    }
}
