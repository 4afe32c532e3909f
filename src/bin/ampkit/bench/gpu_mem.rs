//! The memory-bound rows of the GPU benchmark: LayerNorm, softmax, cross-entropy, unscale, cast,
//! ReLU backward, Adam and the loss-scale update. Every row cycles through [`n_sets`] input sets
//! cut from the harness's random pool (outputs are shared: they are written, not read), lines its
//! timed calls up behind the queue-ahead copies, and reports GB/s with the byte counts of
//! [`super::bytes`] against the copy ceiling and against a copy of the same bytes
//! (`same_bytes.rs`).

use super::bytes::{self, flops_per_element};
use super::cases::{Cases, RowsCase, SizeCase, TensorsCase};
use super::collect::Collector;
use super::harness::{time_sets, Harness};
use super::inputs::{n_sets, random_labels};
use super::report::{Ceilings, Kind, Row};
use super::same_bytes;
use ampkit::cpu::optim::OptimizerConfig;
use ampkit::cpu::scaler::ScalerConfig;
use ampkit::cuda::DeviceBuffer;
use ampkit::ops::optim::{GpuOptimizer, GpuParamTensor};
use ampkit::ops::{cast, cross_entropy, layernorm, relu, scaler, softmax, unscale};
use ampkit::tuning::cross_entropy::CeForce;
use ampkit::Result;
use half::f16;

const EPS: f32 = 1e-5;

/// A memory-bound row: [`time_sets`], GB/s against the copy ceiling, and `% copy same bytes`
/// against a device copy of `bytes` timed the same way ([`same_bytes::device_copy_gbs`]).
pub fn mem_row<S>(
    h: &mut Harness,
    (name, shape): (&str, &str),
    (bytes, flops): (f64, f64),
    ceil: &Ceilings,
    make: impl FnMut(&Harness, u32) -> Result<S>,
    call: impl FnMut(&mut S, usize) -> Result<()>,
) -> Result<Row> {
    let us = time_sets(h, bytes, make, call)?;
    let gbs = bytes / us / 1e3;
    let copy = same_bytes::device_copy_gbs(h, bytes);
    Ok(
        Row::measured(Kind::Mem, name, shape, us, Some(gbs), "GB/s", ceil.copy_gbs)
            .with_work(flops, bytes)
            .with_copy_same_bytes(copy),
    )
}

/// Extra rows run before each softmax case's own: `(harness, collector, label, rows, cols)`.
pub type CaseRows = fn(&mut Harness, &mut Collector, &str, usize, usize);

/// Every memory-bound row, in the PyTorch script's order where the two overlap; `before_softmax`
/// runs before each softmax case's rows (the launch-shape sweep, which builds on this module).
pub fn run(h: &mut Harness, c: &mut Collector, cases: &Cases, before_softmax: Option<CaseRows>) {
    layernorm_rows(h, c, &cases.layernorm);
    softmax_rows(h, c, &cases.softmax, before_softmax);
    unscale_rows(h, c, &cases.unscale);
    cast_rows(h, c, &cases.cast);
    relu_rows(h, c, &cases.relu);
    adam_rows(h, c, &cases.adam);
    scaler_row(h, c);
    c.notes.extend(
        h.copies
            .notes("device-to-device copy (memcpy_dtod)", "1 GiB copy"),
    );
}

