//! wss:// with a certificate generated in the test, and sharing a port with
//! an HTTP server (hyper 1 and axum).

use std::sync::Arc;
use tether::tls::TlsOptions;
use tether::{ClientBuilder, Config, Error, Message};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn test_cert() -> (String, String) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    (ck.cert.pem(), ck.key_pair.serialize_pem())
}

async fn wss_echo_server(cert: &str, key: &str) -> u16 {
    let acceptor = tether::tls::acceptor(cert.as_bytes(), key.as_bytes()).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let Ok(mut ws) = tether::accept(tls).await else { return };
                while let Some(Ok(msg)) = ws.recv().await {
                    if msg.is_data() && ws.send(msg).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    port
}

#[tokio::test]
async fn wss_round_trip_with_a_custom_ca() {
    let (cert, key) = test_cert();
    let port = wss_echo_server(&cert, &key).await;
    let tls = TlsOptions { ca_pem: Some(cert.into_bytes()), ..Default::default() };
    let (mut ws, _) = ClientBuilder::new(format!("wss://localhost:{port}/secure")).tls(tls).connect().await.unwrap();
    assert!(matches!(ws.get_ref(), tether::MaybeTlsStream::Tls(_)));
    ws.send("over tls").await.unwrap();
    assert_eq!(ws.recv().await.unwrap().unwrap(), Message::text("over tls"));
    let big = vec![9u8; 1 << 20];
    ws.send(big.clone()).await.unwrap();
    assert_eq!(ws.recv().await.unwrap().unwrap(), Message::binary(big));
    ws.close(1000, "").await.unwrap();
}

#[tokio::test]
async fn wss_rejects_an_untrusted_certificate_unless_insecure() {
    let (cert, key) = test_cert();
    let port = wss_echo_server(&cert, &key).await;
    let err = ClientBuilder::new(format!("wss://localhost:{port}")).connect().await.unwrap_err();
    assert!(matches!(err, Error::Tls(_)), "{err}");
    let tls = TlsOptions { insecure: true, ..Default::default() };
    let (mut ws, _) = ClientBuilder::new(format!("wss://localhost:{port}")).tls(tls).connect().await.unwrap();
    ws.send("ok").await.unwrap();
    assert_eq!(ws.recv().await.unwrap().unwrap(), Message::text("ok"));
}

#[tokio::test]
async fn bad_pem_is_a_clear_error() {
    let err = tether::tls::acceptor(b"not a cert", b"not a key").err().expect("bad PEM must fail");
    assert!(err.to_string().contains("certificate"), "{err}");
}

async fn http_get(port: u16, path: &str) -> String {
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    tcp.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
    let mut out = String::new();
    tcp.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test]
async fn hyper_upgrade_shares_the_port_with_http() {
    use http_body_util::{BodyExt, Full};
    use hyper::body::Bytes;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|mut req: hyper::Request<hyper::body::Incoming>| async move {
                    if !tether::upgrade::is_upgrade_request(&req) {
                        let body = Full::new(Bytes::from_static(b"plain http")).boxed();
                        return Ok::<_, std::convert::Infallible>(hyper::Response::new(body));
                    }
                    match tether::upgrade(&mut req) {
                        Ok(upgrade) => {
                            assert_eq!(upgrade.request().path(), "/ws");
                            let (resp, socket) = upgrade.accept(Some("chat"), Config::default());
                            tokio::spawn(async move {
                                let mut ws = socket.await.unwrap();
                                let p = ws.protocol().unwrap_or("").to_string();
                                while let Some(Ok(msg)) = ws.recv().await {
                                    if let Message::Text(t) = msg {
                                        ws.send(format!("{p}:{t}")).await.unwrap();
                                    }
                                }
                            });
                            Ok(resp.map(|b| b.boxed()))
                        }
                        Err(e) => Ok(tether::upgrade::error_response(&e).map(|b| b.boxed())),
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    assert!(http_get(port, "/").await.contains("plain http"));
    let (mut ws, _) = ClientBuilder::new(format!("ws://127.0.0.1:{port}/ws")).protocol("chat").connect().await.unwrap();
    ws.send("hi").await.unwrap();
    assert_eq!(ws.recv().await.unwrap().unwrap(), Message::text("chat:hi"));
    ws.close(1000, "").await.unwrap();
    // A broken upgrade request gets 426 from the same port.
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    tcp.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 7\r\n\r\n").await.unwrap();
    let mut buf = vec![0u8; 1024];
    let n = tcp.read(&mut buf).await.unwrap();
    let resp = String::from_utf8_lossy(&buf[..n]);
    assert!(resp.starts_with("HTTP/1.1 426"), "{resp}");
    assert!(resp.to_ascii_lowercase().contains("sec-websocket-version: 13"), "{resp}");
}

#[tokio::test]
async fn axum_extractor_shares_the_port_with_routes() {
    use axum::routing::get;
    use tether::axum::WebSocketUpgrade;
    let counter = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let app = axum::Router::new().route("/", get(|| async { "hello from axum" })).route(
        "/ws",
        get(move |ws: WebSocketUpgrade| {
            let counter = counter.clone();
            async move {
                ws.protocols(["tether.v1"]).on_upgrade(move |mut socket| async move {
                    counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    while let Some(Ok(msg)) = socket.recv().await {
                        if msg.is_data() && socket.send(msg).await.is_err() {
                            break;
                        }
                    }
                })
            }
        }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    assert!(http_get(port, "/").await.contains("hello from axum"));
    let (mut ws, resp) = ClientBuilder::new(format!("ws://127.0.0.1:{port}/ws")).protocol("tether.v1").connect().await.unwrap();
    assert_eq!(resp.protocol.as_deref(), Some("tether.v1"));
    ws.send("via axum").await.unwrap();
    assert_eq!(ws.recv().await.unwrap().unwrap(), Message::text("via axum"));
    ws.close(1000, "").await.unwrap();
    // A plain GET on the WebSocket route is refused with 400.
    let resp = http_get(port, "/ws").await;
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
}
