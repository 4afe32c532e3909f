//! [`Fp8Scales`], the delayed-scaling state of a model's FP8 tensors in device memory, and
//! [`update_scales`], the recipe's scale update for all of them in one launch
//! (`fp8_update_scales` in `kernels/fp8_train.cu`). CPU twin: [`ScalingState`], bit for bit.

use crate::cpu::fp8::{margin_factor, AmaxAlgo, Fp8Format, ScalingState};
use crate::cuda::{Gpu, KernelArgs, LaunchConfig};
use crate::error::{Error, Result};
use crate::kernels;
use cudarc::driver::{CudaSlice, CudaView, CudaViewMut, DevicePtr, DevicePtrMut};

/// The longest amax history [`Fp8Scales`] holds: the update kernel stages a tensor's window in
/// 16 KB of shared memory.
pub const MAX_HISTORY: usize = 4096;

/// Threads per block of `fp8_update_scales` (its `kThreads`).
const UPDATE_THREADS: u32 = 256;

/// The delayed-scaling state of `T` FP8 tensors, in device memory: what [`ScalingState`] holds
/// per tensor on the CPU, laid out for the casts and the FP8 GEMM to read without the host.
///
/// - `amax_history` `[T, len]` f32: row `t` is tensor `t`'s window. Slot 0 is the step in
///   progress: the casts fold their amax into it ([`Fp8Scales::amax`] is that one-element view,
///   the `amax` argument of [`quantize`](super::quantize) and
///   [`cast_transpose`](super::cast_transpose)); [`update_scales`] reduces the window, rolls it
///   and clears slot 0. Every entry is a non-negative f32 (or NaN): the casts' atomic max works on
///   the bits.
/// - `scale` `[T]` f32: what the casts multiply by ([`Fp8Scales::scale`]); 1 at first.
/// - `scale_inv` `[T]` f32: `1 / scale`, what the FP8 GEMM's epilogue multiplies by
///   ([`Fp8Scales::scale_inv`]).
/// - `fp8_max` `[T]` f32: each tensor's format's largest value (448 for E4M3, 57344 for E5M2).
///
/// [`Fp8Scales::upload`] and [`Fp8Scales::download`] move the state to and from
/// [`ScalingState`]s (for checkpoints, and the CPU reference). Nothing here allocates after
/// [`Fp8Scales::new`], so the casts and [`update_scales`] can be captured in a CUDA graph.
///
/// ```no_run
/// # fn main() -> ampkit::Result<()> {
/// use ampkit::cpu::fp8::{AmaxAlgo, Fp8Format};
/// use ampkit::ops::fp8::{quantize, update_scales, Fp8Scales};
/// let gpu = ampkit::cuda::Gpu::new(0)?;
/// let mut state = Fp8Scales::new(&gpu, &[Fp8Format::E4M3, Fp8Format::E5M2], 16)?;
/// let x = gpu.upload(&[1.0f32, -8.0, 2.0])?;
/// let mut q = gpu.alloc_zeros::<u8>(3)?;
/// let (scale, mut amax) = state.scale_and_amax(0)?;
/// quantize(&gpu, Fp8Format::E4M3, &x, &mut q, &scale, &mut amax)?;
/// update_scales(&gpu, &mut state, AmaxAlgo::Max, 0.0)?;
/// assert_eq!(state.download(&gpu)?[0].scale, 448.0 / 8.0);
/// # Ok(()) }
/// ```
pub struct Fp8Scales {
    formats: Vec<Fp8Format>,
    len: usize,
    history: CudaSlice<f32>,
    scale: CudaSlice<f32>,
    scale_inv: CudaSlice<f32>,
    fp8_max: CudaSlice<f32>,
}

impl std::fmt::Debug for Fp8Scales {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fp8Scales")
            .field("formats", &self.formats)
            .field("history_len", &self.len)
            .finish_non_exhaustive()
    }
}

/// [`Error::InvalidArgument`] unless `t` is one of `tensors` tensors.
fn check_tensor(op: &'static str, t: usize, tensors: usize) -> Result<()> {
    if t >= tensors {
        let last = tensors.saturating_sub(1);
        return Err(invalid(
            op,
            format!("tensor {t} of {tensors}: use 0 to {last}"),
        ));
    }
    Ok(())
}

fn invalid(op: &'static str, detail: String) -> Error {
    Error::InvalidArgument { op, detail }
}

