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
    accept_with_async(stream, config, |request| std::future::ready(callback(request))).await
}

/// [`accept_with`], with a decision that may take time (asking another
/// service whether to admit the client): `callback` reads the request and
/// returns a future (which may not borrow it) that decides. The caller
/// bounds its time; the handshake timeout covers reading the request only.
pub async fn accept_with_async<S, F, Fut>(mut stream: S, config: &Config, callback: F) -> Result<WebSocket<S>>
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
            stream.write_all(&negotiated.to_bytes()).await?;
            stream.flush().await?;
            let Negotiated { protocol, deflate, .. } = negotiated;
            let mut ws = WebSocket::from_raw_with_deflate(stream, Role::Server, config, &buffered, deflate);
            ws.set_protocol(protocol);
            Ok(ws)
        }
        Err(reject) => {
            let _ = stream.write_all(&Rejection::new(reject.status, reject.body).to_bytes()).await;
            let _ = stream.shutdown().await;
            Err(Error::Rejected { status: reject.status })
        }
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
