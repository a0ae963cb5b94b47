//! End-to-end behaviour over real loopback TCP and over `tokio::io::duplex`.

use futures_util::{SinkExt, StreamExt};
use std::time::Duration;
use tether::{Accept, ClientBuilder, CloseCode, CloseFrame, Config, Error, Message, Reject, Role, WebSocket};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Start an echo server on a free port; returns its ws:// URL.
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

#[tokio::test]
async fn echo_text_binary_and_large_over_tcp() {
    let url = echo_server(Config::default()).await;
    let mut ws = tether::connect(&format!("{url}/echo")).await.unwrap();
    ws.send("héllo").await.unwrap();
    assert_eq!(ws.recv().await.unwrap().unwrap(), Message::text("héllo"));
    ws.send(vec![0u8, 1, 2]).await.unwrap();
    assert_eq!(ws.recv().await.unwrap().unwrap(), Message::binary(vec![0u8, 1, 2]));
    let big: Vec<u8> = (0..5_000_000u32).map(|i| i as u8).collect();
    ws.send(big.clone()).await.unwrap();
    assert_eq!(ws.recv().await.unwrap().unwrap(), Message::binary(big));
    // Many pipelined messages come back in order.
    for i in 0..1000 {
        ws.feed(format!("m{i}")).await.unwrap();
    }
    ws.flush().await.unwrap();
    for i in 0..1000 {
        assert_eq!(ws.recv().await.unwrap().unwrap(), Message::text(format!("m{i}")));
    }
    ws.close(CloseCode::NORMAL, "bye").await.unwrap();
    assert!(ws.was_clean());
    assert_eq!(ws.close_code(), CloseCode::NORMAL);
}

#[tokio::test]
async fn pings_are_answered_automatically() {
    let url = echo_server(Config::default()).await;
    let mut ws = tether::connect(&url).await.unwrap();
    ws.send(Message::Ping("are you there".into())).await.unwrap();
    assert_eq!(ws.recv().await.unwrap().unwrap(), Message::Pong("are you there".into()));
}

#[tokio::test]
async fn server_initiated_close_reaches_the_client_with_code_and_reason() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut ws = tether::accept(tcp).await.unwrap();
        ws.close(CloseCode::GOING_AWAY, "restarting").await.unwrap();
        ws.was_clean()
    });
    let mut ws = tether::connect(&format!("ws://{addr}")).await.unwrap();
    assert_eq!(ws.recv().await.unwrap().unwrap(), Message::Close(Some(CloseFrame::new(1001, "restarting"))));
    assert!(ws.recv().await.is_none(), "stream ends after the server closes TCP");
    assert!(ws.was_clean());
    assert_eq!(ws.close_code(), CloseCode::GOING_AWAY);
    assert!(server.await.unwrap());
}

#[tokio::test]
async fn abrupt_disconnect_is_reported_as_abnormal() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let ws = tether::accept(tcp).await.unwrap();
        drop(ws);
    });
    let mut ws = tether::connect(&format!("ws://{addr}")).await.unwrap();
    assert!(matches!(ws.recv().await, Some(Err(Error::AbnormalClosure))));
    assert!(ws.recv().await.is_none());
    assert_eq!(ws.close_code(), CloseCode::ABNORMAL);
    assert!(!ws.was_clean());
}

#[tokio::test]
async fn oversized_message_is_closed_with_1009() {
    let url = echo_server(Config { max_message_size: 1024, max_frame_size: 1024, ..Config::default() }).await;
    let mut ws = tether::connect(&url).await.unwrap();
    ws.send(vec![0u8; 2048]).await.unwrap();
    assert_eq!(ws.recv().await.unwrap().unwrap(), Message::Close(Some(CloseFrame::new(1009, ""))));
    assert_eq!(ws.close_code(), CloseCode::MESSAGE_TOO_BIG);
}

#[tokio::test]
async fn works_over_duplex_in_both_roles() {
    let (a, b) = tokio::io::duplex(1024);
    let config = Config::default();
    let mut server = WebSocket::from_raw(a, Role::Server, &config, &[]);
    let mut client = WebSocket::from_raw(b, Role::Client, &config, &[]);
    let echo = tokio::spawn(async move {
        while let Some(Ok(msg)) = server.recv().await {
            if msg.is_data() {
                server.send(msg).await.unwrap();
            }
        }
        server.was_clean()
    });
    // The duplex buffer (1 KiB) is far smaller than the message: both sides
    // must interleave reads and writes correctly.
    let payload = "x".repeat(100_000);
    client.send(payload.as_str()).await.unwrap();
    assert_eq!(client.recv().await.unwrap().unwrap(), Message::text(payload));
    client.close(1000, "").await.unwrap();
    assert!(echo.await.unwrap());
}

