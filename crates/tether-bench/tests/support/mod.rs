//! Tiny blocking WebSocket servers for the loopback tests, built on
//! tether-proto's server side: a real listener on 127.0.0.1 and one thread
//! per connection.

// Each test binary uses some of the behaviours.
#![allow(dead_code)]

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use tether_proto::handshake::{error_response, parse_request, DEFAULT_MAX_HANDSHAKE_SIZE};
use tether_proto::{CloseFrame, Config, Connection, Event, Message, Role, Sender};

/// What a test server does with each message.
#[derive(Clone, Copy, Debug)]
pub enum Behaviour {
    /// Send every data message back unchanged.
    Echo,
    /// Echo, with the last byte of every message flipped.
    CorruptLastByte,
    /// Echo `n` messages, then close the connection with 1001.
    CloseAfter(usize),
    /// Relay every text message to every client (sender included), wrapped
    /// in a JSON envelope the way a real server might.
    Broadcast,
}

type Peers = Arc<Mutex<Vec<TcpStream>>>;

/// Start a server; returns its `ws://` URL. It lives until the test ends.
pub fn spawn(behaviour: Behaviour) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let peers: Peers = Arc::default();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let peers = peers.clone();
            thread::spawn(move || {
                let _ = serve(stream, behaviour, &peers);
            });
        }
    });
    format!("ws://{addr}/bench")
}

/// Read the upgrade request, answer it, return any bytes that followed it.
fn handshake(s: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut acc = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        acc.extend_from_slice(&buf[..n]);
        match parse_request(&acc, DEFAULT_MAX_HANDSHAKE_SIZE) {
            Ok(Some((req, len))) => {
                s.write_all(&req.accept(None, None, &[]))?;
                return Ok(acc.split_off(len));
            }
            Ok(None) => {}
            Err(e) => {
                s.write_all(&error_response(&e))?;
                return Err(io::Error::other(e.to_string()));
            }
        }
    }
}

fn serve(mut s: TcpStream, behaviour: Behaviour, peers: &Peers) -> io::Result<()> {
    s.set_nodelay(true)?;
    let leftover = handshake(&mut s)?;
    let me = s.peer_addr()?;
    if let Behaviour::Broadcast = behaviour {
        peers.lock().unwrap().push(s.try_clone()?);
    }
    let mut conn = Connection::new(Role::Server, Config::default());
    conn.receive_data(&leftover);
    let mut buf = vec![0u8; 64 << 10];
    let mut echoed = 0;
    let result = loop {
        while let Ok(Some(Event::Message(msg))) = conn.next_event() {
            match (behaviour, msg) {
                (Behaviour::Broadcast, Message::Text(t)) => {
                    let mut encoder = Sender::new(Role::Server);
                    encoder.send_text(&format!(r#"{{"from":"{me}","text":"{}"}}"#, t.as_str())).unwrap();
                    let frame = encoder.take_data_to_send();
                    for peer in peers.lock().unwrap().iter_mut() {
                        let _ = peer.write_all(&frame);
                    }
                }
                (Behaviour::CloseAfter(n), _) if echoed >= n => {
                    let _ = conn.close(Some(CloseFrame::new(1001u16, "going away")));
                }
                (Behaviour::Echo | Behaviour::CloseAfter(_), msg @ (Message::Text(_) | Message::Binary(_))) => {
                    echoed += 1;
                    conn.send(msg).unwrap();
                }
                (Behaviour::CorruptLastByte, Message::Binary(b)) => {
                    let mut v = b.to_vec();
                    if let Some(last) = v.last_mut() {
                        *last ^= 1;
                    }
                    conn.send_binary(&v).unwrap();
                }
                _ => {} // pings, pongs and closes are answered by Connection
            }
        }
        let out = conn.take_data_to_send();
        if !out.is_empty() {
            // Broadcast writes to this socket from other threads: take turns.
            let _turn = peers.lock().unwrap();
            if let Err(e) = s.write_all(&out) {
                break Err(e);
            }
        }
        if conn.should_close_transport() || conn.is_closed() {
            break Ok(());
        }
        match s.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => conn.receive_data(&buf[..n]),
            Err(e) => break Err(e),
        }
    };
    peers.lock().unwrap().retain(|p| p.peer_addr().is_ok_and(|a| a != me));
    result
}
