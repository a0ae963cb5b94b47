//! JWT connection tokens for `tether serve` (docs/auth.md): the flags and
//! the `[jwt]` table of the config file, and the handshake decision (who
//! the connection is, or why it gets 401/403). The verification itself is
//! tether-hub's `jwt::JwtVerifier`; what a token allows is enforced by the
//! hub on every request.

use anyhow::Context;
use serde::Deserialize;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tether_hub::jwt::{JwtConfig, JwtVerifier};
use tether_hub::{Authenticator, Identity};

/// The JWT flags of `tether serve`.
#[derive(clap::Args, Debug, Default, Clone)]
pub struct AuthArgs {
    /// Accept JWT connection tokens signed with this HMAC secret (HS256/384/512)
    /// [default: none]
    #[arg(long, env = "TETHER_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// Accept JWTs signed by this RSA or EC public key (PEM; RS256, PS256,
    /// ES256, ...); repeat for several [default: none]
    #[arg(long = "jwt-public-key", env = "TETHER_JWT_PUBLIC_KEYS", value_delimiter = ',')]
    pub jwt_public_keys: Vec<PathBuf>,
    /// Accept JWTs signed by the keys of this JWKS file, re-read when it
    /// changes (rotation without restart) [default: none]
    #[arg(long, env = "TETHER_JWT_JWKS_FILE")]
    pub jwt_jwks_file: Option<PathBuf>,
    /// Require this `iss` claim [default: not checked]
    #[arg(long, env = "TETHER_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// Require this `aud` claim [default: not checked]
    #[arg(long, env = "TETHER_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// Clock skew allowed on `exp` and `nbf` (e.g. 5s) [default: 0s]
    #[arg(long, env = "TETHER_JWT_LEEWAY", value_parser = crate::settings::parse_duration)]
    pub jwt_leeway: Option<Duration>,
    /// Warn a connection this long before its token expires (a
    /// `token_expiring` envelope) [default: 60s]
    #[arg(long, env = "TETHER_TOKEN_EXPIRY_WARNING", value_parser = crate::settings::parse_duration)]
    pub token_expiry_warning: Option<Duration>,
    /// Close a connection this long after its token expired unless it sent
    /// a `refresh` [default: 30s]
    #[arg(long, env = "TETHER_TOKEN_EXPIRY_GRACE", value_parser = crate::settings::parse_duration)]
    pub token_expiry_grace: Option<Duration>,
    /// How long a tether.v1 connection without a token in its upgrade
    /// request has to send `{"type":"auth","token":...}` [default: 10s]
    #[arg(long, env = "TETHER_AUTH_TIMEOUT", value_parser = crate::settings::parse_duration)]
    pub auth_timeout: Option<Duration>,
}

/// The `[jwt]` table of the config file.
#[derive(Deserialize, Default, Debug, Clone)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct AuthFile {
    secret: Option<String>,
    public_keys: Option<Vec<PathBuf>>,
    jwks_file: Option<PathBuf>,
    issuer: Option<String>,
    audience: Option<String>,
    leeway: Option<String>,
    expiry_warning: Option<String>,
    expiry_grace: Option<String>,
    auth_timeout: Option<String>,
}

/// One `[namespaces."PREFIX"]` table of the config file.
#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct NamespaceFile {
    /// `token` (default), `subscribers` or `server`.
    publish: Option<String>,
    presence: Option<bool>,
    latest_on_subscribe: Option<bool>,
    /// Ask the backend's subscribe hook (src/hooks.rs).
    subscribe_hook: Option<bool>,
    /// Ask the backend's publish hook.
    publish_hook: Option<bool>,
    /// Most messages kept per topic [default: --history-size].
    history_size: Option<usize>,
    /// Age after which messages are not replayed [default: --history-ttl].
    history_ttl: Option<String>,
}

/// The history of the namespaces that set their own `history-size` or `history-ttl`.
pub fn history_prefixes(file: Option<&std::collections::BTreeMap<String, NamespaceFile>>, defaults: &tether_hub::HistoryConfig) -> anyhow::Result<Vec<tether_hub::HistoryRetention>> {
    let mut list = Vec::new();
    for (prefix, n) in file.into_iter().flatten() {
        if n.history_size.is_none() && n.history_ttl.is_none() {
            continue;
        }
        let max_age = match &n.history_ttl {
            None => defaults.max_age,
            Some(s) => crate::settings::parse_duration(s).map_err(|e| anyhow::anyhow!("config file, [namespaces.{prefix:?}] history-ttl: {e}"))?,
        };
        list.push(tether_hub::HistoryRetention { prefix: prefix.clone(), max_messages: n.history_size.unwrap_or(defaults.max_messages), max_age });
    }
    Ok(list)
}

