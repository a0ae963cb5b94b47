//! `tether serve` settings: flags, then `TETHER_*` environment variables,
//! then an optional TOML file, then defaults (in that order of precedence).

use anyhow::{bail, Context};
use serde::Deserialize;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;
use tether_hub::{HistoryConfig, RateLimit, SlowConsumerPolicy};

/// Sizes take units everywhere (`1048576`, `64KiB`, `1MiB`, `1MB`): the one
/// parser lives in tether-bench, whose flags need it too.
pub use tether_bench::parse_size;

/// A size in the config file: an integer (bytes) or a string with a unit
/// (`"1MiB"`), read with [`parse_size`].
pub(crate) fn de_size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
    struct SizeVisitor;
    impl serde::de::Visitor<'_> for SizeVisitor {
        type Value = usize;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a size: a number of bytes, or a string such as \"1MiB\" or \"64KiB\"")
        }
        fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<usize, E> {
            usize::try_from(n).map_err(|_| E::custom(format!("{n} is too large a size")))
        }
        fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<usize, E> {
            usize::try_from(n).map_err(|_| E::custom(format!("{n} is not a size (a size is not negative)")))
        }
        fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<usize, E> {
            parse_size(s).map_err(E::custom)
        }
    }
    d.deserialize_any(SizeVisitor).map(Some)
}

