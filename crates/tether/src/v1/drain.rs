//! The drain hint (docs/protocol.md, "Drain"): a node that sheds or drains
//! its connections closes each with 1012 (service restart) and the reason
//! `service restart; reconnect_after_ms=N`. A client waits `N` ms before
//! reconnecting (instead of its backoff), so the clients of a drained node
//! arrive at the others spread out, not all at once.

use std::time::Duration;

/// The close code of a drained connection: 1012, service restart (RFC 6455 §7.4.1, IANA registry).
pub const DRAIN_CLOSE_CODE: u16 = 1012;

/// The key of the hint in the close reason.
const KEY: &str = "reconnect_after_ms=";

/// Longest wait a hint may ask for: a hostile or broken server cannot park
/// a client for longer than this.
pub const MAX_RECONNECT_HINT: Duration = Duration::from_secs(300);

/// The reconnect delay a close reason asks for, if it carries one
/// (`...reconnect_after_ms=N...`), capped at [`MAX_RECONNECT_HINT`].
pub fn reconnect_hint(reason: &str) -> Option<Duration> {
    let at = reason.find(KEY)? + KEY.len();
    let digits: &str = &reason[at..];
    let end = digits.find(|c: char| !c.is_ascii_digit()).unwrap_or(digits.len());
    // At most 10 digits: u32 milliseconds (longer is not a number we sent).
    if end == 0 || end > 10 {
        return None;
    }
    let ms: u64 = digits[..end].parse().ok()?;
    Some(Duration::from_millis(ms).min(MAX_RECONNECT_HINT))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_are_parsed_and_capped() {
        assert_eq!(reconnect_hint("service restart; reconnect_after_ms=1234"), Some(Duration::from_millis(1234)));
        assert_eq!(reconnect_hint("reconnect_after_ms=0"), Some(Duration::ZERO));
        assert_eq!(reconnect_hint("reconnect_after_ms=99999999"), Some(MAX_RECONNECT_HINT));
        assert_eq!(reconnect_hint("service restart"), None);
        assert_eq!(reconnect_hint("reconnect_after_ms="), None);
        assert_eq!(reconnect_hint("reconnect_after_ms=-5"), None);
        assert_eq!(reconnect_hint("reconnect_after_ms=123456789012345"), None);
    }
}
