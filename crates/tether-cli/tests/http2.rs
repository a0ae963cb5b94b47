//! WebSocket over HTTP/2 (RFC 8441) on `tether serve` with TLS: the real
//! binary, real TLS with ALPN, the h2 crate as the client (so a test can
//! reset one stream and open two on one connection), and tether's own
//! `ClientBuilder::http2`. HTTP/1.1 (pages, /metrics, WebSocket upgrades)
//! keeps working on the same port.

mod common;

use bytes::Bytes;
use common::Server;
use std::sync::Arc;
use std::time::Duration;
use tether::{ClientBuilder, Message};
use tether_proto::{CloseCode, Connection, Event, Role};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Tls {
    server: Server,
    ca: Vec<u8>,
}

fn tls_server(args: &[&str]) -> Tls {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let dir = std::env::temp_dir().join(format!("tether-h2-{}-{}", std::process::id(), common::free_port()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
    let mut all = vec!["--tls-cert", cert.to_str().unwrap(), "--tls-key", key.to_str().unwrap()];
    all.extend_from_slice(args);
    let server = Server::start(&all);
    Tls { server, ca: ck.cert.pem().into_bytes() }
}

impl Tls {
    fn options(&self) -> tether::tls::TlsOptions {
        tether::tls::TlsOptions { ca_pem: Some(self.ca.clone()), ..Default::default() }
    }

    /// A TLS connection offering `alpn` (nothing: the server's default, HTTP/1.1).
    async fn connect(&self, alpn: &[&[u8]]) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
        let mut config = (*tether::tls::client_config(&self.options()).unwrap()).clone();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", self.server.port)).await.unwrap();
        let name = tokio_rustls::rustls::pki_types::ServerName::try_from("localhost").unwrap();
        tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await.unwrap()
    }

    /// GET over HTTPS with HTTP/1.1; returns (status, body).
    async fn get_h1(&self, path: &str) -> (u16, String) {
        let mut tls = self.connect(&[]).await;
        assert_eq!(tls.get_ref().1.alpn_protocol(), None);
        tls.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
        let mut out = Vec::new();
        let _ = tls.read_to_end(&mut out).await;
        let out = String::from_utf8_lossy(&out).into_owned();
        let status = out.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        (status, out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default())
    }

    async fn transport_gauge(&self, transport: &str) -> i64 {
        let (status, body) = self.get_h1("/metrics").await;
        assert_eq!(status, 200);
        let line = format!("tether_connections_by_transport{{transport=\"{transport}\"}} ");
        body.lines().find_map(|l| l.strip_prefix(&line).and_then(|v| v.trim().parse().ok())).unwrap_or_else(|| panic!("no {line} in:\n{body}"))
    }

    /// Wait (up to 10 s) for the gauge to read `want`.
    async fn wait_gauge(&self, transport: &str, want: i64) {
        let mut got = 0;
        for _ in 0..200 {
            got = self.transport_gauge(transport).await;
            if got == want {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("tether_connections_by_transport{{transport=\"{transport}\"}} stayed {got}, expected {want}");
    }
}

async fn next_text<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(ws: &mut tether::WebSocket<S>) -> String {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.recv()).await.expect("a message within 10 s") {
            Some(Ok(Message::Text(t))) => return t.to_string(),
            Some(Ok(_)) => continue,
            other => panic!("expected text, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn tether_client_over_http2_echoes_pings_and_closes_cleanly() {
    let tls = tls_server(&[]);
    let (mut ws, response) = ClientBuilder::new(format!("wss://localhost:{}/h2room", tls.server.port)).tls(tls.options()).http2(true).connect().await.unwrap();
    assert!(ws.get_ref().is_http2());
    // RFC 8441 §5: a 200, and no Sec-WebSocket-Accept.
    assert!(response.headers.iter().all(|(k, _)| k != "sec-websocket-accept"));
    assert!(next_text(&mut ws).await.starts_with("Welcome"));
    ws.send("over h2").await.unwrap();
    assert!(next_text(&mut ws).await.ends_with("over h2"));
    assert_eq!(tls.transport_gauge("websocket_h2").await, 1);
    assert_eq!(tls.transport_gauge("websocket").await, 0);

    ws.send(Message::Ping(Bytes::from_static(b"are you there"))).await.unwrap();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.recv()).await.unwrap() {
            Some(Ok(Message::Pong(p))) => break assert_eq!(&p[..], b"are you there"),
            Some(Ok(Message::Text(_))) => continue,
            other => panic!("expected the pong, got {other:?}"),
        }
    }
    ws.close(CloseCode::NORMAL, "bye").await.unwrap();
    assert!(ws.was_clean(), "close handshake over the HTTP/2 stream");
    assert_eq!(ws.close_code(), CloseCode::NORMAL);
    tls.wait_gauge("websocket_h2", 0).await;
}

#[tokio::test]
async fn http11_websocket_and_pages_still_work_on_the_port() {
    let tls = tls_server(&[]);
    let (status, body) = tls.get_h1("/").await;
    assert_eq!(status, 200);
    assert!(body.contains("<html") || body.contains("<!doctype") || body.contains("<!DOCTYPE"));
    let (mut ws, _) = ClientBuilder::new(format!("wss://localhost:{}/h1room", tls.server.port)).tls(tls.options()).connect().await.unwrap();
    assert!(!ws.get_ref().is_http2());
    assert!(next_text(&mut ws).await.starts_with("Welcome"));
    ws.send("over h1").await.unwrap();
    assert!(next_text(&mut ws).await.ends_with("over h1"));
    assert_eq!(tls.transport_gauge("websocket").await, 1);
    assert_eq!(tls.transport_gauge("websocket_h2").await, 0);
    // A plain page over HTTP/2 too.
    let (mut send, conn) = h2::client::handshake(tls.connect(&[b"h2"]).await).await.unwrap();
    tokio::spawn(conn);
    let req = http::Request::get(format!("https://localhost:{}/health", tls.server.port)).body(()).unwrap();
    let (response, _) = send.send_request(req, true).unwrap();
    let response = response.await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), http::Version::HTTP_2);
}

