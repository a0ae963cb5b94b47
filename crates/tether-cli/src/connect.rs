//! `tether connect URL`: a WebSocket client for people and scripts, like
//! wscat or websocat, on [`tether::ReconnectingClient`].
//!
//! Each line read from stdin is sent as a text message; each message received
//! is printed on stdout (text as is, binary as hex or base64, JSON pretty
//! printed on request). At a terminal, received messages are prefixed with
//! `< ` and a `> ` prompt is shown. In a pipe, when stdin ends the client
//! closes with 1000, waits for the closing handshake and exits.
//!
//! Commands: `/binary HEX` and `/b64 BASE64` send a binary message,
//! `/file PATH` sends a file as one binary message, `/ping [data]`,
//! `/close [code] [reason]`, `/quit`; a line that starts with `//` is sent
//! with one `/` removed. `--binary-file PATH` sends a file before the first
//! line of input.
//!
//! Exit status: 0 after a clean close (both close frames exchanged, whatever
//! the code), 1 after an unclean close or an error, 2 for usage errors
//! (including a URL that is not `ws://` or `wss://`). Close codes, reasons and
//! errors go to stderr.

use crate::settings::parse_duration;
use anyhow::Context;
use base64::Engine;
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use tether::reconnect::{ClientSender, Event, ReconnectOptions, ReconnectingClient};
use tether::tls::TlsOptions;
use tether::{ClientBuilder, CloseCode, Error, Message};
use tokio::sync::mpsc;

#[derive(clap::Args, Debug)]
pub struct ConnectArgs {
    /// The server's URL: ws://host:port/path or wss://...
    url: String,
    /// Add a request header, as "Name: value" (repeatable).
    #[arg(short = 'H', long = "header", value_name = "NAME: VALUE", value_parser = parse_header)]
    headers: Vec<(String, String)>,
    /// Offer a subprotocol, e.g. tether.v1 (repeatable, in order of preference).
    #[arg(long = "subprotocol", value_name = "NAME")]
    subprotocols: Vec<String>,
    /// Also trust this CA certificate (PEM) for wss://.
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// Accept any server certificate. For development only: anyone on the
    /// path can read and change the traffic.
    #[arg(long)]
    insecure: bool,
    /// Reconnect with backoff when the connection drops; lines typed while
    /// disconnected are sent after reconnecting.
    #[arg(long)]
    reconnect: bool,
    /// Send a ping this often (e.g. 30s); without an answer within
    /// --ping-timeout the connection is considered dead. Default: off, or
    /// 25s with --reconnect.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    ping_interval: Option<Duration>,
    /// With --ping-interval (or --reconnect): how long to wait for anything
    /// from the server after a ping before the connection is dropped as dead
    /// (e.g. 3s, 500ms).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "10s")]
    ping_timeout: Duration,
    /// Send this file as one binary message once connected, before the
    /// lines of stdin.
    #[arg(long, value_name = "PATH")]
    binary_file: Option<PathBuf>,
    /// Largest message accepted from the server (e.g. 1MiB, 65536); larger
    /// ones close with 1009.
    #[arg(long, value_name = "SIZE", value_parser = crate::settings::parse_size, default_value = "16MiB")]
    max_message_size: usize,
    /// How binary messages are printed.
    #[arg(long, value_enum, default_value_t = BinaryFormat::Hex)]
    binary_format: BinaryFormat,
    /// Pretty-print text messages that are JSON.
    #[arg(long)]
    json_pretty: bool,
    /// When input ends, wait up to this long for the answers (`ack` or
    /// `error`) to the tether.v1 requests sent with an `id` before closing
    /// (0s closes at once).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "5s")]
    answer_timeout: Duration,
    #[command(flatten)]
    deflate: crate::settings::DeflateArgs,
}

/// How binary messages are printed.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum BinaryFormat {
    /// Lowercase hexadecimal.
    Hex,
    /// Standard base64 with padding.
    Base64,
}

fn parse_header(s: &str) -> Result<(String, String), String> {
    let (name, value) = s.split_once(':').ok_or_else(|| format!("{s:?} is not a header: use \"Name: value\""))?;
    let name = name.trim();
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!("{name:?} is not a valid header name"));
    }
    Ok((name.to_string(), value.trim().to_string()))
}

pub fn run(args: ConnectArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let result = runtime.block_on(session(args));
    // The stdin reader may be blocked in read(2): do not wait for it.
    runtime.shutdown_background();
    result
}

