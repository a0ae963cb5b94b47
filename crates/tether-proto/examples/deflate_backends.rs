//! Compare the two pure-Rust DEFLATE backends flate2 can use for
//! permessage-deflate (RFC 7692): zlib-rs (through flate2's `zlib-rs`
//! feature, what tether-proto uses) and miniz_oxide (flate2's default).
//!
//! ```text
//! cargo run --release -p tether-proto --example deflate_backends -j 1
//! ```
//!
//! Measures, on JSON-like text of a few sizes, compressing and inflating one
//! WebSocket message at a time the way permessage-deflate does (raw DEFLATE,
//! sync flush per message), with and without context takeover, plus the heap
//! each compressor/decompressor holds (a counting allocator) and the resident
//! memory of 1000 of them. Results: `crates/tether-proto/BENCHMARKS-deflate.md`.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use miniz_oxide::deflate::core::{create_comp_flags_from_zip_params, CompressorOxide};
use miniz_oxide::inflate::stream::InflateState;
use miniz_oxide::{DataFormat, MZFlush};
use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Counts live heap bytes and the peak since the last reset.
struct Counting;
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let now = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(now, Ordering::Relaxed);
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let now = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(now, Ordering::Relaxed);
        System.alloc_zeroed(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > layout.size() {
            let now = LIVE.fetch_add(new_size - layout.size(), Ordering::Relaxed) + new_size - layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        } else {
            LIVE.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
        }
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// JSON-like chat/event messages: repeated keys, varied values.
fn json_payload(size: usize, seed: u64) -> Vec<u8> {
    const WORDS: [&str; 24] = [
        "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet", "kilo", "lima", "mike",
        "november", "oscar", "papa", "quebec", "romeo", "sierra", "tango", "uniform", "victor", "whiskey", "xray",
    ];
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut out = String::from("[");
    while out.len() < size {
        let n = next();
        let words: Vec<&str> = (0..4).map(|i| WORDS[((n >> (i * 8)) % 24) as usize]).collect();
        out.push_str(&format!(
            "{{\"id\":{},\"user\":\"{}_{}\",\"room\":\"/rooms/{}\",\"ts\":{},\"text\":\"{} {} {} {}\",\"score\":{}.{}}},",
            n % 1_000_000,
            words[0],
            n % 977,
            words[1],
            1_700_000_000_000u64 + n % 10_000_000,
            words[0],
            words[1],
            words[2],
            words[3],
            n % 100,
            n % 10
        ));
    }
    out.truncate(size - 1);
    out.push(']');
    out.into_bytes()
}

trait Backend {
    const NAME: &'static str;
    type C;
    type D;
    fn compressor(level: u32) -> Self::C;
    fn decompressor() -> Self::D;
    /// One message: compress with a sync flush into `out` (cleared first).
    fn compress(c: &mut Self::C, input: &[u8], out: &mut Vec<u8>);
    fn reset_compressor(c: &mut Self::C);
    /// Inflate one message (its bytes end with the sync-flush tail) into `out`.
    fn decompress(d: &mut Self::D, input: &[u8], out: &mut Vec<u8>);
    fn reset_decompressor(d: &mut Self::D);
}

struct ZlibRs;
impl Backend for ZlibRs {
    const NAME: &'static str = "zlib-rs 0.6 (flate2 1.1, feature zlib-rs)";
    type C = Compress;
    type D = Decompress;
    fn compressor(level: u32) -> Compress {
        Compress::new_with_window_bits(Compression::new(level), false, 15)
    }
    fn decompressor() -> Decompress {
        Decompress::new_with_window_bits(false, 15)
    }
    fn compress(c: &mut Compress, input: &[u8], out: &mut Vec<u8>) {
        out.clear();
        out.reserve(input.len() + 64);
        let start = c.total_in();
        loop {
            let done = (c.total_in() - start) as usize;
            c.compress_vec(&input[done..], out, FlushCompress::Sync).unwrap();
            if (c.total_in() - start) as usize == input.len() && out.len() < out.capacity() {
                break;
            }
            out.reserve(out.capacity());
        }
    }
    fn reset_compressor(c: &mut Compress) {
        c.reset();
    }
    fn decompress(d: &mut Decompress, input: &[u8], out: &mut Vec<u8>) {
        out.clear();
        let start = d.total_in();
        loop {
            out.reserve(input.len() * 4 + 64);
            let done = (d.total_in() - start) as usize;
            d.decompress_vec(&input[done..], out, FlushDecompress::Sync).unwrap();
            if (d.total_in() - start) as usize == input.len() && out.len() < out.capacity() {
                break;
            }
        }
    }
    fn reset_decompressor(d: &mut Decompress) {
        d.reset(false);
    }
}

struct Miniz;
impl Backend for Miniz {
    const NAME: &'static str = "miniz_oxide 0.9 (flate2's default backend)";
    type C = Box<CompressorOxide>;
    type D = Box<InflateState>;
    fn compressor(level: u32) -> Self::C {
        // window_bits < 0: raw DEFLATE. miniz_oxide always uses a 32 KiB window.
        Box::new(CompressorOxide::new(create_comp_flags_from_zip_params(level as i32, -15, 0)))
    }
    fn decompressor() -> Self::D {
        InflateState::new_boxed(DataFormat::Raw)
    }
    fn compress(c: &mut Self::C, input: &[u8], out: &mut Vec<u8>) {
        out.clear();
        out.resize(input.len() + 64, 0);
        let mut consumed = 0;
        let mut written = 0;
        loop {
            let r = miniz_oxide::deflate::stream::deflate(c, &input[consumed..], &mut out[written..], MZFlush::Sync);
            r.status.unwrap();
            consumed += r.bytes_consumed;
            written += r.bytes_written;
            if consumed == input.len() && written < out.len() {
                break;
            }
            out.resize(out.len() * 2, 0);
        }
        out.truncate(written);
    }
    fn reset_compressor(c: &mut Self::C) {
        c.reset();
    }
    fn decompress(d: &mut Self::D, input: &[u8], out: &mut Vec<u8>) {
        out.clear();
        out.resize(input.len() * 4 + 64, 0);
        let mut consumed = 0;
        let mut written = 0;
        loop {
            let r = miniz_oxide::inflate::stream::inflate(d, &input[consumed..], &mut out[written..], MZFlush::Sync);
            if let Err(e) = r.status {
                assert_eq!(e, miniz_oxide::MZError::Buf, "inflate failed");
            }
            consumed += r.bytes_consumed;
            written += r.bytes_written;
            if consumed == input.len() && written < out.len() {
                break;
            }
            out.resize(out.len() * 2, 0);
        }
        out.truncate(written);
    }
    fn reset_decompressor(d: &mut Self::D) {
        d.reset(DataFormat::Raw);
    }
}

