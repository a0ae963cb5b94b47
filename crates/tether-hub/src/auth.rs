//! Who a connection is and what it may do: [`Grants`].
//!
//! Whatever authenticates a connection (a JWT checked by `tether serve`, a
//! backend's connect hook, an embedder's own code) produces one [`Grants`]
//! and attaches it to the session through [`ConnInfo::grants`](crate::ConnInfo)
//! when it opens. The hub then enforces it on every request: subscribing
//! to a topic needs a matching [`Grants::subscribe`] pattern, publishing a
//! [`Grants::publish`] one, and presence events of a topic reach only
//! connections with a matching [`Grants::presence`] pattern. A refusal is
//! an `error` envelope with code `forbidden`, never a silent drop.
//!
//! A connection opened without grants (`ConnInfo::grants == None`: no
//! authentication configured, or the shared `--token`) may do everything,
//! as before.
//!
//! A live connection can be given new grants with a `refresh` request,
//! checked by the hub's [`Authenticator`] ([`Hub::set_authenticator`](crate::Hub::set_authenticator)).

use std::sync::Arc;

/// Most patterns in one [`TopicPatterns`] (bounds the work per request).
pub const MAX_PATTERNS: usize = 64;

/// Longest pattern, in bytes (topics are at most 200 bytes).
pub const MAX_PATTERN_BYTES: usize = 256;

/// A pattern list that was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadPatterns {
    /// More than [`MAX_PATTERNS`] patterns.
    #[error("at most {MAX_PATTERNS} topic patterns per capability")]
    TooMany,
    /// A pattern longer than [`MAX_PATTERN_BYTES`].
    #[error("a topic pattern is at most {MAX_PATTERN_BYTES} bytes")]
    TooLong,
}

/// Topic patterns: `*` stands for any run of characters (none included),
/// everything else must match exactly. `chat:*` matches `chat:lobby` and
/// `chat:`, not `chatter`; `*` matches every topic; `user:*:inbox` matches
/// `user:42:inbox`. An empty list matches nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TopicPatterns(Box<[Box<str>]>);

impl TopicPatterns {
    /// Patterns from a list (at most [`MAX_PATTERNS`], each at most
    /// [`MAX_PATTERN_BYTES`]).
    pub fn new<I, S>(patterns: I) -> Result<TopicPatterns, BadPatterns>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut list = Vec::new();
        for p in patterns {
            let p: String = p.into();
            if p.len() > MAX_PATTERN_BYTES {
                return Err(BadPatterns::TooLong);
            }
            if list.len() == MAX_PATTERNS {
                return Err(BadPatterns::TooMany);
            }
            list.push(p.into_boxed_str());
        }
        Ok(TopicPatterns(list.into_boxed_slice()))
    }

    /// Every topic (`["*"]`).
    pub fn any() -> TopicPatterns {
        TopicPatterns(Box::new([Box::from("*")]))
    }

    /// No topic.
    pub fn none() -> TopicPatterns {
        TopicPatterns::default()
    }

    /// Whether some pattern matches `topic`.
    pub fn matches(&self, topic: &str) -> bool {
        self.0.iter().any(|p| glob(p.as_bytes(), topic.as_bytes()))
    }

    /// The patterns, as given.
    pub fn patterns(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|p| &**p)
    }
}

/// `*`-only glob, greedy with one backtrack point: O(pattern × topic) at
/// worst, both bounded.
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// What one authenticated connection is and may do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grants {
    /// The user (a JWT's `sub`): the `sender` of what it publishes and the
    /// name others see in presence.
    pub user: Arc<str>,
    /// Topics it may subscribe to (its own room, the URL path, included:
    /// a connection whose room does not match joins no room).
    pub subscribe: TopicPatterns,
    /// Topics it may publish to.
    pub publish: TopicPatterns,
    /// Topics whose presence events (join, leave) it receives.
    pub presence: TopicPatterns,
    /// When the credentials expire (Unix time, seconds; a JWT's `exp`):
    /// the connection is warned ahead of time and closed after a grace
    /// period unless it sends a `refresh` with new credentials. `None`: never.
    pub expires_at: Option<u64>,
}

