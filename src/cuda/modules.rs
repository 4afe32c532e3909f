//! Kernel modules loaded into a CUDA context, shared by every [`Gpu`](super::Gpu) on that
//! context (its forks, and handles opened separately on the same device), and the gate that
//! keeps module loads out of CUDA-graph captures.
//!
//! Why one cache per context, not per handle: a module load may synchronise the context (the
//! driver JIT-compiles PTX, and with lazy loading it uploads code when a function is first
//! fetched), which invalidates a capture in progress on any stream of that context. So loads
//! take the context's gate exclusively and captures hold it shared: a load waits for running
//! captures to end, a capture waits for a running load. Every function of a module is fetched
//! when the module loads, so nothing is loaded lazily later, during someone's capture.

use crate::error::{Error, Result};
use crate::kernels::KernelModule;
use cudarc::driver::sys::CUfunction_attribute;
use cudarc::driver::{CudaContext, CudaFunction, CudaModule, DriverError};
use cudarc::nvrtc::Ptx;
use std::cell::Cell;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, Weak};

/// Which image of a module the driver was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModuleImage {
    /// Machine code built ahead of time for this GPU (e.g. `sm_90`): loads in milliseconds.
    Sass {
        /// The SASS target, e.g. `sm_90a`.
        arch: &'static str,
    },
    /// PTX that the driver JIT-compiles for this GPU (cached by the driver afterwards): the
    /// fallback for GPUs no SASS was built for.
    Ptx {
        /// The virtual architecture, e.g. `compute_80`.
        arch: &'static str,
    },
}

impl std::fmt::Display for ModuleImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ModuleImage::Sass { arch } => write!(f, "{arch} SASS"),
            ModuleImage::Ptx { arch } => write!(f, "{arch} PTX (JIT)"),
        }
    }
}

/// One kernel entry point and the dynamic shared memory it has been opted in to.
pub(crate) struct Kernel {
    pub(crate) function: CudaFunction,
    /// Bytes of dynamic shared memory the function may use (`MAX_DYNAMIC_SHARED_SIZE_BYTES`);
    /// only ever raised, under this lock, so a launch never sees a limit another thread
    /// lowered below what it asked for.
    opted_in: Mutex<u32>,
}

/// Dynamic shared memory a kernel may use without opting in, bytes.
const DEFAULT_DYNAMIC_LIMIT: u32 = 48 * 1024;
/// More than any ampkit kernel declares statically (reduction buffers and mbarriers: at most
/// ~1 KB, `ops::rows::STATIC_SHARED_RESERVE`): static plus dynamic shared memory above 48 KB
/// needs the opt-in, so it starts a little below.
const STATIC_SHARED_SLACK: u32 = 2 * 1024;

impl Kernel {
    /// Makes sure the function may use `bytes` of dynamic shared memory.
    pub(crate) fn allow_shared(&self, name: &'static str, bytes: u32) -> Result<()> {
        let mut limit = self.opted_in.lock().unwrap_or_else(|p| p.into_inner());
        if bytes > *limit {
            self.function
                .set_attribute(
                    CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    bytes as i32,
                )
                .map_err(|source| Error::Launch {
                    kernel: name,
                    source,
                })?;
            *limit = bytes;
        }
        Ok(())
    }
}

/// A loaded module: each `CudaFunction` holds the module, so it stays loaded while cached.
struct Loaded {
    image: ModuleImage,
    kernels: HashMap<&'static str, Arc<Kernel>>,
}

/// What every `Gpu` on one context shares.
pub(crate) struct ContextModules {
    ctx: Arc<CudaContext>,
    /// Indexed like [`crate::kernels::ALL`].
    modules: Mutex<Vec<Option<Arc<Loaded>>>>,
    /// Captures hold it shared, module loads exclusively (see the module doc).
    gate: RwLock<()>,
}

/// How long a module load waits for captures on its context to end (see
/// [`ContextModules::exclusive`]).
const LOAD_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

thread_local! {
    /// Set while this thread has a capture open (through [`ContextModules::begin_capture`]).
    static CAPTURING: Cell<bool> = const { Cell::new(false) };
}

/// Whether this thread has a capture open through [`crate::cuda::Gpu::capture`].
pub(crate) fn capturing() -> bool {
    CAPTURING.with(Cell::get)
}

/// Every context's module cache, found again by the driver's context handle: two `Gpu::new(0)`
/// (two cudarc wrappers of the device's primary context) share one. Entries are weak, so a
/// cache lives exactly as long as some `Gpu` uses it (and it keeps its context alive).
static CONTEXTS: Mutex<Vec<Weak<ContextModules>>> = Mutex::new(Vec::new());