const RUN_FOR: Duration = Duration::from_millis(400);

/// Messages per second for `f`, run over `msgs` for RUN_FOR (best of 3).
fn rate(msgs: usize, mut f: impl FnMut(usize)) -> f64 {
    let mut best: f64 = 0.0;
    for _ in 0..3 {
        let start = Instant::now();
        let mut n = 0usize;
        while start.elapsed() < RUN_FOR {
            for _ in 0..16 {
                f(n % msgs);
                n += 1;
            }
        }
        best = best.max(n as f64 / start.elapsed().as_secs_f64());
    }
    best
}

fn speed<B: Backend>(size: usize, level: u32, takeover: bool) {
    let msgs: Vec<Vec<u8>> = (0..64).map(|i| json_payload(size, i)).collect();
    let mut c = B::compressor(level);
    let mut out = Vec::new();
    // Compressed forms for the inflate side, in order (context takeover needs it).
    let mut compressed = Vec::new();
    for m in &msgs {
        if !takeover {
            B::reset_compressor(&mut c);
        }
        B::compress(&mut c, m, &mut out);
        compressed.push(out.clone());
    }
    let ratio = compressed.iter().map(Vec::len).sum::<usize>() as f64 / msgs.iter().map(Vec::len).sum::<usize>() as f64;
    let mut c = B::compressor(level);
    let comp = rate(msgs.len(), |i| {
        if !takeover {
            B::reset_compressor(&mut c);
        }
        B::compress(&mut c, black_box(&msgs[i]), &mut out);
    });
    let mut d = B::decompressor();
    let mut inflated = Vec::new();
    let mut last = 0;
    let decomp = rate(msgs.len(), |i| {
        last = i;
        // With context takeover the stream must be inflated in order, from the start.
        if i == 0 || !takeover {
            B::reset_decompressor(&mut d);
        }
        B::decompress(&mut d, black_box(&compressed[i]), &mut inflated);
    });
    assert!(inflated == msgs[last], "inflated data differs");
    let mib = |per_sec: f64| per_sec * size as f64 / (1 << 20) as f64;
    println!(
        "| {} | {:>6} | {} | {} | {:>5.1}% | {:>9.0} | {:>7.1} | {:>9.0} | {:>7.1} |",
        B::NAME.split(' ').next().unwrap(),
        size,
        level,
        if takeover { "on " } else { "off" },
        ratio * 100.0,
        comp,
        mib(comp),
        decomp,
        mib(decomp),
    );
}

