//! A decompression bomb (RFC 7692 §8.1 asks implementations to limit what
//! inflation may cost): compressed messages that inflate to hundreds of
//! megabytes are stopped at `max_message_size` with close 1009, and the
//! heap, measured by a counting allocator, never follows the attacker.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use tether_proto::handshake::parse_extensions;
use tether_proto::{Config, Connection, DeflateConfig, ProtocolError, Role};

struct Counting;
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let now = LIVE.fetch_add(layout.size(), Ordering::SeqCst) + layout.size();
        PEAK.fetch_max(now, Ordering::SeqCst);
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::SeqCst);
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // Count a moving realloc as both blocks alive at once (the worst case).
        let now = LIVE.fetch_add(new_size, Ordering::SeqCst) + new_size;
        PEAK.fetch_max(now, Ordering::SeqCst);
        let p = System.realloc(ptr, layout, new_size);
        LIVE.fetch_sub(layout.size(), Ordering::SeqCst);
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const LIMIT: usize = 1 << 20;

/// Raw DEFLATE frames of `frames` × `per_frame` zero bytes, one stream, as
/// the payloads of one fragmented message (sync flush per frame, the final
/// tail removed), at the best ratio (level 9: ~1030:1).
fn bomb(frames: usize, per_frame: usize) -> Vec<Vec<u8>> {
    let mut c = flate2::Compress::new(flate2::Compression::best(), false);
    let zeros = vec![0u8; per_frame];
    (0..frames)
        .map(|i| {
            let mut out = Vec::with_capacity(per_frame / 500 + 1024);
            let start = c.total_in();
            while ((c.total_in() - start) as usize) < per_frame || out.len() == out.capacity() {
                let done = (c.total_in() - start) as usize;
                out.reserve(4096);
                c.compress_vec(&zeros[done..], &mut out, flate2::FlushCompress::Sync).unwrap();
            }
            if i == frames - 1 {
                out.truncate(out.len() - 4);
            }
            out
        })
        .collect()
}

/// Masked client frames: RSV1 on the first, continuations after it.
fn wire(payloads: &[Vec<u8>]) -> Vec<u8> {
    let key = [1u8, 2, 3, 4];
    let mut out = Vec::new();
    for (i, p) in payloads.iter().enumerate() {
        let fin = if i == payloads.len() - 1 { 0x80 } else { 0 };
        out.push(fin | if i == 0 { 0x40 | 0x02 } else { 0x00 });
        if p.len() < 126 {
            out.push(0x80 | p.len() as u8);
        } else if p.len() < 65536 {
            out.push(0x80 | 126);
            out.extend_from_slice(&(p.len() as u16).to_be_bytes());
        } else {
            out.push(0x80 | 127);
            out.extend_from_slice(&(p.len() as u64).to_be_bytes());
        }
        out.extend_from_slice(&key);
        out.extend(p.iter().enumerate().map(|(j, b)| b ^ key[j % 4]));
    }
    out
}

fn server() -> Connection {
    let config = DeflateConfig::default();
    let agreed = config.negotiate(&parse_extensions(&config.offer())).unwrap();
    Connection::with_deflate(Role::Server, Config { max_message_size: LIMIT, ..Config::default() }, Some(agreed))
}

/// Feed `wire` and return the error and the heap growth at its peak.
fn attack(wire: &[u8]) -> (ProtocolError, usize) {
    let mut s = server();
    let base = LIVE.load(Ordering::SeqCst);
    PEAK.store(base, Ordering::SeqCst);
    s.receive_data(wire);
    let err = match s.next_event() {
        Err(e) => e,
        Ok(Some(ev)) => panic!("the bomb produced {ev:?}"),
        Ok(None) => panic!("the bomb was not detected"),
    };
    let out = s.take_data_to_send();
    assert_eq!(&out[..4], &[0x88, 0x02, 0x03, 0xf1], "close 1009 queued");
    (err, PEAK.load(Ordering::SeqCst) - base)
}

#[test]
fn bombs_stop_at_the_limit_and_memory_stays_bounded() {
    // One frame of ~250 KB that inflates to 256 MiB.
    let single = bomb(1, 256 << 20);
    let single_wire = wire(&single);
    // 256 frames of ~4 KB, each inflating to 4 MiB: 1 GiB in one message.
    let many = bomb(256, 4 << 20);
    let many_wire = wire(&many);
    for (name, w) in [("one frame -> 256 MiB", &single_wire), ("256 frames -> 1 GiB", &many_wire)] {
        let (err, peak) = attack(w);
        assert!(matches!(err, ProtocolError::MessageTooLarge { max: LIMIT, .. }), "{name}: {err:?}");
        // The wire bytes (copied into the receive buffer), the output up to
        // the limit (counted twice for a moving realloc), and zlib's state.
        let bound = w.len() + 2 * (LIMIT + 1) + 512 * 1024;
        eprintln!("{name}: {} bytes on the wire, heap peak +{} KiB (bound {} KiB)", w.len(), peak / 1024, bound / 1024);
        assert!(peak <= bound, "{name}: heap grew by {peak} bytes, over {bound}");
    }
}
