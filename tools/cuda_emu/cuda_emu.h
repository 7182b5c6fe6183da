// A small CUDA emulator for testing kernels/cuda/*.cu on a machine without a GPU.
//
// The kernel source compiles as plain C++20 against this header: every thread of a block is a
// host thread, `__syncthreads()` is a std::barrier, dynamic shared memory is one buffer per
// block (filled with NaN before each block, so a read of shared memory that no thread wrote shows
// up in the results), and the block's threads run the grid's blocks one after another. Only what
// our kernels use is provided: no warp intrinsics, no tensor cores, no static __shared__.
// Results match the GPU up to floating-point contraction; timing means nothing.
#pragma once

#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(x)

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
};

inline thread_local dim3 threadIdx, blockIdx, blockDim, gridDim;

namespace zoo_emu {
inline thread_local std::barrier<>* block_barrier = nullptr;
inline thread_local float* block_smem = nullptr;
}  // namespace zoo_emu

inline void __syncthreads() { zoo_emu::block_barrier->arrive_and_wait(); }
inline float* zoo_dynamic_smem() { return zoo_emu::block_smem; }

/// IEEE half precision with round-to-nearest-even conversions (GCC's _Float16).
struct __half {
  _Float16 v;
};
inline float __half2float(__half x) { return static_cast<float>(x.v); }
inline __half __float2half(float x) { return __half{static_cast<_Float16>(x)}; }

/// bfloat16: the top 16 bits of an f32, rounded to nearest even (NaN kept quiet).
struct __nv_bfloat16 {
  uint16_t bits;
};
inline float __bfloat162float(__nv_bfloat16 x) {
  uint32_t u = static_cast<uint32_t>(x.bits) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline __nv_bfloat16 __float2bfloat16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if (std::isnan(f)) return __nv_bfloat16{static_cast<uint16_t>((u >> 16) | 0x40)};
  u += 0x7fff + ((u >> 16) & 1);
  return __nv_bfloat16{static_cast<uint16_t>(u >> 16)};
}

namespace zoo_emu {

/// Runs `kernel()` as a grid of `grid` blocks of `block.x` threads with `smem_bytes` of dynamic
/// shared memory per block.
inline void launch(dim3 grid, dim3 block, size_t smem_bytes, const std::function<void()>& kernel) {
  const unsigned nt = block.x * block.y * block.z;
  std::barrier<> bar(static_cast<std::ptrdiff_t>(nt));
  std::vector<float> smem(smem_bytes / sizeof(float) + 1);
  std::vector<std::thread> threads;
  threads.reserve(nt);
  for (unsigned t = 0; t < nt; ++t) {
    threads.emplace_back([&, t] {
      block_barrier = &bar;
      block_smem = smem.data();
      blockDim = block;
      gridDim = grid;
      threadIdx = dim3{t % block.x, (t / block.x) % block.y, t / (block.x * block.y)};
      for (unsigned bz = 0; bz < grid.z; ++bz)
        for (unsigned by = 0; by < grid.y; ++by)
          for (unsigned bx = 0; bx < grid.x; ++bx) {
            if (t == 0) std::fill(smem.begin(), smem.end(), std::numeric_limits<float>::quiet_NaN());
            bar.arrive_and_wait();  // shared memory is fresh before anyone starts
            blockIdx = dim3{bx, by, bz};
            kernel();
            bar.arrive_and_wait();  // everyone is done with the block's shared memory
          }
    });
  }
  for (auto& th : threads) th.join();
}

}  // namespace zoo_emu
