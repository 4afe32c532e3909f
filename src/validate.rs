//! The argument checks that a GPU op in [`crate::ops`] and its CPU twin in [`crate::cpu`] share:
//! one function per op and family, called by both twins before anything is written or launched,
//! so the same arguments give the same typed [`Error`] with the same message on either device
//! (only the `op` name in it differs). Checks that only one side can make stay with that side: a
//! device scalar's length, alignment and the kernels' index ranges on the GPU, the labels'
//! values on the CPU (they live in device memory on the GPU).
//!
//! Not here: casts check only that source and destination lengths agree, through the one
//! [`crate::error::same_len`] both twins call; the scaler's and the optimizers' configurations
//! check themselves (`ScalerConfig::validate`, `OptimizerConfig::validate`), and the optimizers'
//! tensor lists go through one check in [`crate::cpu::optim`] that both twins call.

use crate::error::{expect_len, matrix_len, Error, Result};

/// GEMM ([`crate::ops::gemm`], [`crate::ops::blas`], [`crate::cpu::gemm`]).
pub(crate) mod gemm {
    use super::*;
    use crate::shape::GemmShape;

    /// [`Error::ShapeMismatch`] naming the operand unless A, B and C hold what `shape` addresses
    /// (`lens` = `[A, B, C]`) and the bias, if any, holds `n` values.
    pub(crate) fn gemm(
        op: &'static str,
        shape: GemmShape,
        [a_len, b_len, c_len]: [usize; 3],
        bias_len: Option<usize>,
    ) -> Result<()> {
        let GemmShape { m, n, .. } = shape;
        let [(ar, ac), (br, bc)] = shape.stored();
        stored_len(op, "A", a_len, ar, ac)?;
        stored_len(op, "B", b_len, br, bc)?;
        stored_len(op, "C", c_len, m, n)?;
        if let Some(len) = bias_len {
            stored_len(op, "bias", len, 1, n)?;
        }
        Ok(())
    }

    /// [`Error::ShapeMismatch`] unless `dy` holds `rows·cols` values and `db` holds `cols`.
    pub(crate) fn bias_grad(
        op: &'static str,
        rows: usize,
        cols: usize,
        dy_len: usize,
        db_len: usize,
    ) -> Result<()> {
        stored_len(op, "dy", dy_len, rows, cols)?;
        stored_len(op, "db", db_len, 1, cols)
    }

    /// `name` must hold a `rows × cols` matrix (an overflowing product matches no length).
    fn stored_len(
        op: &'static str,
        name: &str,
        len: usize,
        rows: usize,
        cols: usize,
    ) -> Result<()> {
        match rows.checked_mul(cols) {
            Some(want) if want == len => Ok(()),
            _ => Err(Error::ShapeMismatch {
                op,
                detail: format!("{name} has {len} elements, the shape needs {rows}×{cols}"),
            }),
        }
    }
}

/// LayerNorm ([`crate::ops::layernorm`], [`crate::cpu::layernorm`]).
pub(crate) mod layernorm {
    use super::*;

    /// The forward's arguments: `cols ≥ 1`, `rows·cols` without overflow, a finite `eps > 0`
    /// (widened to f64 from the caller's type), then the lengths
    /// `[x, y, gamma, beta, mean, rstd]`. Returns `rows·cols`.
    pub(crate) fn forward(
        op: &'static str,
        rows: usize,
        cols: usize,
        eps: f64,
        [x, y, gamma, beta, mean, rstd]: [usize; 6],
    ) -> Result<usize> {
        let len = matrix_len(op, rows, cols, "cols")?;
        if !(eps > 0.0 && eps.is_finite()) {
            return Err(Error::InvalidArgument {
                op,
                detail: format!(
                    "eps is {}; it must be finite and > 0 (PyTorch's default is 1e-5)",
                    shortest(eps)
                ),
            });
        }
        let by_rows = format!("rows·cols = {rows}·{cols} = {len}");
        expect_len(op, "x", x, len, &by_rows)?;
        expect_len(op, "y", y, len, &by_rows)?;
        expect_len(op, "gamma", gamma, cols, "cols")?;
        expect_len(op, "beta", beta, cols, "cols")?;
        expect_len(op, "mean", mean, rows, "rows")?;
        expect_len(op, "rstd", rstd, rows, "rows")?;
        Ok(len)
    }