fn rss_kib() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn memory<B: Backend>() {
    let msg = json_payload(1024, 7);
    let mut out = Vec::new();
    let mut back = Vec::new();
    // One compressor: heap right after creation, and peak while compressing.
    let before = LIVE.load(Ordering::Relaxed);
    let mut c = B::compressor(6);
    let created = LIVE.load(Ordering::Relaxed) - before;
    B::compress(&mut c, &msg, &mut out);
    let mut d = B::decompressor();
    let both = LIVE.load(Ordering::Relaxed) - before - out.capacity();
    B::decompress(&mut d, &out, &mut back);
    assert_eq!(back, msg);
    drop((c, d));
    let d_only = {
        let before = LIVE.load(Ordering::Relaxed);
        let d = B::decompressor();
        let n = LIVE.load(Ordering::Relaxed) - before;
        drop(d);
        n
    };
    // 1000 of each, each having handled one 1 KiB message: resident memory.
    let rss0 = rss_kib();
    let mut cs: Vec<B::C> = (0..1000).map(|_| B::compressor(6)).collect();
    for c in &mut cs {
        B::compress(c, &msg, &mut out);
    }
    let rss_c = rss_kib();
    let mut ds: Vec<B::D> = (0..1000).map(|_| B::decompressor()).collect();
    for d in &mut ds {
        B::decompress(d, &out, &mut back);
    }
    let rss_d = rss_kib();
    drop((cs, ds));
    println!(
        "| {} | {:.1} KiB | {:.1} KiB | {:.1} KiB | {:.1} KiB |",
        B::NAME.split(' ').next().unwrap(),
        created as f64 / 1024.0,
        d_only as f64 / 1024.0,
        (rss_c - rss0) as f64 / 1000.0,
        (rss_d - rss_c) as f64 / 1000.0,
    );
    let _ = both;
}