/// Shared access to a context's gate, held for the length of one capture.
pub(crate) struct CaptureGuard<'a> {
    _gate: RwLockReadGuard<'a, ()>,
}

impl Drop for CaptureGuard<'_> {
    fn drop(&mut self) {
        CAPTURING.with(|c| c.set(false));
    }
}

impl ContextModules {
    /// The module cache of `ctx`'s driver context, created on first use.
    pub(crate) fn of(ctx: &Arc<CudaContext>) -> Arc<ContextModules> {
        let mut all = CONTEXTS.lock().unwrap_or_else(|p| p.into_inner());
        all.retain(|w| w.strong_count() > 0);
        if let Some(found) = all
            .iter()
            .filter_map(Weak::upgrade)
            .find(|m| m.ctx.cu_ctx() == ctx.cu_ctx())
        {
            return found;
        }
        let created = Arc::new(ContextModules {
            ctx: ctx.clone(),
            modules: Mutex::new(vec![None; crate::kernels::ALL.len()]),
            gate: RwLock::new(()),
        });
        all.push(Arc::downgrade(&created));
        created
    }

    fn cached(&self, module: &KernelModule) -> Option<Arc<Loaded>> {
        self.modules.lock().unwrap_or_else(|p| p.into_inner())[module.index].clone()
    }

    /// The image `module` was loaded from, if it is loaded.
    pub(crate) fn image(&self, module: &KernelModule) -> Option<ModuleImage> {
        self.cached(module).map(|l| l.image)
    }

    /// Loads `module` unless it is loaded: its best image for a device of compute capability
    /// `cc`, then every entry point. Errors: [`Error::ModuleLoad`]; [`Error::InvalidArgument`]
    /// when this thread has a capture open (a load would invalidate it).
    fn load(&self, module: &KernelModule, cc: (i32, i32)) -> Result<Arc<Loaded>> {
        if let Some(l) = self.cached(module) {
            return Ok(l);
        }
        if CAPTURING.with(Cell::get) {
            return Err(Error::InvalidArgument {
                op: "cuda::Gpu::capture",
                detail: format!(
                    "kernel module `{}` is not loaded yet and cannot load during a CUDA-graph \
                     capture: run the work once before capturing it, or call Gpu::load_module \
                     first",
                    module.name
                ),
            });
        }
        let _exclusive = self.exclusive(&format!("kernel module `{}`", module.name))?;
        if let Some(l) = self.cached(module) {
            return Ok(l); // another thread loaded it while this one waited
        }
        let (cu_module, image) = self.load_image(module, cc)?;
        let mut kernels = HashMap::new();
        for name in module.entry_points() {
            let function = cu_module
                .load_function(name)
                .map_err(|source| Error::ModuleLoad {
                    module: module.name,
                    source,
                    hint: format!("fetching its kernel `{name}` failed"),
                })?;
            let kernel = Kernel {
                function,
                opted_in: Mutex::new(DEFAULT_DYNAMIC_LIMIT - STATIC_SHARED_SLACK),
            };
            kernels.insert(name, Arc::new(kernel));
        }
        let loaded = Arc::new(Loaded { image, kernels });
        self.modules.lock().unwrap_or_else(|p| p.into_inner())[module.index] = Some(loaded.clone());
        Ok(loaded)
    }

