//! Graceful drain and shedding of `tether serve` (src/admin.rs,
//! tether-hub's src/drain.rs): the operator API, `/health` while draining,
//! SIGTERM with a drain window, and the 1012 close with its reconnect hint.
//! The two-node drain behind nginx with 2,000 clients is tests/drain_nodes.rs.

mod common;

use common::{http_get, http_request, metric, Server};
use std::time::Duration;
use tether::{CloseCode, Message, WebSocket};
use tokio::time::timeout;

type Ws = WebSocket<tether::MaybeTlsStream>;

const AUTH: &str = "Authorization: Bearer s3cret\r\n";

async fn plain(server: &Server) -> Ws {
    let mut ws = tether::connect(&server.url("/lobby")).await.unwrap();
    match timeout(Duration::from_secs(10), ws.recv()).await.unwrap() {
        Some(Ok(Message::Text(t))) => assert!(t.starts_with("Welcome"), "{t}"),
        other => panic!("expected the welcome, got {other:?}"),
    }
    ws
}

/// Wait for the close of `ws` (skipping other messages), up to `within`:
/// its code and reason, or `None` if it stayed open.
async fn close_of(ws: &mut Ws, within: Duration) -> Option<(CloseCode, String)> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, ws.recv()).await {
            Err(_) => return None,
            Ok(Some(Ok(Message::Close(Some(frame))))) => return Some((frame.code, frame.reason.to_string())),
            Ok(Some(Ok(_))) => continue,
            Ok(other) => panic!("expected a close frame, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn the_operator_api_needs_its_token_and_checks_its_input() {
    let off = Server::start(&[]);
    assert_eq!(http_request(off.port, "POST", "/admin/drain", AUTH).await.0, 404, "no --admin-token: the API is off");
    let server = Server::start(&["--admin-token", "s3cret"]);
    let (status, body) = http_request(server.port, "POST", "/admin/drain", "").await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(http_request(server.port, "POST", "/admin/drain", "Authorization: Bearer wrong\r\n").await.0, 401);
    assert_eq!(http_request(server.port, "GET", "/admin/drain", AUTH).await.0, 405);
    for bad in ["/admin/shed", "/admin/shed?fraction=0", "/admin/shed?fraction=1.5", "/admin/shed?fraction=x"] {
        let (status, body) = http_request(server.port, "POST", bad, AUTH).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(body.contains("fraction"), "{body}");
    }
    assert_eq!(http_request(server.port, "POST", "/admin/nothing", AUTH).await.0, 404);
    // The server API's key works too.
    let keyed = Server::start(&["--api-key", "k3y"]);
    assert_eq!(http_request(keyed.port, "POST", "/admin/resume", "X-API-Key: wrong\r\n").await.0, 401);
    assert_eq!(http_request(keyed.port, "POST", "/admin/resume", "X-API-Key: k3y\r\n").await.0, 200);
    // Nothing above drained the node.
    assert_eq!(http_get(server.port, "/health").await.0, 200);
}

#[tokio::test]
async fn shed_closes_that_fraction_with_1012_and_a_hint_within_the_window() {
    let window = Duration::from_secs(1);
    let server = Server::start(&["--admin-token", "s3cret", "--drain-window", "1s"]);
    let mut clients = Vec::new();
    for _ in 0..8 {
        clients.push(plain(&server).await);
    }
    let (status, body) = http_request(server.port, "POST", "/admin/shed?fraction=0.5", AUTH).await;
    assert_eq!(status, 202, "{body}");
    let reply: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(reply["shedding"], 4, "{reply}");
    // Shedding is rebalancing, not draining: the node still takes clients.
    assert_eq!(http_get(server.port, "/health").await.0, 200);
    let mut closed = 0;
    let mut open = Vec::new();
    // One deadline for all: the shed is over by the end of its window.
    let deadline = tokio::time::Instant::now() + window + Duration::from_secs(2);
    for mut ws in clients {
        match close_of(&mut ws, deadline.saturating_duration_since(tokio::time::Instant::now())).await {
            Some((code, reason)) => {
                assert_eq!(code, CloseCode::SERVICE_RESTART, "{reason}");
                let hint = tether::v1::reconnect_hint(&reason).unwrap_or_else(|| panic!("no hint in {reason:?}"));
                assert!(hint <= window, "hint {hint:?} beyond the window");
                closed += 1;
            }
            None => open.push(ws),
        }
    }
    assert_eq!(closed, 4, "half of 8 shed");
    // The others are untouched: they still chat.
    let ws = &mut open[0];
    ws.send("still here").await.unwrap();
    loop {
        match timeout(Duration::from_secs(5), ws.recv()).await.unwrap() {
            Some(Ok(Message::Text(t))) if t.ends_with("still here") => break,
            Some(Ok(_)) => continue,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(metric(server.port, "tether_drained_connections_total").await, 4.0);
}

#[tokio::test]
async fn drain_refuses_new_clients_reports_503_and_resume_undoes_it() {
    let server = Server::start(&["--admin-token", "s3cret", "--drain-window", "500ms"]);
    let mut ws = plain(&server).await;
    let (status, body) = http_request(server.port, "POST", "/admin/drain", AUTH).await;
    assert_eq!(status, 202, "{body}");
    let (status, body) = http_get(server.port, "/health").await;
    assert_eq!(status, 503, "{body}");
    let health: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!((health["status"].as_str(), health["draining"].as_bool()), (Some("draining"), Some(true)), "{health}");
    let err = tether::connect(&server.url("/lobby")).await.unwrap_err();
    assert_eq!(err.http_status(), Some(503), "a draining node refuses upgrades");
    let (code, reason) = close_of(&mut ws, Duration::from_secs(3)).await.expect("closed by the drain");
    assert_eq!(code, CloseCode::SERVICE_RESTART);
    assert!(tether::v1::reconnect_hint(&reason).is_some(), "{reason}");
    assert_eq!(http_request(server.port, "POST", "/admin/resume", AUTH).await.0, 200);
    assert_eq!(http_get(server.port, "/health").await.0, 200);
    drop(plain(&server).await);
}

#[tokio::test]
async fn sigterm_drains_over_the_window_then_exits_0() {
    let mut server = Server::start(&["--drain-window", "1s"]);
    let mut clients = Vec::new();
    for _ in 0..6 {
        clients.push(plain(&server).await);
    }
    server.signal("TERM");
    // Still answering while it drains: /health says so (once the signal
    // has arrived: `kill` returns before the server handles it).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (status, body) = http_get(server.port, "/health").await;
        if status == 503 {
            assert!(body.contains(r#""status":"draining""#), "{body}");
            break;
        }
        assert_eq!(status, 200, "{body}");
        assert!(tokio::time::Instant::now() < deadline, "/health never reported draining: {body}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for ws in &mut clients {
        let (code, reason) = close_of(ws, Duration::from_secs(4)).await.expect("closed by the drain");
        assert_eq!(code, CloseCode::SERVICE_RESTART, "{reason}");
    }
    assert_eq!(server.wait_exit(Duration::from_secs(10)), Some(0));
}

/// The Rust `ReconnectingClient` honours the hint: after the 1012 it waits
/// exactly the hinted delay (not its backoff), reconnects, and resumes its
/// topic with `since`/`epoch`, so every message published meanwhile
/// arrives once and in order.
#[tokio::test]
async fn the_rust_client_waits_the_hinted_delay_and_resumes_without_loss() {
    use tether::reconnect::{Event, ReconnectOptions, ReconnectingClient};
    let server = Server::start(&["--admin-token", "s3cret", "--drain-window", "1s"]);
    let options = ReconnectOptions { json: true, ..ReconnectOptions::default() };
    let mut client = ReconnectingClient::new(tether::ClientBuilder::new(server.url("/lobby")), options);
    let sender = client.sender();
    sender.subscribe("feed").await.unwrap();
    // Publishers connect after the shed (which takes only the connections
    // open at the call): the first publishes 1..=10 before it, the second
    // the rest, while the client is away and after it is back.
    let total = 60u64;
    let publisher = |from: u64, to: u64| {
        let mut publisher = ReconnectingClient::new(tether::ClientBuilder::new(server.url("/pub")), ReconnectOptions { json: true, ..ReconnectOptions::default() });
        let sender = publisher.sender();
        tokio::spawn(async move {
            for i in from..=to {
                sender.publish("feed", serde_json::json!({ "n": i })).await.unwrap();
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            // Gone before the shed: closed, not shed.
            let _ = sender.close(CloseCode::NORMAL, "done");
            while publisher.next_event().await.is_some() {}
        })
    };
    let mut publishing = Some(publisher(1, 10));
    let mut seen = Vec::new();
    let mut shed = false;
    let mut hint = None;
    let mut reconnected_after = None;
    while seen.len() < total as usize {
        let event = timeout(Duration::from_secs(20), client.next_event()).await.expect("stalled").expect("client ended");
        match event {
            Event::Message(Message::Text(t)) => {
                let v: serde_json::Value = serde_json::from_str(&t).unwrap();
                if v["type"] == "message" && v["topic"] == "feed" {
                    seen.push(v["content"]["n"].as_u64().unwrap());
                    if seen.len() == 10 && !shed {
                        shed = true;
                        publishing.take().unwrap().await.unwrap();
                        // Shed (not drain): this node takes the client back.
                        let (status, body) = http_request(server.port, "POST", "/admin/shed?fraction=1", AUTH).await;
                        assert_eq!(status, 202, "{body}");
                        assert!(body.contains(r#""shedding":1"#), "only the subscriber is open: {body}");
                        publishing = Some(publisher(11, total));
                    }
                }
            }
            Event::Close { code, reason, .. } => {
                assert_eq!(code, CloseCode::SERVICE_RESTART, "{reason}");
                hint = tether::v1::reconnect_hint(&reason);
                assert!(hint.is_some(), "{reason}");
            }
            Event::Reconnecting { delay, .. } => reconnected_after = Some(delay),
            _ => {}
        }
    }
    publishing.unwrap().await.unwrap();
    assert!(shed);
    assert_eq!(reconnected_after, hint, "the reconnect delay is the server's hint, not the backoff");
    assert_eq!(seen, (1..=total).collect::<Vec<_>>(), "every message once, in order");
}
