//! JWT connection tokens (feature `jwt`): [`JwtVerifier`] turns a token
//! into [`Grants`] with the `jsonwebtoken` crate.
//!
//! Keys: an HMAC secret (HS256/384/512), RSA or ECDSA public keys in PEM
//! (RS256/384/512, PS256/384/512, ES256/384), and a JWKS file (a JSON Web
//! Key Set, RFC 7517) that is re-read when its modification time or size
//! changes (looked at no more than once a second), so keys rotate without
//! a restart. A token's `alg` picks the key of its family only (an RSA
//! public key is never used as an HMAC secret); a `kid` picks the JWK.
//!
//! Claims: `sub` (required: the user), `exp` (refused once past, with
//! [`JwtConfig::leeway`]), optional `nbf`, `iss` and `aud` (checked when
//! configured), and the capabilities `subscribe`, `publish`, `presence`:
//! lists of topic patterns ([`TopicPatterns`](crate::TopicPatterns)); a missing list allows
//! nothing.
//!
//! ```
//! use tether_hub::jwt::{JwtConfig, JwtVerifier};
//! use tether_hub::Authenticator;
//! let verifier = JwtVerifier::new(JwtConfig { hmac_secret: Some("s3cret".into()), ..JwtConfig::default() }).unwrap();
//! assert_eq!(verifier.authenticate("not.a.jwt").unwrap_err().code, "invalid_token");
//! ```

use crate::auth::{AuthError, Authenticator, Capabilities, Grants};
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// Largest JWKS file read (a set of a few keys is a few KiB).
pub const MAX_JWKS_BYTES: u64 = 1 << 20;

