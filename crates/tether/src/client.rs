//! Client side: `connect("ws://...")` / `connect("wss://...")`, or a
//! [`ClientBuilder`] for headers, subprotocols, TLS and timeouts.

use crate::config::Config;
use crate::error::{Error, Result};
use crate::socket::WebSocket;
use crate::stream::MaybeTlsStream;
use std::time::Duration;
use tether_proto::handshake::{ClientHandshake, ClientRequest, Response};
use tether_proto::Role;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Connect to a `ws://` or `wss://` URL with default settings.
///
/// ```no_run
/// # async fn demo() -> Result<(), tether::Error> {
/// let mut ws = tether::connect("ws://127.0.0.1:8080/chat").await?;
/// ws.send("hello").await?;
/// if let Some(Ok(reply)) = ws.recv().await {
///     println!("{reply:?}");
/// }
/// # Ok(()) }
/// ```
pub async fn connect(url: &str) -> Result<WebSocket<MaybeTlsStream>> {
    ClientBuilder::new(url).connect().await.map(|(ws, _)| ws)
}

/// A configurable client connection.
#[derive(Clone, Debug)]
pub struct ClientBuilder {
    url: String,
    headers: Vec<(String, String)>,
    protocols: Vec<String>,
    config: Config,
    connect_timeout: Duration,
    #[cfg(feature = "tls")]
    tls: crate::tls::TlsOptions,
    #[cfg(feature = "http2")]
    http2: bool,
}

impl ClientBuilder {
    /// A client for `url` (`ws://` or `wss://`).
    pub fn new(url: impl Into<String>) -> Self {
        ClientBuilder {
            url: url.into(),
            headers: Vec::new(),
            protocols: Vec::new(),
            config: Config::default(),
            connect_timeout: Duration::from_secs(10),
            #[cfg(feature = "tls")]
            tls: Default::default(),
            #[cfg(feature = "http2")]
            http2: false,
        }
    }

    /// Add a request header (Origin, Authorization, Cookie...).
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Offer a subprotocol (call several times to offer several, in order of preference).
    pub fn protocol(mut self, protocol: impl Into<String>) -> Self {
        self.protocols.push(protocol.into());
        self
    }

    /// The subprotocols offered so far, in order of preference.
    pub fn protocols(&self) -> &[String] {
        &self.protocols
    }

    /// Use these WebSocket settings (with `config.deflate` set,
    /// permessage-deflate is offered).
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// Bound the TCP (and TLS) connect. Default 10 s. The handshake itself is
    /// bounded by `Config::handshake_timeout`.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// TLS settings for `wss://`.
    #[cfg(feature = "tls")]
    pub fn tls(mut self, tls: crate::tls::TlsOptions) -> Self {
        self.tls = tls;
        self
    }

    /// Open the WebSocket as a stream of an HTTP/2 connection (RFC 8441):
    /// for `wss://`, TLS with ALPN `h2` only (a server that does not agree
    /// fails the connect); for `ws://`, HTTP/2 with prior knowledge (h2c).
    /// The server must advertise `SETTINGS_ENABLE_CONNECT_PROTOCOL`.
    /// Default off (HTTP/1.1 upgrade).
    #[cfg(feature = "http2")]
    pub fn http2(mut self, enabled: bool) -> Self {
        self.http2 = enabled;
        self
    }

    /// Open the connection and perform the handshake. Returns the socket and
    /// the server's response (selected subprotocol, headers).
    pub async fn connect(&self) -> Result<(WebSocket<MaybeTlsStream>, Response)> {
        let target = Target::parse(&self.url)?;
        let addr = format!("{}:{}", target.host, target.port);
        let tcp = match tokio::time::timeout(self.connect_timeout, TcpStream::connect(&addr)).await {
            Err(_) => return Err(Error::Timeout("connect")),
            Ok(Err(e)) => return Err(Error::Io(std::io::Error::new(e.kind(), format!("cannot connect to {addr}: {e}")))),
            Ok(Ok(s)) => s,
        };
        let _ = tcp.set_nodelay(true);
        let stream = if target.tls {
            #[cfg(feature = "tls")]
            {
                #[allow(unused_mut)]
                let mut config = crate::tls::client_config(&self.tls)?;
                #[cfg(feature = "http2")]
                if self.http2 {
                    // RFC 9113 §3.2: HTTP/2 over TLS is agreed by ALPN "h2".
                    let mut h2 = (*config).clone();
                    h2.alpn_protocols = vec![b"h2".to_vec()];
                    config = std::sync::Arc::new(h2);
                }
                let host = target.host.trim_start_matches('[').trim_end_matches(']').to_string();
                let name = rustls::pki_types::ServerName::try_from(host).map_err(|e| Error::InvalidUrl(format!("bad host name for TLS: {e}")))?;
                let connector = tokio_rustls::TlsConnector::from(config);
                let tls = match tokio::time::timeout(self.connect_timeout, connector.connect(name, tcp)).await {
                    Err(_) => return Err(Error::Timeout("TLS handshake")),
                    Ok(Err(e)) => return Err(Error::Tls(e.to_string())),
                    Ok(Ok(s)) => s,
                };
                #[cfg(feature = "http2")]
                if self.http2 {
                    if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
                        return Err(Error::Http2(format!("{addr} did not agree to HTTP/2 (ALPN h2)")));
                    }
                    return crate::http2::handshake_h2(tls, "https", &self.request(&target), &self.config).await;
                }
                MaybeTlsStream::Tls(Box::new(tls))
            }
            #[cfg(not(feature = "tls"))]
            return Err(Error::InvalidUrl("wss:// needs the `tls` feature".into()));
        } else {
            #[cfg(feature = "http2")]
            if self.http2 {
                return crate::http2::handshake_h2(tcp, "http", &self.request(&target), &self.config).await;
            }
            MaybeTlsStream::Plain(tcp)
        };
        client_handshake(stream, &self.request(&target), &self.config).await
    }

    fn request(&self, target: &Target) -> ClientRequest {
        ClientRequest {
            host: target.host_header(),
            target: target.resource.clone(),
            protocols: self.protocols.clone(),
            extensions: None,
            headers: self.headers.clone(),
        }
    }
}

