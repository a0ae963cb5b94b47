//! Behaviour of the connection state machine, grouped by RFC 6455 section.
//! Bytes in, bytes and events out; no sockets.

use bytes::Bytes;
use proptest::prelude::*;
use tether_proto::{CloseCode, CloseFrame, Config, Connection, Event, Message, ProtocolError, Role};

fn server() -> Connection {
    Connection::new(Role::Server, Config::default())
}

fn client() -> Connection {
    let mut c = Connection::new(Role::Client, Config::default());
    c.set_mask_fn(|| [0x37, 0xfa, 0x21, 0x3d]);
    c
}

fn events(conn: &mut Connection) -> Result<Vec<Message>, ProtocolError> {
    let mut out = Vec::new();
    while let Some(ev) = conn.next_event()? {
        match ev {
            Event::Message(m) => out.push(m),
            other => panic!("unexpected {other:?}"),
        }
    }
    Ok(out)
}

/// Mask a frame the way a client would, with the RFC's example key.
fn masked(b0: u8, payload: &[u8]) -> Vec<u8> {
    let key = [0x37, 0xfa, 0x21, 0x3d];
    let mut out = vec![b0];
    if payload.len() < 126 {
        out.push(0x80 | payload.len() as u8);
    } else {
        out.push(0x80 | 126);
        out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    }
    out.extend_from_slice(&key);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    out
}

fn close_code_sent(conn: &mut Connection) -> Option<u16> {
    let out = conn.take_data_to_send();
    // Server frames are unmasked: 0x88, len, code.
    let pos = out.windows(1).position(|w| w[0] == 0x88)?;
    if out[pos + 1] >= 2 {
        Some(u16::from_be_bytes([out[pos + 2], out[pos + 3]]))
    } else {
        None
    }
}

mod section_5_7_examples {
    use super::*;

    #[test]
    fn single_frame_unmasked_text_to_client() {
        let mut c = client();
        c.receive_data(&[0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]);
        assert_eq!(events(&mut c).unwrap(), vec![Message::text("Hello")]);
    }

    #[test]
    fn single_frame_masked_text_to_server() {
        let mut s = server();
        s.receive_data(&[0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58]);
        assert_eq!(events(&mut s).unwrap(), vec![Message::text("Hello")]);
    }

    #[test]
    fn fragmented_unmasked_text() {
        let mut c = client();
        c.receive_data(&[0x01, 0x03, 0x48, 0x65, 0x6c]);
        assert_eq!(events(&mut c).unwrap(), vec![]);
        c.receive_data(&[0x80, 0x02, 0x6c, 0x6f]);
        assert_eq!(events(&mut c).unwrap(), vec![Message::text("Hello")]);
    }

    #[test]
    fn ping_is_answered_with_pong_carrying_the_same_payload() {
        let mut c = client();
        c.receive_data(&[0x89, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]);
        assert_eq!(events(&mut c).unwrap(), vec![Message::Ping(Bytes::from_static(b"Hello"))]);
        // The client's pong is masked: RFC 5.7's masked pong example.
        assert_eq!(c.take_data_to_send(), vec![0x8a, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58]);
    }

    #[test]
    fn binary_256_and_64k() {
        let mut s = Connection::new(Role::Server, Config::default());
        s.send_binary(&[7u8; 256]).unwrap();
        let out = s.take_data_to_send();
        assert_eq!(&out[..4], &[0x82, 0x7e, 0x01, 0x00]);
        s.send_binary(&vec![7u8; 65536]).unwrap();
        let out = s.take_data_to_send();
        assert_eq!(&out[..10], &[0x82, 0x7f, 0, 0, 0, 0, 0, 1, 0, 0]);
        assert_eq!(out.len(), 10 + 65536);
    }
}

mod section_5_1_masking {
    use super::*;

    #[test]
    fn server_fails_unmasked_client_frame_with_1002() {
        let mut s = server();
        s.receive_data(&[0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]);
        assert_eq!(events(&mut s), Err(ProtocolError::UnmaskedFrameFromClient));
        assert_eq!(close_code_sent(&mut s), Some(1002));
        assert!(s.should_close_transport());
    }

