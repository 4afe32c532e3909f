//! FP8 (E4M3, E5M2) quantize, cast + transpose and dequantize on the CPU, reference for
//! [`crate::ops::fp8`]; and the delayed-scaling recipe's per-tensor state ([`ScalingState`]:
//! amax history, scale update).
//!
//! The conversion is the `float8` crate's, a port of `cuda_fp8.hpp`: round to nearest even with
//! saturation to the largest finite value (E4M3 ±448, E5M2 ±57344, infinities included), f32
//! subnormals to ±0, FP8 subnormals produced. A NaN becomes 0x7F, `cuda_fp8.hpp`'s canonical NaN
//! (which drops the sign); dequantizing an FP8 NaN gives the f32 NaN 0x7FFFFFFF.
//!
//! ```
//! use ampkit::cpu::fp8::{quantize, dequantize, Fp8Format};
//! let mut q = [0u8; 3];
//! // amax is taken before the scale: 1000; 1000·0.5 = 500 saturates to 448.
//! let amax = quantize(Fp8Format::E4M3, &[1.0, -1000.0, 0.3], 0.5, &mut q)?;
//! assert_eq!(amax, 1000.0);
//! let mut y = [0f32; 3];
//! dequantize(Fp8Format::E4M3, &q, 2.0, &mut y)?;
//! assert_eq!(y, [1.0, -896.0, 0.3125]); // 0.15 rounds to 0.15625 in E4M3
//! # Ok::<(), ampkit::Error>(())
//! ```

use crate::error::{expect_len, same_len, Error, Result};
use float8::{F8E4M3, F8E5M2};
use half::bf16;
use rayon::prelude::*;

/// The two FP8 formats of the H100's tensor cores (OCP FP8): E4M3 (4 exponent bits, 3 mantissa
/// bits, max 448, no infinities) for forward tensors, E5M2 (max 57344) for gradients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fp8Format {
    /// 4 exponent bits, 3 mantissa bits: ±448, 2^-9 the smallest subnormal.
    E4M3,
    /// 5 exponent bits, 2 mantissa bits: ±57344, 2^-16 the smallest subnormal.
    E5M2,
}

impl Fp8Format {
    /// The largest finite value.
    pub fn max(self) -> f32 {
        match self {
            Fp8Format::E4M3 => 448.0,
            Fp8Format::E5M2 => 57344.0,
        }
    }

    /// `x` rounded to this format (nearest even, saturating), as its bit pattern.
    pub fn encode(self, x: f32) -> u8 {
        if x.is_nan() {
            return 0x7F;
        }
        match self {
            Fp8Format::E4M3 => F8E4M3::from_f32(x).to_bits(),
            Fp8Format::E5M2 => F8E5M2::from_f32(x).to_bits(),
        }
    }

    /// The value of the bit pattern `bits` (exact; NaN as 0x7FFFFFFF).
    pub fn decode(self, bits: u8) -> f32 {
        let v = match self {
            Fp8Format::E4M3 => F8E4M3::from_bits(bits).to_f32(),
            Fp8Format::E5M2 => F8E5M2::from_bits(bits).to_f32(),
        };
        if v.is_nan() {
            f32::from_bits(0x7FFF_FFFF)
        } else {
            v
        }
    }
}

/// `q[i] = fp8(x[i]·scale)` (one f32 multiply, then [`Fp8Format::encode`]); returns
/// `max |x[i]|` before scaling (0 for an empty `x`; a NaN's magnitude when `x` holds one: the
/// largest bit pattern, as the GPU's atomic max on the bits finds it). Errors:
/// [`Error::ShapeMismatch`] unless the lengths agree.
pub fn quantize(format: Fp8Format, x: &[f32], scale: f32, q: &mut [u8]) -> Result<f32> {
    same_len("cpu::fp8::quantize", x.len(), q.len())?;
    q.par_iter_mut()
        .zip(x.par_iter())
        .for_each(|(o, &v)| *o = format.encode(v * scale));
    let bits = x
        .par_iter()
        .map(|v| v.to_bits() & 0x7FFF_FFFF)
        .max()
        .unwrap_or(0);
    Ok(f32::from_bits(bits))
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for half::bf16 {}
}

