//! A stock ticker on the hub: the server publishes quotes keyed by symbol
//! ([`Hub::publish_json`]), so a client that falls behind is sent the latest
//! price of each symbol (conflation); a client that subscribes with
//! `"delta":"merge-patch"` is sent only what changed, and rebuilds each
//! quote with `tether::v1::delta::apply`.
//!
//! cargo run -p tether-hub --example ticker
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;
use tether::{ClientBuilder, Message};
use tether_hub::{Hub, HubConfig, MemoryBroker, PROTOCOL_V1};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // ANCHOR: server
    let hub = Hub::new(HubConfig::default(), Arc::new(MemoryBroker::new()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("ws://{}/ticker", listener.local_addr()?);
    tokio::spawn(tether_hub::serve(hub.clone(), listener, tether::Config::default(), std::future::pending()));
    // The feed: one topic, the symbol as the conflation key.
    let feed = hub.clone();
    tokio::spawn(async move {
        for tick in 0u32.. {
            for (i, symbol) in ["TTR", "ACME", "INIT"].iter().enumerate() {
                let price = 100.0 + f64::from((tick * 7 + i as u32 * 13) % 50) / 10.0;
                let quote = json!({"symbol": symbol, "name": format!("{symbol} Holdings"), "price": price, "volume": tick * 100});
                let _ = feed.publish_json("prices", Some(symbol), &quote.to_string());
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    });
    // ANCHOR_END: server

    // ANCHOR: client
    let (mut ws, _) = ClientBuilder::new(&url).protocol(PROTOCOL_V1).connect().await?;
    ws.send(r#"{"type":"subscribe","topic":"prices","delta":"merge-patch"}"#).await?;
    let mut held: HashMap<String, Value> = HashMap::new(); // the last quote per symbol
    let mut n = 0;
    while let Some(Ok(Message::Text(text))) = ws.recv().await {
        let m: Value = serde_json::from_str(text.as_str())?;
        if m["type"] != "message" {
            continue;
        }
        let key = m["key"].as_str().unwrap_or_default().to_string();
        let quote = match m.get("patch") {
            Some(patch) => {
                let mut quote = held[&key].clone();
                tether::v1::delta::apply(&mut quote, patch);
                quote
            }
            None => m["content"].clone(),
        };
        println!("{:>5} {} ({} bytes on the wire{})", key, quote["price"], text.len(), if m.get("patch").is_some() { ", a patch" } else { "" });
        held.insert(key, quote);
        n += 1;
        if n == 12 {
            break;
        }
    }
    // ANCHOR_END: client
    Ok(())
}
