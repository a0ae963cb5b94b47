//! Per-connection footprint: the future that runs each connection lives as
//! long as the connection, so its size is memory per idle client.
use std::sync::Arc;
use tether_hub::{ConnInfo, Hub, HubConfig, MemoryBroker};

#[tokio::test]
async fn connection_future_stays_small() {
    let hub = Hub::new(HubConfig::default(), Arc::new(MemoryBroker::new()));
    let (a, _b) = tokio::io::duplex(64);
    let ws = tether::WebSocket::from_raw(a, tether::Role::Server, &tether::Config::default(), &[]);
    let fut = hub.run_connection(ws, ConnInfo { room: "/".into() });
    let size = std::mem::size_of_val(&fut);
    println!("run_connection future: {size} bytes");
    assert!(size <= 1024, "run_connection future grew to {size} bytes");
}
