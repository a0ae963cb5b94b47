//! RFC 8441 (WebSocket over HTTP/2): the extended CONNECT request and the
//! 200 that accepts it, decided here so every HTTP/2 server says the same.

use tether_proto::handshake::Request;
use tether_proto::negotiate::{extended_connect_headers, negotiate, UpgradeOffer};
use tether_proto::{DeflateConfig, HandshakeError, Rejection};

fn connect(method: &str, protocol: Option<&str>, headers: &[(&str, &str)]) -> Result<Request, HandshakeError> {
    Request::from_extended_connect(method, protocol, "/chat?x=1", headers.iter().map(|(k, v)| (*k, v.as_bytes())))
}

#[test]
fn section_4_extended_connect_with_websocket_protocol_is_accepted() {
    let req = connect(
        "CONNECT",
        Some("websocket"),
        &[("sec-websocket-version", "13"), ("sec-websocket-protocol", "tether.v1, chat"), ("origin", "https://a.example")],
    )
    .unwrap();
    assert_eq!(req.path(), "/chat");
    assert_eq!(req.query(), Some("x=1"));
    assert_eq!(req.origin(), Some("https://a.example"));
    assert_eq!(req.protocols(), vec!["tether.v1", "chat"]);
    // §5: no Sec-WebSocket-Key on HTTP/2.
    assert_eq!(req.key(), "");
}

#[test]
fn section_4_other_methods_and_protocols_are_refused_with_400() {
    for (method, protocol) in [("GET", Some("websocket")), ("CONNECT", None), ("CONNECT", Some("webtransport"))] {
        let err = connect(method, protocol, &[("sec-websocket-version", "13")]).unwrap_err();
        assert!(matches!(err, HandshakeError::NotExtendedConnect(_)), "{method} {protocol:?}: {err:?}");
        assert_eq!(err.http_status(), 400);
    }
}

#[test]
fn section_5_version_13_is_required_and_426_says_so() {
    for headers in [&[][..], &[("sec-websocket-version", "8")][..]] {
        let err = connect("CONNECT", Some("websocket"), headers).unwrap_err();
        assert!(matches!(err, HandshakeError::UnsupportedVersion(_)));
        let rejection = Rejection::from_error(&err);
        assert_eq!(rejection.status, 426);
        assert!(rejection.headers.contains(&("Sec-WebSocket-Version".to_string(), "13".to_string())));
    }
}

#[test]
fn section_5_the_answer_carries_protocol_and_deflate_but_no_accept() {
    let req = connect(
        "CONNECT",
        Some("websocket"),
        &[("sec-websocket-version", "13"), ("sec-websocket-protocol", "tether.v1"), ("sec-websocket-extensions", "permessage-deflate; client_max_window_bits")],
    )
    .unwrap();
    let negotiated = negotiate(&UpgradeOffer::from_request(&req), Some("tether.v1"), Some(&DeflateConfig::default()), &[]);
    let headers = extended_connect_headers(&negotiated, &[("X-Node", "a")]);
    let names: Vec<&str> = headers.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(names, ["sec-websocket-protocol", "sec-websocket-extensions", "x-node"]);
    assert_eq!(headers[0].1, "tether.v1");
    assert!(headers[1].1.starts_with("permessage-deflate"), "{}", headers[1].1);

    // Nothing offered, nothing agreed: an empty answer (just the 200).
    let bare = connect("CONNECT", Some("websocket"), &[("sec-websocket-version", "13")]).unwrap();
    let negotiated = negotiate(&UpgradeOffer::from_request(&bare), Some("tether.v1"), Some(&DeflateConfig::default()), &[]);
    assert!(extended_connect_headers(&negotiated, &[]).is_empty());
}
