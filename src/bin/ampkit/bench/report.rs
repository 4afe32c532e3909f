//! The benchmark report: rows, ceilings and run metadata; the markdown table and the JSON file,
//! in the formats `bench/pytorch_reference.py` writes (same columns, number formats and keys, with
//! `ampkit` in place of `torch`).

use ampkit::{Error, Result};
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::path::Path;

/// The table's columns, in order.
pub const COLUMNS: [&str; 9] = [
    "kind",
    "name",
    "shape",
    "median_us",
    "rate",
    "unit",
    "% ceiling",
    "vs cuBLAS",
    "% copy same bytes",
];

/// How many columns the table has.
const NCOL: usize = COLUMNS.len();

/// Right-aligned (numeric) columns.
const RIGHT: [bool; NCOL] = [false, false, false, true, true, false, true, true, true];

/// What a row measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A ceiling measured in the same run (device copy, cuBLAS 8192³; host copy on the CPU).
    Ceiling,
    /// A GEMM, ampkit's beside cuBLAS's on the same operands.
    Gemm,
    /// A memory-bound kernel, in GB/s.
    Mem,
    /// A whole training step.
    Train,
}

impl Kind {
    /// The lowercase name the table and the JSON use.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Ceiling => "ceiling",
            Kind::Gemm => "gemm",
            Kind::Mem => "mem",
            Kind::Train => "train",
        }
    }
}

/// One line of the table.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// What the row measures.
    pub kind: Kind,
    /// The workload, e.g. `softmax fwd` (the PyTorch script's name where it runs the same one).
    pub name: String,
    /// Its size, e.g. `16384x1024`.
    pub shape: String,
    /// Median time per call, µs (`None` for a failed row).
    pub median_us: Option<f64>,
    /// Achieved rate in [`Row::unit`] (`None` where only the time is meaningful).
    pub rate: Option<f64>,
    /// `GB/s`, `TFLOP/s` or `GFLOP/s` (empty when there is no rate).
    pub unit: String,
    /// The rate as a percentage of the matching ceiling (copy bandwidth for `mem`, cuBLAS 8192³
    /// for `gemm` and `train` on the GPU); see also [`Row::pct_copy_same_bytes`].
    pub pct_ceiling: Option<f64>,
    /// GEMM rows: cuBLAS's time over ampkit's at the same shape (> 1 means faster than cuBLAS).
    pub vs_cublas: Option<f64>,
    /// Memory-bound rows with a byte count: the rate as a percentage of a copy that moves the
    /// same bytes (half read, half written), timed the same way in the same run —
    /// `100 · rate / copy GB/s`. Unlike [`Row::pct_ceiling`] (against a 1 GiB copy), this is
    /// what a kernel of this size could reach if it were a copy: small copies do not reach the
    /// 1 GiB rate (launch ramp and tail). `None` for other rows, rows without bytes, and where
    /// the copy could not be measured.
    pub pct_copy_same_bytes: Option<f64>,
    /// GEMM rows: the planner's choice, `tile/splits` (e.g. `h256/1`).
    pub plan: Option<String>,
    /// Floating-point operations per call (exact for GEMMs and steps, approximate for
    /// memory-bound kernels), for the roofline.
    pub flops: Option<f64>,
    /// Bytes read + written per call, for the roofline.
    pub bytes: Option<f64>,
    /// Why the row failed, if it did.
    pub error: Option<String>,
}

impl Row {
    /// A measured row; `pct_ceiling = 100 · rate / ceiling` when both are known and finite.
    pub fn measured(
        kind: Kind,
        name: &str,
        shape: &str,
        median_us: f64,
        rate: Option<f64>,
        unit: &str,
        ceiling: Option<f64>,
    ) -> Row {
        let pct = match (rate, ceiling) {
            (Some(r), Some(c)) if c > 0.0 && r.is_finite() && c.is_finite() => Some(100.0 * r / c),
            _ => None,
        };
        Row {
            kind,
            name: name.to_string(),
            shape: shape.to_string(),
            median_us: Some(median_us),
            rate,
            unit: unit.to_string(),
            pct_ceiling: pct,
            vs_cublas: None,
            pct_copy_same_bytes: None,
            plan: None,
            flops: None,
            bytes: None,
            error: None,
        }
    }

