//! ampkit's one error type. Every fallible public function returns [`Result`]; library code never
//! panics on bad input, and each message says what to do about it.

use cudarc::driver::DriverError;

/// Result alias used throughout ampkit.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in ampkit.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No usable CUDA device: no driver library, no GPU, or the requested ordinal does not exist.
    #[error(
        "no CUDA device: {reason}. Use Device::cpu() (or Device::auto(), which falls back to the \
         CPU) to run without a GPU"
    )]
    NoCudaDevice {
        /// Why no device could be opened.
        reason: String,
    },

    /// A CUDA driver call failed.
    #[error("CUDA driver error while {context}: {source}")]
    Driver {
        /// What ampkit was doing.
        context: String,
        /// The driver's error code.
        #[source]
        source: DriverError,
    },

    /// The driver rejected a kernel module's PTX or a kernel is missing from it.
    #[error("loading kernel module `{module}` failed: {source}. {hint}")]
    ModuleLoad {
        /// Module name (the `kernels/<name>.cu` stem).
        module: &'static str,
        /// The driver's error code.
        #[source]
        source: DriverError,
        /// What to try.
        hint: String,
    },

    /// A kernel failed to launch, or failed while running (reported at the next check).
    #[error("kernel `{kernel}` failed: {source}")]
    Launch {
        /// Kernel entry point name.
        kernel: &'static str,
        /// The driver's error code.
        #[source]
        source: DriverError,
    },

    /// Operand lengths or shapes do not agree.
    #[error("{op}: shape mismatch: {detail}")]
    ShapeMismatch {
        /// The operation that was called.
        op: &'static str,
        /// Which sizes disagree.
        detail: String,
    },

    /// An argument is outside what the operation accepts.
    #[error("{op}: invalid argument: {detail}")]
    InvalidArgument {
        /// The operation that was called.
        op: &'static str,
        /// What is wrong and what is accepted.
        detail: String,
    },

    /// A file could not be read or written.
    #[error("{context} {path}: {source}")]
    Io {
        /// The file or directory.
        path: String,
        /// What ampkit was doing, e.g. "writing the checkpoint file".
        context: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },

    /// A checkpoint is missing, truncated, corrupted, or does not match the model.
    #[error("checkpoint {path}: {detail}")]
    Checkpoint {
        /// The checkpoint directory or file.
        path: String,
        /// What is wrong and what to do.
        detail: String,
    },

    /// A directory holds no committed checkpoint yet: it does not exist, nothing was saved
    /// there, or the first save into it was interrupted before it committed.
    #[error("no checkpoint yet in {path}: {detail}")]
    NoCheckpoint {
        /// The checkpoint directory.
        path: String,
        /// What the directory holds instead.
        detail: String,
    },

    /// A training data file or directory is missing, malformed, or does not fit the model.
    #[error(
        "data `{path}`: {detail}. ampkit reads the four MNIST IDX files (raw or .gz) from \
         --data DIR; without --data it uses the 8,000/2,000 subset built into it"
    )]
    Data {
        /// The file or directory at fault.
        path: String,
        /// What is wrong with it and, where there is one, the specific fix.
        detail: String,
    },

    /// Training stopped because the run can no longer learn: the loss scale collapsed, the loss
    /// stayed inf/NaN, or every step was skipped for too long. The run is declared dead when its
    /// step records show any of:
    /// 1. the dynamic loss scale is not a normal f32 (0, subnormal, inf or NaN);
    /// 2. 25 consecutive skipped steps with an inf/NaN loss (the weights, unchanged by a skip,
    ///    already give non-finite outputs on 25 different batches);
    /// 3. more consecutive skipped steps than 256 under a static scale or none, or than 256
    ///    plus the backoffs that bring the initial dynamic scale down to 1 (272 from 65536).
    ///
    /// They are read from the step records the loop already fetches (every 25 steps and at each
    /// epoch's end), so checking them costs no extra device synchronisation, and a dead run is
    /// found at most 25 steps late. A state that meets one is never written as a checkpoint:
    /// the last checkpoint saved before it is intact.
    #[error("training diverged at step {step}: {reason}; {hint}")]
    Diverged {
        /// The global step (0-based) whose record met the criterion.
        step: u64,
        /// Which criterion, with the numbers that met it.
        reason: String,
        /// What to change.
        hint: String,
    },

    /// A model, batch or data set needs more memory than the host or the GPU has, found before
    /// anything was allocated for it.
    #[error(
        "{what} needs {} but {device} has {} available; {hint}",
        bytes(*.needed),
        bytes(*.available)
    )]
    InsufficientMemory {
        /// What the memory is for, e.g. "training 784→3000000→10 at batch 64".
        what: String,
        /// Where: "the host" or the GPU, e.g. "cuda:0 (NVIDIA H100 80GB HBM3)".
        device: String,
        /// Bytes needed (`u64::MAX` when the size overflows).
        needed: u64,
        /// Bytes available.
        available: u64,
        /// What to change.
        hint: String,
    },

    /// The call needs a cargo feature this build of ampkit was compiled without (a training
    /// plot without `plot`, say). Found before any work is done.
    #[error(
        "{what} needs ampkit's `{feature}` cargo feature, which this build was compiled without: \
         enable it (`ampkit = {{ version = \"...\", features = [\"{feature}\"] }}`; the \
         default features include it)"
    )]
    FeatureDisabled {
        /// The cargo feature, e.g. `plot`.
        feature: &'static str,
        /// What asked for it, e.g. "the plot loss.png".
        what: String,
    },
}

