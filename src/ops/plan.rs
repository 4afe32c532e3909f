//! Launch planning shared by elementwise ops: vector width and head offset from pointer alignment.

use crate::cuda::{Gpu, LaunchConfig};
use crate::error::{Error, Result};

/// Threads per block of the elementwise kernels.
pub(crate) const ELEMENTWISE_THREADS: u32 = 256;
/// Resident blocks per SM at 256 threads (2048 threads per SM on sm_80 and sm_90).
const BLOCKS_PER_SM: usize = 8;

/// How an elementwise kernel covers `n` elements: `width` elements per vector access after a
/// scalar `head` that brings every pointer to vector alignment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct VectorPlan {
    pub width: usize,
    pub head: usize,
}

/// A device pointer an elementwise kernel touches: its address and element size in bytes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Operand {
    pub addr: u64,
    pub elem_bytes: usize,
}

/// Picks the widest of `widths` (descending) for which one head offset `h < width` aligns every
/// operand to min(16, elem_bytes · width) bytes. Width 1 always fits an element-aligned pointer.
pub(crate) fn vector_plan(
    op: &'static str,
    operands: &[Operand],
    widths: &[usize],
) -> Result<VectorPlan> {
    for o in operands {
        if o.addr % o.elem_bytes as u64 != 0 {
            return Err(Error::InvalidArgument {
                op,
                detail: format!(
                    "device address {:#x} is not aligned to its {}-byte element type",
                    o.addr, o.elem_bytes
                ),
            });
        }
    }
    for &width in widths {
        for head in 0..width {
            let aligned = operands.iter().all(|o| {
                let align = (o.elem_bytes * width).min(16) as u64;
                (o.addr + (o.elem_bytes * head) as u64) % align == 0
            });
            if aligned {
                return Ok(VectorPlan { width, head });
            }
        }
    }
    Ok(VectorPlan { width: 1, head: 0 })
}

/// A grid-stride launch that gives every vector pack (and the < width head and tail elements)
/// a thread, capped at one full wave of resident blocks.
pub(crate) fn elementwise_launch(gpu: &Gpu, n: usize, plan: VectorPlan) -> LaunchConfig {
    let packs = n.saturating_sub(plan.head) / plan.width;
    let threads_needed = packs.max(plan.width);
    let blocks = threads_needed.div_ceil(ELEMENTWISE_THREADS as usize);
    let cap = gpu.info().multiprocessors.max(1) * BLOCKS_PER_SM;
    LaunchConfig::linear(blocks.min(cap) as u32, ELEMENTWISE_THREADS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f32_at(addr: u64) -> Operand {
        Operand {
            addr,
            elem_bytes: 4,
        }
    }
    fn f16_at(addr: u64) -> Operand {
        Operand {
            addr,
            elem_bytes: 2,
        }
    }

    #[test]
    fn same_offset_gets_full_width() {
        // f32 element 3 and f16 element 3 of 256-aligned allocations: 5 more elements align both.
        let p = vector_plan(
            "t",
            &[f32_at(0x1000 + 12), f16_at(0x2000 + 6)],
            &[8, 4, 2, 1],
        )
        .unwrap();
        assert_eq!(p, VectorPlan { width: 8, head: 5 });
    }

    #[test]
    fn mismatched_offsets_fall_back() {
        // f32 at element 1, f16 at element 0: no h < 8 aligns both to 16 bytes.
        let p = vector_plan("t", &[f32_at(0x1004), f16_at(0x2000)], &[8, 4, 2, 1]).unwrap();
        assert!(p.width < 8);
        for o in [f32_at(0x1004), f16_at(0x2000)] {
            let align = (o.elem_bytes * p.width).min(16) as u64;
            assert_eq!((o.addr + (o.elem_bytes * p.head) as u64) % align, 0);
        }
    }

    #[test]
    fn misaligned_element_is_an_error() {
        let e = vector_plan("t", &[f32_at(0x1002)], &[4, 1]).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
    }
}
