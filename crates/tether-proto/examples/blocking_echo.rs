//! Bring your own event loop: `tether-proto` driven over blocking
//! `std::net` sockets, with no async runtime. The engine never touches the
//! socket: bytes read go in (`receive_data`), events come out (`next_event`),
//! bytes to write are taken out (`take_data_to_send`).
//!
//! ```text
//! cargo run -p tether-proto --example blocking_echo            # an echo server thread and a client
//! cargo run -p tether-proto --example blocking_echo -- 127.0.0.1:8080 /lobby   # the client against tether serve
//! ```
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;
use tether_proto::handshake::{error_response, parse_request, ClientHandshake, ClientRequest};
use tether_proto::{CloseCode, CloseFrame, Config, Connection, Event, Message, Role};

fn other(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

/// Read an HTTP head until `parse` says it is complete; returns what it
/// parsed and the bytes after the head (the first WebSocket bytes).
fn read_head<T>(tcp: &mut TcpStream, mut parse: impl FnMut(&[u8]) -> io::Result<Option<(T, usize)>>) -> io::Result<(T, Vec<u8>)> {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tcp.read(&mut buf)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        head.extend_from_slice(&buf[..n]);
        if let Some((parsed, used)) = parse(&head)? {
            return Ok((parsed, head.split_off(used)));
        }
    }
}

/// The I/O loop, the same for both roles: hand each event to `on_event`,
/// write what the engine queued (including the pongs and close echo it
/// answers by itself), then read more, until the connection is over.
fn run(mut conn: Connection, tcp: &mut TcpStream, mut on_event: impl FnMut(&mut Connection, Event) -> io::Result<()>) -> io::Result<()> {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        loop {
            match conn.next_event() {
                Ok(Some(event)) => on_event(&mut conn, event)?,
                Ok(None) => break,
                // A close frame with the right code is already queued.
                Err(e) => {
                    eprintln!("protocol error: {e}");
                    break;
                }
            }
        }
        tcp.write_all(&conn.take_data_to_send())?;
        // RFC 6455 §7.1.1: the server closes TCP first; a client waits for it.
        if conn.should_close_transport() {
            return Ok(());
        }
        let n = tcp.read(&mut buf)?;
        if n == 0 {
            conn.receive_eof();
            return Ok(());
        }
        conn.receive_data(&buf[..n]);
    }
}

/// Accept one connection and echo every message.
fn echo_server(listener: TcpListener) -> io::Result<()> {
    let (mut tcp, _) = listener.accept()?;
    // A bad request is answered with its HTTP status (400, 426, 431...).
    let (parsed, rest) = read_head(&mut tcp, |head| {
        Ok(match parse_request(head, 16 * 1024) {
            Ok(done) => done.map(|(request, used)| (Ok(request), used)),
            Err(e) => Some((Err(e), head.len())),
        })
    })?;
    let request = match parsed {
        Ok(request) => request,
        Err(e) => return tcp.write_all(&error_response(&e)),
    };
    tcp.write_all(&request.accept(None, None, &[]))?;
    let mut conn = Connection::new(Role::Server, Config::default());
    conn.receive_data(&rest);
    run(conn, &mut tcp, |conn, event| match event {
        Event::Message(msg @ (Message::Text(_) | Message::Binary(_))) => conn.send(msg).map_err(other),
        _ => Ok(()),
    })
}

/// Connect, send two messages, print what comes back, close after "world".
pub fn client(addr: &str, target: &str) -> io::Result<Vec<String>> {
    let mut tcp = TcpStream::connect(addr)?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    let request = ClientRequest { host: addr.into(), target: target.into(), ..Default::default() };
    let (handshake, bytes) = ClientHandshake::new(&request);
    tcp.write_all(&bytes)?;
    let (_response, rest) = read_head(&mut tcp, |head| handshake.parse_response(head).map_err(other))?;
    let mut conn = Connection::new(Role::Client, Config::default());
    conn.receive_data(&rest);
    conn.send_text("hello").map_err(other)?;
    conn.send_text("world").map_err(other)?;
    let mut received = Vec::new();
    run(conn, &mut tcp, |conn, event| {
        if let Event::Message(Message::Text(text)) = event {
            println!("< {}", text.as_str());
            received.push(text.as_str().to_string());
            if text.as_str().ends_with("world") && !conn.is_closing() {
                conn.close(Some(CloseFrame::new(CloseCode::NORMAL, "done"))).map_err(other)?;
            }
        }
        Ok(())
    })?;
    Ok(received)
}

/// With `ADDR TARGET`: the client against that server; without: both ends.
pub fn main() -> io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [addr, target] = args.as_slice() {
        client(addr, target)?;
        return Ok(());
    }
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?.to_string();
    let server = std::thread::spawn(move || echo_server(listener));
    let received = client(&addr, "/")?;
    assert_eq!(received, ["hello", "world"]);
    server.join().expect("server thread panicked")
}
