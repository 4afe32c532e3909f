//! Kernel arguments and launch shapes.

use cudarc::driver::DeviceRepr;

/// A kernel's arguments by value, in parameter order.
///
/// Each argument is copied into its own 8-byte slot, so the list owns its values and needs no
/// borrows; the driver reads as many bytes from each slot as the kernel's parameter declares
/// (little-endian, so a `u16` or `f32` sits at the start of its slot).
#[derive(Debug, Default, Clone)]
pub struct KernelArgs {
    slots: Vec<u64>,
}

impl KernelArgs {
    /// An empty argument list.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends one argument: a scalar or a device pointer (as `u64`).
    pub fn push<T: DeviceRepr + Copy>(&mut self, value: T) -> &mut Self {
        const {
            assert!(
                std::mem::size_of::<T>() <= 8,
                "kernel arguments are at most 8 bytes"
            )
        };
        let mut slot = 0u64;
        // SAFETY: T is at most 8 bytes (checked at compile time) and Copy; the slot is 8-aligned.
        unsafe { std::ptr::write_unaligned(&mut slot as *mut u64 as *mut T, value) };
        self.slots.push(slot);
        self
    }

    pub(crate) fn slots(&self) -> &[u64] {
        &self.slots
    }
}

/// Grid and block shape of a launch (1-D to 3-D), plus dynamic shared memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LaunchConfig {
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