/// An element type the FP8 casts read ([`cast_transpose`], `ops::fp8::cast_transpose`): f32, or
/// bf16 widened exactly to f32.
pub trait CastInput: Copy + Send + Sync + sealed::Sealed {
    /// The value as f32, exactly: a bf16's bits shifted up 16, NaN payloads as they are (`half`'s
    /// `to_f32` sets a NaN's quiet bit; the amax of a NaN tensor is its largest bit pattern, so
    /// the widening must be the GPU's, which is the shift).
    fn widen(self) -> f32;
}

impl CastInput for f32 {
    fn widen(self) -> f32 {
        self
    }
}

impl CastInput for bf16 {
    fn widen(self) -> f32 {
        f32::from_bits(u32::from(self.to_bits()) << 16)
    }
}

/// The row pitch of a transposed FP8 copy of a matrix with `rows` rows: `rows` rounded up to a
/// multiple of 16 (the FP8 GEMM reads its operands through TMA, whose row pitch must be a
/// multiple of 16 bytes); `None` when that overflows.
pub fn transpose_ld(rows: usize) -> Option<usize> {
    rows.checked_next_multiple_of(16)
}

/// `(rows·cols, ld, cols·ld)` of a cast + transpose, or [`Error::InvalidArgument`] when a size
/// overflows.
pub(crate) fn cast_transpose_sizes(
    op: &'static str,
    rows: usize,
    cols: usize,
) -> Result<(usize, usize, usize)> {
    let overflow = |what: &str| Error::InvalidArgument {
        op,
        detail: format!("{what} overflows usize (rows = {rows}, cols = {cols})"),
    };
    let n = rows
        .checked_mul(cols)
        .ok_or_else(|| overflow("rows·cols"))?;
    let ld = transpose_ld(rows).ok_or_else(|| overflow("rows rounded up to 16"))?;
    let nt = cols.checked_mul(ld).ok_or_else(|| overflow("cols·ld"))?;
    Ok((n, ld, nt))
}

/// Tile width of [`cast_transpose`]'s transposed writes (columns of `src` per task).
const TRANSPOSE_BLOCK: usize = 64;

/// The cast + transpose of delayed-scaling training: for `src` `[rows, cols]` row-major,
/// `q[r·cols + c] = fp8(src[r·cols + c]·scale)` (as [`quantize`], the source widened exactly by
/// [`CastInput::widen`]) when `q` is given, and the transposed copy `qt[c·ld + r] = q[r·cols +
/// c]` for `r < rows`, `0x00` for `rows ≤ r < ld`, where `ld` = [`transpose_ld`]`(rows)`. Returns
/// `max |src|` before scaling, as [`quantize`] does (0 when empty; a NaN's largest bit pattern).
///
/// Errors: [`Error::ShapeMismatch`] unless `src` and `q` hold `rows·cols` elements and `qt`
/// `cols·ld`; [`Error::InvalidArgument`] when a size overflows.
///
/// ```
/// use ampkit::cpu::fp8::{cast_transpose, Fp8Format};
/// let src = [1.0f32, 2.0, 3.0, -4.0, 5.0, 6.0]; // [2, 3]
/// let (mut q, mut qt) = ([0u8; 6], [0xAAu8; 3 * 16]); // ld = 16
/// let amax = cast_transpose(Fp8Format::E4M3, &src, 2, 3, 1.0, Some(&mut q), &mut qt)?;
/// assert_eq!(amax, 6.0);
/// let e = |x| Fp8Format::E4M3.encode(x);
/// assert_eq!(&qt[16..18], [e(2.0), e(5.0)]); // column 1 of q
/// assert!(qt[18..32].iter().all(|&b| b == 0)); // its padding
/// # Ok::<(), ampkit::Error>(())
/// ```
pub fn cast_transpose<T: CastInput>(
    format: Fp8Format,
    src: &[T],
    rows: usize,
    cols: usize,
    scale: f32,
    q: Option<&mut [u8]>,
    qt: &mut [u8],
) -> Result<f32> {
    const OP: &str = "cpu::fp8::cast_transpose";
    let (n, ld, nt) = cast_transpose_sizes(OP, rows, cols)?;
    let how = format!("rows·cols = {rows}·{cols}");
    expect_len(OP, "src", src.len(), n, &how)?;
    if let Some(q) = &q {
        expect_len(OP, "q", q.len(), n, &how)?;
    }
    expect_len(OP, "qt", qt.len(), nt, &format!("cols·ld = {cols}·{ld}"))?;
    let code = |v: T| format.encode(v.widen() * scale);
    if let Some(q) = q {
        q.par_iter_mut()
            .zip(src.par_iter())
            .for_each(|(o, &v)| *o = code(v));
    }
    if nt > 0 {
        // A task per TRANSPOSE_BLOCK rows of qt: it reads those columns of src row by row.
        qt.par_chunks_mut(TRANSPOSE_BLOCK * ld)
            .enumerate()
            .for_each(|(b, out)| {
                let (c0, nc) = (b * TRANSPOSE_BLOCK, out.len() / ld);
                for (r, row) in src.chunks_exact(cols).enumerate() {
                    for (j, &v) in row[c0..c0 + nc].iter().enumerate() {
                        out[j * ld + r] = code(v);
                    }
                }
                for line in out.chunks_exact_mut(ld) {
                    line[rows..].fill(0);
                }
            });
    }
    let bits = src
        .par_iter()
        .map(|v| v.widen().to_bits() & 0x7FFF_FFFF)
        .max()
        .unwrap_or(0);
    Ok(f32::from_bits(bits))
}

