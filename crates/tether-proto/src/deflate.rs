//! permessage-deflate (RFC 7692): settings, negotiation in both roles, and
//! the agreement a [`Connection`](crate::Connection) is built with.
//!
//! Why it lives here: what is offered, what is accepted and which frames
//! may carry RSV1 are protocol decisions, made without I/O. The compressor
//! and decompressor that act on them are in `deflate/codec.rs`.
//!
//! Memory is the design constraint. A zlib-rs compressor holds 245-371 KiB
//! and a decompressor 46 KiB (measured in `BENCHMARKS-deflate.md`), which
//! across 10 000 connections is gigabytes. So by default
//! ([`DeflateConfig::default`]) both directions are negotiated without
//! context takeover: no state survives a message, the state used for one
//! message is borrowed from a one-per-thread spare, and an idle connection
//! holds no zlib memory at all. Context takeover (better ratios on small,
//! similar messages) is a choice with its cost written next to it.
//!
//! Server: [`DeflateConfig::negotiate`] picks the first acceptable offer
//! (§5.1) and returns the [`PerMessageDeflate`] to build the connection
//! with; [`PerMessageDeflate::response`] is the header value to answer with.
//! Client: send [`DeflateConfig::offer`], then check the server's answer with
//! [`DeflateConfig::accept_response`].

pub(crate) mod codec;

use crate::error::HandshakeError;
use crate::handshake::ExtensionOffer;
use std::fmt;

/// The extension's registered name (RFC 7692 §7).
pub const EXTENSION_NAME: &str = "permessage-deflate";

/// The largest LZ77 window DEFLATE allows: 2^15 = 32 KiB (RFC 7692 §7.1.2).
pub const MAX_WINDOW_BITS: u8 = 15;

/// The smallest window zlib can compress with: 2^9 = 512 bytes. A peer may
/// ask for 8; zlib then compresses with 9, which never refers further back
/// than 250 bytes (its window minus the 262-byte lookahead), within 2^8.
/// (Checked: zlib-rs output at window 9, levels 1/6/9, with context
/// takeover, inflates with zlib's raw inflate at window 8.)
pub const MIN_WINDOW_BITS: u8 = 9;

/// Settings for permessage-deflate, in terms an operator can weigh: whether
/// a connection keeps compression state between messages (memory) and how
/// much CPU to spend per byte saved.
///
/// Memory per idle connection, measured as resident memory of `tether echo`
/// (release build; 1000 connections, 300 with context takeover, that each
/// exchanged one compressed message; see `BENCHMARKS-deflate.md` and
/// tether-cli's `deflate_memory` test, which checks these figures):
///
/// | setting | compression state per idle connection | `tether echo` total per connection |
/// | --- | --- | --- |
/// | off (`Config::deflate: None`) | — | 1.8 KiB |
/// | `context_takeover: false` (default) | 0: borrowed per message from one spare per thread | 1.7 KiB |
/// | `context_takeover: true`, `max_window_bits: 15` | ≈ 305 KiB compressor + ≈ 19 KiB decompressor | 333 KiB |
/// | `context_takeover: true`, `max_window_bits: 12` | ≈ 193 KiB + ≈ 19 KiB (component figures) | ≈ 215 KiB |
/// | `context_takeover: true`, `max_window_bits: 9` | ≈ 180 KiB + ≈ 19 KiB | 209 KiB |
///
/// Each thread that compresses also keeps one spare compressor and one
/// spare decompressor (≈ 420 KiB allocated) for messages without context
/// takeover. While a message is compressed or inflated, it and its
/// compressed form are in memory; inflation never grows past
/// `max_message_size`. With context takeover the decompressor is kept only
/// if the peer keeps its context too.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeflateConfig {
    /// Messages smaller than this many bytes are sent uncompressed.
    ///
    /// Default 256. Measured on JSON-like text without context takeover:
    /// below 64 bytes DEFLATE output is larger than its input, at 128 bytes
    /// it saves 15%, at 256 bytes 35% (and at 1 KiB 55%); each compressed
    /// message costs a fixed ~4 µs to reset the compressor. 256 is where
    /// the saving clearly pays for that. With context takeover, small
    /// messages compress much better (256 bytes to 35%, 64 bytes to 39%) and
    /// cost no reset: consider a lower threshold then.
    pub threshold: usize,
    /// Keep the LZ77 window between messages (RFC 7692 §7.1.1), in both
    /// directions when the peer agrees.
    ///
    /// Default false: every message is compressed on its own, and an idle
    /// connection holds no compression state. True compresses small similar
    /// messages 2-3× better (JSON of 256 bytes: 35% of its size instead of
    /// 65%) but holds ≈ 180-305 KiB of compressor and ≈ 19 KiB of
    /// decompressor state per connection for its whole life (see the table).
    pub context_takeover: bool,
    /// Largest LZ77 window, as a power of two: 9 (512 bytes) to 15 (32 KiB).
    ///
    /// Default 15. Only matters with `context_takeover`: a smaller window
    /// saves compressor memory (≈ 305 KiB at 15, ≈ 193 KiB at 12, ≈ 180 KiB
    /// at 9, resident) and asks the peer to use no larger a window for what
    /// it sends. Values outside 9..=15 are clamped.
    pub max_window_bits: u8,
    /// zlib compression level, 0 (store) to 9 (smallest).
    ///
    /// Default 1. Measured on 1 KiB JSON with zlib-rs: level 1 compresses
    /// 370 MiB/s to 32% (context takeover) or 46%; level 6 only 34 MiB/s to
    /// 22% or 37%. For real-time traffic, CPU per message matters more than
    /// the last third of the bytes.
    pub level: u32,
}

