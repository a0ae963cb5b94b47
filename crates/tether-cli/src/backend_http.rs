//! POST JSON to the application's backend (lifecycle webhooks, hooks):
//! http:// or https:// (rustls, the bundled webpki roots plus the
//! system's), signed with HMAC-SHA256 when a secret is set, with the
//! answer read up to a bound. One connection per request: the backend is
//! local or behind a keep-alive proxy, and a request never waits for
//! another's connection.

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use std::time::{SystemTime, UNIX_EPOCH};

/// A backend URL, checked and ready to connect to.
#[derive(Clone)]
pub struct BackendUrl {
    pub uri: http::Uri,
    /// For https://.
    tls: Option<(tokio_rustls::TlsConnector, tokio_rustls::rustls::pki_types::ServerName<'static>)>,
}

impl std::fmt::Debug for BackendUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.uri)
    }
}

impl BackendUrl {
    /// `http://HOST[:PORT]/PATH` or `https://...`; `what` names the flag in
    /// errors; `ca` (PEM) is trusted too for https:// (`--backend-ca`).
    pub fn parse(url: &str, what: &str, ca: Option<&[u8]>) -> anyhow::Result<BackendUrl> {
        let uri: http::Uri = url.parse().with_context(|| format!("{what} {url:?} is not a URL"))?;
        let Some(host) = uri.host().filter(|h| !h.is_empty()) else {
            anyhow::bail!("{what} {url:?} has no host (http://HOST[:PORT]/PATH or https://...)")
        };
        let tls = match uri.scheme_str() {
            Some("http") => None,
            Some("https") => {
                let opts = tether::tls::TlsOptions { native_roots: true, ca_pem: ca.map(<[u8]>::to_vec), ..Default::default() };
                let config = tether::tls::client_config(&opts).map_err(|e| anyhow::anyhow!("{what}: TLS: {e}"))?;
                let name = tokio_rustls::rustls::pki_types::ServerName::try_from(host.trim_start_matches('[').trim_end_matches(']').to_string())
                    .with_context(|| format!("{what}: {host:?} is not a TLS server name"))?;
                Some((tokio_rustls::TlsConnector::from(config), name))
            }
            _ => anyhow::bail!("{what} {url:?} must start with http:// or https://"),
        };
        Ok(BackendUrl { uri, tls })
    }

    /// The same backend with `suffix` added to the path (`/hooks` + `/connect`).
    pub fn join(&self, suffix: &str) -> BackendUrl {
        let path = self.uri.path().trim_end_matches('/');
        let mut parts = self.uri.clone().into_parts();
        parts.path_and_query = format!("{path}{suffix}").parse().ok();
        BackendUrl { uri: http::Uri::from_parts(parts).unwrap_or_else(|_| self.uri.clone()), tls: self.tls.clone() }
    }
}

/// The extra CA of `--backend-ca`, read.
pub fn read_ca(path: Option<&std::path::Path>) -> anyhow::Result<Option<Vec<u8>>> {
    path.map(|p| std::fs::read(p).with_context(|| format!("cannot read --backend-ca {}", p.display()))).transpose()
}

/// `sha256=<hex>` of HMAC-SHA256(secret, "<timestamp>.<body>").
pub fn signature(secret: &str, timestamp: u64, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let mut ctx = ring::hmac::Context::with_key(&key);
    ctx.update(timestamp.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    let tag = ctx.sign();
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

/// POST `body` (JSON) to `url`, signed with `secret` if given; the status
/// and at most `max_answer` bytes of the answer (more is an error). The
/// caller bounds the time.
pub async fn post(url: &BackendUrl, secret: Option<&str>, body: Bytes, max_answer: usize) -> anyhow::Result<(http::StatusCode, Bytes)> {
    let authority = url.uri.authority().ok_or_else(|| anyhow::anyhow!("the backend URL has no host"))?;
    let port = authority.port_u16().unwrap_or(if url.tls.is_some() { 443 } else { 80 });
    let host = authority.host().trim_start_matches('[').trim_end_matches(']');
    let tcp = tokio::net::TcpStream::connect((host, port)).await?;
    let _ = tcp.set_nodelay(true);
    let mut request = http::Request::post(url.uri.path_and_query().map_or("/", |p| p.as_str()))
        .header(http::header::HOST, authority.as_str())
        .header(http::header::CONTENT_TYPE, "application/json");
    if let Some(secret) = secret {
        let timestamp = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        request = request.header("x-tether-timestamp", timestamp.to_string()).header("x-tether-signature", signature(secret, timestamp, &body));
    }
    let request = request.body(Full::new(body))?;
    let response = match &url.tls {
        None => send(tcp, request).await?,
        Some((connector, name)) => send(connector.connect(name.clone(), tcp).await?, request).await?,
    };
    let status = response.status();
    let answer = http_body_util::Limited::new(response.into_body(), max_answer)
        .collect()
        .await
        .map_err(|e| anyhow::anyhow!("reading the backend's answer: {e} (at most {max_answer} bytes)"))?
        .to_bytes();
    Ok((status, answer))
}

async fn send<S>(stream: S, request: http::Request<Full<Bytes>>) -> anyhow::Result<http::Response<hyper::body::Incoming>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    // Runs until the answer is read (or the caller gives up and drops it).
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender.send_request(request).await?)
}
