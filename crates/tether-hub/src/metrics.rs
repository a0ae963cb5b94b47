//! Counters for `/metrics` (Prometheus text format) and `/health`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

/// Server-wide counters. All updates are relaxed atomics.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Open WebSocket connections.
    pub connections: AtomicI64,
    /// Connections accepted since start.
    pub connections_total: AtomicU64,
    /// Messages received from clients.
    pub messages_in: AtomicU64,
    /// Messages queued to clients (deliveries).
    pub messages_out: AtomicU64,
    /// Payload bytes received.
    pub bytes_in: AtomicU64,
    /// Frame bytes queued to clients.
    pub bytes_out: AtomicU64,
    /// Messages published to a topic or room.
    pub broadcasts: AtomicU64,
    /// Messages dropped because a client fell behind.
    pub dropped_messages: AtomicU64,
    /// Connections closed because they fell behind.
    pub slow_consumer_closes: AtomicU64,
    /// Connections closed with 1012 by a drain or a shed.
    pub drained_connections: AtomicU64,
    /// Connections terminated because they missed a heartbeat.
    pub terminated_connections: AtomicU64,
    /// Upgrade requests refused (bad handshake, limits, auth, origin).
    pub handshake_failures: AtomicU64,
    /// `error` envelopes sent for bad client messages.
    pub client_errors: AtomicU64,
    /// Subscriptions that asked to resume (`since`).
    pub resumes: AtomicU64,
    /// `history_gap` notices sent (a client missed messages that cannot be replayed).
    pub history_gaps: AtomicU64,
    /// Connections dropped because nothing could be written to them for the
    /// write-stall timeout.
    pub write_stall_closes: AtomicU64,
    /// Messages and subscription requests refused by a rate limit.
    pub rate_limited: AtomicU64,
    /// Connections closed (1008) for sustained abuse of a rate limit.
    pub rate_limit_closes: AtomicU64,
    /// Queued messages replaced by a newer one with the same topic and key
    /// before they were sent (conflation).
    pub conflated_messages: AtomicU64,
    /// Times an event loop's inbox was full and a publisher fanned it out.
    pub inbox_overflows: AtomicU64,
    /// Delta patches made (once per published message, shared by every
    /// delta subscriber that has the message it patches).
    pub delta_patches: AtomicU64,
    /// Connections closed by the server API (`/api/disconnect`).
    pub api_disconnects: AtomicU64,
    /// Connections refused before or at the upgrade, by reason.
    pub refused: Refused,
    /// Open connections by transport (`tether_connections_by_transport`).
    pub by_transport: ByTransport,
    /// Authentication and authorization decisions, by result and reason
    /// (`tether_auth_decisions_total{result,reason}`); see [`Metrics::count_auth`].
    auth_decisions: std::sync::Mutex<std::collections::BTreeMap<(&'static str, &'static str), u64>>,
}

/// Open connections by transport (`tether_connections_by_transport{transport}`):
/// held by a [`TransportGuard`] for as long as each connection is open.
#[derive(Debug, Default)]
pub struct ByTransport {
    /// WebSocket over HTTP/1.1 (an `Upgrade: websocket` request, RFC 6455).
    pub websocket: AtomicI64,
    /// WebSocket over HTTP/2: a stream opened by extended CONNECT (RFC 8441).
    pub websocket_h2: AtomicI64,
    /// The HTTP fallback transport (SSE down, POST up).
    pub http: AtomicI64,
}

/// The transport a connection uses, for [`ByTransport`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// WebSocket over HTTP/1.1.
    WebSocket,
    /// WebSocket over HTTP/2 (RFC 8441).
    WebSocketH2,
    /// The HTTP fallback transport.
    Http,
}

impl Transport {
    /// The `transport` label value.
    pub fn label(self) -> &'static str {
        match self {
            Transport::WebSocket => "websocket",
            Transport::WebSocketH2 => "websocket_h2",
            Transport::Http => "http",
        }
    }
}

impl ByTransport {
    fn gauge(&self, transport: Transport) -> &AtomicI64 {
        match transport {
            Transport::WebSocket => &self.websocket,
            Transport::WebSocketH2 => &self.websocket_h2,
            Transport::Http => &self.http,
        }
    }
}

/// Counts one open connection in [`ByTransport`] until dropped.
#[derive(Debug)]
pub struct TransportGuard {
    metrics: Arc<Metrics>,
    transport: Transport,
}

impl TransportGuard {
    /// Count a connection on `transport` from now until the guard is dropped.
    pub fn new(metrics: &Arc<Metrics>, transport: Transport) -> Self {
        metrics.by_transport.gauge(transport).fetch_add(1, Ordering::Relaxed);
        TransportGuard { metrics: metrics.clone(), transport }
    }

    /// The transport counted.
    pub fn transport(&self) -> Transport {
        self.transport
    }
}

impl Drop for TransportGuard {
    fn drop(&mut self) {
        self.metrics.by_transport.gauge(self.transport).fetch_sub(1, Ordering::Relaxed);
    }
}

/// Connections refused, by reason (`tether_refused_connections_total{reason}`).
#[derive(Debug, Default)]
pub struct Refused {
    /// `--max-connections` reached (HTTP 503).
    pub max_connections: AtomicU64,
    /// `--max-connections-per-ip` reached (HTTP 429).
    pub per_ip: AtomicU64,
    /// Missing or wrong token (HTTP 401).
    pub auth: AtomicU64,
    /// Too many failed authentications from one address (HTTP 429).
    pub auth_throttled: AtomicU64,
    /// Origin not allowed (HTTP 403).
    pub origin: AtomicU64,
    /// Room name too long or invalid (HTTP 414 / 400).
    pub bad_room: AtomicU64,
}

