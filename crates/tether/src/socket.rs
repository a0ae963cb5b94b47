//! [`WebSocket`]: a [`Connection`] from tether-proto driven over an
//! `AsyncRead + AsyncWrite` stream.
//!
//! Reads go through a stack buffer, so an idle socket holds no read buffer;
//! only a frame that is partly received is kept on the heap. Writes are
//! queued and flushed when the reader would wait for input, when the queue
//! passes the high-water mark, or on `flush`/`send`: many small messages cost
//! few syscalls, and large payloads go out with vectored writes without being
//! copied.

use crate::config::Config;
use crate::error::{Error, Result};
use bytes::Bytes;
use futures_core::Stream;
use futures_sink::Sink;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tether_proto::{CloseCode, CloseFrame, Connection, Event, Message, PerMessageDeflate, Role};
use tokio::io::{AsyncRead, AsyncWrite};


/// A WebSocket over a stream `S` (TCP, TLS, an upgraded hyper connection,
/// `tokio::io::duplex`...).
///
/// Receive with [`recv`](Self::recv) or as a [`Stream`]; send with
/// [`send`](Self::send) (queue and flush), [`feed`](Self::feed) (queue; flushed
/// when the reader waits, at the high-water mark, or on [`flush`](Self::flush)),
/// or as a [`Sink`]. Pings are answered and closes echoed automatically
/// (see [`Config`]).
///
/// # Cancel safety
/// [`recv`](Self::recv) is cancel-safe: if it is dropped inside `tokio::select!`,
/// no message is lost (bytes stay buffered in the connection). [`feed`](Self::feed)
/// and [`send`](Self::send) are cancel-safe in the sense that a message is either
/// queued whole or not at all; a cancelled `send` may leave it queued but not
/// yet flushed. [`close`](Self::close) is not cancel-safe.
pub struct WebSocket<S> {
    io: S,
    conn: Connection,
    high_water: usize,
    /// Sleeps until the connection's deadline (`Connection::poll_timeout`).
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    protocol: Option<Box<str>>,
    role: Role,
    finished: bool,
    /// Our side of the transport was shut down (write half closed).
    shut_down: bool,
    pending_error: Option<Box<Error>>,
}