/// The transpose alone of FP8 codes `q` `[rows, cols]`: `qt[c·ld + r] = q[r·cols + c]` for `r <
/// rows` and `0x00` for `rows ≤ r < ld` (`ld` = [`transpose_ld`]`(rows)`), the layout of
/// [`cast_transpose`]'s `qt`. Errors: [`Error::ShapeMismatch`] unless `q` holds `rows·cols`
/// codes and `qt` `cols·ld`; [`Error::InvalidArgument`] when a size overflows.
///
/// ```
/// let q = [1u8, 2, 3, 4, 5, 6]; // [2, 3]
/// let mut qt = [0xAAu8; 3 * 16]; // ld = 16
/// ampkit::cpu::fp8::transpose(&q, 2, 3, &mut qt)?;
/// assert_eq!((&qt[..2], &qt[16..18], &qt[32..34]), (&[1, 4][..], &[2, 5][..], &[3, 6][..]));
/// assert!(qt[2..16].iter().all(|&b| b == 0));
/// # Ok::<(), ampkit::Error>(())
/// ```
pub fn transpose(q: &[u8], rows: usize, cols: usize, qt: &mut [u8]) -> Result<()> {
    const OP: &str = "cpu::fp8::transpose";
    let (n, ld, nt) = cast_transpose_sizes(OP, rows, cols)?;
    expect_len(OP, "q", q.len(), n, &format!("rows·cols = {rows}·{cols}"))?;
    expect_len(OP, "qt", qt.len(), nt, &format!("cols·ld = {cols}·{ld}"))?;
    if nt > 0 {
        qt.par_chunks_mut(ld).enumerate().for_each(|(c, line)| {
            for (r, out) in line[..rows].iter_mut().enumerate() {
                *out = q[r * cols + c];
            }
            line[rows..].fill(0);
        });
    }
    Ok(())
}

/// Rows (and columns) of the tiles whose column sums [`cast_transpose_dbias`] adds first, and
/// the rows per thread-pair of its GPU twin's sum: its order, reproduced here.
const DBIAS_TILE: usize = 64;
const DBIAS_LANES: usize = 16;

