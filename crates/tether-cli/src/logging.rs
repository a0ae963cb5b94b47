//! Logging through `tracing`: human-readable by default, JSON with `--log-json`.
//! The level comes from `RUST_LOG` (default `info`). Colours only when stderr
//! is a terminal and `NO_COLOR` is unset: a log file or a journal gets plain text.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

pub fn init(json: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = builder.with_ansi(colour);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
