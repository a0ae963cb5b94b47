//! permessage-deflate (RFC 7692) on the connection state machine, grouped by
//! section: bytes in, bytes and events out; no sockets. Negotiation itself is
//! tested next to its code (src/deflate.rs).

use bytes::Bytes;
use tether_proto::handshake::parse_extensions;
use tether_proto::{CloseCode, Config, Connection, DeflateConfig, Event, FrameHeader, Message, OpCode, ProtocolError, Role};

const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// A client and a server that negotiated permessage-deflate the way the
/// handshake does: the client's offer, the server's answer, the client's check.
fn pair_with(client: DeflateConfig, server: DeflateConfig, config: Config) -> (Connection, Connection) {
    let agreed = server.negotiate(&parse_extensions(&client.offer())).expect("server accepts the offer");
    let client_side = client.accept_response(&parse_extensions(&agreed.response())).unwrap().expect("client accepts the answer");
    let mut c = Connection::with_deflate(Role::Client, config.clone(), Some(client_side));
    c.set_mask_fn(|| KEY);
    (c, Connection::with_deflate(Role::Server, config, Some(agreed)))
}

fn pair(config: DeflateConfig) -> (Connection, Connection) {
    pair_with(config.clone(), config, Config::default())
}

fn all_compressed() -> DeflateConfig {
    DeflateConfig { threshold: 0, ..DeflateConfig::default() }
}

fn with_takeover() -> DeflateConfig {
    DeflateConfig { threshold: 0, context_takeover: true, ..DeflateConfig::default() }
}

/// The frames in `wire`: (header, payload as sent, i.e. still masked).
fn frames(mut wire: &[u8]) -> Vec<(FrameHeader, Vec<u8>)> {
    let mut out = Vec::new();
    while !wire.is_empty() {
        let (h, n) = FrameHeader::parse(wire).unwrap().expect("whole frames");
        let end = n + h.payload_len as usize;
        out.push((h, wire[n..end].to_vec()));
        wire = &wire[end..];
    }
    out
}

fn messages(conn: &mut Connection) -> Result<Vec<Message>, ProtocolError> {
    let mut out = Vec::new();
    while let Some(ev) = conn.next_event()? {
        match ev {
            Event::Message(m) => out.push(m),
            other => panic!("unexpected {other:?}"),
        }
    }
    Ok(out)
}

/// A masked client frame with the given first byte (FIN, RSV, opcode).
fn masked(b0: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![b0];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n < 65536 => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&KEY);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ KEY[i % 4]));
    out
}

/// The close code in the (unmasked) server output.
fn close_code_sent(conn: &mut Connection) -> Option<u16> {
    let wire = conn.take_data_to_send();
    frames(&wire)
        .into_iter()
        .find(|(h, _)| h.opcode == OpCode::Close)
        .and_then(|(_, p)| (p.len() >= 2).then(|| u16::from_be_bytes([p[0], p[1]])))
}

fn server_without_deflate() -> Connection {
    Connection::new(Role::Server, Config::default())
}

/// A server that negotiated the default (no context takeover) settings.
fn server() -> Connection {
    pair(all_compressed()).1
}

/// Raw DEFLATE of `data` as a peer would send it (sync flush, tail removed).
fn deflate_raw(data: &[u8]) -> Vec<u8> {
    let mut c = flate2::Compress::new(flate2::Compression::new(6), false);
    let mut out = Vec::with_capacity(data.len() + 1024);
    c.compress_vec(data, &mut out, flate2::FlushCompress::Sync).unwrap();
    assert!(out.len() < out.capacity(), "output space sufficed");
    assert!(out.ends_with(&[0, 0, 0xff, 0xff]));
    out.truncate(out.len() - 4);
    out
}

mod section_5_negotiated_both_ways {
    use super::*;

