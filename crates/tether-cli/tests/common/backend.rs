//! examples/auth-backend/backend.py as a child process: the application
//! backend of the webhook and hook tests. Every JSON line it prints
//! arrives on a channel.

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub struct Backend {
    child: Child,
    pub port: u16,
    pub lines: mpsc::Receiver<Value>,
}

impl Backend {
    pub fn start(secret: &str, mode: &str) -> Backend {
        Self::start_with(secret, mode, &[])
    }

    /// With more arguments (`--tls-cert`, `--tls-key`).
    pub fn start_with(secret: &str, mode: &str, extra: &[&str]) -> Backend {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/auth-backend/backend.py");
        let python = std::env::var("TETHER_PYTHON").unwrap_or_else(|_| "python3".into());
        let mut child = Command::new(python)
            .args([script, "--port", "0", "--webhook-secret", secret, "--mode", mode])
            .args(extra)
            .stdout(Stdio::piped())
            .spawn()
            .expect("start backend.py");
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(serde_json::from_str::<Value>(&line).unwrap()).is_err() {
                    return;
                }
            }
        });
        let first = lines.recv_timeout(Duration::from_secs(20)).expect("backend started");
        let port = first["listening"].as_u64().unwrap() as u16;
        Backend { child, port, lines }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/webhook", self.port)
    }

    /// The base URL of its hooks (`--hook-url`).
    pub fn hooks_url(&self) -> String {
        format!("http://127.0.0.1:{}/hooks", self.port)
    }

    /// Webhook events received, until `done` says enough (at most 20 s).
    pub fn until(&self, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let mut got = Vec::new();
        while !done(&got) {
            match self.lines.recv_timeout(Duration::from_secs(20)) {
                Ok(v) => got.push(v),
                Err(_) => panic!("backend got only {got:?}"),
            }
        }
        got
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

