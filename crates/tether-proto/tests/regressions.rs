//! Regression tests for bugs found by the fuzz targets in `fuzz/` (see
//! `fuzz/README.md`). Each test names the target that found the bug.

use tether_proto::handshake::{ClientHandshake, ClientRequest, DEFAULT_MAX_HANDSHAKE_SIZE};
use tether_proto::{Config, Connection, Event, HandshakeError, Message, Role};

fn server() -> Connection {
    Connection::new(Role::Server, Config::default())
}

/// A masked frame with a 7-bit length, as a client sends it.
fn masked(b0: u8, payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126);
    let key = [0x37, 0xfa, 0x21, 0x3d];
    let mut out = vec![b0, 0x80 | payload.len() as u8];
    out.extend_from_slice(&key);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    out
}

/// Found by `frame_decoder` (mixed mode). A message whose first frame came out
/// of `next_fragment` was finished by `next_event`: the assembled "message"
/// held only the later fragments, and for text that can be a `Utf8Bytes` that
/// is not UTF-8 (here the lone continuation byte 0xA9 of "é"), which
/// `Utf8Bytes::as_str` turns into undefined behaviour.
#[test]
fn message_started_as_fragments_stays_fragments_when_next_event_is_called() {
    let mut s = server();
    s.receive_data(&masked(0x01, &[b'a', 0xc3])); // text, not FIN: "a" + first byte of "é"
    s.receive_data(&masked(0x80, &[0xa9, b'b'])); // continuation, FIN: second byte of "é" + "b"

    let first = s.next_fragment().unwrap().unwrap();
    assert!(matches!(
        first,
        Event::Fragment {
            text: true,
            first: true,
            fin: false,
            ..
        }
    ));
    // The caller switches to next_event mid-message: the message goes on as it began.
    match s.next_event().unwrap().unwrap() {
        Event::Fragment {
            text: true,
            first: false,
            fin: true,
            payload,
        } => assert_eq!(&payload[..], &[0xa9, b'b']),
        other => panic!("expected the last fragment, got {other:?}"),
    }
    assert_eq!(s.next_event().unwrap(), None);
}

/// Found by `frame_decoder` (mixed mode). The reverse: a message begun by
/// `next_event` and finished by `next_fragment` left its first part in the
/// assembly buffer, where it was glued to the front of the next message, so
/// that message came out with bytes the peer never sent in it (and, for text,
/// possibly not UTF-8).
#[test]
fn message_started_assembled_stays_assembled_when_next_fragment_is_called() {
    let mut s = server();
    s.receive_data(&masked(0x01, b"Hel")); // text, not FIN
                                           // next_event takes the first frame into its assembly buffer.
    assert_eq!(s.next_event().unwrap(), None);
    // The caller switches to next_fragment: the message is finished whole.
    s.receive_data(&masked(0x80, b"lo"));
    s.receive_data(&masked(0x01, b"ne")); // a fragmented second message
    s.receive_data(&masked(0x80, b"xt"));
    assert_eq!(s.next_fragment().unwrap(), Some(Event::Message(Message::text("Hello"))));
    // The second message starts in streaming mode and carries only its own bytes.
    let mut second = Vec::new();
    while let Some(ev) = s.next_fragment().unwrap() {
        match ev {
            Event::Fragment { payload, .. } => second.extend_from_slice(&payload),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(second, b"next");
    assert_eq!(
        s.receiver().buffered_len(),
        0,
        "nothing left behind in the assembly buffer"
    );
}

/// Found while writing `client_handshake` (its size assertion; libFuzzer's
/// default input length cannot reach 16 KiB). The client accepted a 101
/// response whose headers were larger than the handshake size limit when they
/// arrived in one read (the limit was only checked while the headers were
/// incomplete), unlike the server side.
#[test]
fn client_refuses_a_complete_response_over_the_size_limit() {
    let req = ClientRequest {
        host: "example.com".into(),
        target: "/".into(),
        ..Default::default()
    };
    let (client, _) = ClientHandshake::with_key(&req, "dGhlIHNhbXBsZSBub25jZQ==".into());
    let padding = "a".repeat(DEFAULT_MAX_HANDSHAKE_SIZE);
    let resp = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nX-Padding: {padding}\r\n\r\n"
    );
    assert_eq!(
        client.parse_response(resp.as_bytes()).unwrap_err(),
        HandshakeError::HeadersTooLarge(DEFAULT_MAX_HANDSHAKE_SIZE)
    );
}
