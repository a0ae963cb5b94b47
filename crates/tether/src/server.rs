//! Server side of the opening handshake over a raw stream (the lean path).

use crate::config::Config;
use crate::error::{Error, Result};
use crate::socket::WebSocket;
use tether_proto::handshake::{parse_request, Request};
use tether_proto::negotiate::{negotiate, Negotiated, Rejection, UpgradeOffer};
use tether_proto::Role;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// How a server answers an upgrade request (see [`accept_with`]).
#[derive(Clone, Debug, Default)]
pub struct Accept {
    /// The subprotocol to select; must be one the client offered.
    pub protocol: Option<String>,
    /// Extra response headers.
    pub headers: Vec<(String, String)>,
}

/// A refusal: the HTTP status and body sent instead of 101.
#[derive(Clone, Debug)]
pub struct Reject {
    /// HTTP status, e.g. 401, 403 or 503.
    pub status: u16,
    /// Plain-text body.
    pub body: String,
}

impl Reject {
    /// A refusal with `status` and `body`.
    pub fn new(status: u16, body: impl Into<String>) -> Self {
        Reject { status, body: body.into() }
    }
}

/// Accept a WebSocket on a stream whose first bytes are the client's upgrade
/// request, with default settings and no subprotocol.
pub async fn accept<S: AsyncRead + AsyncWrite + Unpin>(stream: S) -> Result<WebSocket<S>> {
    accept_with(stream, &Config::default(), |_| Ok(Accept::default())).await
}

/// Accept with `config`, letting `callback` inspect the request (path, query,
/// headers, Origin, offered subprotocols) and accept (choosing a subprotocol)
/// or reject it with a status.
///
/// With `config.deflate` set, a permessage-deflate offer is answered
/// (RFC 7692: the first acceptable offer; malformed ones are declined and
/// the connection goes on uncompressed).
///
/// Invalid requests are answered with the status the RFC asks for (400, 405,
/// 426 with `Sec-WebSocket-Version: 13`, 431) and an error is returned. The
/// whole handshake is bounded by `config.handshake_timeout`.
pub async fn accept_with<S, F>(stream: S, config: &Config, callback: F) -> Result<WebSocket<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: FnOnce(&Request) -> std::result::Result<Accept, Reject>,
{
    accept_deferred(stream, config, callback).await?.finish().await
}

/// Like [`accept_with`], but stop before the `101 Switching Protocols`
/// response is written: the returned [`Accepted`] holds the stream, the
/// response bytes and the protocol state. For a server that must do
/// something before the client learns that it is connected (join the
/// client to a room, so a message sent to the room right after the client
/// saw its 101 reaches it), or whose own I/O layer writes the response
/// together with the first frames ([`Accepted::into_parts`]).
///
/// Refusals (by the callback, or of an invalid request) are answered here,
/// as [`accept_with`] does.
pub async fn accept_deferred<S, F>(stream: S, config: &Config, callback: F) -> Result<Accepted<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: FnOnce(&Request) -> std::result::Result<Accept, Reject>,
{
    accept_deferred_async(stream, config, |request| std::future::ready(callback(request))).await
}

/// [`accept_with`], with a decision that may take time (asking another
/// service whether to admit the client): `callback` reads the request and
/// returns a future (which may not borrow it) that decides. The caller
/// bounds its time; the handshake timeout covers reading the request only.
pub async fn accept_with_async<S, F, Fut>(stream: S, config: &Config, callback: F) -> Result<WebSocket<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: FnOnce(&Request) -> Fut,
    Fut: std::future::Future<Output = std::result::Result<Accept, Reject>>,
{
    accept_deferred_async(stream, config, callback).await?.finish().await
}

/// [`accept_deferred`] with a decision that may take time (as
/// [`accept_with_async`]).
pub async fn accept_deferred_async<S, F, Fut>(mut stream: S, config: &Config, callback: F) -> Result<Accepted<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: FnOnce(&Request) -> Fut,
    Fut: std::future::Future<Output = std::result::Result<Accept, Reject>>,
{
    let read = tokio::time::timeout(config.handshake_timeout, read_request(&mut stream, config.max_handshake_size)).await;
    let (request, buffered) = match read {
        Err(_) => return Err(Error::Timeout("handshake")),
        Ok(Err(Error::Handshake(e))) => {
            let _ = stream.write_all(&Rejection::from_error(&e).to_bytes()).await;
            let _ = stream.shutdown().await;
            return Err(Error::Handshake(e));
        }
        Ok(Err(e)) => return Err(e),
        Ok(Ok(r)) => r,
    };
    match callback(&request).await {
        Ok(accept) => {
            let headers: Vec<(&str, &str)> = accept.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let negotiated = negotiate(&UpgradeOffer::from_request(&request), accept.protocol.as_deref(), config.deflate.as_ref(), &headers);
            let response = negotiated.to_bytes();
            let Negotiated { protocol, deflate, .. } = negotiated;
            let mut ws = WebSocket::from_raw_with_deflate(stream, Role::Server, config, &buffered, deflate);
            ws.set_protocol(protocol);
            Ok(Accepted { ws, response })
        }
        Err(reject) => {
            let _ = stream.write_all(&Rejection::new(reject.status, reject.body).to_bytes()).await;
            let _ = stream.shutdown().await;
            Err(Error::Rejected { status: reject.status })
        }
    }
}

/// An upgrade that was accepted, with its `101 Switching Protocols`
/// response not written yet (see [`accept_deferred`]).
#[derive(Debug)]
pub struct Accepted<S> {
    ws: WebSocket<S>,
    response: Vec<u8>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Accepted<S> {
    /// The subprotocol agreed.
    pub fn protocol(&self) -> Option<&str> {
        self.ws.protocol()
    }

    /// The stream (for instance to ask whether it is plain TCP).
    pub fn get_ref(&self) -> &S {
        self.ws.get_ref()
    }

    /// The response that completes the handshake, as bytes.
    pub fn response(&self) -> &[u8] {
        &self.response
    }

    /// Write the response: the WebSocket is open.
    pub async fn finish(mut self) -> Result<WebSocket<S>> {
        let io = self.ws.get_mut();
        io.write_all(&self.response).await?;
        io.flush().await?;
        Ok(self.ws)
    }

    /// Take the stream, the response and the protocol state apart (as
    /// [`WebSocket::into_parts`] does), for a driver that writes the
    /// response itself ahead of the first frames (see
    /// [`Sender::send_raw`](tether_proto::Sender::send_raw)). Bytes the
    /// client sent after its request are in the connection.
    pub fn into_parts(self) -> (S, Vec<u8>, tether_proto::Connection) {
        let (io, conn) = self.ws.into_parts();
        (io, self.response, conn)
    }
}

/// Read until a full request head has arrived. Returns it and any bytes after it.
async fn read_request<S: AsyncRead + Unpin>(stream: &mut S, max_size: usize) -> Result<(Request, Vec<u8>)> {
    let mut buf = Vec::new();
    loop {
        // Read into the heap buffer, not a stack array: an array held across
        // `.await` would live in the connection's future for its whole life.
        buf.reserve(1024);
        let n = stream.read_buf(&mut buf).await?;
        if n == 0 {
            return Err(Error::Io(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "connection closed during the handshake")));
        }
        if let Some((request, len)) = parse_request(&buf, max_size)? {
            return Ok((request, buf.split_off(len)));
        }
    }
}
