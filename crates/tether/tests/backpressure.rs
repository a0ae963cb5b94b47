//! A peer that sends but never reads cannot grow a WebSocket's write buffer
//! through the replies the protocol obliges (pongs): reading stops at the
//! high-water mark and TCP-style backpressure reaches the peer. And when the
//! two halves of a split socket both wait on a full socket, neither misses
//! its wakeup.

use std::time::Duration;
use tether::{Config, Message, Role, WebSocket};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::time::timeout;

const PINGS: usize = 10_000;

/// A masked ping frame with a 125-byte payload, as a client sends it.
fn masked_ping() -> Vec<u8> {
    let mask = [0x12, 0x34, 0x56, 0x78];
    let mut f = vec![0x89, 0x80 | 125];
    f.extend_from_slice(&mask);
    f.extend((0..125).map(|i| (i as u8) ^ mask[i % 4]));
    f
}

/// Spawn a peer that writes `PINGS` pings and never reads; returns how many
/// it managed to write so far (shared) and its task.
fn flood(mut peer: DuplexStream) -> (std::sync::Arc<std::sync::atomic::AtomicUsize>, tokio::task::JoinHandle<DuplexStream>) {
    let written = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = written.clone();
    let task = tokio::spawn(async move {
        let ping = masked_ping();
        for _ in 0..PINGS {
            if peer.write_all(&ping).await.is_err() {
                break;
            }
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        peer
    });
    (written, task)
}

fn server_config() -> Config {
    Config { write_buffer_high_water: 8 * 1024, ..Config::default() }
}

#[tokio::test]
async fn pongs_never_grow_the_write_buffer_past_the_high_water_mark() {
    let (server_io, peer) = tokio::io::duplex(4096);
    let mut ws = WebSocket::from_raw(server_io, Role::Server, &server_config(), &[]);
    let (written, task) = flood(peer);
    let mut pings = 0;
    while let Ok(Some(Ok(msg))) = timeout(Duration::from_millis(300), ws.recv()).await {
        assert!(matches!(msg, Message::Ping(_)));
        pings += 1;
        // At most one pong past the mark.
        assert!(ws.pending_len() <= 8 * 1024 + 127, "write buffer grew to {} bytes", ws.pending_len());
    }
    assert!(pings < PINGS / 10, "the server kept reading pings it could not answer: {pings}");
    assert!(written.load(std::sync::atomic::Ordering::Relaxed) < PINGS, "the peer was never pushed back");
    assert!(!task.is_finished());
    task.abort();
}

#[tokio::test]
async fn the_split_reader_stops_reading_when_its_pongs_cannot_be_written() {
    let (server_io, peer) = tokio::io::duplex(4096);
    let ws = WebSocket::from_raw(server_io, Role::Server, &server_config(), &[]);
    let (mut reader, _writer) = ws.split();
    let (written, task) = flood(peer);
    let mut pings = 0;
    while let Ok(Some(Ok(_))) = timeout(Duration::from_millis(300), reader.recv()).await {
        pings += 1;
    }
    assert!(pings < PINGS / 10, "the reader kept reading pings it could not answer: {pings}");
    assert!(written.load(std::sync::atomic::Ordering::Relaxed) < PINGS);
    task.abort();
}

#[tokio::test]
async fn a_blocked_writer_still_wakes_when_the_reader_answers_a_ping() {
    // The writer half waits on a full socket; meanwhile a ping arrives and
    // the reader half writes its pong on the same socket (taking over the
    // socket's write waker). When the peer finally reads, the writer must
    // make progress.
    let (server_io, mut peer) = tokio::io::duplex(1024);
    let ws = WebSocket::from_raw(server_io, Role::Server, &Config::default(), &[]);
    let (mut reader, mut writer) = ws.split();
    let big = vec![7u8; 256 * 1024];
    let sender = tokio::spawn(async move { writer.send(Message::binary(big)).await.map(|_| writer) });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!sender.is_finished(), "the socket should be full");
    let reads = tokio::spawn(async move {
        while let Some(Ok(_)) = reader.recv().await {}
    });
    peer.write_all(&masked_ping()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Now read everything the server writes: the 256 KiB message (and the pong).
    let mut total = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    let drained = timeout(Duration::from_secs(5), async {
        while total < 256 * 1024 {
            let n = peer.read(&mut buf).await.unwrap();
            assert!(n > 0);
            total += n;
        }
    })
    .await;
    assert!(drained.is_ok(), "the writer stalled after the reader wrote a pong: {total} bytes arrived");
    let writer = timeout(Duration::from_secs(5), sender).await.expect("send finished").unwrap();
    assert!(writer.is_ok());
    reads.abort();
}
