//! Hooks into the application's backend (docs/auth.md, "Hooks"): HTTP
//! calls from `tether serve` whose answers decide what happens.
//!
//! - **connect** (`--hook-connect closed|open`): at the handshake, before
//!   the 101. The backend admits (optionally naming the user and its
//!   capabilities) or refuses with 401/403.
//! - **subscribe** and **publish** (`subscribe-hook` / `publish-hook` in a
//!   `[namespaces."PREFIX"]` table): before a client subscribes to, or
//!   publishes to, a topic of that namespace; a publish may be rewritten.
//! - **rpc** (`--hook-rpc`): a client's `rpc` request, answered by the backend.
//!
//! Each call is `POST <--hook-url>/<hook>` with a JSON body, signed like
//! the webhooks when `--hook-secret` is set, bounded by `--hook-timeout`
//! (default 2 s) and answered within 64 KiB. At most `--hook-max-in-flight`
//! calls (default 256) run at once over the whole server; one more is not
//! queued but fails at once. When the backend cannot answer (refused
//! connection, timeout, a status other than 2xx, an answer that is not the
//! expected JSON, or the in-flight bound full), the hook's failure mode
//! decides: `closed` (the default) refuses (503 at the handshake, an
//! `error` with code `unavailable` or `timeout` on a request), `open`
//! carries on as if no hook were configured. An RPC has no open mode.

use crate::backend_http::{self, BackendUrl};
use anyhow::bail;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, value::RawValue, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tether_hub::hooks::{HookAnswer, HookCall, HookFuture, HookRequest, Hooks};
use tether_hub::{Capabilities, Identity};
use tokio::sync::Semaphore;

/// Largest answer read from the backend.
const MAX_ANSWER: usize = 64 << 10;

/// What happens when the backend cannot answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailureMode {
    /// Refuse (the safe default).
    #[default]
    Closed,
    /// Carry on as if the hook were not configured.
    Open,
}

/// The hook flags of `tether serve`.
#[derive(clap::Args, Debug, Default, Clone)]
pub struct HookArgs {
    /// Base URL of the backend's hooks (http:// or https://): calls go to
    /// <URL>/connect, /subscribe, /publish and /rpc [default: none]
    #[arg(long, env = "TETHER_HOOK_URL")]
    pub hook_url: Option<String>,
    /// Sign hook calls (X-Tether-Signature, as the webhooks) with this key [default: unsigned]
    #[arg(long, env = "TETHER_HOOK_SECRET", hide_env_values = true)]
    pub hook_secret: Option<String>,
    /// Longest a hook call may take before its failure mode applies [default: 2s]
    #[arg(long, env = "TETHER_HOOK_TIMEOUT", value_parser = crate::settings::parse_duration)]
    pub hook_timeout: Option<Duration>,
    /// Most hook calls in flight over the whole server; beyond, a call fails at once [default: 256]
    #[arg(long, env = "TETHER_HOOK_MAX_IN_FLIGHT")]
    pub hook_max_in_flight: Option<usize>,
    /// Ask the backend at every WebSocket handshake; the value is the
    /// failure mode (closed: 503, open: admit) [default: off]
    #[arg(long, env = "TETHER_HOOK_CONNECT", value_enum)]
    pub hook_connect: Option<FailureMode>,
    /// Failure mode of the subscribe hook [default: closed]
    #[arg(long, env = "TETHER_HOOK_SUBSCRIBE_FAILURE", value_enum)]
    pub hook_subscribe_failure: Option<FailureMode>,
    /// Failure mode of the publish hook [default: closed]
    #[arg(long, env = "TETHER_HOOK_PUBLISH_FAILURE", value_enum)]
    pub hook_publish_failure: Option<FailureMode>,
    /// Answer `rpc` requests through the backend's /rpc hook [default: off]
    #[arg(long, env = "TETHER_HOOK_RPC")]
    pub hook_rpc: bool,
    /// Also trust this CA certificate (PEM) for https:// hooks and webhooks
    /// [default: the bundled webpki roots and the system's]
    #[arg(long, env = "TETHER_BACKEND_CA")]
    pub backend_ca: Option<std::path::PathBuf>,
}

/// The `[hooks]` table of the config file.
#[derive(Deserialize, Default, Debug, Clone)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct HooksFile {
    url: Option<String>,
    secret: Option<String>,
    timeout: Option<String>,
    max_in_flight: Option<usize>,
    connect: Option<FailureMode>,
    subscribe_failure: Option<FailureMode>,
    publish_failure: Option<FailureMode>,
    rpc: Option<bool>,
}