/// Perform the client handshake over an already connected stream.
///
/// With `config.deflate` set, permessage-deflate is offered (after any
/// extensions in `request`) and the server's answer checked (RFC 7692 §7.1:
/// parameters that were not offered or are invalid fail the handshake with
/// [`HandshakeError::InvalidExtensionResponse`](tether_proto::HandshakeError::InvalidExtensionResponse)).
pub async fn client_handshake<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, request: &ClientRequest, config: &Config) -> Result<(WebSocket<S>, Response)> {
    let offered;
    let request = match &config.deflate {
        None => request,
        Some(deflate) => {
            let offer = deflate.offer();
            let extensions = match &request.extensions {
                Some(other) if !other.trim().is_empty() => format!("{other}, {offer}"),
                _ => offer,
            };
            offered = ClientRequest { extensions: Some(extensions), ..request.clone() };
            &offered
        }
    };
    let (handshake, bytes) = ClientHandshake::new(request);
    let exchange = async {
        stream.write_all(&bytes).await?;
        stream.flush().await?;
        let mut buf = Vec::new();
        loop {
            buf.reserve(1024);
            let n = stream.read_buf(&mut buf).await?;
            if n == 0 {
                return Err(Error::Io(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "server closed the connection during the handshake")));
            }
            if let Some((response, len)) = handshake.parse_response(&buf)? {
                return Ok((response, buf.split_off(len)));
            }
        }
    };
    let (response, rest) = match tokio::time::timeout(config.handshake_timeout, exchange).await {
        Err(_) => return Err(Error::Timeout("handshake")),
        Ok(r) => r?,
    };
    let deflate = match &config.deflate {
        Some(deflate) => deflate.accept_response(&response.extensions)?,
        None if response.extensions.iter().any(|e| e.name == tether_proto::deflate::EXTENSION_NAME) => {
            // Offered in `request` by hand, but compression is off in the config.
            return Err(tether_proto::HandshakeError::UnexpectedExtension(tether_proto::deflate::EXTENSION_NAME.into()).into());
        }
        None => None,
    };
    let mut ws = WebSocket::from_raw_with_deflate(stream, Role::Client, config, &rest, deflate);
    ws.set_protocol(response.protocol.clone());
    Ok((ws, response))
}

/// A parsed `ws://` / `wss://` URL.
#[derive(Debug, Clone)]
struct Target {
    tls: bool,
    host: String,
    port: u16,
    resource: String,
}

impl Target {
    fn parse(raw: &str) -> Result<Target> {
        let url = url::Url::parse(raw).map_err(|e| Error::InvalidUrl(format!("{raw}: {e}")))?;
        let tls = match url.scheme() {
            "ws" | "http" => false,
            "wss" | "https" => true,
            other => return Err(Error::InvalidUrl(format!("{raw}: scheme {other:?} is not ws:// or wss://"))),
        };
        let host = url.host_str().ok_or_else(|| Error::InvalidUrl(format!("{raw}: no host")))?.to_string();
        if url.fragment().is_some() {
            // RFC 6455 §3: fragment identifiers are meaningless in WebSocket URIs.
            return Err(Error::InvalidUrl(format!("{raw}: a WebSocket URL has no #fragment")));
        }
        let port = url.port_or_known_default().unwrap_or(if tls { 443 } else { 80 });
        let mut resource = url.path().to_string();
        if let Some(q) = url.query() {
            resource.push('?');
            resource.push_str(q);
        }
        Ok(Target { tls, host, port, resource })
    }

    fn host_header(&self) -> String {
        let default = if self.tls { 443 } else { 80 };
        if self.port == default {
            self.host.clone()
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let t = Target::parse("ws://example.com/chat?x=1").unwrap();
        assert_eq!((t.tls, t.host.as_str(), t.port, t.resource.as_str()), (false, "example.com", 80, "/chat?x=1"));
        assert_eq!(t.host_header(), "example.com");
        let t = Target::parse("wss://example.com:8443").unwrap();
        assert_eq!((t.tls, t.port, t.resource.as_str(), t.host_header().as_str()), (true, 8443, "/", "example.com:8443"));
        let t = Target::parse("ws://[::1]:9000/").unwrap();
        assert_eq!(t.host_header(), "[::1]:9000");
        assert!(matches!(Target::parse("ftp://x"), Err(Error::InvalidUrl(_))));
        assert!(matches!(Target::parse("not a url"), Err(Error::InvalidUrl(_))));
        assert!(matches!(Target::parse("ws://x/#frag"), Err(Error::InvalidUrl(_))));
    }
}