impl Default for DeflateConfig {
    fn default() -> Self {
        DeflateConfig { threshold: 256, context_takeover: false, max_window_bits: MAX_WINDOW_BITS, level: 1 }
    }
}

/// The parameters of an accepted permessage-deflate (RFC 7692 §7.1), as
/// written in the server's response.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeflateParams {
    /// The server resets its compression context after each message (§7.1.1.1).
    pub server_no_context_takeover: bool,
    /// The client resets its compression context after each message (§7.1.1.2).
    pub client_no_context_takeover: bool,
    /// The server compresses with a window of at most 2^n bytes (§7.1.2.1).
    pub server_max_window_bits: Option<u8>,
    /// The client compresses with a window of at most 2^n bytes (§7.1.2.2).
    pub client_max_window_bits: Option<u8>,
}

impl fmt::Display for DeflateParams {
    /// The `Sec-WebSocket-Extensions` element for these parameters.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(EXTENSION_NAME)?;
        if self.server_no_context_takeover {
            f.write_str("; server_no_context_takeover")?;
        }
        if self.client_no_context_takeover {
            f.write_str("; client_no_context_takeover")?;
        }
        if let Some(bits) = self.server_max_window_bits {
            write!(f, "; server_max_window_bits={bits}")?;
        }
        if let Some(bits) = self.client_max_window_bits {
            write!(f, "; client_max_window_bits={bits}")?;
        }
        Ok(())
    }
}

/// permessage-deflate as agreed for one connection: the negotiated
/// parameters and the local settings. Build the connection with it
/// ([`Connection::with_deflate`](crate::Connection::with_deflate)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PerMessageDeflate {
    /// What was agreed.
    pub params: DeflateParams,
    /// Local settings (threshold, level, whether to keep context).
    pub config: DeflateConfig,
}

impl PerMessageDeflate {
    /// The `Sec-WebSocket-Extensions` value a server answers with.
    pub fn response(&self) -> String {
        self.params.to_string()
    }