/// Hook settings, resolved.
#[derive(Clone, Debug)]
pub struct HookSettings {
    pub url: BackendUrl,
    pub secret: Option<String>,
    pub timeout: Duration,
    pub max_in_flight: usize,
    pub connect: Option<FailureMode>,
    pub subscribe_failure: FailureMode,
    pub publish_failure: FailureMode,
    pub rpc: bool,
}

impl HookSettings {
    /// Flags first, then `[hooks]`; `None` without a URL (then no
    /// namespace may ask for a hook).
    pub fn resolve(args: HookArgs, file: HooksFile, namespaces: &[tether_hub::namespace::Namespace]) -> anyhow::Result<Option<HookSettings>> {
        let Some(url) = args.hook_url.or(file.url) else {
            if let Some(n) = namespaces.iter().find(|n| n.subscribe_hook || n.publish_hook) {
                bail!("config file, [namespaces.{:?}] asks for a hook: set --hook-url (or url in [hooks])", n.prefix);
            }
            if args.hook_connect.is_some() || args.hook_rpc || file.connect.is_some() || file.rpc == Some(true) {
                bail!("--hook-connect and --hook-rpc need --hook-url (or url in [hooks])");
            }
            return Ok(None);
        };
        let timeout = match (args.hook_timeout, file.timeout) {
            (Some(d), _) => d,
            (None, Some(s)) => crate::settings::parse_duration(&s).map_err(|e| anyhow::anyhow!("config file, [hooks] timeout: {e}"))?,
            (None, None) => Duration::from_secs(2),
        };
        if timeout.is_zero() {
            bail!("--hook-timeout must be more than 0");
        }
        Ok(Some(HookSettings {
            url: BackendUrl::parse(&url, "--hook-url", backend_http::read_ca(args.backend_ca.as_deref())?.as_deref())?,
            secret: args.hook_secret.or(file.secret).filter(|s| !s.is_empty()),
            timeout,
            max_in_flight: args.hook_max_in_flight.or(file.max_in_flight).unwrap_or(256).max(1),
            connect: args.hook_connect.or(file.connect),
            subscribe_failure: args.hook_subscribe_failure.or(file.subscribe_failure).unwrap_or_default(),
            publish_failure: args.hook_publish_failure.or(file.publish_failure).unwrap_or_default(),
            rpc: args.hook_rpc || file.rpc == Some(true),
        }))
    }
}

const HOOKS: [&str; 4] = ["connect", "subscribe", "publish", "rpc"];
const OUTCOMES: [&str; 6] = ["allow", "deny", "rewrite", "timeout", "unavailable", "busy"];

/// Hook calls by hook and outcome, for `/metrics`.
#[derive(Default)]
pub struct HookMetrics {
    counts: [[AtomicU64; 6]; 4],
}

impl HookMetrics {
    fn count(&self, hook: &str, outcome: &str) {
        let h = HOOKS.iter().position(|x| *x == hook).unwrap_or(0);
        let o = OUTCOMES.iter().position(|x| *x == outcome).unwrap_or(0);
        self.counts[h][o].fetch_add(1, Ordering::Relaxed);
    }

    pub fn render(&self) -> String {
        let name = "tether_hook_calls_total";
        let mut out = format!("# HELP {name} Calls to the backend's hooks, by hook and outcome (timeout, unavailable, busy: the failure mode applied).\n# TYPE {name} counter\n");
        for (h, hook) in HOOKS.iter().enumerate() {
            for (o, outcome) in OUTCOMES.iter().enumerate() {
                out.push_str(&format!("{name}{{hook=\"{hook}\",outcome=\"{outcome}\"}} {}\n", self.counts[h][o].load(Ordering::Relaxed)));
            }
        }
        out
    }
}

/// The HTTP hooks: what the hub asks (subscribe, publish, rpc) and the
/// connect decision of the handshake.
pub struct HttpHooks {
    settings: HookSettings,
    in_flight: Arc<Semaphore>,
    pub metrics: Arc<HookMetrics>,
}