fn window_bits_memory() {
    println!("\n## zlib-rs compressor memory by window bits (1000 instances, one 1 KiB message each)\n");
    println!("| window bits | heap per compressor | RSS per compressor | heap per decompressor | RSS per decompressor |");
    println!("| ---: | ---: | ---: | ---: | ---: |");
    let msg = json_payload(1024, 7);
    for bits in [9u8, 10, 12, 15] {
        let mut out = Vec::new();
        let mut back = Vec::new();
        let (heap0, rss0) = (LIVE.load(Ordering::Relaxed), rss_kib());
        let mut cs: Vec<Compress> = (0..1000).map(|_| Compress::new_with_window_bits(Compression::new(1), false, bits)).collect();
        for c in &mut cs {
            ZlibRs::compress(c, &msg, &mut out);
        }
        let (heap1, rss1) = (LIVE.load(Ordering::Relaxed), rss_kib());
        let mut ds: Vec<Decompress> = (0..1000).map(|_| Decompress::new_with_window_bits(false, bits)).collect();
        for d in &mut ds {
            ZlibRs::decompress(d, &out, &mut back);
        }
        assert!(back == msg);
        let (heap2, rss2) = (LIVE.load(Ordering::Relaxed), rss_kib());
        drop((cs, ds));
        println!(
            "| {bits} | {:.1} KiB | {:.1} KiB | {:.1} KiB | {:.1} KiB |",
            (heap1 - heap0) as f64 / 1024.0 / 1000.0,
            (rss1 - rss0) as f64 / 1000.0,
            (heap2 - heap1) as f64 / 1024.0 / 1000.0,
            (rss2 - rss1) as f64 / 1000.0
        );
    }
}

fn small_message_sizes() {
    // What compression buys on small messages, to choose the threshold.
    println!("\n## Small messages (zlib-rs, level 1 and 6): compressed size / original, per message\n");
    println!("| size | takeover off, L1 | takeover off, L6 | takeover on, L1 | takeover on, L6 | µs/msg off L1 (incl. reset) | µs/msg on L1 |");
    println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for size in [32, 64, 128, 256, 512, 1024, 4096] {
        let msgs: Vec<Vec<u8>> = (0..64).map(|i| json_payload(size, 100 + i)).collect();
        let total: usize = msgs.iter().map(Vec::len).sum();
        let mut cells = Vec::new();
        for (takeover, level) in [(false, 1), (false, 6), (true, 1), (true, 6)] {
            let mut c = ZlibRs::compressor(level);
            let mut out = Vec::new();
            let mut sum = 0;
            for m in &msgs {
                if !takeover {
                    c.reset();
                }
                ZlibRs::compress(&mut c, m, &mut out);
                // The 4-byte tail is not sent (RFC 7692 §7.2.1).
                sum += out.len() - 4;
            }
            cells.push(format!("{:.0}%", sum as f64 * 100.0 / total as f64));
        }
        let mut times = Vec::new();
        for takeover in [false, true] {
            let mut c = ZlibRs::compressor(1);
            let mut out = Vec::new();
            let per_sec = rate(msgs.len(), |i| {
                if !takeover {
                    c.reset();
                }
                ZlibRs::compress(&mut c, black_box(&msgs[i]), &mut out);
            });
            times.push(format!("{:.2}", 1e6 / per_sec));
        }
        println!("| {size} | {} | {} | {} | {} | {} | {} |", cells[0], cells[1], cells[2], cells[3], times[0], times[1]);
    }
}

fn main() {
    println!("# permessage-deflate backends\n");
    println!("Throughput: messages/s and MiB/s of uncompressed payload. Ratio: compressed/original (tail included).\n");
    println!("| backend | size | level | takeover | ratio | compress msg/s | MiB/s | inflate msg/s | MiB/s |");
    println!("| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |");
    for size in [1024, 64 * 1024] {
        for level in [1, 6] {
            for takeover in [true, false] {
                speed::<ZlibRs>(size, level, takeover);
                speed::<Miniz>(size, level, takeover);
            }
        }
    }
    println!("\n## Memory\n");
    println!("Heap: bytes allocated by one new compressor / decompressor (counting allocator).");
    println!("RSS: resident memory per instance, 1000 instances that each handled one 1 KiB message.\n");
    println!("| backend | compressor heap | decompressor heap | compressor RSS | decompressor RSS |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    memory::<ZlibRs>();
    memory::<Miniz>();
    window_bits_memory();
    small_message_sizes();
}
