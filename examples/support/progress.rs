//! A progress bar for the examples' long loops: drawn on stderr once the
//! work has run for a second, and only when stderr is a terminal, so that
//! output piped to a file or read by a script stays clean.
//!
//! Included by the examples with `#[path = "support/progress.rs"] mod progress;`.

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How long work runs before its progress is shown.
const DELAY: Duration = Duration::from_secs(1);

/// The progress of `len` steps of work; clones count into the same bar
/// (one per task). The bar is cleared when the last clone is dropped.
#[derive(Clone)]
pub(crate) struct Progress {
    bar: ProgressBar,
    started: Instant,
    /// Whether the bar may ever be drawn (stderr is a terminal).
    enabled: bool,
    shown: Arc<AtomicBool>,
    _clear: Arc<Clear>,
}

/// Clears the bar when the last clone of a [`Progress`] goes.
struct Clear(ProgressBar);

impl Drop for Clear {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}

impl Progress {
    /// A bar of `len` steps, described by `what` ("activating objects").
    pub(crate) fn new(len: u64, what: &str) -> Progress {
        let bar = ProgressBar::hidden();
        bar.set_length(len);
        // A wide bar fills what the terminal's width leaves: one line, never wrapped.
        let template = format!("{what} [{{wide_bar}}] {{human_pos}}/{{human_len}} ({{elapsed}})");
        bar.set_style(
            ProgressStyle::with_template(&template).unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        Progress {
            _clear: Arc::new(Clear(bar.clone())),
            bar,
            started: Instant::now(),
            enabled: std::io::stderr().is_terminal(),
            shown: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Counts `steps` more done. Costs a clock read: in a loop that is
    /// measured, count in batches.
    pub(crate) fn inc(&self, steps: u64) {
        self.bar.inc(steps);
        if self.enabled
            && !self.shown.load(Ordering::Relaxed)
            && self.started.elapsed() >= DELAY
            && !self.shown.swap(true, Ordering::Relaxed)
        {
            self.bar.set_draw_target(ProgressDrawTarget::stderr());
        }
    }
}