    /// A row whose workload failed: the message (one line, `|` replaced, at most 200
    /// characters) goes in [`Row::error`].
    pub fn failed(kind: Kind, name: &str, shape: &str, error: &dyn std::fmt::Display) -> Row {
        let msg: String = error
            .to_string()
            .replace(['\n', '\r'], " ")
            .replace('|', "/")
            .chars()
            .take(200)
            .collect();
        Row {
            median_us: None,
            unit: String::new(),
            error: Some(msg),
            ..Row::measured(kind, name, shape, 0.0, None, "", None)
        }
    }

    /// Sets the FLOPs and bytes per call (for the roofline).
    pub fn with_work(mut self, flops: f64, bytes: f64) -> Row {
        self.flops = Some(flops);
        self.bytes = Some(bytes);
        self
    }

    /// Sets [`Row::pct_copy_same_bytes`] from the GB/s of a copy of the row's bytes:
    /// `100 · rate / copy_gbs` when both are known, finite and the copy's is positive, else
    /// `None`.
    pub fn with_copy_same_bytes(mut self, copy_gbs: Option<f64>) -> Row {
        self.pct_copy_same_bytes = match (self.rate, copy_gbs) {
            (Some(r), Some(c)) if c > 0.0 && r.is_finite() && c.is_finite() => Some(100.0 * r / c),
            _ => None,
        };
        self
    }

    /// The cells of the table ([`COLUMNS`]), formatted as the PyTorch script formats them.
    pub fn cells(&self) -> [String; NCOL] {
        let kind = self.kind.as_str().to_string();
        let (name, shape) = (self.name.clone(), self.shape.clone());
        if let Some(e) = &self.error {
            let short: String = e.chars().take(60).collect();
            return [
                kind,
                name,
                shape,
                "ERROR".into(),
                short,
                String::new(),
                String::new(),
                String::new(),
                String::new(),
            ];
        }
        let opt = |v: Option<f64>, f: &dyn Fn(f64) -> String| v.map_or(String::new(), f);
        [
            kind,
            name,
            shape,
            opt(self.median_us, &|v| format!("{v:.1}")),
            opt(self.rate, &|r| {
                if r >= 1.0 {
                    format!("{r:.1}")
                } else {
                    format!("{r:.4}")
                }
            }),
            self.unit.clone(),
            opt(self.pct_ceiling, &|p| format!("{p:.1}%")),
            opt(self.vs_cublas, &|v| format!("{v:.2}x")),
            opt(self.pct_copy_same_bytes, &|p| format!("{p:.1}%")),
        ]
    }
}

/// The markdown table of `rows` with [`COLUMNS`], padded to aligned columns, numeric columns
/// right-aligned.
pub fn markdown_table(rows: &[Row]) -> String {
    let cells: Vec<[String; NCOL]> = rows.iter().map(Row::cells).collect();
    let width = |i: usize| {
        cells
            .iter()
            .map(|c| c[i].chars().count())
            .chain([COLUMNS[i].chars().count()])
            .max()
            .unwrap_or(0)
    };
    let widths: Vec<usize> = (0..COLUMNS.len()).map(width).collect();
    let pad = |v: &str, w: usize, right: bool| {
        let fill = " ".repeat(w.saturating_sub(v.chars().count()));
        if right {
            format!("{fill}{v}")
        } else {
            format!("{v}{fill}")
        }
    };
    let line = |vals: &[String], right: &[bool]| {
        let parts: Vec<String> = (0..vals.len())
            .map(|i| pad(&vals[i], widths[i], right[i]))
            .collect();
        format!("| {} |", parts.join(" | "))
    };
    let head: Vec<String> = COLUMNS.iter().map(|s| s.to_string()).collect();
    let mut out = line(&head, &[false; NCOL]);
    out.push('\n');
    let seps: Vec<String> = widths
        .iter()
        .zip(RIGHT)
        .map(|(&w, r)| format!("{}{}", "-".repeat(w + 1), if r { ":" } else { "-" }))
        .collect();
    out += &format!("|{}|", seps.join("|"));
    for c in &cells {
        out.push('\n');
        out += &line(c, &RIGHT);
    }
    out
}

