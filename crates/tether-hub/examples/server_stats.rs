//! The server's own figures on the `$sys:stats` topic, for a live
//! dashboard: [`Hub::start_stats`] publishes them once per interval (keyed
//! by node id); a connection whose room starts with `/$sys` may read them
//! (`tether serve` admits it with the metrics token), others may not.
//!
//! cargo run -p tether-hub --example server_stats
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;
use tether::{ClientBuilder, Message};
use tether_hub::{Hub, HubConfig, MemoryBroker, PROTOCOL_V1};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // ANCHOR: server
    let hub = Hub::new(HubConfig::default(), Arc::new(MemoryBroker::new()));
    hub.start_stats(Duration::from_secs(1));
    // ANCHOR_END: server
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(tether_hub::serve(hub.clone(), listener, tether::Config::default(), std::future::pending()));

    // ANCHOR: client
    let (mut ws, _) = ClientBuilder::new(format!("ws://{addr}/$sys/dashboard")).protocol(PROTOCOL_V1).connect().await?;
    ws.send(r#"{"type":"subscribe","topic":"$sys:stats"}"#).await?;
    let mut seen = 0;
    while let Some(Ok(Message::Text(text))) = ws.recv().await {
        let m: Value = serde_json::from_str(text.as_str())?;
        if m["type"] == "message" && m["topic"] == "$sys:stats" {
            let s = &m["content"];
            println!("node {}: {} connections, {} msg/s in, {} msg/s out", s["node"], s["connections"], s["messages_in_per_s"], s["messages_out_per_s"]);
            seen += 1;
            if seen == 3 {
                break;
            }
        }
    }
    // ANCHOR_END: client
    Ok(())
}
