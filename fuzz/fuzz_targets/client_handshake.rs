//! `ClientHandshake::parse_response` on arbitrary bytes, called again on a
//! growing buffer after every read, with reads of arbitrary size.
//!
//! Input layout: byte 0 seeds the read sizes and picks what the client
//! offered (nothing, or two subprotocols and permessage-deflate); the rest is
//! what the server answered.
//!
//! Checked:
//! - nothing panics;
//! - the result does not depend on how the bytes were split (see
//!   `server_handshake`);
//! - an accepted response took at most the handshake size limit, names only
//!   a subprotocol and extensions that were offered, and came with status 101.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tether_proto::handshake::{ClientHandshake, ClientRequest, DEFAULT_MAX_HANDSHAKE_SIZE};

/// The key of RFC 6455 §1.3, so seeds can carry its accept value
/// (`s3pPLMBiTxaQ9kYGzzhZRbK+xOo=`).
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, input)) = data.split_first() else {
        return;
    };
    let offer = if ctl & 0x80 != 0 {
        ClientRequest {
            host: "example.com".into(),
            target: "/chat".into(),
            protocols: vec!["chat".into(), "superchat".into()],
            extensions: Some("permessage-deflate; client_max_window_bits".into()),
            headers: Vec::new(),
        }
    } else {
        ClientRequest {
            host: "example.com".into(),
            target: "/".into(),
            ..Default::default()
        }
    };
    let (client, _request) = ClientHandshake::with_key(&offer, KEY.to_string());
    let whole = client.parse_response(input);
    if let Ok(Some((resp, n))) = &whole {
        assert!(*n <= input.len());
        assert!(
            *n <= DEFAULT_MAX_HANDSHAKE_SIZE,
            "accepted a {n}-byte response (limit {DEFAULT_MAX_HANDSHAKE_SIZE})"
        );
        if let Some(p) = &resp.protocol {
            assert!(offer.protocols.contains(p), "unoffered subprotocol {p:?} accepted");
        }
        for ext in &resp.extensions {
            assert_eq!(ext.name, "permessage-deflate", "unoffered extension accepted");
        }
    }

    let step = 1 + (ctl & 0x7f) as usize;
    let mut state = ctl as usize;
    let mut end = 0;
    while end < input.len() {
        state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345) & 0x7fff_ffff;
        end = (end + 1 + state % step).min(input.len());
        match client.parse_response(&input[..end]) {
            Ok(None) => continue,
            Ok(Some((resp, n))) => {
                let Ok(Some((full, full_n))) = &whole else {
                    panic!("prefix of {end} bytes parsed, whole input gave {whole:?}");
                };
                assert_eq!(
                    (n, &resp.protocol, &resp.extensions),
                    (*full_n, &full.protocol, &full.extensions)
                );
                return;
            }
            Err(e) => {
                assert!(
                    whole.is_err(),
                    "prefix of {end} bytes failed with {e:?}, whole input gave Ok"
                );
                return;
            }
        }
    }
    assert!(matches!(whole, Ok(None)), "whole input: {whole:?}");
});
