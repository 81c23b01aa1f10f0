//! What the person sees while the demo works.

use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// What the person sees while the demo works: on a terminal a progress bar
/// per phase (stderr) with the story's lines above them; otherwise the
/// story's lines alone; with `--json` nothing.
pub(super) struct Story {
    pub(super) multi: MultiProgress,
    lines: bool,
}

impl Story {
    pub(super) fn new(json: bool) -> Story {
        // `stderr()` hides itself when stderr is not a terminal.
        let target = if json {
            ProgressDrawTarget::hidden()
        } else {
            ProgressDrawTarget::stderr()
        };
        let multi = MultiProgress::with_draw_target(target);
        let lines = !json && multi.is_hidden();
        Story { multi, lines }
    }

    /// A line of the story.
    pub(super) fn say(&self, line: &str) {
        if self.lines {
            eprintln!("{line}");
        } else {
            // Above the bars on a terminal; nothing when hidden (--json).
            let _ = self.multi.println(line);
        }
    }

    /// A line only the plain story needs: on a terminal a bar says it.
    pub(super) fn note(&self, line: &str) {
        if self.lines {
            eprintln!("{line}");
        }
    }

    /// A spinner with a message and the time it has been running.
    pub(super) fn spinner(&self, msg: impl Into<String>) -> ProgressBar {
        self.add(
            ProgressBar::new_spinner(),
            "{spinner:.cyan} {msg} {elapsed:.dim}",
            msg,
        )
    }

    /// A bar counting `len` steps.
    pub(super) fn bar(&self, len: u64, msg: impl Into<String>) -> ProgressBar {
        self.add(
            ProgressBar::new(len),
            "{spinner:.cyan} {msg} [{bar:20.cyan/blue}] {pos}/{len} {elapsed:.dim}",
            msg,
        )
    }

    fn add(&self, pb: ProgressBar, template: &str, msg: impl Into<String>) -> ProgressBar {
        let pb = self.multi.add(pb);
        if let Ok(style) = ProgressStyle::with_template(template) {
            pb.set_style(style);
        }
        pb.set_message(msg.into());
        if !self.multi.is_hidden() {
            pb.enable_steady_tick(Duration::from_millis(100));
        }
        pb
    }
}