    /// How our compressor works in `role`: (window bits, context takeover).
    pub(crate) fn sending(&self, role: crate::Role) -> (u8, bool) {
        let (no_takeover, bits) = match role {
            crate::Role::Server => (self.params.server_no_context_takeover, self.params.server_max_window_bits),
            crate::Role::Client => (self.params.client_no_context_takeover, self.params.client_max_window_bits),
        };
        // A compressor may always use a smaller window and drop its context
        // unilaterally: the peer's decompressor does not notice.
        let bits = bits.unwrap_or(MAX_WINDOW_BITS).min(self.config.max_window_bits).clamp(MIN_WINDOW_BITS, MAX_WINDOW_BITS);
        (bits, self.config.context_takeover && !no_takeover)
    }

    /// Whether the peer keeps its compression context between messages, so
    /// our decompressor must keep its window too.
    pub(crate) fn peer_keeps_context(&self, role: crate::Role) -> bool {
        match role {
            crate::Role::Server => !self.params.client_no_context_takeover,
            crate::Role::Client => !self.params.server_no_context_takeover,
        }
    }
}

/// One permessage-deflate element's parameters, validated (§7.1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Params {
    server_no_context_takeover: bool,
    client_no_context_takeover: bool,
    server_max_window_bits: Option<u8>,
    /// `Some(None)`: present without a value (allowed in offers only).
    client_max_window_bits: Option<Option<u8>>,
}

/// §7.1.2.1/§7.1.2.2: a window-bits value is a decimal integer from 8 to 15
/// (no sign, no leading zero).
fn window_bits(value: &str) -> Option<u8> {
    match value.parse::<u8>() {
        Ok(n @ 8..=15) if value.len() == if n >= 10 { 2 } else { 1 } => Some(n),
        _ => None,
    }
}

/// Validate one element's parameters. §7: an unknown parameter, a parameter
/// given twice, or an invalid value makes the element invalid.
fn parse_params(ext: &ExtensionOffer) -> Result<Params, String> {
    let mut p = Params::default();
    for (name, value) in &ext.params {
        let duplicate = || format!("parameter {name} given twice");
        match name.as_str() {
            "server_no_context_takeover" | "client_no_context_takeover" => {
                if value.is_some() {
                    return Err(format!("{name} takes no value"));
                }
                let flag = if name.starts_with("server") { &mut p.server_no_context_takeover } else { &mut p.client_no_context_takeover };
                if *flag {
                    return Err(duplicate());
                }
                *flag = true;
            }
            "server_max_window_bits" => {
                if p.server_max_window_bits.is_some() {
                    return Err(duplicate());
                }
                let bits = value.as_deref().and_then(window_bits);
                p.server_max_window_bits = Some(bits.ok_or_else(|| format!("server_max_window_bits={value:?} is not 8 to 15"))?);
            }
            "client_max_window_bits" => {
                if p.client_max_window_bits.is_some() {
                    return Err(duplicate());
                }
                p.client_max_window_bits = Some(match value {
                    None => None,
                    Some(v) => Some(window_bits(v).ok_or_else(|| format!("client_max_window_bits={v:?} is not 8 to 15"))?),
                });
            }
            other => return Err(format!("unknown parameter {other}")),
        }
    }
    Ok(p)
}

impl DeflateConfig {
    fn window_bits(&self) -> u8 {
        self.max_window_bits.clamp(MIN_WINDOW_BITS, MAX_WINDOW_BITS)
    }

    /// Server side: answer the client's offers (from
    /// [`Request::extensions`](crate::handshake::Request::extensions)).
    /// Returns the agreement for the first acceptable permessage-deflate
    /// offer (§5.1: the server picks in the client's order), or `None` to
    /// decline the extension: the handshake then succeeds without it.
    ///
    /// An offer is declined when it is malformed (unknown or repeated
    /// parameter, invalid value, §7.1); every well-formed offer can be met.
    pub fn negotiate(&self, offers: &[ExtensionOffer]) -> Option<PerMessageDeflate> {
        offers
            .iter()
            .filter(|o| o.name == EXTENSION_NAME)
            .find_map(|offer| parse_params(offer).ok())
            .map(|offer| self.answer(&offer))
    }

