//! Training inputs gathered from a dataset with a shift per sample: the CPU reference of
//! [`crate::ops::augment`], and the path the CPU training backend takes.
//!
//! Sample `i` of the output is image `order[i]` of `images` (each `inputs` values, row-major on a
//! `side × side` grid), shifted by `dx = shifts[2i]` columns and `dy = shifts[2i + 1]` rows:
//! output pixel `(r, c)` is source pixel `(r − dy, c − dx)` where that lies on the grid, else
//! `background`. `side = 0` means no shift (a plain gather, for inputs that are not square
//! images). Values are copied, never computed, then rounded once to the output type (f16 or bf16:
//! to nearest even, `half`'s `from_f32`), so the GPU kernel matches this bit for bit.
//!
//! # Accepted arguments
//!
//! `inputs ≥ 1`; `side = 0` or `side² = inputs`; `images` whole images; `shifts` two values per
//! sample; `out` `samples·inputs` values; every `order` entry below the number of images. Checked
//! before anything is written: a wrong length is [`Error::ShapeMismatch`], the rest
//! [`Error::InvalidArgument`].

use crate::cpu::Element;
use crate::error::{Error, Result};
use crate::validate;
use rayon::prelude::*;

/// Below this many output values the work stays on the calling thread.
const PARALLEL_MIN: usize = 1 << 16;

/// Writes `out[i] =` image `order[i]` shifted by `(shifts[2i], shifts[2i + 1])` (see the
/// [module docs](self)), rounded once to `T`.
///
/// ```
/// // Two 2×2 images; sample 0 is image 1 shifted one column right, sample 1 image 0 as is.
/// let images = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0];
/// let mut out = [f32::NAN; 8];
/// ampkit::cpu::augment::gather_shifted(&images, 4, 2, &[1, 0], &[1, 0, 0, 0], 0.0, &mut out)?;
/// assert_eq!(out, [0.0, 5.0, 0.0, 7.0, 1.0, 2.0, 3.0, 4.0]);
/// # Ok::<(), ampkit::Error>(())
/// ```
pub fn gather_shifted<T: Element>(
    images: &[f32],
    inputs: usize,
    side: usize,
    order: &[u32],
    shifts: &[i32],
    background: f32,
    out: &mut [T],
) -> Result<()> {
    const OP: &str = "cpu::augment::gather_shifted";
    let lens = [images.len(), order.len(), shifts.len(), out.len()];
    let (_, count) = validate::augment::check(OP, inputs, side, lens)?;
    if let Some(i) = order.iter().position(|&s| s as usize >= count) {
        return Err(Error::InvalidArgument {
            op: OP,
            detail: format!(
                "sample {i} asks for image {}, but there are {count} images",
                order[i]
            ),
        });
    }
    let sample = |(i, dst): (usize, &mut [T])| {
        let src = &images[order[i] as usize * inputs..][..inputs];
        if side == 0 {
            for (d, &v) in dst.iter_mut().zip(src) {
                *d = T::from_f32(v);
            }
            return;
        }
        let (dx, dy) = (i64::from(shifts[2 * i]), i64::from(shifts[2 * i + 1]));
        let n = side as i64;
        for (p, d) in dst.iter_mut().enumerate() {
            let (r, c) = ((p / side) as i64 - dy, (p % side) as i64 - dx);
            let inside = (0..n).contains(&r) && (0..n).contains(&c);
            *d = T::from_f32(if inside {
                src[(r * n + c) as usize]
            } else {
                background
            });
        }
    };
    if out.len() < PARALLEL_MIN {
        out.chunks_mut(inputs).enumerate().for_each(sample);
    } else {
        out.par_chunks_mut(inputs).enumerate().for_each(sample);
    }
    Ok(())
}
