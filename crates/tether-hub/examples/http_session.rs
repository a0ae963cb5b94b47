//! The HTTP fallback transport in-process: open a session, POST a batch
//! (twice: the retry is not applied again), print the SSE text a server
//! would write into its `text/event-stream` response.
//!
//! `cargo run -p tether-hub --example http_session`. Against a running
//! `tether serve`, the same with curl:
//! `curl -N -H 'Accept: text/event-stream' 'http://127.0.0.1:8080/chat?protocol=tether.v1'`
//! then `curl -d '["{\"type\":\"chat\",\"content\":\"hi\"}"]' 'http://127.0.0.1:8080/chat?session=KEY&seq=1'`.

use std::sync::Arc;
use tether_hub::http::{HttpConfig, HttpSessions};
use tether_hub::{ConnInfo, Hub, HubConfig, MemoryBroker};

#[tokio::main]
async fn main() {
    let hub = Hub::new(HubConfig::default(), Arc::new(MemoryBroker::new()));
    let http = HttpSessions::new(hub, HttpConfig::default());
    let mut stream = http.open(true, ConnInfo::new("/chat"), Box::new(())).expect("a free session slot");
    let key = stream.key().to_string();
    let batch = vec![r#"{"type":"chat","content":"hello over HTTP","id":1}"#.to_string()];
    println!("first POST: {:?}", http.post(&key, 1, batch.clone()));
    println!("retried POST: {:?}", http.post(&key, 1, batch));
    let mut text = String::new();
    while !text.contains("\"ack\"") {
        text.push_str(&stream.next_chunk().await.expect("the session is open"));
    }
    print!("{text}");
}