impl Fp8Scales {
    /// Fresh state for one tensor per entry of `formats`: `len` zero amaxes each, scale and
    /// `scale_inv` 1 (as [`ScalingState::new`]).
    ///
    /// Errors: [`Error::InvalidArgument`] when `formats` is empty or longer than 2^31 - 1, or
    /// `len` is not in 1..=[`MAX_HISTORY`]; [`Error::Driver`] when allocating fails.
    pub fn new(gpu: &Gpu, formats: &[Fp8Format], len: usize) -> Result<Fp8Scales> {
        const OP: &str = "fp8::Fp8Scales::new";
        if formats.is_empty() || formats.len() > i32::MAX as usize {
            return Err(invalid(
                OP,
                format!("{} tensors: use 1 to 2^31 - 1", formats.len()),
            ));
        }
        if !(1..=MAX_HISTORY).contains(&len) {
            return Err(invalid(
                OP,
                format!("amax history of {len} steps: use 1 to {MAX_HISTORY}"),
            ));
        }
        let t = formats.len();
        let total = t
            .checked_mul(len)
            .ok_or_else(|| invalid(OP, format!("{t} tensors · {len} steps overflows usize")))?;
        let ones = vec![1f32; t];
        let maxes: Vec<f32> = formats.iter().map(|f| f.max()).collect();
        Ok(Fp8Scales {
            formats: formats.to_vec(),
            len,
            history: gpu.alloc_zeros(total)?,
            scale: gpu.upload(&ones)?,
            scale_inv: gpu.upload(&ones)?,
            fp8_max: gpu.upload(&maxes)?,
        })
    }

    /// The number of tensors, `T`.
    pub fn tensors(&self) -> usize {
        self.formats.len()
    }

    /// The amax history length, `len`.
    pub fn history_len(&self) -> usize {
        self.len
    }

    /// Each tensor's format.
    pub fn formats(&self) -> &[Fp8Format] {
        &self.formats
    }

    /// The whole `[T, len]` amax history.
    pub fn amax_history(&self) -> &CudaSlice<f32> {
        &self.history
    }

    /// All `T` scales.
    pub fn scales(&self) -> &CudaSlice<f32> {
        &self.scale
    }

    /// All `T` inverse scales.
    pub fn scale_invs(&self) -> &CudaSlice<f32> {
        &self.scale_inv
    }

    fn check(&self, op: &'static str, t: usize) -> Result<()> {
        check_tensor(op, t, self.tensors())
    }

    /// Tensor `t`'s scale, a one-element view (the casts' `scale`). Errors:
    /// [`Error::InvalidArgument`] when `t` ≥ [`Fp8Scales::tensors`].
    pub fn scale(&self, t: usize) -> Result<CudaView<'_, f32>> {
        self.check("fp8::Fp8Scales::scale", t)?;
        Ok(self.scale.slice(t..t + 1))
    }

    /// Tensor `t`'s inverse scale, a one-element view (the FP8 GEMM's `scale_inv`). Errors:
    /// [`Error::InvalidArgument`] when `t` ≥ [`Fp8Scales::tensors`].
    pub fn scale_inv(&self, t: usize) -> Result<CudaView<'_, f32>> {
        self.check("fp8::Fp8Scales::scale_inv", t)?;
        Ok(self.scale_inv.slice(t..t + 1))
    }

    /// Tensor `t`'s amax of the step in progress (slot 0 of its history), a one-element view
    /// (the casts' `amax`). Errors: [`Error::InvalidArgument`] when `t` ≥
    /// [`Fp8Scales::tensors`].
    pub fn amax(&mut self, t: usize) -> Result<CudaViewMut<'_, f32>> {
        self.check("fp8::Fp8Scales::amax", t)?;
        let at = t * self.len;
        Ok(self.history.slice_mut(at..at + 1))
    }

    /// [`Fp8Scales::scale`] and [`Fp8Scales::amax`] of tensor `t` at once, the two buffers a
    /// cast takes. Errors: [`Error::InvalidArgument`] when `t` ≥ [`Fp8Scales::tensors`].
    pub fn scale_and_amax(
        &mut self,
        t: usize,
    ) -> Result<(CudaView<'_, f32>, CudaViewMut<'_, f32>)> {
        self.check("fp8::Fp8Scales::scale_and_amax", t)?;
        let at = t * self.len;
        Ok((
            self.scale.slice(t..t + 1),
            self.history.slice_mut(at..at + 1),
        ))
    }

    /// Tensor `t`'s scale and amax-of-the-step addresses, for a launch that reads several
    /// tensors' scales and folds into several amaxes at once; `guards` holds the two buffers'
    /// guards on `stream` for as long as the launch needs them. Errors: as [`Fp8Scales::scale`].
    pub(super) fn addresses<'a>(
        &'a mut self,
        stream: &'a std::sync::Arc<cudarc::driver::CudaStream>,
        guards: &mut Vec<cudarc::driver::SyncOnDrop<'a>>,
    ) -> impl Fn(&'static str, usize) -> Result<(u64, u64)> + 'a {
        let (tensors, len) = (self.tensors(), self.len);
        let (scale, g_scale) = self.scale.device_ptr(stream);
        let (history, g_history) = self.history.device_ptr_mut(stream);
        guards.push(g_scale);
        guards.push(g_history);
        move |op, t| {
            check_tensor(op, t, tensors)?;
            let f = std::mem::size_of::<f32>() as u64;
            Ok((scale + f * t as u64, history + f * (t * len) as u64))
        }
    }

    /// Replaces the state with `states` (one per tensor, in order; e.g. from a checkpoint);
    /// `scale_inv` becomes `1 / scale`. Queued on [`Gpu::stream`] (copies from pageable memory:
    /// not inside a graph capture).
    ///
    /// Errors: [`Error::ShapeMismatch`] unless there are [`Fp8Scales::tensors`] states of
    /// [`Fp8Scales::history_len`] entries each; [`Error::InvalidArgument`] when an entry has its
    /// sign bit set (an amax is a magnitude, and the casts' atomic max compares bits), or while
    /// the stream captures a graph; [`Error::Driver`].
    pub fn upload(&mut self, gpu: &Gpu, states: &[ScalingState]) -> Result<()> {
        const OP: &str = "fp8::Fp8Scales::upload";
        let mismatch = |detail: String| Error::ShapeMismatch { op: OP, detail };
        if states.len() != self.tensors() {
            return Err(mismatch(format!(
                "{} states for {} tensors",
                states.len(),
                self.tensors()
            )));
        }
        let mut history = Vec::with_capacity(self.history.len());
        for (t, s) in states.iter().enumerate() {
            if s.history.len() != self.len {
                return Err(mismatch(format!(
                    "tensor {t}'s history has {} entries, expected {}",
                    s.history.len(),
                    self.len
                )));
            }
            if let Some(i) = s.history.iter().position(|a| a.is_sign_negative()) {
                return Err(invalid(
                    OP,
                    format!(
                        "tensor {t}'s amax history[{i}] = {} has its sign bit set: amaxes are \
                         magnitudes",
                        s.history[i]
                    ),
                ));
            }
            history.extend_from_slice(&s.history);
        }
        let scale: Vec<f32> = states.iter().map(|s| s.scale).collect();
        let scale_inv: Vec<f32> = scale.iter().map(|s| 1.0 / s).collect();
        gpu.upload_into(&history, &mut self.history)?;
        gpu.upload_into(&scale, &mut self.scale)?;
        gpu.upload_into(&scale_inv, &mut self.scale_inv)
    }

    /// The state as one [`ScalingState`] per tensor (history and scale; `scale_inv` is
    /// `1 / scale`). Waits for the work queued on [`Gpu::stream`]. Errors: [`Error::Driver`],
    /// including an error a queued kernel raised; [`Error::InvalidArgument`] while the stream
    /// captures a graph.
    pub fn download(&self, gpu: &Gpu) -> Result<Vec<ScalingState>> {
        let history = gpu.download(&self.history)?;
        let scale = gpu.download(&self.scale)?;
        Ok(history
            .chunks_exact(self.len)
            .zip(scale)
            .map(|(h, scale)| ScalingState {
                history: h.to_vec(),
                scale,
            })
            .collect())
    }
}

