//! GEMM on the CPU: f16 (or f32) operands, f32 accumulation, the three layouts of an MLP, fused
//! epilogues. The reference for the tensor-core GEMM and the CPU training backend's workhorse.
//!
//! Operands are read in place in the layouts of [`crate::shape::Layout`] (the table of operand
//! shapes is in [`crate::shape`]); the output is always `C[m, n]`, contracted over `k`.
//!
//! Epilogue, per element, in the accumulator's precision: `v = alpha·acc`, then `v += bias[j]`
//! (a bias per output column), then `v += beta·C_old` (only when `beta ≠ 0`: with `beta = 0` the
//! old contents are never read, so poison or NaN there cannot leak in), then `relu(v)`
//! (`max(v, 0)`, NaN kept), then one rounding to the output type (nearest even).
//!
//! f16 operands are widened to f32 exactly, so every product is exact and only the f32 sums
//! round; the order of those sums differs from the GPU's, which the parity tests' tolerances
//! cover. The f32 accumulation is deliberate (unlike the f64 row sums of
//! [`crate::cpu::layernorm`] and [`crate::cpu::softmax`]): it is the tensor cores' precision,
//! which the CPU training backend reproduces. [`gemm_f64`] runs the same layouts and epilogue
//! entirely in f64: the reference for tolerance checks and the function gradient checks
//! differentiate.
//!
//! The products run through `matrixmultiply` (packed, SIMD, runtime CPU detection), one call
//! per block of output rows, blocks spread over rayon's threads.

use crate::cpu::relu::relu;
use crate::cpu::Element;
use crate::error::Result;
use crate::shape::{GemmShape, Layout};
use crate::validate;
use rayon::prelude::*;

/// What happens to the product before it is stored; see the module doc for the order.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Epilogue<'a> {
    /// Scales the product.
    pub alpha: f32,
    /// Scales the old contents of C, added to the result; 0 means C is write-only.
    pub beta: f32,
    /// One value per output column (`n` of them), added to every row.
    pub bias: Option<&'a [f32]>,
    /// Applies ReLU last.
    pub relu: bool,
}

impl Default for Epilogue<'_> {
    fn default() -> Self {
        Epilogue {
            alpha: 1.0,
            beta: 0.0,
            bias: None,
            relu: false,
        }
    }
}

impl<'a> Epilogue<'a> {
    /// `C = A·B` with nothing else.
    pub fn plain() -> Self {
        Self::default()
    }

    /// `C = relu?(A·B + bias)`: a linear layer's forward.
    pub fn bias(bias: &'a [f32], relu: bool) -> Self {
        Epilogue {
            bias: Some(bias),
            relu,
            ..Self::default()
        }
    }

    /// `C += A·B`: gradient accumulation.
    pub fn accumulate() -> Self {
        Epilogue {
            beta: 1.0,
            ..Self::default()
        }
    }
}

