// A small CUDA emulator for testing kernels/cuda/*.cu on a machine without a GPU.
//
// The kernel source compiles as plain C++20 against this header: every thread of a block is a
// host thread, `__syncthreads()` is a std::barrier, dynamic shared memory is one buffer per
// block (filled with NaN before each block, so a read of shared memory that no thread wrote shows
// up in the results), and the block's threads run the grid's blocks one after another. Only what
// our kernels use is provided: no warp shuffles, no static __shared__. Tensor-core `wmma` is
// emulated at the API level: each thread's fragment holds the whole 16x16 tile (the real
// per-lane split is unspecified, so kernels may only touch fragments through load / store /
// mma / fill), and only lane 0 of a warp writes on `store_matrix_sync`, so a kernel that reads
// a stored tile without a barrier reads NaN here, as it would read stale data on a GPU.
// Results match the GPU up to floating-point contraction; timing means nothing.
#pragma once

#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <thread>
#include <type_traits>
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

namespace nvcuda {
namespace wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

inline float elem_to_float(float x) { return x; }
inline float elem_to_float(__half x) { return __half2float(x); }
inline float elem_to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

/// A whole M x N (accumulator), M x K (matrix_a) or K x N (matrix_b) tile, row-major, in f32.
/// Inputs are exact in f32 (they come from 16-bit types), as on tensor cores.
template <typename Use, int M, int N, int K, typename T = float, typename Layout = void>
struct fragment {
  static constexpr int rows = std::is_same_v<Use, matrix_b> ? K : M;
  static constexpr int cols = std::is_same_v<Use, matrix_a> ? K : N;
  float x[rows * cols];
};

template <typename Use, int M, int N, int K, typename T, typename L>
inline void fill_fragment(fragment<Use, M, N, K, T, L>& f, float v) {
  for (auto& e : f.x) e = v;
}

/// matrix_a / matrix_b: the layout is the fragment's own.
template <typename Use, int M, int N, int K, typename T, typename L, typename P>
inline void load_matrix_sync(fragment<Use, M, N, K, T, L>& f, const P* p, unsigned ldm) {
  using F = fragment<Use, M, N, K, T, L>;
  for (int r = 0; r < F::rows; ++r)
    for (int c = 0; c < F::cols; ++c)
      f.x[r * F::cols + c] = elem_to_float(std::is_same_v<L, row_major> ? p[r * ldm + c] : p[c * ldm + r]);
}

/// accumulator: the layout is given at the call.
template <int M, int N, int K>
inline void load_matrix_sync(fragment<accumulator, M, N, K, float, void>& f, const float* p, unsigned ldm,
                             layout_t layout) {
  for (int r = 0; r < M; ++r)
    for (int c = 0; c < N; ++c) f.x[r * N + c] = layout == mem_row_major ? p[r * ldm + c] : p[c * ldm + r];
}

template <int M, int N, int K>
inline void store_matrix_sync(float* p, const fragment<accumulator, M, N, K, float, void>& f, unsigned ldm,
                              layout_t layout) {
  if (threadIdx.x % 32 != 0) return;  // one lane writes: readers need a barrier, as on a GPU
  for (int r = 0; r < M; ++r)
    for (int c = 0; c < N; ++c) (layout == mem_row_major ? p[r * ldm + c] : p[c * ldm + r]) = f.x[r * N + c];
}

template <int M, int N, int K, typename T, typename LA, typename LB>
inline void mma_sync(fragment<accumulator, M, N, K, float, void>& d, const fragment<matrix_a, M, N, K, T, LA>& a,
                     const fragment<matrix_b, M, N, K, T, LB>& b, const fragment<accumulator, M, N, K, float, void>& c) {
  float out[M * N];
  for (int i = 0; i < M; ++i)
    for (int j = 0; j < N; ++j) {
      float acc = c.x[i * N + j];
      for (int k = 0; k < K; ++k) acc += a.x[i * K + k] * b.x[k * N + j];
      out[i * N + j] = acc;
    }
  for (int i = 0; i < M * N; ++i) d.x[i] = out[i];
}

}  // namespace wmma
}  // namespace nvcuda

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
