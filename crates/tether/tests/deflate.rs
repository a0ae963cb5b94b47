//! permessage-deflate (RFC 7692) end to end over loopback TCP: negotiated by
//! our client and our server (lean accept, hyper upgrade, axum extractor),
//! refused when either side has it off, and a client that fails on a
//! server's invalid answer.

use std::time::Duration;
use tether::{Accept, ClientBuilder, CloseCode, Config, DeflateConfig, DeflateParams, Error, Message};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

fn with_deflate(deflate: DeflateConfig) -> Config {
    Config { deflate: Some(deflate), ..Config::default() }
}

/// An echo server on the lean accept path; returns its ws:// URL.
async fn echo_server(config: Config) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let config = config.clone();
            tokio::spawn(async move {
                let Ok(mut ws) = tether::accept_with(tcp, &config, |_| Ok(Accept::default())).await else { return };
                while let Some(Ok(msg)) = ws.recv().await {
                    if msg.is_data() && ws.send(msg).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    format!("ws://{addr}")
}

/// Text, binary, a large message and many pipelined ones, echoed.
async fn exchange<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(ws: &mut tether::WebSocket<S>) {
    let text = "{\"event\":\"update\",\"payload\":\"ünïcödé\"} ".repeat(40);
    ws.send(text.as_str()).await.unwrap();
    assert_eq!(ws.recv().await.unwrap().unwrap(), Message::text(text));
    ws.send("small").await.unwrap();
    assert_eq!(ws.recv().await.unwrap().unwrap(), Message::text("small"));
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    ws.send(big.clone()).await.unwrap();
    assert_eq!(ws.recv().await.unwrap().unwrap(), Message::binary(big));
    for i in 0..200 {
        ws.feed(format!("message {i} {}", "padding ".repeat(40))).await.unwrap();
    }
    ws.flush().await.unwrap();
    for i in 0..200 {
        assert_eq!(ws.recv().await.unwrap().unwrap(), Message::text(format!("message {i} {}", "padding ".repeat(40))));
    }
}

#[tokio::test]
async fn our_client_and_server_compress_both_ways() {
    let takeover = DeflateConfig { context_takeover: true, ..DeflateConfig::default() };
    let small_window = DeflateConfig { context_takeover: true, max_window_bits: 9, ..DeflateConfig::default() };
    let cases = [
        // (server, client, expected agreement)
        (DeflateConfig::default(), DeflateConfig::default(), DeflateParams { server_no_context_takeover: true, client_no_context_takeover: true, ..Default::default() }),
        (takeover.clone(), takeover.clone(), DeflateParams::default()),
        (takeover.clone(), DeflateConfig::default(), DeflateParams { server_no_context_takeover: true, client_no_context_takeover: true, ..Default::default() }),
        (
            small_window.clone(),
            takeover.clone(),
            DeflateParams { server_max_window_bits: Some(9), client_max_window_bits: Some(9), ..Default::default() },
        ),
        (
            takeover.clone(),
            small_window.clone(),
            DeflateParams { server_max_window_bits: Some(9), client_max_window_bits: Some(9), ..Default::default() },
        ),
    ];
    for (server, client, expected) in cases {
        let url = echo_server(with_deflate(server.clone())).await;
        let (mut ws, response) = ClientBuilder::new(&url).config(with_deflate(client.clone())).connect().await.unwrap();
        assert_eq!(ws.connection().deflate_params(), Some(&expected), "server {server:?}, client {client:?}");
        assert!(response.extensions.iter().any(|e| e.name == "permessage-deflate"));
        exchange(&mut ws).await;
        // Without context takeover on our side, nothing is held between messages.
        if !client.context_takeover {
            assert_eq!(ws.connection().holds_deflate_state(), (false, false));
        }
        ws.close(CloseCode::NORMAL, "").await.unwrap();
        assert!(ws.was_clean());
    }
}

#[tokio::test]
async fn either_side_off_means_no_compression() {
    // The server has it off: the offer is ignored.
    let url = echo_server(Config::default()).await;
    let (mut ws, response) = ClientBuilder::new(&url).config(with_deflate(DeflateConfig::default())).connect().await.unwrap();
    assert!(response.extensions.is_empty());
    assert_eq!(ws.connection().deflate_params(), None);
    exchange(&mut ws).await;
    // The client has it off: nothing is offered, so nothing is accepted.
    let url = echo_server(with_deflate(DeflateConfig::default())).await;
    let (mut ws, response) = ClientBuilder::new(&url).connect().await.unwrap();
    assert!(response.extensions.is_empty());
    exchange(&mut ws).await;
}

#[tokio::test]
async fn compressed_messages_over_the_limit_close_with_1009() {
    let config = Config { max_message_size: 64 * 1024, deflate: Some(DeflateConfig::default()), ..Config::default() };
    let url = echo_server(config).await;
    let (mut ws, _) = ClientBuilder::new(&url).config(with_deflate(DeflateConfig::default())).connect().await.unwrap();
    // 1 MiB of zeros is ~1 KB compressed: small on the wire, too large inflated.
    ws.send(vec![0u8; 1 << 20]).await.unwrap();
    match ws.recv().await {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(frame.code, CloseCode::MESSAGE_TOO_BIG),
        other => panic!("expected close 1009, got {other:?}"),
    }
}

/// A raw server that answers the handshake with `extensions`.
async fn fake_server(extensions: &'static str) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let n = tcp.read(&mut buf).await.unwrap();
            let (req, _) = tether_proto::handshake::parse_request(&buf[..n], 16384).unwrap().unwrap();
            let _ = tcp.write_all(&req.accept(None, Some(extensions), &[])).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    format!("ws://{addr}")
}

#[tokio::test]
async fn client_fails_on_an_invalid_answer() {
    for bad in [
        // §7.1.2.2: a client_max_window_bits answer needs a value.
        "permessage-deflate; client_max_window_bits",
        "permessage-deflate; server_max_window_bits=20",
        "permessage-deflate; no_such_parameter",
        "permessage-deflate; server_no_context_takeover=yes",
        "permessage-deflate, permessage-deflate",
    ] {
        let url = fake_server(bad).await;
        let err = ClientBuilder::new(&url).config(with_deflate(DeflateConfig::default())).connect().await.unwrap_err();
        assert!(matches!(err, Error::Handshake(tether_proto::HandshakeError::InvalidExtensionResponse(_))), "{bad:?}: {err:?}");
    }
    // A window larger than the one we asked for.
    let url = fake_server("permessage-deflate; server_max_window_bits=12").await;
    let config = with_deflate(DeflateConfig { max_window_bits: 10, ..DeflateConfig::default() });
    let err = ClientBuilder::new(&url).config(config).connect().await.unwrap_err();
    assert!(matches!(err, Error::Handshake(tether_proto::HandshakeError::InvalidExtensionResponse(_))), "{err:?}");
    // Compression accepted though never offered.
    let url = fake_server("permessage-deflate").await;
    let err = ClientBuilder::new(&url).connect().await.unwrap_err();
    assert!(matches!(err, Error::Handshake(tether_proto::HandshakeError::UnexpectedExtension(_))), "{err:?}");
}

#[tokio::test]
async fn hyper_upgrade_answers_the_offer() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|mut req: hyper::Request<hyper::body::Incoming>| async move {
                    let upgrade = tether::upgrade(&mut req).unwrap();
                    let (resp, socket) = upgrade.accept(None, with_deflate(DeflateConfig::default()));
                    tokio::spawn(async move {
                        let mut ws = socket.await.unwrap();
                        assert!(ws.connection().deflate_params().is_some());
                        while let Some(Ok(msg)) = ws.recv().await {
                            if msg.is_data() && ws.send(msg).await.is_err() {
                                break;
                            }
                        }
                    });
                    Ok::<_, std::convert::Infallible>(resp)
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(hyper_util::rt::TokioIo::new(tcp), service).with_upgrades().await;
            });
        }
    });
    let (mut ws, response) = ClientBuilder::new(format!("ws://127.0.0.1:{port}/")).config(with_deflate(DeflateConfig::default())).connect().await.unwrap();
    let header = response.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case("sec-websocket-extensions")).map(|(_, v)| String::from_utf8_lossy(v).into_owned());
    assert_eq!(header.as_deref(), Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover"));
    exchange(&mut ws).await;
    ws.close(CloseCode::NORMAL, "").await.unwrap();
}

