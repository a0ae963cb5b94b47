//! Lifecycle webhooks: `tether serve --webhook-url http://backend/hook
//! --webhook-secret S` POSTs the hub's lifecycle events (topic occupied
//! and vacated, presence join and leave) to the application's backend,
//! signed with HMAC-SHA256, retried with backoff; http:// or https://.
//!
//! - **Never in the way.** The hub hands each event to a bounded queue
//!   (`--webhook-queue`, default 10 000) without waiting; when it is full
//!   the event is dropped and counted. One task sends batches (at most 100
//!   events each), one request at a time, each bounded by
//!   `--webhook-timeout`: a slow or dead backend costs dropped events,
//!   never a connection's progress or unbounded memory.
//! - **Retries.** A batch that fails (connection refused, timeout, a status
//!   other than 2xx) is sent again after 100 ms, 200 ms, ... up to 5 s
//!   (±25 % jitter), at most 5 attempts; then it is dropped and counted.
//! - **Signature.** `X-Tether-Timestamp: <unix seconds>` and
//!   `X-Tether-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`;
//!   the backend recomputes it and should refuse timestamps far from its clock.

use bytes::Bytes;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tether_hub::events::{EventSink, LifecycleEvent};
use tokio::sync::mpsc;

/// Most events in one request.
const BATCH: usize = 100;
/// Attempts per batch.
const ATTEMPTS: u32 = 5;

/// Webhook settings (`--webhook-*`).
#[derive(Clone, Debug)]
pub struct WebhookSettings {
    pub url: crate::backend_http::BackendUrl,
    pub secret: String,
    pub queue: usize,
    pub timeout: Duration,
}

/// Outcomes, for `/metrics`.
#[derive(Default)]
pub struct WebhookMetrics {
    delivered: AtomicU64,
    queue_full: AtomicU64,
    failed: AtomicU64,
    attempts_failed: AtomicU64,
}

impl WebhookMetrics {
    pub fn render(&self) -> String {
        let name = "tether_webhook_events_total";
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        format!(
            "# HELP {name} Lifecycle webhook events, by outcome.\n# TYPE {name} counter\n\
             {name}{{outcome=\"delivered\"}} {}\n{name}{{outcome=\"dropped_queue_full\"}} {}\n{name}{{outcome=\"dropped_failed\"}} {}\n\
             # HELP tether_webhook_failed_attempts_total Webhook requests that failed (each retried or dropped).\n# TYPE tether_webhook_failed_attempts_total counter\n\
             tether_webhook_failed_attempts_total {}\n",
            g(&self.delivered),
            g(&self.queue_full),
            g(&self.failed),
            g(&self.attempts_failed)
        )
    }
}

struct Sink {
    tx: mpsc::Sender<serde_json::Value>,
    metrics: Arc<WebhookMetrics>,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl EventSink for Sink {
    fn event(&self, event: LifecycleEvent) {
        let (name, topic, session, user) = match event {
            LifecycleEvent::Occupied { topic } => ("topic_occupied", topic, None, None),
            LifecycleEvent::Vacated { topic } => ("topic_vacated", topic, None, None),
            LifecycleEvent::Join { topic, session, user } => ("presence_join", topic, Some(session), user),
            LifecycleEvent::Leave { topic, session, user } => ("presence_leave", topic, Some(session), user),
        };
        let mut v = serde_json::json!({ "event": name, "topic": &*topic, "node": tether_hub::node_id(), "ts": now_ms() });
        if let Some(s) = session {
            v["session"] = serde_json::Value::String(s);
        }
        if let Some(u) = user {
            v["user"] = serde_json::Value::String(u.to_string());
        }
        if self.tx.try_send(v).is_err() {
            self.metrics.queue_full.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Start sending `hub`'s lifecycle events to the backend.
pub fn start(hub: &tether_hub::Hub, settings: WebhookSettings) -> Arc<WebhookMetrics> {
    let metrics = Arc::new(WebhookMetrics::default());
    let (tx, rx) = mpsc::channel(settings.queue.max(1));
    hub.set_event_sink(Arc::new(Sink { tx, metrics: metrics.clone() }));
    tokio::spawn(run(rx, settings, metrics.clone()));
    metrics
}

async fn run(mut rx: mpsc::Receiver<serde_json::Value>, settings: WebhookSettings, metrics: Arc<WebhookMetrics>) {
    while let Some(first) = rx.recv().await {
        let mut events = vec![first];
        while events.len() < BATCH {
            match rx.try_recv() {
                Ok(e) => events.push(e),
                Err(_) => break,
            }
        }
        let n = events.len() as u64;
        let body = serde_json::json!({ "events": events }).to_string();
        let backoff = tether::v1::Backoff { min_delay: Duration::from_millis(100), max_delay: Duration::from_secs(5), factor: 2.0, jitter: 0.25 };
        let mut delivered = false;
        for attempt in 0..ATTEMPTS {
            match tokio::time::timeout(settings.timeout, send(&settings, &body)).await {
                Ok(Ok(())) => {
                    delivered = true;
                    break;
                }
                Ok(Err(e)) => tracing::debug!(attempt, error = %e, "webhook failed"),
                Err(_) => tracing::debug!(attempt, "webhook timed out"),
            }
            metrics.attempts_failed.fetch_add(1, Ordering::Relaxed);
            if attempt + 1 < ATTEMPTS {
                tokio::time::sleep(backoff.delay_with(attempt + 1, rand_unit())).await;
            }
        }
        if delivered {
            metrics.delivered.fetch_add(n, Ordering::Relaxed);
        } else {
            metrics.failed.fetch_add(n, Ordering::Relaxed);
            tracing::warn!(events = n, "webhook events dropped after {ATTEMPTS} failed attempts");
        }
    }
}

/// A number in [0, 1) for the jitter.
fn rand_unit() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

async fn send(settings: &WebhookSettings, body: &str) -> anyhow::Result<()> {
    // Read (and drop) at most a little of the answer.
    let (status, _) = crate::backend_http::post(&settings.url, Some(&settings.secret), Bytes::from(body.to_string()), 64 << 10).await?;
    anyhow::ensure!(status.is_success(), "backend answered {status}");
    Ok(())
}
