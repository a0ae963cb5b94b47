//! Hooks into the application's backend: the hub asks [`Hooks`] before it
//! subscribes a connection to a hooked namespace's topic, before it
//! publishes a client's message to one (the answer may rewrite the
//! content), and for every `rpc` request. `tether serve` installs an HTTP
//! implementation (docs/auth.md, "Hooks"); embedders may install their own
//! with [`Hub::set_hooks`](crate::Hub::set_hooks).
//!
//! The session never waits: a hooked request is set aside, the call runs
//! on the hub's tokio runtime, and its answer is applied on the
//! connection's next wake-up. Answers are applied in the order the
//! requests came (a connection's hooked publishes keep their order).
//! Requests that need no hook are not held behind them.
//!
//! Bounds: at most [`MAX_PENDING_PER_CONNECTION`] hooked requests wait per
//! connection; with that many waiting, the hub stops reading the
//! connection (TCP backpressure) until answers come. An implementation
//! must answer every call within a bounded time and bound its own
//! concurrency (the HTTP one has a timeout and an in-flight limit, and
//! answers at once when that limit is full).

use serde_json::value::RawValue;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// Most hooked requests waiting for an answer on one connection; with
/// that many, the connection is not read until one is answered.
pub const MAX_PENDING_PER_CONNECTION: usize = 16;

/// A hook's answer, to come.
pub type HookFuture = Pin<Box<dyn Future<Output = HookAnswer> + Send + 'static>>;

/// What the backend is asked.
#[derive(Debug, Clone)]
pub enum HookRequest {
    /// May this connection subscribe to `topic`?
    Subscribe {
        /// The topic.
        topic: Arc<str>,
    },
    /// May this connection publish `content` (JSON) to `topic`, and as what?
    Publish {
        /// The topic.
        topic: Arc<str>,
        /// The content the client sent (a plain client's text line is a
        /// JSON string).
        content: Arc<RawValue>,
    },
    /// An `rpc` request: the backend's answer goes back to the client.
    Rpc {
        /// The method name.
        method: Arc<str>,
        /// The request's data (JSON).
        data: Arc<RawValue>,
    },
}

impl HookRequest {
    /// `subscribe`, `publish` or `rpc`.
    pub fn kind(&self) -> &'static str {
        match self {
            HookRequest::Subscribe { .. } => "subscribe",
            HookRequest::Publish { .. } => "publish",
            HookRequest::Rpc { .. } => "rpc",
        }
    }
}

/// One call: who asks, and what.
#[derive(Debug, Clone)]
pub struct HookCall {
    /// The session id.
    pub session: String,
    /// The authenticated user (a token's `sub`, or the connect hook's
    /// answer), if any.
    pub user: Option<Arc<str>>,
    /// What is asked.
    pub request: HookRequest,
}

/// What a hook answered (or what its failure mode decided).
#[derive(Debug, Clone)]
pub enum HookAnswer {
    /// Go ahead as asked (an RPC answered with no data gets `null`).
    Allow,
    /// Publish: go ahead with this content instead. RPC: the answer's data.
    Content(Box<RawValue>),
    /// Refused, or the backend could not be asked: the client gets an
    /// `error` envelope with `code` (`forbidden`, `unavailable`, `timeout`,
    /// or an RPC error code of the backend's).
    Refuse {
        /// Machine-readable code.
        code: String,
        /// For a person.
        message: String,
    },
}

impl HookAnswer {
    /// A refusal with `code` and `message`.
    pub fn refuse(code: impl Into<String>, message: impl Into<String>) -> HookAnswer {
        HookAnswer::Refuse { code: code.into(), message: message.into() }
    }
}

/// The application's backend, as the hub asks it.
pub trait Hooks: Send + Sync + 'static {
    /// Ask; the future must finish within a bounded time (a timeout).
    fn call(&self, call: HookCall) -> HookFuture;
}
