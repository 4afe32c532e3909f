//! What a run is asked for ([`Options`]: warm-ups, timed runs, the `--only` filter) and how its
//! rows are gathered ([`Collector`]): the filter applied, a failed workload turned into an ERROR
//! row, progress printed, and the ceilings every later row is measured against.

use super::report::{Ceilings, Kind, Meta, Report, Row};
use ampkit::Result;

/// What `ampkit bench` runs and how long.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// 3 warm-up + 10 timed calls per row instead of 10 + 50.
    pub quick: bool,
    /// Keep only rows whose `"kind name shape"` contains this (case-insensitive); the ceilings
    /// always run.
    pub only: Option<String>,
    /// Print each row to stderr as it completes.
    pub progress: bool,
}

impl Options {
    /// Untimed calls before the timed ones.
    pub fn warmup(&self) -> usize {
        if self.quick {
            3
        } else {
            10
        }
    }

    /// Timed calls per row (the median is reported).
    pub fn runs(&self) -> usize {
        if self.quick {
            10
        } else {
            50
        }
    }

    /// Alternating rounds per side of a GEMM row (ampkit, cuBLAS, ampkit, …); each round times
    /// `runs() / gemm_rounds()` calls.
    pub fn gemm_rounds(&self) -> usize {
        if self.quick {
            2
        } else {
            5
        }
    }

    /// The `runs:` line above the table: warm-ups and timed runs, then what is particular to
    /// the device.
    pub fn setup_line(&self, device_specific: &str) -> String {
        format!(
            "{} warm-ups + {} timed runs, median; {device_specific}",
            self.warmup(),
            self.runs()
        )
    }
}

/// Whether a row is kept by `--only`: its `"kind name shape"` contains `only`,
/// case-insensitively (no filter keeps everything).
pub fn selected(only: Option<&str>, kind: &str, name: &str, shape: &str) -> bool {
    match only {
        None => true,
        Some(s) => format!("{kind} {name} {shape}")
            .to_lowercase()
            .contains(&s.to_lowercase()),
    }
}

/// Gathers rows as they run: applies `--only`, turns a failed workload into an ERROR row,
/// prints progress, and holds the ceilings the rows are measured against.
pub struct Collector {
    only: Option<String>,
    progress: bool,
    /// The rows so far, in the order they ran.
    pub rows: Vec<Row>,
    /// The ceilings measured so far.
    pub ceilings: Ceilings,
    /// Lines for under the table.
    pub notes: Vec<String>,
}

impl Collector {
    /// An empty collection for a run with `opts`.
    pub fn new(opts: &Options) -> Collector {
        Collector {
            only: opts.only.clone(),
            progress: opts.progress,
            rows: Vec::new(),
            ceilings: Ceilings::default(),
            notes: Vec::new(),
        }
    }

    /// Runs `body` when the row is selected (always when `force`) and records its row, or an
    /// ERROR row with the error's message; returns the row's rate if it has one.
    pub fn row(
        &mut self,
        kind: Kind,
        name: &str,
        shape: &str,
        force: bool,
        body: impl FnOnce(&Ceilings) -> Result<Row>,
    ) -> Option<f64> {
        if !force && !selected(self.only.as_deref(), kind.as_str(), name, shape) {
            return None;
        }
        let row = body(&self.ceilings).unwrap_or_else(|e| Row::failed(kind, name, shape, &e));
        if self.progress {
            let cells: Vec<String> = row.cells().into_iter().filter(|c| !c.is_empty()).collect();
            eprintln!("{}", cells.join(" | "));
        }
        let rate = row.rate.filter(|_| row.error.is_none());
        self.rows.push(row);
        rate
    }

    /// The report of the rows gathered, under `meta`.
    pub fn into_report(self, meta: Meta) -> Report {
        Report {
            meta,
            ceilings: self.ceilings,
            rows: self.rows,
            notes: self.notes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selection_is_case_insensitive_over_kind_name_shape() {
        assert!(selected(None, "gemm", "8192^3", ""));
        assert!(selected(Some("GEMM"), "gemm", "8192^3", ""));
        assert!(!selected(Some("softmax"), "gemm", "8192^3", ""));
        assert!(selected(Some("384x"), "mem", "", "16384x1024"));
    }
}
