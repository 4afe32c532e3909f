//! Where the training loop writes besides the terminal, and the check that every one of those
//! paths can be written before the first step: a run that trains for an hour and then cannot
//! write its plot or its checkpoint has lost the hour (and, without a checkpoint, the model).

use super::backend::StepRecord;
use crate::error::{Error, Result};
use std::fs;
use std::path::{Path, PathBuf};

/// Where the loop writes besides the terminal.
#[derive(Debug, Clone, Default)]
pub struct Outputs {
    /// Checkpoint directory, rewritten (atomically) after every epoch and at the end.
    pub save: Option<PathBuf>,
    /// JSON Lines file, one record per step.
    pub metrics: Option<PathBuf>,
    /// PNG of loss and loss scale over the steps of this run. Needs the `plot` cargo feature (a
    /// default one): without it, [`Outputs::validate`] refuses a plot with
    /// [`Error::FeatureDisabled`].
    pub plot: Option<PathBuf>,
    /// Show a progress bar (off in tests and when output is not a terminal). Without the
    /// `progress` cargo feature (a default one) there is no bar to show, and this is ignored.
    pub progress_bar: bool,
    /// Print the per-epoch lines and the loss scaler's warnings.
    pub verbose: bool,
    /// When the loss scaler's warnings fire ([`super::overflow::WarnConfig`]).
    pub warn: super::overflow::WarnConfig,
    /// Replay every skipped step on the CPU reference and name the first op whose output was
    /// inf/NaN ([`super::locate`]); reads the step records back after every step (one
    /// synchronisation per step on a GPU).
    pub locate_overflow: bool,
    /// The training data's identity ([`super::data::MnistSplit::fingerprint`]), recorded in every
    /// checkpoint so that a resume on other data can say so.
    pub data: Option<std::collections::BTreeMap<String, String>>,
}

const OP: &str = "train::Outputs";

fn bad(detail: String) -> Error {
    Error::InvalidArgument { op: OP, detail }
}

impl Outputs {
    /// Checks, without writing anything that stays, that every output can be written:
    ///
    /// - `save`: a directory, or a path whose nearest existing ancestor is a directory (missing
    ///   levels are created at the first save); the directory that will hold the files must
    ///   accept a new file;
    /// - `metrics` and `plot`: not a directory, in a directory that exists and accepts a new file
    ///   (an existing file must open for writing); the plot's name must end in `.png`, the only
    ///   format it is drawn in;
    /// - `metrics` and `plot` are different files;
    /// - a plot needs the `plot` cargo feature.
    ///
    /// Writability is tested by creating and removing an empty file, since permission bits do
    /// not tell (ACLs, read-only mounts, root). [`super::trainer::run`] calls this before its
    /// first step.
    ///
    /// Errors: [`Error::InvalidArgument`] naming the output and the path, for a wrong kind of
    /// path or a missing directory; [`Error::Io`] when the operating system refuses the write;
    /// [`Error::FeatureDisabled`] for a plot in a build without the `plot` feature.
    pub fn validate(&self) -> Result<()> {
        if let Some(dir) = &self.save {
            check_dir(dir)?;
        }
        if let Some(p) = &self.metrics {
            check_file("metrics file", p)?;
        }
        if let Some(p) = &self.plot {
            let png = p
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| e.eq_ignore_ascii_case("png"));
            if !png {
                return Err(bad(format!(
                    "plot {}: the plot is a PNG, so the name must end in .png",
                    p.display()
                )));
            }
            check_file("plot", p)?;
        }
        if let (Some(m), Some(p)) = (&self.metrics, &self.plot) {
            if m == p {
                return Err(bad(format!(
                    "the metrics file and the plot are both {}; give them different names",
                    m.display()
                )));
            }
        }
        // Last, so that a build without plots still reports a bad path as one.
        match &self.plot {
            Some(p) if !cfg!(feature = "plot") => Err(no_plot(p)),
            _ => Ok(()),
        }
    }
}

/// The error for a plot asked of a build without the `plot` feature.
fn no_plot(path: &Path) -> Error {
    Error::FeatureDisabled {
        feature: "plot",
        what: format!("the plot {}", path.display()),
    }
}

/// Draws the run's plot at `path` with [`super::plot::loss_and_scale`].
#[cfg(feature = "plot")]
pub(crate) fn draw_plot(path: &Path, steps: &[(u64, StepRecord)]) -> Result<()> {
    super::plot::loss_and_scale(path, steps)
}

/// Without the `plot` feature: the error [`Outputs::validate`] gives before the first step.
#[cfg(not(feature = "plot"))]
pub(crate) fn draw_plot(path: &Path, _steps: &[(u64, StepRecord)]) -> Result<()> {
    Err(no_plot(path))
}

