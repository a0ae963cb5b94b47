//! Echo server on fastwebsockets, following its `echo_server` example: hyper serves the
//! HTTP/1.1 upgrade, `upgrade::upgrade` answers it, and a FragmentCollector yields whole
//! messages which are written straight back. Pings and closes are handled by the crate.

#[path = "../common.rs"]
mod common;

use fastwebsockets::{upgrade, FragmentCollector, OpCode, WebSocketError};
use http_body_util::Empty;
use hyper::{
    body::{Bytes, Incoming},
    server::conn::http1,
    service::service_fn,
    Request, Response,
};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Whole-message limit (also the crate's default), spelled out to match the other peers.
const MAX_SIZE: usize = 64 << 20;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    common::serve(handle).await
}

async fn handle(stream: TcpStream) {
    let conn = http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service_fn(server_upgrade))
        .with_upgrades();
    if let Err(e) = conn.await {
        eprintln!("http error: {e}");
    }
}

async fn server_upgrade(
    mut req: Request<Incoming>,
) -> Result<Response<Empty<Bytes>>, WebSocketError> {
    let (response, fut) = upgrade::upgrade(&mut req)?;
    tokio::spawn(async move {
        match echo(fut).await {
            Ok(()) | Err(WebSocketError::ConnectionClosed | WebSocketError::UnexpectedEOF) => {}
            Err(WebSocketError::IoError(e)) if common::is_disconnect(&e) => {}
            Err(e) => eprintln!("connection error: {e}"),
        }
    });
    Ok(response)
}

async fn echo(fut: upgrade::UpgradeFut) -> Result<(), WebSocketError> {
    let mut ws = fut.await?;
    ws.set_auto_close(true);
    ws.set_auto_pong(true);
    ws.set_max_message_size(MAX_SIZE);
    let mut ws = FragmentCollector::new(ws);
    loop {
        let frame = ws.read_frame().await?;
        match frame.opcode {
            OpCode::Close => return Ok(()),
            OpCode::Text | OpCode::Binary => ws.write_frame(frame).await?,
            _ => {}
        }
    }
}
