//! The device handle: context, stream, module cache, buffer helpers.

use super::modules::{ContextModules, ModuleImage};
use crate::cuda::launch::{KernelArgs, LaunchConfig};
use crate::error::{Error, Result};
use crate::kernels::{self, KernelModule};
use cudarc::driver::sys::{
    CUdevice_attribute, CUgraphInstantiate_flags, CUresult, CUstreamCaptureMode,
    CUstreamCaptureStatus,
};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaGraph, CudaSlice, CudaStream, DevicePtr, DevicePtrMut,
    DeviceRepr, DriverError, PushKernelArg, ValidAsZeroBits,
};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

// Per-kernel profiling, the launch count and the memory high-water mark: a child module, so it
// sees the handle's private fields.
#[path = "profile.rs"]
mod profile;
use profile::KernelSpan;
use std::sync::{Arc, Mutex};

/// What a [`Gpu`] is: read once when it is opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuInfo {
    /// CUDA device ordinal.
    pub ordinal: usize,
    /// Marketing name, e.g. `NVIDIA H100 80GB HBM3`.
    pub name: String,
    /// Compute capability (major, minor); 9.0 for Hopper.
    pub compute_capability: (i32, i32),
    /// Number of streaming multiprocessors.
    pub multiprocessors: usize,
    /// Device memory in bytes.
    pub total_memory: usize,
    /// The driver's CUDA version, e.g. 13000 for 13.0.
    pub driver_version: i32,
}

/// One CUDA device as ampkit uses it: a context, one stream every op on this handle is queued on,
/// a scratch buffer, and the kernel modules loaded into the context so far.
///
/// Open one with [`Gpu::new`] (ampkit creates the context and a non-blocking stream) or
/// [`Gpu::from_stream`] (your own cudarc context and stream). Either way [`Gpu::context`] and
/// [`Gpu::stream`] hand them out, so anything cudarc can do with them (allocate, copy, launch your
/// own kernels, cuBLAS) interleaves with ampkit's ops in stream order. Every op in
/// [`crate::ops`] takes device memory as cudarc's `DevicePtr`/`DevicePtrMut`: a
/// [`CudaSlice`](cudarc::driver::CudaSlice) or a [`CudaView`](cudarc::driver::CudaView) of one,
/// whoever allocated it.
///
/// # Threads
/// A `Gpu` is `Send + Sync`: share it as `Arc<Gpu>`. The contract:
/// - **Ops from several threads on one `Gpu`** are queued on its one stream, each call's work
///   in its own order, the calls in whatever order the threads make them. Each op touches only
///   its arguments and the handle's scratch buffer (locked for the length of the call), so every
///   result is bit-identical to the same calls made one after another. Buffers are yours to
///   keep apart: two threads writing one buffer race, as on the CPU.
/// - **Kernel modules** are loaded once per CUDA context (every `Gpu` on the device's primary
///   context shares them), on first use or with [`Gpu::load_module`], with every entry point
///   fetched up front. A load never runs during a CUDA-graph capture on that context: it waits
///   for captures in progress (up to 30 s, then it is an error rather than a possible
///   deadlock), and a capture waits for a load in progress.
/// - **Own streams for independent work**: [`Gpu::fork`] gives a handle with a stream (and
///   scratch buffer) of its own on the same context and modules, ordered after the work queued
///   so far on this one. The training backend ([`crate::train::gpu_backend::GpuBackend`]) runs
///   on a fork, so its steps, and the CUDA graph it captures, never mix with other threads'
///   work.
/// - **CUDA graphs** are captured with [`Gpu::capture`] on a handle no other thread uses (a
///   fork): any work another thread queued on the same stream during the capture would land in
///   the graph. The capture runs in thread-local mode, so a call in the capturing thread that
///   cannot be captured fails as an error rather than corrupting the graph.
/// - **Errors, not crashes**: misuse (a capture that would load a module, a nested capture, a
///   capture with synchronising launches) is an [`Error`]; no path through ampkit's safe API
///   dereferences freed memory or lets one thread's work into another's graph.
/// - Work you queue yourself with cudarc on [`Gpu::stream`] from another thread is ordered with
///   ampkit's like any other stream work; keep it off a stream while that stream is capturing.
///
/// [`Gpu::new`] switches cudarc's per-buffer event tracking off for its own context, since
/// each ampkit stream orders its own work (tracking costs two events per argument per launch);
/// order buffers you move between a `Gpu` and its forks yourself (`CudaStream::join`).
/// [`Gpu::from_stream`] leaves your context's setting alone.
///
/// ```no_run
/// # fn main() -> ampkit::Result<()> {
/// use ampkit::cuda::Gpu;
/// let gpu = Gpu::new(0)?;
/// let x = gpu.upload(&[1.0f32, 2.0, 3.0])?;
/// let mut h = gpu.alloc_zeros::<ampkit::f16>(3)?;
/// ampkit::ops::cast::f32_to_f16(&gpu, &x, &mut h)?;
/// // The same stream, from cudarc directly:
/// let back: Vec<ampkit::f16> = gpu.stream().clone_dtoh(&h).unwrap();
/// assert_eq!(back[1].to_f32(), 2.0);
/// # Ok(()) }
/// ```
pub struct Gpu {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    info: GpuInfo,
    modules: Arc<ContextModules>,
    scratch: Mutex<Option<CudaSlice<u8>>>,
    /// Partial sums of the loss kernels, behind their completion counter (see
    /// [`Gpu::with_ticket_scratch`]); never shared with other ops.
    ticket_scratch: Mutex<Option<CudaSlice<u8>>>,
    /// Completion counters of multi-level reductions (see [`Gpu::with_counters`]).
    counters: Mutex<Option<CudaSlice<u8>>>,
    sync_launches: AtomicBool,
    /// Incremented whenever a scratch buffer is reallocated (see [`Gpu::scratch_generation`]).
    scratch_generation: AtomicU64,
    /// Kernels launched through this handle ([`Gpu::launch_count`]).
    launches: AtomicU64,
    /// Per-kernel event pairs while profiling ([`Gpu::profile_kernels`]).
    profile: Mutex<Option<Vec<KernelSpan>>>,
    /// Whether `profile` is on, read by every launch.
    profiling: AtomicBool,
    /// Programmatic dependent launch of the modules built for it ([`Gpu::set_dependent_launch`]).
    dependent_launch: AtomicBool,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpu").field("info", &self.info).finish()
    }
}

