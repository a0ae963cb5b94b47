//! Syscalls per echoed message, counted, not timed: `tether echo` runs
//! under `strace -f -c` while one client echoes messages one at a time on a
//! loopback connection. Two runs differ only in the number of messages, so
//! the difference of their totals divided by the difference of messages is
//! what one message costs the server (start-up, accept and handshake cancel
//! out). The event loop needs one `epoll_wait`, one `read` (a short read
//! drained the socket: no second read for `EAGAIN`) and one `write` per
//! message, and this pins it.
//!
//! Needs `strace` (scripts/deps.sh installs it).

use std::process::{Command, Stdio};
use std::time::Duration;

/// Syscalls the server made, by name, while echoing `messages` messages.
fn count(driver: &str, messages: usize) -> (u64, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let out = std::env::temp_dir().join(format!("tether-syscalls-{}-{driver}-{messages}.txt", std::process::id()));
    let strace = Command::new("strace")
        .args(["-f", "-c", "-o"])
        .arg(&out)
        .arg(env!("CARGO_BIN_EXE_tether"))
        .args(["echo", "--threads", "1", "--driver", driver, "--listen", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let mut strace = match strace {
        Ok(child) => child,
        Err(e) => panic!("cannot run strace ({e}): install it (scripts/deps.sh does)"),
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let url = format!("ws://127.0.0.1:{port}/");
        let mut ws = None;
        for _ in 0..200 {
            match tether::connect(&url).await {
                Ok(socket) => {
                    ws = Some(socket);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        let mut ws = ws.expect("tether echo did not start under strace");
        let payload = "x".repeat(64);
        for _ in 0..messages {
            ws.send(payload.as_str()).await.unwrap();
            let reply = ws.recv().await.expect("echo").unwrap();
            assert_eq!(reply.as_text(), Some(payload.as_str()));
        }
        ws.close(tether::CloseCode::NORMAL, "").await.unwrap();
    });
    // Stop the server (strace's child) with SIGINT: it shuts down cleanly
    // and strace writes its summary.
    let children = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", strace.id())).unwrap();
    let pid = children.split_whitespace().next().expect("tether echo runs under strace");
    Command::new("kill").args(["-INT", pid]).status().unwrap();
    let _ = strace.wait();
    let summary = std::fs::read_to_string(&out).unwrap();
    let _ = std::fs::remove_file(&out);
    let total = summary
        .lines()
        .find(|l| l.trim_end().ends_with("total"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no total in the strace summary:\n{summary}"));
    (total, summary)
}

fn per_message(driver: &str) -> f64 {
    let (few, _) = count(driver, 200);
    let (many, summary) = count(driver, 1200);
    let per = (many as f64 - few as f64) / 1000.0;
    println!("{driver}: {per:.2} syscalls per echoed message\n{summary}");
    per
}

#[test]
fn the_event_loop_makes_three_syscalls_per_echoed_message() {
    let lean = per_message("loop");
    // epoll_wait, read, write: 3. A little slack for the odd extra wake-up.
    assert!(lean <= 3.3, "the event loop made {lean:.2} syscalls per echoed message (expected about 3)");
}