/// The output gradient's cast of an FP8 layer's backward, with its bias gradient and,
/// given `relu_out`, the ReLU backward before both (Transformer Engine's
/// `cast_transpose_dbias_dgelu`, for ReLU). The source is `dz = grad` where `relu_out` is in
/// (0, +inf] and +0 elsewhere (without `relu_out`, `dz = grad`): [`crate::cpu::relu::backward`]'s
/// rule. Then `q`, `qt` and the returned amax are [`cast_transpose`]'s of `dz`, and `dbias[c] =
/// Σ_r dz[r][c]` in f32, added as the GPU adds them: per 64-row tile, each of 16 lanes sums rows
/// `4·lane … 4·lane + 3` in that order from 0, the tile's sum adds the lane pairs
/// `(0 + 1), (2 + 3), …` in order from 0, and the tiles' sums add in order from 0.
///
/// Errors: [`Error::ShapeMismatch`] unless `grad`, `relu_out` and `q` hold `rows·cols` elements,
/// `qt` `cols·ld` and `dbias` `cols`; [`Error::InvalidArgument`] when a size overflows.
///
/// ```
/// use ampkit::cpu::fp8::{cast_transpose_dbias, Fp8Format};
/// use half::bf16;
/// let b = |v: &[f32]| v.iter().map(|&x| bf16::from_f32(x)).collect::<Vec<_>>();
/// let (grad, out) = (b(&[1.0, 2.0, 3.0, 4.0]), b(&[0.5, 0.0, 1.0, -1.0])); // [2, 2]
/// let (mut qt, mut dbias) = ([0u8; 2 * 16], [0f32; 2]);
/// let amax = cast_transpose_dbias(
///     Fp8Format::E5M2, &grad, Some(&out), 2, 2, 1.0, None, &mut qt, &mut dbias,
/// )?;
/// assert_eq!((amax, dbias), (3.0, [4.0, 0.0])); // dz = [[1, 0], [3, 0]]
/// # Ok::<(), ampkit::Error>(())
/// ```
#[allow(clippy::too_many_arguments)] // the gradient, the ReLU output, the shape, the outputs
pub fn cast_transpose_dbias(
    format: Fp8Format,
    grad: &[bf16],
    relu_out: Option<&[bf16]>,
    rows: usize,
    cols: usize,
    scale: f32,
    q: Option<&mut [u8]>,
    qt: &mut [u8],
    dbias: &mut [f32],
) -> Result<f32> {
    const OP: &str = "cpu::fp8::cast_transpose_dbias";
    let (n, _, _) = cast_transpose_sizes(OP, rows, cols)?;
    let how = format!("rows·cols = {rows}·{cols}");
    expect_len(OP, "grad", grad.len(), n, &how)?;
    expect_len(OP, "dbias", dbias.len(), cols, "cols")?;
    let relu_backward: Vec<bf16>;
    let dz = match relu_out {
        Some(y) => {
            expect_len(OP, "relu_out", y.len(), n, &how)?;
            let keep = |y: bf16| (1..=0x7F80).contains(&y.to_bits());
            relu_backward = (grad.par_iter().zip(y.par_iter()))
                .map(|(&g, &y)| if keep(y) { g } else { bf16::ZERO })
                .collect();
            &relu_backward[..]
        }
        None => grad,
    };
    let amax = cast_transpose(format, dz, rows, cols, scale, q, qt)?;
    dbias
        .par_chunks_mut(DBIAS_TILE)
        .enumerate()
        .for_each(|(block, out)| {
            let c0 = block * DBIAS_TILE;
            out.fill(0.0);
            for r0 in (0..rows).step_by(DBIAS_TILE) {
                let mut lanes = [[0f32; DBIAS_TILE]; DBIAS_LANES];
                for (lane, sums) in lanes.iter_mut().enumerate() {
                    for r in r0 + 4 * lane..r0 + 4 * lane + 4 {
                        let row = (r < rows).then(|| &dz[r * cols + c0..][..out.len()]);
                        for (j, s) in sums[..out.len()].iter_mut().enumerate() {
                            *s += row.map_or(0.0, |row| row[j].widen());
                        }
                    }
                }
                for (j, o) in out.iter_mut().enumerate() {
                    let mut tile = 0f32;
                    for pair in lanes.chunks_exact(2) {
                        tile += pair[0][j] + pair[1][j];
                    }
                    *o += tile;
                }
            }
        });
    Ok(amax)
}

/// `y[i] = f32(q[i])·scale_inv` ([`Fp8Format::decode`], then one f32 multiply; NaN stays
/// 0x7FFFFFFF). Errors: [`Error::ShapeMismatch`] unless the lengths
/// agree.
pub fn dequantize(format: Fp8Format, q: &[u8], scale_inv: f32, y: &mut [f32]) -> Result<()> {
    same_len("cpu::fp8::dequantize", q.len(), y.len())?;
    y.par_iter_mut().zip(q.par_iter()).for_each(|(o, &b)| {
        let v = format.decode(b);
        *o = if v.is_nan() { v } else { v * scale_inv };
    });
    Ok(())
}