fn builder(args: &ConnectArgs) -> anyhow::Result<ClientBuilder> {
    let mut builder = ClientBuilder::new(&args.url);
    for (name, value) in &args.headers {
        builder = builder.header(name, value);
    }
    for protocol in &args.subprotocols {
        builder = builder.protocol(protocol);
    }
    let ca_pem = match &args.ca {
        Some(path) => Some(std::fs::read(path).with_context(|| format!("cannot read the CA file {}", path.display()))?),
        None => None,
    };
    let config = tether::Config {
        deflate: args.deflate.config(),
        max_message_size: args.max_message_size,
        max_frame_size: args.max_message_size,
        ..tether::Config::default()
    };
    Ok(builder.config(config).tls(TlsOptions { ca_pem, native_roots: true, insecure: args.insecure }))
}

/// What the input side asks of the session.
enum Control {
    /// Close with this code and reason (as soon as a connection is open).
    Close(CloseCode, String),
    /// Input ended (or /quit): close normally once every request sent with
    /// an `id` has its answer, or after --answer-timeout.
    EndOfInput,
}

/// The `id`s of tether.v1 requests sent and not yet answered, so that the end
/// of piped input does not close before their `ack`s arrive (with a broker
/// the answer takes a round trip to it). Bounded: ids beyond the first 4,096
/// unanswered ones are not waited for.
#[derive(Clone, Default)]
struct Unanswered(std::sync::Arc<std::sync::Mutex<std::collections::HashSet<String>>>);

impl Unanswered {
    const MAX: usize = 4096;

    fn sent(&self, text: &str) {
        if let Some(id) = request_id(text) {
            let mut ids = self.0.lock().unwrap_or_else(|e| e.into_inner());
            if ids.len() < Self::MAX {
                ids.insert(id);
            }
        }
    }