/// Parse `500ms`, `30s`, `5m`, `1h` (a bare number means seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: f64 = num.parse().map_err(|_| format!("{s:?} is not a duration (examples: 500ms, 30s, 5m)"))?;
    let secs = match unit.trim() {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        other => return Err(format!("unknown unit {other:?} in {s:?} (use ms, s, m or h)")),
    };
    if !(secs.is_finite() && secs >= 0.0) {
        return Err(format!("{s:?} is not a valid duration"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// How to treat a client that cannot keep up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SlowConsumer {
    /// Drop the oldest queued messages, count them, and tell tether.v1 clients.
    DropOldest,
    /// Close with 1013 (try again later).
    Close,
    /// Close with 1008 (policy violation).
    ClosePolicy,
}

/// permessage-deflate (RFC 7692) flags, shared by `tether echo` and
/// `tether serve` (and fit for a client: it offers what a server accepts).
#[derive(clap::Args, Debug, Default, Clone)]
pub struct DeflateArgs {
    /// Compress messages with permessage-deflate (RFC 7692) when the peer
    /// agrees. Without context takeover an idle connection holds no
    /// compression memory [default: off]
    #[arg(long, env = "TETHER_DEFLATE", value_parser = clap::builder::FalseyValueParser::new())]
    pub deflate: bool,
    /// With --deflate: messages smaller than this are sent uncompressed
    /// (e.g. 256, 1KiB) [default: 256B]
    #[arg(long, env = "TETHER_DEFLATE_THRESHOLD", value_name = "SIZE", value_parser = parse_size)]
    pub deflate_threshold: Option<usize>,
    /// With --deflate: keep compression state between messages; small
    /// messages shrink 2-3x more, for ~200-330 KiB more per connection
    /// [default: off]
    #[arg(long, env = "TETHER_DEFLATE_CONTEXT_TAKEOVER", value_parser = clap::builder::FalseyValueParser::new())]
    pub deflate_context_takeover: bool,
    /// With --deflate: largest LZ77 window, as a power of two (9-15); with
    /// context takeover, 9 saves ~125 KiB per connection [default: 15]
    #[arg(long, env = "TETHER_DEFLATE_WINDOW_BITS", value_parser = clap::value_parser!(u8).range(9..=15))]
    pub deflate_window_bits: Option<u8>,
}

impl DeflateArgs {
    /// The compression settings, or `None` when --deflate is off.
    pub fn config(&self) -> Option<tether::DeflateConfig> {
        self.merge(&DeflateFile::default())
    }

    /// Flags and variables first, then the config file, then defaults.
    fn merge(&self, file: &DeflateFile) -> Option<tether::DeflateConfig> {
        if !(self.deflate || file.deflate.unwrap_or(false)) {
            return None;
        }
        let d = tether::DeflateConfig::default();
        Some(tether::DeflateConfig {
            threshold: self.deflate_threshold.or(file.deflate_threshold).unwrap_or(d.threshold),
            context_takeover: self.deflate_context_takeover || file.deflate_context_takeover.unwrap_or(d.context_takeover),
            max_window_bits: self.deflate_window_bits.or(file.deflate_window_bits).unwrap_or(d.max_window_bits),
            ..d
        })
    }
}

/// The permessage-deflate keys of the config file.
#[derive(Default, Debug)]
struct DeflateFile {
    deflate: Option<bool>,
    deflate_threshold: Option<usize>,
    deflate_context_takeover: Option<bool>,
    deflate_window_bits: Option<u8>,
}

#[derive(clap::Args, Debug, Default)]
pub struct ServeArgs {
    /// Address for HTTP and WebSocket (same port) [default: 0.0.0.0:8080]
    #[arg(long, env = "TETHER_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// TOML file with any of these settings (flags and TETHER_* variables win).
    #[arg(long, env = "TETHER_CONFIG")]
    pub config: Option<PathBuf>,
    /// Ping every client this often; clients that miss a ping are terminated
    /// (e.g. 30s, 500ms) [default: 30s]
    #[arg(long, env = "TETHER_HEARTBEAT_INTERVAL", value_parser = parse_duration)]
    pub heartbeat_interval: Option<Duration>,
    /// Most open WebSocket connections; more get HTTP 503 [default: 10000]
    #[arg(long, env = "TETHER_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Largest message a client may send (e.g. 1MiB, 64KiB, 1048576); larger
    /// ones close with 1009 [default: 1MiB]
    #[arg(long, env = "TETHER_MAX_MESSAGE_SIZE", value_name = "SIZE", value_parser = parse_size)]
    pub max_message_size: Option<usize>,
    /// Time allowed for the HTTP request head and TLS handshake [default: 10s]
    #[arg(long, env = "TETHER_HANDSHAKE_TIMEOUT", value_parser = parse_duration)]
    pub handshake_timeout: Option<Duration>,
    /// Accept WebSocket upgrades only from these Origins (repeat or comma-separate);
    /// others get HTTP 403 [default: any]
    #[arg(long = "allowed-origin", env = "TETHER_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,
    /// Require this bearer token (`Authorization: Bearer T` or `?token=T`);
    /// others get HTTP 401 [default: none]
    #[arg(long, env = "TETHER_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// PEM certificate chain: serve HTTPS and WSS on the same port (with --tls-key)
    #[arg(long, env = "TETHER_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert
    #[arg(long, env = "TETHER_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Most messages queued for one client [default: 1024]
    #[arg(long, env = "TETHER_QUEUE_MAX_MESSAGES")]
    pub queue_max_messages: Option<usize>,
    /// Most bytes queued for one client (e.g. 4MiB) [default: 4MiB]
    #[arg(long, env = "TETHER_QUEUE_MAX_BYTES", value_name = "SIZE", value_parser = parse_size)]
    pub queue_max_bytes: Option<usize>,
    /// What to do with a client whose queue is full [default: drop-oldest]
    #[arg(long, env = "TETHER_SLOW_CONSUMER", value_enum)]
    pub slow_consumer: Option<SlowConsumer>,
    /// How long shutdown waits for clients to answer the 1001 close [default: 5s]
    #[arg(long, env = "TETHER_SHUTDOWN_TIMEOUT", value_parser = parse_duration)]
    pub shutdown_timeout: Option<Duration>,
    /// Message broker: `memory` (one process), `redis://HOST:PORT` (several
    /// nodes sharing topics, history and presence through one Redis) or
    /// `redis-cluster://HOST:PORT[,HOST:PORT...]` (the same over a Redis 7
    /// Cluster, topics spread over its shards) [default: memory]
    #[arg(long, env = "TETHER_BROKER")]
    pub broker: Option<String>,
    #[command(flatten)]
    pub deflate: DeflateArgs,
    #[command(flatten)]
    pub driver: crate::driver::DriverArgs,
    /// Messages kept per topic for clients that resume (`since`); 0 keeps
    /// none [default: 1000]
    #[arg(long, env = "TETHER_HISTORY_SIZE")]
    pub history_size: Option<usize>,
    /// Kept messages older than this are not replayed (e.g. 5m) [default: 5m]
    #[arg(long, env = "TETHER_HISTORY_TTL", value_parser = parse_duration)]
    pub history_ttl: Option<Duration>,
    /// (memory broker) Most topics whose sequence and history are kept; the
    /// least recently used goes first [default: 10000]
    #[arg(long, env = "TETHER_HISTORY_TOPICS")]
    pub history_topics: Option<usize>,
    /// (memory broker) Most payload bytes of history over all topics (e.g.
    /// 64MiB) [default: 64MiB]
    #[arg(long, env = "TETHER_HISTORY_MAX_BYTES", value_name = "SIZE", value_parser = parse_size)]
    pub history_max_bytes: Option<usize>,
    /// (redis broker) Most bytes of history kept per topic in Redis; the
    /// oldest messages go first (e.g. 4MiB) [default: 4MiB]
    #[arg(long, env = "TETHER_HISTORY_TOPIC_MAX_BYTES", value_name = "SIZE", value_parser = parse_size)]
    pub history_topic_max_bytes: Option<usize>,
    /// Drop a connection that has written nothing for this long while data
    /// waits for it (a peer that stopped reading); checked at each
    /// heartbeat [default: 90s]
    #[arg(long, env = "TETHER_WRITE_STALL_TIMEOUT", value_parser = parse_duration)]
    pub write_stall_timeout: Option<Duration>,
    /// Messages (and pings) one connection may send per second; over it they
    /// are refused with `rate_limited`, and sustained abuse closes with 1008;
    /// 0 turns the limit off [default: 100]
    #[arg(long, env = "TETHER_MESSAGE_RATE")]
    pub message_rate: Option<u32>,
    /// Messages one connection may send at once above --message-rate [default: 200]
    #[arg(long, env = "TETHER_MESSAGE_BURST")]
    pub message_burst: Option<u32>,
    /// Subscribe/unsubscribe requests one connection may send per second
    /// (refused and closed like --message-rate); 0 is off [default: 20]
    #[arg(long, env = "TETHER_SUBSCRIBE_RATE")]
    pub subscribe_rate: Option<u32>,
    /// Subscribe/unsubscribe requests at once above --subscribe-rate [default: 256]
    #[arg(long, env = "TETHER_SUBSCRIBE_BURST")]
    pub subscribe_burst: Option<u32>,
    /// Most open connections (WebSocket or HTTP, upgraded or not) from one
    /// client address; more get HTTP 429 [default: 256]
    #[arg(long, env = "TETHER_MAX_CONNECTIONS_PER_IP")]
    pub max_connections_per_ip: Option<usize>,
    /// Take the client address from this request header (e.g.
    /// X-Forwarded-For, right-most entry; or X-Real-IP) when the connection
    /// comes from one of --trusted-proxies [default: none: the TCP peer]
    #[arg(long, env = "TETHER_CLIENT_IP_HEADER")]
    pub client_ip_header: Option<String>,
    /// Proxies whose --client-ip-header is believed (repeat or comma-separate)
    /// [default: 127.0.0.1,::1]
    #[arg(long = "trusted-proxy", env = "TETHER_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<IpAddr>,
    /// Failed token checks allowed per client address per minute; more get
    /// HTTP 429 until the minute is over [default: 20]
    #[arg(long, env = "TETHER_MAX_AUTH_FAILURES")]
    pub max_auth_failures: Option<u32>,
    /// Require this bearer token on /metrics (`Authorization: Bearer T`)
    /// [default: none, /metrics is open]
    #[arg(long, env = "TETHER_METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<String>,
    /// On SIGTERM or `POST /admin/drain`, close clients gradually over this
    /// window with 1012 and a jittered reconnect hint, so they move to other
    /// nodes without a thundering herd; 0s closes them at once with 1001
    /// (e.g. 30s) [default: 10s]
    #[arg(long, env = "TETHER_DRAIN_WINDOW", value_parser = parse_duration)]
    pub drain_window: Option<Duration>,
    /// Enable the operator API (`POST /admin/drain`, `/admin/shed?fraction=F`,
    /// `/admin/resume`) behind this bearer token [default: none, disabled]
    #[arg(long, env = "TETHER_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Longest a plain HTTP connection (not a WebSocket) stays open, so a
    /// client that stops reading a response cannot hold it [default: 60s]
    #[arg(long, env = "TETHER_HTTP_TIMEOUT", value_parser = parse_duration)]
    pub http_timeout: Option<Duration>,
    /// Turn the server API on (`/api/*`, docs/auth.md): requests must carry
    /// this key in `X-API-Key` [default: none, the API is off (404)]
    #[arg(long, env = "TETHER_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// How long an `idempotency_key` of `/api/publish` is remembered: a
    /// retry within it is answered with the first publish's epoch and seq [default: 5m]
    #[arg(long, env = "TETHER_API_IDEMPOTENCY_WINDOW", value_parser = parse_duration)]
    pub api_idempotency_window: Option<Duration>,
    /// Largest request body of the server API (e.g. 1MiB) [default: --max-message-size + 64KiB]
    #[arg(long, env = "TETHER_API_MAX_BODY", value_name = "SIZE", value_parser = parse_size)]
    pub api_max_body: Option<usize>,
    /// Longest the server API waits for the broker before answering 504 [default: 5s]
    #[arg(long, env = "TETHER_API_TIMEOUT", value_parser = parse_duration)]
    pub api_timeout: Option<Duration>,
    /// POST lifecycle events (topic occupied/vacated, presence join/leave)
    /// to this http:// or https:// URL, signed with --webhook-secret [default: none]
    #[arg(long, env = "TETHER_WEBHOOK_URL", requires = "webhook_secret")]
    pub webhook_url: Option<String>,
    /// The HMAC-SHA256 key of the webhooks' X-Tether-Signature
    #[arg(long, env = "TETHER_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<String>,
    /// Webhook events waiting to be sent; more are dropped and counted [default: 10000]
    #[arg(long, env = "TETHER_WEBHOOK_QUEUE")]
    pub webhook_queue: Option<usize>,
    /// Longest one webhook request may take (then it is retried) [default: 5s]
    #[arg(long, env = "TETHER_WEBHOOK_TIMEOUT", value_parser = parse_duration)]
    pub webhook_timeout: Option<Duration>,
    #[command(flatten)]
    pub live: crate::live::LiveArgs,
    #[command(flatten)]
    pub yjs: crate::yjs::YjsArgs,
    #[command(flatten)]
    pub auth: crate::auth::AuthArgs,
    #[command(flatten)]
    pub hooks: crate::hooks::HookArgs,
}

#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileConfig {
    listen: Option<SocketAddr>,
    heartbeat_interval: Option<String>,
    max_connections: Option<usize>,
    #[serde(default, deserialize_with = "de_size")]
    max_message_size: Option<usize>,
    handshake_timeout: Option<String>,
    allowed_origins: Option<Vec<String>>,
    token: Option<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    queue_max_messages: Option<usize>,
    #[serde(default, deserialize_with = "de_size")]
    queue_max_bytes: Option<usize>,
    slow_consumer: Option<SlowConsumer>,
    shutdown_timeout: Option<String>,
    broker: Option<String>,
    deflate: Option<bool>,
    #[serde(default, deserialize_with = "de_size")]
    deflate_threshold: Option<usize>,
    deflate_context_takeover: Option<bool>,
    deflate_window_bits: Option<u8>,
    history_size: Option<usize>,
    history_ttl: Option<String>,
    history_topics: Option<usize>,
    #[serde(default, deserialize_with = "de_size")]
    history_max_bytes: Option<usize>,
    #[serde(default, deserialize_with = "de_size")]
    history_topic_max_bytes: Option<usize>,
    write_stall_timeout: Option<String>,
    message_rate: Option<u32>,
    message_burst: Option<u32>,
    subscribe_rate: Option<u32>,
    subscribe_burst: Option<u32>,
    max_connections_per_ip: Option<usize>,
    client_ip_header: Option<String>,
    trusted_proxies: Option<Vec<IpAddr>>,
    max_auth_failures: Option<u32>,
    metrics_token: Option<String>,
    drain_window: Option<String>,
    admin_token: Option<String>,
    http_timeout: Option<String>,
    /// The `[yjs]` table.
    #[serde(default)]
    yjs: crate::yjs::YjsFile,
    /// The `[live]` table (src/live.rs).
    #[serde(default)]
    live: crate::live::LiveFile,
    /// JWT connection tokens (src/auth.rs).
    jwt: Option<crate::auth::AuthFile>,
    /// Topic prefixes with their own rules (src/auth.rs).
    namespaces: Option<std::collections::BTreeMap<String, crate::auth::NamespaceFile>>,
    api_key: Option<String>,
    api_idempotency_window: Option<String>,
    #[serde(default, deserialize_with = "de_size")]
    api_max_body: Option<usize>,
    api_timeout: Option<String>,
    webhook_url: Option<String>,
    webhook_secret: Option<String>,
    webhook_queue: Option<usize>,
    webhook_timeout: Option<String>,
    /// Hooks into the backend (src/hooks.rs).
    hooks: Option<crate::hooks::HooksFile>,
}

/// The settings `tether serve` runs with.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub heartbeat_interval: Duration,
    pub max_connections: usize,
    pub max_message_size: usize,
    pub handshake_timeout: Duration,
    pub allowed_origins: Vec<String>,
    pub token: Option<String>,
    pub tls: Option<(PathBuf, PathBuf)>,
    pub queue_max_messages: usize,
    pub queue_max_bytes: usize,
    pub slow_consumer: SlowConsumerPolicy,
    pub shutdown_timeout: Duration,
    pub broker: String,
    /// permessage-deflate for client connections; `None` is off.
    pub deflate: Option<tether::DeflateConfig>,
    pub history: HistoryConfig,
    pub write_stall_timeout: Duration,
    pub message_rate: RateLimit,
    pub subscribe_rate: RateLimit,
    pub max_connections_per_ip: usize,
    pub client_ip_header: Option<String>,
    pub trusted_proxies: Vec<IpAddr>,
    pub max_auth_failures: u32,
    pub metrics_token: Option<String>,
    /// How long a drain spreads its closes over (src/admin.rs).
    pub drain_window: Duration,
    /// The bearer token of `/admin/*`; `None` disables it.
    pub admin_token: Option<String>,
    pub http_timeout: Duration,
    /// The server API (`--api-*`).
    pub api: crate::api::ApiSettings,
    /// Lifecycle webhooks (`--webhook-*`), if on.
    pub webhook: Option<crate::webhook::WebhookSettings>,
    /// Conflation, `$sys:stats` and `$room:` ticks (flags, variables, `[live]`).
    pub live: crate::live::LiveArgs,
    /// The Yjs endpoint.
    pub yjs: crate::yjs::YjsSettings,
    /// JWT connection tokens and their expiry.
    pub auth: crate::auth::AuthSettings,
    /// `[namespaces."PREFIX"]` of the config file.
    pub namespaces: Vec<tether_hub::namespace::Namespace>,
    /// Hooks into the backend (`--hook-*`, `[hooks]`), if on.
    pub hooks: Option<crate::hooks::HookSettings>,
}

