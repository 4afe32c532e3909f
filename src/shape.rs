//! Problem shapes that a GPU op in [`crate::ops`] and its CPU reference in [`crate::cpu`] both
//! take. They live here, not in either twin, because neither owns them: [`crate::ops::gemm`],
//! [`crate::ops::blas`] and [`crate::cpu::gemm`] take the same [`GemmShape`].
//!
//! # GEMM layouts
//!
//! Every matrix is row-major and read in place, in the layout an MLP stores it (W is
//! `[out, in]` like PyTorch's `nn.Linear`). The output is always `C[m, n]`, contracted over `k`:
//!
//! | [`Layout`] | computes | A | B |
//! |---|---|---|---|
//! | `Forward` | `Y = X·Wᵀ` | X `[m, k]` | W `[n, k]` |
//! | `Dgrad` | `dX = dY·W` | dY `[m, k]` | W `[k, n]` |
//! | `Wgrad` | `dW = dYᵀ·X` | dY `[k, m]` | X `[k, n]` |

/// Which product a GEMM computes; see the [module doc](self) for the operand shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Layout {
    /// Forward: `C[m,n] = A[m,k] · B[n,k]ᵀ` (`Y = X·Wᵀ`).
    Forward = 0,
    /// Data gradient: `C[m,n] = A[m,k] · B[k,n]` (`dX = dY·W`).
    Dgrad = 1,
    /// Weight gradient: `C[m,n] = A[k,m]ᵀ · B[k,n]` (`dW = dYᵀ·X`).
    Wgrad = 2,
}

/// The problem size of a GEMM: which layout, and `C[m, n]` contracted over `k`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GemmShape {
    /// Which operand layout (see the [module doc](self)).
    pub layout: Layout,
    /// Rows of C.
    pub m: usize,
    /// Columns of C.
    pub n: usize,
    /// The contracted dimension.
    pub k: usize,
}

impl GemmShape {
    /// A `layout` product giving `C[m, n]`, contracted over `k`.
    pub fn new(layout: Layout, m: usize, n: usize, k: usize) -> Self {
        GemmShape { layout, m, n, k }
    }

    /// The stored shapes `[(A rows, A cols), (B rows, B cols)]` of the operands, as the
    /// [module doc](self)'s table gives them.
    pub(crate) fn stored(self) -> [(usize, usize); 2] {
        let GemmShape { layout, m, n, k } = self;
        match layout {
            Layout::Forward => [(m, k), (n, k)],
            Layout::Dgrad => [(m, k), (k, n)],
            Layout::Wgrad => [(k, m), (k, n)],
        }
    }
}
