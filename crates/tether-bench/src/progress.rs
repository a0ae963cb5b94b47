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
            bar.set_style(ProgressStyle::with_template("{spinner} {msg}").expect("static template is valid"));
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
                bar.tick();
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

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}
