//! The optimizer kernel's by-value arguments, with the C layouts of `kernels/optim.cu`: the
//! per-launch tensor table, the Adam/SGD hyperparameters and the learning-rate schedule; and the
//! planning of one launch's table.

use crate::cpu::optim::{AdamCoefficients, AdamConfig, OptimizerConfig};
use crate::cpu::schedule::LrSchedule;
use crate::error::{Error, Result};
use cudarc::driver::DeviceRepr;

/// Tensors per launch: the argument table must fit the 4 KB kernel-parameter limit.
pub(super) const MAX_TENSORS: usize = 74;

/// The kernel's argument table, passed by value (`TensorTable` in `kernels/optim.cu`): per-tensor
/// pointers and lengths, and the working copies' type for the whole launch.
#[repr(C)]
#[derive(Clone, Copy)]
pub(super) struct TensorTable {
    master: [u64; MAX_TENSORS],
    grad: [u64; MAX_TENSORS],
    half: [u64; MAX_TENSORS],
    exp_avg: [u64; MAX_TENSORS],
    exp_avg_sq: [u64; MAX_TENSORS],
    len: [i64; MAX_TENSORS],
    chunk_start: [i32; MAX_TENSORS + 1],
    count: i32,
    /// `HalfCopy`'s device code: 0 f16, 1 bf16.
    copy_kind: i32,
    unused: i32,
}

/// `AdamHyper` in `kernels/optim.cu`: f64 inputs of the bias correction, then the
/// step-independent f32 coefficients.
#[repr(C)]
#[derive(Clone, Copy)]
pub(super) struct AdamHyper {
    lr: f64,
    beta1: f64,
    beta2: f64,
    beta1_f: f32,
    one_minus_beta1: f32,
    beta2_f: f32,
    one_minus_beta2: f32,
    eps: f32,
    l2: f32,
    decay: f32,
    unused: f32,
}

/// `SgdHyper` in `kernels/optim.cu`.
#[repr(C)]
#[derive(Clone, Copy)]
pub(super) struct SgdHyper {
    pub(super) lr: f32,
    pub(super) momentum: f32,
    pub(super) one_minus_dampening: f32,
    pub(super) weight_decay: f32,
    pub(super) nesterov: i32,
    pub(super) unused: i32,
}

/// `Schedule` in `kernels/optim.cu`: the learning-rate schedule, evaluated on the device from the
/// step counter.
#[repr(C)]
#[derive(Clone, Copy)]
pub(super) struct Schedule {
    base_lr: f64,
    min_lr: f64,
    decoupled_wd: f64,
    total: u64,
    kind: i32,
    unused: i32,
}

impl Schedule {
    pub(super) fn new(cfg: &OptimizerConfig, schedule: &LrSchedule) -> Schedule {
        let (kind, total, min_lr) = schedule.device_params();
        let (base_lr, decoupled_wd) = match cfg {
            OptimizerConfig::Adam(c) => (c.lr, 0.0),
            OptimizerConfig::AdamW(c) => (c.lr, c.weight_decay),
            OptimizerConfig::Sgd(c) => (c.lr, 0.0),
        };
        Schedule {
            base_lr,
            min_lr,
            decoupled_wd,
            total,
            kind,
            unused: 0,
        }
    }
}

/// Mirrors `GradClip` in `kernels/optim.cu`: the clip factor's address (0: none) and the
/// clip value (≤ 0: none), applied to each gradient as the optimizer loads it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct GradClip {
    pub coef: u64,
    pub value: f32,
    pub unused: i32,
}

// The table, the larger hyperparameter struct, the schedule, counters, found_inf, the clipping,
// chunk and final_launch must fit the 4 KB of kernel parameters.
const _: () = assert!(
    std::mem::size_of::<TensorTable>()
        + std::mem::size_of::<AdamHyper>()
        + std::mem::size_of::<Schedule>()
        + 8
        + 8
        + std::mem::size_of::<GradClip>()
        + 8
        + 4
        <= 4096
);

