//! The backend decides (docs/auth.md, "Hooks into the backend"): connect,
//! subscribe, publish and `rpc` answered by examples/auth-backend/backend.py.
//!
//! ```sh
//! python3 examples/auth-backend/backend.py --port 9000 --webhook-secret s &
//! tether serve --config examples/auth-backend/hooks.toml &
//! cargo run -p tether-cli --example hooks_rpc -- ws://127.0.0.1:8080/
//! ```
//!
//! The connect hook admits the token `user:alice` as alice; the subscribe
//! hook lets her into `private:alice`, not `private:bob`; the publish hook
//! rewrites "darn"; the RPC hook adds two numbers.

use serde_json::json;
use tether::reconnect::{ClientError, ReconnectOptions};
use tether::{ClientBuilder, ReconnectingClient};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::args().nth(1).unwrap_or_else(|| "ws://127.0.0.1:8080/".into());
    // What the connect hook reads: a Bearer token (a real app would fetch
    // a session token from its backend here; TokenSource::fetch does that).
    let builder = ClientBuilder::new(&url).header("Authorization", "Bearer user:alice");
    let options = ReconnectOptions { json: true, reconnect: false, ..ReconnectOptions::default() };
    let mut client = ReconnectingClient::new(builder, options);
    let sender = client.sender();
    // Read the events meanwhile (the answers arrive with them).
    let reader = tokio::spawn(async move {
        while let Some(event) = client.next_event().await {
            if let tether::reconnect::Event::Message(tether::Message::Text(t)) = event {
                println!("<- {t}");
            }
        }
    });
    println!("subscribe private:alice: {:?}", sender.subscribe("private:alice").await);
    match sender.subscribe("private:bob").await {
        Err(ClientError::Refused { code, message }) => println!("subscribe private:bob: refused, {code}: {message}"),
        other => println!("subscribe private:bob: {other:?}"),
    }
    sender.subscribe("chat:lobby").await?;
    sender.publish("chat:lobby", "darn it").await?;
    println!("rpc add: {}", sender.rpc("add", json!({"a": 2, "b": 3})).await?);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    sender.close(tether::CloseCode::NORMAL, "")?;
    let _ = reader.await;
    Ok(())
}
