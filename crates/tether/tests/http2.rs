//! RFC 8441 for embedders: a hyper HTTP/2 server with
//! `enable_connect_protocol()` accepts a WebSocket through
//! `tether::upgrade` (the same call as for HTTP/1.1 upgrades), and
//! `ClientBuilder::http2` connects to it (here h2c, HTTP/2 with prior
//! knowledge over plain TCP), with permessage-deflate negotiated.
#![cfg(feature = "http2")]

use http_body_util::Empty;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tether::{ClientBuilder, Config, DeflateConfig, Message};

async fn handle(mut req: hyper::Request<Incoming>) -> Result<hyper::Response<Empty<bytes::Bytes>>, std::convert::Infallible> {
    if !tether::upgrade::is_upgrade_request(&req) {
        return Ok(hyper::Response::builder().status(404).body(Empty::new()).unwrap());
    }
    let upgrade = match tether::upgrade(&mut req) {
        Ok(u) => u,
        Err(e) => return Ok(tether::upgrade::error_response(&e)),
    };
    assert!(upgrade.is_http2());
    let config = Config { deflate: Some(DeflateConfig::default()), ..Config::default() };
    let (response, socket) = upgrade.accept(Some("echo"), config);
    tokio::spawn(async move {
        let mut ws = socket.await.unwrap();
        while let Some(Ok(msg)) = ws.recv().await {
            if msg.is_data() && ws.send(msg).await.is_err() {
                break;
            }
        }
    });
    Ok(response)
}

#[tokio::test]
async fn hyper_http2_server_and_http2_client_exchange_messages() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut http = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
                http.enable_connect_protocol();
                let _ = http.serve_connection(TokioIo::new(tcp), hyper::service::service_fn(handle)).await;
            });
        }
    });
    let config = Config { deflate: Some(DeflateConfig::default()), ..Config::default() };
    let (mut ws, response) = ClientBuilder::new(format!("ws://127.0.0.1:{port}/echo")).protocol("echo").config(config).http2(true).connect().await.unwrap();
    assert!(ws.get_ref().is_http2());
    assert_eq!(response.protocol.as_deref(), Some("echo"));
    assert_eq!(ws.protocol(), Some("echo"));
    assert!(response.extensions.iter().any(|e| e.name == "permessage-deflate"), "{:?}", response.extensions);
    let big = "compressible ".repeat(10_000);
    for text in ["hello over h2c", big.as_str()] {
        ws.send(text).await.unwrap();
        match ws.recv().await {
            Some(Ok(Message::Text(t))) => assert_eq!(t.as_str(), text),
            other => panic!("expected the echo, got {other:?}"),
        }
    }
    ws.close(tether::CloseCode::NORMAL, "").await.unwrap();
    assert!(ws.was_clean());
}

#[tokio::test]
async fn an_http1_only_server_fails_the_http2_client_clearly() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let _ = tether::accept(tcp).await;
    });
    let err = ClientBuilder::new(format!("ws://127.0.0.1:{port}/")).http2(true).connect().await.unwrap_err();
    assert!(matches!(err, tether::Error::Http2(_) | tether::Error::Timeout(_)), "{err:?}");
}