#[tokio::test]
async fn axum_extractor_answers_the_offer() {
    use axum::routing::get;
    use tether::axum::WebSocketUpgrade;
    let app = axum::Router::new().route(
        "/ws",
        get(|ws: WebSocketUpgrade| async move {
            let config = with_deflate(DeflateConfig { context_takeover: true, ..DeflateConfig::default() });
            ws.config(config).on_upgrade(|mut socket| async move {
                while let Some(Ok(msg)) = socket.recv().await {
                    if msg.is_data() && socket.send(msg).await.is_err() {
                        break;
                    }
                }
            })
        }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let config = with_deflate(DeflateConfig { context_takeover: true, ..DeflateConfig::default() });
    let (mut ws, _) = ClientBuilder::new(format!("ws://127.0.0.1:{port}/ws")).config(config).connect().await.unwrap();
    assert_eq!(ws.connection().deflate_params(), Some(&DeflateParams::default()));
    exchange(&mut ws).await;
    assert_eq!(ws.connection().holds_deflate_state(), (true, true), "context takeover keeps both");
    ws.close(CloseCode::NORMAL, "").await.unwrap();
}

#[tokio::test]
async fn server_declines_malformed_offers_and_goes_on_uncompressed() {
    let url = echo_server(with_deflate(DeflateConfig::default())).await;
    let addr = url.trim_start_matches("ws://").to_string();
    for offer in ["permessage-deflate; bogus=1", "permessage-deflate; server_max_window_bits=7", "x-webkit-deflate-frame"] {
        let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let request = tether::ClientRequest { host: addr.clone(), target: "/".into(), extensions: Some(offer.into()), ..Default::default() };
        // Compression off on this client: it only relays the hand-written offer.
        let (mut ws, response) = tether::client_handshake(tcp, &request, &Config::default()).await.unwrap();
        assert!(response.extensions.is_empty(), "{offer:?} was answered with {:?}", response.extensions);
        ws.send("still works").await.unwrap();
        assert_eq!(ws.recv().await.unwrap().unwrap(), Message::text("still works"));
    }
    // The first acceptable of several offers is taken.
    let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let offers = "permessage-deflate; bogus, permessage-deflate; client_max_window_bits=10";
    let request = tether::ClientRequest { host: addr.clone(), target: "/".into(), extensions: Some(offers.into()), ..Default::default() };
    let (handshake, bytes) = tether_proto::handshake::ClientHandshake::new(&request);
    tcp.write_all(&bytes).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tcp.read(&mut buf).await.unwrap();
    let (response, _) = handshake.parse_response(&buf[..n]).unwrap().unwrap();
    let answer: Vec<String> = response.extensions.iter().map(|e| format!("{}{:?}", e.name, e.params)).collect();
    assert_eq!(
        answer,
        vec![r#"permessage-deflate[("server_no_context_takeover", None), ("client_no_context_takeover", None), ("client_max_window_bits", Some("10"))]"#]
    );
}
