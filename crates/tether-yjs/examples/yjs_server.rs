//! A y-websocket server on its own: documents at ws://127.0.0.1:1234/yjs/<name>,
//! kept in ./yjs-documents. `tether serve` does the same next to its other
//! endpoints (`--yjs-dir`).
//!
//!   cargo run -p tether-yjs --example yjs_server
//!
//! Several of them sharing documents through Redis (feature `redis`): each
//! keeps them in Redis and relays every change to the others.
//!
//!   YJS_REDIS=redis://127.0.0.1:6379 YJS_LISTEN=127.0.0.1:1235 \
//!     cargo run -p tether-yjs --features redis --example yjs_server
//!
//! and from Node (npm i yjs y-websocket ws):
//!
//! ```js
//! import * as Y from "yjs";
//! import { WebsocketProvider } from "y-websocket";
//! import WebSocket from "ws";
//! const doc = new Y.Doc();
//! new WebsocketProvider("ws://127.0.0.1:1234/yjs", "notes", doc, { WebSocketPolyfill: WebSocket });
//! doc.getText("t").insert(0, "hello");
//! ```

use std::sync::Arc;
use tether_yjs::{DirStore, Yjs, YjsConfig};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let yjs = match std::env::var("YJS_REDIS") {
        #[cfg(feature = "redis")]
        Ok(url) => {
            let share = tether_yjs::RedisShare::open(&url)?;
            let yjs = Yjs::with_relay(YjsConfig::default(), Some(share.clone()), Some(share.clone()));
            share.listen(&yjs);
            yjs
        }
        _ => Yjs::new(YjsConfig::default(), Some(Arc::new(DirStore::open("yjs-documents")?))),
    };
    let addr = std::env::var("YJS_LISTEN").unwrap_or_else(|_| "127.0.0.1:1234".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("y-websocket on ws://{addr}/yjs/<document>");
    loop {
        let (tcp, _) = listener.accept().await?;
        let yjs = yjs.clone();
        tokio::spawn(async move {
            let config = tether::Config::default();
            let mut path = String::new();
            let accepted = tether::accept_with(tcp, &config, |req| {
                path = req.path().to_string();
                match tether_yjs::document_name(&path) {
                    Some(_) => Ok(tether::Accept::default()),
                    None => Err(tether::Reject::new(404, "connect to /yjs/<document>")),
                }
            })
            .await;
            if let Ok(ws) = accepted {
                if let Some(name) = tether_yjs::document_name(&path) {
                    yjs.run_connection(ws, name).await;
                }
            }
        });
    }
}