/// One WebSocket on one h2 stream, driven by tether-proto by hand.
struct Stream {
    send: h2::SendStream<Bytes>,
    recv: h2::RecvStream,
    ws: Connection,
}

impl Stream {
    async fn open(client: &mut h2::client::SendRequest<Bytes>, port: u16, path: &str) -> (Stream, http::Response<()>) {
        let mut req = http::Request::builder()
            .method(http::Method::CONNECT)
            .uri(format!("https://localhost:{port}{path}"))
            .header("sec-websocket-version", "13")
            .body(())
            .unwrap();
        req.extensions_mut().insert(h2::ext::Protocol::from_static("websocket"));
        let (response, send) = client.send_request(req, false).unwrap();
        let response = response.await.unwrap();
        let (parts, recv) = response.into_parts();
        (Stream { send, recv, ws: Connection::new(Role::Client, Default::default()) }, http::Response::from_parts(parts, ()))
    }

    fn flush(&mut self) {
        let bytes = self.ws.take_data_to_send();
        if !bytes.is_empty() {
            self.send.send_data(Bytes::from(bytes), false).unwrap();
        }
    }

    fn send_text(&mut self, text: &str) {
        self.ws.send_text(text).unwrap();
        self.flush();
    }

    /// The next message, or `None` when the stream ended (END_STREAM).
    async fn next(&mut self) -> Option<Message> {
        loop {
            if let Some(Event::Message(m)) = self.ws.next_event().unwrap() {
                self.flush();
                return Some(m);
            }
            let data = tokio::time::timeout(Duration::from_secs(10), self.recv.data()).await.expect("data within 10 s")?;
            let data = data.unwrap();
            let _ = self.recv.flow_control().release_capacity(data.len());
            self.ws.receive_data(&data);
        }
    }

    async fn next_text(&mut self) -> String {
        loop {
            match self.next().await {
                Some(Message::Text(t)) => return t.to_string(),
                Some(_) => continue,
                None => panic!("stream ended"),
            }
        }
    }
}

