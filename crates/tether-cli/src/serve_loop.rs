//! `tether serve` on the event loops (src/driver.rs): a plain-TCP WebSocket
//! whose handshake tokio finished is handed to a loop, where the hub's
//! [`Session`] runs it: the same session as the tokio driver
//! ([`Hub::run_connection`]), so every behaviour (envelopes, rate limits,
//! heartbeats, slow consumers, write stalls) is the same on both.

use crate::driver::{Driver, Service};
use crate::front::Prefixed;
use std::sync::Arc;
use std::task::Waker;
use tether_hub::{ConnInfo, End, Ending, Hub, Identity, Session};
use tether_proto::{Connection, Message};
use tokio::net::TcpStream;

/// The hub as a loop service, for connections that hold a guard of type
/// `G` (what must live as long as the connection: its admission slot).
pub(crate) struct HubService<G> {
    hub: Arc<Hub>,
    _guard: std::marker::PhantomData<fn() -> G>,
}

impl<G> HubService<G> {
    pub fn new(hub: Arc<Hub>) -> Self {
        HubService { hub, _guard: std::marker::PhantomData }
    }
}

/// One connection's state on a loop: its session (until it ends) and
/// whatever must live as long as the connection (its admission slot).
pub(crate) struct HubConn<G> {
    session: Option<Session>,
    _guard: G,
}

impl<G> HubService<G> {
    fn end(&self, st: &mut HubConn<G>, end: End) -> Ending {
        match st.session.take() {
            Some(session) => self.hub.end_session(session, end),
            None => Ending::Abort,
        }
    }
}

/// What a connection brings from its handshake: its room and identity,
/// whether it speaks `tether.v1`, its guard, and the 101 response that the
/// loop writes. Nothing in it is a small heap block made on the
/// handshake's thread: such a block, freed on the loop's thread, would go
/// to the loop's allocator cache and come back as one of the connection's
/// long-lived blocks (its queue), placed among the handshake's short-lived
/// ones on tokio's heap, whose gaps then stay in the RSS (at 15,000 idle
/// connections that was about 500 B each).
pub(crate) struct Handshaken<G> {
    room: Arc<str>,
    identity: Identity,
    json: bool,
    guard: G,
    head: Head,
}

/// A 101 response, inline (see [`Handshaken`]); a longer one (many extra
/// headers) on the heap.
#[allow(clippy::large_enum_variant)] // inline on purpose: no heap block per handshake
enum Head {
    Inline { len: u16, bytes: [u8; HEAD_INLINE] },
    Heap(Vec<u8>),
}

/// Room for a 101 with a subprotocol and a permessage-deflate answer.
const HEAD_INLINE: usize = 320;

impl Head {
    fn new(response: Vec<u8>) -> Head {
        if response.len() > HEAD_INLINE {
            return Head::Heap(response);
        }
        let mut bytes = [0; HEAD_INLINE];
        bytes[..response.len()].copy_from_slice(&response);
        Head::Inline { len: response.len() as u16, bytes }
    }

    fn as_slice(&self) -> &[u8] {
        match self {
            Head::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Head::Heap(v) => v,
        }
    }
}

impl<G: Send + 'static> Service for HubService<G> {
    type Init = Handshaken<G>;
    type State = HubConn<G>;

    /// The session opens here, on the loop's thread, and the 101 is queued
    /// in front of its welcome: the client is in its room by the time it
    /// reads its 101 (see [`hand_off`]).
    fn open(&self, Handshaken { room, identity, json, guard, head }: Handshaken<G>, conn: &mut Connection) -> HubConn<G> {
        let session = self.hub.open_session_in(json, room, identity);
        conn.sender().send_raw(head.as_slice());
        HubConn { session: Some(session), _guard: guard }
    }

    fn pump(&self, st: &mut HubConn<G>, conn: &mut Connection, high_water: usize, waker: &Waker) -> Result<(), Ending> {
        let Some(s) = &mut st.session else { return Ok(()) };
        // Before the session reads its flags: a flag set after this wakes
        // us (a wake-up takes the waker out of the session's `AtomicWaker`).
        s.set_waker(waker);
        match s.pump(&self.hub, conn, high_water) {
            Ok(()) => Ok(()),
            Err(end) => Err(self.end(st, end)),
        }
    }

    fn loops_started(&self, wakers: Vec<Arc<dyn Fn() + Send + Sync>>) {
        self.hub.attach_loops(wakers);
    }

    fn enter_loop(&self, index: usize) {
        self.hub.enter_loop(index);
    }

    fn on_wake(&self, index: usize) {
        self.hub.run_loop(index);
    }

    fn reading_paused(&self, st: &HubConn<G>) -> bool {
        st.session.as_ref().is_some_and(Session::reading_paused)
    }

    fn on_message(&self, st: &mut HubConn<G>, _conn: &mut Connection, msg: Message) -> Result<(), Ending> {
        let Some(s) = &mut st.session else { return Ok(()) };
        match s.on_message(&self.hub, msg) {
            Ok(()) => Ok(()),
            Err(end) => Err(self.end(st, end)),
        }
    }

    fn on_closed(&self, st: &mut HubConn<G>) -> Ending {
        self.end(st, End::Closed)
    }
}