// SAFETY: plain old data with the kernel's C layout; every field is initialised and none of
// the three has padding (3864 = 483·8 bytes, 24 + 8·4 bytes, 6·4 bytes).
unsafe impl DeviceRepr for TensorTable {}
// SAFETY: see above.
unsafe impl DeviceRepr for AdamHyper {}
// SAFETY: see above.
unsafe impl DeviceRepr for SgdHyper {}
// SAFETY: plain old data with the kernel's C layout: 3·8 + 8 + 2·4 bytes, no padding.
unsafe impl DeviceRepr for Schedule {}
// SAFETY: plain old data with the kernel's C layout: 8 + 4 + 4 bytes, no padding.
unsafe impl DeviceRepr for GradClip {}

impl AdamHyper {
    pub(super) fn new(cfg: &AdamConfig, decoupled: bool) -> AdamHyper {
        // The step-independent coefficients are the reference's own; only step_size and
        // bias_correction2_sqrt depend on t, and the kernel forms those from lr, beta1, beta2.
        let k = AdamCoefficients::new(cfg, decoupled, 1);
        AdamHyper {
            lr: cfg.lr,
            beta1: cfg.beta1,
            beta2: cfg.beta2,
            beta1_f: k.beta1,
            one_minus_beta1: k.one_minus_beta1,
            beta2_f: k.beta2,
            one_minus_beta2: k.one_minus_beta2,
            eps: k.eps,
            l2: k.l2,
            decay: k.decay,
            unused: 0.0,
        }
    }
}

#[derive(Clone, Copy)]
pub(super) enum Hyper {
    Adam(AdamHyper),
    Sgd(SgdHyper),
}

/// One launch's table and block count. Entries are `[master, grad, half, m, v, len]`;
/// `copy_kind` is the halves' device code (`HalfCopy`).
pub(super) fn table(
    op: &'static str,
    batch: &[[u64; 6]],
    chunk: usize,
    copy_kind: i32,
) -> Result<(TensorTable, u32)> {
    let mut table = TensorTable {
        master: [0; MAX_TENSORS],
        grad: [0; MAX_TENSORS],
        half: [0; MAX_TENSORS],
        exp_avg: [0; MAX_TENSORS],
        exp_avg_sq: [0; MAX_TENSORS],
        len: [0; MAX_TENSORS],
        chunk_start: [0; MAX_TENSORS + 1],
        count: batch.len() as i32,
        copy_kind,
        unused: 0,
    };
    let mut chunks = 0usize;
    for (i, &[master, grad, half, m, v, len]) in batch.iter().enumerate() {
        table.master[i] = master;
        table.grad[i] = grad;
        table.half[i] = half;
        table.exp_avg[i] = m;
        table.exp_avg_sq[i] = v;
        table.len[i] = len as i64;
        table.chunk_start[i] = chunks as i32;
        chunks += (len as usize).div_ceil(chunk);
        if chunks > i32::MAX as usize {
            return Err(Error::InvalidArgument {
                op,
                detail: format!(
                    "{chunks} chunks of {chunk} elements exceed one launch; split the tensors"
                ),
            });
        }
    }
    table.chunk_start[batch.len()] = chunks as i32;
    Ok((table, chunks.max(1) as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argument_structs_have_the_kernel_sizes() {
        // The kernel header's layouts: 6 arrays of 74 eight-byte fields, 75 + 3 ints.
        assert_eq!(std::mem::size_of::<TensorTable>(), 3864);
        assert_eq!(std::mem::size_of::<AdamHyper>(), 56);
        assert_eq!(std::mem::size_of::<SgdHyper>(), 24);
    }

    #[test]
    fn tables_count_chunks_per_tensor() {
        let entries = [[16, 32, 64, 0, 0, 1], [16, 32, 64, 0, 0, 2049], [0; 6]];
        let (t, blocks) = table("t", &entries[..2], 1024, 1).unwrap();
        assert_eq!((t.count, blocks, t.copy_kind), (2, 4, 1));
        assert_eq!(&t.chunk_start[..3], &[0, 1, 4]);
        let (t, blocks) = table("t", &[], 1024, 0).unwrap();
        assert_eq!(
            (t.count, blocks),
            (0, 1),
            "an empty step still runs one block"
        );
    }
}
