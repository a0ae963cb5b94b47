//! Per-connection footprint, measured structurally (no RSS, no timing):
//! the future that runs each connection on tokio lives as long as the
//! connection, and so do a session's state and heap on the event loop.

// A counting global allocator needs `unsafe impl GlobalAlloc`.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Arc;
use tether_hub::{ConnInfo, Hub, HubConfig, MemoryBroker, Session};
use tether_proto::{Config, Connection, Role};

thread_local! {
    /// Bytes allocated minus bytes freed on this thread.
    static LIVE: Cell<i64> = const { Cell::new(0) };
    /// Allocations made minus allocations freed on this thread (each one
    /// costs the allocator's header and rounding on top of its bytes).
    static BLOCKS: Cell<i64> = const { Cell::new(0) };
}

fn add(n: i64) {
    let _ = LIVE.try_with(|c| c.set(c.get() + n));
}

fn blocks(n: i64) {
    let _ = BLOCKS.try_with(|c| c.set(c.get() + n));
}

struct Counting;

// SAFETY: every call is forwarded unchanged to the system allocator; the
// counter is a const-initialised thread-local, which never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        add(layout.size() as i64);
        blocks(1);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        add(-(layout.size() as i64));
        blocks(-1);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        add(new_size as i64 - layout.size() as i64);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

#[tokio::test]
async fn connection_future_stays_small() {
    let hub = Hub::new(HubConfig::default(), Arc::new(MemoryBroker::new()));
    let (a, _b) = tokio::io::duplex(64);
    let ws = tether::WebSocket::from_raw(a, tether::Role::Server, &tether::Config::default(), &[]);
    let fut = hub.run_connection(ws, ConnInfo::new("/"));
    let size = std::mem::size_of_val(&fut);
    println!("run_connection future: {size} bytes");
    assert!(size <= 1024, "run_connection future grew to {size} bytes");
}

/// What an idle client of `tether serve` costs beside its socket: the
/// session and its protocol state (inline, as an event loop keeps them)
/// and everything they hold on the heap (the shared queue, the session id,
/// the hub's maps, the room's subscriber entry), once the welcome is sent.
#[tokio::test]
async fn an_idle_session_and_its_connection_stay_small() {
    const N: usize = 2000;
    let hub = Hub::new(HubConfig::default(), Arc::new(MemoryBroker::new()));
    // The room exists before (its topic entry is not per connection).
    let mut keep = vec![idle(&hub)];
    keep.reserve_exact(N);
    let before = LIVE.with(Cell::get);
    let blocks_before = BLOCKS.with(Cell::get);
    for _ in 0..N {
        keep.push(idle(&hub));
    }
    let heap = (LIVE.with(Cell::get) - before) as usize / N;
    let per_blocks = (BLOCKS.with(Cell::get) - blocks_before) as f64 / N as f64;
    let inline = std::mem::size_of::<(Session, Connection)>();
    let per = heap + inline;
    println!("idle session: {per} bytes each ({inline} inline: Session {}, Connection {}; {heap} on the heap in {per_blocks:.2} blocks)", std::mem::size_of::<Session>(), std::mem::size_of::<Connection>());
    // Each heap block also costs the allocator a header and rounding
    // (16 B or more with glibc): one is left, the queue shared with the
    // hub (the room's subscriber entry and the hub's connection map are
    // table space, not blocks; the topic list holds the room inline).
    assert!(per_blocks <= 1.0, "an idle session holds {per_blocks:.2} heap blocks (at most 1)");
    // 296 B measured (#16): Session 112 (with #14's hook queue pointer),
    // Connection 184 (its buffers are one pointer each until used).
    assert!(inline <= 320, "a session and its connection grew to {inline} bytes inline");
    // 607 B measured (#16: 719 B before the protocol's buffers were boxed
    // and the room kept inline). #16's target for an idle `tether serve`
    // connection, all of it (RSS at 15,000), is 768 B.
    assert!(per <= 640, "an idle session costs {per} bytes (at most 640)");
    assert_eq!(hub.connection_count(), N + 1);
}

fn idle(hub: &Arc<Hub>) -> (Session, Connection) {
    let mut session = hub.open_session(false, ConnInfo::new("/room"));
    let mut conn = Connection::new(Role::Server, Config::default());
    session.pump(hub, &mut conn, 128 * 1024).unwrap();
    assert!(!conn.take_data_to_send().is_empty(), "the welcome was queued");
    conn.shrink_if_idle();
    (session, conn)
}