    #[test]
    fn client_fails_masked_server_frame() {
        let mut c = client();
        c.receive_data(&masked(0x81, b"Hello"));
        assert_eq!(events(&mut c), Err(ProtocolError::MaskedFrameFromServer));
    }

    #[test]
    fn client_masks_everything_it_sends() {
        let mut c = client();
        c.send_text("Hello").unwrap();
        assert_eq!(c.take_data_to_send(), masked(0x81, b"Hello"));
    }
}

mod section_5_2_framing {
    use super::*;

    #[test]
    fn reserved_bits_and_opcodes_fail_with_1002() {
        for (b0, err) in [
            (0xc1, ProtocolError::ReservedBitsSet),
            (0xa1, ProtocolError::ReservedBitsSet),
            (0x91, ProtocolError::ReservedBitsSet),
            (0x83, ProtocolError::ReservedOpcode(3)),
            (0x87, ProtocolError::ReservedOpcode(7)),
            (0x8b, ProtocolError::ReservedOpcode(0xb)),
            (0x8f, ProtocolError::ReservedOpcode(0xf)),
        ] {
            let mut s = server();
            s.receive_data(&masked(b0, b"x"));
            assert_eq!(events(&mut s), Err(err.clone()), "{b0:#x}");
            assert_eq!(err.close_code(), CloseCode::PROTOCOL_ERROR);
            assert_eq!(close_code_sent(&mut s), Some(1002));
        }
    }

    #[test]
    fn nothing_is_processed_after_a_failure() {
        let mut s = server();
        let mut bytes = masked(0x83, b"x");
        bytes.extend(masked(0x81, b"later"));
        s.receive_data(&bytes);
        assert!(events(&mut s).is_err());
        s.receive_data(&masked(0x81, b"more"));
        assert_eq!(events(&mut s).unwrap(), vec![]);
    }
}

mod section_5_4_fragmentation {
    use super::*;

    #[test]
    fn control_frames_may_be_interleaved() {
        let mut s = server();
        let mut bytes = masked(0x01, b"Hel");
        bytes.extend(masked(0x89, b"ping"));
        bytes.extend(masked(0x80, b"lo"));
        s.receive_data(&bytes);
        assert_eq!(events(&mut s).unwrap(), vec![Message::Ping(Bytes::from_static(b"ping")), Message::text("Hello")]);
        assert_eq!(s.take_data_to_send(), [0x8a, 0x04].iter().chain(b"ping").copied().collect::<Vec<_>>());
    }

    #[test]
    fn continuation_without_start_fails() {
        let mut s = server();
        s.receive_data(&masked(0x80, b"x"));
        assert_eq!(events(&mut s), Err(ProtocolError::UnexpectedContinuation));
    }

    #[test]
    fn new_message_inside_fragmented_one_fails() {
        let mut s = server();
        let mut bytes = masked(0x01, b"a");
        bytes.extend(masked(0x81, b"b"));
        s.receive_data(&bytes);
        assert_eq!(events(&mut s), Err(ProtocolError::ExpectedContinuation));
    }

    #[test]
    fn empty_fragments_assemble() {
        let mut s = server();
        let mut bytes = masked(0x02, b"");
        bytes.extend(masked(0x00, b""));
        bytes.extend(masked(0x80, b""));
        s.receive_data(&bytes);
        assert_eq!(events(&mut s).unwrap(), vec![Message::Binary(Bytes::new())]);
    }

    #[test]
    fn streaming_mode_delivers_fragments() {
        let mut s = server();
        let mut bytes = masked(0x01, b"Hel");
        bytes.extend(masked(0x80, b"lo"));
        s.receive_data(&bytes);
        let a = s.next_fragment().unwrap().unwrap();
        let b = s.next_fragment().unwrap().unwrap();
        assert_eq!(a, Event::Fragment { text: true, first: true, fin: false, payload: Bytes::from_static(b"Hel") });
        assert_eq!(b, Event::Fragment { text: true, first: false, fin: true, payload: Bytes::from_static(b"lo") });
    }

