//! The CPU half of `ampkit bench`, for machines without a GPU (or `--device cpu`): the CPU
//! reference ops ([`ampkit::cpu`]) timed with `std::time::Instant`, median of the timed calls,
//! against a host copy ceiling measured the same way. There is no cuBLAS here, so `vs cuBLAS`
//! stays blank, and no compute ceiling, so GEMM and training rows have no `% ceiling`.

use super::bytes;
use super::cases::{Cases, GemmCase, RowsCase, TensorsCase};
use super::clock::{median, utc_date};
use super::collect::{Collector, Options};
use super::copies::{self, CopyCache};
use super::inputs::{n_sets, random_f32, random_labels, train_config, train_data};
use super::report::{Ceilings, Kind, Meta, Report, Row};
use super::work::{gemm_flops, gemm_shape, train_flops, train_shape};
use ampkit::cpu::gemm::{self as cgemm, Epilogue};
use ampkit::cpu::optim::{self, OptimizerConfig, OptimizerState, ParamTensor};
use ampkit::cpu::{layernorm, softmax, Element};
use ampkit::shape::{GemmShape, Layout};
use ampkit::train::open_backend;
use ampkit::Device;
use ampkit::Result;
use half::f16;
use rayon::prelude::*;
use std::time::{Instant, SystemTime};

/// The host copy ceiling's buffer: 256 MiB of f32, past any CPU's last-level cache share.
const COPY_LEN: usize = 64 << 20;
/// Median µs of `f(warmup..warmup + runs)` after `f(0..warmup)`, each call timed on its own.
fn median_us(opts: &Options, mut f: impl FnMut(usize) -> Result<()>) -> Result<f64> {
    for i in 0..opts.warmup() {
        f(i)?;
    }
    let mut times = Vec::with_capacity(opts.runs());
    for i in 0..opts.runs() {
        let t = Instant::now();
        f(opts.warmup() + i)?;
        times.push(t.elapsed().as_secs_f64() * 1e6);
    }
    Ok(median(&mut times))
}

/// The median µs of `call` on input sets built by `make(seed)`, `n_sets(bytes)` of them,
/// cycled as on the GPU; the sets are freed before it returns.
fn time_sets<S>(
    opts: &Options,
    bytes: f64,
    make: impl FnMut(u32) -> Result<S>,
    mut call: impl FnMut(&mut S) -> Result<()>,
) -> Result<f64> {
    let k = n_sets(bytes, opts.warmup() + opts.runs());
    let mut sets = (0..k as u32)
        .map(|s| 1000 + 7 * s)
        .map(make)
        .collect::<Result<Vec<S>>>()?;
    median_us(opts, |i| call(&mut sets[i % k]))
}

/// `dst.copy_from_slice(src)` in parallel chunks, as the host copy ceiling copies.
fn par_copy(dst: &mut [f32], src: &[f32]) {
    (dst.par_chunks_mut(1 << 18))
        .zip(src.par_chunks(1 << 18))
        .for_each(|(d, s)| d.copy_from_slice(s));
}

/// Median µs of a host copy of `len` f32 elements, timed like a row ([`time_sets`]).
fn host_copy_us(opts: &Options, len: usize) -> Result<f64> {
    let mut dst = vec![0f32; len];
    time_sets(
        opts,
        copies::copy_bytes(len),
        |s| Ok(vec![s as f32; len]),
        |src: &mut Vec<f32>| {
            par_copy(&mut dst, src);
            Ok(())
        },
    )
}

/// A memory-bound row: `make(seed)` builds one input set, `call(set)` runs the op on it
/// ([`time_sets`]); `% copy same bytes` against a host copy of `bytes` timed the same way,
/// measured once per size in `copies`.
fn mem_row<S>(
    opts: &Options,
    copies: &mut CopyCache,
    (name, shape): (&str, &str),
    (bytes, flops): (f64, f64),
    ceil: &Ceilings,
    make: impl FnMut(u32) -> Result<S>,
    call: impl FnMut(&mut S) -> Result<()>,
) -> Result<Row> {
    let us = time_sets(opts, bytes, make, call)?;
    let gbs = bytes / us / 1e3;
    let copy = copies.gbs(bytes, |len| host_copy_us(opts, len));
    Ok(
        Row::measured(Kind::Mem, name, shape, us, Some(gbs), "GB/s", ceil.copy_gbs)
            .with_work(flops, bytes)
            .with_copy_same_bytes(copy),
    )
}

