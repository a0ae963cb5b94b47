//! Read and write halves of a [`WebSocket`](crate::WebSocket), usable from
//! two tasks at once.
//!
//! The reader owns the receiving state and never waits on the writer. The
//! sending state sits behind a mutex that is only held for the duration of a
//! non-blocking queue-and-write step (never across an `.await`); the reader
//! takes it only to queue the replies the protocol obliges (pong, close echo).

use crate::error::{Error, Result};
use crate::io::{poll_drain, poll_read_into, poll_write_some};
use std::future::{poll_fn, Future};
use std::pin::Pin;
use atomic_waker::AtomicWaker;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tether_proto::connection::Reply;
use tether_proto::{CloseCode, CloseFrame, Connection, Event, Message, Receiver, Role, Sender};
use tokio::io::{AsyncRead, AsyncWrite, ReadHalf, WriteHalf};

struct WriteState<S> {
    io: WriteHalf<S>,
    tx: Sender,
    shut_down: bool,
}

struct Shared<S> {
    write: Mutex<WriteState<S>>,
    /// Both halves write to the socket (the reader its pongs and close
    /// echoes), and a socket keeps one waker per direction: whichever half
    /// polled last would be the only one woken. So writes are polled with
    /// this waker, which wakes both halves' latest wakers.
    write_wakers: Arc<WriteWakers>,
    /// Set by the reader when the peer's close frame arrived.
    close_received: AtomicBool,
}

#[derive(Default)]
struct WriteWakers {
    reader: AtomicWaker,
    writer: AtomicWaker,
}

impl std::task::Wake for WriteWakers {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.reader.wake();
        self.writer.wake();
    }
}

#[derive(Clone, Copy)]
enum Half {
    Reader,
    Writer,
}

impl<S> Shared<S> {
    /// Run a write step on the socket for `half`: its waker is kept, and the
    /// socket is polled with the waker that wakes both halves.
    fn write_step<R>(&self, half: Half, cx: &mut Context<'_>, step: impl FnOnce(&mut WriteState<S>, &mut Context<'_>) -> R) -> R {
        match half {
            Half::Reader => self.write_wakers.reader.register(cx.waker()),
            Half::Writer => self.write_wakers.writer.register(cx.waker()),
        }
        let waker = std::task::Waker::from(self.write_wakers.clone());
        let mut both = Context::from_waker(&waker);
        step(&mut self.lock(), &mut both)
    }

    fn lock(&self) -> MutexGuard<'_, WriteState<S>> {
        self.write.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The receiving half. Answers pings and echoes closes through the shared writer.
pub struct WsReader<S> {
    io: ReadHalf<S>,
    rx: Receiver,
    shared: Arc<Shared<S>>,
    role: Role,
    auto_pong: bool,
    auto_close: bool,
    received_close: Option<Option<CloseFrame>>,
    close_timeout: Duration,
    close_deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    finished: bool,
    high_water: usize,
}

/// The sending half.
pub struct WsWriter<S> {
    shared: Arc<Shared<S>>,
    high_water: usize,
    protocol: Option<Box<str>>,
}

pub(crate) fn split<S: AsyncRead + AsyncWrite + Send + 'static>(
    io: S,
    conn: Connection,
    high_water: usize,
    close_timeout: Duration,
    protocol: Option<Box<str>>,
) -> (WsReader<S>, WsWriter<S>) {
    let auto = conn.auto_replies();
    let role = conn.role();
    let (rx, tx) = conn.into_parts();
    let (read, write) = tokio::io::split(io);
    let shared = Arc::new(Shared {
        write: Mutex::new(WriteState { io: write, tx, shut_down: false }),
        write_wakers: Arc::default(),
        close_received: AtomicBool::new(false),
    });
    (
        WsReader {
            io: read,
            rx,
            shared: shared.clone(),
            role,
            auto_pong: auto.0,
            auto_close: auto.1,
            received_close: None,
            close_timeout,
            close_deadline: None,
            finished: false,
            high_water,
        },
        WsWriter { shared, high_water, protocol },
    )
}

