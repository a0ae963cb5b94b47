//! A multiplayer room: players publish their positions to a `$room:` topic
//! as often as they like; the hub sends the room one frame per tick
//! (`HubConfig::room_tick`) with every player's latest position, so each
//! client gets one frame per tick whatever the number of players.
//!
//! cargo run -p tether-hub --example game_room
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use tether::{ClientBuilder, Message};
use tether_hub::{Hub, HubConfig, MemoryBroker, PROTOCOL_V1};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // ANCHOR: server
    let config = HubConfig { room_tick: Duration::from_millis(100), ..HubConfig::default() };
    let hub = Hub::new(config, Arc::new(MemoryBroker::new()));
    // ANCHOR_END: server
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("ws://{}/game", listener.local_addr()?);
    tokio::spawn(tether_hub::serve(hub, listener, tether::Config::default(), std::future::pending()));

    // ANCHOR: client
    // Three players, each moving 60 times a second.
    for player in 0..3 {
        let (mut ws, _) = ClientBuilder::new(&url).protocol(PROTOCOL_V1).connect().await?;
        tokio::spawn(async move {
            ws.send(r#"{"type":"subscribe","topic":"$room:arena"}"#).await.ok()?;
            for step in 0u32.. {
                let position = json!({"type": "publish", "topic": "$room:arena", "content": {"x": step % 800, "y": player * 100}});
                ws.send(position.to_string()).await.ok()?;
                tokio::time::sleep(Duration::from_millis(16)).await;
            }
            Some(())
        });
    }
    // A spectator: one frame per tick, every player in it.
    let (mut ws, _) = ClientBuilder::new(&url).protocol(PROTOCOL_V1).connect().await?;
    ws.send(r#"{"type":"subscribe","topic":"$room:arena"}"#).await?;
    let mut frames = 0;
    while let Some(Ok(Message::Text(text))) = ws.recv().await {
        let m: Value = serde_json::from_str(text.as_str())?;
        if m["type"] == "message" {
            println!("tick {}: {}", m["seq"], m["content"]["players"]);
            frames += 1;
            if frames == 10 {
                break;
            }
        }
    }
    // ANCHOR_END: client
    Ok(())
}
