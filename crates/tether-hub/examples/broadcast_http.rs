//! A broadcast server attached to an HTTP server: the tutorial's first
//! example. `GET /` is a page; a WebSocket on `/ws` gets a welcome line and
//! every text message is broadcast to every open client (sender included).
//!
//! cargo run -p tether-hub --example broadcast_http   # then open http://127.0.0.1:3000
use axum::{response::Html, routing::get, Router};
use std::sync::Arc;
use tether::axum::WebSocketUpgrade;
use tether_hub::{ConnInfo, Hub, HubConfig, MemoryBroker};

const PAGE: &str = r#"<input id=i><script>
const ws = new WebSocket(`ws://${location.host}/ws`);
ws.onmessage = (e) => document.body.append(e.data, document.createElement("br"));
i.onchange = () => { ws.send(i.value); i.value = ""; };
</script>"#;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let hub = Hub::new(HubConfig::default(), Arc::new(MemoryBroker::new()));
    let app = Router::new().route("/", get(|| async { Html(PAGE) })).route(
        "/ws",
        get(move |ws: WebSocketUpgrade| async move {
            ws.on_upgrade(move |socket| async move { hub.run_connection(socket, ConnInfo::new("/ws")).await })
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    println!("open http://{}", listener.local_addr()?);
    axum::serve(listener, app).await
}