    #[test]
    fn sender_streams_fragments() {
        let mut s = Connection::new(Role::Server, Config::default());
        s.sender().send_fragment(true, Bytes::from_static(b"Hel"), false).unwrap();
        s.sender().send_fragment(true, Bytes::from_static(b"lo"), true).unwrap();
        let mut c = client();
        c.receive_data(&s.take_data_to_send());
        assert_eq!(events(&mut c).unwrap(), vec![Message::text("Hello")]);
    }
}

mod section_5_5_control_frames {
    use super::*;

    #[test]
    fn oversized_or_fragmented_control_frames_fail() {
        let mut s = server();
        s.receive_data(&masked(0x89, &[0u8; 126]));
        assert_eq!(events(&mut s), Err(ProtocolError::ControlFrameTooLarge(126)));
        let mut s = server();
        s.receive_data(&masked(0x09, b"x"));
        assert_eq!(events(&mut s), Err(ProtocolError::FragmentedControlFrame));
    }

    #[test]
    fn sending_oversized_control_payload_is_refused() {
        let mut s = server();
        assert!(s.send_ping(&[0u8; 126]).is_err());
        assert!(s.send_ping(&[0u8; 125]).is_ok());
    }
}

mod section_5_5_1_closing {
    use super::*;

    #[test]
    fn peer_initiated_close_is_echoed_and_server_closes_transport() {
        let mut s = server();
        s.receive_data(&masked(0x88, b"\x03\xe8bye"));
        let evs = events(&mut s).unwrap();
        assert_eq!(evs, vec![Message::Close(Some(CloseFrame::new(1000, "bye")))]);
        // The code and the reason come back (§5.5.1 asks for the code; the
        // reason is echoed as browsers, ws and python-websockets expect).
        assert_eq!(s.take_data_to_send(), vec![0x88, 0x05, 0x03, 0xe8, b'b', b'y', b'e']);
        assert!(s.is_closed() && s.was_clean() && s.should_close_transport());
        assert_eq!(s.closed_by(), Some(tether_proto::connection::ClosedBy::Remote));
        assert_eq!(s.close_code(), CloseCode::NORMAL);
        // Nothing after a close frame is processed.
        s.receive_data(&masked(0x81, b"late"));
        assert_eq!(events(&mut s).unwrap(), vec![]);
        assert!(s.send_text("late").is_err());
    }

    #[test]
    fn locally_initiated_close_completes_when_peer_answers() {
        let mut c = client();
        c.close(Some(CloseFrame::new(CloseCode::GOING_AWAY, "bye"))).unwrap();
        assert!(c.is_closing() && !c.is_closed());
        let sent = c.take_data_to_send();
        let mut s = server();
        s.receive_data(&sent);
        assert_eq!(events(&mut s).unwrap(), vec![Message::Close(Some(CloseFrame::new(1001, "bye")))]);
        c.receive_data(&s.take_data_to_send());
        assert_eq!(events(&mut c).unwrap(), vec![Message::Close(Some(CloseFrame::new(1001, "bye")))]);
        assert!(c.is_closed() && c.was_clean());
        // The client waits for the server to close TCP (§7.1.1).
        assert!(!c.should_close_transport());
        assert_eq!(c.take_data_to_send(), Vec::<u8>::new(), "no second close");
        assert_eq!(c.closed_by(), Some(tether_proto::connection::ClosedBy::Local));
    }

    #[test]
    fn empty_close_is_echoed_empty_and_reports_1005() {
        let mut s = server();
        s.receive_data(&masked(0x88, b""));
        assert_eq!(events(&mut s).unwrap(), vec![Message::Close(None)]);
        assert_eq!(s.take_data_to_send(), vec![0x88, 0x00]);
        assert_eq!(s.close_code(), CloseCode::NO_STATUS);
    }

