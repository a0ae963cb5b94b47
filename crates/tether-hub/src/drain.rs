//! Graceful drain and shedding: close some or all of this node's
//! connections gradually, over a window, with 1012 (service restart) and a
//! jittered reconnect hint, so that clients land on other nodes spread over
//! the window instead of all at once (no thundering herd), and resume where
//! they left off (`since`). See docs/protocol.md ("Drain") and
//! docs/scaling.md ("Balancing long-lived connections").
//!
//! The spread is the server's: connections are closed in small batches,
//! one batch per [`DRAIN_STEP`], in a random order; each close carries
//! `reconnect_after_ms`, a random delay within one step, so that clients
//! which honour it (tether.js, `tether::reconnect`) spread their reconnects
//! evenly even inside a step, and clients which do not still arrive spread
//! over the window, one batch at a time.

use crate::hub::Hub;
use crate::queue::flag;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// How often a drain closes its next batch of connections.
pub const DRAIN_STEP: Duration = Duration::from_millis(50);

/// The close reason of a drained connection: `service restart;
/// reconnect_after_ms=N` (docs/protocol.md). Clients parse `N` with
/// [`tether::v1::reconnect_hint`].
pub fn drain_reason(reconnect_after_ms: u32) -> String {
    format!("service restart; reconnect_after_ms={reconnect_after_ms}")
}

/// A 64-bit mix (splitmix64): enough randomness to order and jitter
/// closes, without a random-number crate.
pub(crate) fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

impl Hub {
    /// Close `fraction` (0 to 1) of the open connections, gradually over
    /// `window`, with 1012 and a reconnect hint (see the module doc).
    /// Which connections go is decided by this call; connections opened
    /// after it are left alone. The future closes them and resolves with
    /// how many were asked to close. `window` zero closes them all at once.
    pub fn shed(self: &std::sync::Arc<Self>, fraction: f64, window: Duration) -> impl std::future::Future<Output = usize> + Send + 'static {
        let hub = self.clone();
        let fraction = if fraction.is_finite() { fraction.clamp(0.0, 1.0) } else { 0.0 };
        let mut conns = self.snapshot_conns();
        let salt = self.now_ns();
        // A random order: which connections go, and in which batch, owes
        // nothing to when they arrived.
        conns.sort_by_cached_key(|c| mix(c.id ^ salt));
        let n = ((conns.len() as f64) * fraction).ceil() as usize;
        conns.truncate(n.min(conns.len()));
        async move {
        if conns.is_empty() {
            return 0;
        }
        let steps = (window.as_nanos() / DRAIN_STEP.as_nanos()).clamp(1, conns.len() as u128) as usize;
        let step = window / steps as u32;
        // The hint spreads each batch's reconnects over its own step.
        let hint = u32::try_from(step.as_millis()).unwrap_or(u32::MAX);
        hub.drain_hint_ms.fetch_max(hint, Ordering::Relaxed);
        tracing::info!(connections = conns.len(), ?window, batches = steps, "draining connections with 1012");
        let mut start = tokio::time::Instant::now();
        let mut last_batch = usize::MAX;
        for (i, conn) in conns.iter().enumerate() {
            // Batch `b` of `steps` starts at `b * step`.
            let batch = i * steps / conns.len();
            if batch != last_batch {
                last_batch = batch;
                let due = start + step * batch as u32;
                let now = tokio::time::Instant::now();
                if now < due {
                    tokio::time::sleep_until(due).await;
                } else if now > due + step {
                    // Fell behind (a busy machine): keep the spacing rather
                    // than closing the overdue batches all at once; the
                    // drain ends late by as much.
                    start += now - due;
                }
            }
            conn.set(flag::DRAIN);
        }
        conns.len()
        }
    }

    /// The reconnect hint for one drained connection: a random delay
    /// within the current drain step.
    pub(crate) fn reconnect_hint(&self, conn: u64) -> u32 {
        let max = self.drain_hint_ms.load(Ordering::Relaxed);
        if max == 0 {
            return 0;
        }
        (mix(conn ^ self.now_ns().rotate_left(17)) % (u64::from(max) + 1)) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reason_carries_the_hint_and_fits_a_close_frame() {
        let reason = drain_reason(u32::MAX);
        assert!(reason.len() <= 123, "{reason}");
        assert_eq!(tether::v1::reconnect_hint(&reason), Some(tether::v1::MAX_RECONNECT_HINT), "capped");
        assert_eq!(tether::v1::reconnect_hint(&drain_reason(250)), Some(Duration::from_millis(250)));
    }
}