/// `C[m, n] = epilogue(A·B)` with f16 or f32 operands and f32 accumulation; output f16 or f32.
///
/// Against [`gemm_f64`] on the same (f16-valued) inputs the error is the f32 summation's, about
/// `√k·2⁻²⁴` of the terms' magnitude, plus the output rounding (half an f16 ulp for f16 output).
///
/// Errors: [`Error::ShapeMismatch`] when a slice's length is not what `layout`, `m`, `n`, `k`
/// imply, or the bias does not have `n` elements; nothing is written then. Zero-sized dimensions
/// are allowed (`k = 0` gives `epilogue(0)`).
///
/// ```
/// use ampkit::check::{compare, Tolerance};
/// use ampkit::cpu::gemm::{gemm, gemm_f64, Epilogue};
/// use ampkit::shape::{GemmShape, Layout};
/// use ampkit::f16;
/// // A linear layer's forward, Y = relu(X·Wᵀ + b): X [2, 3], W [4, 3], b [4], Y [2, 4].
/// let x: Vec<f16> = [1.0, 2.0, 3.0, -1.0, 0.5, 0.25].map(f16::from_f32).to_vec();
/// let w: Vec<f16> = (0..12).map(|i| f16::from_f32(i as f32 / 8.0 - 0.5)).collect();
/// let b = [0.1f32, 0.0, -0.1, 0.2];
/// let shape = GemmShape::new(Layout::Forward, 2, 4, 3);
/// let mut y = vec![0f32; 8];
/// gemm(shape, &x, &w, &Epilogue::bias(&b, true), &mut y)?;
/// // The all-f64 twin is the reference a tolerance is checked against.
/// let wide = |v: &[f16]| v.iter().map(|h| h.to_f64()).collect::<Vec<f64>>();
/// let mut want = vec![0f64; 8];
/// gemm_f64(shape, &wide(&x), &wide(&w), &Epilogue::bias(&b, true), &mut want)?;
/// let report = compare(&y, &want, Tolerance::new(1e-6, 1e-6));
/// assert!(report.passed(), "{report}");
/// # Ok::<(), ampkit::Error>(())
/// ```
///
/// [`Error::ShapeMismatch`]: crate::Error::ShapeMismatch
pub fn gemm<A: Element, C: Element>(
    shape: GemmShape,
    a: &[A],
    b: &[A],
    epilogue: &Epilogue,
    c: &mut [C],
) -> Result<()> {
    validate::gemm::gemm(
        "cpu::gemm::gemm",
        shape,
        [a.len(), b.len(), c.len()],
        epilogue.bias.map(<[f32]>::len),
    )?;
    let GemmShape { layout, m, n, k } = shape;
    let a32 = widen_f32(a);
    let b32 = widen_f32(b);
    let acc = product::<f32>(layout, m, n, k, &a32, &b32);
    let bias = epilogue.bias;
    let (alpha, beta) = (epilogue.alpha, epilogue.beta);
    apply_epilogue(c, n, |i, j, old: C| {
        let mut v = alpha * acc[i * n + j];
        if let Some(bias) = bias {
            v += bias[j];
        }
        if beta != 0.0 {
            v += beta * old.to_f32();
        }
        C::from_f32(if epilogue.relu { relu(v) } else { v })
    });
    Ok(())
}

/// [`gemm`] entirely in f64 (operands, accumulation, epilogue, output): the high-precision
/// reference, and the function gradient checks differentiate. Errors as [`gemm`].
pub fn gemm_f64(
    shape: GemmShape,
    a: &[f64],
    b: &[f64],
    epilogue: &Epilogue,
    c: &mut [f64],
) -> Result<()> {
    validate::gemm::gemm(
        "cpu::gemm::gemm_f64",
        shape,
        [a.len(), b.len(), c.len()],
        epilogue.bias.map(<[f32]>::len),
    )?;
    let GemmShape { layout, m, n, k } = shape;
    let acc = product::<f64>(layout, m, n, k, a, b);
    let bias = epilogue.bias;
    let (alpha, beta) = (f64::from(epilogue.alpha), f64::from(epilogue.beta));
    apply_epilogue(c, n, |i, j, old: f64| {
        let mut v = alpha * acc[i * n + j];
        if let Some(bias) = bias {
            v += f64::from(bias[j]);
        }
        if beta != 0.0 {
            v += beta * old;
        }
        // relu in f64 with the same rule as the f32 one: NaN stays, everything ≤ 0 becomes +0.
        if epilogue.relu && !(v > 0.0 || v.is_nan()) {
            0.0
        } else {
            v
        }
    });
    Ok(())
}

