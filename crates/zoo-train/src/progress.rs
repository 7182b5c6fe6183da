//! Progress display: an indicatif bar on a terminal, plain lines otherwise.

use crate::metrics::Running;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::{Deserialize, Serialize};
use std::io::IsTerminal;
use std::time::Instant;

/// How training reports progress within an epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ProgressMode {
    /// A bar when stderr is a terminal, plain lines otherwise.
    #[default]
    Auto,
    /// Always the bar.
    Bar,
    /// Plain lines on stdout, about ten per epoch.
    Plain,
    /// Nothing within epochs (the epoch summary is still printed unless `quiet`).
    Off,
}

/// The progress of one epoch.
pub(crate) struct EpochProgress {
    bar: Option<ProgressBar>,
    plain_every: Option<usize>,
    label: String,
    steps: usize,
    start: Instant,
    item_name: String,
}

impl EpochProgress {
    pub(crate) fn new(
        mode: ProgressMode,
        epoch: usize,
        epochs: usize,
        steps: usize,
        item_name: &str,
    ) -> Self {
        let mode = match mode {
            ProgressMode::Auto if std::io::stderr().is_terminal() => ProgressMode::Bar,
            ProgressMode::Auto => ProgressMode::Plain,
            m => m,
        };
        let label = format!("epoch {epoch}/{epochs}");
        let bar = (mode == ProgressMode::Bar).then(|| {
            let bar = ProgressBar::with_draw_target(Some(steps as u64), ProgressDrawTarget::stderr());
            let style =
                ProgressStyle::with_template("{prefix} [{bar:30.cyan/blue}] {pos}/{len} {msg} ETA {eta}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> ");
            bar.set_style(style);
            bar.set_prefix(label.clone());
            bar
        });
        Self {
            bar,
            plain_every: (mode == ProgressMode::Plain).then(|| steps.div_ceil(10).max(1)),
            label,
            steps,
            start: Instant::now(),
            item_name: item_name.to_string(),
        }
    }

    /// Reports that `step` (1-based) steps of the epoch are done.
    pub(crate) fn update(&self, step: usize, running: &Running) {
        let elapsed = self.start.elapsed().as_secs_f64().max(1e-9);
        let rate = running.items() as f64 / elapsed;
        let acc = running
            .accuracy()
            .map(|a| format!(" acc {:.2}%", a * 100.0))
            .unwrap_or_default();
        let msg = format!("loss {:.4}{acc} {rate:.0} {}/s", running.loss(), self.item_name);
        if let Some(bar) = &self.bar {
            bar.set_position(step as u64);
            bar.set_message(msg);
        } else if let Some(every) = self.plain_every {
            if step.is_multiple_of(every) && step < self.steps {
                let eta = elapsed / step as f64 * (self.steps - step) as f64;
                println!("{} step {step}/{} {msg} ETA {eta:.0}s", self.label, self.steps);
            }
        }
    }

    pub(crate) fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