impl Settings {
    pub fn resolve(args: ServeArgs) -> anyhow::Result<Settings> {
        let file: FileConfig = match &args.config {
            None => FileConfig::default(),
            Some(path) => {
                let text = std::fs::read_to_string(path).with_context(|| format!("cannot read config file {}", path.display()))?;
                toml::from_str(&text).with_context(|| format!("invalid config file {}", path.display()))?
            }
        };
        let dur = |flag: Option<Duration>, file: Option<String>, name: &str, default: Duration| -> anyhow::Result<Duration> {
            match (flag, file) {
                (Some(d), _) => Ok(d),
                (None, Some(s)) => parse_duration(&s).map_err(|e| anyhow::anyhow!("config file, {name}: {e}")),
                (None, None) => Ok(default),
            }
        };
        let tls = match (args.tls_cert.or(file.tls_cert), args.tls_key.or(file.tls_key)) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            _ => bail!("--tls-cert and --tls-key go together"),
        };
        let slow = args.slow_consumer.or(file.slow_consumer).unwrap_or(SlowConsumer::DropOldest);
        let settings = Settings {
            listen: args.listen.or(file.listen).unwrap_or_else(|| "0.0.0.0:8080".parse().unwrap()),
            heartbeat_interval: dur(args.heartbeat_interval, file.heartbeat_interval, "heartbeat-interval", Duration::from_secs(30))?,
            max_connections: args.max_connections.or(file.max_connections).unwrap_or(10_000),
            max_message_size: args.max_message_size.or(file.max_message_size).unwrap_or(1 << 20),
            handshake_timeout: dur(args.handshake_timeout, file.handshake_timeout, "handshake-timeout", Duration::from_secs(10))?,
            allowed_origins: if args.allowed_origins.is_empty() { file.allowed_origins.unwrap_or_default() } else { args.allowed_origins },
            token: args.token.or(file.token),
            tls,
            queue_max_messages: args.queue_max_messages.or(file.queue_max_messages).unwrap_or(1024),
            queue_max_bytes: args.queue_max_bytes.or(file.queue_max_bytes).unwrap_or(4 << 20),
            slow_consumer: match slow {
                SlowConsumer::DropOldest => SlowConsumerPolicy::DropOldest,
                SlowConsumer::Close => SlowConsumerPolicy::Close(1013),
                SlowConsumer::ClosePolicy => SlowConsumerPolicy::Close(1008),
            },
            shutdown_timeout: dur(args.shutdown_timeout, file.shutdown_timeout, "shutdown-timeout", Duration::from_secs(5))?,
            broker: args.broker.or(file.broker).unwrap_or_else(|| "memory".into()),
            deflate: args.deflate.merge(&DeflateFile {
                deflate: file.deflate,
                deflate_threshold: file.deflate_threshold,
                deflate_context_takeover: file.deflate_context_takeover,
                deflate_window_bits: file.deflate_window_bits,
            }),
            history: {
                let d = HistoryConfig::default();
                HistoryConfig {
                    max_messages: args.history_size.or(file.history_size).unwrap_or(d.max_messages),
                    max_age: dur(args.history_ttl, file.history_ttl, "history-ttl", d.max_age)?,
                    max_topics: args.history_topics.or(file.history_topics).unwrap_or(d.max_topics),
                    max_bytes: args.history_max_bytes.or(file.history_max_bytes).unwrap_or(d.max_bytes),
                    max_topic_bytes: args.history_topic_max_bytes.or(file.history_topic_max_bytes).unwrap_or(d.max_topic_bytes),
                    // [namespaces."PREFIX"] history-size / history-ttl (below).
                    prefixes: Vec::new(),
                }
            },
            write_stall_timeout: dur(args.write_stall_timeout, file.write_stall_timeout, "write-stall-timeout", Duration::from_secs(90))?,
            message_rate: RateLimit {
                per_second: args.message_rate.or(file.message_rate).unwrap_or(100),
                burst: args.message_burst.or(file.message_burst).unwrap_or(200).max(1),
            },
            subscribe_rate: RateLimit {
                per_second: args.subscribe_rate.or(file.subscribe_rate).unwrap_or(20),
                burst: args.subscribe_burst.or(file.subscribe_burst).unwrap_or(256).max(1),
            },
            max_connections_per_ip: args.max_connections_per_ip.or(file.max_connections_per_ip).unwrap_or(256),
            client_ip_header: args.client_ip_header.or(file.client_ip_header).filter(|h| !h.is_empty()),
            trusted_proxies: if args.trusted_proxies.is_empty() {
                file.trusted_proxies.unwrap_or_else(|| vec![IpAddr::from([127, 0, 0, 1]), IpAddr::from(std::net::Ipv6Addr::LOCALHOST)])
            } else {
                args.trusted_proxies
            },
            max_auth_failures: args.max_auth_failures.or(file.max_auth_failures).unwrap_or(20),
            metrics_token: args.metrics_token.or(file.metrics_token),
            drain_window: dur(args.drain_window, file.drain_window, "drain-window", Duration::from_secs(10))?,
            admin_token: args.admin_token.or(file.admin_token),
            http_timeout: dur(args.http_timeout, file.http_timeout, "http-timeout", Duration::from_secs(60))?,
            api: crate::api::ApiSettings {
                key: args.api_key.or(file.api_key).filter(|k| !k.is_empty()),
                idempotency_window: dur(args.api_idempotency_window, file.api_idempotency_window, "api-idempotency-window", Duration::from_secs(300))?,
                timeout: dur(args.api_timeout, file.api_timeout, "api-timeout", Duration::from_secs(5))?,
                max_body: args.api_max_body.or(file.api_max_body).unwrap_or(args.max_message_size.or(file.max_message_size).unwrap_or(1 << 20) + (64 << 10)),
                max_content: args.max_message_size.or(file.max_message_size).unwrap_or(1 << 20),
            },
            webhook: match (args.webhook_url.or(file.webhook_url), args.webhook_secret.or(file.webhook_secret)) {
                (None, _) => None,
                (Some(_), None) => bail!("--webhook-url needs --webhook-secret (the key of the signatures)"),
                (Some(url), Some(secret)) => {
                    let ca = crate::backend_http::read_ca(args.hooks.backend_ca.as_deref())?;
                    let url = crate::backend_http::BackendUrl::parse(&url, "--webhook-url", ca.as_deref())?;
                    Some(crate::webhook::WebhookSettings {
                        url,
                        secret,
                        queue: args.webhook_queue.or(file.webhook_queue).unwrap_or(10_000).max(1),
                        timeout: dur(args.webhook_timeout, file.webhook_timeout, "webhook-timeout", Duration::from_secs(5))?,
                    })
                }
            },
            live: args.live.resolve(file.live)?,
            yjs: args.yjs.resolve(file.yjs)?,
            auth: crate::auth::AuthSettings::resolve(args.auth, file.jwt.unwrap_or_default())?,
            namespaces: crate::auth::namespaces(file.namespaces.clone())?,
            hooks: None,
        };
        let mut settings = settings;
        settings.history.prefixes = crate::auth::history_prefixes(file.namespaces.as_ref(), &settings.history)?;
        settings.hooks = crate::hooks::HookSettings::resolve(args.hooks, file.hooks.unwrap_or_default(), &settings.namespaces)?;
        if settings.api.timeout.is_zero() || settings.api.idempotency_window.is_zero() {
            bail!("--api-timeout and --api-idempotency-window must be greater than zero");
        }
        if settings.heartbeat_interval.is_zero() || settings.write_stall_timeout.is_zero() || settings.http_timeout.is_zero() {
            bail!("--heartbeat-interval, --write-stall-timeout and --http-timeout must be greater than zero");
        }
        if settings.max_connections_per_ip == 0 {
            bail!("--max-connections-per-ip must be at least 1");
        }
        if settings.heartbeat_interval.is_zero() {
            bail!("--heartbeat-interval must be greater than zero");
        }
        if settings.max_connections == 0 || settings.queue_max_messages == 0 {
            bail!("--max-connections and --queue-max-messages must be at least 1");
        }
        Ok(settings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5 parsecs").is_err());
    }

