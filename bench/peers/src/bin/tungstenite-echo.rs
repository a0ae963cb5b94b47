//! Echo server on tokio-tungstenite: every text/binary message is sent back unchanged.
//! Pings are answered and closes completed by tungstenite itself.

#[path = "../common.rs"]
mod common;

use futures_util::{future, StreamExt, TryStreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{error::ProtocolError, protocol::WebSocketConfig, Error};

/// 64 MiB for both whole messages and single frames (tungstenite's frame default is 16 MiB).
const MAX_SIZE: usize = 64 << 20;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    common::serve(handle).await
}

async fn handle(stream: TcpStream) {
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_SIZE))
        .max_frame_size(Some(MAX_SIZE));
    let ws = match tokio_tungstenite::accept_async_with_config(stream, Some(config)).await {
        Ok(ws) => ws,
        Err(e) => return eprintln!("handshake failed: {e}"),
    };
    let (write, read) = ws.split();
    let result = read
        .try_filter(|msg| future::ready(msg.is_text() || msg.is_binary()))
        .forward(write)
        .await;
    match result {
        Ok(()) | Err(Error::ConnectionClosed) => {}
        Err(Error::Protocol(ProtocolError::ResetWithoutClosingHandshake)) => {}
        Err(Error::Io(e)) if common::is_disconnect(&e) => {}
        Err(e) => eprintln!("connection error: {e}"),
    }
}
