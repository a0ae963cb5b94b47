//! A client stream that is plain TCP, TLS, or an HTTP/2 stream (RFC 8441).

use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// What [`connect`](crate::connect) returns: `ws://` gives `Plain`, `wss://` gives `Tls`.
#[derive(Debug)]
#[non_exhaustive]
pub enum MaybeTlsStream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP (rustls).
    #[cfg(feature = "tls")]
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    /// One stream of an HTTP/2 connection (RFC 8441, asked for with
    /// [`ClientBuilder::http2`](crate::ClientBuilder::http2)).
    #[cfg(feature = "http2")]
    H2(Box<hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>>),
}

impl MaybeTlsStream {
    /// The TCP stream underneath (`None` for an HTTP/2 stream: the
    /// connection belongs to the HTTP/2 client, shared by its streams).
    pub fn tcp(&self) -> Option<&TcpStream> {
        match self {
            MaybeTlsStream::Plain(s) => Some(s),
            #[cfg(feature = "tls")]
            MaybeTlsStream::Tls(s) => Some(s.get_ref().0),
            #[cfg(feature = "http2")]
            MaybeTlsStream::H2(_) => None,
        }
    }

    /// Whether this is an HTTP/2 stream (RFC 8441) rather than a connection of its own.
    pub fn is_http2(&self) -> bool {
        #[cfg(feature = "http2")]
        if let MaybeTlsStream::H2(_) = self {
            return true;
        }
        false
    }
}

macro_rules! delegate {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            MaybeTlsStream::Plain($s) => {
                let $s = Pin::new($s);
                $e
            }
            #[cfg(feature = "tls")]
            MaybeTlsStream::Tls($s) => {
                let $s = Pin::new(&mut **$s);
                $e
            }
            #[cfg(feature = "http2")]
            MaybeTlsStream::H2($s) => {
                let $s = Pin::new(&mut **$s);
                $e
            }
        }
    };
}

impl AsyncRead for MaybeTlsStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        delegate!(self, s => s.poll_read(cx, buf))
    }
}

impl AsyncWrite for MaybeTlsStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        delegate!(self, s => s.poll_write(cx, buf))
    }
    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[std::io::IoSlice<'_>]) -> Poll<std::io::Result<usize>> {
        delegate!(self, s => s.poll_write_vectored(cx, bufs))
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            MaybeTlsStream::Plain(s) => s.is_write_vectored(),
            #[cfg(feature = "tls")]
            MaybeTlsStream::Tls(s) => s.is_write_vectored(),
            #[cfg(feature = "http2")]
            MaybeTlsStream::H2(s) => s.is_write_vectored(),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        delegate!(self, s => s.poll_flush(cx))
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        delegate!(self, s => s.poll_shutdown(cx))
    }
}
