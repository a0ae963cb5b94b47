//! The generator's steady state allocates nothing per message: a run three
//! times as long, with thousands more messages, makes about as many heap
//! allocations on the generator's thread as a short one. (The test servers
//! run on other threads and are not counted.)

// A counting global allocator needs `unsafe impl GlobalAlloc`.
#![allow(unsafe_code)]

mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use support::{spawn, Behaviour};
use tether_bench::{run_broadcast, run_echo, BroadcastArgs, BroadcastMode, EchoArgs, Report};

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

struct Counting;

fn count() {
    let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
}

// SAFETY: every call is forwarded unchanged to the system allocator; the
// counter is a const-initialised thread-local, which never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn allocations_in(run: impl FnOnce() -> Report) -> (u64, Report) {
    let before = ALLOCATIONS.with(Cell::get);
    let report = run();
    (ALLOCATIONS.with(Cell::get) - before, report)
}

#[test]
fn echo_allocates_nothing_per_message() {
    let url = spawn(Behaviour::Echo);
    let args = |duration| EchoArgs {
        url: url.clone(),
        connections: 4,
        size: 200,
        duration,
        pipeline: 4,
        binary: false,
        text: false,
        warmup: 0.1,
        verify_every: 1,
        pid: None,
        source_ips: 1,
        connect_timeout: 5.0,
        json: false,
    };
    let messages = |r: &Report| match r {
        Report::Echo(e) => e.messages,
        _ => unreachable!(),
    };
    let (short_allocs, short) = allocations_in(|| run_echo(&args(0.3)).unwrap());
    let (long_allocs, long) = allocations_in(|| run_echo(&args(1.0)).unwrap());
    assert!(!short.had_errors() && !long.had_errors());
    let extra_messages = messages(&long) - messages(&short);
    assert!(extra_messages > 2000, "{long:?}");
    assert!(
        long_allocs.abs_diff(short_allocs) < 100,
        "{short_allocs} allocations for the short run, {long_allocs} for one with {extra_messages} more messages"
    );
}

#[test]
fn broadcast_allocates_nothing_per_message() {
    let url = spawn(Behaviour::Broadcast);
    let args = |duration| BroadcastArgs {
        url: url.clone(),
        clients: 4,
        mode: BroadcastMode::All,
        senders: None,
        publishers: 1,
        rate: 300.0,
        size: 100,
        duration,
        warmup: 0.1,
        drain: 1.0,
        exclude_sender: false,
        pid: None,
        source_ips: 1,
        connect_timeout: 5.0,
        json: false,
    };
    let deliveries = |r: &Report| match r {
        Report::Broadcast(b) => b.deliveries,
        _ => unreachable!(),
    };
    let (short_allocs, short) = allocations_in(|| run_broadcast(&args(0.3)).unwrap());
    let (long_allocs, long) = allocations_in(|| run_broadcast(&args(1.0)).unwrap());
    assert!(!short.had_errors() && !long.had_errors(), "{short:?} {long:?}");
    let extra = deliveries(&long) - deliveries(&short);
    assert!(extra > 2000, "{long:?}");
    assert!(
        long_allocs.abs_diff(short_allocs) < 100,
        "{short_allocs} allocations for the short run, {long_allocs} for one with {extra} more deliveries"
    );
}