/// The ceilings measured in the run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Ceilings {
    /// Copy bandwidth, GB/s (bytes read + written): device-to-device on a GPU, host on the CPU.
    pub copy_gbs: Option<f64>,
    /// cuBLAS f16 GEMM at 8192³, TFLOP/s (GPU only).
    pub cublas_f16_8192_tflops: Option<f64>,
}

/// What ran where, printed above the table.
#[derive(Debug, Clone, PartialEq)]
pub struct Meta {
    /// The GPU's name (or the CPU's, for the CPU reference).
    pub card: String,
    /// The driver: its CUDA version, and the kernel module's version where readable.
    pub driver: String,
    /// ampkit's version.
    pub ampkit: String,
    /// When the run started, UTC, ISO 8601.
    pub date: String,
    /// How rows were timed (warm-up, runs, rotation), one line.
    pub runs: String,
}

/// A whole run: metadata, ceilings, rows in the order they ran, and notes printed under the
/// table (GEMM plans, training-step details, anything the numbers need).
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// What ran where.
    pub meta: Meta,
    /// The ceilings.
    pub ceilings: Ceilings,
    /// The rows.
    pub rows: Vec<Row>,
    /// Lines printed under the table.
    pub notes: Vec<String>,
}

#[derive(Serialize, Deserialize)]
struct JsonRow {
    kind: Kind,
    name: String,
    shape: String,
    median_us: Option<f64>,
    rate: Option<f64>,
    unit: String,
    pct_ceiling: Option<f64>,
    vs_cublas: Option<f64>,
    #[serde(default)]
    pct_copy_same_bytes: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    plan: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    error: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct JsonReport {
    card: String,
    driver: String,
    ampkit: String,
    date: String,
    ceilings: Ceilings,
    rows: Vec<JsonRow>,
}

/// `v` rounded to `digits` decimals; `None` for a missing or non-finite value (JSON has no NaN).
fn rnd(v: Option<f64>, digits: i32) -> Option<f64> {
    let scale = 10f64.powi(digits);
    v.filter(|x| x.is_finite())
        .map(|x| (x * scale).round() / scale)
}

impl Report {
    /// Rows that failed.
    pub fn failures(&self) -> Vec<&Row> {
        self.rows.iter().filter(|r| r.error.is_some()).collect()
    }

    /// The header lines (card, driver, ampkit version, date, timing), the table, and the notes.
    pub fn text(&self) -> String {
        let m = &self.meta;
        let mut out = format!(
            "card:   {}\ndriver: {}\nampkit: {}\ndate:   {}\nruns:   {}\n\n",
            m.card, m.driver, m.ampkit, m.date, m.runs
        );
        out += &markdown_table(&self.rows);
        out.push('\n');
        if !self.notes.is_empty() {
            out.push('\n');
            for n in &self.notes {
                let _ = writeln!(out, "{n}");
            }
        }
        out
    }

