//! Heartbeats that find dead ("zombie") connections, on the raw library:
//! ping every interval; a client that has not answered the previous ping by
//! the next one is dropped. (`tether serve` and `tether_hub::Hub` do this for
//! you, for every connection, from one timer.)
//!
//! cargo run -p tether --example heartbeat
use std::time::Duration;
use tether::Message;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:9001").await?;
    println!("listening on ws://{}", listener.local_addr()?);
    loop {
        let (tcp, peer) = listener.accept().await?;
        tokio::spawn(async move {
            let Ok(mut ws) = tether::accept(tcp).await else { return };
            let mut ticker = tokio::time::interval(Duration::from_secs(30));
            let mut alive = true;
            loop {
                tokio::select! {
                    _ = ticker.tick() => {
                        if !alive {
                            println!("{peer}: no pong since the last ping, terminating");
                            return; // dropping the socket closes the TCP connection
                        }
                        alive = false;
                        if ws.send(Message::Ping("hb".into())).await.is_err() { return; }
                    }
                    msg = ws.recv() => match msg {
                        Some(Ok(Message::Pong(_))) => alive = true,
                        Some(Ok(msg)) if msg.is_data() => { let _ = ws.send(msg).await; }
                        Some(Ok(_)) => {}
                        _ => return,
                    },
                }
            }
        });
    }
}
