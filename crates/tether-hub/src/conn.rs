//! The tokio driver of a [`Session`](crate::Session): one task per connection over a
//! [`WebSocket`] (any stream: TCP, TLS, an upgraded hyper connection). For
//! embedders; `tether serve` runs plain-TCP connections on its own event
//! loop with the same session.

use crate::hub::Hub;
use crate::session::{ConnInfo, End, Ending, Session};
use std::future::poll_fn;
use std::sync::Arc;
use std::task::Poll;
use tether::{CloseCode, WebSocket};
use tokio::io::{AsyncRead, AsyncWrite};

impl Hub {
    /// Run one accepted WebSocket until it ends. Plain clients (no
    /// subprotocol) get the tutorial behaviour: a welcome line, and every text
    /// message broadcast to the room; `tether.v1` clients speak JSON envelopes.
    ///
    /// The returned future lives as long as the client, so it is kept small:
    /// a plain `fn` returning an `async move` block stores the socket once
    /// (an `async fn` argument is stored twice, rust-lang/rust#62958), setup
    /// temporaries live in a synchronous helper, and the closing path is boxed.
    ///
    /// The session is opened (the room joined, the welcome queued) when this
    /// is called, not when the future is first polled.
    pub fn run_connection<'a, S: AsyncRead + AsyncWrite + Unpin + 'a>(self: &'a Arc<Self>, ws: WebSocket<S>, info: ConnInfo) -> impl std::future::Future<Output = ()> + 'a {
        let session = self.open_session(ws.protocol() == Some(crate::PROTOCOL_V1), info);
        self.run_session(ws, session)
    }

    /// Run a session opened with [`Hub::open_session`] on its WebSocket until
    /// it ends. A server that opens the session before it writes the 101
    /// (so the client is in its room by the time it can send) runs it here;
    /// [`Hub::run_connection`] does both for everyone else.
    pub fn run_session<'a, S: AsyncRead + AsyncWrite + Unpin + 'a>(self: &'a Arc<Self>, mut ws: WebSocket<S>, mut session: Session) -> impl std::future::Future<Output = ()> + 'a {
        async move {
            let end = poll_fn(|cx| loop {
                // Registered before the flags are read: a flag set after
                // this point wakes the task again.
                session.set_waker(cx.waker());
                let high_water = ws.high_water();
                if let Err(end) = session.pump(self, &mut ws, high_water) {
                    return Poll::Ready(end);
                }
                if session.reading_paused() {
                    // Paused with nothing to write: waiting for the
                    // backend's hooks, whose answers wake this task.
                    if ws.pending_len() == 0 {
                        return Poll::Pending;
                    }
                    match ws.poll_write_pending(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Err(_)) => return Poll::Ready(End::Closed),
                        Poll::Ready(Ok(())) => continue,
                    }
                }
                match ws.poll_recv(cx) {
                    Poll::Pending => {
                        // poll_recv flushed what it could before waiting. If
                        // that took the socket's buffer below the fill mark,
                        // move more queued frames now: nothing else would
                        // wake this task for frames already queued (a replay).
                        if ws.pending_len() < high_water / 2 && session.has_queued() {
                            continue;
                        }
                        return Poll::Pending;
                    }
                    Poll::Ready(None) => return Poll::Ready(End::Closed),
                    Poll::Ready(Some(Err(e))) => {
                        tracing::debug!(session = %session.id(), error = %e, "connection error");
                        return Poll::Ready(End::Closed);
                    }
                    Poll::Ready(Some(Ok(msg))) => {
                        if let Err(end) = session.on_message(self, msg) {
                            return Poll::Ready(end);
                        }
                    }
                }
            })
            .await;
            let id = session.id();
            let ending = self.end_session(session, end);
            Box::pin(finish(&mut ws, &id, ending)).await;
        }
    }
}

/// Carry out an [`Ending`] on a tokio socket (boxed by the caller: rarely
/// reached, and its close futures would otherwise be sized into every
/// connection's task).
async fn finish<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut WebSocket<S>, session: &str, ending: Ending) {
    match ending {
        // Dropping the socket closes TCP without a close handshake.
        Ending::Abort => {}
        Ending::Finish { within } => {
            // After a protocol error the socket sends its close frame and
            // lingers briefly, so the peer sees the code, not a reset.
            let _ = tokio::time::timeout(within, async { while ws.recv().await.is_some() {} }).await;
            tracing::debug!(session, code = %ws.close_code(), "disconnected");
        }
        Ending::Close { code, reason, within } => {
            let _ = tokio::time::timeout(within, ws.close(CloseCode(code), reason)).await;
        }
        Ending::Restart { reconnect_after_ms, within } => {
            let reason = crate::drain_reason(reconnect_after_ms);
            let _ = tokio::time::timeout(within, ws.close(CloseCode::SERVICE_RESTART, &reason)).await;
        }
    }
}