/// Why a call got no usable answer: `timeout`, `unavailable` or `busy`.
struct Failed(&'static str, String);

/// What the connect hook decided.
pub enum Admission {
    /// Admitted, as this identity.
    Admit(Identity),
    /// Refused with this status (401, 403, or 503 when the backend could not answer).
    Refuse(u16, String),
}

/// What the handshake tells the connect hook.
pub struct ConnectRequest {
    pub room: String,
    pub client_ip: String,
    pub origin: Option<String>,
    /// Bearer or `?token=`, as presented (verified only with JWTs configured).
    pub token: Option<String>,
    pub cookie: Option<String>,
    /// Who the JWT (if any) says the connection is.
    pub identity: Identity,
}

/// The backend's answer to connect.
#[derive(Deserialize)]
struct ConnectAnswer {
    allow: bool,
    user: Option<String>,
    #[serde(flatten)]
    capabilities: Capabilities,
    expires_at: Option<u64>,
    status: Option<u16>,
    reason: Option<String>,
}

/// The backend's answer to subscribe and publish.
#[derive(Deserialize)]
struct Verdict {
    allow: bool,
    reason: Option<String>,
    content: Option<Box<RawValue>>,
}

/// The backend's answer to rpc.
#[derive(Deserialize)]
struct RpcAnswer {
    data: Option<Box<RawValue>>,
    error: Option<RpcError>,
}

#[derive(Deserialize)]
struct RpcError {
    code: String,
    message: Option<String>,
}

/// An error code from the backend, if it is a short snake_case word.
fn valid_code(code: &str) -> bool {
    !code.is_empty() && code.len() <= 64 && code.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

impl HttpHooks {
    pub fn new(settings: HookSettings) -> Arc<HttpHooks> {
        let in_flight = Arc::new(Semaphore::new(settings.max_in_flight));
        Arc::new(HttpHooks { settings, in_flight, metrics: Arc::default() })
    }

    /// Whether the connect hook is on.
    pub fn connect_on(&self) -> bool {
        self.settings.connect.is_some()
    }

    /// One call to `<url>/<hook>`: the 2xx answer's body, or why not. A
    /// permit of the in-flight bound is taken now (not when polled).
    fn ask(&self, hook: &'static str, body: Value) -> impl std::future::Future<Output = Result<Bytes, Failed>> + Send + 'static {
        let permit = self.in_flight.clone().try_acquire_owned();
        let url = self.settings.url.join(&format!("/{hook}"));
        let (secret, timeout) = (self.settings.secret.clone(), self.settings.timeout);
        async move {
            let Ok(_permit) = permit else {
                return Err(Failed("busy", "too many calls to the backend in flight".into()));
            };
            let body = Bytes::from(body.to_string());
            match tokio::time::timeout(timeout, backend_http::post(&url, secret.as_deref(), body, MAX_ANSWER)).await {
                Err(_) => Err(Failed("timeout", format!("the backend did not answer within {timeout:?}"))),
                Ok(Err(e)) => Err(Failed("unavailable", format!("the backend could not be asked: {e}"))),
                Ok(Ok((status, _))) if !status.is_success() => Err(Failed("unavailable", format!("the backend answered {status}"))),
                Ok(Ok((_, answer))) => Ok(answer),
            }
        }
    }

    /// The connect decision for one handshake.
    pub async fn connect(&self, req: ConnectRequest) -> Admission {
        let mode = self.settings.connect.unwrap_or_default();
        let user = match &req.identity {
            Identity::Granted(g) => Some(g.user.to_string()),
            _ => None,
        };
        let body = json!({"hook": "connect", "room": req.room, "client_ip": req.client_ip, "origin": req.origin, "token": req.token, "cookie": req.cookie, "user": user});
        let failed = |why: Failed, identity: Identity| {
            self.metrics.count("connect", why.0);
            tracing::warn!(reason = why.0, mode = ?mode, "connect hook failed: {}", why.1);
            match mode {
                FailureMode::Open => Admission::Admit(identity),
                FailureMode::Closed => Admission::Refuse(503, "the application's backend could not be asked; try again later".into()),
            }
        };
        let answer = match self.ask("connect", body).await {
            Ok(a) => a,
            Err(why) => return failed(why, req.identity),
        };
        let answer: ConnectAnswer = match serde_json::from_slice(&answer) {
            Ok(a) => a,
            Err(e) => return failed(Failed("unavailable", format!("not a connect answer: {e}")), req.identity),
        };
        if !answer.allow {
            self.metrics.count("connect", "deny");
            let status = if answer.status == Some(401) { 401 } else { 403 };
            tracing::info!(user = ?user, room = ?req.room, status, "refused upgrade: the connect hook");
            return Admission::Refuse(status, answer.reason.unwrap_or_else(|| "refused by the application".into()));
        }
        let Some(name) = answer.user.filter(|u| !u.is_empty() && u.len() <= 256) else {
            self.metrics.count("connect", "allow");
            return Admission::Admit(req.identity);
        };
        let grants = match answer.capabilities.grant(Arc::from(name.as_str()), answer.expires_at) {
            Ok(grants) => grants,
            Err(_) => return failed(Failed("unavailable", "the connect answer's topic patterns are out of bounds".into()), req.identity),
        };
        self.metrics.count("connect", "allow");
        tracing::debug!(user = %grants.user, "admitted by the connect hook");
        Admission::Admit(Identity::Granted(Arc::new(grants)))
    }
}

impl Hooks for HttpHooks {
    fn call(&self, call: HookCall) -> HookFuture {
        let hook = call.request.kind();
        let mode = match &call.request {
            HookRequest::Subscribe { .. } => self.settings.subscribe_failure,
            HookRequest::Publish { .. } => self.settings.publish_failure,
            HookRequest::Rpc { .. } => FailureMode::Closed,
        };
        if hook == "rpc" && !self.settings.rpc {
            return Box::pin(std::future::ready(HookAnswer::refuse("unavailable", "this server has no RPC hook (tether serve --hook-rpc)")));
        }
        let mut body = json!({"hook": hook, "session": call.session, "user": call.user.as_deref()});
        match &call.request {
            HookRequest::Subscribe { topic } => body["topic"] = json!(&**topic),
            HookRequest::Publish { topic, content } => {
                body["topic"] = json!(&**topic);
                body["content"] = serde_json::from_str(content.get()).unwrap_or(Value::Null);
            }
            HookRequest::Rpc { method, data } => {
                body["method"] = json!(&**method);
                body["data"] = serde_json::from_str(data.get()).unwrap_or(Value::Null);
            }
        }
        let asked = self.ask(hook, body);
        let metrics = self.metrics.clone();
        Box::pin(async move {
            let failed = |why: Failed| {
                metrics.count(hook, why.0);
                tracing::warn!(hook, reason = why.0, mode = ?mode, "hook failed: {}", why.1);
                match mode {
                    FailureMode::Open => HookAnswer::Allow,
                    FailureMode::Closed => HookAnswer::refuse(if why.0 == "timeout" { "timeout" } else { "unavailable" }, why.1),
                }
            };
            let answer = match asked.await {
                Ok(a) => a,
                Err(why) => return failed(why),
            };
            if hook == "rpc" {
                return match serde_json::from_slice::<RpcAnswer>(&answer) {
                    Ok(RpcAnswer { error: Some(e), .. }) => {
                        metrics.count(hook, "deny");
                        let code = if valid_code(&e.code) { e.code } else { "rpc_error".into() };
                        HookAnswer::Refuse { code, message: e.message.unwrap_or_default() }
                    }
                    Ok(RpcAnswer { data, .. }) => {
                        metrics.count(hook, "allow");
                        data.map_or(HookAnswer::Allow, HookAnswer::Content)
                    }
                    Err(e) => failed(Failed("unavailable", format!("not an rpc answer: {e}"))),
                };
            }
            match serde_json::from_slice::<Verdict>(&answer) {
                Ok(Verdict { allow: false, reason, .. }) => {
                    metrics.count(hook, "deny");
                    HookAnswer::refuse("forbidden", reason.unwrap_or_else(|| format!("{hook} refused by the application")))
                }
                Ok(Verdict { content: Some(content), .. }) if hook == "publish" => {
                    metrics.count(hook, "rewrite");
                    HookAnswer::Content(content)
                }
                Ok(_) => {
                    metrics.count(hook, "allow");
                    HookAnswer::Allow
                }
                Err(e) => failed(Failed("unavailable", format!("not a {hook} answer: {e}"))),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::settings::{ServeArgs, Settings};

    #[test]
    fn the_example_config_resolves_and_bad_ones_say_why() {
        let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/auth-backend/hooks.toml");
        let s = Settings::resolve(ServeArgs { config: Some(example.into()), ..Default::default() }).unwrap();
        let h = s.hooks.expect("hooks on");
        assert_eq!((h.url.uri.to_string().as_str(), h.connect, h.rpc, h.timeout), ("http://127.0.0.1:9000/hooks", Some(super::FailureMode::Closed), true, std::time::Duration::from_secs(2)));
        assert_eq!(h.url.join("/connect").uri.to_string(), "http://127.0.0.1:9000/hooks/connect");
        assert!(s.namespaces.iter().any(|n| n.prefix == "private:" && n.subscribe_hook && !n.publish_hook));
        let dir = std::env::temp_dir().join(format!("tether-hooks-settings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tether.toml");
        for (bad, why) in [
            ("[namespaces.\"p:\"]\nsubscribe-hook = true\n", "--hook-url"),
            ("[hooks]\nurl = \"ftp://x/\"\n", "http:// or https://"),
            ("[hooks]\nurl = \"http://x/\"\nconnect = \"maybe\"\n", "unknown variant"),
            ("[hooks]\nurl = \"http://x/\"\ntimeout = \"0s\"\n", "more than 0"),
        ] {
            std::fs::write(&path, bad).unwrap();
            let err = Settings::resolve(ServeArgs { config: Some(path.clone()), ..Default::default() }).unwrap_err();
            assert!(format!("{err:#}").contains(why), "{bad}: {err:#}");
        }
    }
}
