//! `tether.v1`, in one place: the subprotocol name, the JSON envelope
//! (docs/protocol.md), delta compression (JSON Merge Patch), the heartbeat
//! rule and the reconnect backoff.
//!
//! Both ends use this module: `tether-hub` parses client envelopes and
//! builds its replies with [`envelope`], the reconnecting client
//! ([`crate::reconnect`]) builds its requests with it; both decide their
//! heartbeats with [`Heartbeat`] and their reconnect delays with [`Backoff`].
//! `web/tether.js` follows the same rules; `crates/tether/tests/v1_cases.json`
//! holds the cases that the Rust tests and the Node tests
//! (`tests/browser/v1_cases.test.mjs`) both check.
//!
//! Everything here is sans-I/O: no sockets, no clock (time is passed in).

mod backoff;
pub mod delta;
mod drain;
pub mod envelope;
pub mod heartbeat;

pub use backoff::Backoff;
pub use drain::{reconnect_hint, DRAIN_CLOSE_CODE, MAX_RECONNECT_HINT};
pub use heartbeat::{Action, Heartbeat};

/// The subprotocol of the JSON envelope (see docs/protocol.md).
pub const PROTOCOL: &str = "tether.v1";