    #[test]
    fn flags_beat_file_beats_defaults() {
        let dir = std::env::temp_dir().join(format!("tether-settings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tether.toml");
        std::fs::write(&path, "listen = \"127.0.0.1:9999\"\nheartbeat-interval = \"2s\"\nmax-connections = 5\n").unwrap();
        let args = ServeArgs { config: Some(path.clone()), max_connections: Some(7), ..Default::default() };
        let s = Settings::resolve(args).unwrap();
        assert_eq!(s.listen, "127.0.0.1:9999".parse().unwrap());
        assert_eq!(s.heartbeat_interval, Duration::from_secs(2));
        assert_eq!(s.max_connections, 7);
        assert_eq!(s.max_message_size, 1 << 20);
        std::fs::write(&path, "no-such-setting = 1\n").unwrap();
        let err = Settings::resolve(ServeArgs { config: Some(path), ..Default::default() }).unwrap_err();
        assert!(format!("{err:#}").contains("no-such-setting"), "{err:#}");
    }

    #[test]
    fn sizes_take_units_in_flags_and_in_the_file() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            serve: ServeArgs,
        }
        let cli = Cli::try_parse_from(["t", "--max-message-size", "1MiB", "--queue-max-bytes", "64KiB", "--history-max-bytes", "1MB"]).unwrap();
        assert_eq!((cli.serve.max_message_size, cli.serve.queue_max_bytes, cli.serve.history_max_bytes), (Some(1 << 20), Some(64 << 10), Some(1_000_000)));
        let err = Cli::try_parse_from(["t", "--max-message-size", "1M"]).err().unwrap().to_string();
        assert!(err.contains("MiB"), "{err}");