    #[test]
    fn bad_close_bodies_fail_with_1002_or_1007() {
        for (body, err, code) in [
            (&b"\x03"[..], ProtocolError::CloseFrameTooShort, 1002),
            (&b"\x03\xed"[..], ProtocolError::InvalidCloseCode(1005), 1002),
            (&b"\x03\xe7"[..], ProtocolError::InvalidCloseCode(999), 1002),
            (&b"\x13\x88"[..], ProtocolError::InvalidCloseCode(5000), 1002),
            (&b"\x03\xe8\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80"[..], ProtocolError::InvalidUtf8, 1007),
        ] {
            let mut s = server();
            s.receive_data(&masked(0x88, body));
            assert_eq!(events(&mut s), Err(err), "{body:?}");
            assert_eq!(close_code_sent(&mut s), Some(code));
        }
    }

    #[test]
    fn eof_without_close_is_abnormal() {
        let mut s = server();
        s.receive_eof();
        assert!(!s.was_clean());
        assert_eq!(s.close_code(), CloseCode::ABNORMAL);
        assert!(s.should_close_transport());
    }

    #[test]
    fn invalid_close_codes_cannot_be_sent() {
        let mut s = server();
        assert!(s.close(Some(CloseFrame::new(1005, ""))).is_err());
        assert!(s.close(Some(CloseFrame::new(4000, "app"))).is_ok());
    }
}

mod section_8_1_utf8 {
    use super::*;

    #[test]
    fn invalid_text_fails_with_1007() {
        let mut s = server();
        s.receive_data(&masked(0x81, &[0xce, 0xba, 0xff]));
        assert_eq!(events(&mut s), Err(ProtocolError::InvalidUtf8));
        assert_eq!(close_code_sent(&mut s), Some(1007));
    }

    #[test]
    fn fails_fast_in_the_fragment_with_the_bad_byte() {
        // Autobahn 6.4.1: the first fragment is valid; the second holds an
        // invalid sequence; the third never needs to arrive.
        let mut s = server();
        s.receive_data(&masked(0x01, "κόσμε".as_bytes()));
        assert_eq!(events(&mut s).unwrap(), vec![]);
        s.receive_data(&masked(0x00, &[0xf4, 0x90, 0x80, 0x80]));
        assert_eq!(events(&mut s), Err(ProtocolError::InvalidUtf8));
    }

    #[test]
    fn characters_split_across_fragments_are_fine() {
        let mut s = server();
        let euro = "€".as_bytes();
        let mut bytes = masked(0x01, &euro[..1]);
        bytes.extend(masked(0x00, &euro[1..2]));
        bytes.extend(masked(0x80, &euro[2..]));
        s.receive_data(&bytes);
        assert_eq!(events(&mut s).unwrap(), vec![Message::text("€")]);
    }

    #[test]
    fn message_ending_mid_character_fails() {
        let mut s = server();
        let mut bytes = masked(0x01, b"a");
        bytes.extend(masked(0x80, &[0xe2, 0x82]));
        s.receive_data(&bytes);
        assert_eq!(events(&mut s), Err(ProtocolError::InvalidUtf8));
    }
}

mod limits {
    use super::*;

    fn limited() -> Connection {
        Connection::new(Role::Server, Config { max_frame_size: 100, max_message_size: 150, ..Config::default() })
    }

    #[test]
    fn oversized_frame_fails_on_its_header_with_1009() {
        let mut s = limited();
        // Only the header of a 1 MiB frame: rejected before any payload arrives.
        let mut header = vec![0x82, 0xff];
        header.extend_from_slice(&(1u64 << 20).to_be_bytes());
        header.extend_from_slice(&[1, 2, 3, 4]);
        s.receive_data(&header);
        assert_eq!(events(&mut s), Err(ProtocolError::FrameTooLarge { size: 1 << 20, max: 100 }));
        assert_eq!(close_code_sent(&mut s), Some(1009));
    }