    /// The gate, exclusively, for loading `module`. Captures last microseconds to milliseconds,
    /// so this polls rather than blocks: a capture that never ends (its thread waits on a lock
    /// this thread holds, e.g. when it captures on a handle other threads use too) becomes an
    /// error here after [`LOAD_WAIT`] instead of a deadlock.
    fn exclusive(&self, what: &str) -> Result<std::sync::RwLockWriteGuard<'_, ()>> {
        let start = std::time::Instant::now();
        loop {
            match self.gate.try_write() {
                Ok(guard) => return Ok(guard),
                Err(std::sync::TryLockError::Poisoned(p)) => return Ok(p.into_inner()),
                Err(std::sync::TryLockError::WouldBlock) if start.elapsed() < LOAD_WAIT => {
                    std::thread::sleep(std::time::Duration::from_micros(200));
                }
                Err(std::sync::TryLockError::WouldBlock) => {
                    return Err(Error::InvalidArgument {
                        op: "cuda::Gpu::load_module",
                        detail: format!(
                            "{what} waited {} s for CUDA-graph captures on this context to \
                             end: capture on a handle no other thread uses (Gpu::fork), or \
                             load modules and create cuBLAS handles before capturing",
                            LOAD_WAIT.as_secs()
                        ),
                    })
                }
            }
        }
    }

    /// Runs `f`, which may synchronise the whole context or load code into it (creating or
    /// destroying a cuBLAS handle, whose destruction synchronises the context and frees memory
    /// synchronously; a cuBLAS GEMM, whose kernels load on first launch), while no CUDA-graph
    /// capture is in progress on the context: the driver crashed (H100, driver 580) when
    /// `cublasDestroy` synchronised the context while other threads captured and instantiated
    /// graphs. On a thread that is capturing itself, `f` runs at once (its own capture holds the
    /// gate shared, so waiting would deadlock; what it queues joins its graph).
    ///
    /// Errors: [`Error::InvalidArgument`] after waiting [`LOAD_WAIT`] for captures to end.
    pub(crate) fn outside_captures<R>(&self, what: &str, f: impl FnOnce() -> R) -> Result<R> {
        if capturing() {
            return Ok(f());
        }
        let _exclusive = self.exclusive(what)?;
        Ok(f())
    }

    /// SASS built for this device when the module carries some, else (or if the driver refuses
    /// it) the PTX.
    fn load_image(
        &self,
        module: &KernelModule,
        cc: (i32, i32),
    ) -> Result<(Arc<CudaModule>, ModuleImage)> {
        if let Some(arch) = module.sass_for(cc) {
            if let Ok(m) = self
                .ctx
                .load_module(Ptx::from_binary(module.fatbin.to_vec()))
            {
                return Ok((m, ModuleImage::Sass { arch }));
            }
        }
        let m = self
            .ctx
            .load_module(Ptx::from_src(module.ptx))
            .map_err(|source| Error::ModuleLoad {
                module: module.name,
                hint: load_hint(source, module, cc),
                source,
            })?;
        Ok((m, ModuleImage::Ptx { arch: module.arch }))
    }

    /// Loads `module` (see [`ContextModules::load`]) and returns its image.
    pub(crate) fn ensure(&self, module: &KernelModule, cc: (i32, i32)) -> Result<ModuleImage> {
        self.load(module, cc).map(|l| l.image)
    }

    /// The entry point `name` of `module`, loading the module on first use.
    pub(crate) fn kernel(
        &self,
        module: &KernelModule,
        name: &'static str,
        cc: (i32, i32),
    ) -> Result<Arc<Kernel>> {
        self.load(module, cc)?
            .kernels
            .get(name)
            .cloned()
            .ok_or_else(|| Error::ModuleLoad {
                module: module.name,
                source: DriverError(cudarc::driver::sys::CUresult::CUDA_ERROR_NOT_FOUND),
                hint: format!(
                    "it has no kernel `{name}`: the PTX and the host code disagree; rebuild"
                ),
            })
    }

    /// Holds the gate shared for one capture on this thread: waits for a module load in
    /// progress, and keeps new loads waiting until the guard drops. Errors:
    /// [`Error::InvalidArgument`] when this thread already has a capture open.
    pub(crate) fn begin_capture(&self) -> Result<CaptureGuard<'_>> {
        if CAPTURING.with(Cell::get) {
            return Err(Error::InvalidArgument {
                op: "cuda::Gpu::capture",
                detail: "this thread is already capturing a CUDA graph; captures do not nest"
                    .into(),
            });
        }
        let gate = self.gate.read().unwrap_or_else(|p| p.into_inner());
        CAPTURING.with(|c| c.set(true));
        Ok(CaptureGuard { _gate: gate })
    }
}

fn load_hint(err: DriverError, module: &KernelModule, (major, minor): (i32, i32)) -> String {
    use cudarc::driver::sys::CUresult;
    match err.0 {
        CUresult::CUDA_ERROR_UNSUPPORTED_PTX_VERSION => {
            "The PTX was written by an nvcc newer than this driver accepts: rebuild with nvcc \
             13.0 (scripts/install-nvcc, then NVCC=<its path>), or build with \
             AMPKIT_PTX_SNAPSHOT=use to embed the committed snapshot"
                .into()
        }
        CUresult::CUDA_ERROR_NO_BINARY_FOR_GPU | CUresult::CUDA_ERROR_INVALID_PTX => format!(
            "The module targets {} and this GPU is sm_{major}{minor}: ampkit needs compute \
             capability 8.0 or newer (9.0 for Hopper-only modules)",
            module.arch
        ),
        _ => "Check that the GPU is healthy (nvidia-smi) and that the build's kernels are intact"
            .into(),
    }
}
