//! A progress line for work that takes a while (scanning a large data
//! directory): drawn on stderr once the work has run for a second, and only
//! when stderr is a terminal, so pipes, scripts and tests never see it.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How long work runs before its progress is shown.
const DELAY: Duration = Duration::from_secs(1);

/// The progress of a scan whose total is not known in advance.
pub(crate) struct Progress {
    bar: ProgressBar,
    started: Instant,
    /// Whether the line may ever be drawn (stderr is a terminal).
    enabled: bool,
    shown: bool,
}

impl Progress {
    /// Progress counted in `unit`s ("objects").
    pub(crate) fn new(unit: &str) -> Progress {
        let bar = ProgressBar::hidden();
        let template = format!("{{spinner}} {{pos}} {unit} scanned ({{elapsed}}) {{msg}}");
        bar.set_style(
            ProgressStyle::with_template(&template).unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        Progress { bar, started: Instant::now(), enabled: std::io::stderr().is_terminal(), shown: false }
    }

    /// Counts one more unit done; `what` says where the work is.
    pub(crate) fn tick(&mut self, what: &str) {
        self.bar.inc(1);
        if self.enabled && !self.shown && self.started.elapsed() >= DELAY {
            self.bar.set_draw_target(ProgressDrawTarget::stderr());
            self.bar.enable_steady_tick(Duration::from_millis(120));
            self.shown = true;
        }
        if self.shown {
            self.bar.set_message(what.to_string());
        }
    }

    /// Runs `f` (which prints) with the line cleared, and redraws it after.
    pub(crate) fn suspend<R>(&self, f: impl FnOnce() -> R) -> R {
        self.bar.suspend(f)
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
    }
}
