//! Benchmarks for the protocol core's hot paths: unmasking, frame header
//! parsing, UTF-8 validation, and the full receive/send path of a
//! [`Connection`].
//!
//! Run (about two and a half minutes on two cores):
//!
//! ```text
//! cargo bench -p tether-proto -j 1 --bench proto -- --warm-up-time 1 --measurement-time 2
//! ```
//!
//! Results and the machine they came from: `crates/tether-proto/BENCHMARKS-proto.md`.

// criterion_group! generates an undocumented public function.
#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;
use std::io::IoSlice;
use tether_proto::mask::{apply_mask, apply_mask_scalar};
use tether_proto::utf8::{self, Utf8Validator};
use tether_proto::{Config, Connection, Event, FrameHeader, Role, Sender};

const MASK_SIZES: [usize; 5] = [16, 125, 1024, 16 * 1024, 64 * 1024];
const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// Where a payload starts in a masked frame with a 7-bit length: after the
/// 2-byte header and the 4-byte key. The buffers below start there so the
/// fast path sees the same misalignment it sees in a real receive buffer.
const PAYLOAD_OFFSET: usize = 6;

fn bench_mask(c: &mut Criterion) {
    let mut group = c.benchmark_group("mask");
    for size in MASK_SIZES {
        let mut backing: Vec<u8> = (0..size + PAYLOAD_OFFSET).map(|i| (i * 31 + 7) as u8).collect();
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::new("apply_mask", size), &size, |b, _| {
            let buf = &mut backing[PAYLOAD_OFFSET..];
            b.iter(|| apply_mask(black_box(&mut *buf), black_box(KEY)));
        });
        group.bench_with_input(BenchmarkId::new("apply_mask_scalar", size), &size, |b, _| {
            let buf = &mut backing[PAYLOAD_OFFSET..];
            b.iter(|| apply_mask_scalar(black_box(&mut *buf), black_box(KEY)));
        });
    }
    group.finish();
}

fn bench_frame_header(c: &mut Criterion) {
    let mut group = c.benchmark_group("frame_header");
    let cases: [(&str, &[u8]); 3] = [
        // Unmasked text frame of 5 bytes: the smallest header (2 bytes).
        ("parse/small_2B", &[0x81, 0x05]),
        // Masked binary frame of 256 bytes: 16-bit length + key (8 bytes).
        (
            "parse/len16_masked_8B",
            &[0x82, 0xfe, 0x01, 0x00, 0x37, 0xfa, 0x21, 0x3d],
        ),
        // Unmasked binary frame of 64 KiB: 64-bit length (10 bytes).
        ("parse/len64_10B", &[0x82, 0x7f, 0, 0, 0, 0, 0, 1, 0, 0]),
    ];
    for (name, bytes) in cases {
        group.bench_function(name, |b| b.iter(|| FrameHeader::parse(black_box(bytes))));
    }
    let (header, _) = FrameHeader::parse(&[0x82, 0xfe, 0x01, 0x00, 0x37, 0xfa, 0x21, 0x3d])
        .unwrap()
        .unwrap();
    group.bench_function("encode/len16_masked_8B", |b| {
        let mut dst = [0u8; tether_proto::frame::MAX_HEADER_LEN];
        b.iter(|| black_box(&header).encode(black_box(&mut dst)));
    });
    group.finish();
}

/// Text of about `size` bytes (cut at a character boundary).
fn text(pattern: &str, size: usize) -> Vec<u8> {
    let mut s = pattern.repeat(size / pattern.len() + 1);
    let mut end = size;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    s.into_bytes()
}

