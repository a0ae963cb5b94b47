//! The shared `tether.v1` cases (tests/v1_cases.json), checked against the
//! Rust implementation. tests/browser/v1_cases.test.mjs checks web/tether.js
//! against the same file.

use serde_json::Value;
use std::time::Duration;
use tether::v1::envelope::{self, ClientMessage};
use tether::v1::{Action, Backoff, Heartbeat, PROTOCOL};

fn cases() -> Value {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/v1_cases.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn ms(v: &Value) -> Duration {
    Duration::from_secs_f64(v.as_f64().unwrap() / 1000.0)
}

fn close(a: Duration, b: Duration) -> bool {
    a.abs_diff(b) <= Duration::from_micros(1)
}

#[test]
fn protocol_name() {
    assert_eq!(cases()["protocol"], PROTOCOL);
    assert_eq!(tether::reconnect::TETHER_V1, PROTOCOL);
}

#[test]
fn backoff_cases() {
    let all = cases();
    let list = all["backoff"].as_array().unwrap();
    assert!(!list.is_empty());
    for case in list {
        let name = case["name"].as_str().unwrap();
        let backoff = Backoff {
            min_delay: ms(&case["min_delay_ms"]),
            max_delay: ms(&case["max_delay_ms"]),
            factor: case["factor"].as_f64().unwrap(),
            jitter: case["jitter"].as_f64().unwrap(),
        };
        let attempt = case["attempt"].as_u64().unwrap() as u32;
        let (lo, hi) = (ms(&case["delay_ms"][0]), ms(&case["delay_ms"][1]));
        let (got_lo, got_hi) = backoff.bounds(attempt);
        assert!(close(got_lo, lo) && close(got_hi, hi), "{name}: bounds {got_lo:?}..{got_hi:?}, expected {lo:?}..{hi:?}");
        for _ in 0..100 {
            let d = backoff.delay(attempt);
            assert!(d + Duration::from_micros(1) >= lo && d <= hi + Duration::from_micros(1), "{name}: {d:?} not in {lo:?}..{hi:?}");
        }
    }
}

#[test]
fn heartbeat_cases() {
    let all = cases();
    let list = all["heartbeat"].as_array().unwrap();
    assert!(!list.is_empty());
    for case in list {
        let name = case["name"].as_str().unwrap();
        let mut hb = Heartbeat::new(ms(&case["interval_ms"]), ms(&case["timeout_ms"]), Duration::ZERO);
        for (i, step) in case["steps"].as_array().unwrap().iter().enumerate() {
            let at = ms(&step["at"]);
            match step["do"].as_str().unwrap() {
                "poll" => {
                    let got = match hb.poll(at) {
                        Some(Action::SendPing) => Value::from("send_ping"),
                        Some(Action::PeerDead) => Value::from("peer_dead"),
                        None => Value::Null,
                    };
                    assert_eq!(got, step["expect"], "{name}, step {i} ({step})");
                }
                "answer" => hb.on_answer(at),
                other => panic!("{name}: unknown step {other:?}"),
            }
            if let Some(wake) = step.get("next_wake") {
                assert_eq!(hb.next_wake(), ms(wake), "{name}, step {i}: next_wake");
            }
        }
    }
}

fn kind(msg: &ClientMessage) -> &'static str {
    match msg {
        ClientMessage::Chat { .. } => "chat",
        ClientMessage::Publish { .. } => "publish",
        ClientMessage::Subscribe { .. } => "subscribe",
        ClientMessage::Unsubscribe { .. } => "unsubscribe",
        ClientMessage::Ping { .. } => "ping",
        ClientMessage::Auth { .. } => "auth",
        ClientMessage::Refresh { .. } => "refresh",
        ClientMessage::Rpc { .. } => "rpc",
    }
}

#[test]
fn envelope_cases() {
    let all = cases();
    let list = all["envelope"].as_array().unwrap();
    assert!(!list.is_empty());
    for case in list {
        let text = case["text"].as_str().unwrap();
        match (envelope::parse(text), case.get("accept"), case.get("error")) {
            (Ok(msg), Some(accept), None) => {
                assert_eq!(kind(&msg), accept, "{text}");
                if let Some(id) = case.get("id") {
                    let got = match &msg {
                        ClientMessage::Chat { id, .. }
                        | ClientMessage::Publish { id, .. }
                        | ClientMessage::Subscribe { id, .. }
                        | ClientMessage::Unsubscribe { id, .. }
                        | ClientMessage::Ping { id }
                        | ClientMessage::Auth { id, .. }
                        | ClientMessage::Refresh { id, .. } => id.clone(),
                        ClientMessage::Rpc { id, .. } => Some(id.clone()),
                    };
                    assert_eq!(got.as_ref(), Some(id), "{text}: id");
                }
            }
            (Err(e), None, Some(code)) => {
                assert_eq!(e.code, code, "{text}: {}", e.message);
                if let Some(id) = case.get("id") {
                    assert_eq!(e.id.as_ref(), Some(id), "{text}: id");
                }
            }
            (got, _, _) => panic!("{text}: got {got:?}, expected {case}"),
        }
    }
}