    #[test]
    fn messages_round_trip_compressed_in_both_directions() {
        for config in [all_compressed(), with_takeover(), DeflateConfig { max_window_bits: 9, ..with_takeover() }] {
            let (mut client, mut server) = pair(config);
            let text = "permessage-deflate ".repeat(50);
            let data: Vec<u8> = (0..5000u32).map(|i| (i % 7) as u8).collect();
            client.send_text(&text).unwrap();
            client.send_binary(&data).unwrap();
            let wire = client.take_data_to_send();
            let sent = frames(&wire);
            assert!(sent.iter().all(|(h, _)| h.rsv1), "RSV1 on every compressed message");
            assert!(wire.len() < 400, "compressed: {} bytes on the wire", wire.len());
            server.receive_data(&wire);
            assert_eq!(messages(&mut server).unwrap(), vec![Message::text(text.clone()), Message::binary(data.clone())]);
            // And back: server frames are unmasked and compressed too.
            server.send(Message::text(text.clone())).unwrap();
            server.send(Message::Binary(Bytes::from(data.clone()))).unwrap();
            let wire = server.take_data_to_send();
            assert!(frames(&wire).iter().all(|(h, _)| h.rsv1 && h.mask.is_none()));
            client.receive_data(&wire);
            assert_eq!(messages(&mut client).unwrap(), vec![Message::text(text), Message::binary(data)]);
        }
    }

    #[test]
    fn messages_below_the_threshold_go_uncompressed() {
        let (mut client, mut server) = pair(DeflateConfig { threshold: 100, ..DeflateConfig::default() });
        client.send_text(&"x".repeat(99)).unwrap();
        client.send_text(&"x".repeat(100)).unwrap();
        let wire = client.take_data_to_send();
        let rsv1: Vec<bool> = frames(&wire).iter().map(|(h, _)| h.rsv1).collect();
        assert_eq!(rsv1, vec![false, true]);
        server.receive_data(&wire);
        assert_eq!(messages(&mut server).unwrap(), vec![Message::text("x".repeat(99)), Message::text("x".repeat(100))]);
    }

    #[test]
    fn an_empty_message_can_be_compressed() {
        let (mut client, mut server) = pair(all_compressed());
        client.send_text("").unwrap();
        let wire = client.take_data_to_send();
        assert!(frames(&wire)[0].0.rsv1);
        server.receive_data(&wire);
        assert_eq!(messages(&mut server).unwrap(), vec![Message::text("")]);
    }

    #[test]
    fn pre_encoded_broadcast_frames_stay_uncompressed_and_valid() {
        let (mut client, mut server) = pair(all_compressed());
        server.sender().send_encoded(tether_proto::EncodedFrame::text("to everyone")).unwrap();
        let wire = server.take_data_to_send();
        assert!(!frames(&wire)[0].0.rsv1);
        client.receive_data(&wire);
        assert_eq!(messages(&mut client).unwrap(), vec![Message::text("to everyone")]);
    }
}

mod section_6_1_rsv1 {
    use super::*;

    #[test]
    fn rsv1_without_negotiation_fails_with_1002() {
        let mut s = server_without_deflate();
        s.receive_data(&masked(0xc1, &deflate_raw(b"Hello")));
        assert_eq!(s.next_event(), Err(ProtocolError::ReservedBitsSet));
        assert_eq!(close_code_sent(&mut s), Some(1002));
    }

    #[test]
    fn rsv1_on_a_continuation_frame_fails() {
        let mut s = server();
        let compressed = deflate_raw(b"Hello");
        s.receive_data(&masked(0x41, &compressed[..3]));
        s.receive_data(&masked(0xc0, &compressed[3..]));
        assert_eq!(s.next_event(), Err(ProtocolError::CompressedBitOnWrongFrame));
        assert_eq!(close_code_sent(&mut s), Some(1002));
    }

    #[test]
    fn rsv1_on_control_frames_fails() {
        for b0 in [0xc9u8, 0xca, 0xc8] {
            let mut s = server();
            s.receive_data(&masked(b0, b""));
            assert_eq!(s.next_event(), Err(ProtocolError::CompressedBitOnWrongFrame), "first byte {b0:#x}");
            assert_eq!(close_code_sent(&mut s), Some(1002));
        }
    }

    #[test]
    fn rsv2_and_rsv3_stay_reserved() {
        for b0 in [0xa1u8, 0x91, 0xe1] {
            let mut s = server();
            s.receive_data(&masked(b0, b"x"));
            assert_eq!(s.next_event(), Err(ProtocolError::ReservedBitsSet), "first byte {b0:#x}");
        }
    }

