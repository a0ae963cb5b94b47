//! Arbitrary bytes from a peer, fed in arbitrary chunks to a server and a
//! client `Connection` with small limits.
//!
//! Input layout: 4 control bytes, then the byte stream.
//! - byte 0: `max_frame_size = 1 + 4 * b` (1..=1021)
//! - byte 1: `max_message_size = 1 + 8 * b` (1..=2041)
//! - byte 2: bit 0 `auto_pong`, bit 1 `auto_close`; with byte 3, the seed for
//!   read sizes, the per-call choice of `next_event` / `next_fragment`, and
//!   how much of the output a pretend socket accepts per write.
//!
//! Each role decodes the stream four ways: all at once with `next_event` (the
//! reference), then in random reads with `next_event`, with `next_fragment`,
//! and with a random mix of the two. Checked:
//! - nothing panics;
//! - after each drain, buffered bytes stay within `max_message_size` plus one
//!   frame header and one control frame (the `Config` doc's promise);
//! - every text message is valid UTF-8; every message respects the limits;
//!   control payloads are at most 125 bytes; fragments arrive in order;
//! - an error is returned once, after which the connection is closed and
//!   yields nothing more;
//! - all four ways give the same messages, the same error and the same bytes
//!   to send (chunking and streaming are invisible to the application).

#![no_main]

use libfuzzer_sys::fuzz_target;
use std::io::IoSlice;
use tether_proto::close::MAX_REASON_LEN;
use tether_proto::frame::MAX_HEADER_LEN;
use tether_proto::{Config, Connection, Event, Message, ProtocolError, Role, Utf8Bytes};

/// splitmix64: deterministic choices from the input's seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[derive(Clone, Copy, Debug)]
enum Mode {
    Assemble,
    Stream,
    Mixed,
}

#[derive(Debug, PartialEq)]
struct Outcome {
    messages: Vec<Message>,
    error: Option<ProtocolError>,
    output: Vec<u8>,
}

fn fixed_mask() -> [u8; 4] {
    [0x11, 0x22, 0x33, 0x44]
}

/// Write part of what the connection has queued, as a socket would.
fn flush_some(conn: &mut Connection, rng: &mut Rng, out: &mut Vec<u8>, all: bool) {
    let pending = conn.pending_len();
    if pending == 0 {
        return;
    }
    let mut slices = [IoSlice::new(&[]); 4];
    let n = conn.data_to_send(&mut slices);
    let available: usize = slices[..n].iter().map(|s| s.len()).sum();
    assert!(
        available <= pending,
        "data_to_send offered {available} bytes, only {pending} pending"
    );
    let budget = if all { available } else { rng.below(available + 1) };
    let mut written = 0;
    for s in &slices[..n] {
        let take = s.len().min(budget - written);
        out.extend_from_slice(&s[..take]);
        written += take;
    }
    conn.consume_sent(written);
    assert_eq!(conn.pending_len(), pending - written);
}

