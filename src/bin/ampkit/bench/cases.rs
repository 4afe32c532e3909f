//! The workloads: `bench/cases.json`, the one table that `ampkit bench`, the criterion benches
//! (`benches/*.rs`, which include this file) and `bench/pytorch_reference.py` all read, parsed
//! and checked, with what each case's rows need to know about it (operand lengths, bytes).
//!
//! The table is compiled in (`include_str!`), so an installed `ampkit` needs no source tree; it
//! is parsed when a run starts, and a malformed table is an error naming what is wrong. This
//! file uses nothing of the binary (only `ampkit`, serde and serde_json), so the criterion
//! benches can include it with `#[path]`.

use ampkit::cpu::fp8::Fp8Format;
use ampkit::shape::{GemmShape, Layout};
use ampkit::{Error, Result};
use serde::Deserialize;

/// The table's text, as built into this executable.
pub const CASES_JSON: &str = include_str!("../../../../bench/cases.json");

/// The table's layout names: `fwd`, `dgrad`, `wgrad` (the PyTorch script's).
#[derive(Deserialize)]
#[serde(remote = "Layout")]
enum LayoutName {
    #[serde(rename = "fwd")]
    Forward,
    #[serde(rename = "dgrad")]
    Dgrad,
    #[serde(rename = "wgrad")]
    Wgrad,
}

/// One GEMM: `Y[m, n]` from f16 (or bf16) operands in `layout`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GemmCase {
    /// The row's name (wgrad rows get ` (f32 out)` appended, see [`GemmCase::row_name`]).
    pub name: String,
    /// Which product.
    #[serde(with = "LayoutName")]
    pub layout: Layout,
    /// Output rows.
    pub m: usize,
    /// Output columns.
    pub n: usize,
    /// The contracted dimension.
    pub k: usize,
    /// An f32 output instead of the operands' 16-bit type.
    pub f32_out: bool,
    /// bf16 operands (and a bf16 or f32 output) instead of f16; absent means f16.
    #[serde(default)]
    pub bf16: bool,
    /// FP8 operands instead (`ops::gemm_fp8`, beside cuBLASLt): `"e4m3"` for both E4M3, or
    /// `"<A>x<B>"` with each `e4m3` or `e5m2`; a `fwd` (TN) layout, output bf16 (f32 with
    /// `f32_out`). Absent: not FP8.
    #[serde(default)]
    pub fp8: Option<String>,
}

impl GemmCase {
    /// The problem size, as the ops take it.
    pub fn shape(&self) -> GemmShape {
        GemmShape::new(self.layout, self.m, self.n, self.k)
    }

    /// The row name (`wgrad` rows say their output type).
    pub fn row_name(&self) -> String {
        if self.f32_out {
            format!("{} (f32 out)", self.name)
        } else {
            self.name.clone()
        }
    }

    /// Elements of A and B in this layout.
    pub fn operand_lens(&self) -> (usize, usize) {
        let (m, n, k) = (self.m, self.n, self.k);
        match self.layout {
            Layout::Forward => (m * k, n * k),
            Layout::Dgrad => (m * k, k * n),
            Layout::Wgrad => (k * m, k * n),
        }
    }

    /// Minimal traffic: both operands (2 bytes an element, 1 for FP8) read once, the output
    /// written once.
    pub fn bytes(&self) -> f64 {
        let (la, lb) = self.operand_lens();
        let out = if self.f32_out { 4 } else { 2 };
        let operand = if self.fp8.is_some() { 1 } else { 2 };
        (operand * (la + lb) + out * self.m * self.n) as f64
    }

    /// The FP8 formats of A and B, for an FP8 case; `Err` names a malformed `fp8` value.
    pub fn fp8_formats(&self) -> Result<Option<(Fp8Format, Fp8Format)>> {
        let Some(spec) = &self.fp8 else {
            return Ok(None);
        };
        let one = |f: &str| match f {
            "e4m3" => Ok(Fp8Format::E4M3),
            "e5m2" => Ok(Fp8Format::E5M2),
            _ => Err(bad(format!(
                "gemm {:?}: fp8 {spec:?} is not \"e4m3\", \"e5m2\" or \"<A>x<B>\" of them",
                self.name
            ))),
        };
        Ok(Some(match spec.split_once('x') {
            Some((a, b)) => (one(a)?, one(b)?),
            None => (one(spec)?, one(spec)?),
        }))
    }
}

