//! `tether connect`, the real binary, in a pipe and in a terminal, against
//! `tether echo`, servers written here for one behaviour each, and a peer we
//! did not write (Python's `websockets`). Needs `python3` with `websockets`
//! and `tmux` (scripts/deps.sh installs both).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use tether::{Accept, Config, Message};

const BIN: &str = env!("CARGO_BIN_EXE_tether");
const WAIT: Duration = Duration::from_secs(30);

/// `tether echo` on a free port; killed on drop.
struct Echo {
    child: Child,
    addr: String,
}

impl Echo {
    fn start() -> Echo {
        Self::start_on("127.0.0.1:0")
    }

    fn start_on(listen: &str) -> Echo {
        let mut child = Command::new(BIN)
            .args(["echo", "--threads", "1", "--listen", listen])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start tether echo");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let addr = line.trim().strip_prefix("listening on ws://").unwrap_or_else(|| panic!("unexpected first line: {line:?}")).to_string();
        Echo { child, addr }
    }

    fn url(&self) -> String {
        format!("ws://{}/", self.addr)
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tether_connect(args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.arg("connect").args(args).env("RUST_LOG", "warn").stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd
}

/// Run `tether connect ARGS` with `input` on stdin (then EOF); bounded by `WAIT`.
fn run(args: &[&str], input: &str) -> Output {
    let mut child = tether_connect(args).spawn().expect("start tether connect");
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_owned();
    std::thread::spawn(move || {
        let _ = stdin.write_all(input.as_bytes());
    });
    wait_output(child)
}

fn wait_output(child: Child) -> Output {
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(WAIT) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            panic!("tether connect did not exit within {WAIT:?}");
        }
    }
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A server written for one test: runs `handler` for each connection on a
/// tokio runtime in a background thread.
fn serve<F, Fut>(handler: F) -> SocketAddr
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                tokio::spawn(handler(tcp));
            }
        });
    });
    addr
}

#[test]
fn lines_in_echoes_out_exit_zero() {
    let echo = Echo::start();
    let out = run(&[&echo.url()], "one\ntwo\nthree\n");
    assert_eq!(stdout(&out), "one\ntwo\nthree\n", "stderr: {}", stderr(&out));
    assert!(out.status.success(), "{:?}\n{}", out.status, stderr(&out));
    assert!(stderr(&out).contains("closed: 1000"), "{}", stderr(&out));
}

#[test]
fn many_lines_piped_fast_all_arrive_in_order() {
    let echo = Echo::start();
    let input: String = (0..5000).map(|i| format!("line {i}\n")).collect();
    let out = run(&[&echo.url()], &input);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), input);
}

#[test]
fn close_command_sends_the_code_and_stops_reading_input() {
    let echo = Echo::start();
    let out = run(&[&echo.url()], "before\n/ping hello\n/close 4000 bye\nafter\n");
    assert_eq!(stdout(&out), "before\n");
    let err = stderr(&out);
    assert!(err.contains("[pong] hello"), "{err}");
    assert!(err.contains("closed: 4000"), "{err}");
    assert!(out.status.success(), "a clean close with any code exits 0: {err}");
}

#[test]
fn commands_and_escapes() {
    let echo = Echo::start();
    let out = run(&[&echo.url()], "//not a command\n/dance\nlast\n/quit\nnever sent\n");
    assert_eq!(stdout(&out), "/not a command\nlast\n");
    assert!(stderr(&out).contains("unknown command /dance"), "{}", stderr(&out));
    assert!(out.status.success());
}

#[test]
fn a_closed_port_exits_non_zero_with_a_readable_message() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let out = run(&[&format!("ws://127.0.0.1:{port}/")], "never sent\n");
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains(&format!("cannot connect to 127.0.0.1:{port}")) && err.contains("refused"), "{err}");
    assert_eq!(stdout(&out), "");
}

#[test]
fn a_refused_upgrade_shows_the_http_status() {
    let addr = serve(|mut tcp| async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut buf = [0u8; 4096];
        let _ = tcp.read(&mut buf).await;
        let _ = tcp.write_all(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n").await;
    });
    let out = run(&[&format!("ws://{addr}/private")], "");
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("HTTP 403"), "{}", stderr(&out));
}

#[test]
fn usage_errors_exit_2() {
    for args in [&["not a url"][..], &["http//missing-colon"], &["ws://127.0.0.1:1/", "-H", "no colon"], &["ws://x/", "--ping-interval", "soon"]] {
        let out = run(args, "");
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(!stderr(&out).is_empty());
    }
    let out = run(&["ftp://127.0.0.1/"], "");
    assert!(stderr(&out).contains("invalid URL"), "{}", stderr(&out));
}

