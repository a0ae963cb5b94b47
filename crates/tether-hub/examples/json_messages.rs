//! JSON envelopes with clear errors: clients that offer the `tether.v1`
//! subprotocol send `{"type":"chat","content":"Hello"}` and get
//! `{"type":"message",...}` back; bad JSON gets `{"type":"error",...}` and the
//! connection stays open. Try it with the client half below:
//!
//! cargo run -p tether-hub --example json_messages
use std::sync::Arc;
use tether::{ClientBuilder, Message};
use tether_hub::{ConnInfo, Hub, HubConfig, MemoryBroker, PROTOCOL_V1};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let hub = Hub::new(HubConfig::default(), Arc::new(MemoryBroker::new()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("ws://{}/chat", listener.local_addr()?);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let hub = hub.clone();
            tokio::spawn(async move {
                let accept = |req: &tether::Request| {
                    let protocol = req.protocols().contains(&PROTOCOL_V1).then(|| PROTOCOL_V1.to_string());
                    Ok(tether::Accept { protocol, ..Default::default() })
                };
                if let Ok(ws) = tether::accept_with(tcp, &tether::Config::default(), accept).await {
                    hub.run_connection(ws, ConnInfo::new("/chat")).await;
                }
            });
        }
    });

    let (mut ws, _) = ClientBuilder::new(&url).protocol(PROTOCOL_V1).connect().await?;
    ws.send(r#"{"type":"chat","content":"Hello","id":1}"#).await?;
    ws.send(r#"{"type":"chat""#).await?; // malformed: answered with an error envelope
    for _ in 0..5 {
        if let Some(Ok(Message::Text(text))) = ws.recv().await {
            println!("{text}");
        }
    }
    ws.close(1000, "done").await?;
    Ok(())
}