    /// The JSON document: `card`, `driver`, `ampkit`, `date`, `ceilings` (`copy_gbs`,
    /// `cublas_f16_8192_tflops`) and `rows` (`kind`, `name`, `shape`, `median_us`, `rate`,
    /// `unit`, `pct_ceiling`, `vs_cublas`, `pct_copy_same_bytes`, plus `plan` on GEMM rows and
    /// `error` on failed ones),
    /// rounded as the PyTorch script rounds; missing values are `null`.
    pub fn to_json(&self) -> String {
        let doc = JsonReport {
            card: self.meta.card.clone(),
            driver: self.meta.driver.clone(),
            ampkit: self.meta.ampkit.clone(),
            date: self.meta.date.clone(),
            ceilings: Ceilings {
                copy_gbs: rnd(self.ceilings.copy_gbs, 2),
                cublas_f16_8192_tflops: rnd(self.ceilings.cublas_f16_8192_tflops, 3),
            },
            rows: self
                .rows
                .iter()
                .map(|r| JsonRow {
                    kind: r.kind,
                    name: r.name.clone(),
                    shape: r.shape.clone(),
                    median_us: rnd(r.median_us, 3),
                    rate: rnd(r.rate, 4),
                    unit: r.unit.clone(),
                    pct_ceiling: rnd(r.pct_ceiling, 2),
                    vs_cublas: rnd(r.vs_cublas, 3),
                    pct_copy_same_bytes: rnd(r.pct_copy_same_bytes, 2),
                    plan: r.plan.clone(),
                    error: r.error.clone(),
                })
                .collect(),
        };
        // Plain strings, numbers and nulls: serialising cannot fail.
        serde_json::to_string_pretty(&doc).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }

