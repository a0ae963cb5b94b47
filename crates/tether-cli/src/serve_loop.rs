//! `tether serve` on the event loops (src/driver.rs): a plain-TCP WebSocket
//! whose handshake tokio finished is handed to a loop, where the hub's
//! [`Session`] runs it: the same session as the tokio driver
//! ([`Hub::run_connection`]), so every behaviour (envelopes, rate limits,
//! heartbeats, slow consumers, write stalls) is the same on both.

use crate::driver::{Driver, Service};
use crate::front::Prefixed;
use std::sync::Arc;
use std::task::Waker;
use tether::WebSocket;
use tether_hub::{End, Ending, Hub, Session};
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
    /// This connection's waker on its loop: registered with the session at
    /// every pump (a wake-up takes it out of the session's `AtomicWaker`).
    waker: Option<Waker>,
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

impl<G: Send + 'static> Service for HubService<G> {
    /// The session (opened on the handshake's thread, see [`hand_off`]), the guard.
    type Init = (Session, G);
    type State = HubConn<G>;
    const WAKES: bool = true;

    fn open(&self, (session, guard): (Session, G), waker: Option<Waker>) -> HubConn<G> {
        HubConn { session: Some(session), waker, _guard: guard }
    }

    fn pump(&self, st: &mut HubConn<G>, conn: &mut Connection, high_water: usize) -> Result<(), Ending> {
        let Some(s) = &mut st.session else { return Ok(()) };
        if let Some(w) = &st.waker {
            // Before the session reads its flags: a flag set after this wakes us.
            s.set_waker(w);
        }
        match s.pump(&self.hub, conn, high_water) {
            Ok(()) => Ok(()),
            Err(end) => Err(self.end(st, end)),
        }
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
pub(crate) fn hand_off<S: MaybeTcp + tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin, G: Send + 'static>(
    hub: &Arc<Hub>,
    loops: &Driver<HubService<G>>,
    ws: WebSocket<Prefixed<S>>,
    session: Session,
    guard: G,
) -> Result<(), (WebSocket<Prefixed<S>>, Session, G)> {
    if !ws.get_ref().get_ref().is_tcp() {
        return Err((ws, session, guard));
    }
    let (stream, mut conn) = ws.into_parts();
    let (rest, stream) = stream.into_parts();
    // Bytes the client sent right after its request head (already read).
    if !rest.is_empty() {
        conn.receive_data(&rest);
    }
    let tcp = match stream.into_tcp().map(TcpStream::into_std) {
        Some(Ok(tcp)) => tcp,
        failed => {
            if let Some(Err(e)) = failed {
                tracing::debug!(error = %e, "cannot hand the connection to the event loop");
            }
            hub.end_session(session, End::Closed);
            return Ok(());
        }
    };
    // The session was opened (its room joined) before the 101 was written;
    // what arrives until the loop takes it from its inbox waits in its queue.
    loops.adopt(tcp, conn, (session, guard));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An idle `tether serve` connection on a loop, inline: the slab entry
    /// (socket, protocol state, session, waker, admission slot). Its heap
    /// is pinned by tether-hub's tests/sizes.rs.
    #[test]
    fn an_idle_hub_connection_is_one_small_slab_entry() {
        let size = std::mem::size_of::<crate::driver::Entry<HubConn<crate::serve::Slot>>>();
        println!("tether serve slab entry: {size} bytes");
        assert!(size <= 512, "a tether serve connection's slab entry grew to {size} bytes");
    }
}