    fn answer(&self, offer: &Params) -> PerMessageDeflate {
        let ours = self.window_bits();
        let mut params = DeflateParams {
            // §7.1.1.1: accept the client's request; the server may also
            // declare it on its own.
            server_no_context_takeover: offer.server_no_context_takeover || !self.context_takeover,
            // §7.1.1.2: the server may ask the client not to keep context
            // (this frees our decompressor between messages); echo a
            // client's own declaration so both sides know.
            client_no_context_takeover: offer.client_no_context_takeover || !self.context_takeover,
            server_max_window_bits: None,
            client_max_window_bits: None,
        };
        // §7.1.2.1: use no larger a window than the client asked for; a
        // server may also announce a smaller one on its own.
        let server_bits = offer.server_max_window_bits.unwrap_or(MAX_WINDOW_BITS).min(ours);
        if server_bits < MAX_WINDOW_BITS || offer.server_max_window_bits.is_some() {
            params.server_max_window_bits = Some(server_bits);
        }
        // §7.1.2.2: only if the client offered the parameter (it supports
        // it), and no larger than a value it gave.
        if let Some(limit) = offer.client_max_window_bits {
            let client_bits = limit.unwrap_or(MAX_WINDOW_BITS).min(ours);
            if client_bits < MAX_WINDOW_BITS || limit.is_some() {
                params.client_max_window_bits = Some(client_bits);
            }
        }
        PerMessageDeflate { params, config: self.clone() }
    }

    /// Client side: the `Sec-WebSocket-Extensions` value to offer.
    ///
    /// Always offers `client_max_window_bits` (so the server may limit our
    /// window); with a window below 15 asks the server for the same limit;
    /// without context takeover asks both sides to drop context.
    pub fn offer(&self) -> String {
        let bits = self.window_bits();
        let mut out = String::from(EXTENSION_NAME);
        if !self.context_takeover {
            out.push_str("; server_no_context_takeover; client_no_context_takeover");
        }
        if bits < MAX_WINDOW_BITS {
            out.push_str(&format!("; server_max_window_bits={bits}; client_max_window_bits={bits}"));
        } else {
            out.push_str("; client_max_window_bits");
        }
        out
    }