fn layernorm_rows(h: &mut Harness, c: &mut Collector, cases: &[RowsCase]) {
    for case in cases {
        let (label, rows, cols) = (case.name.as_str(), case.rows, case.cols);
        let n = rows * cols;
        let name = "layernorm fwd";
        c.row(Kind::Mem, name, label, false, |ceil| {
            let gpu = h.gpu.clone();
            let (gamma, beta) = (h.f32_buf(cols, 3)?, h.f32_buf(cols, 4)?);
            let mut y: DeviceBuffer<f32> = gpu.alloc_zeros(n)?;
            let mut mean: DeviceBuffer<f32> = gpu.alloc_zeros(rows)?;
            let mut rstd: DeviceBuffer<f32> = gpu.alloc_zeros(rows)?;
            let work = (
                bytes::layernorm_fwd(rows, cols),
                flops_per_element(name) * n as f64,
            );
            mem_row(
                h,
                (name, label),
                work,
                ceil,
                |h, s| h.f32_buf(n, s),
                |x, _| {
                    let x = &*x;
                    layernorm::forward(
                        &gpu, x, rows, cols, &gamma, &beta, EPS, &mut y, &mut mean, &mut rstd,
                    )
                },
            )
        });
        let name = "layernorm bwd";
        c.row(Kind::Mem, name, label, false, |ceil| {
            let gpu = h.gpu.clone();
            let (gamma, beta) = (h.f32_buf(cols, 3)?, h.f32_buf(cols, 4)?);
            let mut y: DeviceBuffer<f32> = gpu.alloc_zeros(n)?;
            let mut dx: DeviceBuffer<f32> = gpu.alloc_zeros(n)?;
            let mut dgamma: DeviceBuffer<f32> = gpu.alloc_zeros(cols)?;
            let mut dbeta: DeviceBuffer<f32> = gpu.alloc_zeros(cols)?;
            let work = (
                bytes::layernorm_bwd(rows, cols),
                flops_per_element(name) * n as f64,
            );
            // A set: x, dy, and the mean and rstd the forward saved for this x.
            type LnSet = (
                DeviceBuffer<f32>,
                DeviceBuffer<f32>,
                DeviceBuffer<f32>,
                DeviceBuffer<f32>,
            );
            mem_row(
                h,
                (name, label),
                work,
                ceil,
                |h, s| -> Result<LnSet> {
                    let x = h.f32_buf(n, s)?;
                    let dy = h.f32_buf(n, s + 5000)?;
                    let mut mean: DeviceBuffer<f32> = h.gpu.alloc_zeros(rows)?;
                    let mut rstd: DeviceBuffer<f32> = h.gpu.alloc_zeros(rows)?;
                    layernorm::forward(
                        &h.gpu, &x, rows, cols, &gamma, &beta, EPS, &mut y, &mut mean, &mut rstd,
                    )?;
                    Ok((x, dy, mean, rstd))
                },
                |s: &mut LnSet, _| {
                    let (x, dy, mean, rstd) = (&s.0, &s.1, &s.2, &s.3);
                    layernorm::backward(
                        &gpu,
                        dy,
                        x,
                        mean,
                        rstd,
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
}

fn softmax_rows(h: &mut Harness, c: &mut Collector, cases: &[RowsCase], before: Option<CaseRows>) {
    for case in cases {
        let (label, rows, cols) = (case.name.as_str(), case.rows, case.cols);
        if let Some(extra) = before {
            extra(h, c, label, rows, cols);
        }
        let n = rows * cols;
        let name = "softmax fwd";
        c.row(Kind::Mem, name, label, false, |ceil| {
            let gpu = h.gpu.clone();
            let mut y: DeviceBuffer<f32> = gpu.alloc_zeros(n)?;
            let work = (
                bytes::softmax_fwd(rows, cols),
                flops_per_element(name) * n as f64,
            );
            mem_row(
                h,
                (name, label),
                work,
                ceil,
                |h, s| h.f32_buf(n, s),
                |x, _| softmax::forward(&gpu, &*x, rows, cols, &mut y),
            )
        });
        let name = "softmax bwd";
        c.row(Kind::Mem, name, label, false, |ceil| {
            let gpu = h.gpu.clone();
            let mut dx: DeviceBuffer<f32> = gpu.alloc_zeros(n)?;
            let work = (
                bytes::softmax_bwd(rows, cols),
                flops_per_element(name) * n as f64,
            );
            mem_row(
                h,
                (name, label),
                work,
                ceil,
                |h, s| Ok((h.f32_buf(n, s)?, h.f32_buf(n, s + 5000)?)),
                |s: &mut (DeviceBuffer<f32>, DeviceBuffer<f32>), _| {
                    softmax::backward(&gpu, &s.0, &s.1, rows, cols, &mut dx)
                },
            )
        });
        for half in [false, true] {
            let name = if half {
                "xent fwd+bwd f16"
            } else {
                "xent fwd+bwd"
            };
            c.row(Kind::Mem, name, label, false, |ceil| {
                xent_row(h, name, label, rows, cols, half, ceil, None)
            });
        }
    }
}

/// Fused softmax-cross-entropy, f32 → f32 or f16 → f16, loss scale 65536 read on the device;
/// in the default launch shape, or a forced one (the sweep).
#[allow(clippy::too_many_arguments)]
pub fn xent_row(
    h: &mut Harness,
    name: &str,
    label: &str,
    rows: usize,
    cols: usize,
    half: bool,
    ceil: &Ceilings,
    force: Option<CeForce>,
) -> Result<Row> {
    let n = rows * cols;
    if half {
        xent_typed::<f16>(h, (name, label), rows, cols, ceil, force, |h, s| {
            h.f16_buf(n, s)
        })
    } else {
        xent_typed::<f32>(h, (name, label), rows, cols, ceil, force, |h, s| {
            h.f32_buf(n, s)
        })
    }
}

/// [`xent_row`] with logits and gradients of type `T`, input sets from `make`.
fn xent_typed<T>(
    h: &mut Harness,
    what: (&str, &str),
    rows: usize,
    cols: usize,
    ceil: &Ceilings,
    force: Option<CeForce>,
    make: impl FnMut(&Harness, u32) -> Result<DeviceBuffer<T>>,
) -> Result<Row>
where
    T: cross_entropy::Logit + cross_entropy::Grad + cudarc::driver::ValidAsZeroBits,
{
    let gpu = h.gpu.clone();
    let n = rows * cols;
    let labels = gpu.upload(&random_labels(rows, cols, 5))?;
    let scale = gpu.upload(&[65536.0f32])?;
    let mut loss: DeviceBuffer<f32> = gpu.alloc_zeros(1)?;
    let mut d: DeviceBuffer<T> = gpu.alloc_zeros(n)?;
    let elem = std::mem::size_of::<T>();
    let work = (
        bytes::xent(rows, cols, elem, elem),
        flops_per_element("xent") * n as f64,
    );
    mem_row(h, what, work, ceil, make, |x, _| match force {
        None => cross_entropy::softmax_cross_entropy::<T, T>(
            &gpu, &*x, &labels, rows, cols, &scale, &mut d, &mut loss,
        ),
        Some(f) => {
            ampkit::tuning::cross_entropy::softmax_cross_entropy_forced::<T, T, _, _, _, _, _>(
                &gpu,
                (&*x, &labels, &scale),
                rows,
                cols,
                &mut d,
                &mut loss,
                f,
            )
        }
    })
}

fn unscale_rows(h: &mut Harness, c: &mut Collector, cases: &[TensorsCase]) {
    let name = "unscale+inf check";
    for case in cases {
        let (label, sizes) = (case.name.as_str(), &case.tensors);
        c.row(Kind::Mem, name, label, false, |ceil| {
            let gpu = h.gpu.clone();
            let total: usize = sizes.iter().sum();
            // Scales 2^16 and 2^-16 in turn on each set: exact, so the data stays random.
            let down = gpu.upload(&[65536.0f32])?;
            let up = gpu.upload(&[1.0f32 / 65536.0])?;
            let mut found: DeviceBuffer<f32> = gpu.alloc_zeros(1)?;
            let k = n_sets(bytes::unscale(total), h.warmup + h.runs);
            mem_row(
                h,
                (name, label),
                (bytes::unscale(total), total as f64),
                ceil,
                |h, s| {
                    (sizes.iter().enumerate())
                        .map(|(t, &len)| h.f32_buf(len, s + 100 * t as u32))
                        .collect::<Result<Vec<_>>>()
                },
                |grads: &mut Vec<DeviceBuffer<f32>>, i| {
                    let scale = if (i / k) % 2 == 0 { &down } else { &up };
                    unscale::unscale_and_check(&gpu, grads, scale, &mut found)
                },
            )
        });
    }
}

fn cast_rows(h: &mut Harness, c: &mut Collector, cases: &[SizeCase]) {
    for case in cases {
        let (label, n) = (case.name.as_str(), case.n);
        let work = (bytes::cast(n), n as f64);
        c.row(Kind::Mem, "cast f32->f16", label, false, |ceil| {
            let gpu = h.gpu.clone();
            let mut dst: DeviceBuffer<f16> = gpu.alloc_zeros(n)?;
            mem_row(
                h,
                ("cast f32->f16", label),
                work,
                ceil,
                |h, s| h.f32_buf(n, s),
                |src, _| cast::f32_to_f16(&gpu, &*src, &mut dst),
            )
        });
        c.row(Kind::Mem, "cast f16->f32", label, false, |ceil| {
            let gpu = h.gpu.clone();
            let mut dst: DeviceBuffer<f32> = gpu.alloc_zeros(n)?;
            mem_row(
                h,
                ("cast f16->f32", label),
                work,
                ceil,
                |h, s| h.f16_buf(n, s),
                |src, _| cast::f16_to_f32(&gpu, &*src, &mut dst),
            )
        });
    }
}

fn relu_rows(h: &mut Harness, c: &mut Collector, cases: &[SizeCase]) {
    let name = "relu bwd f16";
    for case in cases {
        let (label, n) = (case.name.as_str(), case.n);
        c.row(Kind::Mem, name, label, false, |ceil| {
            let gpu = h.gpu.clone();
            let mut dx: DeviceBuffer<f16> = gpu.alloc_zeros(n)?;
            mem_row(
                h,
                (name, label),
                (bytes::relu_bwd_f16(n), n as f64),
                ceil,
                |h, s| Ok((h.f16_buf(n, s)?, h.f16_buf(n, s + 5000)?)),
                |s: &mut (DeviceBuffer<f16>, DeviceBuffer<f16>), _| {
                    relu::backward::<f16>(&gpu, &s.0, &s.1, &mut dx)
                },
            )
        });
    }
}

/// One input set of the Adam rows: the optimizer's state and the tensors it updates.
struct AdamSet {
    opt: GpuOptimizer,
    masters: Vec<DeviceBuffer<f32>>,
    grads: Vec<DeviceBuffer<f32>>,
    halves: Vec<DeviceBuffer<f16>>,
}

fn adam_rows(h: &mut Harness, c: &mut Collector, cases: &[TensorsCase]) {
    let name = "adam step";
    let cfg = OptimizerConfig::adam(1e-3);
    for case in cases {
        let (label, sizes) = (case.name.as_str(), &case.tensors);
        c.row(Kind::Mem, name, label, false, |ceil| {
            let gpu = h.gpu.clone();
            let total: usize = sizes.iter().sum();
            let clean = gpu.upload(&[0.0f32])?;
            mem_row(
                h,
                (name, label),
                (bytes::adam(total), flops_per_element("adam") * total as f64),
                ceil,
                |h, s| {
                    let buf = |t: usize, off: u32| h.f32_buf(sizes[t], s + off + 100 * t as u32);
                    Ok(AdamSet {
                        opt: GpuOptimizer::new(&h.gpu, &cfg, sizes)?,
                        masters: (0..sizes.len()).map(|t| buf(t, 0)).collect::<Result<_>>()?,
                        grads: (0..sizes.len())
                            .map(|t| buf(t, 5000))
                            .collect::<Result<_>>()?,
                        halves: (sizes.iter())
                            .map(|&len| h.gpu.alloc_zeros(len))
                            .collect::<Result<_>>()?,
                    })
                },
                |set: &mut AdamSet, _| {
                    let AdamSet {
                        opt,
                        masters,
                        grads,
                        halves,
                    } = set;
                    let mut params: Vec<GpuParamTensor<'_>> = (masters.iter_mut())
                        .zip(grads.iter())
                        .zip(halves.iter_mut())
                        .map(|((m, g), hf)| GpuParamTensor {
                            master: m.slice_mut(..),
                            grad: g.slice(..),
                            half: hf.slice_mut(..),
                        })
                        .collect();
                    opt.step(&gpu, &cfg, &mut params, &clean)
                },
            )
        });
    }
}

/// The device-side loss-scale update: one thread, so only its time is reported.
fn scaler_row(h: &mut Harness, c: &mut Collector) {
    let (name, shape) = ("loss-scale update", "1 scale + tracker");
    c.row(Kind::Mem, name, shape, false, |_| {
        let gpu = h.gpu.clone();
        let mut scale = gpu.upload(&[65536.0f32])?;
        let mut tracker: DeviceBuffer<i32> = gpu.alloc_zeros(1)?;
        let found: DeviceBuffer<f32> = gpu.alloc_zeros(1)?;
        let cfg = ScalerConfig::default();
        let us = h.median_us(true, |_| {
            scaler::update_scale(&gpu, &mut scale, &mut tracker, &found, &cfg)
        })?;
        Ok(Row::measured(Kind::Mem, name, shape, us, None, "", None))
    });
}