/// The CPU model from `/proc/cpuinfo` where there is one, with the thread count.
fn cpu_name() -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string());
    format!(
        "CPU: {model} ({} threads, no GPU)",
        rayon::current_num_threads()
    )
}

/// The CPU benchmark: host copy ceiling, GEMMs, LayerNorm, softmax, cross-entropy, Adam, and a
/// training step.
pub fn run(opts: &Options, cases: &Cases) -> Result<Report> {
    let date = utc_date(SystemTime::now());
    let mut c = Collector::new(opts);
    c.ceilings.copy_gbs = c.row(Kind::Ceiling, "copy host", "256 MiB f32", true, |_| {
        let src = random_f32(COPY_LEN, 1, -2.0, 2.0);
        let mut dst = vec![0f32; COPY_LEN];
        let us = median_us(opts, |_| {
            par_copy(&mut dst, &src);
            Ok(())
        })?;
        let gbs = 8.0 * COPY_LEN as f64 / us / 1e3;
        Ok(Row::measured(
            Kind::Ceiling,
            "copy host",
            "256 MiB f32",
            us,
            Some(gbs),
            "GB/s",
            Some(gbs),
        ))
    });

    for case in &cases.cpu.gemm {
        let (name, shape) = (
            case.row_name(),
            gemm_shape(case.layout, case.m, case.n, case.k),
        );
        c.row(Kind::Gemm, &name, &shape, false, |_| {
            if case.f32_out {
                gemm_row::<f32>(opts, case)
            } else {
                gemm_row::<f16>(opts, case)
            }
        });
    }

    let mut copies = CopyCache::default();
    for case in &cases.cpu.layernorm {
        layernorm_rows(opts, &mut copies, &mut c, case);
    }
    for case in &cases.cpu.softmax {
        softmax_rows(opts, &mut copies, &mut c, case);
    }
    for case in &cases.cpu.xent {
        xent_rows(opts, &mut copies, &mut c, case);
    }
    for case in &cases.cpu.adam {
        adam_row(opts, &mut copies, &mut c, case);
    }
    c.notes
        .extend(copies.notes("host copy", "256 MiB host copy"));

    for t in &cases.cpu.train {
        let (name, dims, batch) = (t.name.as_str(), &t.layers[..], t.batch);
        let shape = train_shape(dims, batch);
        c.row(Kind::Train, name, &shape, false, |_| {
            train_row(opts, name, (dims, t.precision), batch)
        });
    }
    c.notes.push(format!(
        "no GPU: the CPU reference ops (rayon, {} threads); GEMM rows at batch {}; \
         no cuBLAS, so vs cuBLAS is blank, and no compute ceiling",
        rayon::current_num_threads(),
        gemm_batches(&cases.cpu.gemm)
    ));

    Ok(c.into_report(Meta {
        card: cpu_name(),
        driver: "none (CPU reference)".into(),
        ampkit: env!("CARGO_PKG_VERSION").to_string(),
        date,
        runs: opts.setup_line(
            "std::time::Instant per call; input sets rotated for 200 MB per row; GFLOP/s",
        ),
    }))
}

/// `cpu::gemm` (f16 operands, f32 accumulation) on one operand set.
fn gemm_row<C: Element>(opts: &Options, case: &GemmCase) -> Result<Row> {
    let shape = GemmShape::new(case.layout, case.m, case.n, case.k);
    let (la, lb) = case.operand_lens();
    let half = |v: Vec<f32>| v.into_iter().map(f16::from_f32).collect::<Vec<f16>>();
    let a = half(random_f32(la, 11, -2.0, 2.0));
    let b = half(random_f32(lb, 12, -2.0, 2.0));
    let mut out = vec![C::from_f32(0.0); case.m * case.n];
    let us = median_us(opts, |_| {
        cgemm::gemm(shape, &a, &b, &Epilogue::plain(), &mut out)
    })?;
    let flops = gemm_flops(case.m, case.n, case.k);
    Ok(Row::measured(
        Kind::Gemm,
        &case.row_name(),
        &gemm_shape(case.layout, case.m, case.n, case.k),
        us,
        Some(flops / us / 1e3),
        "GFLOP/s",
        None,
    )
    .with_work(flops, case.bytes()))
}