/// A row-wise op on `rows × cols` f32 (LayerNorm, softmax, the fused loss).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RowsCase {
    /// The shape column of its rows.
    pub name: String,
    /// Rows.
    pub rows: usize,
    /// Columns (the normalised dimension).
    pub cols: usize,
}

/// A multi-tensor op (unscale, the optimizer) over tensors of these lengths.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorsCase {
    /// The shape column of its rows.
    pub name: String,
    /// Each tensor's length.
    pub tensors: Vec<usize>,
}

/// An elementwise op (cast, ReLU) over `n` elements.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SizeCase {
    /// The shape column of its rows.
    pub name: String,
    /// Elements.
    pub n: usize,
}

/// One training step of an MLP.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainCase {
    /// The row's name (the GPU rows add ` eager` / ` graph`).
    pub name: String,
    /// Widths, input to output.
    pub layers: Vec<usize>,
    /// Samples per step.
    pub batch: usize,
    /// `mixed` (f16 with dynamic loss scaling, the default), `bf16` or `fp8` (no loss scaling).
    #[serde(default)]
    pub precision: ampkit::amp::Precision,
    /// fp8: the last layer in FP8 too ([`ampkit::amp::Fp8Recipe::last_layer`]).
    #[serde(default)]
    pub fp8_last_layer: bool,
}

/// The table as written: the CPU run names its cases.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Written {
    #[allow(dead_code)] // Read by people: what the table is.
    about: String,
    gemm: Vec<GemmCase>,
    layernorm: Vec<RowsCase>,
    softmax: Vec<RowsCase>,
    unscale: Vec<TensorsCase>,
    adam: Vec<TensorsCase>,
    cast: Vec<SizeCase>,
    relu: Vec<SizeCase>,
    train: Vec<TrainCase>,
    cpu: WrittenCpu,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WrittenCpu {
    gemm: Vec<GemmCase>,
    layernorm: Vec<String>,
    softmax: Vec<String>,
    xent: Vec<String>,
    adam: Vec<String>,
    train: Vec<String>,
}

/// What the CPU run (no GPU) runs: its own GEMMs, and cases of the lists above.
#[derive(Debug, Clone, PartialEq)]
pub struct CpuCases {
    /// `cpu::gemm` rows.
    pub gemm: Vec<GemmCase>,
    /// LayerNorm forward and backward.
    pub layernorm: Vec<RowsCase>,
    /// Softmax forward and backward.
    pub softmax: Vec<RowsCase>,
    /// The fused loss, f32 and f16.
    pub xent: Vec<RowsCase>,
    /// Adam.
    pub adam: Vec<TensorsCase>,
    /// The CPU backend's training step.
    pub train: Vec<TrainCase>,
}

/// Every workload, in the order the rows run.
#[derive(Debug, Clone, PartialEq)]
pub struct Cases {
    /// GEMMs, ampkit's beside cuBLAS's.
    pub gemm: Vec<GemmCase>,
    /// LayerNorm forward and backward.
    pub layernorm: Vec<RowsCase>,
    /// Softmax forward and backward, and the fused loss.
    pub softmax: Vec<RowsCase>,
    /// Multi-tensor unscale + inf check.
    pub unscale: Vec<TensorsCase>,
    /// The fused optimizer (Adam in `ampkit bench`).
    pub adam: Vec<TensorsCase>,
    /// f32 ↔ f16 casts.
    pub cast: Vec<SizeCase>,
    /// ReLU backward.
    pub relu: Vec<SizeCase>,
    /// Training steps.
    pub train: Vec<TrainCase>,
    /// The CPU run's selection.
    pub cpu: CpuCases,
}

fn bad(detail: String) -> Error {
    Error::InvalidArgument {
        op: "bench/cases.json",
        detail,
    }
}