    /// Writes [`Report::to_json`] to `path`.
    pub fn write_json(&self, path: &Path) -> Result<()> {
        std::fs::write(path, self.to_json() + "\n")
            .map_err(|e| Error::io(path, "writing the benchmark JSON", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Report {
        let mut gemm = Row::measured(
            Kind::Gemm,
            "mlp fwd 4096x512x784",
            "[4096x784]@[512x784]^T",
            21.3,
            Some(2.0 * 4096.0 * 512.0 * 784.0 / 21.3e-6 / 1e12),
            "TFLOP/s",
            Some(700.0),
        );
        gemm.vs_cublas = Some(0.9);
        gemm.plan = Some("h128/1".into());
        Report {
            meta: Meta {
                card: "FAKE GPU".into(),
                driver: "CUDA 13.0".into(),
                ampkit: "0.1.0".into(),
                date: "1970-01-01T00:00:00+00:00".into(),
                runs: "3 warm-ups + 10 timed runs".into(),
            },
            ceilings: Ceilings {
                copy_gbs: Some(3000.0),
                cublas_f16_8192_tflops: Some(700.0),
            },
            rows: vec![
                Row::measured(
                    Kind::Ceiling,
                    "copy d2d",
                    "1 GiB f32",
                    715.8,
                    Some(3000.0),
                    "GB/s",
                    Some(3000.0),
                ),
                gemm,
                Row::measured(
                    Kind::Mem,
                    "softmax fwd",
                    "16384x1024",
                    50.0,
                    Some(8.0 * 16384.0 * 1024.0 / 50e-6 / 1e9),
                    "GB/s",
                    Some(3000.0),
                )
                .with_copy_same_bytes(Some(2800.0)),
                Row::measured(Kind::Mem, "loss-scale update", "1", 2.5, None, "", None),
                Row::failed(
                    Kind::Train,
                    "wide 4x4096 b8192 eager",
                    "4096-4096-4096-4096-4096 x8192",
                    &"out of memory | cudaErrorMemoryAllocation\nmore",
                ),
            ],
            notes: vec!["gemm plans: mlp fwd 4096x512x784 h128/1".into()],
        }
    }

    #[test]
    fn table_has_the_columns_and_formats() {
        let r = sample();
        let table = markdown_table(&r.rows);
        let lines: Vec<&str> = table.lines().collect();
        let head: Vec<&str> = lines[0]
            .trim_matches('|')
            .split('|')
            .map(str::trim)
            .collect();
        assert_eq!(head, COLUMNS);
        assert_eq!(lines.len(), 2 + r.rows.len());
        assert!(lines
            .iter()
            .all(|l| l.matches('|').count() == COLUMNS.len() + 1));
        assert!(lines
            .iter()
            .all(|l| l.chars().count() == lines[0].chars().count()));
        assert!(lines[1].starts_with("|-") && lines[1].ends_with(":|"));
        assert!(lines[2].contains(" 100.0% |"), "{}", lines[2]);
        assert!(lines[3].contains(" 0.90x |"), "{}", lines[3]);
        assert!(lines[4].contains("2684.4") && lines[4].contains("89.5%"));
        // 2684.35 GB/s against a 2800 GB/s copy of the same bytes: the last column.
        assert!(
            lines[4].trim_end_matches(" |").ends_with(" 95.9%"),
            "{}",
            lines[4]
        );
        for l in [lines[2], lines[3], lines[5], lines[6]] {
            assert!(
                l.ends_with(&format!("{} |", " ".repeat(COLUMNS[8].len()))),
                "{l}"
            );
        }
        assert!(lines[5].contains("| 2.5 |") || lines[5].contains(" 2.5 |"));
        assert!(lines[6].contains("ERROR") && lines[6].contains("out of memory / cuda"));
        let text = r.text();
        assert!(text.starts_with("card:   FAKE GPU\ndriver: CUDA 13.0\nampkit: 0.1.0\ndate:"));
        assert!(text.contains("gemm plans: mlp fwd"));
        assert_eq!(r.failures().len(), 1);
    }

    #[test]
    fn small_rates_keep_four_decimals() {
        let row = Row::measured(Kind::Mem, "x", "y", 1.0, Some(0.01234), "GB/s", None);
        assert_eq!(row.cells()[4], "0.0123");
        assert_eq!(row.cells()[6], "");
    }

    #[test]
    fn json_has_the_keys_and_rounding() {
        let doc: serde_json::Value = serde_json::from_str(&sample().to_json()).unwrap();
        let top: Vec<&str> = doc
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        for k in ["card", "driver", "ampkit", "date", "ceilings", "rows"] {
            assert!(top.contains(&k), "{k} missing");
        }
        assert_eq!(top.len(), 6);
        assert_eq!(doc["ceilings"]["copy_gbs"], 3000.0);
        assert_eq!(doc["ceilings"]["cublas_f16_8192_tflops"], 700.0);
        let rows = doc["rows"].as_array().unwrap();
        let keys = [
            "kind",
            "name",
            "shape",
            "median_us",
            "rate",
            "unit",
            "pct_ceiling",
            "vs_cublas",
            "pct_copy_same_bytes",
        ];
        for r in rows {
            for k in keys {
                assert!(r.get(k).is_some(), "{k} missing in {r}");
            }
        }
        assert_eq!(rows[0]["kind"], "ceiling");
        assert_eq!(rows[1]["plan"], "h128/1");
        assert_eq!(rows[1]["vs_cublas"], 0.9);
        assert_eq!(rows[2]["pct_ceiling"], 89.48);
        assert_eq!(rows[2]["pct_copy_same_bytes"], 95.87);
        assert!(
            rows[0]["pct_copy_same_bytes"].is_null() && rows[3]["pct_copy_same_bytes"].is_null()
        );
        assert!(rows[3]["rate"].is_null() && rows[3]["median_us"] == 2.5);
        assert!(rows[4]["median_us"].is_null() && rows[4]["error"].is_string());
        assert!(rows[0].get("error").is_none() && rows[0].get("plan").is_none());
    }

    #[test]
    fn non_finite_values_become_null() {
        assert_eq!(rnd(Some(f64::NAN), 2), None);
        assert_eq!(rnd(Some(f64::INFINITY), 2), None);
        assert_eq!(rnd(Some(1.23456), 2), Some(1.23));
        let row = Row::measured(Kind::Mem, "x", "y", 1.0, Some(1.0), "GB/s", Some(0.0));
        assert_eq!(row.pct_ceiling, None);
        assert_eq!(
            row.clone()
                .with_copy_same_bytes(Some(0.0))
                .pct_copy_same_bytes,
            None
        );
        assert_eq!(
            row.clone().with_copy_same_bytes(None).pct_copy_same_bytes,
            None
        );
        assert_eq!(
            row.with_copy_same_bytes(Some(4.0)).pct_copy_same_bytes,
            Some(25.0)
        );
        let none = Row::measured(Kind::Mem, "loss-scale update", "1", 2.0, None, "", None);
        assert_eq!(
            none.with_copy_same_bytes(Some(3000.0)).pct_copy_same_bytes,
            None
        );
    }
}
