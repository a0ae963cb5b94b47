//! `tether serve` settings of the Yjs endpoint (`/yjs/<document>`, see the
//! tether-yjs crate): flags, variables and the `[yjs]` table of the TOML
//! file.

use crate::settings::parse_duration;
use anyhow::Context;
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;
use tether_yjs::{RateLimit, YjsConfig};

/// The Yjs endpoint (`ws://HOST:PORT/yjs/<document>`, the y-websocket protocol).
#[derive(clap::Args, Debug, Default, Clone)]
pub struct YjsArgs {
    /// Directory where Yjs documents are kept between runs (`none`: in
    /// memory only) [default: $STATE_DIRECTORY/yjs under systemd, else
    /// $XDG_DATA_HOME/tether/yjs or ~/.local/share/tether/yjs; created on
    /// the first document stored; with --broker redis, documents are kept
    /// in Redis instead, shared by every node]
    #[arg(long, env = "TETHER_YJS_DIR", value_name = "DIR")]
    pub yjs_dir: Option<String>,
    /// Largest Yjs document (1008 for an update past it) [default: 16MiB]
    #[arg(long, env = "TETHER_YJS_MAX_DOCUMENT_SIZE", value_parser = tether_bench::parse_size)]
    pub yjs_max_document_size: Option<usize>,
    /// Most Yjs documents open at once (1013 past it) [default: 10000]
    #[arg(long, env = "TETHER_YJS_MAX_DOCUMENTS")]
    pub yjs_max_documents: Option<usize>,
    /// Most Yjs documents kept in the directory (1013 for one more) [default: 100000]
    #[arg(long, env = "TETHER_YJS_MAX_STORED_DOCUMENTS")]
    pub yjs_max_stored_documents: Option<usize>,
    /// Yjs messages (updates, awareness) per second per connection (1008
    /// past it and its burst) [default: 100]
    #[arg(long, env = "TETHER_YJS_MESSAGE_RATE")]
    pub yjs_message_rate: Option<u32>,
    /// Burst above --yjs-message-rate [default: 500]
    #[arg(long, env = "TETHER_YJS_MESSAGE_BURST")]
    pub yjs_message_burst: Option<u32>,
    /// Largest awareness state of one Yjs client (1008 past it) [default: 16KiB]
    #[arg(long, env = "TETHER_YJS_MAX_AWARENESS_SIZE", value_parser = tether_bench::parse_size)]
    pub yjs_max_awareness_size: Option<usize>,
    /// How often a quiet Yjs connection gets a sign of life and a ping [default: 10s]
    #[arg(long, env = "TETHER_YJS_KEEPALIVE", value_parser = parse_duration)]
    pub yjs_keepalive: Option<Duration>,
}

/// The `[yjs]` table of the config file (same names as the flags, without `yjs-`).
#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct YjsFile {
    dir: Option<String>,
    #[serde(default, deserialize_with = "crate::settings::de_size")]
    max_document_size: Option<usize>,
    max_documents: Option<usize>,
    max_stored_documents: Option<usize>,
    message_rate: Option<u32>,
    message_burst: Option<u32>,
    #[serde(default, deserialize_with = "crate::settings::de_size")]
    max_awareness_size: Option<usize>,
    keepalive: Option<String>,
}

/// The Yjs settings, resolved.
#[derive(Debug, Clone)]
pub struct YjsSettings {
    pub config: YjsConfig,
    /// Where documents are kept (`None`: memory only).
    pub dir: Option<PathBuf>,
}

impl YjsArgs {
    /// Flags over the file over the defaults.
    pub fn resolve(self, file: YjsFile) -> anyhow::Result<YjsSettings> {
        let d = YjsConfig::default();
        let keepalive = match (self.yjs_keepalive, file.keepalive) {
            (Some(k), _) => k,
            (None, Some(s)) => parse_duration(&s).map_err(|e| anyhow::anyhow!("config file, yjs keepalive: {e}"))?,
            (None, None) => d.keepalive,
        };
        if keepalive.is_zero() {
            anyhow::bail!("--yjs-keepalive must be greater than zero");
        }
        let config = YjsConfig {
            max_document_bytes: self.yjs_max_document_size.or(file.max_document_size).unwrap_or(d.max_document_bytes),
            max_documents: self.yjs_max_documents.or(file.max_documents).unwrap_or(d.max_documents),
            max_stored_documents: self.yjs_max_stored_documents.or(file.max_stored_documents).unwrap_or(d.max_stored_documents),
            message_rate: RateLimit {
                per_second: self.yjs_message_rate.or(file.message_rate).unwrap_or(d.message_rate.per_second),
                burst: self.yjs_message_burst.or(file.message_burst).unwrap_or(d.message_rate.burst).max(1),
            },
            max_awareness_bytes: self.yjs_max_awareness_size.or(file.max_awareness_size).unwrap_or(d.max_awareness_bytes),
            keepalive,
            ..d
        };
        let dir = match self.yjs_dir.or(file.dir) {
            Some(dir) if dir == "none" => None,
            Some(dir) => Some(PathBuf::from(dir)),
            None => Some(default_dir().context("no directory for Yjs documents: set --yjs-dir (or --yjs-dir none)")?),
        };
        Ok(YjsSettings { config, dir })
    }
}

fn default_dir() -> Option<PathBuf> {
    let env = |name| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    // systemd's StateDirectory= (may list several, colon-separated).
    if let Some(state) = std::env::var("STATE_DIRECTORY").ok().filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(state.split(':').next().unwrap_or_default()).join("yjs"));
    }
    env("XDG_DATA_HOME").or_else(|| env("HOME").map(|h| h.join(".local/share"))).map(|d| d.join("tether/yjs"))
}
