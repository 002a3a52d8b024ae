//! What `wsfs gc` draws on a terminal while it works on a store: a spinner naming the step
//! (waiting for persists, listing, marking with counts), then a bar over the deletions. Off
//! without a terminal and with `--json`: a log gets the summary alone.

use indicatif::{ProgressBar, ProgressStyle};
use std::borrow::Cow;
use std::time::Duration;

/// The progress display of one store's gc; cleared when dropped.
pub struct GcProgress {
    bar: Option<ProgressBar>,
}

impl GcProgress {
    /// A spinner for `store`, or nothing when `on` is false.
    pub fn new(on: bool, store: &str) -> GcProgress {
        let bar = on.then(|| {
            let b = ProgressBar::new_spinner()
                .with_style(
                    ProgressStyle::with_template("{spinner} gc {prefix}: {msg} ({elapsed})")
                        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                )
                .with_prefix(store.to_string())
                .with_message("starting");
            b.enable_steady_tick(Duration::from_millis(120));
            b
        });
        GcProgress { bar }
    }

    /// The step under way.
    pub fn step(&self, msg: impl Into<Cow<'static, str>>) {
        if let Some(b) = &self.bar {
            b.set_message(msg);
        }
    }

    /// Marking: manifests read so far and the chunks they reach.
    pub fn marked(&self, manifests: usize, chunks: usize) {
        if self.bar.is_some() {
            self.step(format!(
                "marking: {manifests} manifests read, {chunks} chunks reached"
            ));
        }
    }

    /// Turns the spinner into a bar over `total` deletions, and returns it to count them.
    pub fn deleting(&self, total: u64) -> Option<&ProgressBar> {
        let b = self.bar.as_ref()?;
        b.disable_steady_tick();
        b.set_style(
            ProgressStyle::with_template("{bar:40} {pos}/{len} deleted on {prefix}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        b.set_length(total);
        b.set_position(0);
        Some(b)
    }
}

impl Drop for GcProgress {
    fn drop(&mut self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}