/// The namespaces of the config file.
pub fn namespaces(file: Option<std::collections::BTreeMap<String, NamespaceFile>>) -> anyhow::Result<Vec<tether_hub::namespace::Namespace>> {
    use tether_hub::namespace::{Namespace, PublishRule};
    let mut list = Vec::new();
    for (prefix, n) in file.unwrap_or_default() {
        if prefix.is_empty() {
            anyhow::bail!("config file, [namespaces]: a namespace needs a non-empty prefix (e.g. [namespaces.\"chat:\"])");
        }
        let publish = match n.publish.as_deref() {
            None | Some("token") => PublishRule::Token,
            Some("subscribers") => PublishRule::Subscribers,
            Some("server") => PublishRule::ServerOnly,
            Some(other) => anyhow::bail!("config file, [namespaces.{prefix:?}] publish = {other:?}: expected \"token\", \"subscribers\" or \"server\""),
        };
        let d = Namespace::new(prefix.clone());
        list.push(Namespace { publish, presence: n.presence.unwrap_or(d.presence), latest_on_subscribe: n.latest_on_subscribe.unwrap_or(d.latest_on_subscribe), subscribe_hook: n.subscribe_hook.unwrap_or(false), publish_hook: n.publish_hook.unwrap_or(false), ..d });
    }
    Ok(list)
}

/// JWT settings, resolved.
#[derive(Debug, Clone, Default)]
pub struct AuthSettings {
    /// `None`: no JWT configured.
    pub jwt: Option<JwtConfig>,
    pub expiry_warning: Duration,
    pub expiry_grace: Duration,
    pub auth_timeout: Duration,
}

impl AuthSettings {
    /// Flags and variables first, then the `[jwt]` table, then defaults.
    pub fn resolve(args: AuthArgs, file: AuthFile) -> anyhow::Result<AuthSettings> {
        let dur = |flag: Option<Duration>, file: Option<String>, name: &str, default: Duration| -> anyhow::Result<Duration> {
            match (flag, file) {
                (Some(d), _) => Ok(d),
                (None, Some(s)) => crate::settings::parse_duration(&s).map_err(|e| anyhow::anyhow!("config file, [jwt] {name}: {e}")),
                (None, None) => Ok(default),
            }
        };
        let config = JwtConfig {
            hmac_secret: args.jwt_secret.or(file.secret),
            public_keys: if args.jwt_public_keys.is_empty() { file.public_keys.unwrap_or_default() } else { args.jwt_public_keys },
            jwks_file: args.jwt_jwks_file.or(file.jwks_file),
            issuer: args.jwt_issuer.or(file.issuer),
            audience: args.jwt_audience.or(file.audience),
            leeway: dur(args.jwt_leeway, file.leeway, "leeway", Duration::ZERO)?,
        };
        let any_key = config.hmac_secret.is_some() || !config.public_keys.is_empty() || config.jwks_file.is_some();
        let d = tether_hub::HubConfig::default();
        Ok(AuthSettings {
            jwt: any_key.then_some(config),
            expiry_warning: dur(args.token_expiry_warning, file.expiry_warning, "expiry-warning", d.token_expiry_warning)?,
            expiry_grace: dur(args.token_expiry_grace, file.expiry_grace, "expiry-grace", d.token_expiry_grace)?,
            auth_timeout: dur(args.auth_timeout, file.auth_timeout, "auth-timeout", d.auth_timeout)?,
        })
    }

    /// The verifier, if JWTs are configured (keys are read now).
    pub fn verifier(&self) -> anyhow::Result<Option<Arc<JwtVerifier>>> {
        match &self.jwt {
            None => Ok(None),
            Some(config) => Ok(Some(Arc::new(JwtVerifier::new(config.clone()).context("cannot load the JWT keys")?))),
        }
    }
}

/// The token a request carries: `Authorization: Bearer T` (scheme in any
/// case) or `?token=T`.
pub fn presented_token<'a>(authorization: Option<&'a str>, query: Option<&'a str>) -> Option<&'a str> {
    let in_header = authorization.and_then(|h| {
        let (scheme, rest) = h.trim().split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
    });
    in_header.or_else(|| query.and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("token="))))
}

/// The HTTP answer to a refused token (the code is in the log and the
/// metrics; the body says what to do).
pub fn refusal_message(code: &str) -> &'static str {
    match code {
        "missing_token" => "missing token: send Authorization: Bearer <JWT>, ?token=<JWT>, or (tether.v1) an auth message",
        "expired" => "the token has expired",
        "bad_signature" => "the token's signature does not verify",
        "unknown_key" => "the token was signed by an unknown key",
        _ => "invalid token",
    }
}

/// Decide who a WebSocket upgrade is, with JWTs configured: `Ok` with the
/// identity, or the refusal code. A tether.v1 request without a token may
/// authenticate with its first message.
pub fn identify(verifier: &JwtVerifier, token: Option<&str>, json: bool) -> Result<Identity, tether_hub::AuthError> {
    match token {
        Some(t) => verifier.authenticate(t).map(|g| Identity::Granted(Arc::new(g))),
        None if json => Ok(Identity::AwaitingAuth),
        None => Err(tether_hub::AuthError::new("missing_token", "no token")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_come_from_the_header_or_the_query() {
        assert_eq!(presented_token(Some("Bearer a.b.c"), None), Some("a.b.c"));
        assert_eq!(presented_token(Some("bearer  a.b.c "), Some("token=x")), Some("a.b.c"));
        assert_eq!(presented_token(None, Some("x=1&token=a.b.c")), Some("a.b.c"));
        assert_eq!(presented_token(Some("Basic abc"), None), None);
        assert_eq!(presented_token(None, None), None);
    }
}