/// The directory a relative file name without one lives in.
fn parent_or_cwd(p: &Path) -> PathBuf {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn check_dir(dir: &Path) -> Result<()> {
    if dir.exists() {
        if !dir.is_dir() {
            return Err(bad(format!(
                "checkpoint directory {}: exists and is not a directory; give a directory path",
                dir.display()
            )));
        }
        return probe(dir, "checkpoint directory");
    }
    // Missing levels are created by the first save, so the first existing ancestor must be a
    // directory we can create entries in.
    let mut up = parent_or_cwd(dir);
    while !up.exists() {
        up = match up.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
    }
    if !up.is_dir() {
        return Err(bad(format!(
            "checkpoint directory {}: {} is not a directory, so it cannot be created",
            dir.display(),
            up.display()
        )));
    }
    probe(&up, "checkpoint directory")
}

fn check_file(what: &str, p: &Path) -> Result<()> {
    if p.is_dir() {
        return Err(bad(format!(
            "{what} {}: is a directory; give a file path inside it",
            p.display()
        )));
    }
    let dir = parent_or_cwd(p);
    if !dir.is_dir() {
        let why = if dir.exists() {
            "is not a directory"
        } else {
            "does not exist (create it first)"
        };
        return Err(bad(format!(
            "{what} {}: its directory {} {why}",
            p.display(),
            dir.display()
        )));
    }
    if p.exists() {
        // Appending opens for writing without truncating what is there.
        fs::OpenOptions::new()
            .append(true)
            .open(p)
            .map(drop)
            .map_err(|e| Error::io(p, &format!("checking that the {what} can be written:"), e))
    } else {
        probe(&dir, what)
    }
}

/// Creates and removes an empty file in `dir`.
fn probe(dir: &Path, what: &str) -> Result<()> {
    let name = format!(".ampkit-write-check-{}", std::process::id());
    let path = dir.join(name);
    fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .map_err(|e| {
            Error::io(
                dir,
                &format!("checking that the {what} can be written: cannot create a file in"),
                e,
            )
        })?;
    let _ = fs::remove_file(&path);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(save: Option<&Path>, metrics: Option<&Path>, plot: Option<&Path>) -> Outputs {
        Outputs {
            save: save.map(Path::to_path_buf),
            metrics: metrics.map(Path::to_path_buf),
            plot: plot.map(Path::to_path_buf),
            ..Outputs::default()
        }
    }

    #[test]
    fn good_paths_pass_and_leave_nothing_behind() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        let all = out(
            Some(&d.join("new/nested/ckpt")),
            Some(&d.join("m.jsonl")),
            Some(&d.join("loss.PNG")),
        );
        let checked = all.validate();
        if cfg!(feature = "plot") {
            checked.unwrap();
        } else {
            // Every path was checked first: only the missing feature is left.
            let plot_off = matches!(
                checked,
                Err(Error::FeatureDisabled {
                    feature: "plot",
                    ..
                })
            );
            assert!(plot_off, "{checked:?}");
        }
        std::fs::write(d.join("m.jsonl"), "kept").unwrap();
        out(Some(d), Some(&d.join("m.jsonl")), None)
            .validate()
            .unwrap();
        assert_eq!(std::fs::read_to_string(d.join("m.jsonl")).unwrap(), "kept");
        let left: Vec<_> = std::fs::read_dir(d).unwrap().collect();
        assert_eq!(left.len(), 1, "{left:?}");
    }

    #[test]
    fn wrong_paths_are_named() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        let file = d.join("a-file");
        std::fs::write(&file, "").unwrap();
        let png_dir = d.join("dir.png");
        std::fs::create_dir(&png_dir).unwrap();
        let cases = [
            (out(None, None, Some(d)), "must end in .png"),
            (out(None, None, Some(&png_dir)), "is a directory"),
            (out(None, Some(d), None), "is a directory"),
            (
                out(None, Some(&d.join("missing/m.jsonl")), None),
                "does not exist",
            ),
            (
                out(None, None, Some(&file.join("p.png"))),
                "is not a directory",
            ),
            (out(Some(&file), None, None), "is not a directory"),
            (
                out(Some(&file.join("sub")), None, None),
                "is not a directory",
            ),
            (
                out(None, Some(&d.join("same.png")), Some(&d.join("same.png"))),
                "different names",
            ),
        ];
        for (o, needle) in cases {
            let e = o.validate().unwrap_err();
            assert!(e.to_string().contains(needle), "{o:?}: {e}");
            assert!(matches!(e, Error::InvalidArgument { .. }), "{e:?}");
        }
    }

    #[cfg(not(feature = "plot"))]
    #[test]
    fn without_the_plot_feature_a_plot_is_a_typed_error() {
        let t = tempfile::tempdir().unwrap();
        let png = t.path().join("loss.png");
        let e = out(None, None, Some(&png)).validate().unwrap_err();
        assert!(
            matches!(&e, Error::FeatureDisabled { feature: "plot", what } if what.contains("loss.png")),
            "{e:?}"
        );
        assert!(e.to_string().contains("`plot` cargo feature"), "{e}");
        assert!(matches!(
            draw_plot(&png, &[]),
            Err(Error::FeatureDisabled { .. })
        ));
        assert!(!png.exists());
    }
}