/// How the recipe reduces an amax history to the amax a scale is computed from (Transformer
/// Engine's `amax_compute_algo`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum AmaxAlgo {
    /// The largest amax in the window (NaN entries ignored, as `fmaxf` does). TE's default.
    #[default]
    Max,
    /// The amax of the step that just ran.
    MostRecent,
}

/// `2^-margin` in f32, the factor [`ScalingState::update`] multiplies the format's largest value
/// by (`powf`, as Transformer Engine's `std::pow(2.f, -margin)`; exact for integer margins).
/// `ops::fp8::update_scales` passes this same value to the device, so the two agree bit for bit.
pub fn margin_factor(margin: f32) -> f32 {
    2f32.powf(-margin)
}

/// Delayed scaling's per-tensor state: an amax history and the scale derived from it.
///
/// `history[0]` collects the current step's amax (the casts fold theirs in with a max, as
/// [`quantize`] returns it); [`ScalingState::update`] then computes the next scale and rolls the
/// window, exactly as Transformer Engine's `amax_and_scale_update` kernel does:
/// - the amax used is the max over the whole history, the entry about to leave included
///   ([`AmaxAlgo::Max`], NaN entries ignored), or `history[0]` ([`AmaxAlgo::MostRecent`]);
/// - `scale = (fp8_max · 2^-margin) / amax` (f32 operations in that order, `2^-margin` as
///   [`margin_factor`] computes it) if that amax is finite and positive, else the scale is kept
///   (an overflowing or all-zero tensor never drives it to 0 or inf); a scale that comes out
///   infinite (an amax so small that the quotient overflows, or an infinite scale kept) becomes
///   `f32::MAX`, as in current Transformer Engine;
/// - the history becomes `[0, h[2], …, h[len-1], h[0]]`: the oldest entry (`h[1]`) leaves, this
///   step's moves to the end, and slot 0 is cleared for the next step.
#[derive(Debug, Clone, PartialEq)]
pub struct ScalingState {
    /// The amax window; `history[0]` is the step in progress.
    pub history: Vec<f32>,
    /// The scale the next casts multiply by (1 before the first update).
    pub scale: f32,
}

impl ScalingState {
    /// A fresh state: `len` zero amaxes (at least one) and scale 1.
    pub fn new(len: usize) -> ScalingState {
        ScalingState {
            history: vec![0.0; len.max(1)],
            scale: 1.0,
        }
    }

    /// Folds a cast's amax (a magnitude: the sign bit is ignored) into this step's slot: the
    /// larger bit pattern wins, exactly as the GPU casts' atomic max on the bits (so a NaN wins
    /// over any number, and of two NaNs the larger payload).
    pub fn record(&mut self, amax: f32) {
        let bits = amax.to_bits() & 0x7FFF_FFFF;
        let slot = &mut self.history[0];
        if bits > slot.to_bits() {
            *slot = f32::from_bits(bits);
        }
    }