/// Where the verifier's keys come from; any combination.
#[derive(Clone, Debug, Default)]
pub struct JwtConfig {
    /// HMAC secret for HS256/HS384/HS512.
    pub hmac_secret: Option<String>,
    /// PEM public keys (RSA or EC, `-----BEGIN PUBLIC KEY-----` or
    /// `-----BEGIN RSA PUBLIC KEY-----`), read once.
    pub public_keys: Vec<PathBuf>,
    /// A JWKS file, re-read when it changes.
    pub jwks_file: Option<PathBuf>,
    /// Required `iss`, if set.
    pub issuer: Option<String>,
    /// Required `aud` (one of), if set; otherwise `aud` is not checked.
    pub audience: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`. Default 0.
    pub leeway: Duration,
}

/// A key that could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// No key configured at all.
    #[error("no JWT key: give an HMAC secret, a PEM public key or a JWKS file")]
    NoKey,
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A PEM file is neither an RSA nor an EC public key.
    #[error("{path} is not an RSA or EC public key in PEM: {reason}")]
    BadPem {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        reason: String,
    },
    /// The JWKS file is not a valid key set.
    #[error("{path} is not a JWK set: {reason}")]
    BadJwks {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    Hmac,
    Rsa,
    Ec,
    Ed,
}

fn family(alg: Algorithm) -> Family {
    use Algorithm::*;
    match alg {
        HS256 | HS384 | HS512 => Family::Hmac,
        RS256 | RS384 | RS512 | PS256 | PS384 | PS512 => Family::Rsa,
        ES256 | ES384 => Family::Ec,
        EdDSA => Family::Ed,
    }
}

struct Key {
    family: Family,
    kid: Option<String>,
    key: DecodingKey,
}

/// The JWKS file and what was last read from it.
struct Jwks {
    path: PathBuf,
    /// (modification time, length) of the version in `keys`.
    seen: Option<(SystemTime, u64)>,
    checked: Option<Instant>,
    keys: Arc<Vec<Key>>,
}

impl Jwks {
    /// Re-read the file if it changed (looked at once a second at most).
    /// A broken new version keeps the old keys and is logged.
    fn refresh(&mut self) -> Arc<Vec<Key>> {
        if self.checked.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
            return self.keys.clone();
        }
        self.checked = Some(Instant::now());
        let stamp = std::fs::metadata(&self.path).ok().map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()));
        if stamp.is_some() && stamp != self.seen {
            match load_jwks(&self.path) {
                Ok(keys) => {
                    tracing::info!(path = %self.path.display(), keys = keys.len(), "loaded the JWKS file");
                    self.keys = Arc::new(keys);
                    self.seen = stamp;
                }
                Err(e) => tracing::warn!(error = %e, "kept the previous JWK set"),
            }
        }
        self.keys.clone()
    }
}

fn load_jwks(path: &PathBuf) -> Result<Vec<Key>, KeyError> {
    let read = |source| KeyError::Read { path: path.clone(), source };
    let len = std::fs::metadata(path).map_err(read)?.len();
    if len > MAX_JWKS_BYTES {
        return Err(KeyError::BadJwks { path: path.clone(), reason: format!("larger than {MAX_JWKS_BYTES} bytes") });
    }
    let text = std::fs::read_to_string(path).map_err(read)?;
    let set: JwkSet = serde_json::from_str(&text).map_err(|e| KeyError::BadJwks { path: path.clone(), reason: e.to_string() })?;
    let mut keys = Vec::new();
    for jwk in &set.keys {
        let family = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => Family::Rsa,
            AlgorithmParameters::EllipticCurve(_) => Family::Ec,
            AlgorithmParameters::OctetKey(_) => Family::Hmac,
            AlgorithmParameters::OctetKeyPair(_) => Family::Ed,
        };
        let key = DecodingKey::from_jwk(jwk).map_err(|e| KeyError::BadJwks { path: path.clone(), reason: e.to_string() })?;
        keys.push(Key { family, kid: jwk.common.key_id.clone(), key });
    }
    Ok(keys)
}

/// The claims of a tether connection token.
#[derive(serde::Deserialize)]
struct Claims {
    sub: String,
    exp: Option<u64>,
    #[serde(flatten)]
    capabilities: Capabilities,
}

/// Checks JWTs against the configured keys; an [`Authenticator`].
pub struct JwtVerifier {
    keys: Vec<Key>,
    jwks: Option<Mutex<Jwks>>,
    config: JwtConfig,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret.
        f.debug_struct("JwtVerifier").field("static_keys", &self.keys.len()).field("jwks_file", &self.config.jwks_file).finish()
    }
}

impl JwtVerifier {
    /// Load the keys of `config` (the JWKS file must be readable now).
    pub fn new(config: JwtConfig) -> Result<JwtVerifier, KeyError> {
        let mut keys = Vec::new();
        if let Some(secret) = &config.hmac_secret {
            keys.push(Key { family: Family::Hmac, kid: None, key: DecodingKey::from_secret(secret.as_bytes()) });
        }
        for path in &config.public_keys {
            let pem = std::fs::read(path).map_err(|source| KeyError::Read { path: path.clone(), source })?;
            let key = match DecodingKey::from_rsa_pem(&pem) {
                Ok(k) => Key { family: Family::Rsa, kid: None, key: k },
                Err(rsa) => match DecodingKey::from_ec_pem(&pem) {
                    Ok(k) => Key { family: Family::Ec, kid: None, key: k },
                    Err(ec) => return Err(KeyError::BadPem { path: path.clone(), reason: format!("as RSA: {rsa}; as EC: {ec}") }),
                },
            };
            keys.push(key);
        }
        let jwks = match &config.jwks_file {
            Some(path) => {
                let loaded = load_jwks(path)?;
                let meta = std::fs::metadata(path).map_err(|source| KeyError::Read { path: path.clone(), source })?;
                let seen = Some((meta.modified().unwrap_or(SystemTime::UNIX_EPOCH), meta.len()));
                Some(Mutex::new(Jwks { path: path.clone(), seen, checked: Some(Instant::now()), keys: Arc::new(loaded) }))
            }
            None => None,
        };
        if keys.is_empty() && jwks.is_none() {
            return Err(KeyError::NoKey);
        }
        Ok(JwtVerifier { keys, jwks, config })
    }

    fn validation(&self, alg: Algorithm) -> Validation {
        let mut v = Validation::new(alg);
        v.leeway = self.config.leeway.as_secs();
        v.validate_nbf = true;
        v.set_required_spec_claims(&["sub"]);
        match &self.config.audience {
            Some(aud) => v.set_audience(&[aud]),
            None => v.validate_aud = false,
        }
        if let Some(iss) = &self.config.issuer {
            v.set_issuer(&[iss]);
        }
        v
    }
}

fn refused(e: &jsonwebtoken::errors::Error) -> AuthError {
    use jsonwebtoken::errors::ErrorKind::*;
    match e.kind() {
        ExpiredSignature => AuthError::new("expired", "the token has expired (exp)"),
        ImmatureSignature => AuthError::new("invalid_token", "the token is not valid yet (nbf)"),
        InvalidSignature => AuthError::new("bad_signature", "the token's signature does not verify"),
        InvalidIssuer => AuthError::new("invalid_token", "the token's issuer (iss) is not accepted"),
        InvalidAudience => AuthError::new("invalid_token", "the token's audience (aud) is not accepted"),
        MissingRequiredClaim(c) => AuthError::new("invalid_token", format!("the token has no {c:?} claim")),
        other => AuthError::new("invalid_token", format!("not a valid token: {other:?}")),
    }
}

impl Authenticator for JwtVerifier {
    fn authenticate(&self, token: &str) -> Result<Grants, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::new("invalid_token", "not a JWT (header.payload.signature)"))?;
        let fam = family(header.alg);
        let jwks = self.jwks.as_ref().map(|j| j.lock().unwrap_or_else(|p| p.into_inner()).refresh());
        let candidates = self.keys.iter().chain(jwks.iter().flat_map(|k| k.iter())).filter(|k| k.family == fam);
        let candidates: Vec<&Key> = match &header.kid {
            // With a kid: that key, if it is one (static keys have none and
            // still apply).
            Some(kid) => candidates.filter(|k| k.kid.as_deref().is_none_or(|k| k == kid)).collect(),
            None => candidates.collect(),
        };
        if candidates.is_empty() {
            return Err(AuthError::new("unknown_key", format!("no key for a {:?} token{}", header.alg, header.kid.as_ref().map_or(String::new(), |k| format!(" with kid {k:?}")))));
        }
        let validation = self.validation(header.alg);
        let mut last = None;
        for key in candidates {
            match jsonwebtoken::decode::<Claims>(token, &key.key, &validation) {
                Ok(data) => {
                    let c = data.claims;
                    if c.sub.is_empty() || c.sub.len() > 200 || c.sub.chars().any(char::is_control) {
                        return Err(AuthError::new("invalid_token", "sub must be 1-200 bytes without control characters"));
                    }
                    return c.capabilities.grant(Arc::from(c.sub), c.exp).map_err(|(what, e)| AuthError::new("invalid_token", format!("{what}: {e}")));
                }
                // Another key of the family may have signed it.
                Err(e) if matches!(e.kind(), jsonwebtoken::errors::ErrorKind::InvalidSignature) => last = Some(e),
                Err(e) => return Err(refused(&e)),
            }
        }
        Err(refused(&last.expect("at least one candidate was tried")))
    }
}