impl Metrics {
    /// Add `n` to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Count one auth decision: `result` is `allowed`, `refused` or
    /// `closed`; `reason` says which check (`jwt`, `shared_token`,
    /// `expired`, `bad_signature`, `subscribe`, `publish`, `refresh`, a hook
    /// name...). Both are static strings, so the label set is bounded.
    pub fn count_auth(&self, result: &'static str, reason: &'static str) {
        *self.auth_decisions.lock().unwrap_or_else(|p| p.into_inner()).entry((result, reason)).or_default() += 1;
    }

    /// How many auth decisions with `result` and `reason` were counted.
    pub fn auth_decisions(&self, result: &str, reason: &str) -> u64 {
        self.auth_decisions.lock().unwrap_or_else(|p| p.into_inner()).iter().find(|((r, why), _)| *r == result && *why == reason).map_or(0, |(_, n)| *n)
    }

    /// The Prometheus text exposition of every counter, then `extra`
    /// figures `(name, help, value)` (counters if the name ends in `_total`).
    pub fn render_prometheus(&self, extra: &[(&str, &str, f64)]) -> String {
        let mut out = String::with_capacity(2048);
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed) as f64;
        let rows: &[(&str, &str, &str, f64)] = &[
            ("tether_connections", "gauge", "Open WebSocket connections.", self.connections.load(Ordering::Relaxed) as f64),
            ("tether_connections_total", "counter", "WebSocket connections accepted.", g(&self.connections_total)),
            ("tether_messages_in_total", "counter", "Messages received from clients.", g(&self.messages_in)),
            ("tether_messages_out_total", "counter", "Messages queued to clients.", g(&self.messages_out)),
            ("tether_bytes_in_total", "counter", "Payload bytes received from clients.", g(&self.bytes_in)),
            ("tether_bytes_out_total", "counter", "Frame bytes queued to clients.", g(&self.bytes_out)),
            ("tether_broadcasts_total", "counter", "Messages published to a topic or room.", g(&self.broadcasts)),
            ("tether_dropped_messages_total", "counter", "Messages dropped because a client fell behind.", g(&self.dropped_messages)),
            ("tether_slow_consumer_closes_total", "counter", "Connections closed because they fell behind.", g(&self.slow_consumer_closes)),
            ("tether_drained_connections_total", "counter", "Connections closed with 1012 by a drain or a shed.", g(&self.drained_connections)),
            ("tether_terminated_connections_total", "counter", "Connections terminated after a missed heartbeat.", g(&self.terminated_connections)),
            ("tether_handshake_failures_total", "counter", "Upgrade requests refused.", g(&self.handshake_failures)),
            ("tether_client_errors_total", "counter", "Error envelopes sent for bad client messages.", g(&self.client_errors)),
            ("tether_resumes_total", "counter", "Subscriptions that asked to resume from a sequence number.", g(&self.resumes)),
            ("tether_history_gaps_total", "counter", "history_gap notices sent to clients.", g(&self.history_gaps)),
            ("tether_write_stall_closes_total", "counter", "Connections dropped after writing nothing for the write-stall timeout.", g(&self.write_stall_closes)),
            ("tether_rate_limited_total", "counter", "Messages and subscription requests refused by a rate limit.", g(&self.rate_limited)),
            ("tether_rate_limit_closes_total", "counter", "Connections closed (1008) for sustained abuse of a rate limit.", g(&self.rate_limit_closes)),
            ("tether_conflated_messages_total", "counter", "Queued messages replaced by a newer one with the same topic and key.", g(&self.conflated_messages)),
            ("tether_loop_inbox_overflows_total", "counter", "Times an event loop's inbox of messages to fan out was full, so the delivering thread fanned it out itself.", g(&self.inbox_overflows)),
            ("tether_api_disconnects_total", "counter", "Connections closed by the server API.", g(&self.api_disconnects)),
            ("tether_delta_patches_total", "counter", "Delta (JSON Merge Patch) messages made for delta subscriptions.", g(&self.delta_patches)),
        ];
        for (name, kind, help, value) in rows {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
        }
        let r = &self.refused;
        let name = "tether_refused_connections_total";
        let _ = writeln!(out, "# HELP {name} Connections refused before or at the upgrade, by reason.\n# TYPE {name} counter");
        for (reason, c) in [
            ("max_connections", &r.max_connections),
            ("per_ip", &r.per_ip),
            ("auth", &r.auth),
            ("auth_throttled", &r.auth_throttled),
            ("origin", &r.origin),
            ("bad_room", &r.bad_room),
        ] {
            let _ = writeln!(out, "{name}{{reason=\"{reason}\"}} {}", g(c));
        }
        let name = "tether_connections_by_transport";
        let _ = writeln!(out, "# HELP {name} Open connections by transport.\n# TYPE {name} gauge");
        for transport in [Transport::WebSocket, Transport::WebSocketH2, Transport::Http] {
            let _ = writeln!(out, "{name}{{transport=\"{}\"}} {}", transport.label(), self.by_transport.gauge(transport).load(Ordering::Relaxed));
        }
        let name = "tether_auth_decisions_total";
        let _ = writeln!(out, "# HELP {name} Authentication and authorization decisions, by result and reason.\n# TYPE {name} counter");
        for ((result, reason), n) in self.auth_decisions.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            let _ = writeln!(out, "{name}{{result=\"{result}\",reason=\"{reason}\"}} {n}");
        }
        for (name, help, value) in extra {
            // Prometheus' naming rule: a `_total` is a counter, the rest gauges.
            let kind = if name.ends_with("_total") { "counter" } else { "gauge" };
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
        }
        out
    }
}