impl<S> std::fmt::Debug for WebSocket<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebSocket").field("role", &self.role).field("protocol", &self.protocol).field("finished", &self.finished).finish()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> WebSocket<S> {
    /// Wrap a stream on which the opening handshake already happened.
    /// `buffered` holds any bytes read past the handshake.
    pub fn from_raw(io: S, role: Role, config: &Config, buffered: &[u8]) -> Self {
        Self::from_raw_with_deflate(io, role, config, buffered, None)
    }

    /// Like [`from_raw`](Self::from_raw), for a handshake that agreed on
    /// permessage-deflate (see [`tether_proto::deflate`]).
    pub fn from_raw_with_deflate(io: S, role: Role, config: &Config, buffered: &[u8], deflate: Option<PerMessageDeflate>) -> Self {
        let mut conn = Connection::with_deflate(role, config.proto(), deflate);
        if !buffered.is_empty() {
            conn.receive_data(buffered);
        }
        WebSocket {
            io,
            conn,
            high_water: config.write_buffer_high_water,
            timer: None,
            protocol: None,
            role,
            finished: false,
            shut_down: false,
            pending_error: None,
        }
    }

    pub(crate) fn set_protocol(&mut self, protocol: Option<String>) {
        self.protocol = protocol.map(String::into_boxed_str);
    }

    /// The subprotocol agreed in the handshake.
    pub fn protocol(&self) -> Option<&str> {
        self.protocol.as_deref()
    }

    /// Client or server.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The underlying stream.
    pub fn get_ref(&self) -> &S {
        &self.io
    }

    pub(crate) fn get_mut(&mut self) -> &mut S {
        &mut self.io
    }

    /// The protocol state (close state, codes, failure).
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// Whether both close frames were exchanged.
    pub fn was_clean(&self) -> bool {
        self.conn.was_clean()
    }

    /// The close code to report (§7.1.5): the peer's, 1005 if it sent none,
    /// 1006 if the connection ended without a close frame.
    pub fn close_code(&self) -> CloseCode {
        self.conn.close_code()
    }

    /// The next message; `None` once the connection is closed.
    ///
    /// A received [`Message::Close`] is returned once; the next call finishes
    /// the closing handshake and returns `None`.
    pub async fn recv(&mut self) -> Option<Result<Message>> {
        poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// Queue a message and flush it (and anything queued before it).
    pub async fn send(&mut self, msg: impl Into<Message>) -> Result<()> {
        self.feed(msg).await?;
        self.flush().await
    }

    /// Queue a message without flushing, waiting first if the queue is over
    /// the high-water mark. Queued bytes are written when the reader waits for
    /// input, at the high-water mark, or on [`flush`](Self::flush).
    pub async fn feed(&mut self, msg: impl Into<Message>) -> Result<()> {
        poll_fn(|cx| self.poll_ready_to_send(cx)).await?;
        self.conn.send(msg.into())?;
        Ok(())
    }

    /// Queue a message now, without waiting for the high-water mark (the
    /// caller applies backpressure, e.g. by not reading while
    /// [`pending_len`](Self::pending_len) is high).
    pub fn start_send(&mut self, msg: Message) -> Result<()> {
        self.conn.send(msg).map_err(Error::from)
    }

    /// Queue a frame encoded once for many sockets (broadcast), without
    /// waiting for the high-water mark. Server role only.
    pub fn start_send_encoded(&mut self, frame: tether_proto::EncodedFrame) -> Result<()> {
        self.conn.sender().send_encoded(frame).map_err(Error::from)
    }

    /// The write-buffer high-water mark from the [`Config`].
    pub fn high_water(&self) -> usize {
        self.high_water
    }

    /// Queue a text message.
    pub async fn send_text(&mut self, text: &str) -> Result<()> {
        poll_fn(|cx| self.poll_ready_to_send(cx)).await?;
        self.conn.send_text(text)?;
        self.flush().await
    }

    /// Write everything queued.
    pub async fn flush(&mut self) -> Result<()> {
        poll_fn(|cx| self.poll_write_pending(cx)).await.map_err(Error::from)
    }

    /// Bytes queued for sending.
    pub fn pending_len(&self) -> usize {
        self.conn.pending_len()
    }

    /// Start the closing handshake with `code` and `reason`, then wait (up to
    /// the close timeout) for the peer's close. Messages that arrive meanwhile
    /// are discarded. Returns `Ok` when the handshake completed cleanly.
    pub async fn close(&mut self, code: impl Into<CloseCode>, reason: &str) -> Result<()> {
        self.conn.close(Some(CloseFrame::new(code, reason)))?;
        loop {
            match self.recv().await {
                None => break,
                Some(Err(e)) => return Err(e),
                Some(Ok(_)) => {}
            }
        }
        if self.conn.was_clean() {
            Ok(())
        } else {
            Err(Error::AbnormalClosure)
        }
    }

    /// Whether more bytes can be queued (below the high-water mark); writes
    /// until they can.
    pub fn poll_ready_to_send(&mut self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        if self.conn.is_closing() && self.conn.pending_len() == 0 && self.finished {
            return Poll::Ready(Err(Error::Closed));
        }
        while self.conn.pending_len() >= self.high_water {
            ready!(self.poll_write_some(cx))?;
        }
        Poll::Ready(Ok(()))
    }

    /// Write until the queue is empty, then flush the stream.
    pub fn poll_write_pending(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        crate::io::poll_drain(&mut self.io, self.conn.sender(), cx)
    }

    fn poll_write_some(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        crate::io::poll_write_some(&mut self.io, self.conn.sender(), cx)
    }

    /// Poll for the next message (the body of [`recv`](Self::recv)).
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Message>>> {
        loop {
            if let Some(e) = self.pending_error.take() {
                return Poll::Ready(Some(Err(*e)));
            }
            if self.finished {
                return Poll::Ready(None);
            }
            if self.conn.pending_len() >= self.high_water {
                // The peer is not reading: decode nothing more (each ping
                // would queue a pong) until the write buffer drains below
                // its high-water mark. TCP backpressure reaches the peer.
                match ready!(self.poll_write_some(cx)) {
                    Ok(()) => continue,
                    Err(e) => {
                        self.finished = true;
                        return Poll::Ready(Some(Err(e.into())));
                    }
                }
            }
            match self.conn.next_event() {
                Ok(Some(Event::Message(msg))) => {
                    if self.conn.pending_len() > 0 {
                        // Pongs and close echoes go out promptly; a write
                        // error surfaces on the next call.
                        if let Poll::Ready(Err(e)) = self.poll_write_pending(cx) {
                            self.pending_error = Some(Box::new(e.into()));
                        }
                    }
                    return Poll::Ready(Some(Ok(msg)));
                }
                Ok(Some(Event::Fragment { .. })) => unreachable!("next_event assembles messages"),
                Ok(None) => {}
                Err(e) => {
                    // The close frame naming the failure is queued: write it,
                    // then report; the next call closes the transport.
                    let _ = self.poll_write_pending(cx);
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
            if self.conn.should_close_transport() {
                return self.poll_finish(cx);
            }
            if self.conn.pending_len() > 0 {
                if let Poll::Ready(Err(e)) = self.poll_write_pending(cx) {
                    self.finished = true;
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
            if self.poll_deadline(cx).is_ready() {
                // The connection ended itself (close timeout): finish above.
                continue;
            }
            match ready!(self.poll_read_into_conn(cx)) {
                Ok(0) => {
                    let premature = !self.conn.is_closing();
                    self.conn.receive_eof();
                    if premature {
                        // End of stream before any close frame: 1006.
                        self.finished = true;
                        return Poll::Ready(Some(Err(Error::AbnormalClosure)));
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    self.finished = true;
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
        }
    }

    /// Flush what is queued, close the transport and end the stream.
    fn poll_finish(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Message>>> {
        // Timed out: the peer is not taking our bytes either; don't wait for it.
        let flushed = if self.conn.timed_out() { Ok(()) } else { ready!(self.poll_write_pending(cx)) };
        if !self.shut_down {
            let _ = ready!(Pin::new(&mut self.io).poll_shutdown(cx));
            self.shut_down = true;
        }
        if flushed.is_ok() && self.conn.failure().is_some() {
            // Linger: closing a socket with unread data sends a reset, which
            // can destroy the close frame that says what was wrong (1009,
            // 1002...) before the peer reads it. Read and discard until the
            // peer closes, until the connection's deadline.
            if !self.conn.timed_out() && self.poll_deadline(cx).is_pending() {
                ready!(crate::io::poll_discard_until_eof(&mut self.io, cx));
            }
        }
        self.finished = true;
        self.timer = None;
        if self.conn.timed_out() && !self.conn.was_clean() && self.conn.failure().is_none() {
            return Poll::Ready(Some(Err(Error::Timeout("close handshake"))));
        }
        match flushed {
            Err(e) if !self.conn.was_clean() => Poll::Ready(Some(Err(e.into()))),
            _ => Poll::Ready(None),
        }
    }

    /// Sleep until the connection's deadline, if it has one; when it passes,
    /// tell the connection (which then ends itself). The protocol core never
    /// reads the clock: the time is passed in.
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.conn.state() == tether_proto::State::Open {
            // The hot path: no deadline while open, and no clock read.
            return Poll::Pending;
        }
        let now = tokio::time::Instant::now();
        let Some(deadline) = self.conn.poll_timeout(now.into_std()) else {
            self.timer = None;
            return Poll::Pending;
        };
        let deadline = tokio::time::Instant::from_std(deadline);
        let timer = self.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }
        if timer.as_mut().poll(cx).is_ready() {
            self.conn.handle_timeout(tokio::time::Instant::now().into_std());
            return Poll::Ready(());
        }
        Poll::Pending
    }

    fn poll_read_into_conn(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        crate::io::poll_read_into(&mut self.io, self.conn.receiver(), cx)
    }

    /// Take the stream and the protocol state apart, for a driver that runs
    /// connections itself after the handshake (an event loop owning many
    /// sockets). Meant for a socket fresh from an accept: bytes already
    /// queued or buffered stay in the returned [`Connection`].
    pub fn into_parts(self) -> (S, Connection) {
        (self.io, self.conn)
    }

    /// Split into a receiving and a sending half that can be used from two
    /// tasks. See [`crate::split`].
    pub fn split(self) -> (crate::split::WsReader<S>, crate::split::WsWriter<S>) {
        crate::split::split(self)
    }

    /// Queue a close frame without waiting for the peer's (the receiving
    /// side completes the handshake).
    pub(crate) fn start_close(&mut self, frame: Option<CloseFrame>) -> Result<()> {
        self.conn.close(frame).map_err(Error::from)
    }

    /// Whether our close frame was queued.
    pub(crate) fn close_sent(&mut self) -> bool {
        self.conn.sender().close_sent()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Stream for WebSocket<S> {
    type Item = Result<Message>;
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_recv(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Sink<Message> for WebSocket<S> {
    type Error = Error;
    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        self.get_mut().poll_ready_to_send(cx)
    }
    fn start_send(self: Pin<&mut Self>, item: Message) -> Result<()> {
        self.get_mut().conn.send(item).map_err(Error::from)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        self.get_mut().poll_write_pending(cx).map_err(Error::from)
    }
    /// Sends a normal close (1000) if none was sent, and flushes. The closing
    /// handshake completes on the receiving side (keep polling the stream).
    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        let this = self.get_mut();
        if !this.conn.is_closing() {
            this.conn.close(Some(CloseFrame::new(CloseCode::NORMAL, "")))?;
        }
        this.poll_write_pending(cx).map_err(Error::from)
    }
}

/// Helpers to build messages without importing tether-proto.
impl<S> WebSocket<S> {
    /// A text message.
    pub fn text(s: impl Into<String>) -> Message {
        Message::Text(s.into().into())
    }

    /// A binary message.
    pub fn binary(b: impl Into<Bytes>) -> Message {
        Message::Binary(b.into())
    }
}
