//! The live status line: drawn on stderr with indicatif when both stdout and
//! stderr are terminals, absent otherwise (pipes, CI, `--json` consumers).

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// How often the line is redrawn; the text is only formatted this often.
const REFRESH: Duration = Duration::from_millis(250);

/// A rate-limited, possibly silent, one-line status display.
pub(crate) struct Progress {
    bar: Option<ProgressBar>,
    last: Instant,
}

impl Progress {
    /// A status line, shown only on a terminal (and never when `quiet`).
    pub(crate) fn new(quiet: bool) -> Self {
        let visible = !quiet && std::io::stdout().is_terminal() && std::io::stderr().is_terminal();
        let bar = visible.then(|| {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            bar.set_style(ProgressStyle::with_template("{msg}").expect("static template is valid"));
            bar
        });
        Progress { bar, last: Instant::now() - REFRESH }
    }

    /// Redraw with the text from `message`, at most every 250 ms; `message`
    /// is not called in between (or at all when silent).
    pub(crate) fn update(&mut self, message: impl FnOnce() -> String) {
        if let Some(bar) = &self.bar {
            if self.last.elapsed() >= REFRESH {
                self.last = Instant::now();
                bar.set_message(message());
            }
        }
    }

    /// Remove the line.
    pub(crate) fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

/// "warming up 0.4/1.0s" or "measuring 2.5/10.0s", from times in ns since
/// the run began: warmup runs from `warmup_from` to `measure_from`.
pub(crate) fn phase_label(now: u64, warmup_from: u64, measure_from: u64, measure_until: u64) -> String {
    let secs = |ns: u64| ns as f64 / 1e9;
    if now < measure_from {
        format!("warming up {:.1}/{:.1}s", secs(now.saturating_sub(warmup_from)), secs(measure_from - warmup_from))
    } else {
        format!("measuring {:.1}/{:.1}s", secs(now.min(measure_until) - measure_from), secs(measure_until - measure_from))
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn phase_labels() {
        assert_eq!(super::phase_label(1_400_000_000, 1_000_000_000, 2_000_000_000, 12_000_000_000), "warming up 0.4/1.0s");
        assert_eq!(super::phase_label(4_500_000_000, 1_000_000_000, 2_000_000_000, 12_000_000_000), "measuring 2.5/10.0s");
    }
}