    #[test]
    fn oversized_message_across_fragments_fails_with_1009() {
        let mut s = limited();
        let mut bytes = masked(0x02, &[0u8; 100]);
        bytes.extend(masked(0x80, &[0u8; 51]));
        s.receive_data(&bytes);
        assert!(matches!(events(&mut s), Err(ProtocolError::MessageTooLarge { .. })));
        assert_eq!(close_code_sent(&mut s), Some(1009));
    }

    #[test]
    fn exactly_the_limit_is_accepted() {
        let mut s = limited();
        let mut bytes = masked(0x02, &[0u8; 100]);
        bytes.extend(masked(0x80, &[0u8; 50]));
        s.receive_data(&bytes);
        assert_eq!(events(&mut s).unwrap(), vec![Message::Binary(Bytes::from(vec![0u8; 150]))]);
    }
}

fn arb_message() -> impl Strategy<Value = Message> {
    prop_oneof![
        ".{0,300}".prop_map(Message::text),
        proptest::collection::vec(any::<u8>(), 0..70_000).prop_map(|v| Message::Binary(v.into())),
        proptest::collection::vec(any::<u8>(), 0..=125).prop_map(|v| Message::Ping(v.into())),
        proptest::collection::vec(any::<u8>(), 0..=125).prop_map(|v| Message::Pong(v.into())),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Encode with one role, decode with the other: the same messages.
    #[test]
    fn encode_then_decode_roundtrip(msgs in proptest::collection::vec(arb_message(), 1..8), from_client: bool) {
        let (mut tx, mut rx) = if from_client {
            (Connection::new(Role::Client, Config::default()), server())
        } else {
            (server(), Connection::new(Role::Client, Config::default()))
        };
        for m in &msgs {
            tx.send(m.clone()).unwrap();
        }
        rx.receive_data(&tx.take_data_to_send());
        prop_assert_eq!(events(&mut rx).unwrap(), msgs);
    }

    /// Any valid stream split at arbitrary points gives the same events as fed whole.
    #[test]
    fn split_points_do_not_matter(msgs in proptest::collection::vec(arb_message(), 1..6), cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..12)) {
        let mut tx = Connection::new(Role::Client, Config::default());
        for m in &msgs {
            tx.send(m.clone()).unwrap();
        }
        tx.close(Some(CloseFrame::new(1000, "done"))).unwrap();
        let bytes = tx.take_data_to_send();

        let mut whole = server();
        whole.receive_data(&bytes);
        let expected = events(&mut whole).unwrap();

        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(bytes.len() + 1)).collect();
        points.sort();
        let mut pieces = server();
        let mut got = Vec::new();
        let mut start = 0;
        for p in points.into_iter().chain([bytes.len()]) {
            pieces.receive_data(&bytes[start..p]);
            start = p;
            got.extend(events(&mut pieces).unwrap());
        }
        prop_assert_eq!(got, expected);
    }
}

mod broadcast_frames {
    use super::*;
    use tether_proto::EncodedFrame;

    #[test]
    fn encoded_frames_decode_on_any_client_and_are_refused_by_client_senders() {
        let frame = EncodedFrame::text("to everyone");
        for _ in 0..3 {
            let mut s = Connection::new(Role::Server, Config::default());
            s.sender().send_encoded(frame.clone()).unwrap();
            let mut c = client();
            c.receive_data(&s.take_data_to_send());
            assert_eq!(events(&mut c).unwrap(), vec![Message::text("to everyone")]);
        }
        let mut c = client();
        assert!(c.sender().send_encoded(EncodedFrame::binary(b"x")).is_err());
    }
}

/// §7: the connection owns its closing: an explicit state, a deadline given
/// as time passed in (no clock inside), and what an end of stream means.
mod section_7_closing_state_and_time {
    use super::*;
    use std::time::{Duration, Instant};
    use tether_proto::{EndReason, State};

    const TIMEOUT: Duration = Duration::from_secs(10);