/// Bias gradient: `db[j] = Σ_i dy[i, j]` over the `rows` of a `[rows, cols]` gradient, summed in
/// f64 row by row (the same result on any number of threads), rounded once to `D`. `db` is
/// overwritten.
///
/// Errors: [`Error::ShapeMismatch`] unless `dy` has `rows·cols` elements and `db` has `cols`.
///
/// [`Error::ShapeMismatch`]: crate::Error::ShapeMismatch
pub fn bias_grad<G: Element, D: Element>(
    dy: &[G],
    rows: usize,
    cols: usize,
    db: &mut [D],
) -> Result<()> {
    validate::gemm::bias_grad("cpu::gemm::bias_grad", rows, cols, dy.len(), db.len())?;
    // Column blocks: each thread sums its columns over every row, in row order.
    const COLS_PER_TASK: usize = 64;
    db.par_chunks_mut(COLS_PER_TASK)
        .enumerate()
        .for_each(|(block, out)| {
            let j0 = block * COLS_PER_TASK;
            let mut sums = vec![0.0f64; out.len()];
            for row in dy.chunks_exact(cols.max(1)).take(rows) {
                for (s, v) in sums.iter_mut().zip(&row[j0..j0 + out.len()]) {
                    *s += v.to_f64();
                }
            }
            for (o, s) in out.iter_mut().zip(sums) {
                *o = D::from_f64(s);
            }
        });
    Ok(())
}

/// Strides (row, column) of the logical `A[m,k]` and `B[k,n]` inside the stored operands.
fn logical_strides(layout: Layout, m: usize, n: usize, k: usize) -> [(isize, isize); 2] {
    let (m, n, k) = (m as isize, n as isize, k as isize);
    match layout {
        Layout::Forward => [(k, 1), (1, k)],
        Layout::Dgrad => [(k, 1), (n, 1)],
        Layout::Wgrad => [(1, m), (n, 1)],
    }
}

fn widen_f32<T: Element>(x: &[T]) -> Vec<f32> {
    x.par_iter()
        .with_min_len(1 << 14)
        .map(|v| v.to_f32())
        .collect()
}

/// Calls into matrixmultiply for f32 and f64.
trait Accumulator: Copy + Default + Send + Sync + 'static {
    /// `C[m,n] = A[m,k]·B[k,n]` with arbitrary strides, C row-major with row stride `ldc`.
    ///
    /// # Safety
    /// Every element addressed by the shapes and strides must lie inside the allocations.
    #[allow(clippy::too_many_arguments)]
    unsafe fn mm(
        m: usize,
        k: usize,
        n: usize,
        a: *const Self,
        a_strides: (isize, isize),
        b: *const Self,
        b_strides: (isize, isize),
        c: *mut Self,
        ldc: isize,
    );
}

impl Accumulator for f32 {
    unsafe fn mm(
        m: usize,
        k: usize,
        n: usize,
        a: *const f32,
        (rsa, csa): (isize, isize),
        b: *const f32,
        (rsb, csb): (isize, isize),
        c: *mut f32,
        ldc: isize,
    ) {
        // SAFETY: forwarded from the caller.
        unsafe { matrixmultiply::sgemm(m, k, n, 1.0, a, rsa, csa, b, rsb, csb, 0.0, c, ldc, 1) }
    }
}

impl Accumulator for f64 {
    unsafe fn mm(
        m: usize,
        k: usize,
        n: usize,
        a: *const f64,
        (rsa, csa): (isize, isize),
        b: *const f64,
        (rsb, csb): (isize, isize),
        c: *mut f64,
        ldc: isize,
    ) {
        // SAFETY: forwarded from the caller.
        unsafe { matrixmultiply::dgemm(m, k, n, 1.0, a, rsa, csa, b, rsb, csb, 0.0, c, ldc, 1) }
    }
}

/// Fewest output rows a thread is given: below this, packing overhead beats the parallelism.
const MIN_ROWS_PER_TASK: usize = 16;