#[test]
fn headers_and_subprotocol_reach_the_server_and_binary_and_json_print() {
    let addr = serve(|tcp| async move {
        let mut seen = String::new();
        let accept = |req: &tether::Request| {
            seen = format!("auth={:?}", req.header_str("authorization"));
            Ok(Accept { protocol: req.protocols().first().map(|p| p.to_string()), ..Accept::default() })
        };
        let Ok(mut ws) = tether::accept_with(tcp, &Config::default(), accept).await else { return };
        let protocol = ws.protocol().unwrap_or("none").to_string();
        let _ = ws.send(format!("{seen} protocol={protocol}")).await;
        let _ = ws.send(Message::binary(vec![0u8, 1, 0xfe, 0xff])).await;
        let _ = ws.send(r#"{"type":"welcome","n":[1,2]}"#).await;
        while let Some(Ok(msg)) = ws.recv().await {
            if msg.is_data() {
                let _ = ws.send(msg).await;
            }
        }
    });
    let url = format!("ws://{addr}/");
    let out = run(&[&url, "-H", "Authorization: Bearer secret", "--subprotocol", "chat.v2", "--subprotocol", "chat.v1"], "");
    assert!(out.status.success(), "{}", stderr(&out));
    let lines: Vec<String> = stdout(&out).lines().map(str::to_owned).collect();
    assert_eq!(lines[0], "auth=Some(\"Bearer secret\") protocol=chat.v2");
    assert_eq!(lines[1], "0001feff");
    assert_eq!(lines[2], r#"{"type":"welcome","n":[1,2]}"#);

    let out = run(&[&url, "--binary-format", "base64", "--json-pretty"], "");
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("\nAAH+/w==\n"), "{text}");
    assert!(text.contains("{\n  \"type\": \"welcome\",\n  \"n\": [\n    1,\n    2\n  ]\n}\n"), "{text}");
}

#[test]
fn against_python_websockets() {
    let py = std::env::var("TETHER_PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = Command::new(&py).args(["-c", "import websockets"]).status().map(|s| s.success()).unwrap_or(false);
    assert!(ok, "{py} with the `websockets` package is required: pip install websockets");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let script = format!("{}/../tether/tests/interop/peer.py", env!("CARGO_MANIFEST_DIR"));
    let mut peer = Command::new(py).arg(script).arg("server").arg(port.to_string()).stdout(Stdio::piped())
        // It logs a traceback for any close code other than 1000/1001.
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut peer_out = BufReader::new(peer.stdout.take().unwrap());
    let mut line = String::new();
    peer_out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready");

    let mut child = tether_connect(&[&format!("ws://127.0.0.1:{port}/")]).spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let lines = line_reader(child.stdout.take().unwrap());
    // One at a time: websockets echoes from its handler task, and answers a
    // close at once, so echoes still in flight when our close arrives are lost.
    for text in ["héllo wörld", "{\"json\": true}"] {
        writeln!(stdin, "{text}").unwrap();
        assert_eq!(lines.recv_timeout(WAIT).unwrap(), text);
    }
    writeln!(stdin, "/ping py").unwrap();
    writeln!(stdin, "/close 4001 done here").unwrap();
    let out = wait_output(child);
    let err = stderr(&out);
    assert!(err.contains("[pong] py"), "{err}");
    assert!(err.contains("closed: 4001"), "{err}");
    assert!(out.status.success(), "{err}");
    // The peer saw our close code and reason.
    let mut rest = String::new();
    peer_out.read_to_string(&mut rest).unwrap();
    assert_eq!(rest.trim(), "closed 4001 done here");
    assert!(peer.wait().unwrap().success());
}

#[test]
fn wss_with_a_private_ca_and_readable_tls_errors() {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let dir = std::env::temp_dir().join(format!("tether-connect-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, ck.cert.pem()).unwrap();
    let acceptor = tether::tls::acceptor(ck.cert.pem().as_bytes(), ck.key_pair.serialize_pem().as_bytes()).unwrap();
    let addr = serve(move |tcp| {
        let acceptor = acceptor.clone();
        async move {
            let Ok(tls) = acceptor.accept(tcp).await else { return };
            let Ok(mut ws) = tether::accept(tls).await else { return };
            while let Some(Ok(msg)) = ws.recv().await {
                if msg.is_data() {
                    let _ = ws.send(msg).await;
                }
            }
        }
    });
    let url = format!("wss://localhost:{}/", addr.port());

    let out = run(&[&url], "secret\n");
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("TLS") && err.contains("--ca"), "{err}");

    let out = run(&[&url, "--ca", ca.to_str().unwrap()], "secret\n");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "secret\n");

    let out = run(&[&url, "--insecure"], "anyway\n");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "anyway\n");

    let out = run(&[&url, "--ca", dir.join("missing.pem").to_str().unwrap()], "");
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("cannot read the CA file"), "{}", stderr(&out));
}