    #[test]
    fn states_follow_the_close_frames() {
        let mut c = client();
        let mut s = server();
        assert_eq!((c.state(), s.state()), (State::Open, State::Open));
        c.close(Some(CloseFrame::new(1000, "bye"))).unwrap();
        assert_eq!(c.state(), State::CloseSent);
        s.receive_data(&c.take_data_to_send());
        events(&mut s).unwrap();
        // The server echoed at once (auto_close): both frames, and it closes TCP first.
        assert_eq!(s.state(), State::Closed);
        assert!(s.should_close_transport());
        c.receive_data(&s.take_data_to_send());
        events(&mut c).unwrap();
        assert_eq!(c.state(), State::Closed);
        assert!(!c.should_close_transport(), "a client waits for the server's EOF (§7.1.1)");
        c.receive_eof();
        assert_eq!(c.state(), State::Ended { clean: true, reason: EndReason::Eof });
        assert!(c.was_clean() && c.should_close_transport());
    }

    #[test]
    fn no_deadline_while_open_then_one_close_timeout_after_closing_began() {
        let t0 = Instant::now();
        let mut c = client();
        assert_eq!(c.poll_timeout(t0), None);
        c.close(None).unwrap();
        let deadline = c.poll_timeout(t0).expect("a deadline once closing");
        assert_eq!(deadline, t0 + TIMEOUT);
        // Asking again later does not move it.
        assert_eq!(c.poll_timeout(t0 + Duration::from_secs(3)), Some(deadline));
        c.handle_timeout(t0 + Duration::from_secs(9));
        assert_eq!(c.state(), State::CloseSent, "not yet");
        c.handle_timeout(deadline);
        assert_eq!(c.state(), State::Ended { clean: false, reason: EndReason::TimedOut });
        assert!(c.timed_out() && c.should_close_transport() && !c.was_clean());
        assert_eq!(c.close_code(), CloseCode::ABNORMAL);
        assert_eq!(c.poll_timeout(deadline), None, "ended: nothing more to wait for");
    }

    #[test]
    fn a_client_whose_server_never_hangs_up_ends_clean_at_the_deadline() {
        let t0 = Instant::now();
        let mut c = client();
        c.close(None).unwrap();
        let _ = c.take_data_to_send();
        c.poll_timeout(t0);
        c.receive_data(&[0x88, 0x00]); // the server's close
        events(&mut c).unwrap();
        assert_eq!(c.state(), State::Closed);
        c.handle_timeout(t0 + TIMEOUT);
        assert_eq!(c.state(), State::Ended { clean: true, reason: EndReason::TimedOut });
        assert!(c.was_clean());
    }

    #[test]
    fn end_of_stream_before_a_close_frame_is_an_abnormal_closure() {
        let mut s = server();
        s.receive_eof();
        assert_eq!(s.state(), State::Ended { clean: false, reason: EndReason::Eof });
        assert_eq!(s.close_code(), CloseCode::ABNORMAL);
        assert!(!s.was_clean() && s.should_close_transport());
    }

    #[test]
    fn a_failure_closes_the_transport_and_bounds_the_linger() {
        let t0 = Instant::now();
        let mut s = server();
        s.receive_data(&[0x81, 0x05, b'h', b'e', b'l', b'l', b'o']); // unmasked from a client
        assert!(events(&mut s).is_err());
        assert_eq!(s.state(), State::Failed);
        assert!(s.should_close_transport());
        assert_eq!(s.poll_timeout(t0), Some(t0 + TIMEOUT), "the linger after a failure is bounded too");
        s.handle_timeout(t0 + TIMEOUT);
        assert!(s.timed_out() && !s.was_clean());
    }

    #[test]
    fn the_close_timeout_comes_from_the_config() {
        let t0 = Instant::now();
        let mut c = Connection::new(Role::Client, Config { close_timeout: Duration::from_millis(250), ..Config::default() });
        c.close(None).unwrap();
        assert_eq!(c.poll_timeout(t0), Some(t0 + Duration::from_millis(250)));
    }
}
