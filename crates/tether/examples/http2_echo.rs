//! WebSocket over HTTP/2 (RFC 8441), both ends in one program: a hyper
//! HTTP/2 server on TLS (ALPN `h2`, `SETTINGS_ENABLE_CONNECT_PROTOCOL`)
//! that accepts extended CONNECT with `tether::upgrade`, and a client that
//! opens three WebSockets with `ClientBuilder::http2(true)`.
//!
//!     cargo run -p tether --features http2 --example http2_echo

use http_body_util::Empty;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tether::{ClientBuilder, Message};

/// Every request: a WebSocket (HTTP/1.1 upgrade or HTTP/2 extended CONNECT) echoes; anything else is 404.
async fn handle(mut req: hyper::Request<Incoming>) -> Result<hyper::Response<Empty<bytes::Bytes>>, std::convert::Infallible> {
    if !tether::upgrade::is_upgrade_request(&req) {
        return Ok(hyper::Response::builder().status(404).body(Empty::new()).unwrap());
    }
    let upgrade = match tether::upgrade(&mut req) {
        Ok(u) => u,
        Err(e) => return Ok(tether::upgrade::error_response(&e)),
    };
    println!("server: WebSocket on {} (HTTP/2: {})", upgrade.request().path(), upgrade.is_http2());
    let (response, socket) = upgrade.accept(None, tether::Config::default());
    tokio::spawn(async move {
        let Ok(mut ws) = socket.await else { return };
        while let Some(Ok(msg)) = ws.recv().await {
            if msg.is_data() && ws.send(msg).await.is_err() {
                break;
            }
        }
    });
    Ok(response)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A certificate for this run; a real server loads its own.
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])?;
    let acceptor = tether::tls::acceptor_h2(ck.cert.pem().as_bytes(), ck.key_pair.serialize_pem().as_bytes())?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let mut http = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
                // RFC 8441 §3: allow WebSockets on this connection's streams.
                http.enable_connect_protocol().max_concurrent_streams(100);
                let _ = http.serve_connection(TokioIo::new(tls), hyper::service::service_fn(handle)).await;
            });
        }
    });

    let tls = tether::tls::TlsOptions { ca_pem: Some(ck.cert.pem().into_bytes()), ..Default::default() };
    for room in ["/a", "/b", "/c"] {
        let (mut ws, _) = ClientBuilder::new(format!("wss://localhost:{port}{room}")).tls(tls.clone()).http2(true).connect().await?;
        ws.send(format!("hello from {room}")).await?;
        if let Some(Ok(Message::Text(echo))) = ws.recv().await {
            println!("client: echo {:?} over HTTP/2: {}", echo.as_str(), ws.get_ref().is_http2());
        }
        ws.close(tether::CloseCode::NORMAL, "done").await?;
    }
    Ok(())
}
