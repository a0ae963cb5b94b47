//! permessage-deflate interop with Python's `websockets` (compression on,
//! its default): a Python client against our server and our client against
//! a Python server, with and without context takeover on our side. Needs
//! `python3` with `websockets` (scripts/deps.sh installs it); `TETHER_PYTHON`
//! picks another interpreter.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;
use tether::{Accept, ClientBuilder, CloseCode, Config, DeflateConfig, Message};
use tokio::net::TcpListener;

fn python() -> String {
    let py = std::env::var("TETHER_PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = Command::new(&py).args(["-c", "import websockets"]).status().map(|s| s.success()).unwrap_or(false);
    assert!(ok, "{py} with the `websockets` package is required: pip install websockets");
    py
}

fn peer_script() -> String {
    format!("{}/tests/interop/deflate_peer.py", env!("CARGO_MANIFEST_DIR"))
}

fn configs() -> [(DeflateConfig, &'static str); 2] {
    [
        (DeflateConfig::default(), "permessage-deflate; server_no_context_takeover; client_no_context_takeover"),
        // Python offers client_max_window_bits; we keep the full window.
        (DeflateConfig { context_takeover: true, threshold: 0, ..DeflateConfig::default() }, "permessage-deflate"),
    ]
}

#[tokio::test]
async fn python_client_against_our_server() {
    let py = python();
    for (deflate, expected) in configs() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let config = Config { deflate: Some(deflate), ..Config::default() };
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut ws = tether::accept_with(tcp, &config, |_| Ok(Accept::default())).await.unwrap();
            let params = ws.connection().deflate_params().copied();
            while let Some(Ok(msg)) = ws.recv().await {
                if msg.is_data() {
                    ws.send(msg).await.unwrap();
                }
            }
            (params, ws.was_clean(), ws.close_code())
        });
        let py = py.clone();
        let out = tokio::task::spawn_blocking(move || Command::new(py).arg(peer_script()).arg("client").arg(format!("ws://{addr}/")).output().unwrap())
            .await
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "python client failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
        assert!(stdout.contains(&format!("extensions: {expected}\n")), "{stdout}");
        let (params, clean, code) = tokio::time::timeout(Duration::from_secs(10), server).await.unwrap().unwrap();
        assert!(params.is_some(), "deflate negotiated");
        assert!(clean);
        assert_eq!(code, CloseCode::NORMAL);
    }
}

#[tokio::test]
async fn our_client_against_python_server() {
    let py = python();
    // Python's server answers with 12-bit windows for both sides.
    let answers = [
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=12; client_max_window_bits=12",
        "permessage-deflate; server_max_window_bits=12; client_max_window_bits=12",
    ];
    for ((deflate, _), answer) in configs().into_iter().zip(answers) {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut child = Command::new(&py).arg(peer_script()).arg("server").arg(port.to_string()).stdout(Stdio::piped()).spawn().unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        assert_eq!(lines.next().unwrap().unwrap(), "ready");

        let takeover = deflate.context_takeover;
        let config = Config { deflate: Some(deflate), ..Config::default() };
        let (mut ws, _) = ClientBuilder::new(format!("ws://127.0.0.1:{port}/")).config(config).connect().await.unwrap();
        let params = *ws.connection().deflate_params().expect("deflate negotiated");
        assert_eq!((params.server_max_window_bits, params.client_max_window_bits), (Some(12), Some(12)));
        let text = "{\"event\":\"tick\",\"data\":\"ünïcödé\"} ".repeat(300);
        for _ in 0..3 {
            ws.send(text.as_str()).await.unwrap();
            assert_eq!(ws.recv().await.unwrap().unwrap(), Message::text(text.clone()));
        }
        let big: Vec<u8> = (0..3_000_000u32).map(|i| (i * 31 % 253) as u8).collect();
        ws.send(big.clone()).await.unwrap();
        assert_eq!(ws.recv().await.unwrap().unwrap(), Message::binary(big));
        ws.send("tiny").await.unwrap();
        assert_eq!(ws.recv().await.unwrap().unwrap(), Message::text("tiny"));
        assert_eq!(ws.connection().holds_deflate_state(), (takeover, takeover));
        ws.close(CloseCode::GOING_AWAY, "bye").await.unwrap();
        assert!(ws.was_clean());
        let rest = tokio::task::spawn_blocking(move || lines.map(Result::unwrap).collect::<Vec<_>>()).await.unwrap();
        assert_eq!(rest, vec![format!("extensions: {answer}"), "closed 1001 bye".to_string()]);
        child.wait().unwrap();
    }
}
