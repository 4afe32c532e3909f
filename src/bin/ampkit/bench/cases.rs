//! The workloads `ampkit bench` runs: the GEMM shapes, LayerNorm and softmax sizes, the
//! parameter lists of unscale and Adam, and the training steps, with what each case's rows need
//! to know about it (operand lengths, bytes).

use ampkit::cpu::gemm::Layout;

/// One GEMM workload: the PyTorch script's `GEMM_CASES`, the same list as `benches/gemm.rs`.
#[derive(Debug, Clone, Copy)]
pub struct GemmCase {
    pub name: &'static str,
    pub layout: Layout,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub f32_out: bool,
}

const fn gemm_case(
    name: &'static str,
    layout: Layout,
    m: usize,
    n: usize,
    k: usize,
    f32_out: bool,
) -> GemmCase {
    GemmCase {
        name,
        layout,
        m,
        n,
        k,
        f32_out,
    }
}

/// GEMM rows; `wgrad` rows get ` (f32 out)` appended to their name, as in the PyTorch script.
pub const GEMM_CASES: [GemmCase; 9] = [
    gemm_case("8192^3", Layout::Forward, 8192, 8192, 8192, false),
    gemm_case("4096^3", Layout::Forward, 4096, 4096, 4096, false),
    gemm_case(
        "mlp fwd 4096x512x784",
        Layout::Forward,
        4096,
        512,
        784,
        false,
    ),
    gemm_case(
        "mlp dgrad 4096x784x512",
        Layout::Dgrad,
        4096,
        784,
        512,
        false,
    ),
    gemm_case(
        "mlp wgrad 512x784x4096",
        Layout::Wgrad,
        512,
        784,
        4096,
        true,
    ),
    gemm_case(
        "mlp fwd2 4096x10x512",
        Layout::Forward,
        4096,
        10,
        512,
        false,
    ),
    gemm_case(
        "wide fwd 8192x4096x4096",
        Layout::Forward,
        8192,
        4096,
        4096,
        false,
    ),
    gemm_case(
        "wide dgrad 8192x4096x4096",
        Layout::Dgrad,
        8192,
        4096,
        4096,
        false,
    ),
    gemm_case(
        "wide wgrad 4096x4096x8192",
        Layout::Wgrad,
        4096,
        4096,
        8192,
        true,
    ),
];

impl GemmCase {
    /// The row name (`wgrad` rows say their output type).
    pub fn row_name(&self) -> String {
        if self.f32_out {
            format!("{} (f32 out)", self.name)
        } else {
            self.name.to_string()
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

    /// Minimal traffic: both f16 operands read once, the output written once.
    pub fn bytes(&self) -> f64 {
        let (la, lb) = self.operand_lens();
        let out = if self.f32_out { 4 } else { 2 };
        (2 * (la + lb) + out * self.m * self.n) as f64
    }
}

/// LayerNorm rows: the PyTorch script's `LN_CASES`. The last moves ≥ 500 MB per call (forward
/// 537 MB, backward 806 MB), where a copy of the same bytes runs near its 1 GiB rate.
pub const LN_CASES: [(&str, usize, usize); 7] = [
    ("MLP 4096x512", 4096, 512),
    ("MLP 4096x10", 4096, 10),
    ("16384x1024", 16384, 1024),
    ("8192x2048", 8192, 2048),
    ("4096x4096", 4096, 4096),
    ("256x65536", 256, 65536),
    ("1024x65536", 1024, 65536),
];

/// Softmax and cross-entropy rows: the PyTorch script's `SM_CASES`. The last gives every row
/// ≥ 500 MB per call (f16 cross-entropy 537 MB; f32 softmax forward 1.07 GB, backward 1.61 GB).
pub const SM_CASES: [(&str, usize, usize); 7] = [
    ("MNIST 4096x10", 4096, 10),
    ("MLP 4096x512", 4096, 512),
    ("16384x1024", 16384, 1024),
    ("8192x2048", 8192, 2048),
    ("256x65536", 256, 65536),
    ("1024x65536", 1024, 65536),
    ("2048x65536", 2048, 65536),
];

/// The default MLP's parameter tensors (784·512, 512, 512·10, 10).
pub const MLP_TENSORS: [usize; 4] = [784 * 512, 512, 512 * 10, 10];

/// Training rows: (name, widths, batch), the PyTorch script's `TRAIN_CASES`.
pub const TRAIN_CASES: [(&str, &[usize], usize); 3] = [
    ("mlp 784-512-10 b256", &[784, 512, 10], 256),
    ("mlp 784-512-10 b4096", &[784, 512, 10], 4096),
    ("wide 4x4096 b8192", &[4096, 4096, 4096, 4096, 4096], 8192),
];