/// The delayed-scaling update of every tensor in `states`, one launch (a block per tensor): for
/// each tensor, exactly [`ScalingState::update`] with its format, `algo` and `margin` — the amax
/// of the window (NaN ignored) or of slot 0, `scale = (fp8_max · 2^-margin) / amax` when that amax
/// is finite and positive (else kept; an infinite scale becomes `f32::MAX`), the window rolled
/// to `[0, h[2], …, h[len-1], h[0]]` — and `scale_inv = 1 / scale`. `2^-margin` is
/// [`margin_factor`]`(margin)`, computed here and passed to the kernel, so every f32 operation
/// is the CPU's: bit-exact. Queued on [`Gpu::stream`]; no allocation, no synchronisation (CUDA-
/// graph capturable; the margin is baked into a captured graph).
///
/// Errors: [`Error::InvalidArgument`] when `margin` is not finite.
pub fn update_scales(gpu: &Gpu, states: &mut Fp8Scales, algo: AmaxAlgo, margin: f32) -> Result<()> {
    const OP: &str = "fp8::update_scales";
    if !margin.is_finite() {
        return Err(invalid(
            OP,
            format!("margin {margin}: use a finite number (0 is the default)"),
        ));
    }
    let (len, blocks) = (states.len as u32, states.tensors() as u32);
    let stream = gpu.stream();
    let (h, _gh) = states.history.device_ptr_mut(stream);
    let (s, _gs) = states.scale.device_ptr_mut(stream);
    let (si, _gsi) = states.scale_inv.device_ptr_mut(stream);
    let (mx, _gmx) = states.fp8_max.device_ptr(stream);
    let most_recent = i32::from(algo == AmaxAlgo::MostRecent);
    let mut args = KernelArgs::new();
    args.push(h).push(s).push(si).push(mx);
    args.push(len).push(most_recent).push(margin_factor(margin));
    // SAFETY: fp8_update_scales(float* history, float* scale, float* scale_inv,
    // const float* fp8_max, unsigned int len, int most_recent, float margin_factor) matches;
    // Fp8Scales::new sized history T·len and the other three T, with 1 ≤ len ≤ MAX_HISTORY
    // (the kernel's shared window) and T < 2^31 blocks; block t touches row t and element t
    // only.
    // The guards outlive the launch.
    unsafe {
        gpu.launch(
            &kernels::FP8_TRAIN,
            "fp8_update_scales",
            LaunchConfig::linear(blocks, UPDATE_THREADS),
            &args,
        )
    }
}
