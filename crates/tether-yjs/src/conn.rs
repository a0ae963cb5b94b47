//! One y-websocket connection: a task that reads the client's messages,
//! hands them to its document, and writes what the document sends it.

use crate::doc::PeerShared;
use crate::{Access, Closing, Yjs};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tether::{CloseCode, EncodedFrame, Message, WebSocket};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

/// An awareness update with no entries: a no-op for y-protocols, but a
/// message all the same, which keeps y-websocket's 30 s timer from firing.
const SIGN_OF_LIFE: [u8; 3] = [1, 1, 0];

impl Yjs {
    /// Serve one WebSocket connection on document `name` until it closes.
    pub async fn run_connection<S: AsyncRead + AsyncWrite + Unpin>(self: &Arc<Self>, ws: WebSocket<S>, name: &str) {
        self.run_connection_with(ws, name, Access::ReadWrite).await;
    }

    /// [`Yjs::run_connection`] with the rights the connection was granted
    /// (checked by the caller at the handshake, e.g. from a token).
    pub async fn run_connection_with<S: AsyncRead + AsyncWrite + Unpin>(self: &Arc<Self>, mut ws: WebSocket<S>, name: &str, access: Access) {
        if let Err(why) = crate::check_name(name) {
            let _ = ws.close(CloseCode::POLICY_VIOLATION, why).await;
            return;
        }
        let doc = match self.open(name) {
            Ok(doc) => doc,
            Err(closing) => {
                self.metrics.refused_total.fetch_add(1, Ordering::Relaxed);
                tracing::info!(document = name, reason = %closing.reason, "refused a Yjs connection");
                let _ = ws.close(closing.code, &closing.reason).await;
                return;
            }
        };
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
        self.metrics.connections_total.fetch_add(1, Ordering::Relaxed);
        self.metrics.connections.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(PeerShared::default());
        let greeting = doc.lock().join(conn, tx, shared.clone());
        let closing = self.drive(&mut ws, &doc, conn, access, &shared, rx, greeting).await;
        self.close(&doc, conn);
        self.metrics.connections.fetch_sub(1, Ordering::Relaxed);
        if let Some(closing) = closing {
            if closing.code != CloseCode::GOING_AWAY {
                self.metrics.refused_total.fetch_add(1, Ordering::Relaxed);
            }
            tracing::info!(document = name, code = closing.code.0, reason = %closing.reason, "closing a Yjs connection");
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), ws.close(closing.code, &closing.reason)).await;
        }
    }

    /// The connection's loop; returns why the server closes it (`None`:
    /// the client went).
    #[allow(clippy::too_many_arguments)]
    async fn drive<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        ws: &mut WebSocket<S>,
        doc: &crate::Document,
        conn: u64,
        access: Access,
        shared: &PeerShared,
        mut rx: mpsc::UnboundedReceiver<EncodedFrame>,
        greeting: Vec<EncodedFrame>,
    ) -> Option<Closing> {
        for frame in greeting {
            if ws.start_send_encoded(frame).is_err() {
                return None;
            }
        }
        let mut tat = 0u64;
        let mut keepalive = tokio::time::interval(self.config.keepalive);
        keepalive.tick().await;
        // Whether something was sent / received since the last tick.
        let mut sent = true;
        let mut quiet_ticks = 0u32;
        loop {
            tokio::select! {
                biased;
                () = shared.kick.notified() => return shared.kicked.get().cloned(),
                frame = rx.recv() => {
                    let frame = frame?;
                    shared.queued.fetch_sub(frame.len(), Ordering::Relaxed);
                    if ws.start_send_encoded(frame).is_err() {
                        return None;
                    }
                    sent = true;
                    if ws.pending_len() >= ws.high_water() && ws.flush().await.is_err() {
                        return None;
                    }
                }
                msg = ws.recv() => {
                    quiet_ticks = 0;
                    match msg {
                        None | Some(Err(_)) => return None,
                        Some(Ok(Message::Binary(data))) => {
                            if !self.config.message_rate.allow(&mut tat, self.now_ns()) {
                                let rate = self.config.message_rate;
                                return Some(Closing::new(CloseCode::POLICY_VIOLATION, &format!("over {} messages per second (burst {}): rate limit exceeded", rate.per_second, rate.burst)));
                            }
                            let reply = {
                                let mut state = doc.lock();
                                let handled = match state.handle(conn, &self.config, access, &data) {
                                    Ok(handled) => handled,
                                    Err(closing) => return Some(closing),
                                };
                                if !handled.updates.is_empty() {
                                    self.metrics.updates_total.fetch_add(handled.updates.len() as u64, Ordering::Relaxed);
                                }
                                if handled.awareness.is_some() {
                                    self.metrics.awareness_total.fetch_add(1, Ordering::Relaxed);
                                }
                                if !handled.updates.is_empty() || handled.awareness.is_some() {
                                    self.persist(doc, &mut state, &handled.updates, handled.awareness.as_deref());
                                }
                                handled.reply
                            };
                            if let Some(reply) = reply {
                                if ws.start_send_encoded(reply).is_err() {
                                    return None;
                                }
                                sent = true;
                            }
                        }
                        Some(Ok(Message::Text(_))) => {
                            return Some(Closing::new(CloseCode::UNSUPPORTED_DATA, "y-websocket messages are binary"));
                        }
                        Some(Ok(_)) => {}
                    }
                }
                _ = keepalive.tick() => {
                    quiet_ticks += 1;
                    // Three keepalives without a message, pong included: the
                    // client is gone without closing.
                    if quiet_ticks > 3 {
                        return Some(Closing::new(CloseCode::GOING_AWAY, "no answer to pings"));
                    }
                    if !sent && ws.start_send_encoded(EncodedFrame::binary(&SIGN_OF_LIFE)).is_err() {
                        return None;
                    }
                    if ws.start_send(Message::Ping(tether::Bytes::from_static(b"yjs"))).is_err() {
                        return None;
                    }
                    sent = false;
                }
            }
        }
    }
}
