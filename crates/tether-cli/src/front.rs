//! The front door of `tether serve`: read the first request head of each
//! connection; a WebSocket upgrade takes the lean path (`tether::accept_with`
//! straight on the stream, no HTTP framework in between), anything else is
//! handed to hyper with the bytes already read put back in front.

use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// A stream with some bytes already read from it put back in front.
pub struct Prefixed<S> {
    prefix: Option<Box<[u8]>>,
    pos: usize,
    inner: S,
}

impl<S> Prefixed<S> {
    pub fn new(prefix: Vec<u8>, inner: S) -> Self {
        let prefix = if prefix.is_empty() { None } else { Some(prefix.into_boxed_slice()) };
        Prefixed { prefix, pos: 0, inner }
    }
}

impl<S> Prefixed<S> {
    /// The stream inside.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The bytes not read yet from the prefix, and the stream.
    pub fn into_parts(self) -> (Vec<u8>, S) {
        let rest = self.prefix.map(|p| p[self.pos..].to_vec()).unwrap_or_default();
        (rest, self.inner)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if let Some(prefix) = &this.prefix {
            let rest = &prefix[this.pos..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.pos += n;
            if this.pos == prefix.len() {
                this.prefix = None;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[std::io::IoSlice<'_>]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// What the first request on a connection is.
pub enum FirstRequest {
    /// A WebSocket upgrade (per its Upgrade header; validation comes later).
    Upgrade,
    /// Anything else, including malformed requests (hyper answers those).
    Http,
    /// The head passed the size limit before it was complete (answer 431).
    TooLarge,
}

/// Read until the first request head is complete (or malformed, or over
/// `max` bytes), returning what was read and its kind.
pub async fn read_first_request<S: AsyncRead + Unpin>(stream: &mut S, max: usize) -> std::io::Result<(Vec<u8>, FirstRequest)> {
    let mut buf = Vec::with_capacity(1024);
    loop {
        if buf.len() == buf.capacity() {
            buf.reserve(1024);
        }
        let n = stream.read_buf(&mut buf).await?;
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(_)) => {
                let upgrade = req
                    .headers
                    .iter()
                    .any(|h| h.name.eq_ignore_ascii_case("upgrade") && tether_proto::handshake::header_has_token(h.value, "websocket"));
                return Ok((buf, if upgrade { FirstRequest::Upgrade } else { FirstRequest::Http }));
            }
            Ok(httparse::Status::Partial) if n > 0 && buf.len() <= max => continue,
            Ok(httparse::Status::Partial) if n > 0 => return Ok((buf, FirstRequest::TooLarge)),
            // EOF, too large or malformed: let hyper (or the handshake) answer.
            _ => return Ok((buf, FirstRequest::Http)),
        }
    }
}
