//! The HTTP transport's sessions (tether_hub::http), in-process: retried
//! POSTs applied once, unknown sessions, and every bound a client can fill.

use std::sync::Arc;
use std::time::Duration;
use tether_hub::http::{parse_event_id, HttpConfig, HttpError, HttpSessions, Posted};
use tether_hub::{ConnInfo, Hub, HubConfig, MemoryBroker};

fn sessions(config: HttpConfig) -> Arc<HttpSessions> {
    let hub = Hub::new(HubConfig::default(), Arc::new(MemoryBroker::new()));
    HttpSessions::new(hub, config)
}

fn chat(text: &str, id: u64) -> String {
    format!(r#"{{"type":"chat","content":"{text}","id":{id}}}"#)
}

/// Read chunks until one contains `needle` (or the stream ends); all text read.
async fn read_until(stream: &mut tether_hub::http::EventStream, needle: &str) -> String {
    let mut all = String::new();
    while !all.contains(needle) {
        match tokio::time::timeout(Duration::from_secs(10), stream.next_chunk()).await {
            Ok(Some(chunk)) => all.push_str(&chunk),
            Ok(None) => break,
            Err(_) => panic!("no {needle:?} within 10 s; got {all}"),
        }
    }
    all
}

#[tokio::test]
async fn a_retried_post_is_applied_once() {
    let http = sessions(HttpConfig::default());
    let mut stream = http.open(true, ConnInfo::new("/chat"), Box::new(())).unwrap();
    let key = stream.key().to_string();
    read_until(&mut stream, "\"welcome\"").await;
    assert_eq!(http.post(&key, 1, vec![chat("one", 1)]).unwrap(), Posted::Applied);
    assert_eq!(http.post(&key, 1, vec![chat("one", 1)]).unwrap(), Posted::Duplicate);
    assert_eq!(http.post(&key, 2, vec![chat("two", 2)]).unwrap(), Posted::Applied);
    let text = read_until(&mut stream, "\"two\"").await;
    assert_eq!(text.matches("\"content\":\"one\"").count(), 1, "{text}");
    assert_eq!(text.matches("\"type\":\"ack\"").count(), 2, "{text}");
    // Skipping a number is refused, with the one expected.
    assert_eq!(http.post(&key, 5, vec![]), Err(HttpError::OutOfOrder { expected: 3 }));
}

#[tokio::test]
async fn unknown_sessions_are_refused() {
    let http = sessions(HttpConfig::default());
    assert_eq!(http.post("nobody-1.00", 1, vec![]), Err(HttpError::UnknownSession));
    assert_eq!(http.resume("nobody-1.00", 0).unwrap_err(), HttpError::UnknownSession);
    // A real session id without its secret is not the session either.
    let stream = http.open(true, ConnInfo::new("/r"), Box::new(())).unwrap();
    let id = stream.key().split('.').next().unwrap().to_string();
    assert_eq!(http.post(&id, 1, vec![]), Err(HttpError::UnknownSession));
}

#[tokio::test]
async fn sessions_per_node_are_bounded() {
    let http = sessions(HttpConfig { max_sessions: 3, ..HttpConfig::default() });
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(http.open(true, ConnInfo::new("/r"), Box::new(())).unwrap());
    }
    assert_eq!(http.open(true, ConnInfo::new("/r"), Box::new(())).unwrap_err(), HttpError::TooManySessions);
    assert_eq!(http.len(), 3);
}

#[tokio::test]
async fn batches_are_bounded() {
    let http = sessions(HttpConfig { max_batch: 4, ..HttpConfig::default() });
    let stream = http.open(true, ConnInfo::new("/r"), Box::new(())).unwrap();
    let batch = (0..5).map(|i| chat("x", i)).collect();
    assert_eq!(http.post(stream.key(), 1, batch), Err(HttpError::BatchTooLarge { max: 4 }));
}

#[tokio::test]
async fn resume_replays_within_the_window_and_says_history_gap_beyond() {
    let http = sessions(HttpConfig { window_events: 8, ..HttpConfig::default() });
    let mut stream = http.open(true, ConnInfo::new("/chat"), Box::new(())).unwrap();
    let key = stream.key().to_string();
    for seq in 1..=30 {
        http.post(&key, seq, vec![chat(&format!("m{seq}"), seq)]).unwrap();
    }
    let text = read_until(&mut stream, "\"m30\"").await;
    let last_id = text.lines().filter_map(|l| l.strip_prefix("id: ")).next_back().unwrap().to_string();
    let (k, last) = parse_event_id(&last_id).unwrap();
    assert_eq!(k, key);
    drop(stream);
    // Just behind the newest: replayed, no gap.
    let mut resumed = http.resume(&key, last - 2).unwrap();
    let again = read_until(&mut resumed, &format!("{key}:{last}")).await;
    assert!(!again.contains("history_gap"), "{again}");
    assert_eq!(again.matches("\nid: ").count() + usize::from(again.starts_with("id: ")), 2, "{again}");
    // From the start: only the window is kept, and the stream says so.
    let mut from_start = http.resume(&key, 0).unwrap();
    let replay = read_until(&mut from_start, &format!("{key}:{last}")).await;
    assert!(replay.contains("\"code\":\"history_gap\""), "{replay}");
    assert!(replay.matches("id: ").count() <= 8, "at most the window is replayed: {replay}");
}

#[tokio::test]
async fn a_new_stream_takes_over_and_the_old_one_ends() {
    let http = sessions(HttpConfig::default());
    let mut first = http.open(true, ConnInfo::new("/chat"), Box::new(())).unwrap();
    let key = first.key().to_string();
    read_until(&mut first, "\"welcome\"").await;
    let _second = http.resume(&key, 0).unwrap();
    assert_eq!(tokio::time::timeout(Duration::from_secs(10), first.next_chunk()).await.unwrap(), None);
}
