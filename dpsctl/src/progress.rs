//! An import's progress on standard error: a bar when it is a terminal, plain lines otherwise
//! (a log, a CI job, a pipe), so a script's output never fills with redraws.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::Write;

/// Where progress goes.
pub enum Progress {
    /// A bar redrawn in place.
    Bar(ProgressBar),
    /// One line per batch.
    Lines {
        /// Rows in the file.
        total: u64,
    },
}

impl Progress {
    /// A bar when `terminal`, else plain lines, for `total` rows.
    pub fn start(total: u64, terminal: bool) -> Self {
        if !terminal {
            return Progress::Lines { total };
        }
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        let style = ProgressStyle::with_template("[{bar:40}] {pos}/{len} rows {msg} ({elapsed})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("#>-");
        bar.set_style(style);
        bar.tick();
        Progress::Bar(bar)
    }

    /// `done` rows of the file have their results; `summary` counts them.
    pub fn advance(&self, done: u64, summary: &str) {
        match self {
            Progress::Bar(bar) => {
                bar.set_position(done);
                bar.set_message(summary.to_owned());
            }
            Progress::Lines { total } => {
                let _ = writeln!(
                    std::io::stderr(),
                    "import: {done}/{total} rows done ({summary})"
                );
            }
        }
    }

    /// The import is over: the bar stays on screen as it ended.
    pub fn finish(&self) {
        if let Progress::Bar(bar) = self {
            bar.finish();
        }
    }
}