    /// The backward's arguments: `cols ≥ 1`, `rows·cols` without overflow, then the lengths
    /// `[dy, x, dx, mean, rstd, gamma, dgamma, dbeta]`. Returns `rows·cols`.
    pub(crate) fn backward(
        op: &'static str,
        rows: usize,
        cols: usize,
        [dy, x, dx, mean, rstd, gamma, dgamma, dbeta]: [usize; 8],
    ) -> Result<usize> {
        let len = matrix_len(op, rows, cols, "cols")?;
        let by_rows = format!("rows·cols = {rows}·{cols} = {len}");
        expect_len(op, "dy", dy, len, &by_rows)?;
        expect_len(op, "x", x, len, &by_rows)?;
        expect_len(op, "dx", dx, len, &by_rows)?;
        expect_len(op, "mean", mean, rows, "rows")?;
        expect_len(op, "rstd", rstd, rows, "rows")?;
        expect_len(op, "gamma", gamma, cols, "cols")?;
        expect_len(op, "dgamma", dgamma, cols, "cols")?;
        expect_len(op, "dbeta", dbeta, cols, "cols")?;
        Ok(len)
    }

    /// `v` as its f32 when it is one (an f32 `eps` reads as typed, `-0.1`, not as its f64
    /// expansion `-0.10000000149011612`), else as an f64.
    fn shortest(v: f64) -> String {
        let narrow = v as f32;
        if f64::from(narrow) == v || v.is_nan() {
            narrow.to_string()
        } else {
            v.to_string()
        }
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn eps_reads_as_typed() {
            assert_eq!(super::shortest(f64::from(-0.1f32)), "-0.1");
            assert_eq!(super::shortest(-0.1), "-0.1");
            assert_eq!(super::shortest(0.0), "0");
            assert_eq!(super::shortest(f64::NAN), "NaN");
            assert_eq!(super::shortest(f64::INFINITY), "inf");
            assert_eq!(super::shortest(0.1), "0.1"); // an f64 eps, not an f32 one
        }
    }
}

/// Softmax ([`crate::ops::softmax`], [`crate::cpu::softmax`]).
pub(crate) mod softmax {
    use super::*;

    /// The forward's arguments: `cols ≥ 1`, `rows·cols` without overflow, `x` and `y` of
    /// `rows·cols` values. Returns `rows·cols`.
    pub(crate) fn forward(
        op: &'static str,
        rows: usize,
        cols: usize,
        [x, y]: [usize; 2],
    ) -> Result<usize> {
        let len = matrix_len(op, rows, cols, "cols")?;
        let by_rows = format!("rows·cols = {rows}·{cols} = {len}");
        expect_len(op, "x", x, len, &by_rows)?;
        expect_len(op, "y", y, len, &by_rows)?;
        Ok(len)
    }

    /// The backward's arguments: `cols ≥ 1`, `rows·cols` without overflow, `y`, `dy` and `dx`
    /// of `rows·cols` values. Returns `rows·cols`.
    pub(crate) fn backward(
        op: &'static str,
        rows: usize,
        cols: usize,
        [y, dy, dx]: [usize; 3],
    ) -> Result<usize> {
        let len = matrix_len(op, rows, cols, "cols")?;
        let by_rows = format!("rows·cols = {rows}·{cols} = {len}");
        expect_len(op, "y", y, len, &by_rows)?;
        expect_len(op, "dy", dy, len, &by_rows)?;
        expect_len(op, "dx", dx, len, &by_rows)?;
        Ok(len)
    }
}

/// The fused softmax-cross-entropy ([`crate::ops::cross_entropy`], [`crate::cpu::cross_entropy`]).
pub(crate) mod cross_entropy {
    use super::*;