impl Gpu {
    /// Opens CUDA device `ordinal`: a new context (cudarc's primary context for the device) and
    /// a new non-blocking stream.
    ///
    /// Errors: [`Error::NoCudaDevice`] when the driver library is missing, the driver does not
    /// initialise, no GPU is visible, or `ordinal` is out of range; [`Error::Driver`] when the
    /// context, the stream or a device property cannot be created or read. Set
    /// `AMPKIT_SYNC_LAUNCHES=1` to synchronise after every launch (errors then name the kernel
    /// that caused them; see [`Gpu::set_sync_launches`]).
    pub fn new(ordinal: usize) -> Result<Arc<Gpu>> {
        // SAFETY: only tries to dlopen libcuda; no symbol is called.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err(Error::NoCudaDevice {
                reason: "the CUDA driver library (libcuda.so / nvcuda.dll) was not found; \
                         install the NVIDIA driver or add it to the library path"
                    .into(),
            });
        }
        cudarc::driver::result::init().map_err(|e| Error::NoCudaDevice {
            reason: format!("the CUDA driver did not initialise ({e})"),
        })?;
        let count = CudaContext::device_count().map_err(Error::driver("counting CUDA devices"))?;
        if count <= 0 {
            return Err(Error::NoCudaDevice {
                reason: "the driver sees no GPU (check CUDA_VISIBLE_DEVICES)".into(),
            });
        }
        if ordinal >= count as usize {
            return Err(Error::NoCudaDevice {
                reason: format!(
                    "device {ordinal} was requested but only {count} GPU(s) are visible"
                ),
            });
        }
        let ctx = CudaContext::new(ordinal).map_err(Error::driver(format!(
            "creating a context on device {ordinal}"
        )))?;
        // SAFETY: no buffer exists yet, and every ampkit op runs on the one stream below.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx
            .new_stream()
            .map_err(Error::driver("creating a stream"))?;
        Gpu::open(stream)
    }

    /// An ampkit device backed by a stream you own: every ampkit op on the returned [`Gpu`] is
    /// queued on `stream`, in `stream`'s context, so ampkit's kernels interleave with your own
    /// cudarc work (or another library's, wrapped with
    /// [`CudaContext::wrap_borrowed_stream`]) in one order.
    ///
    /// The context is left as you configured it: ampkit does not touch its event tracking.
    /// With cudarc's default (tracking on), buffers used on several streams are synchronised by
    /// cudarc; if you turned tracking off, order your other streams against this one yourself
    /// (e.g. with [`CudaStream::join`]). Kernel modules are loaded into the context on first use,
    /// as with [`Gpu::new`], and shared by every `Gpu` on the context; each `Gpu` keeps its own
    /// scratch buffer.
    ///
    /// Errors: [`Error::Driver`] when the device's properties cannot be read (e.g. the context
    /// was destroyed or the device is lost).
    ///
    /// ```no_run
    /// use ampkit::cuda::Gpu;
    /// use cudarc::driver::CudaContext;
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let ctx = CudaContext::new(0)?;        // your context
    /// let stream = ctx.new_stream()?;        // your stream
    /// let gpu = Gpu::from_stream(stream.clone())?;
    /// let x = stream.clone_htod(&[1.0f32, -2.0, 3.0])?; // your buffer
    /// let mut y = stream.alloc_zeros::<f32>(3)?;
    /// ampkit::ops::relu::forward(&gpu, &x, &mut y)?;  // queued on your stream
    /// assert_eq!(stream.clone_dtoh(&y)?, [1.0, 0.0, 3.0]);
    /// # Ok(()) }
    /// ```
    pub fn from_stream(stream: Arc<CudaStream>) -> Result<Arc<Gpu>> {
        Gpu::open(stream)
    }

    /// Reads the device's properties through `stream`'s context and wraps both.
    fn open(stream: Arc<CudaStream>) -> Result<Arc<Gpu>> {
        let ctx = stream.context().clone();
        let info = GpuInfo {
            ordinal: ctx.ordinal(),
            name: ctx
                .name()
                .map_err(Error::driver("reading the device name"))?,
            compute_capability: ctx
                .compute_capability()
                .map_err(Error::driver("reading the compute capability"))?,
            multiprocessors: ctx
                .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
                .map_err(Error::driver("reading the multiprocessor count"))?
                as usize,
            total_memory: ctx
                .total_mem()
                .map_err(Error::driver("reading total memory"))?,
            driver_version: driver_version()?,
        };
        let sync = std::env::var("AMPKIT_SYNC_LAUNCHES").is_ok_and(|v| v == "1");
        let pdl = dependent_launch_default(info.compute_capability);
        Ok(Arc::new(Gpu {
            modules: ContextModules::of(&ctx),
            ctx,
            stream,
            info,
            scratch: Mutex::new(None),
            ticket_scratch: Mutex::new(None),
            counters: Mutex::new(None),
            sync_launches: AtomicBool::new(sync),
            scratch_generation: AtomicU64::new(0),
            launches: AtomicU64::new(0),
            profile: Mutex::new(None),
            profiling: AtomicBool::new(false),
            dependent_launch: AtomicBool::new(pdl),
        }))
    }

    /// A handle on the same device, context and loaded modules with a new non-blocking stream
    /// and a scratch buffer of its own; its stream first waits for everything queued on this
    /// one so far, so buffers written here can be read there. Launch synchronisation
    /// ([`Gpu::set_sync_launches`]) starts as this handle's.
    ///
    /// Work on the fork runs concurrently with work on this handle: order it again where
    /// buffers cross (`fork.stream().join(gpu.stream())` or the reverse). Errors:
    /// [`Error::Driver`] when the stream or its event cannot be created.
    pub fn fork(&self) -> Result<Arc<Gpu>> {
        let stream = self
            .stream
            .fork()
            .map_err(Error::driver("creating a forked stream"))?;
        Ok(Arc::new(Gpu {
            ctx: self.ctx.clone(),
            stream,
            info: self.info.clone(),
            modules: self.modules.clone(),
            scratch: Mutex::new(None),
            ticket_scratch: Mutex::new(None),
            counters: Mutex::new(None),
            sync_launches: AtomicBool::new(self.sync_launches()),
            scratch_generation: AtomicU64::new(0),
            launches: AtomicU64::new(0),
            profile: Mutex::new(None),
            profiling: AtomicBool::new(false),
            dependent_launch: AtomicBool::new(self.dependent_launch()),
        }))
    }

    /// Captures the work `body` queues on this handle's stream into a CUDA graph, ready to
    /// launch (on this stream: `graph.launch()`), and returns it with `body`'s result.
    ///
    /// Use a handle no other thread queues work on during the capture ([`Gpu::fork`] makes
    /// one): anything queued on the stream meanwhile lands in the graph. The capture is in
    /// thread-local mode (a call in this thread that cannot be captured, such as a
    /// synchronisation, fails instead of silently breaking the graph), module loads wait until
    /// it ends, and every module the body uses must already be loaded: run the body once
    /// eagerly first (which also sizes the scratch buffer), or call [`Gpu::load_module`].
    ///
    /// Errors: [`Error::InvalidArgument`] when launches synchronise ([`Gpu::set_sync_launches`]),
    /// when this thread is already capturing, or when the body needs a module that is not
    /// loaded; [`Error::Driver`] when the driver rejects the capture (the body's own error comes
    /// first if it failed). The stream is out of capture mode when this returns, either way.
    pub fn capture<R>(&self, body: impl FnOnce(&Gpu) -> Result<R>) -> Result<(R, CudaGraph)> {
        const OP: &str = "cuda::Gpu::capture";
        if self.sync_launches() {
            return Err(Error::InvalidArgument {
                op: OP,
                detail: "launches synchronise on this Gpu (set_sync_launches / \
                         AMPKIT_SYNC_LAUNCHES=1), and a capturing stream cannot synchronise: \
                         capture on a handle with it off (e.g. a fork)"
                    .into(),
            });
        }
        let _gate = self.modules.begin_capture()?;
        self.stream
            .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .map_err(Error::driver("starting a CUDA-graph capture"))?;
        let result = body(self);
        let graph = self.stream.end_capture(CUgraphInstantiate_flags(0));
        let value = result?;
        match graph.map_err(Error::driver("ending a CUDA-graph capture"))? {
            Some(g) => Ok((value, g)),
            None => Err(Error::InvalidArgument {
                op: OP,
                detail: "the capture recorded no work".into(),
            }),
        }
    }

    /// A typed error instead of a driver call that a capturing stream refuses: the driver would
    /// also invalidate the capture (and report the refusal to any tool watching API errors).
    fn refuse_while_capturing(&self, op: &'static str, what: &str) -> Result<()> {
        let status = (self.stream.capture_status())
            .map_err(Error::driver("asking whether the stream is capturing"))?;
        if status == CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE {
            return Ok(());
        }
        Err(Error::InvalidArgument {
            op,
            detail: format!(
                "{what} cannot be part of a CUDA graph, and this stream is capturing one: \
                 do it before or after Gpu::capture, or on another handle (Gpu::fork)"
            ),
        })
    }

    /// See [`ContextModules::outside_captures`]: runs `f` while no CUDA-graph capture is in
    /// progress on this context (at once on a capturing thread).
    pub(crate) fn outside_captures<R>(&self, what: &str, f: impl FnOnce() -> R) -> Result<R> {
        self.modules.outside_captures(what, f)
    }

    /// The context's capture gate, for an object that must reach it when it is dropped
    /// ([`crate::ops::blas::Blas`]).
    pub(crate) fn context_gate(&self) -> Arc<ContextModules> {
        self.modules.clone()
    }

    /// What this device is.
    pub fn info(&self) -> &GpuInfo {
        &self.info
    }

    /// The cudarc context ampkit's modules and buffers live in: for interop with cudarc
    /// (allocations, your own modules, cuBLAS handles). With [`Gpu::from_stream`] it is yours.
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// The stream every ampkit op on this device is queued on (with [`Gpu::from_stream`], yours).
    /// Work you queue on it with cudarc is ordered with ampkit's; to use results on another
    /// stream, make that stream wait on this one (cudarc's `CudaStream::join`).
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Free and total device memory in bytes, now. Errors: [`Error::Driver`].
    pub fn memory(&self) -> Result<(usize, usize)> {
        self.ctx
            .mem_get_info()
            .map_err(Error::driver("reading free memory"))
    }

    /// When on, every launch is followed by a stream synchronisation, so an error raised while a
    /// kernel runs is reported as [`Error::Launch`] naming that kernel. Tests turn it on; it costs
    /// the launch overlap, so benchmarks and training leave it off.
    pub fn set_sync_launches(&self, on: bool) {
        self.sync_launches.store(on, Ordering::Relaxed);
    }

    /// Whether launches synchronise ([`Gpu::set_sync_launches`]); a synchronising stream cannot
    /// be captured into a CUDA graph.
    pub fn sync_launches(&self) -> bool {
        self.sync_launches.load(Ordering::Relaxed)
    }

    /// When on (the default on compute capability 9.0 unless `AMPKIT_PDL=0`), the training
    /// step's kernels (GEMM, augmentation, fused head, unscale, optimizer) launch with Hopper's
    /// programmatic dependent launch: each may start while the kernel before it finishes, and
    /// waits on the device for that kernel's results, so launch latency between them overlaps
    /// work, in eager mode and in captured graphs alike. Results are bit-identical either way.
    /// Ignored on other GPUs (the kernels built for it are sm_90a).
    pub fn set_dependent_launch(&self, on: bool) {
        let on = on && self.info.compute_capability == (9, 0);
        self.dependent_launch.store(on, Ordering::Relaxed);
    }

    /// Whether launches use programmatic dependent launch ([`Gpu::set_dependent_launch`]).
    pub fn dependent_launch(&self) -> bool {
        self.dependent_launch.load(Ordering::Relaxed)
    }

    /// Counts the reallocations of this handle's scratch buffers (split-K GEMMs and LayerNorm's
    /// reductions share one; the fused loss has its own). A captured CUDA graph holds the scratch address it was
    /// captured with: when this number changes, recapture.
    pub fn scratch_generation(&self) -> u64 {
        self.scratch_generation.load(Ordering::Relaxed)
    }

    /// Blocks until all work queued on [`Gpu::stream`] has finished. Errors: [`Error::Driver`]
    /// carrying any error a queued kernel raised (a fault, an illegal address).
    ///
    /// On a stream that is capturing a CUDA graph it returns [`Error::InvalidArgument`] without
    /// asking the driver, so the capture is not invalidated by a refused call.
    pub fn synchronize(&self) -> Result<()> {
        self.refuse_while_capturing("cuda::Gpu::synchronize", "a synchronisation")?;
        self.stream
            .synchronize()
            .map_err(Error::driver("synchronising the stream"))
    }

    /// Copies `host` into a new device buffer (queued on [`Gpu::stream`]). Errors:
    /// [`Error::Driver`] (e.g. out of memory).
    pub fn upload<T: DeviceRepr>(&self, host: &[T]) -> Result<CudaSlice<T>> {
        self.refuse_while_capturing("cuda::Gpu::upload", "a copy from pageable host memory")?;
        self.stream.clone_htod(host).map_err(Error::driver(format!(
            "copying {} bytes to the device",
            std::mem::size_of_val(host)
        )))
    }

    /// Copies `host` into an existing device buffer or view of the same length (queued on
    /// [`Gpu::stream`]), without allocating: for refreshing inputs a captured CUDA graph reads.
    /// The copy is from pageable memory, so the call returns once `host` has been staged and may
    /// be reused. Errors: [`Error::ShapeMismatch`] when the lengths differ (nothing is copied);
    /// [`Error::InvalidArgument`] while this stream is capturing a CUDA graph; [`Error::Driver`].
    ///
    /// ```no_run
    /// # fn main() -> ampkit::Result<()> {
    /// let gpu = ampkit::cuda::Gpu::new(0)?;
    /// let mut x = gpu.upload(&[0.0f32; 4])?;
    /// gpu.upload_into(&[1.0, 2.0, 3.0, 4.0], &mut x)?;
    /// assert_eq!(gpu.download(&x)?, [1.0, 2.0, 3.0, 4.0]);
    /// # Ok(()) }
    /// ```
    pub fn upload_into<T: DeviceRepr>(
        &self,
        host: &[T],
        dst: &mut impl DevicePtrMut<T>,
    ) -> Result<()> {
        const OP: &str = "cuda::Gpu::upload_into";
        crate::error::same_len(OP, host.len(), dst.len())?;
        self.refuse_while_capturing(OP, "a copy from pageable host memory")?;
        (self.stream.memcpy_htod(host, dst)).map_err(Error::driver(format!(
            "copying {} bytes to the device",
            std::mem::size_of_val(host)
        )))
    }

    /// Copies a device buffer (or view) back to the host. Waits for the copy, and so for all
    /// earlier work on [`Gpu::stream`], to finish. Errors: [`Error::Driver`], including any
    /// error an earlier kernel raised.
    pub fn download<T: DeviceRepr, S: DevicePtr<T>>(&self, src: &S) -> Result<Vec<T>> {
        self.refuse_while_capturing("cuda::Gpu::download", "a copy to the host")?;
        self.stream.clone_dtoh(src).map_err(Error::driver(format!(
            "copying {} bytes to the host",
            src.num_bytes()
        )))
    }

    /// A new zero-filled device buffer of `len` elements (queued on [`Gpu::stream`]). Errors:
    /// [`Error::Driver`] (e.g. out of memory).
    pub fn alloc_zeros<T: DeviceRepr + ValidAsZeroBits>(&self, len: usize) -> Result<CudaSlice<T>> {
        self.stream.alloc_zeros(len).map_err(Error::driver(format!(
            "allocating {} bytes",
            len * std::mem::size_of::<T>()
        )))
    }

    /// Runs `f` with the device address of a scratch buffer of at least `bytes` bytes, owned by
    /// this device and reused across calls (ops use it for split-K partial sums and the like).
    ///
    /// Reuse is safe because all work is ordered on [`Gpu::stream`]: a later op's kernels cannot
    /// start before an earlier op's kernels have finished with the buffer. The buffer grows when a
    /// call needs more; the old one is freed in stream order.
    pub(crate) fn with_scratch<R>(
        &self,
        bytes: usize,
        f: impl FnOnce(u64) -> Result<R>,
    ) -> Result<R> {
        self.with_buffer(&self.scratch, bytes, f)
    }

    /// Like [`Gpu::with_scratch`], for kernels that count finished blocks in the buffer's first
    /// 8 bytes (the fused loss: the last block adds the partial sums and puts the counter back to
    /// zero). Its own buffer, allocated zeroed and touched by nothing else, so the counter is
    /// zero whenever no such kernel is running; and this handle's launches are ordered on its one
    /// stream, so two of them never take each other's tickets.
    pub(crate) fn with_ticket_scratch<R>(
        &self,
        bytes: usize,
        f: impl FnOnce(u64) -> Result<R>,
    ) -> Result<R> {
        self.with_buffer(&self.ticket_scratch, bytes, f)
    }

    /// Runs `f` with the device address of at least `bytes` bytes of u32 completion counters
    /// that are zero whenever no kernel is using them: allocated zeroed, and every kernel that
    /// takes tickets from them puts each counter back to zero after its last ticket (the fused
    /// head's two-level reduction). This handle's launches are ordered on its one stream, so two
    /// of them never take each other's tickets.
    pub(crate) fn with_counters<R>(
        &self,
        bytes: usize,
        f: impl FnOnce(u64) -> Result<R>,
    ) -> Result<R> {
        self.with_buffer(&self.counters, bytes, f)
    }

    fn with_buffer<R>(
        &self,
        buffer: &Mutex<Option<CudaSlice<u8>>>,
        bytes: usize,
        f: impl FnOnce(u64) -> Result<R>,
    ) -> Result<R> {
        let mut scratch = buffer.lock().unwrap_or_else(|p| p.into_inner());
        if scratch.as_ref().is_none_or(|s| s.len() < bytes) {
            if super::modules::capturing() {
                // The allocation and the free would become nodes of the graph.
                return Err(Error::InvalidArgument {
                    op: "cuda::Gpu::capture",
                    detail: format!(
                        "a scratch buffer would grow to {bytes} bytes during a CUDA-graph \
                         capture: run the work once before capturing it"
                    ),
                });
            }
            *scratch = None;
            *scratch = Some(self.alloc_zeros::<u8>(bytes.next_multiple_of(1 << 20))?);
            self.scratch_generation.fetch_add(1, Ordering::Relaxed);
        }
        let buf = scratch.as_ref().expect("allocated above");
        let (ptr, _guard) = buf.device_ptr(&self.stream);
        f(ptr)
    }

    /// Loads `module` (one of [`kernels::ALL`]) into this context if it is not loaded yet, and
    /// says which image the driver took (SASS built for this GPU, or PTX it JIT-compiles). Ops
    /// load what they need on first use, so call it only to load eagerly (e.g. before a
    /// capture) or to time the load. Modules are shared by every `Gpu` on the context.
    ///
    /// Errors: [`Error::ModuleLoad`] naming the module, with what to do (e.g. PTX newer than
    /// the driver, or a Hopper-only module on another GPU); [`Error::InvalidArgument`] during a
    /// capture in this thread.
    pub fn load_module(&self, module: &KernelModule) -> Result<ModuleImage> {
        self.modules.ensure(module, self.info.compute_capability)
    }

    /// The image `module` was loaded from, or `None` if it is not loaded on this context.
    pub fn module_image(&self, module: &KernelModule) -> Option<ModuleImage> {
        self.modules.image(module)
    }

    /// Names of the modules loaded into this context so far.
    pub fn loaded_modules(&self) -> Vec<&'static str> {
        kernels::ALL
            .iter()
            .filter(|m| self.modules.image(m).is_some())
            .map(|m| m.name)
            .collect()
    }

    /// The entry point `kernel` of `module`, loading the module on first use.
    ///
    /// Errors: [`Error::ModuleLoad`] when the module does not load or has no such kernel.
    pub fn function(&self, module: &KernelModule, kernel: &'static str) -> Result<CudaFunction> {
        Ok(self
            .modules
            .kernel(module, kernel, self.info.compute_capability)?
            .function
            .clone())
    }

    /// Launches `kernel` from `module` on [`Gpu::stream`].
    ///
    /// Launch-time errors (bad configuration, too many resources) come back at once as
    /// [`Error::Launch`]; errors while the kernel runs surface at the next synchronisation, or here
    /// when [`Gpu::set_sync_launches`] is on.
    ///
    /// # Safety
    /// `args` must match the kernel's parameter list in number, order and type, and every device
    /// pointer among them must stay valid, for every index the kernel touches under `cfg`, until
    /// the kernel has finished.
    pub(crate) unsafe fn launch(
        &self,
        module: &KernelModule,
        kernel: &'static str,
        cfg: LaunchConfig,
        args: &KernelArgs,
    ) -> Result<()> {
        // The module's twin built for programmatic dependent launch, where there is one.
        let (module, dependent) = if self.dependent_launch() {
            let m = kernels::pdl_twin(module).unwrap_or(module);
            (m, kernels::launches_dependent(m))
        } else {
            (module, false)
        };
        let k = self
            .modules
            .kernel(module, kernel, self.info.compute_capability)?;
        k.allow_shared(kernel, cfg.shared_bytes)?;
        let span = self.span_start(kernel)?;
        if dependent {
            // SAFETY: forwarded to the caller; every kernel of the module begins with
            // pdl_start() (kernels::launches_dependent, checked by its tests).
            unsafe { super::launch::launch_dependent(&self.stream, &k.function, cfg, args) }
                .map_err(|source| Error::Launch { kernel, source })?;
        } else {
            let mut builder = self.stream.launch_builder(&k.function);
            for slot in args.first_slots() {
                builder.arg(slot);
            }
            // SAFETY: forwarded to the caller (see the function's contract).
            unsafe { builder.launch(cfg.into()) }
                .map_err(|source| Error::Launch { kernel, source })?;
        }
        self.launches.fetch_add(1, Ordering::Relaxed);
        self.span_end(span)?;
        if self.sync_launches.load(Ordering::Relaxed) {
            self.stream
                .synchronize()
                .map_err(|source| Error::Launch { kernel, source })?;
        }
        Ok(())
    }
}

/// Programmatic dependent launch starts on for compute capability 9.0 (the sm_90a modules built
/// for it), unless `AMPKIT_PDL=0`.
fn dependent_launch_default(cc: (i32, i32)) -> bool {
    cc == (9, 0) && std::env::var("AMPKIT_PDL").map_or(true, |v| v != "0")
}

fn driver_version() -> Result<i32> {
    let mut version = 0;
    // SAFETY: cuDriverGetVersion writes one int; the driver was initialised by the caller.
    let rc = unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut version) };
    if rc != CUresult::CUDA_SUCCESS {
        return Err(Error::Driver {
            context: "reading the driver version".into(),
            source: DriverError(rc),
        });
    }
    Ok(version)
}
