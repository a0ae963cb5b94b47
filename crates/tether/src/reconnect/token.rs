//! Connection tokens for a [`ReconnectingClient`](super::ReconnectingClient),
//! as web/tether.js does it: a fixed token, or a function that fetches one
//! (called anew for every connection). The token goes in the connection's
//! first `tether.v1` message (`auth`); with a function, a new one is
//! fetched and sent in a `refresh` [`ReconnectOptions::refresh_ahead`](super::ReconnectOptions::refresh_ahead)
//! before the token's `exp`, and at once when the server warns
//! (`token_expiring`), so the connection outlives its first token.

use base64::Engine;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// What a token function returns.
pub type TokenResult = Result<String, Box<dyn std::error::Error + Send + Sync>>;

type Fetch = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = TokenResult> + Send>> + Send + Sync>;

/// Where a [`ReconnectingClient`](super::ReconnectingClient) gets its token.
#[derive(Clone)]
pub enum TokenSource {
    /// The same token for every connection (never refreshed).
    Fixed(String),
    /// A function that fetches a token (from the application's backend):
    /// called for every connection and for every refresh.
    Fetch(Fetch),
}

impl TokenSource {
    /// A token fetched by `f` (an async function or closure).
    pub fn fetch<F, Fut>(f: F) -> TokenSource
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = TokenResult> + Send + 'static,
    {
        TokenSource::Fetch(Arc::new(move || Box::pin(f())))
    }

    /// The current token.
    pub(super) async fn get(&self) -> TokenResult {
        match self {
            TokenSource::Fixed(t) => Ok(t.clone()),
            TokenSource::Fetch(f) => f().await,
        }
    }

    /// Whether it can give a new token (a function).
    pub(super) fn refreshes(&self) -> bool {
        matches!(self, TokenSource::Fetch(_))
    }
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token itself.
        f.write_str(match self {
            TokenSource::Fixed(_) => "TokenSource::Fixed(..)",
            TokenSource::Fetch(_) => "TokenSource::Fetch(..)",
        })
    }
}

/// A JWT's `exp` (Unix seconds), if the token is a JWT that has one (read,
/// not verified: the server verifies).
pub fn token_expiry(token: &str) -> Option<u64> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    serde_json::from_slice::<serde_json::Value>(&bytes).ok()?.get("exp")?.as_u64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_exp() {
        let b64 = |v: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
        assert_eq!(token_expiry(&format!("{}.{}.sig", b64("{\"alg\":\"HS256\"}"), b64("{\"sub\":\"a\",\"exp\":1234}"))), Some(1234));
        assert_eq!(token_expiry(&format!("h.{}.s", b64("{\"sub\":\"a\"}"))), None);
        assert_eq!(token_expiry("not-a-jwt"), None);
        assert_eq!(format!("{:?}", TokenSource::Fixed("secret".into())), "TokenSource::Fixed(..)");
    }
}