/// The capability lists a credential carries (a JWT's claims, a connect
/// hook's answer), as JSON: the topic patterns it may subscribe to, publish
/// to and see presence of. A missing list is empty.
#[derive(Debug, Default, serde::Deserialize)]
pub struct Capabilities {
    /// Patterns of the topics it may subscribe to.
    #[serde(default)]
    pub subscribe: Vec<String>,
    /// Patterns of the topics it may publish to.
    #[serde(default)]
    pub publish: Vec<String>,
    /// Patterns of the topics whose presence it sees.
    #[serde(default)]
    pub presence: Vec<String>,
}

impl Capabilities {
    /// What `user` may do with these capabilities until `expires_at`; a
    /// list out of bounds is named (`"subscribe"`, `"publish"`, `"presence"`).
    pub fn grant(self, user: Arc<str>, expires_at: Option<u64>) -> Result<Grants, (&'static str, BadPatterns)> {
        let patterns = |list: Vec<String>, what: &'static str| TopicPatterns::new(list).map_err(|e| (what, e));
        Ok(Grants {
            user,
            subscribe: patterns(self.subscribe, "subscribe")?,
            publish: patterns(self.publish, "publish")?,
            presence: patterns(self.presence, "presence")?,
            expires_at,
        })
    }
}

impl Grants {
    /// A user allowed everything, without expiry.
    pub fn everything(user: impl Into<Arc<str>>) -> Grants {
        Grants { user: user.into(), subscribe: TopicPatterns::any(), publish: TopicPatterns::any(), presence: TopicPatterns::any(), expires_at: None }
    }

    /// Whether it may subscribe to `topic`.
    pub fn may_subscribe(&self, topic: &str) -> bool {
        self.subscribe.matches(topic)
    }

    /// Whether it may publish to `topic`.
    pub fn may_publish(&self, topic: &str) -> bool {
        self.publish.matches(topic)
    }

    /// Whether it sees presence events of `topic`.
    pub fn may_see_presence(&self, topic: &str) -> bool {
        self.presence.matches(topic)
    }
}

/// Why credentials were refused; `code` goes into the `error` envelope (or
/// picks the HTTP status at the handshake: every code is a 401).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct AuthError {
    /// Short machine-readable reason: `missing_token`, `expired`,
    /// `bad_signature`, `invalid_token`, `unknown_key`.
    pub code: &'static str,
    /// What was wrong, for a person (never contains the token).
    pub message: String,
}

impl AuthError {
    /// An error with `code` and `message`.
    pub fn new(code: &'static str, message: impl Into<String>) -> AuthError {
        AuthError { code, message: message.into() }
    }
}

/// Turns credentials (a token) into [`Grants`]: what the hub calls for an
/// `auth` or `refresh` request on a live connection. `tether serve`
/// installs its JWT verifier; embedders may install their own.
pub trait Authenticator: Send + Sync + 'static {
    /// Check `token`; the grants it carries, or why not.
    fn authenticate(&self, token: &str) -> Result<Grants, AuthError>;
}

impl<F: Fn(&str) -> Result<Grants, AuthError> + Send + Sync + 'static> Authenticator for F {
    fn authenticate(&self, token: &str) -> Result<Grants, AuthError> {
        self(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        let p = TopicPatterns::new(["chat:*", "user:*:inbox", "exact"]).unwrap();
        for yes in ["chat:lobby", "chat:", "user:42:inbox", "user::inbox", "exact"] {
            assert!(p.matches(yes), "{yes}");
        }
        for no in ["chatter", "admin:x", "user:42:outbox", "exactly", "xexact", ""] {
            assert!(!p.matches(no), "{no}");
        }
        assert!(TopicPatterns::any().matches(""));
        assert!(!TopicPatterns::none().matches("a"));
        assert!(TopicPatterns::new(["a*b*c"]).unwrap().matches("aXbYbZc"));
        assert!(!TopicPatterns::new(["a*b*c"]).unwrap().matches("aXbYbZ"));
    }

    #[test]
    fn bounded() {
        assert_eq!(TopicPatterns::new(vec!["a"; MAX_PATTERNS + 1]), Err(BadPatterns::TooMany));
        assert_eq!(TopicPatterns::new(["x".repeat(MAX_PATTERN_BYTES + 1)]), Err(BadPatterns::TooLong));
        // The worst case for the matcher stays fast at the bounds.
        let p = TopicPatterns::new([format!("{}*b", "*a".repeat(MAX_PATTERN_BYTES / 2 - 1))]).unwrap();
        assert!(!p.matches(&"a".repeat(199)));
    }
}
