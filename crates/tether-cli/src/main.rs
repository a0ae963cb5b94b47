//! `tether`: a ready-to-run WebSocket server, an echo server, a client and a
//! load generator.

mod admin;
mod admission;
mod auth;
mod api;
mod bench;
mod connect;
mod driver;
mod demo;
mod echo;
mod front;
mod live;
mod relay;
mod logging;
mod serve;
mod serve_loop;
mod settings;
mod shutdown;
mod webhook;
mod backend_http;
mod hooks;
mod yjs;

use clap::{CommandFactory, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// Tether: WebSocket server, client and tools.
#[derive(Parser, Debug)]
#[command(name = "tether", version, about, long_about = None)]
struct Cli {
    /// Log as JSON lines instead of human-readable text.
    #[arg(long, global = true, env = "TETHER_LOG_JSON")]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the real-time server: HTTP and WebSocket on one port, a chat page
    /// at /, broadcast to rooms and topics, heartbeats, /health and /metrics.
    Serve(Box<settings::ServeArgs>),
    /// Load-generate against a WebSocket server (echo, broadcast, idle connections).
    Bench(bench::BenchArgs),
    /// Run a WebSocket echo server (text as text, binary as binary), the lean
    /// accept path used by conformance tests and benchmarks.
    Echo(echo::EchoArgs),
    /// Connect to a WebSocket server and chat with it, like wscat: lines from
    /// stdin are sent, messages received are printed; --reconnect survives
    /// drops. Works at a terminal and in a pipe.
    Connect(connect::ConnectArgs),
    /// Run a demo feed: `tether demo ticker` publishes stock quotes (keyed,
    /// so conflated; read them with deltas at /ticker.html).
    Demo(demo::DemoArgs),
    /// Print a shell completion script, e.g.
    /// `tether completions bash > ~/.local/share/bash-completion/completions/tether`.
    Completions {
        /// The shell to complete in.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) of tether or of one subcommand, e.g.
    /// `tether man serve | man -l -`; or write every page into --dir.
    Man {
        /// The subcommand whose page to print (e.g. serve) [default: tether itself]
        #[arg(conflicts_with = "dir")]
        subcommand: Option<String>,
        /// Write tether.1 and one page per subcommand (tether-serve.1, ...) into this directory.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

/// glibc's malloc gives the top of a thread's heap back to the kernel
/// (`madvise`) as soon as more than 128 KiB of it is free. An event loop
/// that frees a turn's buffers at the end of each turn then pays a
/// `madvise` per turn and page faults to get the memory back in the next:
/// at 16 KiB echo x 200 connections that was about half of the
/// server's CPU per message (BENCHMARKS.md, #16). Keep up to 32 MiB per
/// heap instead. `GLIBC_TUNABLES=glibc.malloc.trim_threshold=N` still wins.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn keep_freed_heap() {
    extern "C" {
        fn mallopt(param: std::ffi::c_int, value: std::ffi::c_int) -> std::ffi::c_int;
    }
    const M_TRIM_THRESHOLD: std::ffi::c_int = -1;
    if std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("trim_threshold")) {
        return;
    }
    // SAFETY: mallopt only sets a malloc parameter; called before any thread starts.
    unsafe {
        mallopt(M_TRIM_THRESHOLD, 32 << 20);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_freed_heap() {}

fn main() -> ExitCode {
    keep_freed_heap();
    let cli = Cli::parse();
    logging::init(cli.log_json);
    let result = match cli.command {
        Command::Serve(args) => serve::run(*args),
        Command::Echo(args) => echo::run(args),
        Command::Connect(args) => connect::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Demo(args) => demo::run(args),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "tether", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Command::Man { subcommand, dir } => man(subcommand.as_deref(), dir),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// `tether man`: pages generated from the clap definition, so that they
/// cannot drift from `--help`.
fn man(subcommand: Option<&str>, dir: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    use anyhow::Context;
    let mut cmd = Cli::command().disable_help_subcommand(true);
    if let Some(dir) = dir {
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        clap_mangen::generate_to(cmd, &dir).with_context(|| format!("cannot write man pages into {}", dir.display()))?;
        return Ok(ExitCode::SUCCESS);
    }
    // Built, so that subcommands are named `tether-serve` and so on.
    cmd.build();
    let page = match subcommand {
        None => cmd,
        Some(name) => match cmd.find_subcommand(name) {
            Some(sub) => sub.clone(),
            None => {
                let names: Vec<&str> = cmd.get_subcommands().map(|c| c.get_name()).collect();
                eprintln!("error: no subcommand {name:?} (one of: {})", names.join(", "));
                return Ok(ExitCode::from(2));
            }
        },
    };
    let mut out = std::io::stdout().lock();
    clap_mangen::Man::new(page).render(&mut out)?;
    Ok(ExitCode::SUCCESS)
}
