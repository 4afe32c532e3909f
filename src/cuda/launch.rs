//! Kernel arguments and launch shapes.

use cudarc::driver::DeviceRepr;

/// A kernel's arguments by value, in parameter order.
///
/// Each argument is copied into its own run of 8-byte slots, so the list owns its values and
/// needs no borrows; the driver reads as many bytes from an argument's first slot onwards as the
/// kernel's parameter declares (little-endian, so a `u16` or `f32` sits at the start of its
/// slot). Structs passed by value (argument tables) take as many slots as they need; a kernel's
/// parameters may total 4 KB.
#[derive(Debug, Default, Clone)]
pub(crate) struct KernelArgs {
    slots: Vec<u64>,
    starts: Vec<usize>,
}

impl KernelArgs {
    /// An empty argument list.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends one argument: a scalar, a device pointer (as `u64`) or a `#[repr(C)]` struct.
    pub fn push<T: DeviceRepr + Copy>(&mut self, value: T) -> &mut Self {
        let start = self.slots.len();
        self.slots
            .resize(start + std::mem::size_of::<T>().div_ceil(8).max(1), 0);
        // SAFETY: the slots from `start` on hold at least size_of::<T>() bytes; T is Copy, and
        // the unaligned write needs no alignment.
        unsafe { std::ptr::write_unaligned(self.slots[start..].as_mut_ptr() as *mut T, value) };
        self.starts.push(start);
        self
    }

    /// Appends every argument of `tail`, in order (a kernel whose trailing parameters another
    /// op prepares).
    pub fn extend(&mut self, tail: &KernelArgs) -> &mut Self {
        for (i, &start) in tail.starts.iter().enumerate() {
            let end = tail.starts.get(i + 1).copied().unwrap_or(tail.slots.len());
            self.starts.push(self.slots.len());
            self.slots.extend_from_slice(&tail.slots[start..end]);
        }
        self
    }

    /// The first slot of each argument, in order: what the driver's parameter array points at.
    pub(crate) fn first_slots(&self) -> impl Iterator<Item = &u64> {
        self.starts.iter().map(|&s| &self.slots[s])
    }
}

/// Grid and block shape of a launch (1-D to 3-D), plus dynamic shared memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LaunchConfig {
    /// Blocks in the grid (x, y, z).
    pub grid: (u32, u32, u32),
    /// Threads per block (x, y, z).
    pub block: (u32, u32, u32),
    /// Dynamic shared memory per block, bytes.
    pub shared_bytes: u32,
}

impl LaunchConfig {
    /// A 1-D launch of `blocks` blocks of `threads` threads.
    pub fn linear(blocks: u32, threads: u32) -> Self {
        LaunchConfig {
            grid: (blocks, 1, 1),
            block: (threads, 1, 1),
            shared_bytes: 0,
        }
    }
}

impl From<LaunchConfig> for cudarc::driver::LaunchConfig {
    fn from(c: LaunchConfig) -> Self {
        cudarc::driver::LaunchConfig {
            grid_dim: c.grid,
            block_dim: c.block,
            shared_mem_bytes: c.shared_bytes,
        }
    }
}

/// Launches `function` on `stream` with programmatic dependent launch allowed (Hopper): the
/// kernel may start before the previous kernel in the stream has finished, so every kernel
/// launched this way must begin with `pdl_start()` (`kernels/pdl.cuh`), which waits for that
/// kernel's completion and writes before any global memory access. Inside a stream capture the
/// edge becomes a programmatic dependency of the graph.
///
/// # Safety
/// As `cuLaunchKernelEx`: `args` must match the kernel's parameters, every pointer among them
/// stay valid until the kernel finishes, and the kernel must begin with `pdl_start()`.
pub(crate) unsafe fn launch_dependent(
    stream: &cudarc::driver::CudaStream,
    function: &cudarc::driver::CudaFunction,
    cfg: LaunchConfig,
    args: &KernelArgs,
) -> Result<(), cudarc::driver::DriverError> {
    use cudarc::driver::sys;
    stream.context().bind_to_thread()?;
    let mut params: Vec<*mut std::ffi::c_void> = args
        .first_slots()
        .map(|s| s as *const u64 as *mut std::ffi::c_void)
        .collect();
    let mut attr = sys::CUlaunchAttribute {
        id: sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION,
        pad: [0; 4],
        value: sys::CUlaunchAttributeValue {
            programmaticStreamSerializationAllowed: 1,
        },
    };
    let config = sys::CUlaunchConfig {
        gridDimX: cfg.grid.0,
        gridDimY: cfg.grid.1,
        gridDimZ: cfg.grid.2,
        blockDimX: cfg.block.0,
        blockDimY: cfg.block.1,
        blockDimZ: cfg.block.2,
        sharedMemBytes: cfg.shared_bytes,
        hStream: stream.cu_stream(),
        attrs: &mut attr,
        numAttrs: 1,
    };
    // SAFETY: the config, its one attribute and the parameter array outlive the call (the
    // driver copies the parameters before returning); the rest is the caller's contract.
    unsafe {
        sys::cuLaunchKernelEx(
            &config,
            function.cu_function(),
            params.as_mut_ptr(),
            std::ptr::null_mut(),
        )
    }
    .result()
}
