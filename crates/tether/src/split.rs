//! Read and write halves of a [`WebSocket`], usable from
//! two tasks at once.
//!
//! Both halves drive the same [`WebSocket`] (one protocol state, one close
//! handshake, one set of deadlines: there is no second copy of the closing
//! logic here). It sits behind a mutex that is held only for one
//! non-blocking poll, never across an `.await`, so the reader never waits
//! on the writer. The replies the protocol obliges (pong, close echo) go out
//! through the same write path as the writer's messages.
//!
//! A socket keeps one waker per direction, and both halves may write (the
//! reader its pongs), so every poll runs with a waker that wakes both
//! halves' latest wakers: whichever half polled last, neither misses the
//! socket becoming writable.

use crate::error::{Error, Result};
use crate::socket::WebSocket;
use atomic_waker::AtomicWaker;
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use tether_proto::{CloseCode, CloseFrame, Message};
use tokio::io::{AsyncRead, AsyncWrite};

struct Shared<S> {
    ws: Mutex<WebSocket<S>>,
    wakers: Arc<Wakers>,
}

#[derive(Default)]
struct Wakers {
    reader: AtomicWaker,
    writer: AtomicWaker,
}

impl std::task::Wake for Wakers {
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
    fn lock(&self) -> MutexGuard<'_, WebSocket<S>> {
        self.ws.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// One poll of the WebSocket for `half`: its waker is kept, and the
    /// socket sees the waker that wakes both halves.
    fn poll<R>(&self, half: Half, cx: &mut Context<'_>, step: impl FnOnce(&mut WebSocket<S>, &mut Context<'_>) -> R) -> R {
        match half {
            Half::Reader => self.wakers.reader.register(cx.waker()),
            Half::Writer => self.wakers.writer.register(cx.waker()),
        }
        let waker = Waker::from(self.wakers.clone());
        let mut both = Context::from_waker(&waker);
        step(&mut self.lock(), &mut both)
    }
}

/// The receiving half. Answers pings and echoes closes automatically.
pub struct WsReader<S> {
    shared: Arc<Shared<S>>,
}

/// The sending half.
pub struct WsWriter<S> {
    shared: Arc<Shared<S>>,
    protocol: Option<Box<str>>,
}

pub(crate) fn split<S: AsyncRead + AsyncWrite + Unpin>(ws: WebSocket<S>) -> (WsReader<S>, WsWriter<S>) {
    let protocol = ws.protocol().map(Into::into);
    let shared = Arc::new(Shared { ws: Mutex::new(ws), wakers: Arc::default() });
    (WsReader { shared: shared.clone() }, WsWriter { shared, protocol })
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsReader<S> {
    /// The next message; `None` once the connection is closed. Cancel-safe.
    pub async fn recv(&mut self) -> Option<Result<Message>> {
        poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// The close code to report: the peer's, 1005 without one, 1006 if none arrived.
    pub fn close_code(&self) -> CloseCode {
        self.shared.lock().close_code()
    }

    /// Whether both close frames were exchanged.
    pub fn was_clean(&self) -> bool {
        self.shared.lock().was_clean()
    }

    /// Poll for the next message.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Message>>> {
        self.shared.poll(Half::Reader, cx, |ws, cx| ws.poll_recv(cx))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> futures_core::Stream for WsReader<S> {
    type Item = Result<Message>;
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_recv(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsWriter<S> {
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
        self.shared.lock().start_send(msg.into())
    }

    /// Write everything queued.
    pub async fn flush(&mut self) -> Result<()> {
        poll_fn(|cx| self.poll_flush_all(cx)).await
    }

    /// Send a close frame and flush. The reader half completes the handshake.
    pub async fn close(&mut self, code: impl Into<CloseCode>, reason: &str) -> Result<()> {
        self.shared.lock().start_close(Some(CloseFrame::new(code, reason)))?;
        self.flush().await
    }

    fn poll_ready_to_send(&mut self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        self.shared.poll(Half::Writer, cx, |ws, cx| {
            if ws.close_sent() {
                return Poll::Ready(Err(Error::Closed));
            }
            ws.poll_ready_to_send(cx)
        })
    }

    fn poll_flush_all(&mut self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        self.shared.poll(Half::Writer, cx, |ws, cx| ws.poll_write_pending(cx).map_err(Error::from))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> futures_sink::Sink<Message> for WsWriter<S> {
    type Error = Error;
    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        self.get_mut().poll_ready_to_send(cx)
    }
    fn start_send(self: Pin<&mut Self>, item: Message) -> Result<()> {
        self.get_mut().shared.lock().start_send(item)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        self.get_mut().poll_flush_all(cx)
    }
    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        let this = self.get_mut();
        {
            let mut ws = this.shared.lock();
            if !ws.connection().is_closing() {
                ws.start_close(Some(CloseFrame::new(CloseCode::NORMAL, "")))?;
            }
        }
        this.poll_flush_all(cx)
    }
}