/// `A·B` as a row-major `[m, n]` accumulator. Shapes were checked by the caller.
fn product<T: Accumulator>(
    layout: Layout,
    m: usize,
    n: usize,
    k: usize,
    a: &[T],
    b: &[T],
) -> Vec<T> {
    let mut acc = vec![T::default(); m * n];
    if m == 0 || n == 0 || k == 0 {
        return acc;
    }
    let [sa, sb] = logical_strides(layout, m, n, k);
    // Split C into blocks of whole rows, enough blocks to keep every thread busy.
    let tasks = rayon::current_num_threads() * 2;
    let rows_per_task = m.div_ceil(tasks).max(MIN_ROWS_PER_TASK);
    acc.par_chunks_mut(rows_per_task * n)
        .enumerate()
        .for_each(|(t, block)| {
            let i0 = t * rows_per_task;
            let rows = block.len() / n;
            // SAFETY: validate::gemm established a.len() and b.len() for (layout, m, n, k), and
            // logical_strides addresses exactly those elements; rows i0..i0+rows of A start at
            // offset i0·rsa; the block holds rows×n elements with row stride n.
            unsafe {
                T::mm(
                    rows,
                    k,
                    n,
                    a.as_ptr().offset(i0 as isize * sa.0),
                    sa,
                    b.as_ptr(),
                    sb,
                    block.as_mut_ptr(),
                    n as isize,
                )
            }
        });
    acc
}

/// Writes `c[i, j] = f(i, j, c[i, j])` over a row-major `[_, n]` output, rows in parallel.
fn apply_epilogue<C: Element>(c: &mut [C], n: usize, f: impl Fn(usize, usize, C) -> C + Sync) {
    if n == 0 {
        return;
    }
    c.par_chunks_mut(n)
        .with_min_len(64)
        .enumerate()
        .for_each(|(i, row)| {
            for (j, v) in row.iter_mut().enumerate() {
                *v = f(i, j, *v);
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_layouts_by_hand() {
        // X = [[1,2],[3,4]], W = [[5,6],[7,8]] ([out=2, in=2]).
        let x = [1.0, 2.0, 3.0, 4.0];
        let w = [5.0, 6.0, 7.0, 8.0];
        let mut y = [0.0; 4];
        gemm_f64(
            GemmShape::new(Layout::Forward, 2, 2, 2),
            &x,
            &w,
            &Epilogue::plain(),
            &mut y,
        )
        .unwrap();
        assert_eq!(y, [17.0, 23.0, 39.0, 53.0]); // X·Wᵀ
        gemm_f64(
            GemmShape::new(Layout::Dgrad, 2, 2, 2),
            &x,
            &w,
            &Epilogue::plain(),
            &mut y,
        )
        .unwrap();
        assert_eq!(y, [19.0, 22.0, 43.0, 50.0]); // X·W
        gemm_f64(
            GemmShape::new(Layout::Wgrad, 2, 2, 2),
            &x,
            &w,
            &Epilogue::plain(),
            &mut y,
        )
        .unwrap();
        assert_eq!(y, [26.0, 30.0, 38.0, 44.0]); // Xᵀ·W
    }

    #[test]
    fn epilogue_order_bias_beta_relu() {
        let bias = [10.0f32, -100.0];
        let epi = Epilogue {
            alpha: 2.0,
            beta: 1.0,
            bias: Some(&bias),
            relu: true,
        };
        let mut c = [1.0f32, 1.0];
        // A = [[1]], B = [[3],[4]] (Forward: [n=2, k=1]) → acc = [3, 4].
        gemm(
            GemmShape::new(Layout::Forward, 1, 2, 1),
            &[1.0f32],
            &[3.0, 4.0],
            &epi,
            &mut c,
        )
        .unwrap();
        assert_eq!(c, [2.0 * 3.0 + 10.0 + 1.0, 0.0]);
    }

    #[test]
    fn shape_errors_name_the_operand() {
        let e = gemm(
            GemmShape::new(Layout::Dgrad, 2, 3, 4),
            &[0f32; 8],
            &[0f32; 11],
            &Epilogue::plain(),
            &mut [0f32; 6],
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("B has 11 elements, the shape needs 4×3"),
            "{e}"
        );
        let bias = [0f32; 2];
        let e = gemm(
            GemmShape::new(Layout::Forward, 2, 3, 4),
            &[0f32; 8],
            &[0f32; 12],
            &Epilogue::bias(&bias, false),
            &mut [0f32; 6],
        )
        .unwrap_err();
        assert!(e.to_string().contains("bias"), "{e}");
    }
}
