//! `tether serve` settings of the live features (conflation, `$sys:stats`,
//! `$room:` ticks: flags, variables and the `[live]` table of the TOML
//! file), kept apart from settings.rs so they merge easily; and the demo
//! pages they serve.

use crate::settings::parse_duration;
use serde::Deserialize;
use std::time::Duration;

/// Conflation, the system stats topic and game rooms.
#[derive(clap::Args, Debug, Default, Clone)]
pub struct LiveArgs {
    /// Conflate every topic starting with this prefix (repeat or
    /// comma-separate, e.g. `prices:`): a newer message replaces an unsent
    /// older one with the same key (or, without a key, of the topic) in a
    /// slow client's queue. A publish with a "key" is conflated anywhere
    /// [default: none]
    #[arg(long = "conflate-prefix", env = "TETHER_CONFLATE_PREFIXES", value_delimiter = ',', value_name = "PREFIX")]
    pub conflate_prefixes: Vec<String>,
    /// Publish this server's figures on the `$sys:stats` topic this often
    /// (the /dashboard.html page reads them); 0 turns it off [default: 1s]
    #[arg(long, env = "TETHER_STATS_INTERVAL", value_parser = parse_duration)]
    pub stats_interval: Option<Duration>,
    /// Ticks per second of `$room:` topics: each publishes its players'
    /// latest states once per tick (1-1000) [default: 20]
    #[arg(long, env = "TETHER_TICK_RATE", value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub tick_rate: Option<u32>,
}

/// The `[live]` table of the config file (same names as the flags):
///
/// ```toml
/// [live]
/// conflate-prefixes = ["prices:"]
/// stats-interval = "1s"
/// tick-rate = 30
/// ```
#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct LiveFile {
    conflate_prefixes: Option<Vec<String>>,
    stats_interval: Option<String>,
    tick_rate: Option<u32>,
}

impl LiveArgs {
    /// Flags over the file over the defaults.
    pub fn resolve(self, file: LiveFile) -> anyhow::Result<LiveArgs> {
        let conflate_prefixes = if self.conflate_prefixes.is_empty() { file.conflate_prefixes.unwrap_or_default() } else { self.conflate_prefixes };
        let stats_interval = match (self.stats_interval, file.stats_interval) {
            (Some(d), _) => Some(d),
            (None, Some(s)) => Some(parse_duration(&s).map_err(|e| anyhow::anyhow!("config file, live stats-interval: {e}"))?),
            (None, None) => None,
        };
        let tick_rate = self.tick_rate.or(file.tick_rate);
        if tick_rate.is_some_and(|r| !(1..=1000).contains(&r)) {
            anyhow::bail!("tick-rate must be 1 to 1000 ticks per second");
        }
        Ok(LiveArgs { conflate_prefixes, stats_interval, tick_rate })
    }

    /// The room tick.
    pub fn room_tick(&self) -> Duration {
        Duration::from_secs(1) / self.tick_rate.unwrap_or(20)
    }

    /// How often `$sys:stats` is published (`None`: off).
    pub fn stats_interval(&self) -> Option<Duration> {
        Some(self.stats_interval.unwrap_or(Duration::from_secs(1))).filter(|d| !d.is_zero())
    }
}

// Through symlinks inside the crate (crates/tether-cli/web/ -> web/), like
// the other embedded files.
const TICKER_HTML: &str = include_str!("../web/ticker.html");
const DASHBOARD_HTML: &str = include_str!("../web/dashboard.html");
const MULTIPLAYER_HTML: &str = include_str!("../web/multiplayer.html");
const EDITOR_HTML: &str = include_str!("../web/editor.html");
// CodeMirror 6 + yjs + y-websocket + y-codemirror.next, built by web/editor/build.mjs.
const EDITOR_JS: &str = include_str!("../web/vendor/editor.bundle.js");
const EDITOR_LICENSES: &str = include_str!("../web/vendor/editor.LICENSES.txt");
const UPLOT_JS: &str = include_str!("../web/vendor/uPlot.iife.min.js");
const UPLOT_CSS: &str = include_str!("../web/vendor/uPlot.min.css");
const UPLOT_LICENSE: &str = include_str!("../web/vendor/uPlot.LICENSE");

/// The demo pages and their vendored files: `(content type, body)` by path.
pub fn page(path: &str) -> Option<(&'static str, &'static str)> {
    Some(match path {
        "/ticker.html" => ("text/html; charset=utf-8", TICKER_HTML),
        "/dashboard.html" => ("text/html; charset=utf-8", DASHBOARD_HTML),
        "/multiplayer.html" => ("text/html; charset=utf-8", MULTIPLAYER_HTML),
        "/editor.html" => ("text/html; charset=utf-8", EDITOR_HTML),
        "/vendor/editor.bundle.js" => ("text/javascript; charset=utf-8", EDITOR_JS),
        "/vendor/editor.LICENSES.txt" => ("text/plain; charset=utf-8", EDITOR_LICENSES),
        "/vendor/uPlot.iife.min.js" => ("text/javascript; charset=utf-8", UPLOT_JS),
        "/vendor/uPlot.min.css" => ("text/css; charset=utf-8", UPLOT_CSS),
        "/vendor/uPlot.LICENSE" => ("text/plain; charset=utf-8", UPLOT_LICENSE),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use crate::settings::{ServeArgs, Settings};
    use std::time::Duration;

    #[test]
    fn the_live_table_of_the_file_under_the_flags() {
        let dir = std::env::temp_dir().join(format!("tether-settings-live-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tether.toml");
        std::fs::write(&path, "[live]\nconflate-prefixes = [\"prices:\", \"fx:\"]\nstats-interval = \"250ms\"\ntick-rate = 40\n").unwrap();
        let s = Settings::resolve(ServeArgs { config: Some(path.clone()), ..Default::default() }).unwrap();
        assert_eq!(s.live.conflate_prefixes, ["prices:", "fx:"]);
        assert_eq!(s.live.stats_interval(), Some(Duration::from_millis(250)));
        assert_eq!(s.live.room_tick(), Duration::from_millis(25));
        // A flag beats the file.
        let live = super::LiveArgs { tick_rate: Some(10), ..Default::default() };
        let s = Settings::resolve(ServeArgs { config: Some(path.clone()), live, ..Default::default() }).unwrap();
        assert_eq!(s.live.room_tick(), Duration::from_millis(100));
        for (bad, why) in [("[live]\ntick-rate = 0\n", "1 to 1000"), ("[live]\nstats-interval = \"soon\"\n", "stats-interval"), ("[live]\nticks = 3\n", "ticks")] {
            std::fs::write(&path, bad).unwrap();
            let err = Settings::resolve(ServeArgs { config: Some(path.clone()), ..Default::default() }).unwrap_err();
            assert!(format!("{err:#}").contains(why), "{bad}: {err:#}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