fn bench_utf8(c: &mut Criterion) {
    let mut group = c.benchmark_group("utf8");
    // ASCII, and text mixing 2-, 3- and 4-byte characters (~80% non-ASCII bytes).
    let ascii = "The quick brown fox jumps over the lazy dog. 0123456789 {\"k\":[1,2,3]}\n";
    let multi = "Grüße, κόσμε! Привет мир. 日本語のテキスト。🦀🎉 ";
    for (kind, pattern) in [("ascii", ascii), ("multibyte", multi)] {
        for size in [1024, 64 * 1024] {
            let data = text(pattern, size);
            assert!(std::str::from_utf8(&data).is_ok());
            group.throughput(Throughput::Bytes(data.len() as u64));
            let id = |f: &str| BenchmarkId::new(format!("{f}/{kind}"), size);
            group.bench_with_input(id("is_valid"), &data, |b, d| b.iter(|| utf8::is_valid(black_box(d))));
            group.bench_with_input(id("std_from_utf8"), &data, |b, d| {
                b.iter(|| std::str::from_utf8(black_box(d)).is_ok())
            });
            group.bench_with_input(id("validator_whole"), &data, |b, d| {
                b.iter(|| {
                    let mut v = Utf8Validator::new();
                    v.feed(black_box(d)).unwrap();
                    v.is_complete()
                })
            });
            // 1000-byte pieces, so most cuts fall inside a multi-byte character
            // and the carry-over path runs (a fragmented text message).
            group.bench_with_input(id("validator_1000B_pieces"), &data, |b, d| {
                b.iter(|| {
                    let mut v = Utf8Validator::new();
                    for piece in black_box(d).chunks(1000) {
                        v.feed(piece).unwrap();
                    }
                    v.is_complete()
                })
            });
        }
    }
    group.finish();
}

const MESSAGES: usize = 100;
/// A socket read: the stream is fed to the connection in pieces this big,
/// and events are drained after each, as the `tether` I/O loop does.
const READ_SIZE: usize = 4096;

/// The bytes of `MESSAGES` masked frames as a client sends them.
fn client_stream(text: bool, payload: &[u8]) -> Vec<u8> {
    let mut tx = Sender::new(Role::Client);
    for _ in 0..MESSAGES {
        if text {
            tx.send_text(std::str::from_utf8(payload).unwrap()).unwrap();
        } else {
            tx.send_binary(payload).unwrap();
        }
    }
    tx.take_data_to_send()
}

fn decode_all(server: &mut Connection, stream: &[u8]) -> usize {
    let mut events = 0;
    for read in stream.chunks(READ_SIZE) {
        server.receive_data(read);
        while let Some(ev) = server.next_event().unwrap() {
            black_box(&ev);
            debug_assert!(matches!(ev, Event::Message(_)));
            events += 1;
        }
    }
    events
}

fn bench_connection(c: &mut Criterion) {
    let mut group = c.benchmark_group("connection");
    let text_payload = b"{\"t\":\"chat\",\"m\":\"hi\"}"; // 20 bytes
    let text_payload = &text_payload[..20];
    let binary_payload: Vec<u8> = (0..1024).map(|i| i as u8).collect();

    for (name, is_text, payload) in [
        ("text_20B", true, text_payload),
        ("binary_1KiB", false, &binary_payload[..]),
    ] {
        let stream = client_stream(is_text, payload);
        group.throughput(Throughput::Elements(MESSAGES as u64));
        group.bench_function(format!("server_decode_100/{name}"), |b| {
            let mut server = Connection::new(Role::Server, Config::default());
            b.iter(|| {
                let n = decode_all(&mut server, black_box(&stream));
                assert_eq!(n, MESSAGES);
            });
        });

        for role in [Role::Server, Role::Client] {
            let label = if role == Role::Server {
                "server_encode_100"
            } else {
                "client_encode_100_masked"
            };
            group.bench_function(format!("{label}/{name}"), |b| {
                let mut tx = Sender::new(role);
                let text = std::str::from_utf8(payload).ok();
                b.iter(|| {
                    for _ in 0..MESSAGES {
                        match (is_text, text) {
                            (true, Some(t)) => tx.send_text(black_box(t)).unwrap(),
                            _ => tx.send_binary(black_box(payload)).unwrap(),
                        }
                    }
                    // Hand the bytes to a (pretend) vectored write, as the I/O layer does.
                    let mut slices = [IoSlice::new(&[]); 8];
                    let n = tx.data_to_send(&mut slices);
                    black_box(&slices[..n]);
                    let pending = tx.pending_len();
                    tx.consume_sent(pending);
                });
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench_mask, bench_frame_header, bench_utf8, bench_connection);
criterion_main!(benches);