    /// Client side: check the extensions the server accepted (from
    /// [`Response::extensions`](crate::handshake::Response::extensions))
    /// against what [`offer`](Self::offer) asked for. `Ok(None)`: the server
    /// declined compression. An answer with parameters we did not offer or
    /// invalid values fails the connection (RFC 7692 §5, §7.1).
    pub fn accept_response(&self, accepted: &[ExtensionOffer]) -> Result<Option<PerMessageDeflate>, HandshakeError> {
        let mut answers = accepted.iter().filter(|e| e.name == EXTENSION_NAME);
        let Some(answer) = answers.next() else { return Ok(None) };
        let bad = |reason: String| HandshakeError::InvalidExtensionResponse(format!("{EXTENSION_NAME}: {reason}"));
        if answers.next().is_some() {
            return Err(bad("accepted more than once".into()));
        }
        let p = parse_params(answer).map_err(bad)?;
        let offered = self.window_bits();
        if let Some(bits) = p.server_max_window_bits {
            // §7.1.2.1: the same or a smaller value than the one offered.
            if offered < MAX_WINDOW_BITS && bits > offered {
                return Err(bad(format!("server_max_window_bits={bits} is larger than the {offered} offered")));
            }
        }
        let client_bits = match p.client_max_window_bits {
            None => None,
            // §7.1.2.2: in a response the parameter must carry a value.
            Some(None) => return Err(bad("client_max_window_bits without a value".into())),
            Some(Some(bits)) if offered < MAX_WINDOW_BITS && bits > offered => {
                return Err(bad(format!("client_max_window_bits={bits} is larger than the {offered} offered")));
            }
            Some(Some(bits)) => Some(bits),
        };
        Ok(Some(PerMessageDeflate {
            params: DeflateParams {
                server_no_context_takeover: p.server_no_context_takeover,
                client_no_context_takeover: p.client_no_context_takeover,
                server_max_window_bits: p.server_max_window_bits,
                client_max_window_bits: client_bits,
            },
            config: self.clone(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handshake::parse_extensions;
    use crate::Role;

    fn negotiate(config: &DeflateConfig, header: &str) -> Option<String> {
        config.negotiate(&parse_extensions(header)).map(|a| a.response())
    }

    fn takeover() -> DeflateConfig {
        DeflateConfig { context_takeover: true, ..DeflateConfig::default() }
    }

    #[test]
    fn server_answers_each_parameter() {
        let c = takeover();
        // §7.1: no parameters: accepted as is.
        assert_eq!(negotiate(&c, "permessage-deflate").as_deref(), Some("permessage-deflate"));
        // §7.1.1.1 / §7.1.1.2: requests not to keep context are accepted / echoed.
        assert_eq!(
            negotiate(&c, "permessage-deflate; server_no_context_takeover").as_deref(),
            Some("permessage-deflate; server_no_context_takeover")
        );
        assert_eq!(
            negotiate(&c, "permessage-deflate; client_no_context_takeover").as_deref(),
            Some("permessage-deflate; client_no_context_takeover")
        );
        // §7.1.2.1: server_max_window_bits is honoured (8 too: zlib then
        // compresses with 9, whose matches never reach past 250 bytes).
        for bits in 8..=15 {
            assert_eq!(
                negotiate(&c, &format!("permessage-deflate; server_max_window_bits={bits}")),
                Some(format!("permessage-deflate; server_max_window_bits={bits}"))
            );
        }
        // §7.1.2.2: client_max_window_bits without a value: nothing to say
        // at window 15; with a value: acknowledged.
        assert_eq!(negotiate(&c, "permessage-deflate; client_max_window_bits").as_deref(), Some("permessage-deflate"));
        assert_eq!(
            negotiate(&c, "permessage-deflate; client_max_window_bits=10").as_deref(),
            Some("permessage-deflate; client_max_window_bits=10")
        );
        // Quoted values (RFC 6455 §9.1 allows a quoted-string).
        assert_eq!(
            negotiate(&c, "permessage-deflate; server_max_window_bits=\"12\"").as_deref(),
            Some("permessage-deflate; server_max_window_bits=12")
        );
    }

    #[test]
    fn server_applies_its_own_settings() {
        // The default (no context takeover) asks both sides to drop context.
        let d = DeflateConfig::default();
        assert_eq!(
            negotiate(&d, "permessage-deflate; client_max_window_bits").as_deref(),
            Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover")
        );
        // A smaller window is announced for the server, and for the client
        // only if it offered client_max_window_bits (§7.1.2.2: MUST NOT otherwise).
        let small = DeflateConfig { max_window_bits: 10, ..takeover() };
        assert_eq!(negotiate(&small, "permessage-deflate").as_deref(), Some("permessage-deflate; server_max_window_bits=10"));
        assert_eq!(
            negotiate(&small, "permessage-deflate; client_max_window_bits").as_deref(),
            Some("permessage-deflate; server_max_window_bits=10; client_max_window_bits=10")
        );
        // The smaller of the two limits wins.
        assert_eq!(
            negotiate(&small, "permessage-deflate; server_max_window_bits=9; client_max_window_bits=12").as_deref(),
            Some("permessage-deflate; server_max_window_bits=9; client_max_window_bits=10")
        );
    }

    #[test]
    fn server_picks_the_first_acceptable_offer() {
        let c = takeover();
        let header = "x-webkit-deflate-frame, permessage-deflate; server_max_window_bits=7, permessage-deflate; client_no_context_takeover, permessage-deflate";
        assert_eq!(negotiate(&c, header).as_deref(), Some("permessage-deflate; client_no_context_takeover"));
        // Offers split over two header lines arrive as one list.
        let offers: Vec<_> = ["permessage-deflate; foo=1", "permessage-deflate; server_max_window_bits=11"]
            .iter()
            .flat_map(|h| parse_extensions(h))
            .collect();
        assert_eq!(c.negotiate(&offers).unwrap().response(), "permessage-deflate; server_max_window_bits=11");
    }

    #[test]
    fn server_declines_malformed_offers() {
        let c = takeover();
        for bad in [
            "permessage-deflate; unknown_param",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=7",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=08",
            "permessage-deflate; server_max_window_bits=+9",
            "permessage-deflate; server_max_window_bits=abc",
            "permessage-deflate; server_max_window_bits=10; server_max_window_bits=10",
            "permessage-deflate; client_max_window_bits=0",
            "permessage-deflate; client_max_window_bits; client_max_window_bits",
            "x-other-extension",
            "",
        ] {
            assert_eq!(negotiate(&c, bad), None, "{bad:?} should be declined");
        }
    }

    #[test]
    fn client_offers_what_it_is_configured_for() {
        assert_eq!(
            DeflateConfig::default().offer(),
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; client_max_window_bits"
        );
        assert_eq!(takeover().offer(), "permessage-deflate; client_max_window_bits");
        let small = DeflateConfig { max_window_bits: 11, ..takeover() };
        assert_eq!(small.offer(), "permessage-deflate; server_max_window_bits=11; client_max_window_bits=11");
        // Out of range settings are clamped to what zlib can do.
        let tiny = DeflateConfig { max_window_bits: 3, ..takeover() };
        assert_eq!(tiny.offer(), "permessage-deflate; server_max_window_bits=9; client_max_window_bits=9");
        // Whatever we offer, our own server accepts.
        for config in [DeflateConfig::default(), takeover(), small, tiny] {
            let agreed = config.negotiate(&parse_extensions(&config.offer())).unwrap();
            let back = config.accept_response(&parse_extensions(&agreed.response())).unwrap().unwrap();
            assert_eq!(back.params, agreed.params);
        }
    }

    #[test]
    fn client_checks_the_answer() {
        let c = takeover();
        let answer = |h: &str| c.accept_response(&parse_extensions(h));
        assert_eq!(answer("").unwrap(), None);
        let ok = answer("permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=10; client_max_window_bits=9")
            .unwrap()
            .unwrap();
        assert_eq!(
            ok.params,
            DeflateParams {
                server_no_context_takeover: true,
                client_no_context_takeover: true,
                server_max_window_bits: Some(10),
                client_max_window_bits: Some(9)
            }
        );
        for bad in [
            "permessage-deflate; client_max_window_bits",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; mystery",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate, permessage-deflate",
        ] {
            assert!(matches!(answer(bad), Err(HandshakeError::InvalidExtensionResponse(_))), "{bad:?} should fail");
        }
        // Larger windows than offered are refused.
        let small = DeflateConfig { max_window_bits: 10, ..takeover() };
        assert!(small.accept_response(&parse_extensions("permessage-deflate; server_max_window_bits=11")).is_err());
        assert!(small.accept_response(&parse_extensions("permessage-deflate; client_max_window_bits=12")).is_err());
        assert!(small.accept_response(&parse_extensions("permessage-deflate; client_max_window_bits=9")).is_ok());
    }

    #[test]
    fn each_role_derives_its_side() {
        let agreed = PerMessageDeflate {
            params: DeflateParams {
                server_no_context_takeover: true,
                client_no_context_takeover: false,
                server_max_window_bits: Some(8),
                client_max_window_bits: Some(12),
            },
            config: takeover(),
        };
        assert_eq!(agreed.sending(Role::Server), (9, false));
        assert_eq!(agreed.sending(Role::Client), (12, true));
        assert!(agreed.peer_keeps_context(Role::Server));
        assert!(!agreed.peer_keeps_context(Role::Client));
        // Local settings narrow what was agreed, never widen it.
        let lean = PerMessageDeflate { config: DeflateConfig { max_window_bits: 10, ..DeflateConfig::default() }, ..agreed };
        assert_eq!(lean.sending(Role::Client), (10, false));
    }
}