    /// `rows ≥ 1` (the loss is a mean over rows), `classes ≥ 1`, `rows·classes` without
    /// overflow, `logits` and `dlogits` of `rows·classes` values and one label per row. Returns
    /// `rows·classes`.
    pub(crate) fn check(
        op: &'static str,
        rows: usize,
        classes: usize,
        [logits, dlogits, labels]: [usize; 3],
    ) -> Result<usize> {
        if rows == 0 {
            return Err(Error::InvalidArgument {
                op,
                detail: "rows is 0; the loss is a mean over rows and needs rows ≥ 1".into(),
            });
        }
        let len = matrix_len(op, rows, classes, "classes")?;
        let by_rows = format!("rows·classes = {rows}·{classes} = {len}");
        expect_len(op, "logits", logits, len, &by_rows)?;
        expect_len(op, "dlogits", dlogits, len, &by_rows)?;
        expect_len(op, "labels", labels, rows, "rows")?;
        Ok(len)
    }
}

/// ReLU ([`crate::ops::relu`], [`crate::cpu::relu`]).
pub(crate) mod relu {
    use super::*;

    /// [`Error::ShapeMismatch`] naming the first operand whose length differs from the first's.
    pub(crate) fn same_len(op: &'static str, lens: &[(&str, usize)]) -> Result<()> {
        let (first, n) = lens[0];
        match lens.iter().find(|(_, len)| *len != n) {
            None => Ok(()),
            Some((name, len)) => Err(Error::ShapeMismatch {
                op,
                detail: format!("{first} has {n} elements but {name} has {len}"),
            }),
        }
    }
}

/// The shifted gather of training inputs ([`crate::ops::augment`], [`crate::cpu::augment`]).
pub(crate) mod augment {
    use super::*;

    /// The shapes of one gather: `images` holds whole images of `inputs` values, `order` one
    /// index per sample, `shifts` a (dx, dy) pair per sample, `out` `samples·inputs` values; a
    /// `side` of 0 (no shift) or with `side² = inputs`. Returns `(samples, images)`.
    pub(crate) fn check(
        op: &'static str,
        inputs: usize,
        side: usize,
        [images, order, shifts, out]: [usize; 4],
    ) -> Result<(usize, usize)> {
        if inputs == 0 {
            return Err(Error::InvalidArgument {
                op,
                detail: "inputs is 0; an image needs at least one value".into(),
            });
        }
        if side != 0 && side.checked_mul(side) != Some(inputs) {
            return Err(Error::InvalidArgument {
                op,
                detail: format!(
                    "side {side} does not make a square image of {inputs} inputs; pass 0 for \
                     inputs that are not a square image (no shift)"
                ),
            });
        }
        if images % inputs != 0 {
            return Err(Error::ShapeMismatch {
                op,
                detail: format!("images has {images} values, not a multiple of inputs = {inputs}"),
            });
        }
        if side > i32::MAX as usize
            || inputs > u32::MAX as usize
            || images / inputs > u32::MAX as usize
        {
            return Err(Error::InvalidArgument {
                op,
                detail: "more than 2^32 images or a side past i32::MAX: beyond the kernel's \
                         index range"
                    .into(),
            });
        }
        let samples = order;
        expect_len(op, "shifts", shifts, samples * 2, "2·samples")?;
        let want = matrix_len(op, samples, inputs, "inputs")?;
        expect_len(op, "out", out, want, "samples·inputs")?;
        Ok((samples, images / inputs))
    }
}

/// The multi-tensor unscale ([`crate::ops::unscale`], [`crate::cpu::unscale`]).
pub(crate) mod unscale {
    use super::*;

    /// The f16 → f32 variant's lists: one destination per source, each of its source's length.
    pub(crate) fn pairs(
        op: &'static str,
        src: impl ExactSizeIterator<Item = usize>,
        dst: impl ExactSizeIterator<Item = usize>,
    ) -> Result<()> {
        if src.len() != dst.len() {
            return Err(Error::ShapeMismatch {
                op,
                detail: format!(
                    "{} source tensors but {} destination tensors; pass one f32 destination per \
                     f16 source",
                    src.len(),
                    dst.len()
                ),
            });
        }
        match src.zip(dst).enumerate().find(|(_, (s, d))| s != d) {
            None => Ok(()),
            Some((t, (s, d))) => Err(Error::ShapeMismatch {
                op,
                detail: format!(
                    "tensor {t}: source has {s} elements, destination {d}; each destination must \
                     have its source's length"
                ),
            }),
        }
    }
}