    #[test]
    fn uncompressed_messages_are_still_accepted() {
        let mut s = server();
        s.receive_data(&masked(0x81, b"plain"));
        assert_eq!(messages(&mut s).unwrap(), vec![Message::text("plain")]);
    }

    #[test]
    fn our_control_frames_are_never_compressed() {
        let (mut client, _) = pair(all_compressed());
        client.send_ping(&[b'p'; 100]).unwrap();
        client.close(Some(tether_proto::CloseFrame::new(CloseCode::NORMAL, &"r".repeat(100)))).unwrap();
        let wire = client.take_data_to_send();
        assert!(frames(&wire).iter().all(|(h, _)| !h.rsv1));
    }
}

mod section_7_2_3_examples {
    use super::*;

    #[test]
    fn hello_compressed_in_one_frame() {
        // §7.2.3.1: "Hello" is 0xf2 0x48 0xcd 0xc9 0xc9 0x07 0x00.
        let mut s = server();
        s.receive_data(&masked(0xc1, &[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00]));
        assert_eq!(messages(&mut s).unwrap(), vec![Message::text("Hello")]);
    }

    #[test]
    fn hello_compressed_and_fragmented() {
        // §7.2.3.1: the same bytes in two frames, RSV1 on the first only.
        let mut s = server();
        s.receive_data(&masked(0x41, &[0xf2, 0x48, 0xcd]));
        s.receive_data(&masked(0x80, &[0xc9, 0xc9, 0x07, 0x00]));
        assert_eq!(messages(&mut s).unwrap(), vec![Message::text("Hello")]);
    }

    #[test]
    fn sharing_the_window_between_messages() {
        // §7.2.3.2: with context takeover the second "Hello" is 0xf2 0x00 0x11 0x00 0x00.
        let (_, mut s) = pair(with_takeover());
        s.receive_data(&masked(0xc1, &[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00]));
        s.receive_data(&masked(0xc1, &[0xf2, 0x00, 0x11, 0x00, 0x00]));
        assert_eq!(messages(&mut s).unwrap(), vec![Message::text("Hello"), Message::text("Hello")]);
    }

    #[test]
    fn a_stored_block_and_a_bfinal_block() {
        let mut s = server();
        // §7.2.3.3: DEFLATE block with no compression.
        s.receive_data(&masked(0xc1, &[0x00, 0x05, 0x00, 0xfa, 0xff, 0x48, 0x65, 0x6c, 0x6c, 0x6f, 0x00]));
        // §7.2.3.4: DEFLATE block with BFINAL set to 1.
        s.receive_data(&masked(0xc1, &[0xf3, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00, 0x00]));
        // §7.2.3.5: two DEFLATE blocks in one message.
        s.receive_data(&masked(0xc1, &[0xf2, 0x48, 0x05, 0x00, 0x00, 0x00, 0xff, 0xff, 0xca, 0xc9, 0xc9, 0x07, 0x00]));
        assert_eq!(messages(&mut s).unwrap(), vec![Message::text("Hello"); 3]);
    }
}

mod fragmentation {
    use super::*;

    #[test]
    fn streamed_messages_compress_as_one_stream_with_rsv1_on_the_first_frame() {
        let (mut client, mut server) = pair(all_compressed());
        let parts = ["first part, ", "second part, ", "third part, ", "the end"];
        for (i, p) in parts.iter().enumerate() {
            client.sender().send_fragment(true, Bytes::from(p.repeat(20)), i == parts.len() - 1).unwrap();
        }
        let wire = client.take_data_to_send();
        let sent = frames(&wire);
        let flags: Vec<(bool, bool, OpCode)> = sent.iter().map(|(h, _)| (h.rsv1, h.fin, h.opcode)).collect();
        assert_eq!(
            flags,
            vec![
                (true, false, OpCode::Text),
                (false, false, OpCode::Continuation),
                (false, false, OpCode::Continuation),
                (false, true, OpCode::Continuation)
            ]
        );
        server.receive_data(&wire);
        let expected: String = parts.iter().map(|p| p.repeat(20)).collect();
        assert_eq!(messages(&mut server).unwrap(), vec![Message::text(expected)]);
        assert_eq!(server.holds_deflate_state(), (false, false), "nothing kept after the message");
    }

