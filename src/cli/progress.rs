//! Terminal progress bars (indicatif) behind the library's `Progress` trait.

use indicatif::{ProgressBar, ProgressStyle};
use rbdelta::progress::{NoProgress, Progress};

struct Bar {
    bar: ProgressBar,
    label: String,
}

/// A bar on a terminal, nothing otherwise.
pub fn for_terminal(enabled: bool, label: &str) -> Box<dyn Progress> {
    if !enabled {
        return Box::new(NoProgress);
    }
    Box::new(Bar {
        bar: ProgressBar::hidden(),
        label: label.to_string(),
    })
}

impl Progress for Bar {
    fn begin(&self, phase: &str, total: u64) {
        // Style, prefix and message first: the first frame is drawn as soon
        // as the bar gets a visible target.
        self.bar.set_style(
            ProgressStyle::with_template(
                "{prefix:>12} {msg:8} [{bar:30}] {binary_bytes:>10}/{binary_total_bytes:10} {binary_bytes_per_sec:>12} eta {eta}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        self.bar.set_prefix(self.label.clone());
        self.bar.set_message(phase.to_string());
        self.bar.set_length(total);
        self.bar.set_position(0);
        self.bar
            .set_draw_target(indicatif::ProgressDrawTarget::stderr());
    }
    fn advance(&self, bytes: u64) {
        self.bar.inc(bytes);
    }
    fn end(&self) {
        self.bar.finish();
    }
}