/// The batch of the CPU's GEMM rows, for the note under the table: the `m` of forward and dgrad
/// products, the `k` of weight gradients (smaller than the GPU's 4096, to keep a CPU run short).
fn gemm_batches(gemms: &[GemmCase]) -> String {
    let mut b: Vec<usize> = (gemms.iter())
        .map(|g| if g.layout == Layout::Wgrad { g.k } else { g.m })
        .collect();
    b.sort_unstable();
    b.dedup();
    b.iter().map(usize::to_string).collect::<Vec<_>>().join("/")
}

fn layernorm_rows(opts: &Options, copies: &mut CopyCache, c: &mut Collector, case: &RowsCase) {
    let (label, rows, cols) = (case.name.as_str(), case.rows, case.cols);
    let n = rows * cols;
    let gamma = random_f32(cols, 3, -2.0, 2.0);
    let beta = random_f32(cols, 4, -2.0, 2.0);
    let name = "layernorm fwd";
    c.row(Kind::Mem, name, label, false, |ceil| {
        let (mut y, mut mean, mut rstd) = (vec![0f32; n], vec![0f32; rows], vec![0f32; rows]);
        let work = (
            bytes::layernorm_fwd(rows, cols),
            bytes::flops_per_element(name) * n as f64,
        );
        mem_row(
            opts,
            copies,
            (name, label),
            work,
            ceil,
            |s| Ok(random_f32(n, s, -2.0, 2.0)),
            |x| {
                layernorm::forward(
                    x, rows, cols, &gamma, &beta, 1e-5, &mut y, &mut mean, &mut rstd,
                )
            },
        )
    });
    let name = "layernorm bwd";
    c.row(Kind::Mem, name, label, false, |ceil| {
        let (mut dx, mut dgamma, mut dbeta) = (vec![0f32; n], vec![0f32; cols], vec![0f32; cols]);
        let mut y = vec![0f32; n];
        let work = (
            bytes::layernorm_bwd(rows, cols),
            bytes::flops_per_element(name) * n as f64,
        );
        type LnSet = (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>);
        mem_row(
            opts,
            copies,
            (name, label),
            work,
            ceil,
            |s| -> Result<LnSet> {
                let x = random_f32(n, s, -2.0, 2.0);
                let (mut mean, mut rstd) = (vec![0f32; rows], vec![0f32; rows]);
                layernorm::forward(
                    &x, rows, cols, &gamma, &beta, 1e-5, &mut y, &mut mean, &mut rstd,
                )?;
                Ok((x, random_f32(n, s + 5000, -2.0, 2.0), mean, rstd))
            },
            |s: &mut LnSet| {
                layernorm::backward(
                    &s.1,
                    &s.0,
                    &s.2,
                    &s.3,
                    &gamma,
                    rows,
                    cols,
                    &mut dx,
                    &mut dgamma,
                    &mut dbeta,
                )
            },
        )
    });
}

fn softmax_rows(opts: &Options, copies: &mut CopyCache, c: &mut Collector, case: &RowsCase) {
    let (label, rows, cols) = (case.name.as_str(), case.rows, case.cols);
    let n = rows * cols;
    let name = "softmax fwd";
    c.row(Kind::Mem, name, label, false, |ceil| {
        let mut y = vec![0f32; n];
        let work = (
            bytes::softmax_fwd(rows, cols),
            bytes::flops_per_element(name) * n as f64,
        );
        mem_row(
            opts,
            copies,
            (name, label),
            work,
            ceil,
            |s| Ok(random_f32(n, s, -2.0, 2.0)),
            |x| softmax::forward(x, rows, cols, &mut y),
        )
    });
    let name = "softmax bwd";
    c.row(Kind::Mem, name, label, false, |ceil| {
        let mut dx = vec![0f32; n];
        let work = (
            bytes::softmax_bwd(rows, cols),
            bytes::flops_per_element(name) * n as f64,
        );
        mem_row(
            opts,
            copies,
            (name, label),
            work,
            ceil,
            |s| {
                Ok((
                    random_f32(n, s, -2.0, 2.0),
                    random_f32(n, s + 5000, -2.0, 2.0),
                ))
            },
            |s: &mut (Vec<f32>, Vec<f32>)| softmax::backward(&s.0, &s.1, rows, cols, &mut dx),
        )
    });
}