#[tokio::test]
async fn stream_and_sink_combinators_work() {
    let url = echo_server(Config::default()).await;
    let ws = tether::connect(&url).await.unwrap();
    let (mut sink, mut stream) = futures_util::StreamExt::split(ws);
    sink.send(Message::text("a")).await.unwrap();
    sink.send(Message::text("b")).await.unwrap();
    let got: Vec<Message> = (&mut stream).take(2).map(|m| m.unwrap()).collect().await;
    assert_eq!(got, vec![Message::text("a"), Message::text("b")]);
    sink.close().await.unwrap();
    let rest: Vec<_> = stream.collect().await;
    assert!(matches!(rest.as_slice(), [Ok(Message::Close(_))]), "{rest:?}");
}

#[tokio::test]
async fn split_halves_work_from_two_tasks() {
    let url = echo_server(Config::default()).await;
    let ws = tether::connect(&url).await.unwrap();
    let (mut reader, mut writer) = ws.split();
    const N: usize = 5000;
    let writing = tokio::spawn(async move {
        for i in 0..N {
            writer.feed(format!("{i}")).await.unwrap();
            if i % 100 == 0 {
                writer.flush().await.unwrap();
            }
        }
        writer.flush().await.unwrap();
        writer
    });
    let reading = tokio::spawn(async move {
        for i in 0..N {
            assert_eq!(reader.recv().await.unwrap().unwrap(), Message::text(format!("{i}")));
        }
        reader
    });
    let mut writer = writing.await.unwrap();
    let mut reader = reading.await.unwrap();
    writer.close(1000, "done").await.unwrap();
    assert!(matches!(reader.recv().await, Some(Ok(Message::Close(_)))));
    assert!(reader.recv().await.is_none());
}

#[tokio::test]
async fn split_reader_answers_pings_without_the_writer() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut ws = tether::accept(tcp).await.unwrap();
        ws.send(Message::Ping("hb".into())).await.unwrap();
        let reply = ws.recv().await.unwrap().unwrap();
        ws.send(Message::text(format!("{reply:?}"))).await.unwrap();
        let _ = ws.close(1000, "").await;
    });
    let (mut reader, _writer) = tether::connect(&format!("ws://{addr}")).await.unwrap().split();
    assert_eq!(reader.recv().await.unwrap().unwrap(), Message::Ping("hb".into()));
    let text = reader.recv().await.unwrap().unwrap();
    assert_eq!(text.as_text(), Some("Pong(b\"hb\")"));
}

#[tokio::test]
async fn callback_can_inspect_select_protocol_and_reject() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let result = tether::accept_with(tcp, &Config::default(), |req| {
                    if req.header_str("authorization") != Some("Bearer secret") {
                        return Err(Reject::new(401, "missing token"));
                    }
                    assert_eq!(req.path(), "/room");
                    assert_eq!(req.query(), Some("name=a"));
                    assert_eq!(req.origin(), Some("http://example.com"));
                    Ok(Accept { protocol: req.protocols().iter().find(|p| **p == "tether.v1").map(|p| p.to_string()), headers: vec![] })
                })
                .await;
                if let Ok(mut ws) = result {
                    let p = ws.protocol().unwrap_or("none").to_string();
                    ws.send(p).await.unwrap();
                    let _ = ws.close(1000, "").await;
                }
            });
        }
    });
    let url = format!("ws://{addr}/room?name=a");
    let err = ClientBuilder::new(&url).connect().await.unwrap_err();
    assert_eq!(err.http_status(), Some(401), "{err}");
    let (mut ws, resp) = ClientBuilder::new(&url)
        .header("Authorization", "Bearer secret")
        .header("Origin", "http://example.com")
        .protocol("other")
        .protocol("tether.v1")
        .connect()
        .await
        .unwrap();
    assert_eq!(resp.protocol.as_deref(), Some("tether.v1"));
    assert_eq!(ws.protocol(), Some("tether.v1"));
    assert_eq!(ws.recv().await.unwrap().unwrap(), Message::text("tether.v1"));
}

