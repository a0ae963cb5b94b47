//! `parse_request` on arbitrary bytes, as an I/O layer calls it: again on a
//! growing buffer after every read, with reads of arbitrary size.
//!
//! Input layout: byte 0 seeds the read sizes and picks the size limit (the
//! default 16 KiB, or 256 bytes so the limit is reached); the rest is what
//! the client sent.
//!
//! Checked:
//! - nothing panics, in parsing or in any accessor of a parsed `Request`, or
//!   in building the accept and error responses;
//! - the result does not depend on how the bytes were split: the first prefix
//!   that parses gives the same request and length as the whole input, and an
//!   error on a prefix is an error on the whole input;
//! - the request never takes more than the size limit, nor more than the
//!   bytes received;
//! - a parsed request round-trips: the 101 response that `accept` builds
//!   (with the first subprotocol offered) is accepted by a `ClientHandshake`
//!   holding the same key and offers.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tether_proto::handshake::{
    error_response, parse_request, ClientHandshake, ClientRequest, Request, DEFAULT_MAX_HANDSHAKE_SIZE,
};

fn exercise(req: &Request) {
    let _ = (req.uri(), req.path(), req.query(), req.origin(), req.host(), req.key());
    let _ = req.header_str("sec-websocket-protocol");
    let _ = req.headers().count();
    let protocols = req.protocols();
    let _ = req.extensions();
    let chosen = protocols.first().copied();
    let response = req.accept(chosen, None, &[]);

    // The client's side of the same handshake must accept this answer.
    let offer = ClientRequest {
        protocols: protocols.iter().map(|p| p.to_string()).collect(),
        ..Default::default()
    };
    let (client, _) = ClientHandshake::with_key(&offer, req.key().to_string());
    match client.parse_response(&response) {
        Ok(Some((resp, n))) => {
            assert_eq!(n, response.len());
            assert_eq!(resp.protocol.as_deref(), chosen);
        }
        other => panic!(
            "own accept response refused: {other:?}\n{}",
            String::from_utf8_lossy(&response)
        ),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, input)) = data.split_first() else {
        return;
    };
    let max = if ctl & 0x80 != 0 {
        256
    } else {
        DEFAULT_MAX_HANDSHAKE_SIZE
    };
    let whole = parse_request(input, max);
    if let Err(e) = &whole {
        let _ = error_response(e);
    }

    // Reads of 1..=step bytes, step from the control byte.
    let step = 1 + (ctl & 0x7f) as usize;
    let mut state = ctl as usize;
    let mut end = 0;
    while end < input.len() {
        state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345) & 0x7fff_ffff;
        end = (end + 1 + state % step).min(input.len());
        match parse_request(&input[..end], max) {
            Ok(None) => continue,
            Ok(Some((req, n))) => {
                assert!(n <= end && n <= max, "took {n} of {end} bytes (limit {max})");
                let Ok(Some((full, full_n))) = &whole else {
                    panic!("prefix of {end} bytes parsed, whole input gave {whole:?}");
                };
                assert_eq!((n, req.uri(), req.key()), (*full_n, full.uri(), full.key()));
                exercise(&req);
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
    // Every prefix, the whole input included, wanted more.
    assert!(matches!(whole, Ok(None)), "whole input: {whole:?}");
});