    fn received(&self, msg: &Message) {
        let Message::Text(text) = msg else { return };
        let Ok(serde_json::Value::Object(obj)) = serde_json::from_str::<serde_json::Value>(text) else { return };
        if matches!(obj.get("type").and_then(|t| t.as_str()), Some("ack" | "error")) {
            if let Some(id) = obj.get("id") {
                self.0.lock().unwrap_or_else(|e| e.into_inner()).remove(&id.to_string());
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).is_empty()
    }
}

/// Input ended on an open connection: close now, or return when to close
/// at the latest if requests are still unanswered.
fn end_of_input(client: &ReconnectingClient, unanswered: &Unanswered, timeout: Duration) -> Option<tokio::time::Instant> {
    if unanswered.is_empty() || timeout.is_zero() {
        let _ = client.close(CloseCode::NORMAL, "");
        None
    } else {
        Some(tokio::time::Instant::now() + timeout)
    }
}

/// The `id` of a tether.v1 request line, as its JSON text (`1`, `"a"`).
fn request_id(text: &str) -> Option<String> {
    if !text.trim_start().starts_with('{') {
        return None;
    }
    match serde_json::from_str::<serde_json::Value>(text).ok()? {
        serde_json::Value::Object(obj) => obj.get("id").filter(|id| !id.is_null()).map(|id| id.to_string()),
        _ => None,
    }
}

async fn session(args: ConnectArgs) -> anyhow::Result<ExitCode> {
    let interactive = std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
    let options = ReconnectOptions {
        reconnect: args.reconnect,
        heartbeat_interval: args.ping_interval.or(if args.reconnect { ReconnectOptions::default().heartbeat_interval } else { None }),
        heartbeat_timeout: args.ping_timeout,
        ..ReconnectOptions::default()
    };
    // Read before connecting, so that a missing file is reported at once.
    let first = match &args.binary_file {
        Some(path) => Some(std::fs::read(path).with_context(|| format!("cannot read --binary-file {}", path.display()))?),
        None => None,
    };
    let mut client = ReconnectingClient::new(builder(&args)?, options);
    let printer = Printer { interactive, binary: args.binary_format, json_pretty: args.json_pretty };

    let (lines_tx, lines) = mpsc::channel(64);
    std::thread::Builder::new().name("stdin".into()).spawn(move || read_lines(lines_tx))?;
    let (control_tx, mut control) = mpsc::channel(4);
    let unanswered = Unanswered::default();
    tokio::spawn(forward_input(first, lines, client.sender(), control_tx, interactive, unanswered.clone()));
    // End of input came while requests were unanswered: close when they are
    // answered, or at this deadline.
    let mut close_at: Option<tokio::time::Instant> = None;

    let mut open = false;
    // Close wanted before a connection was open: applied on open, so that
    // what was piped in is sent first.
    let mut close_wanted: Option<Control> = None;
    let mut status = ExitCode::from(1);
    let mut interrupted = false;
    // A close was asked for (/close, /quit, end of input, Ctrl-C).
    let mut closing = false;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            event = client.next_event() => {
                let Some(event) = event else { break };
                match event {
                    Event::Open { protocol, attempt } => {
                        open = true;
                        tracing::debug!(url = %args.url, ?protocol, attempt, "connected");
                        if interactive {
                            let protocol = protocol.map(|p| format!(" (subprotocol {p})")).unwrap_or_default();
                            printer.note(&format!("connected to {}{protocol}; {COMMANDS}", args.url), true);
                        }
                        match close_wanted.take() {
                            Some(Control::Close(code, reason)) => {
                                let _ = client.close(code, &reason);
                            }
                            Some(Control::EndOfInput) => close_at = end_of_input(&client, &unanswered, args.answer_timeout),
                            None => {}
                        }
                    }
                    Event::Message(msg) => {
                        unanswered.received(&msg);
                        printer.message(&msg);
                        if close_at.is_some() && unanswered.is_empty() {
                            close_at = None;
                            let _ = client.close(CloseCode::NORMAL, "");
                        }
                    }
                    Event::Close { was_clean, code, reason } => {
                        open = false;
                        status = ExitCode::from(if was_clean { 0 } else { 1 });
                        printer.note(&describe_close(was_clean, code, &reason), args.reconnect && !closing);
                        // Without --reconnect nothing follows a close: do not
                        // wait for the event stream (or stdin) to end.
                        if !args.reconnect {
                            break;
                        }
                    }
                    Event::Error(e) => {
                        status = ExitCode::from(if matches!(e, Error::InvalidUrl(_)) { 2 } else { 1 });
                        printer.note(&format!("error: {}", explain(&e)), false);
                    }
                    Event::Reconnecting { attempt, delay } => {
                        status = ExitCode::from(1);
                        printer.note(&format!("reconnecting in {delay:.1?} (attempt {attempt})"), true);
                    }
                    Event::GaveUp { attempts } => {
                        status = ExitCode::from(1);
                        printer.note(&format!("giving up after {attempts} failed attempts"), false);
                    }
                    _ => {}
                }
            }
            Some(c) = control.recv() => {
                closing = true;
                match c {
                    Control::EndOfInput if open => close_at = end_of_input(&client, &unanswered, args.answer_timeout),
                    Control::Close(code, reason) if open => {
                        let _ = client.close(code, &reason);
                    }
                    // Applied on open, after what was piped in is sent.
                    c => close_wanted = Some(c),
                }
            }
            _ = async { tokio::time::sleep_until(close_at.unwrap_or_else(tokio::time::Instant::now)).await }, if close_at.is_some() => {
                close_at = None;
                printer.note(&format!("no answer to some requests within {:?}; closing", args.answer_timeout), false);
                let _ = client.close(CloseCode::NORMAL, "");
            }
            _ = &mut ctrl_c => {
                // The stream may not end on its own if no connection is open.
                if interrupted || !open {
                    break;
                }
                interrupted = true;
                closing = true;
                printer.note("interrupted: closing (press Ctrl-C again to quit at once)", false);
                let _ = client.close(CloseCode::NORMAL, "");
                ctrl_c.set(tokio::signal::ctrl_c());
            }
        }
    }
    Ok(status)
}

/// Read stdin line by line on a plain thread (stdin reads block).
fn read_lines(tx: mpsc::Sender<String>) {
    let stdin = std::io::stdin();
    let mut stdin = stdin.lock();
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match stdin.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                while matches!(buf.last(), Some(b'\n' | b'\r')) {
                    buf.pop();
                }
                if tx.blocking_send(String::from_utf8_lossy(&buf).into_owned()).is_err() {
                    return;
                }
            }
        }
    }
}

/// What one line of input means.
#[derive(Debug, PartialEq)]
enum Input {
    Text(String),
    Binary(Vec<u8>),
    File(PathBuf),
    Ping(String),
    Close(CloseCode, String),
    Quit,
    Invalid(String),
}