fn run(role: Role, config: &Config, stream: &[u8], chunked: Option<u64>, mode: Mode) -> Outcome {
    let mut conn = Connection::new(role, config.clone());
    conn.set_mask_fn(fixed_mask);
    let mut rng = Rng(chunked.unwrap_or(0));
    let bound = config.max_message_size + MAX_HEADER_LEN + 125;
    let mut outcome = Outcome {
        messages: Vec::new(),
        error: None,
        output: Vec::new(),
    };
    // A streamed message being put back together: (text, bytes).
    let mut partial: Option<(bool, Vec<u8>)> = None;

    let mut rest = stream;
    while !rest.is_empty() {
        let take = match chunked {
            None => rest.len(),
            // Mostly small reads, sometimes large ones.
            Some(_) if rng.below(4) == 0 => 1 + rng.below(rest.len()),
            Some(_) => 1 + rng.below(rest.len().min(16)),
        };
        let (read, tail) = rest.split_at(take);
        rest = tail;
        conn.receive_data(read);

        loop {
            let streaming = match mode {
                Mode::Assemble => false,
                Mode::Stream => true,
                Mode::Mixed => rng.below(2) == 0,
            };
            let result = if streaming {
                conn.next_fragment()
            } else {
                conn.next_event()
            };
            match result {
                Ok(None) => break,
                Ok(Some(Event::Message(msg))) => {
                    check_message(&msg, config);
                    assert!(
                        partial.is_none() || !msg.is_data(),
                        "a data message came out while a streamed one was unfinished: {msg:?}"
                    );
                    outcome.messages.push(msg);
                }
                Ok(Some(Event::Fragment {
                    text,
                    first,
                    fin,
                    payload,
                })) => {
                    assert!(payload.len() <= config.max_frame_size, "fragment over max_frame_size");
                    match (&mut partial, first) {
                        (None, true) => partial = Some((text, payload.to_vec())),
                        (Some((t, bytes)), false) => {
                            assert_eq!(*t, text, "fragment changed type mid-message");
                            bytes.extend_from_slice(&payload);
                        }
                        (p, first) => panic!("fragment out of order: first={first}, in progress={}", p.is_some()),
                    }
                    let (_, bytes) = partial.as_ref().unwrap();
                    assert!(
                        bytes.len() <= config.max_message_size,
                        "streamed message over max_message_size"
                    );
                    if fin {
                        let (text, bytes) = partial.take().unwrap();
                        let msg = if text {
                            Message::Text(
                                Utf8Bytes::try_from(bytes::Bytes::from(bytes))
                                    .expect("streamed text message is not UTF-8"),
                            )
                        } else {
                            Message::Binary(bytes.into())
                        };
                        check_message(&msg, config);
                        outcome.messages.push(msg);
                    }
                }
                Err(e) => {
                    assert!(outcome.error.is_none(), "second error after {:?}: {e:?}", outcome.error);
                    assert!(conn.is_closed(), "failed connection not closed");
                    assert!(conn.should_close_transport());
                    outcome.error = Some(e);
                    break;
                }
            }
        }

        let buffered = conn.receiver().buffered_len();
        assert!(
            buffered <= bound,
            "{buffered} bytes buffered, limit {} + headers",
            config.max_message_size
        );
        if outcome.error.is_none() && !conn.receiver().close_received() {
            // The frame at the head of the buffer is incomplete, so it needs more.
            assert_ne!(conn.receiver().bytes_needed(), Some(0));
        }
        if chunked.is_some() {
            flush_some(&mut conn, &mut rng, &mut outcome.output, false);
            if rng.below(8) == 0 {
                conn.shrink_if_idle();
            }
        }
    }
    if outcome.error.is_some() {
        assert_eq!(conn.next_event(), Ok(None));
        assert_eq!(conn.next_fragment(), Ok(None));
    }
    flush_some(&mut conn, &mut rng, &mut outcome.output, true);
    assert_eq!(conn.pending_len(), 0);
    outcome
}

fn check_message(msg: &Message, config: &Config) {
    match msg {
        Message::Text(t) => {
            assert!(
                std::str::from_utf8(t.as_bytes()).is_ok(),
                "text message is not UTF-8: {:?}",
                t.as_bytes()
            );
            assert!(t.len() <= config.max_message_size, "text message over max_message_size");
        }
        Message::Binary(b) => assert!(
            b.len() <= config.max_message_size,
            "binary message over max_message_size"
        ),
        Message::Ping(p) | Message::Pong(p) => assert!(p.len() <= 125, "control payload over 125 bytes"),
        Message::Close(Some(frame)) => {
            assert!(frame.code.is_allowed_on_wire(), "close code {} accepted", frame.code.0);
            assert!(frame.reason.len() <= MAX_REASON_LEN);
        }
        Message::Close(None) => {}
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let (ctl, stream) = data.split_at(4);
    let config = Config {
        max_frame_size: 1 + ctl[0] as usize * 4,
        max_message_size: 1 + ctl[1] as usize * 8,
        auto_pong: ctl[2] & 1 != 0,
        auto_close: ctl[2] & 2 != 0,
    };
    let seed = u64::from(ctl[2]) << 8 | u64::from(ctl[3]);
    for role in [Role::Server, Role::Client] {
        let reference = run(role, &config, stream, None, Mode::Assemble);
        for mode in [Mode::Assemble, Mode::Stream, Mode::Mixed] {
            let got = run(role, &config, stream, Some(seed), mode);
            assert_eq!(
                got, reference,
                "{role:?} {mode:?} differs from decoding the whole stream at once"
            );
        }
    }
});