#[tokio::test]
async fn streams_share_a_connection_and_a_reset_stream_is_cleaned_up() {
    let tls = tls_server(&[]);
    let port = tls.server.port;
    let io = tls.connect(&[b"h2", b"http/1.1"]).await;
    assert_eq!(io.get_ref().1.alpn_protocol(), Some(&b"h2"[..]), "the server chose HTTP/2 by ALPN");
    let (client, conn) = h2::client::handshake(io).await.unwrap();
    let conn = tokio::spawn(conn);
    let mut client = client.ready().await.unwrap();

    let (mut a, response) = Stream::open(&mut client, port, "/shared").await;
    assert_eq!(response.status(), 200);
    assert!(response.headers().get("sec-websocket-accept").is_none());
    // RFC 8441 §3: the server's SETTINGS allowed the extended CONNECT.
    assert!(client.is_extended_connect_protocol_enabled());
    assert_eq!(client.current_max_send_streams(), 64, "SETTINGS_MAX_CONCURRENT_STREAMS bounds streams per connection");
    let (mut b, response) = Stream::open(&mut client, port, "/shared").await;
    assert_eq!(response.status(), 200);
    assert!(a.next_text().await.starts_with("Welcome"));
    assert!(b.next_text().await.starts_with("Welcome"));
    assert_eq!(tls.transport_gauge("websocket_h2").await, 2);

    // Room fan-out across two streams of one connection.
    a.send_text("from a");
    assert!(b.next_text().await.ends_with("from a"));
    assert!(a.next_text().await.ends_with("from a"));

    // RST_STREAM on a: the server ends that session (1006) and no other.
    a.send.send_reset(h2::Reason::CANCEL);
    tls.wait_gauge("websocket_h2", 1).await;
    b.send_text("b still here");
    assert!(b.next_text().await.ends_with("b still here"));

    // A close handshake on b ends its stream with END_STREAM.
    b.ws.close(Some(tether_proto::CloseFrame { code: CloseCode::NORMAL, reason: "bye".into() })).unwrap();
    b.flush();
    loop {
        match b.next().await {
            Some(Message::Close(frame)) => assert_eq!(frame.map(|f| f.code), Some(CloseCode::NORMAL)),
            Some(_) => continue,
            None => break,
        }
    }
    assert!(b.recv.is_end_stream(), "the server ended the stream with END_STREAM");
    tls.wait_gauge("websocket_h2", 0).await;

    // Connection loss with a stream open: cleaned up as well.
    let (mut c, _) = Stream::open(&mut client, port, "/shared").await;
    assert!(c.next_text().await.starts_with("Welcome"));
    assert_eq!(tls.transport_gauge("websocket_h2").await, 1);
    conn.abort();
    drop((client, c));
    tls.wait_gauge("websocket_h2", 0).await;
}

#[tokio::test]
async fn admission_applies_to_http2_streams() {
    let tls = tls_server(&["--token", "s3cret", "--allowed-origin", "https://good.example"]);
    let port = tls.server.port;
    let io = tls.connect(&[b"h2"]).await;
    let (client, conn) = h2::client::handshake(io).await.unwrap();
    tokio::spawn(conn);
    let mut client = client.ready().await.unwrap();
    let open = |origin: &'static str, token: Option<&'static str>, version: &'static str| {
        let mut req = http::Request::builder().method(http::Method::CONNECT).uri(format!("https://localhost:{port}/guarded")).header("sec-websocket-version", version).header("origin", origin);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let mut req = req.body(()).unwrap();
        req.extensions_mut().insert(h2::ext::Protocol::from_static("websocket"));
        req
    };
    let mut status = |req| {
        let (response, _) = client.send_request(req, true).unwrap();
        async move { response.await.unwrap().status().as_u16() }
    };
    assert_eq!(status(open("https://good.example", None, "13")).await, 401);
    assert_eq!(status(open("https://evil.example", Some("s3cret"), "13")).await, 403);
    assert_eq!(status(open("https://good.example", Some("s3cret"), "12")).await, 426);
    assert_eq!(status(open("https://good.example", Some("s3cret"), "13")).await, 200);
}