const COMMANDS: &str = "/binary HEX, /b64 BASE64, /file PATH, /ping [data], /close [code] [reason], /quit";
const HELP: &str = "commands: /binary HEX, /b64 BASE64, /file PATH, /ping [data], /close [code] [reason], /quit; start a line with // to send one that begins with /";

fn parse_input(line: &str) -> Input {
    let Some(command) = line.strip_prefix('/') else { return Input::Text(line.to_string()) };
    if command.starts_with('/') {
        return Input::Text(command.to_string());
    }
    let (name, rest) = command.split_once(' ').unwrap_or((command, ""));
    match name {
        "ping" => Input::Ping(rest.to_string()),
        "binary" | "bin" | "hex" => match parse_hex(rest) {
            Ok(bytes) => Input::Binary(bytes),
            Err(why) => Input::Invalid(format!("/binary: {why}")),
        },
        "b64" | "base64" => match parse_base64(rest) {
            Ok(bytes) => Input::Binary(bytes),
            Err(why) => Input::Invalid(format!("/b64: {why}")),
        },
        "file" => match rest.trim() {
            "" => Input::Invalid("/file needs a path: /file PATH".to_string()),
            path => Input::File(PathBuf::from(path)),
        },
        "quit" | "exit" => Input::Quit,
        "close" => {
            let rest = rest.trim_start();
            if rest.is_empty() {
                return Input::Close(CloseCode::NORMAL, String::new());
            }
            let (code, reason) = rest.split_once(' ').unwrap_or((rest, ""));
            match code.parse::<u16>() {
                Ok(code) if CloseCode(code).is_allowed_on_wire() => Input::Close(CloseCode(code), reason.to_string()),
                _ => Input::Invalid(format!("{code:?} is not a close code that may be sent (1000-1003, 1007-1014, 3000-4999)")),
            }
        }
        _ => Input::Invalid(format!("unknown command /{name}; {HELP}")),
    }
}

/// Hexadecimal bytes, in upper or lower case; spaces between them are ignored.
fn parse_hex(s: &str) -> Result<Vec<u8>, String> {
    let digits: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    if !digits.len().is_multiple_of(2) {
        return Err(format!("{} hex digits: give two per byte (e.g. /binary 00ff10)", digits.len()));
    }
    digits
        .chunks(2)
        .map(|pair| {
            let pair = std::str::from_utf8(pair).unwrap_or("??");
            u8::from_str_radix(pair, 16).map_err(|_| format!("{pair:?} is not a hex byte (e.g. /binary 00ff10)"))
        })
        .collect()
}

/// Standard base64, padding optional; spaces are ignored.
fn parse_base64(s: &str) -> Result<Vec<u8>, String> {
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    const ENGINE: GeneralPurpose =
        GeneralPurpose::new(&base64::alphabet::STANDARD, GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent));
    let text: String = s.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    ENGINE.decode(text).map_err(|e| format!("not base64 ({e}); e.g. /b64 AAH+/w=="))
}

/// Send what is typed; turn commands and the end of input into controls.
/// `first`, from --binary-file, goes before any line.
async fn forward_input(
    first: Option<Vec<u8>>,
    mut lines: mpsc::Receiver<String>,
    sender: ClientSender,
    control: mpsc::Sender<Control>,
    interactive: bool,
    unanswered: Unanswered,
) {
    let prompt = || {
        if interactive {
            print!("> ");
            let _ = std::io::stdout().flush();
        }
    };
    if let Some(bytes) = first {
        if let Err(e) = sender.send_wait(Message::binary(bytes)).await {
            eprintln!("--binary-file not sent: {e}");
        }
    }
    while let Some(line) = lines.recv().await {
        let result = match parse_input(&line) {
            // Wait for room rather than drop input that is piped in fast.
            Input::Text(text) => {
                unanswered.sent(&text);
                sender.send_wait(text).await
            }
            Input::Binary(bytes) => sender.send_wait(Message::binary(bytes)).await,
            Input::File(path) => match std::fs::read(&path) {
                Ok(bytes) => sender.send_wait(Message::binary(bytes)).await,
                Err(e) => {
                    eprintln!("cannot read {}: {e}", path.display());
                    Ok(())
                }
            },
            Input::Ping(data) => sender.send(Message::Ping(data.into_bytes().into())),
            Input::Close(code, reason) => {
                let _ = control.send(Control::Close(code, reason)).await;
                return;
            }
            Input::Quit => {
                let _ = control.send(Control::Close(CloseCode::NORMAL, String::new())).await;
                return;
            }
            Input::Invalid(why) => {
                eprintln!("{why}");
                Ok(())
            }
        };
        if let Err(e) = result {
            eprintln!("not sent: {e}");
            if matches!(e, tether::reconnect::ClientError::Closed) {
                return;
            }
        }
        prompt();
    }
    // End of input, or /quit.
    let _ = control.send(Control::EndOfInput).await;
}

