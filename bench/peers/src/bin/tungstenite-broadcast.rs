//! Broadcast server on tokio-tungstenite: every text/binary message received from any
//! client is sent to every connected client, the sender included.
//!
//! Each client has an unbounded mpsc queue drained by its own writer (as in
//! tokio-tungstenite's chat-server example), so no message is dropped for a slow reader,
//! which matches what `ws` does in bench/node/broadcast.js.

#[path = "../common.rs"]
mod common;

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
};

use futures_channel::mpsc::{unbounded, UnboundedSender};
use futures_util::{future, StreamExt, TryStreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{protocol::WebSocketConfig, Message};

const MAX_SIZE: usize = 64 << 20;

type Clients = Arc<Mutex<HashMap<u64, UnboundedSender<Message>>>>;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let clients = Clients::default();
    let next_id = Arc::new(AtomicU64::new(0));
    common::serve(move |stream| {
        handle(stream, next_id.fetch_add(1, Ordering::Relaxed), clients.clone())
    })
    .await
}

async fn handle(stream: TcpStream, id: u64, clients: Clients) {
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_SIZE))
        .max_frame_size(Some(MAX_SIZE));
    let ws = match tokio_tungstenite::accept_async_with_config(stream, Some(config)).await {
        Ok(ws) => ws,
        Err(e) => return eprintln!("handshake failed: {e}"),
    };
    let (write, read) = ws.split();
    let (tx, rx) = unbounded();
    clients.lock().unwrap().insert(id, tx);

    let incoming = read.try_for_each(|msg| {
        if msg.is_text() || msg.is_binary() {
            for peer in clients.lock().unwrap().values() {
                let _ = peer.unbounded_send(msg.clone()); // Bytes-backed: a cheap clone
            }
        }
        future::ok(())
    });
    let outgoing = rx.map(Ok).forward(write);
    // Whichever side finishes first (peer closed, write failed) ends the connection.
    future::select(Box::pin(incoming), outgoing).await;

    clients.lock().unwrap().remove(&id);
}
