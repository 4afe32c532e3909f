//! Tuning entry points for ampkit's own tests and benchmarks, one module per kernel family:
//! launch shapes forced instead of the default plans, GEMM tile tables and the planner, kernel
//! variants by access width. Hidden from the documentation and not part of the API: not covered
//! by the semver policy, and free to change with the kernels. Every item here is reachable by
//! this path only; the families keep them crate-private.

/// f32 ↔ f16 casts with a capped vector width.
pub mod cast {
    pub use crate::ops::cast::tuning::{f16_to_f32_max_width, f32_to_f16_max_width};
}

/// The GEMM's tile configurations, its planner, and a GEMM in a forced plan.
pub mod gemm {
    pub use crate::ops::gemm::tuning::{
        configs_for, gemm_checked_with_plan, gemm_with_plan, plan, Plan, TileConfig, CONFIGS,
        GROUP_M, HOPPER_CONFIGS, UNALIGNED,
    };
}

/// LayerNorm forward and backward in forced launch paths.
pub mod layernorm {
    pub use crate::ops::layernorm::tuning::{
        backward_forced, backward_with_warp_limit, forward_forced, BwdForce, FwdForce,
    };
}

/// Softmax forward and backward in forced launch shapes.
pub mod softmax {
    pub use crate::ops::softmax::tuning::{
        backward_forced, forward_forced, softmax_force_fits, SoftmaxForce,
    };
}

/// The fused softmax-cross-entropy in forced launch shapes.
pub mod cross_entropy {
    pub use crate::ops::cross_entropy::tuning::{
        ce_force_fits, softmax_cross_entropy_forced, CeForce, GroupKernel,
    };
}

/// The optimizer's device-side bias-correction terms, for bit-exact comparisons.
pub mod optim {
    pub use crate::ops::optim::adam_bias_terms;
}