    /// The scale update and history roll described on [`ScalingState`]; returns the new scale.
    pub fn update(&mut self, format: Fp8Format, algo: AmaxAlgo, margin: f32) -> f32 {
        let h = &mut self.history;
        let amax = match algo {
            AmaxAlgo::Max => h.iter().fold(0f32, |m, &a| m.max(a)),
            AmaxAlgo::MostRecent => h[0],
        };
        let scaled_max = format.max() * margin_factor(margin);
        if amax.is_finite() && amax > 0.0 {
            self.scale = scaled_max / amax;
        }
        if self.scale.is_infinite() {
            self.scale = f32::MAX;
        }
        if h.len() > 1 {
            let newest = h[0];
            h.rotate_left(1); // [h1, h2, …, h_last, h0]
            h[0] = 0.0; // drops h1, the oldest
            let last = h.len() - 1;
            h[last] = newest;
        } else {
            h[0] = 0.0;
        }
        self.scale
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_formats_saturate_round_to_even_and_keep_subnormals() {
        let (e4, e5) = (Fp8Format::E4M3, Fp8Format::E5M2);
        assert_eq!(e4.encode(448.0), 0x7E);
        assert_eq!(e4.encode(1e9), 0x7E);
        assert_eq!(e4.encode(f32::INFINITY), 0x7E);
        assert_eq!(e4.encode(f32::NEG_INFINITY), 0xFE);
        assert_eq!(e5.encode(1e9), 0x7B);
        assert_eq!(e5.decode(0x7B), 57344.0);
        assert_eq!(e4.encode(f32::NAN), 0x7F);
        assert_eq!(e4.encode(-f32::NAN), 0x7F);
        // 1.0625 is halfway between 1 and 1.125 (E4M3): even mantissa wins, 1.0.
        assert_eq!(e4.decode(e4.encode(1.0625)), 1.0);
        assert_eq!(e4.decode(e4.encode(1.1875)), 1.25);
        // Smallest subnormals: 2^-9 (E4M3), 2^-16 (E5M2); half of it rounds to even (0).
        assert_eq!(e4.decode(1), 2f32.powi(-9));
        assert_eq!(e5.decode(1), 2f32.powi(-16));
        assert_eq!(e4.encode(2f32.powi(-10)), 0);
        assert_eq!(e4.decode(0x7F).to_bits(), 0x7FFF_FFFF);
        for b in 0..=255u8 {
            for f in [e4, e5] {
                // E5M2's infinities saturate to the largest finite value on the way back.
                let v = f.decode(b);
                if v.is_finite() {
                    assert_eq!(f.encode(v), b, "{f:?} {b:#x} round trip");
                }
            }
        }
    }

    #[test]
    fn quantize_reports_the_amax_before_scaling() {
        let mut q = [0u8; 4];
        let amax = quantize(Fp8Format::E5M2, &[0.5, -3.0, 2.0, 0.0], 100.0, &mut q).unwrap();
        assert_eq!(amax, 3.0);
        let nan = quantize(Fp8Format::E5M2, &[0.5, f32::NAN, 2.0, 0.0], 1.0, &mut q).unwrap();
        assert!(nan.is_nan());
        assert!(quantize(Fp8Format::E4M3, &[1.0], 1.0, &mut [0u8; 2]).is_err());
    }

    #[test]
    fn delayed_scaling_follows_the_window_and_keeps_the_scale_on_bad_amaxes() {
        let f = Fp8Format::E4M3;
        let mut s = ScalingState::new(3);
        // No amax yet: the scale stays 1.
        assert_eq!(s.update(f, AmaxAlgo::Max, 0.0), 1.0);
        s.record(2.0);
        s.record(4.0);
        s.record(1.0);
        assert_eq!(s.update(f, AmaxAlgo::Max, 0.0), 448.0 / 4.0);
        assert_eq!(s.history, [0.0, 0.0, 4.0]);
        s.record(1.0);
        assert_eq!(
            s.update(f, AmaxAlgo::Max, 1.0),
            224.0 / 4.0,
            "margin 1 halves it"
        );
        assert_eq!(s.history, [0.0, 4.0, 1.0]);
        s.record(0.5);
        s.update(f, AmaxAlgo::Max, 0.0);
        // The oldest amax (4) still counts in the update that drops it, as in TE's kernel.
        assert_eq!(s.scale, 112.0);
        assert_eq!(
            s.history,
            [0.0, 1.0, 0.5],
            "the oldest amax (4) left the window"
        );
        s.record(8.0);
        assert_eq!(s.update(f, AmaxAlgo::MostRecent, 0.0), 56.0);
        // An infinite amax keeps the scale while it is in the window; a NaN one is ignored by
        // Max and keeps the scale under MostRecent.
        s.record(f32::INFINITY);
        assert_eq!(s.update(f, AmaxAlgo::Max, 0.0), 56.0);
        s.record(f32::NAN);
        assert_eq!(s.update(f, AmaxAlgo::MostRecent, 0.0), 56.0);
        // An amax so small that the quotient overflows: the scale is f32::MAX, not inf.
        s.record(1e-40);
        assert_eq!(s.update(f, AmaxAlgo::MostRecent, 0.0), f32::MAX);
        let mut one = ScalingState::new(1);
        one.record(7.0);
        assert_eq!(
            one.update(Fp8Format::E5M2, AmaxAlgo::Max, 0.0),
            57344.0 / 7.0
        );
        assert_eq!(one.history, [0.0]);
    }
}