fn describe_close(was_clean: bool, code: CloseCode, reason: &str) -> String {
    let reason = if reason.is_empty() { String::new() } else { format!(" {reason}") };
    if was_clean {
        format!("closed: {}{reason}", code.0)
    } else if code == CloseCode::ABNORMAL {
        "connection lost: 1006 (closed without a close frame)".to_string()
    } else {
        format!("connection closed uncleanly: {}{reason}", code.0)
    }
}

/// The error, with a hint when there is an obvious next step.
fn explain(e: &Error) -> String {
    match e {
        Error::Tls(_) => format!("{e} (pass --ca FILE to trust the server's CA, or --insecure for development)"),
        _ => e.to_string(),
    }
}

/// Prints received messages on stdout, and notes on stderr.
struct Printer {
    interactive: bool,
    binary: BinaryFormat,
    json_pretty: bool,
}

impl Printer {
    fn message(&self, msg: &Message) {
        let (body, note) = match msg {
            Message::Text(t) => (self.text(t), false),
            Message::Binary(b) => (self.bytes(b), false),
            Message::Pong(p) => (format!("[pong] {}", String::from_utf8_lossy(p)), true),
            Message::Ping(p) => {
                tracing::debug!(payload = %String::from_utf8_lossy(p), "ping from the server (answered)");
                return;
            }
            Message::Close(_) => return,
        };
        let mut out = std::io::stdout().lock();
        if self.interactive {
            // Clear the prompt, print, then show the prompt again.
            let _ = write!(out, "\r\x1b[2K");
            for (i, line) in body.lines().enumerate() {
                let _ = writeln!(out, "{}{line}", if i == 0 { "< " } else { "  " });
            }
            let _ = write!(out, "> ");
            let _ = out.flush();
        } else if note {
            drop(out);
            eprintln!("{body}");
        } else {
            let _ = writeln!(out, "{body}");
        }
    }

    /// A line for people (stderr): connection state, close codes, errors.
    /// At a terminal, `prompt` shows the prompt again after it.
    fn note(&self, text: &str, prompt: bool) {
        if self.interactive {
            let mut out = std::io::stdout().lock();
            let _ = write!(out, "\r\x1b[2K");
            let _ = out.flush();
            eprintln!("{text}");
            if prompt {
                let _ = write!(out, "> ");
                let _ = out.flush();
            }
        } else {
            eprintln!("{text}");
        }
    }

    fn text(&self, text: &str) -> String {
        if self.json_pretty && serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok() {
            return pretty_json(text);
        }
        text.to_string()
    }

    fn bytes(&self, bytes: &[u8]) -> String {
        let encoded = match self.binary {
            BinaryFormat::Hex => bytes.iter().map(|b| format!("{b:02x}")).collect(),
            BinaryFormat::Base64 => base64::engine::general_purpose::STANDARD.encode(bytes),
        };
        if self.interactive {
            format!("[binary {} bytes] {encoded}", bytes.len())
        } else {
            encoded
        }
    }
}