/// A byte count for messages: GiB, MiB or KiB with two decimals, or "more than
/// 2^64 bytes" for a size that overflowed.
pub(crate) fn bytes(n: u64) -> String {
    const KIB: f64 = 1024.0;
    let v = n as f64;
    if n == u64::MAX {
        "more than 2^64 bytes".to_string()
    } else if v >= KIB * KIB * KIB {
        format!("{:.2} GiB", v / (KIB * KIB * KIB))
    } else if v >= KIB * KIB {
        format!("{:.2} MiB", v / (KIB * KIB))
    } else {
        format!("{:.2} KiB", v / KIB)
    }
}

impl Error {
    /// An I/O error on `path` while doing `context`.
    pub fn io(path: &std::path::Path, context: &str, source: std::io::Error) -> Error {
        Error::Io {
            path: path.display().to_string(),
            context: context.to_string(),
            source,
        }
    }

    /// Wraps a driver error with what ampkit was doing when it happened.
    pub fn driver(context: impl Into<String>) -> impl FnOnce(DriverError) -> Error {
        let context = context.into();
        move |source| Error::Driver { context, source }
    }
}

/// Fails with [`Error::ShapeMismatch`] unless source and destination have the same length.
pub(crate) fn same_len(op: &'static str, src: usize, dst: usize) -> Result<()> {
    if src != dst {
        return Err(Error::ShapeMismatch {
            op,
            detail: format!("source has {src} elements, destination {dst}"),
        });
    }
    Ok(())
}

/// Fails with [`Error::ShapeMismatch`] unless `name` has `want` elements (`how` says where `want`
/// comes from, e.g. `"rows·cols = 4·3"`).
pub(crate) fn expect_len(
    op: &'static str,
    name: &str,
    got: usize,
    want: usize,
    how: &str,
) -> Result<()> {
    if got != want {
        return Err(Error::ShapeMismatch {
            op,
            detail: format!("{name} has {got} elements, expected {how} = {want}"),
        });
    }
    Ok(())
}

/// `rows·cols` for a row-major matrix whose rows must not be empty: [`Error::InvalidArgument`]
/// when `cols` (called `what` in the message) is 0 or the product overflows.
pub(crate) fn matrix_len(op: &'static str, rows: usize, cols: usize, what: &str) -> Result<usize> {
    if cols == 0 {
        return Err(Error::InvalidArgument {
            op,
            detail: format!("{what} is 0; it must be ≥ 1"),
        });
    }
    rows.checked_mul(cols)
        .ok_or_else(|| Error::InvalidArgument {
            op,
            detail: format!("rows·{what} = {rows}·{cols} overflows usize"),
        })
}
