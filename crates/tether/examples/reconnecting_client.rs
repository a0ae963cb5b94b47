//! A client that survives the network.
//!
//! Start a server (`tether serve`), then run
//!
//! ```text
//! cargo run -p tether --example reconnecting_client -- ws://127.0.0.1:8080/lobby
//! ```
//!
//! and stop and restart the server: the client reconnects with backoff,
//! renews its subscription, and sends the ticks it queued meanwhile.
//! Ctrl-C closes cleanly.

use serde_json::json;
use std::time::Duration;
use tether::reconnect::{Event, ReconnectOptions, ReconnectingClient};
use tether::{ClientBuilder, CloseCode};

#[tokio::main]
async fn main() {
    let url = std::env::args().nth(1).unwrap_or_else(|| "ws://127.0.0.1:8080/lobby".into());
    let options = ReconnectOptions { json: true, heartbeat_interval: Some(Duration::from_secs(10)), ..ReconnectOptions::default() };
    // Headers, subprotocols and TLS set on the builder apply to every attempt.
    let builder = ClientBuilder::new(url).header("User-Agent", "tether-example");
    let mut client = ReconnectingClient::new(builder, options);

    // Any task can send through a sender; while disconnected, sends are queued.
    let sender = client.sender();
    tokio::spawn(async move {
        if let Err(e) = sender.subscribe("ticks").await {
            eprintln!("subscribe failed: {e}");
        }
        for n in 1.. {
            tokio::time::sleep(Duration::from_secs(2)).await;
            match sender.publish("ticks", json!({ "tick": n })).await {
                Ok(ack) => println!("tick {n} published as #{}", ack.seq.unwrap_or_default()),
                Err(e) => println!("tick {n}: {e}"),
            }
        }
    });

    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut closing = false;
    loop {
        let event = tokio::select! {
            event = client.next_event() => event,
            _ = &mut ctrl_c, if !closing => {
                // Closes the connection; the events end after its Close.
                closing = true;
                let _ = client.close(CloseCode::NORMAL, "bye");
                continue;
            }
        };
        match event {
            Some(Event::Open { protocol, attempt }) => println!("open (subprotocol {protocol:?}, after {attempt} failed attempts)"),
            Some(Event::Message(msg)) => println!("< {}", msg.as_text().unwrap_or("(binary)")),
            Some(Event::Close { was_clean, code, reason }) => println!("close: {code} {reason:?} (clean: {was_clean})"),
            Some(Event::Error(e)) => println!("error: {e}"),
            Some(Event::Reconnecting { attempt, delay }) => println!("reconnecting in {delay:?} (attempt {attempt})"),
            Some(Event::GaveUp { attempts }) => println!("gave up after {attempts} attempts"),
            Some(other) => println!("{other:?}"),
            None => break,
        }
    }
}