        let dir = std::env::temp_dir().join(format!("tether-settings-sizes-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tether.toml");
        std::fs::write(&path, "max-message-size = \"2MiB\"\nqueue-max-bytes = 65536\nhistory-topic-max-bytes = \"512 KiB\"\ndeflate = true\ndeflate-threshold = \"1KiB\"\n").unwrap();
        let s = Settings::resolve(ServeArgs { config: Some(path.clone()), ..Default::default() }).unwrap();
        assert_eq!((s.max_message_size, s.queue_max_bytes, s.history.max_topic_bytes), (2 << 20, 65536, 512 << 10));
        assert_eq!(s.deflate.unwrap().threshold, 1024);
        for (bad, why) in [("max-message-size = \"lots\"\n", "not a size"), ("queue-max-bytes = -1\n", "negative"), ("queue-max-bytes = true\n", "1MiB")] {
            std::fs::write(&path, bad).unwrap();
            let err = Settings::resolve(ServeArgs { config: Some(path.clone()), ..Default::default() }).unwrap_err();
            assert!(format!("{err:#}").contains(why), "{bad}: {err:#}");
        }
    }

    #[test]
    fn deflate_is_off_unless_asked_for() {
        assert!(Settings::resolve(ServeArgs::default()).unwrap().deflate.is_none());
        let dir = std::env::temp_dir().join(format!("tether-settings-deflate-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tether.toml");
        std::fs::write(&path, "deflate = true\ndeflate-window-bits = 10\ndeflate-threshold = 64\n").unwrap();
        // The file turns it on; a flag beats the file's threshold.
        let deflate = DeflateArgs { deflate_threshold: Some(1024), ..Default::default() };
        let s = Settings::resolve(ServeArgs { config: Some(path), deflate, ..Default::default() }).unwrap();
        let d = s.deflate.expect("deflate on");
        assert_eq!((d.threshold, d.max_window_bits, d.context_takeover), (1024, 10, false));
        // The flag alone gives the library's defaults.
        let d = DeflateArgs { deflate: true, ..Default::default() }.config().unwrap();
        assert_eq!(d, tether::DeflateConfig::default());
    }
}