/// The fused loss, f32 → f32 and f16 → f16, loss scale 65536.
fn xent_rows(opts: &Options, copies: &mut CopyCache, c: &mut Collector, case: &RowsCase) {
    let (label, rows, cols) = (case.name.as_str(), case.rows, case.cols);
    for half in [false, true] {
        let name = if half {
            "xent fwd+bwd f16"
        } else {
            "xent fwd+bwd"
        };
        c.row(Kind::Mem, name, label, false, |ceil| {
            let n = rows * cols;
            let labels = random_labels(rows, cols, 5);
            let elem = if half { 2 } else { 4 };
            let work = (
                bytes::xent(rows, cols, elem, elem),
                bytes::flops_per_element("xent") * n as f64,
            );
            if half {
                let mut d = vec![f16::ZERO; n];
                mem_row(
                    opts,
                    copies,
                    (name, label),
                    work,
                    ceil,
                    |s| {
                        Ok(random_f32(n, s, -2.0, 2.0)
                            .into_iter()
                            .map(f16::from_f32)
                            .collect())
                    },
                    |x: &mut Vec<f16>| {
                        ampkit::cpu::cross_entropy::softmax_cross_entropy(
                            x, &labels, rows, cols, 65536.0, &mut d,
                        )
                        .map(|_| ())
                    },
                )
            } else {
                let mut d = vec![0f32; n];
                mem_row(
                    opts,
                    copies,
                    (name, label),
                    work,
                    ceil,
                    |s| Ok(random_f32(n, s, -2.0, 2.0)),
                    |x: &mut Vec<f32>| {
                        ampkit::cpu::cross_entropy::softmax_cross_entropy(
                            x, &labels, rows, cols, 65536.0, &mut d,
                        )
                        .map(|_| ())
                    },
                )
            }
        });
    }
}

/// One input set of the Adam row: the optimizer's state and the tensors it updates.
type AdamSet = (OptimizerState, Vec<Vec<f32>>, Vec<Vec<f32>>, Vec<Vec<f16>>);

fn adam_row(opts: &Options, copies: &mut CopyCache, c: &mut Collector, case: &TensorsCase) {
    let (name, label) = ("adam step", case.name.as_str());
    let cfg = OptimizerConfig::adam(1e-3);
    let sizes = &case.tensors[..];
    c.row(Kind::Mem, name, label, false, |ceil| {
        let total: usize = sizes.iter().sum();
        let work = (
            bytes::adam(total),
            bytes::flops_per_element("adam") * total as f64,
        );
        mem_row(
            opts,
            copies,
            (name, label),
            work,
            ceil,
            |s| -> Result<AdamSet> {
                let tensors = |off: u32| -> Vec<Vec<f32>> {
                    (sizes.iter().enumerate())
                        .map(|(t, &len)| random_f32(len, s + off + 100 * t as u32, -2.0, 2.0))
                        .collect()
                };
                let halves = sizes.iter().map(|&len| vec![f16::ZERO; len]).collect();
                Ok((
                    OptimizerState::new(&cfg, sizes)?,
                    tensors(0),
                    tensors(5000),
                    halves,
                ))
            },
            |(state, masters, grads, halves): &mut AdamSet| {
                let mut params: Vec<ParamTensor<'_>> = (masters.iter_mut())
                    .zip(grads.iter())
                    .zip(halves.iter_mut())
                    .map(|((m, g), h)| ParamTensor {
                        master: m,
                        grad: g,
                        half: h,
                    })
                    .collect();
                optim::step(&cfg, state, &mut params, false).map(|_| ())
            },
        )
    });
}

