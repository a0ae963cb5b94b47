//! # tether-proto
//!
//! A sans-I/O implementation of the WebSocket protocol (RFC 6455): the opening
//! handshake, framing, masking, fragmentation, control frames, UTF-8 rules and
//! the closing handshake, for both client and server roles, and the
//! permessage-deflate extension (RFC 7692, [`deflate`]).
//!
//! Nothing in this crate touches a socket, a clock or an async runtime. Bytes
//! received from the peer go in ([`Connection::receive_data`]); events come out
//! ([`Connection::next_event`]); bytes to transmit are taken from the connection
//! ([`Connection::take_data_to_send`] or the zero-copy
//! [`Connection::data_to_send`] / [`Connection::consume_sent`] pair). The I/O
//! layer on top (the `tether` crate) is a thin loop around those calls.
//!
//! No feature flags: permessage-deflate is always built (zlib-rs) and off
//! until configured.
//!
//! ```
//! use tether_proto::{Connection, Role, Config, Event, Message};
//!
//! // A server-side connection after the handshake.
//! let mut server = Connection::new(Role::Server, Config::default());
//! // RFC 6455 §5.7: a single-frame masked text message "Hello".
//! server.receive_data(&[0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58]);
//! match server.next_event().unwrap() {
//!     Some(Event::Message(Message::Text(text))) => assert_eq!(text.as_str(), "Hello"),
//!     other => panic!("unexpected {other:?}"),
//! }
//! ```

mod assemble;
pub mod close;
pub mod config;
pub mod connection;
mod decode;
pub mod deflate;
pub mod error;
pub mod frame;
pub mod handshake;
mod inflate;
mod lazy_buf;
pub mod mask;
pub mod negotiate;
pub mod message;
mod receiver;
mod sender;
pub mod utf8;

pub use close::{CloseCode, CloseFrame};
pub use config::Config;
pub use connection::{Connection, EndReason, Event, Receiver, Role, Sender, State};
pub use deflate::{DeflateConfig, DeflateParams, PerMessageDeflate};
pub use error::{Error, HandshakeError, ProtocolError};
pub use frame::{EncodedFrame, FrameHeader, OpCode};
pub use message::{Message, Utf8Bytes};
pub use negotiate::{negotiate, Negotiated, Rejection, UpgradeOffer};