async fn raw_exchange(addr: std::net::SocketAddr, request: &str) -> String {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut out = String::new();
    tcp.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test]
async fn bad_handshakes_get_the_right_http_status() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let _ = tether::accept(tcp).await;
            });
        }
    });
    let resp = raw_exchange(addr, "GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(resp.starts_with("HTTP/1.1 400 "), "{resp}");
    let resp = raw_exchange(addr, "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n").await;
    assert!(resp.starts_with("HTTP/1.1 426 "), "{resp}");
    assert!(resp.contains("Sec-WebSocket-Version: 13"), "{resp}");
    let resp = raw_exchange(addr, "POST / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(resp.starts_with("HTTP/1.1 405 "), "{resp}");
    let resp = raw_exchange(addr, "garbage\r\n\r\n").await;
    assert!(resp.starts_with("HTTP/1.1 400 "), "{resp}");
}

#[tokio::test]
async fn handshake_timeout_drops_silent_clients() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let config = Config { handshake_timeout: Duration::from_millis(200), ..Config::default() };
        tether::accept_with(tcp, &config, |_| Ok(Accept::default())).await
    });
    let _silent = TcpStream::connect(addr).await.unwrap();
    let err = tokio::time::timeout(Duration::from_secs(5), server).await.unwrap().unwrap().unwrap_err();
    assert!(err.is_timeout(), "{err}");
}

#[tokio::test]
async fn close_timeout_drops_a_peer_that_never_answers() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let config = Config { close_timeout: Duration::from_millis(300), ..Config::default() };
        let mut ws = tether::accept_with(tcp, &config, |_| Ok(Accept::default())).await.unwrap();
        ws.close(1000, "").await
    });
    // A client that completes the handshake, then never reads or answers.
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").await.unwrap();
    let err = tokio::time::timeout(Duration::from_secs(5), server).await.unwrap().unwrap().unwrap_err();
    assert!(err.is_timeout(), "{err}");
}

#[tokio::test]
async fn client_errors_are_clear() {
    // Refused: nothing listens on this port.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let err = tether::connect(&format!("ws://127.0.0.1:{port}")).await.unwrap_err();
    assert!(matches!(&err, Error::Io(e) if e.kind() == std::io::ErrorKind::ConnectionRefused), "{err}");
    assert!(err.to_string().contains(&port.to_string()));
    // Bad URL.
    assert!(matches!(tether::connect("http//nope").await.unwrap_err(), Error::InvalidUrl(_)));
    // A plain HTTP server answering 404.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 1024];
        let _ = tcp.read(&mut buf).await;
        tcp.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n").await.unwrap();
    });
    let err = tether::connect(&format!("ws://{addr}")).await.unwrap_err();
    assert_eq!(err.http_status(), Some(404), "{err}");
}

#[tokio::test]
async fn send_waits_at_the_high_water_mark_instead_of_growing() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // A client that connects and then never reads.
    let _client = tokio::spawn(async move {
        let ws = tether::connect(&format!("ws://{addr}")).await.unwrap();
        tokio::time::sleep(Duration::from_secs(30)).await;
        drop(ws);
    });
    let (tcp, _) = listener.accept().await.unwrap();
    let config = Config { write_buffer_high_water: 64 * 1024, ..Config::default() };
    let mut ws = tether::accept_with(tcp, &config, |_| Ok(Accept::default())).await.unwrap();
    let chunk = vec![7u8; 16 * 1024];
    let mut queued = 0usize;
    let stalled = loop {
        match tokio::time::timeout(Duration::from_millis(500), ws.feed(chunk.clone())).await {
            Ok(Ok(())) => queued += chunk.len(),
            Ok(Err(e)) => panic!("{e}"),
            Err(_) => break true,
        }
        assert!(ws.pending_len() <= 64 * 1024 + chunk.len() + 16, "queue grew to {}", ws.pending_len());
        if queued > 256 << 20 {
            break false;
        }
    };
    assert!(stalled, "feed never applied backpressure");
}

#[test]
fn sizes_stay_small() {
    // The per-connection footprint: these live for the whole connection.
    let ws = std::mem::size_of::<WebSocket<TcpStream>>();
    let conn = std::mem::size_of::<tether_proto::Connection>();
    println!("WebSocket<TcpStream> = {ws} bytes, Connection = {conn} bytes");
    assert!(ws <= 512, "WebSocket<TcpStream> grew to {ws} bytes");
}