    #[test]
    fn fragments_stream_out_inflated() {
        let (mut client, mut server) = pair(all_compressed());
        client.sender().send_fragment(false, Bytes::from(vec![1u8; 3000]), false).unwrap();
        client.sender().send_fragment(false, Bytes::from(vec![2u8; 3000]), true).unwrap();
        server.receive_data(&client.take_data_to_send());
        let mut got = Vec::new();
        while let Some(ev) = server.next_fragment().unwrap() {
            match ev {
                Event::Fragment { text: false, first, fin, payload } => got.push((first, fin, payload)),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(got.len(), 2);
        assert_eq!((got[0].0, got[0].1, got[0].2.len()), (true, false, 3000));
        assert!(got[0].2.iter().all(|&b| b == 1));
        assert_eq!((got[1].0, got[1].1, got[1].2.len()), (false, true, 3000));
        assert!(got[1].2.iter().all(|&b| b == 2));
    }

    #[test]
    fn control_frames_between_compressed_fragments() {
        let mut s = server();
        let compressed = deflate_raw("interleaved".repeat(10).as_bytes());
        let (a, b) = compressed.split_at(compressed.len() / 2);
        s.receive_data(&masked(0x41, a));
        s.receive_data(&masked(0x89, b"ping"));
        s.receive_data(&masked(0x80, b));
        assert_eq!(messages(&mut s).unwrap(), vec![Message::Ping("ping".into()), Message::text("interleaved".repeat(10))]);
        // The pong went out uncompressed.
        let wire = s.take_data_to_send();
        assert_eq!(frames(&wire).iter().map(|(h, _)| (h.opcode, h.rsv1)).collect::<Vec<_>>(), vec![(OpCode::Pong, false)]);
    }

    #[test]
    fn a_compressed_message_cannot_interrupt_another() {
        let mut s = server();
        let compressed = deflate_raw(b"Hello");
        s.receive_data(&masked(0x41, &compressed[..2]));
        s.receive_data(&masked(0xc1, &compressed));
        assert_eq!(s.next_event(), Err(ProtocolError::ExpectedContinuation));
    }

    #[test]
    fn utf8_is_checked_on_inflated_text() {
        // A valid message whose two-byte "é" is split between frames.
        let mut s = server();
        let compressed = deflate_raw("aé".as_bytes());
        s.receive_data(&masked(0x41, &compressed[..1]));
        s.receive_data(&masked(0x80, &compressed[1..]));
        assert_eq!(messages(&mut s).unwrap(), vec![Message::text("aé")]);
        // Invalid UTF-8, valid DEFLATE: 1007.
        let mut s = server();
        s.receive_data(&masked(0xc1, &deflate_raw(&[b'a', 0xff, b'b'])));
        assert_eq!(s.next_event(), Err(ProtocolError::InvalidUtf8));
        assert_eq!(close_code_sent(&mut s), Some(1007));
        // A message that ends inside a character.
        let mut s = server();
        s.receive_data(&masked(0xc1, &deflate_raw(&[b'a', 0xc3])));
        assert_eq!(s.next_event(), Err(ProtocolError::InvalidUtf8));
        // Binary is not checked.
        let mut s = server();
        s.receive_data(&masked(0xc2, &deflate_raw(&[0xff, 0xfe])));
        assert_eq!(messages(&mut s).unwrap(), vec![Message::binary(vec![0xff, 0xfe])]);
    }
}

mod context_takeover {
    use super::*;

    fn second_message_size(config: DeflateConfig) -> (usize, usize, (bool, bool), (bool, bool)) {
        let (mut client, mut server) = pair(config);
        let msg = "{\"type\":\"chat\",\"room\":\"lobby\",\"text\":\"hello there\"}";
        let mut sizes = Vec::new();
        for _ in 0..2 {
            client.send_text(msg).unwrap();
            let wire = client.take_data_to_send();
            sizes.push(frames(&wire)[0].1.len());
            server.receive_data(&wire);
            assert_eq!(messages(&mut server).unwrap(), vec![Message::text(msg)]);
        }
        (sizes[0], sizes[1], client.holds_deflate_state(), server.holds_deflate_state())
    }

    #[test]
    fn with_takeover_repeats_cost_a_few_bytes_and_state_is_kept() {
        let (first, second, client_state, server_state) = second_message_size(with_takeover());
        assert!(second < first / 3, "second message {second} bytes vs first {first}");
        assert_eq!(client_state, (true, false), "client keeps its compressor; it received nothing");
        assert_eq!(server_state, (false, true), "server keeps its decompressor; it sent nothing");
    }

    #[test]
    fn without_takeover_messages_are_independent_and_nothing_is_kept() {
        let (first, second, client_state, server_state) = second_message_size(all_compressed());
        assert_eq!(first, second);
        assert_eq!(client_state, (false, false));
        assert_eq!(server_state, (false, false));
    }

    #[test]
    fn one_side_may_keep_context_while_the_other_does_not() {
        // The server keeps context; the client asked for none: the answer
        // carries both no_context_takeover parameters the client requested.
        let (mut client, mut server) = pair_with(all_compressed(), with_takeover(), Config::default());
        let params = *server.deflate_params().unwrap();
        assert!(params.server_no_context_takeover && params.client_no_context_takeover);
        for _ in 0..3 {
            server.send_text(&"abc".repeat(100)).unwrap();
            client.receive_data(&server.take_data_to_send());
            assert_eq!(messages(&mut client).unwrap(), vec![Message::text("abc".repeat(100))]);
        }
        assert_eq!(server.holds_deflate_state(), (false, false));
    }
}

mod limits {
    use super::*;

    #[test]
    fn a_small_frame_that_inflates_past_the_limit_fails_with_1009() {
        let config = Config { max_message_size: 64 * 1024, max_frame_size: 64 * 1024, ..Config::default() };
        let (_, mut s) = pair_with(all_compressed(), all_compressed(), config);
        let bomb = deflate_raw(&vec![0u8; 16 << 20]);
        assert!(bomb.len() < 20_000, "16 MiB of zeros is {} bytes compressed", bomb.len());
        s.receive_data(&masked(0xc2, &bomb));
        match s.next_event() {
            Err(ProtocolError::MessageTooLarge { size, max }) => {
                assert_eq!(max, 64 * 1024);
                assert!(size > 64 * 1024 && size <= 64 * 1024 + 1, "stopped at {size}");
            }
            other => panic!("expected MessageTooLarge, got {other:?}"),
        }
        assert_eq!(close_code_sent(&mut s), Some(1009));
        // Exactly at the limit is accepted.
        let (_, mut s) = pair_with(all_compressed(), all_compressed(), Config { max_message_size: 1 << 20, ..Config::default() });
        s.receive_data(&masked(0xc2, &deflate_raw(&vec![7u8; 1 << 20])));
        assert_eq!(messages(&mut s).unwrap()[0].len(), 1 << 20);
    }

    #[test]
    fn the_limit_counts_inflated_bytes_across_fragments() {
        let config = Config { max_message_size: 100_000, ..Config::default() };
        let (mut client, mut server) = pair_with(all_compressed(), all_compressed(), config);
        for i in 0..10 {
            client.sender().send_fragment(false, Bytes::from(vec![0u8; 20_000]), i == 9).unwrap();
        }
        let wire = client.take_data_to_send();
        assert!(wire.len() < 10_000, "{} bytes on the wire", wire.len());
        server.receive_data(&wire);
        assert!(matches!(server.next_event(), Err(ProtocolError::MessageTooLarge { max: 100_000, .. })));
        assert_eq!(close_code_sent(&mut server), Some(1009));
    }

    #[test]
    fn invalid_compressed_data_fails_with_1007() {
        let mut s = server();
        s.receive_data(&masked(0xc1, &[0xff, 0xff, 0xff, 0xff, 0x00]));
        assert!(matches!(s.next_event(), Err(ProtocolError::BadCompressedData(_))));
        assert_eq!(close_code_sent(&mut s), Some(1007));
    }
}
