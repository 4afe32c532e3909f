//! The per-epoch progress bar of [`super::trainer::run`] (`Outputs::progress_bar`). With the
//! `progress` cargo feature it is indicatif's bar on stderr; without it the loop shows none, so
//! a library built with `default-features = false` does not compile indicatif for a bar it
//! would not show (the loop runs the same either way).

use crate::error::Result;

/// One epoch's bar: steps done out of the epoch's steps, and the latest loss and scale.
pub(crate) struct EpochBar {
    #[cfg(feature = "progress")]
    bar: indicatif::ProgressBar,
}

#[cfg(feature = "progress")]
impl EpochBar {
    /// A bar of `len` steps at `pos`, labelled `epoch <prefix>`; hidden unless `show`.
    pub(crate) fn new(show: bool, len: u64, prefix: String, pos: u64) -> Result<EpochBar> {
        use indicatif::{ProgressBar, ProgressStyle};
        if !show {
            return Ok(EpochBar {
                bar: ProgressBar::hidden(),
            });
        }
        let bar = ProgressBar::new(len);
        bar.set_style(
            ProgressStyle::with_template("epoch {prefix} {bar:30} {pos}/{len} {msg}").map_err(
                |e| crate::error::Error::InvalidArgument {
                    op: "train::run",
                    detail: e.to_string(),
                },
            )?,
        );
        bar.set_prefix(prefix);
        bar.set_position(pos);
        Ok(EpochBar { bar })
    }

    /// The text after the count (the latest loss and scale).
    pub(crate) fn set_message(&self, msg: String) {
        self.bar.set_message(msg);
    }

    /// Steps done in the epoch.
    pub(crate) fn set_position(&self, pos: u64) {
        self.bar.set_position(pos);
    }

    /// Removes the bar at the end of the epoch (the epoch's summary line replaces it).
    pub(crate) fn finish_and_clear(&self) {
        self.bar.finish_and_clear();
    }
}

/// Without the `progress` feature there is no bar: building one succeeds and updates do nothing.
#[cfg(not(feature = "progress"))]
impl EpochBar {
    /// No bar, whatever `show` says.
    pub(crate) fn new(_show: bool, _len: u64, _prefix: String, _pos: u64) -> Result<EpochBar> {
        Ok(EpochBar {})
    }

    /// Nothing to update.
    pub(crate) fn set_message(&self, _msg: String) {}

    /// Nothing to update.
    pub(crate) fn set_position(&self, _pos: u64) {}

    /// Nothing to clear.
    pub(crate) fn finish_and_clear(&self) {}
}