impl<S: AsyncRead + AsyncWrite> WsReader<S> {
    /// The next message; `None` once the connection is closed. Cancel-safe.
    pub async fn recv(&mut self) -> Option<Result<Message>> {
        poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// The close code to report: the peer's, 1005 without one, 1006 if none arrived.
    pub fn close_code(&self) -> CloseCode {
        match &self.received_close {
            Some(Some(f)) => f.code,
            Some(None) => CloseCode::NO_STATUS,
            None => CloseCode::ABNORMAL,
        }
    }

    fn reply(&mut self, reply: Reply, cx: &mut Context<'_>) {
        self.shared.write_step(Half::Reader, cx, |w, cx| {
            let _ = w.tx.send_reply(reply);
            let WriteState { io, tx, .. } = w;
            let _ = poll_drain(io, tx, cx);
        });
    }

    /// Whether the shared write buffer is at its high-water mark: then the
    /// reader decodes nothing more (each ping would queue a pong) until it
    /// drains; TCP backpressure reaches the peer.
    fn poll_below_high_water(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let high_water = self.high_water;
        self.shared.write_step(Half::Reader, cx, |w, cx| {
            while w.tx.pending_len() >= high_water {
                let WriteState { io, tx, .. } = &mut *w;
                ready!(poll_write_some(io, tx, cx))?;
            }
            Poll::Ready(Ok(()))
        })
    }

    /// Poll for the next message.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Message>>> {
        loop {
            if self.finished {
                return Poll::Ready(None);
            }
            if let Err(e) = ready!(self.poll_below_high_water(cx)) {
                self.finished = true;
                return Poll::Ready(Some(Err(e.into())));
            }
            match self.rx.next_event() {
                Ok(Some((Event::Message(msg), reply))) => {
                    match reply {
                        Some(Reply::Pong(p)) if self.auto_pong => self.reply(Reply::Pong(p), cx),
                        Some(Reply::Close(echo)) => {
                            if let Message::Close(frame) = &msg {
                                self.received_close = Some(frame.clone());
                            }
                            self.shared.close_received.store(true, Ordering::Release);
                            if self.auto_close {
                                self.reply(Reply::Close(echo), cx);
                            }
                        }
                        _ => {}
                    }
                    return Poll::Ready(Some(Ok(msg)));
                }
                Ok(Some((Event::Fragment { .. }, _))) => unreachable!("next_event assembles messages"),
                Ok(None) => {}
                Err(e) => {
                    self.reply(Reply::Close(Some(CloseFrame::new(e.close_code(), ""))), cx);
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
            let close_sent = self.shared.lock().tx.close_sent();
            let failed = self.rx.failure().is_some();
            let handshake_done = close_sent && self.rx.close_received();
            if failed || self.rx.eof_received() || (handshake_done && self.role == Role::Server) {
                // Flush and close the transport (§7.1.1: the server closes first).
                ready!(self.shared.write_step(Half::Reader, cx, |w, cx| {
                    let WriteState { io, tx, shut_down } = w;
                    let _ = ready!(poll_drain(io, tx, cx));
                    if !*shut_down {
                        let _ = ready!(Pin::new(io).poll_shutdown(cx));
                        *shut_down = true;
                    }
                    Poll::Ready(())
                }));
                self.finished = true;
                return Poll::Ready(None);
            }
            if close_sent || self.rx.close_received() {
                let timeout = self.close_timeout;
                let deadline = self.close_deadline.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                if deadline.as_mut().poll(cx).is_ready() {
                    self.finished = true;
                    return if handshake_done { Poll::Ready(None) } else { Poll::Ready(Some(Err(Error::Timeout("close handshake")))) };
                }
            }
            match ready!(poll_read_into(&mut self.io, &mut self.rx, cx)) {
                Ok(0) => {
                    self.rx.receive_eof();
                    if !close_sent && !self.rx.close_received() {
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
}

impl<S: AsyncRead + AsyncWrite> futures_core::Stream for WsReader<S> {
    type Item = Result<Message>;
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_recv(cx)
    }
}

impl<S: AsyncRead + AsyncWrite> WsWriter<S> {
    /// The subprotocol agreed in the handshake.
    pub fn protocol(&self) -> Option<&str> {
        self.protocol.as_deref()
    }

    /// Queue a message and flush.
    pub async fn send(&mut self, msg: impl Into<Message>) -> Result<()> {
        self.feed(msg).await?;
        self.flush().await
    }

    /// Queue a message, waiting first while the queue is over the high-water mark.
    pub async fn feed(&mut self, msg: impl Into<Message>) -> Result<()> {
        poll_fn(|cx| self.poll_ready_to_send(cx)).await?;
        self.shared.lock().tx.send(msg.into())?;
        Ok(())
    }

    /// Write everything queued.
    pub async fn flush(&mut self) -> Result<()> {
        poll_fn(|cx| self.poll_flush_all(cx)).await
    }

    /// Send a close frame and flush. The reader half completes the handshake.
    pub async fn close(&mut self, code: impl Into<CloseCode>, reason: &str) -> Result<()> {
        self.shared.lock().tx.send_close(Some(CloseFrame::new(code, reason)))?;
        self.flush().await
    }

    fn poll_ready_to_send(&mut self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        let high_water = self.high_water;
        self.shared.write_step(Half::Writer, cx, |w, cx| {
            if w.tx.close_sent() {
                return Poll::Ready(Err(Error::Closed));
            }
            while w.tx.pending_len() >= high_water {
                let WriteState { io, tx, .. } = &mut *w;
                ready!(poll_write_some(io, tx, cx))?;
            }
            Poll::Ready(Ok(()))
        })
    }

    fn poll_flush_all(&mut self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        self.shared.write_step(Half::Writer, cx, |w, cx| {
            let WriteState { io, tx, .. } = w;
            poll_drain(io, tx, cx).map_err(Error::from)
        })
    }
}

impl<S: AsyncRead + AsyncWrite> futures_sink::Sink<Message> for WsWriter<S> {
    type Error = Error;
    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        self.get_mut().poll_ready_to_send(cx)
    }
    fn start_send(self: Pin<&mut Self>, item: Message) -> Result<()> {
        self.get_mut().shared.lock().tx.send(item).map_err(Error::from)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        self.get_mut().poll_flush_all(cx)
    }
    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        let this = self.get_mut();
        {
            let mut w = this.shared.lock();
            if !w.tx.close_sent() && !this.shared.close_received.load(Ordering::Acquire) {
                w.tx.send_close(Some(CloseFrame::new(CloseCode::NORMAL, "")))?;
            }
        }
        this.poll_flush_all(cx)
    }
}