/// Lines of a child's stdout, readable with a timeout.
fn line_reader(out: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

#[test]
fn reconnect_survives_a_server_restart() {
    let echo = Echo::start();
    let addr = echo.addr.clone();
    let mut child = tether_connect(&[&echo.url(), "--reconnect"]).spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let lines = line_reader(child.stdout.take().unwrap());
    let notes = line_reader(child.stderr.take().unwrap());
    let wait_note = |what: &str| loop {
        let note = notes.recv_timeout(WAIT).unwrap_or_else(|_| panic!("no {what:?} on stderr"));
        if note.contains(what) {
            return;
        }
    };
    writeln!(stdin, "first").unwrap();
    assert_eq!(lines.recv_timeout(WAIT).unwrap(), "first");

    drop(echo);
    wait_note("connection lost: 1006");
    wait_note("reconnecting in");
    // Typed while the server is down: queued, sent after the reconnect.
    writeln!(stdin, "while down").unwrap();
    let _echo = Echo::start_on(&addr);
    assert_eq!(lines.recv_timeout(WAIT).unwrap(), "while down");
    writeln!(stdin, "after").unwrap();
    assert_eq!(lines.recv_timeout(WAIT).unwrap(), "after");
    drop(stdin);
    wait_note("closed: 1000");
    let status = wait_output(child).status;
    assert!(status.success(), "{status:?}");
}

/// A pseudo-terminal through tmux (a private server, so nothing else is touched).
struct Tmux {
    socket: String,
}

impl Tmux {
    fn new(command: &str) -> Tmux {
        let ok = Command::new("tmux").arg("-V").output().map(|o| o.status.success()).unwrap_or(false);
        assert!(ok, "tmux is required for the terminal test: apt-get install tmux (scripts/deps.sh)");
        let tmux = Tmux { socket: format!("tether-connect-test-{}", std::process::id()) };
        let status = tmux.cmd().args(["new-session", "-d", "-s", "t", "-x", "160", "-y", "40", command]).status().unwrap();
        assert!(status.success(), "tmux new-session failed");
        tmux
    }

    fn cmd(&self) -> Command {
        let mut cmd = Command::new("tmux");
        cmd.args(["-L", &self.socket]).env("TERM", "xterm").env_remove("TMUX");
        cmd
    }

    fn screen(&self) -> String {
        let out = self.cmd().args(["capture-pane", "-p", "-t", "t"]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn wait_for(&self, what: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let screen = self.screen();
            if screen.contains(what) {
                return screen;
            }
            assert!(Instant::now() < deadline, "{what:?} did not appear; the screen:\n{screen}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn type_line(&self, line: &str) {
        assert!(self.cmd().args(["send-keys", "-t", "t", "-l", line]).status().unwrap().success());
        assert!(self.cmd().args(["send-keys", "-t", "t", "Enter"]).status().unwrap().success());
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd().arg("kill-server").status();
    }
}

#[test]
fn interactive_in_a_terminal() {
    let echo = Echo::start();
    let command = format!("RUST_LOG=warn {BIN} connect {}; echo EXIT=$?; sleep 60", echo.url());
    let tmux = Tmux::new(&command);
    tmux.wait_for("connected to");
    tmux.type_line("hello from a tty");
    tmux.wait_for("< hello from a tty");
    tmux.type_line("/ping tty");
    tmux.wait_for("< [pong] tty");
    tmux.type_line("/quit");
    let screen = tmux.wait_for("EXIT=");
    assert!(screen.contains("EXIT=0"), "{screen}");
    assert!(screen.contains("closed: 1000"), "{screen}");
}

#[test]
fn binary_from_hex_base64_and_files_echo_back() {
    let echo = Echo::start();
    let dir = std::env::temp_dir().join(format!("tether-connect-binary-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let first = dir.join("first.bin");
    std::fs::write(&first, [0xde, 0xad, 0xbe, 0xef]).unwrap();
    let later = dir.join("later.bin");
    std::fs::write(&later, b"\x00file\xff").unwrap();
    let input = format!("text\n/binary 00ff10\n/b64 AAH+/w==\n/file {}\n/binary xyz\n/file {}\nlast\n", later.display(), dir.join("missing").display());
    let out = run(&[&echo.url(), "--binary-file", first.to_str().unwrap()], &input);
    assert!(out.status.success(), "{}", stderr(&out));
    // The file given with --binary-file goes first, then the lines in order.
    assert_eq!(stdout(&out), "deadbeef\ntext\n00ff10\n0001feff\n0066696c65ff\nlast\n");
    let err = stderr(&out);
    assert!(err.contains("/binary: ") && err.contains("hex"), "{err}");
    assert!(err.contains("cannot read") && err.contains("missing"), "{err}");

    // Printed as base64 too, and a missing --binary-file is an error before connecting.
    let out = run(&[&echo.url(), "--binary-format", "base64"], "/binary 00 01 fe ff\n");
    assert_eq!(stdout(&out), "AAH+/w==\n", "{}", stderr(&out));
    let out = run(&[&echo.url(), "--binary-file", dir.join("missing").to_str().unwrap()], "");
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("cannot read --binary-file"), "{}", stderr(&out));
}

#[test]
fn ping_timeout_drops_a_server_that_stops_answering() {
    // Completes the handshake, then reads nothing and answers nothing.
    let addr = serve(|tcp| async move {
        let Ok(ws) = tether::accept(tcp).await else { return };
        tokio::time::sleep(Duration::from_secs(60)).await;
        drop(ws);
    });
    let url = format!("ws://{addr}/");
    let mut child = tether_connect(&[&url, "--ping-interval", "200ms", "--ping-timeout", "300ms"]).spawn().unwrap();
    // stdin stays open: only the ping timeout can end this.
    let stdin = child.stdin.take();
    let started = Instant::now();
    let out = wait_output(child);
    drop(stdin);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("connection lost: 1006"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());

    let out = run(&[&url, "--ping-timeout", "soon"], "");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

#[test]
fn sizes_take_units() {
    let mut child = Command::new(BIN)
        .args(["echo", "--threads", "1", "--listen", "127.0.0.1:0", "--max-message-size", "1KiB"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let echo = Echo { addr: line.trim().strip_prefix("listening on ws://").unwrap().to_string(), child };
    let big = "x".repeat(1025);
    let out = run(&[&echo.url(), "--max-message-size", "64KiB"], &format!("small\n{big}\n"));
    assert_eq!(stdout(&out), "small\n");
    assert!(stderr(&out).contains("1009"), "{}", stderr(&out));
    for bad in ["1M", "lots"] {
        let out = run(&[&echo.url(), "--max-message-size", bad], "");
        assert_eq!(out.status.code(), Some(2), "{bad}");
    }
    let help = Command::new(BIN).args(["serve", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("[default: 1MiB]"), "{help}");
}

/// End of input does not cut off the answers to requests still in flight: a
/// server that answers 300 ms late (as a node does after a round trip to
/// Redis), and drops the answer if the client closes first.
#[test]
fn end_of_input_waits_for_the_answers_to_requests_with_an_id() {
    let addr = serve(|tcp| async move {
        let accept = |req: &tether::Request| Ok(Accept { protocol: req.protocols().first().map(|p| p.to_string()), ..Accept::default() });
        let Ok(mut ws) = tether::accept_with(tcp, &Config::default(), accept).await else { return };
        let Some(Ok(Message::Text(request))) = ws.recv().await else { return };
        let id = serde_json::from_str::<serde_json::Value>(&request).unwrap()["id"].clone();
        match tokio::time::timeout(Duration::from_millis(300), ws.recv()).await {
            // The client closed before the answer: like the hub, nothing more is sent.
            Ok(_) => {}
            Err(_) => {
                let _ = ws.send(format!(r#"{{"type":"ack","id":{id}}}"#)).await;
            }
        }
        while let Some(Ok(_)) = ws.recv().await {}
    });
    let url = format!("ws://{addr}/");
    let request = "{\"type\":\"publish\",\"topic\":\"news\",\"content\":\"hi\",\"id\":7}\n";
    let out = run(&[&url, "--subprotocol", "tether.v1"], request);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "{\"type\":\"ack\",\"id\":7}\n", "stderr: {}", stderr(&out));

    // --answer-timeout 0s: closed at once, the late answer never comes.
    let out = run(&[&url, "--subprotocol", "tether.v1", "--answer-timeout", "0s"], request);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "", "stderr: {}", stderr(&out));
}