/// A stream that may be plain TCP underneath (TLS stays on tokio).
pub(crate) trait MaybeTcp: Sized {
    fn is_tcp(&self) -> bool;
    fn into_tcp(self) -> Option<TcpStream>;
}

impl MaybeTcp for TcpStream {
    fn is_tcp(&self) -> bool {
        true
    }
    fn into_tcp(self) -> Option<TcpStream> {
        Some(self)
    }
}

impl<S> MaybeTcp for tokio_rustls::server::TlsStream<S> {
    fn is_tcp(&self) -> bool {
        false
    }
    fn into_tcp(self) -> Option<TcpStream> {
        None
    }
}

/// Run an accepted WebSocket on a loop if it is plain TCP; otherwise give
/// it back (with its guard) for the tokio driver.
///
/// The handshake's `101 Switching Protocols` is not written yet: it waits
/// in the connection's output, and the loop writes it (with the welcome,
/// in one write) after the session has joined its room. So once a client
/// has its 101, the room's next message reaches it: a peer may send as
/// soon as both sockets are open. And what lives as long as the connection
/// (its session, queue and subscriptions) is allocated on the loop's
/// thread, not among the handshake's short-lived buffers on tokio's
/// threads, where the gaps they leave when freed would stay in the RSS.
#[allow(clippy::result_large_err)] // `Err` hands the connection back to the caller, once
pub(crate) fn hand_off<S: MaybeTcp + tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin, G: Send + 'static>(
    hub: &Hub,
    loops: &Driver<HubService<G>>,
    accepted: tether::Accepted<Prefixed<S>>,
    info: ConnInfo,
    guard: G,
) -> Result<(), (tether::Accepted<Prefixed<S>>, ConnInfo, G)> {
    if !accepted.get_ref().get_ref().is_tcp() {
        return Err((accepted, info, guard));
    }
    let json = accepted.protocol() == Some(tether_hub::PROTOCOL_V1);
    let (stream, response, mut conn) = accepted.into_parts();
    let (rest, stream) = stream.into_parts();
    // Bytes the client sent right after its request head (already read).
    if !rest.is_empty() {
        conn.receive_data(&rest);
    }
    let Some(tcp) = stream.into_tcp() else { return Ok(()) };
    let tcp = match tcp.into_std() {
        Ok(tcp) => tcp,
        Err(e) => {
            tracing::debug!(error = %e, "cannot hand the connection to the event loop");
            return Ok(());
        }
    };
    let ConnInfo { room, identity } = info;
    let init = Handshaken { room: hub.room_name(&room), identity, json, guard, head: Head::new(response) };
    loops.adopt(tcp, conn, init);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An idle `tether serve` connection on a loop, inline: the slab entry
    /// (socket, protocol state, session, admission slot). Its heap
    /// is pinned by tether-hub's tests/sizes.rs.
    #[test]
    fn an_idle_hub_connection_is_one_small_slab_entry() {
        let size = std::mem::size_of::<crate::driver::Entry<HubConn<crate::serve::Slot>>>();
        println!("tether serve slab entry: {size} bytes");
        // 368 B measured (#16: 456 B with a stored waker and the
        // protocol's idle buffers inline).
        assert!(size <= 400, "a tether serve connection's slab entry grew to {size} bytes");
    }
}
