//! Interop with a WebSocket implementation we did not write: Python's
//! `websockets` package, started for real, as a client of our server and as
//! a server for our client. Needs `python3` with `websockets` installed
//! (`pip install websockets`; the test script installs it). Set
//! `TETHER_PYTHON` to use another interpreter.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;
use tether::{CloseCode, Message};
use tokio::net::TcpListener;

fn python() -> String {
    let py = std::env::var("TETHER_PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = Command::new(&py).args(["-c", "import websockets"]).status().map(|s| s.success()).unwrap_or(false);
    assert!(ok, "{py} with the `websockets` package is required: pip install websockets");
    py
}

fn peer_script() -> String {
    format!("{}/tests/interop/peer.py", env!("CARGO_MANIFEST_DIR"))
}

#[tokio::test]
async fn python_client_against_our_server() {
    let py = python();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut ws = tether::accept(tcp).await.unwrap();
        while let Some(Ok(msg)) = ws.recv().await {
            if msg.is_data() {
                ws.send(msg).await.unwrap();
            }
        }
        (ws.was_clean(), ws.close_code())
    });
    let out = tokio::task::spawn_blocking(move || Command::new(py).arg(peer_script()).arg("client").arg(format!("ws://{addr}/")).output().unwrap())
        .await
        .unwrap();
    assert!(out.status.success(), "python client failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let (clean, code) = tokio::time::timeout(Duration::from_secs(10), server).await.unwrap().unwrap();
    assert!(clean);
    assert_eq!(code, CloseCode::NORMAL);
}

#[tokio::test]
async fn our_client_against_python_server() {
    let py = python();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut child = Command::new(py).arg(peer_script()).arg("server").arg(port.to_string()).stdout(Stdio::piped()).spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "ready");

    let mut ws = tether::connect(&format!("ws://127.0.0.1:{port}/")).await.unwrap();
    ws.send("ünïcode").await.unwrap();
    assert_eq!(ws.recv().await.unwrap().unwrap(), Message::text("ünïcode"));
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i * 31) as u8).collect();
    ws.send(big.clone()).await.unwrap();
    assert_eq!(ws.recv().await.unwrap().unwrap(), Message::binary(big));
    ws.send(Message::Ping("p".into())).await.unwrap();
    assert_eq!(ws.recv().await.unwrap().unwrap(), Message::Pong("p".into()));
    ws.close(CloseCode::GOING_AWAY, "bye").await.unwrap();
    assert!(ws.was_clean());
    let closed = tokio::task::spawn_blocking(move || lines.next().unwrap().unwrap()).await.unwrap();
    assert_eq!(closed, "closed 1001 bye");
    child.wait().unwrap();
}
