// A small Metal emulator for testing kernels/metal/*.metal on a machine without a Mac.
//
// The kernel source compiles as plain C++20 against this header: the address-space qualifiers
// (device, constant, threadgroup, thread) and `kernel` vanish, every thread of a threadgroup is a
// host thread, `threadgroup_barrier` is a std::barrier, and threadgroup memory is one buffer per
// threadgroup (filled with NaN before each threadgroup, so a read that no thread wrote shows up
// in the results). The threadgroups of a grid run one after another. Only what our kernels use
// is provided. Results match a GPU up to floating-point contraction; timing means nothing.
// (The CUDA kernels have the same kind of emulator in tools/cuda_emu.)
#pragma once

#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <thread>
#include <vector>

#define __HAVE_BFLOAT__ 1

using uint = unsigned int;
struct uint3 {
  uint x = 0, y = 0, z = 0;
};

using std::exp;
using std::fma;
using std::log;
using std::max;

/// IEEE half precision with round-to-nearest-even conversions (GCC's _Float16).
using half = _Float16;

/// bfloat16: the top 16 bits of an f32, rounded to nearest even (NaN kept quiet).
struct bfloat {
  uint16_t bits = 0;
  bfloat() = default;
  explicit bfloat(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    if (std::isnan(f)) {
      bits = static_cast<uint16_t>((u >> 16) | 0x40);
      return;
    }
    u += 0x7fff + ((u >> 16) & 1);
    bits = static_cast<uint16_t>(u >> 16);
  }
  explicit operator float() const {
    uint32_t u = static_cast<uint32_t>(bits) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
};

enum class mem_flags { mem_none = 0, mem_device = 1, mem_threadgroup = 2 };

namespace zoo_metal_emu {
inline thread_local std::barrier<>* group_barrier = nullptr;
}  // namespace zoo_metal_emu

inline void threadgroup_barrier(mem_flags) { zoo_metal_emu::group_barrier->arrive_and_wait(); }

namespace zoo_metal_emu {

/// Runs `fn(tid, gid, tg_memory)` for a grid of `groups` threadgroups of `threads` threads
/// with `tg_bytes` of threadgroup memory each (dispatchThreadgroups:threadsPerThreadgroup:).
inline void dispatch(uint3 groups, uint threads, size_t tg_bytes,
                     const std::function<void(uint, uint3, float*)>& fn) {
  std::barrier<> bar(static_cast<std::ptrdiff_t>(threads));
  std::vector<float> mem(tg_bytes / sizeof(float) + 1);
  std::vector<std::thread> pool;
  pool.reserve(threads);
  for (uint t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      group_barrier = &bar;
      for (uint gz = 0; gz < groups.z; ++gz)
        for (uint gy = 0; gy < groups.y; ++gy)
          for (uint gx = 0; gx < groups.x; ++gx) {
            if (t == 0) std::fill(mem.begin(), mem.end(), std::numeric_limits<float>::quiet_NaN());
            bar.arrive_and_wait();  // threadgroup memory is fresh before anyone starts
            fn(t, uint3{gx, gy, gz}, mem.data());
            bar.arrive_and_wait();  // everyone is done with the threadgroup's memory
          }
    });
  }
  for (auto& th : pool) th.join();
}

}  // namespace zoo_metal_emu

// MSL's address-space qualifiers and `kernel` mean nothing on the host (defined last: `thread`
// would break std::thread above).
#define device
#define constant
#define threadgroup
#define thread
#define kernel