/// The cases of `list` named in `names`, in that order; an unknown name is an error.
fn pick<T: Clone>(
    what: &str,
    names: &[String],
    list: &[T],
    name: fn(&T) -> &str,
) -> Result<Vec<T>> {
    names
        .iter()
        .map(|n| {
            list.iter().find(|c| name(c) == n).cloned().ok_or_else(|| {
                bad(format!(
                    "cpu.{what} names {n:?}, which is not in the {what} list"
                ))
            })
        })
        .collect()
}

/// Fails unless every name in `names` is new and every size is positive.
fn check<'a>(what: &str, items: impl Iterator<Item = (&'a str, Vec<usize>)>) -> Result<()> {
    let mut seen = std::collections::BTreeSet::new();
    for (name, sizes) in items {
        if !seen.insert(name) {
            return Err(bad(format!("{what}: {name:?} appears twice")));
        }
        if sizes.is_empty() || sizes.contains(&0) {
            return Err(bad(format!(
                "{what} {name:?}: sizes {sizes:?} must be positive"
            )));
        }
    }
    Ok(())
}

impl Cases {
    /// The table built into this executable.
    pub fn embedded() -> Result<Cases> {
        Cases::parse(CASES_JSON)
    }

    /// Parses and checks a table: every name unique in its list, every size positive, a
    /// training case with at least two widths, every name the CPU selection uses defined.
    pub fn parse(json: &str) -> Result<Cases> {
        let w: Written = serde_json::from_str(json).map_err(|e| bad(e.to_string()))?;
        let gemm = |g: &GemmCase| vec![g.m, g.n, g.k];
        check("gemm", w.gemm.iter().map(|g| (g.name.as_str(), gemm(g))))?;
        for g in &w.gemm {
            if g.fp8_formats()?.is_some()
                && (g.layout != Layout::Forward || g.bf16 || g.k % 16 != 0)
            {
                return Err(bad(format!(
                    "gemm {:?}: an FP8 case needs the fwd (TN) layout, no bf16 and k a multiple of 16",
                    g.name
                )));
            }
        }
        check(
            "cpu.gemm",
            w.cpu.gemm.iter().map(|g| (g.name.as_str(), gemm(g))),
        )?;
        for (what, list) in [("layernorm", &w.layernorm), ("softmax", &w.softmax)] {
            check(
                what,
                list.iter().map(|c| (c.name.as_str(), vec![c.rows, c.cols])),
            )?;
        }
        for (what, list) in [("unscale", &w.unscale), ("adam", &w.adam)] {
            check(
                what,
                list.iter().map(|c| (c.name.as_str(), c.tensors.clone())),
            )?;
        }
        for (what, list) in [("cast", &w.cast), ("relu", &w.relu)] {
            check(what, list.iter().map(|c| (c.name.as_str(), vec![c.n])))?;
        }
        let steps = w.train.iter();
        check(
            "train",
            steps.map(|c| (c.name.as_str(), [&c.layers[..], &[c.batch]].concat())),
        )?;
        if let Some(t) = w.train.iter().find(|t| t.layers.len() < 2) {
            return Err(bad(format!(
                "train {:?}: an MLP needs at least two widths",
                t.name
            )));
        }
        let cpu = CpuCases {
            layernorm: pick("layernorm", &w.cpu.layernorm, &w.layernorm, |c| &c.name)?,
            softmax: pick("softmax", &w.cpu.softmax, &w.softmax, |c| &c.name)?,
            xent: pick("softmax", &w.cpu.xent, &w.softmax, |c| &c.name)?,
            adam: pick("adam", &w.cpu.adam, &w.adam, |c| &c.name)?,
            train: pick("train", &w.cpu.train, &w.train, |c| &c.name)?,
            gemm: w.cpu.gemm,
        };
        Ok(Cases {
            gemm: w.gemm,
            layernorm: w.layernorm,
            softmax: w.softmax,
            unscale: w.unscale,
            adam: w.adam,
            cast: w.cast,
            relu: w.relu,
            train: w.train,
            cpu,
        })
    }
}