/// Re-indent valid JSON text, two spaces a level, keeping the order of keys
/// as sent (parsing into a `serde_json::Value` would sort them).
fn pretty_json(json: &str) -> String {
    let mut out = String::with_capacity(json.len() * 2);
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    let mut chars = json.chars().peekable();
    let newline = |out: &mut String, depth: usize| {
        out.push('\n');
        out.push_str(&"  ".repeat(depth));
    };
    while let Some(c) = chars.next() {
        if in_string {
            out.push(c);
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => {
                in_string = true;
                out.push(c);
            }
            '{' | '[' => {
                out.push(c);
                while chars.peek().is_some_and(|c| c.is_ascii_whitespace()) {
                    chars.next();
                }
                if matches!(chars.peek(), Some('}' | ']')) {
                    out.push(chars.next().unwrap_or_default());
                } else {
                    depth += 1;
                    newline(&mut out, depth);
                }
            }
            '}' | ']' => {
                depth = depth.saturating_sub(1);
                newline(&mut out, depth);
                out.push(c);
            }
            ',' => {
                out.push(c);
                newline(&mut out, depth);
            }
            ':' => out.push_str(": "),
            c if c.is_ascii_whitespace() => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_read_from_json_objects_only() {
        assert_eq!(request_id(r#"{"type":"publish","id":1}"#).as_deref(), Some("1"));
        assert_eq!(request_id(r#" {"id":"a"}"#).as_deref(), Some("\"a\""));
        assert_eq!(request_id(r#"{"id":null}"#), None);
        assert_eq!(request_id(r#"{"type":"chat"}"#), None);
        assert_eq!(request_id("hello {\"id\":1}"), None);
        assert_eq!(request_id("{not json"), None);
        let unanswered = Unanswered::default();
        unanswered.sent(r#"{"id":"a"}"#);
        assert!(!unanswered.is_empty());
        unanswered.received(&Message::text(r#"{"type":"message","id":"a"}"#));
        assert!(!unanswered.is_empty(), "only an ack or an error answers");
        unanswered.received(&Message::text(r#"{"type":"error","id":"a","code":"bad"}"#));
        assert!(unanswered.is_empty());
    }

    #[test]
    fn commands() {
        assert_eq!(parse_input("hello"), Input::Text("hello".into()));
        assert_eq!(parse_input("//etc"), Input::Text("/etc".into()));
        assert_eq!(parse_input("/ping"), Input::Ping(String::new()));
        assert_eq!(parse_input("/ping are you there"), Input::Ping("are you there".into()));
        assert_eq!(parse_input("/close"), Input::Close(CloseCode::NORMAL, String::new()));
        assert_eq!(parse_input("/close 4000 bye now"), Input::Close(CloseCode(4000), "bye now".into()));
        assert!(matches!(parse_input("/close 1006"), Input::Invalid(_)));
        assert!(matches!(parse_input("/close soon"), Input::Invalid(_)));
        assert_eq!(parse_input("/quit"), Input::Quit);
        assert_eq!(parse_input("/binary 00ff10"), Input::Binary(vec![0, 0xff, 0x10]));
        assert_eq!(parse_input("/binary 00 FF 1a"), Input::Binary(vec![0, 0xff, 0x1a]));
        assert_eq!(parse_input("/binary"), Input::Binary(vec![]));
        assert!(matches!(parse_input("/binary abc"), Input::Invalid(m) if m.contains("two per byte")));
        assert!(matches!(parse_input("/binary zz"), Input::Invalid(m) if m.contains("not a hex byte")));
        assert_eq!(parse_input("/b64 AAH+/w=="), Input::Binary(vec![0, 1, 0xfe, 0xff]));
        assert_eq!(parse_input("/b64 AAH+/w"), Input::Binary(vec![0, 1, 0xfe, 0xff]));
        assert!(matches!(parse_input("/b64 !!"), Input::Invalid(m) if m.contains("not base64")));
        assert_eq!(parse_input("/file /tmp/x y.bin"), Input::File(PathBuf::from("/tmp/x y.bin")));
        assert!(matches!(parse_input("/file"), Input::Invalid(_)));
        assert!(matches!(parse_input("/dance"), Input::Invalid(m) if m.contains("/ping")));
    }

    #[test]
    fn headers() {
        assert_eq!(parse_header("Authorization: Bearer x:y"), Ok(("Authorization".into(), "Bearer x:y".into())));
        assert!(parse_header("no colon").is_err());
        assert!(parse_header(": empty").is_err());
    }

    #[test]
    fn pretty_json_keeps_key_order() {
        assert_eq!(pretty_json(r#"{"z":1,"a":[1, {}],"s":"x,\"{y}\"","e":[ ]}"#), "{\n  \"z\": 1,\n  \"a\": [\n    1,\n    {}\n  ],\n  \"s\": \"x,\\\"{y}\\\"\",\n  \"e\": []\n}");
        assert_eq!(pretty_json("42"), "42");
    }

    #[test]
    fn binary_formats() {
        let p = Printer { interactive: false, binary: BinaryFormat::Hex, json_pretty: false };
        assert_eq!(p.bytes(&[0, 0xff, 0x10]), "00ff10");
        let p = Printer { binary: BinaryFormat::Base64, ..p };
        assert_eq!(p.bytes(b"hi!"), "aGkh");
    }
}