/// One CPU training step ([`ampkit::train::cpu_backend::CpuBackend`]), median of per-step times.
fn train_row(
    opts: &Options,
    name: &str,
    (dims, precision): (&[usize], ampkit::amp::Precision),
    batch: usize,
) -> Result<Row> {
    let cfg = train_config(dims, batch, precision);
    let mut backend = open_backend(&Device::Cpu, &cfg)?;
    let batches = 4;
    let (images, labels) = train_data(dims, batches * batch, 77);
    backend.load_epoch(&images, &labels)?;
    let us = median_us(opts, |i| backend.step((i % batches) * batch, batch))?;
    let records = backend.take_records()?;
    if records.iter().all(|r| !r.loss.is_finite()) {
        return Err(ampkit::Error::InvalidArgument {
            op: "ampkit bench",
            detail: "every step had a non-finite loss".into(),
        });
    }
    let flops = train_flops(dims, batch);
    Ok(Row::measured(
        Kind::Train,
        name,
        &train_shape(dims, batch),
        us,
        Some(flops / us / 1e3),
        "GFLOP/s",
        None,
    )
    .with_work(flops, bytes::train_step(dims, batch)))
}

/// The CPU run end to end, with quick settings and a narrow filter (no GPU needed).
#[cfg(test)]
mod tests {
    use super::super::cases::Cases;
    use super::super::collect::Options;
    use super::super::report::{Kind, Report, COLUMNS};

    /// The CPU run on the built-in table.
    fn run(opts: &Options) -> ampkit::Result<Report> {
        super::run(opts, &Cases::embedded()?)
    }

    fn quick(only: &str) -> Options {
        Options {
            quick: true,
            only: Some(only.into()),
            progress: false,
        }
    }

    #[test]
    fn cpu_run_keeps_the_ceiling_and_the_selected_rows() {
        let report = run(&quick("softmax fwd")).unwrap();
        let kinds: Vec<Kind> = report.rows.iter().map(|r| r.kind).collect();
        assert_eq!(kinds, [Kind::Ceiling, Kind::Mem], "{:?}", report.rows);
        assert_eq!(report.rows[0].name, "copy host");
        assert_eq!(report.rows[1].name, "softmax fwd");
        assert_eq!(report.rows[1].shape, "MLP 4096x512");
        assert!(report.failures().is_empty(), "{:?}", report.failures());
        let copy = report.ceilings.copy_gbs.expect("a host copy ceiling");
        assert!(copy > 0.0 && copy.is_finite());
        assert_eq!(report.ceilings.cublas_f16_8192_tflops, None);
        let row = &report.rows[1];
        assert_eq!(row.unit, "GB/s");
        assert!(row.median_us.unwrap() > 0.0 && row.rate.unwrap() > 0.0);
        assert!(row.pct_ceiling.is_some() && row.vs_cublas.is_none());
        // Against a host copy of the same bytes, timed like the row; the ceiling row has none.
        let pct = row
            .pct_copy_same_bytes
            .expect("% copy same bytes on a mem row");
        assert!(pct > 0.0 && pct.is_finite(), "{pct}");
        assert_eq!(report.rows[0].pct_copy_same_bytes, None);
        assert!(
            report
                .notes
                .iter()
                .any(|n| n.starts_with("% copy same bytes = ")),
            "{:?}",
            report.notes
        );

        let text = report.text();
        assert!(text.starts_with("card:   CPU: "), "{text}");
        let table: Vec<&str> = text.lines().filter(|l| l.starts_with('|')).collect();
        let head: Vec<&str> = table[0]
            .trim_matches('|')
            .split('|')
            .map(str::trim)
            .collect();
        assert_eq!(head, COLUMNS);
        assert_eq!(table.len(), 2 + report.rows.len());
    }

    #[test]
    fn cpu_gemm_and_train_rows() {
        let report = run(&quick("fwd2")).unwrap();
        let gemm = report.rows.iter().find(|r| r.kind == Kind::Gemm).unwrap();
        assert_eq!(gemm.name, "mlp fwd2 1024x10x512");
        assert_eq!(gemm.shape, "[1024x512]@[10x512]^T");
        assert_eq!(gemm.unit, "GFLOP/s");
        assert!(gemm.rate.unwrap() > 0.0 && gemm.vs_cublas.is_none());

        let report = run(&quick("train")).unwrap();
        let train = report.rows.iter().find(|r| r.kind == Kind::Train).unwrap();
        assert_eq!(train.name, "mlp 784-512-10 b256");
        assert_eq!(train.shape, "784-512-10 x256");
        assert!(train.error.is_none() && train.rate.unwrap() > 0.0);
    }
}
