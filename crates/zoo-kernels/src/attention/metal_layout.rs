//! Launch geometry of the Metal attention kernels (`kernels/metal/flash_attention.metal`): tile
//! sizes and threadgroup memory per kernel. Compiled on every build (not only with `metal`) so
//! that `tests/metal_emulated.rs` can check these numbers against the kernel source's own
//! formulas: a host that reserves less threadgroup memory than a kernel indexes would corrupt
//! memory on a GPU.

pub use super::cuda_layout::Kernel;

/// Threads per threadgroup (`ZOO_NT`), a 16 × 8 grid.
pub const THREADS: usize = 128;
/// Query rows per threadgroup of the forward kernel (`ZOO_FWD_BM`).
pub const FWD_BM: usize = 16;
/// Keys per tile of the forward kernel (`ZOO_FWD_BN`).
pub const FWD_BN: usize = 16;
/// Query rows per threadgroup of the dQ kernel (`ZOO_DQ_BM`).
pub const DQ_BM: usize = 16;
/// Keys per tile of the dQ kernel (`ZOO_DQ_BN`).
pub const DQ_BN: usize = 8;
/// Keys per threadgroup of the dK,dV kernel (`ZOO_KV_BN`).
pub const KV_BN: usize = 16;
/// Query rows per step of the dK,dV kernel (`ZOO_KV_BM`).
pub const KV_BM: usize = 8;
/// Largest head dimension the Metal kernels serve (`ZOO_MAX_D`).
pub const MAX_HEAD_DIM: usize = 128;
/// Threadgroup memory every Metal GPU offers (Apple's documented minimum and usual maximum).
pub const MAX_TG_MEMORY: usize = 32 * 1024;

/// Bytes of threadgroup memory `kernel` needs at head dim `d` (the kernel source's
/// `fwd_tg_floats`, `dq_tg_floats`, `dkdv_tg_floats`, times 4).
pub fn tg_bytes(kernel: Kernel, d: usize) -> usize {
    4 * match kernel {
        Kernel::Forward => (FWD_BM + 2 * FWD_BN) * (d + 1) + FWD_BM * (FWD_BN + 1) + 4 * FWD_BM,
        Kernel::Dq => (2 * DQ_BM + 2 * DQ_BN) * (d + 1) + DQ_BM * (DQ_BN + 1) + 3 * DQ_BM,
        Kernel::Dkdv => (2 * KV_BN + 2 * KV_BM) * (d + 1) + 2 * KV_BM * (KV_BN + 1) + 3 * KV_BM,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kernel_fits_metal_threadgroup_memory_up_to_the_largest_head_dim() {
        for k in [Kernel::Forward, Kernel::Dq, Kernel::Dkdv] {
            let need = tg_bytes(k, MAX_HEAD_DIM);
            assert!(
                need <= MAX_TG_MEMORY,
                "{k:?} at head dim {MAX_HEAD_DIM}: {need} bytes"
            );
        }
    }
}
