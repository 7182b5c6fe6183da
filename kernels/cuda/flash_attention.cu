// candle-zoo fused attention for CUDA: forward (output + row log-sum-exp) and backward
// (dQ, dK, dV recomputed from the log-sum-exp, FlashAttention-2 work split), f32 / f16 / bf16
// inputs with f32 arithmetic, head_dim <= 128. Two variants of each kernel: plain f32 FMA ("SIMT",
// every dtype) and tensor-core wmma (f16 / bf16, sm_80+, the default for those dtypes).
//
// Semantics are the CPU kernel's (crates/zoo-kernels/src/attention/cpu.rs):
//   q (b, h, nq, d), k/v (b, hkv, nk, d), all contiguous; query head hh reads kv head
//   hh / (h / hkv); query i of batch bi sees keys j < hi(bi, i) where
//   hi = min(nk, kv_len[bi]) and, when causal, also j <= i + nk - nq (bottom-right aligned);
//   an optional additive f32 mask (-inf forbids) is read through 4 broadcast strides;
//   a row that sees no key gets output 0, lse -inf and zero gradient.
//
// Work split (one thread block = 256 threads as a 16 x 16 grid (ty, tx)):
//   forward  : block = 64 query rows of one (batch, head); loop over 64-key tiles with the
//              online softmax. S tile element (r, c) with r = ty + 16 i, c = tx + 16 j.
//   bwd_dq   : block = 64 query rows; loop over key tiles, dQ in registers (no atomics).
//   bwd_dkdv : block = 64 keys of one (batch, kv head); loop over the group's query heads and
//              32-row query tiles, dK and dV in registers (no atomics, deterministic).
//   bwd_delta: delta_i = sum_e dO_ie O_ie, one thread per row.
// Tiles live in dynamic shared memory as f32 with a +1 row pad (no bank conflicts on the
// column walks). This file also compiles as plain C++ against tools/cuda_emu/cuda_emu.h, which
// runs each block's threads as host threads; that is how CI tests this code without a GPU.

#ifdef ZOO_CUDA_EMU
#include "cuda_emu.h"
#else
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>
/// The block's dynamic shared memory (sized by the launch).
__device__ __forceinline__ float* zoo_dynamic_smem() {
  extern __shared__ float zoo_smem[];
  return zoo_smem;
}
#endif

namespace zoo {

constexpr int NT = 256;  // threads per block
constexpr int TD = 16;   // thread grid side
constexpr int BM = 64;   // query rows per block (forward, dq)
constexpr int BN = 64;   // keys per tile / block
constexpr int BMK = 32;  // query rows per step of the dK/dV kernel
constexpr int MAX_D = 128;
constexpr int DJ = MAX_D / TD;  // head-dim columns per thread
constexpr int LDS = BN + 1;     // row stride of score tiles

__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T> __device__ __forceinline__ T from_f(float x);
template <> __device__ __forceinline__ float from_f<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_f<__half>(float x) { return __float2half(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float x) {
  return __float2bfloat16(x);
}

/// Scalars of one call (passed by value as kernel arguments, grouped here for the helpers).
struct Shape {
  int h, hkv, nq, nk, d;
  float scale;
  int causal;
  int has_mask;
  long long ms0, ms1, ms2, ms3;  // mask strides over (batch, head, query, key); 0 = broadcast
};

/// Keys j < hi are visible to query i of batch bi (before the additive mask).
__device__ __forceinline__ int visible_keys(const Shape& s, const int* kv_len, int bi, int i) {
  int hi = s.nk < kv_len[bi] ? s.nk : kv_len[bi];
  if (hi < 0) hi = 0;
  if (s.causal) {
    int c = i + s.nk + 1 - s.nq;
    if (c < 0) c = 0;
    if (c < hi) hi = c;
  }
  return hi;
}

__device__ __forceinline__ float mask_at(const Shape& s, const float* mask, int bi, int hh, int i, int j) {
  return s.has_mask ? mask[bi * s.ms0 + hh * s.ms1 + i * s.ms2 + j * s.ms3] : 0.0f;
}

/// Copies `rows` rows of `src` (row stride d, starting at row `first` of `limit`) into the f32
/// tile `dst` (row stride d + 1), times `mul`; rows past `limit` become zeros.
template <typename T>
__device__ __forceinline__ void load_tile(float* dst, const T* src, int first, int rows, int limit, int d,
                                          float mul) {
  const int ld = d + 1;
  for (int idx = threadIdx.x; idx < rows * d; idx += NT) {
    const int r = idx / d, e = idx % d;
    const int g = first + r;
    dst[r * ld + e] = g < limit ? to_f(src[(long long)g * d + e]) * mul : 0.0f;
  }
}

// ---------------------------------------------------------------------------------------------
// Forward
// ---------------------------------------------------------------------------------------------

/// Shared memory of the forward kernel, in floats (the host computes the same number).
__host__ __device__ inline int fwd_smem_floats(int d) { return (BM + 2 * BN) * (d + 1) + BM * LDS + 4 * BM; }

template <typename T>
__device__ void flash_fwd(const T* q, const T* k, const T* v, T* o, float* lse, const int* kv_len,
                          const float* mask, Shape s) {
  float* smem = zoo_dynamic_smem();
  const int d = s.d, ld = d + 1;
  float* Qs = smem;
  float* Ks = Qs + BM * ld;
  float* Vs = Ks + BN * ld;
  float* Ss = Vs + BN * ld;
  float* m_s = Ss + BM * LDS;
  float* l_s = m_s + BM;
  float* a_s = l_s + BM;
  int* hi_s = reinterpret_cast<int*>(a_s + BM);

  const int tid = threadIdx.x, tx = tid % TD, ty = tid / TD;
  const int row0 = blockIdx.x * BM;
  const int bh = blockIdx.y, bi = bh / s.h, hh = bh % s.h, kvh = hh / (s.h / s.hkv);
  const T* qb = q + (long long)bh * s.nq * d;
  const T* kb = k + (long long)(bi * s.hkv + kvh) * s.nk * d;
  const T* vb = v + (long long)(bi * s.hkv + kvh) * s.nk * d;

  load_tile(Qs, qb, row0, BM, s.nq, d, s.scale);
  for (int r = tid; r < BM; r += NT) {
    const int gi = row0 + r;
    hi_s[r] = gi < s.nq ? visible_keys(s, kv_len, bi, gi) : 0;
    m_s[r] = -INFINITY;
    l_s[r] = 0.0f;
  }
  __syncthreads();
  int max_hi = 0;
  for (int r = 0; r < BM; ++r) max_hi = hi_s[r] > max_hi ? hi_s[r] : max_hi;

  float acc[4][DJ];
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < DJ; ++j) acc[i][j] = 0.0f;

  for (int j0 = 0; j0 < max_hi; j0 += BN) {
    load_tile(Ks, kb, j0, BN, s.nk, d, 1.0f);
    load_tile(Vs, vb, j0, BN, s.nk, d, 1.0f);
    __syncthreads();
    // S = (scale Q) K^T for this thread's 4 x 4 elements, masked.
    float sc[4][4];
    for (int i = 0; i < 4; ++i)
      for (int j = 0; j < 4; ++j) sc[i][j] = 0.0f;
    for (int e = 0; e < d; ++e) {
      float qv[4], kv[4];
      for (int i = 0; i < 4; ++i) qv[i] = Qs[(ty + TD * i) * ld + e];
      for (int j = 0; j < 4; ++j) kv[j] = Ks[(tx + TD * j) * ld + e];
      for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 4; ++j) sc[i][j] = fmaf(qv[i], kv[j], sc[i][j]);
    }
    for (int i = 0; i < 4; ++i) {
      const int r = ty + TD * i;
      for (int j = 0; j < 4; ++j) {
        const int c = tx + TD * j, kj = j0 + c;
        Ss[r * LDS + c] = kj < hi_s[r] ? sc[i][j] + mask_at(s, mask, bi, hh, row0 + r, kj) : -INFINITY;
      }
    }
    __syncthreads();
    // Online softmax, one thread per row.
    if (tid < BM) {
      const int r = tid;
      float* srow = Ss + r * LDS;
      const float m_old = m_s[r];
      float mx = m_old;
      for (int c = 0; c < BN; ++c) mx = fmaxf(mx, srow[c]);
      float alpha = 1.0f;
      if (mx == -INFINITY) {
        for (int c = 0; c < BN; ++c) srow[c] = 0.0f;
      } else {
        float sum = 0.0f;
        for (int c = 0; c < BN; ++c) {
          const float p = expf(srow[c] - mx);
          srow[c] = p;
          sum += p;
        }
        alpha = expf(m_old - mx);  // 0 when m_old is -inf
        l_s[r] = l_s[r] * alpha + sum;
        m_s[r] = mx;
      }
      a_s[r] = alpha;
    }
    __syncthreads();
    // O = alpha O + P V
    for (int i = 0; i < 4; ++i) {
      const float al = a_s[ty + TD * i];
      for (int j = 0; j < DJ; ++j) acc[i][j] *= al;
    }
    for (int c = 0; c < BN; ++c) {
      float p[4];
      for (int i = 0; i < 4; ++i) p[i] = Ss[(ty + TD * i) * LDS + c];
      for (int j = 0; j < DJ; ++j) {
        const int col = tx + TD * j;
        if (col < d) {
          const float vv = Vs[c * ld + col];
          for (int i = 0; i < 4; ++i) acc[i][j] = fmaf(p[i], vv, acc[i][j]);
        }
      }
    }
    __syncthreads();
  }

  T* ob = o + (long long)bh * s.nq * d;
  for (int i = 0; i < 4; ++i) {
    const int r = ty + TD * i, gi = row0 + r;
    if (gi >= s.nq) continue;
    const float l = l_s[r];
    const float inv = l > 0.0f ? 1.0f / l : 0.0f;
    for (int j = 0; j < DJ; ++j) {
      const int col = tx + TD * j;
      if (col < d) ob[(long long)gi * d + col] = from_f<T>(acc[i][j] * inv);
    }
  }
  if (tid < BM && row0 + tid < s.nq) {
    const float l = l_s[tid];
    lse[(long long)bh * s.nq + row0 + tid] = l > 0.0f ? m_s[tid] + logf(l) : -INFINITY;
  }
}

// ---------------------------------------------------------------------------------------------
// Backward
// ---------------------------------------------------------------------------------------------

/// delta_i = sum_e dO_ie O_ie for every row of (b, h, nq).
template <typename T>
__device__ void flash_bwd_delta(const T* o, const T* dout, float* delta, long long rows, int d) {
  const long long r = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (r >= rows) return;
  float acc = 0.0f;
  for (int e = 0; e < d; ++e) acc = fmaf(to_f(o[r * d + e]), to_f(dout[r * d + e]), acc);
  delta[r] = acc;
}

__host__ __device__ inline int dq_smem_floats(int d) { return (2 * BM + 2 * BN) * (d + 1) + BM * LDS + 3 * BM; }

/// dQ for 64 query rows: loop over key tiles, P = exp(S - lse), dS = P (dO V^T - delta),
/// dQ = scale dS K.
template <typename T>
__device__ void flash_bwd_dq(const T* q, const T* k, const T* v, const T* dout, const float* lse,
                             const float* delta, T* dq, const int* kv_len, const float* mask, Shape s) {
  float* smem = zoo_dynamic_smem();
  const int d = s.d, ld = d + 1;
  float* Qs = smem;
  float* dOs = Qs + BM * ld;
  float* Ks = dOs + BM * ld;
  float* Vs = Ks + BN * ld;
  float* Ss = Vs + BN * ld;
  float* lse_s = Ss + BM * LDS;
  float* dl_s = lse_s + BM;
  int* hi_s = reinterpret_cast<int*>(dl_s + BM);

  const int tid = threadIdx.x, tx = tid % TD, ty = tid / TD;
  const int row0 = blockIdx.x * BM;
  const int bh = blockIdx.y, bi = bh / s.h, hh = bh % s.h, kvh = hh / (s.h / s.hkv);
  const long long qoff = (long long)bh * s.nq * d;
  const T* kb = k + (long long)(bi * s.hkv + kvh) * s.nk * d;
  const T* vb = v + (long long)(bi * s.hkv + kvh) * s.nk * d;

  load_tile(Qs, q + qoff, row0, BM, s.nq, d, s.scale);
  load_tile(dOs, dout + qoff, row0, BM, s.nq, d, 1.0f);
  for (int r = tid; r < BM; r += NT) {
    const int gi = row0 + r;
    const float ls = gi < s.nq ? lse[(long long)bh * s.nq + gi] : -INFINITY;
    lse_s[r] = ls;
    dl_s[r] = gi < s.nq ? delta[(long long)bh * s.nq + gi] : 0.0f;
    // A row that saw no key in the forward pass has zero gradient.
    hi_s[r] = (gi < s.nq && ls != -INFINITY) ? visible_keys(s, kv_len, bi, gi) : 0;
  }
  __syncthreads();
  int max_hi = 0;
  for (int r = 0; r < BM; ++r) max_hi = hi_s[r] > max_hi ? hi_s[r] : max_hi;

  float acc[4][DJ];
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < DJ; ++j) acc[i][j] = 0.0f;

  for (int j0 = 0; j0 < max_hi; j0 += BN) {
    load_tile(Ks, kb, j0, BN, s.nk, d, 1.0f);
    load_tile(Vs, vb, j0, BN, s.nk, d, 1.0f);
    __syncthreads();
    float sc[4][4], dp[4][4];
    for (int i = 0; i < 4; ++i)
      for (int j = 0; j < 4; ++j) sc[i][j] = dp[i][j] = 0.0f;
    for (int e = 0; e < d; ++e) {
      float qv[4], gv[4], kv[4], vv[4];
      for (int i = 0; i < 4; ++i) {
        qv[i] = Qs[(ty + TD * i) * ld + e];
        gv[i] = dOs[(ty + TD * i) * ld + e];
      }
      for (int j = 0; j < 4; ++j) {
        kv[j] = Ks[(tx + TD * j) * ld + e];
        vv[j] = Vs[(tx + TD * j) * ld + e];
      }
      for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 4; ++j) {
          sc[i][j] = fmaf(qv[i], kv[j], sc[i][j]);
          dp[i][j] = fmaf(gv[i], vv[j], dp[i][j]);
        }
    }
    for (int i = 0; i < 4; ++i) {
      const int r = ty + TD * i;
      for (int j = 0; j < 4; ++j) {
        const int c = tx + TD * j, kj = j0 + c;
        float ds = 0.0f;
        if (kj < hi_s[r]) {
          const float p = expf(sc[i][j] + mask_at(s, mask, bi, hh, row0 + r, kj) - lse_s[r]);
          ds = p * (dp[i][j] - dl_s[r]);
        }
        Ss[r * LDS + c] = ds;
      }
    }
    __syncthreads();
    for (int c = 0; c < BN; ++c) {
      float g[4];
      for (int i = 0; i < 4; ++i) g[i] = Ss[(ty + TD * i) * LDS + c];
      for (int j = 0; j < DJ; ++j) {
        const int col = tx + TD * j;
        if (col < d) {
          const float kv = Ks[c * ld + col];
          for (int i = 0; i < 4; ++i) acc[i][j] = fmaf(g[i], kv, acc[i][j]);
        }
      }
    }
    __syncthreads();
  }

  for (int i = 0; i < 4; ++i) {
    const int gi = row0 + ty + TD * i;
    if (gi >= s.nq) continue;
    for (int j = 0; j < DJ; ++j) {
      const int col = tx + TD * j;
      if (col < d) dq[qoff + (long long)gi * d + col] = from_f<T>(acc[i][j] * s.scale);
    }
  }
}

__host__ __device__ inline int dkdv_smem_floats(int d) {
  return (2 * BN + 2 * BMK) * (d + 1) + 2 * BMK * LDS + 3 * BMK;
}

/// dK and dV for 64 keys of one (batch, kv head): loop over the group's query heads and 32-row
/// query tiles; dV += P^T dO, dK += dS^T (scale Q).
template <typename T>
__device__ void flash_bwd_dkdv(const T* q, const T* k, const T* v, const T* dout, const float* lse,
                               const float* delta, T* dk, T* dv, const int* kv_len, const float* mask,
                               Shape s) {
  float* smem = zoo_dynamic_smem();
  const int d = s.d, ld = d + 1;
  float* Ks = smem;
  float* Vs = Ks + BN * ld;
  float* Qs = Vs + BN * ld;
  float* dOs = Qs + BMK * ld;
  float* Ps = dOs + BMK * ld;
  float* dSs = Ps + BMK * LDS;
  float* lse_s = dSs + BMK * LDS;
  float* dl_s = lse_s + BMK;
  int* hi_s = reinterpret_cast<int*>(dl_s + BMK);

  const int tid = threadIdx.x, tx = tid % TD, ty = tid / TD;
  const int j0 = blockIdx.x * BN;
  const int bk = blockIdx.y, bi = bk / s.hkv, kvh = bk % s.hkv, g = s.h / s.hkv;
  const long long kvoff = (long long)bk * s.nk * d;

  load_tile(Ks, k + kvoff, j0, BN, s.nk, d, 1.0f);
  load_tile(Vs, v + kvoff, j0, BN, s.nk, d, 1.0f);

  // Accumulators: key rows c = ty + 16 i, head-dim columns tx + 16 j.
  float ak[4][DJ], av[4][DJ];
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < DJ; ++j) ak[i][j] = av[i][j] = 0.0f;

  // With causal masking, query i sees key j0 only if i >= j0 + nq - nk: earlier rows are skipped.
  int first = s.causal ? j0 + s.nq - s.nk : 0;
  if (first < 0) first = 0;
  first = (first / BMK) * BMK;

  for (int qh = 0; qh < g; ++qh) {
    const int hh = kvh * g + qh, bh = bi * s.h + hh;
    const long long qoff = (long long)bh * s.nq * d;
    for (int i0 = first; i0 < s.nq; i0 += BMK) {
      __syncthreads();  // the previous step is done with Qs, dOs, Ps, dSs
      load_tile(Qs, q + qoff, i0, BMK, s.nq, d, s.scale);
      load_tile(dOs, dout + qoff, i0, BMK, s.nq, d, 1.0f);
      for (int r = tid; r < BMK; r += NT) {
        const int gi = i0 + r;
        const float ls = gi < s.nq ? lse[(long long)bh * s.nq + gi] : -INFINITY;
        lse_s[r] = ls;
        dl_s[r] = gi < s.nq ? delta[(long long)bh * s.nq + gi] : 0.0f;
        hi_s[r] = (gi < s.nq && ls != -INFINITY) ? visible_keys(s, kv_len, bi, gi) : 0;
      }
      __syncthreads();
      // S and dP for query rows r = ty + 16 i (i < 2), keys c = tx + 16 j (j < 4).
      float sc[2][4], dp[2][4];
      for (int i = 0; i < 2; ++i)
        for (int j = 0; j < 4; ++j) sc[i][j] = dp[i][j] = 0.0f;
      for (int e = 0; e < d; ++e) {
        float qv[2], gv[2], kv[4], vv[4];
        for (int i = 0; i < 2; ++i) {
          qv[i] = Qs[(ty + TD * i) * ld + e];
          gv[i] = dOs[(ty + TD * i) * ld + e];
        }
        for (int j = 0; j < 4; ++j) {
          kv[j] = Ks[(tx + TD * j) * ld + e];
          vv[j] = Vs[(tx + TD * j) * ld + e];
        }
        for (int i = 0; i < 2; ++i)
          for (int j = 0; j < 4; ++j) {
            sc[i][j] = fmaf(qv[i], kv[j], sc[i][j]);
            dp[i][j] = fmaf(gv[i], vv[j], dp[i][j]);
          }
      }
      for (int i = 0; i < 2; ++i) {
        const int r = ty + TD * i;
        for (int j = 0; j < 4; ++j) {
          const int c = tx + TD * j, kj = j0 + c;
          float p = 0.0f, ds = 0.0f;
          if (kj < hi_s[r]) {
            p = expf(sc[i][j] + mask_at(s, mask, bi, hh, i0 + r, kj) - lse_s[r]);
            ds = p * (dp[i][j] - dl_s[r]);
          }
          Ps[r * LDS + c] = p;
          dSs[r * LDS + c] = ds;
        }
      }
      __syncthreads();
      for (int r = 0; r < BMK; ++r) {
        float p[4], ds[4];
        for (int i = 0; i < 4; ++i) {
          p[i] = Ps[r * LDS + ty + TD * i];
          ds[i] = dSs[r * LDS + ty + TD * i];
        }
        for (int j = 0; j < DJ; ++j) {
          const int col = tx + TD * j;
          if (col < d) {
            const float gv = dOs[r * ld + col], qv = Qs[r * ld + col];
            for (int i = 0; i < 4; ++i) {
              av[i][j] = fmaf(p[i], gv, av[i][j]);
              ak[i][j] = fmaf(ds[i], qv, ak[i][j]);
            }
          }
        }
      }
    }
  }

  for (int i = 0; i < 4; ++i) {
    const int kj = j0 + ty + TD * i;
    if (kj >= s.nk) continue;
    for (int j = 0; j < DJ; ++j) {
      const int col = tx + TD * j;
      if (col < d) {
        dk[kvoff + (long long)kj * d + col] = from_f<T>(ak[i][j]);
        dv[kvoff + (long long)kj * d + col] = from_f<T>(av[i][j]);
      }
    }
  }
}


// ---------------------------------------------------------------------------------------------
// Tensor-core kernels (f16 / bf16, sm_80+): the same algorithm and work split as above, with the
// block products on wmma 16x16x16 tiles (f32 accumulation). Q, K, V, dO stay in the input dtype
// in shared memory (head dim zero-padded to a multiple of 32); scores and O are f32; P and dS are
// rounded to the input dtype for their products, as FlashAttention-2 does. 8 warps: warp w owns
// score rows 16 (w / 2) and columns 32 (w % 2) .. +32, and output rows 16 (w / 2) and head-dim
// columns dp/2 (w % 2) .. +dp/2. Kernels only touch wmma fragments through load/store/mma/fill,
// so the emulator (which keeps whole tiles per thread) computes the same results.
// ---------------------------------------------------------------------------------------------

namespace wm = nvcuda::wmma;
constexpr int LDSF = BN + 4;  // f32 score tiles: row stride (multiple of 4 floats)
constexpr int LDP = BN + 8;   // 16-bit probability tiles: row stride (multiple of 8 elements)

/// Head dim padded for the tensor cores (multiple of 32, so the two column halves are whole tiles).
__host__ __device__ inline int tc_dp(int d) { return (d + 31) / 32 * 32; }

/// Copies `rows` rows of `src` into the 16-bit tile `dst` (row stride dp + 8), zero-padding rows
/// past `limit` and columns past d.
template <typename T>
__device__ __forceinline__ void load_tile_tc(T* dst, const T* src, int first, int rows, int limit, int d) {
  const int dp = tc_dp(d), ldt = dp + 8;
  for (int idx = threadIdx.x; idx < rows * dp; idx += NT) {
    const int r = idx / dp, e = idx % dp;
    const int g = first + r;
    dst[r * ldt + e] = (g < limit && e < d) ? src[(long long)g * d + e] : from_f<T>(0.0f);
  }
}

/// out (16 x 32, f32, row stride ldo) = A (16 rows of a, row-major, stride lda) times the
/// transpose of 32 rows of b (row-major, stride ldb), over `kdim` (a multiple of 16).
template <typename T>
__device__ __forceinline__ void warp_abt_16x32(float* out, int ldo, const T* a, int lda, const T* b, int ldb, int kdim) {
  wm::fragment<wm::accumulator, 16, 16, 16, float> acc[2];
  wm::fill_fragment(acc[0], 0.0f);
  wm::fill_fragment(acc[1], 0.0f);
  for (int kk = 0; kk < kdim; kk += 16) {
    wm::fragment<wm::matrix_a, 16, 16, 16, T, wm::row_major> fa;
    wm::load_matrix_sync(fa, a + kk, lda);
    for (int t = 0; t < 2; ++t) {
      wm::fragment<wm::matrix_b, 16, 16, 16, T, wm::col_major> fb;
      wm::load_matrix_sync(fb, b + t * 16 * ldb + kk, ldb);
      wm::mma_sync(acc[t], fa, fb, acc[t]);
    }
  }
  for (int t = 0; t < 2; ++t) wm::store_matrix_sync(out + t * 16, acc[t], ldo, wm::mem_row_major);
}

__host__ __device__ inline int fwd_tc_smem_bytes(int d) {
  const int dp = tc_dp(d);
  return 2 * ((BM + 2 * BN) * (dp + 8) + BM * LDP) + 4 * (BM * LDSF + BM * (dp + 4) + 4 * BM);
}

template <typename T>
__device__ void flash_fwd_tc(const T* q, const T* k, const T* v, T* o, float* lse, const int* kv_len,
                             const float* mask, Shape s) {
  const int d = s.d, dp = tc_dp(d), ldt = dp + 8, ldo = dp + 4;
  T* Qs = reinterpret_cast<T*>(zoo_dynamic_smem());
  T* Ks = Qs + BM * ldt;
  T* Vs = Ks + BN * ldt;
  T* Ps = Vs + BN * ldt;
  float* Ss = reinterpret_cast<float*>(Ps + BM * LDP);
  float* Os = Ss + BM * LDSF;
  float* m_s = Os + BM * ldo;
  float* l_s = m_s + BM;
  int* hi_s = reinterpret_cast<int*>(l_s + BM);

  const int tid = threadIdx.x, warp = tid / 32, rb = warp / 2, ch = warp % 2;
  const int row0 = blockIdx.x * BM;
  const int bh = blockIdx.y, bi = bh / s.h, hh = bh % s.h, kvh = hh / (s.h / s.hkv);
  const T* kb = k + (long long)(bi * s.hkv + kvh) * s.nk * d;
  const T* vb = v + (long long)(bi * s.hkv + kvh) * s.nk * d;

  load_tile_tc(Qs, q + (long long)bh * s.nq * d, row0, BM, s.nq, d);
  for (int idx = tid; idx < BM * ldo; idx += NT) Os[idx] = 0.0f;
  for (int r = tid; r < BM; r += NT) {
    const int gi = row0 + r;
    hi_s[r] = gi < s.nq ? visible_keys(s, kv_len, bi, gi) : 0;
    m_s[r] = -INFINITY;
    l_s[r] = 0.0f;
  }
  __syncthreads();
  int max_hi = 0;
  for (int r = 0; r < BM; ++r) max_hi = hi_s[r] > max_hi ? hi_s[r] : max_hi;

  for (int j0 = 0; j0 < max_hi; j0 += BN) {
    load_tile_tc(Ks, kb, j0, BN, s.nk, d);
    load_tile_tc(Vs, vb, j0, BN, s.nk, d);
    __syncthreads();
    // S = Q K^T (unscaled)
    warp_abt_16x32(Ss + rb * 16 * LDSF + ch * 32, LDSF, Qs + rb * 16 * ldt, ldt, Ks + ch * 32 * ldt, ldt, dp);
    __syncthreads();
    // Online softmax, one thread per row; the row's O is rescaled here too.
    if (tid < BM) {
      const int r = tid;
      float* srow = Ss + r * LDSF;
      float mx = m_s[r];
      for (int c = 0; c < BN; ++c) {
        const int kj = j0 + c;
        const float x = kj < hi_s[r] ? srow[c] * s.scale + mask_at(s, mask, bi, hh, row0 + r, kj) : -INFINITY;
        srow[c] = x;
        mx = fmaxf(mx, x);
      }
      T* prow = Ps + r * LDP;
      if (mx == -INFINITY) {
        for (int c = 0; c < BN; ++c) prow[c] = from_f<T>(0.0f);
      } else {
        float sum = 0.0f;
        for (int c = 0; c < BN; ++c) {
          const float p = expf(srow[c] - mx);
          prow[c] = from_f<T>(p);
          sum += p;
        }
        const float alpha = expf(m_s[r] - mx);
        l_s[r] = l_s[r] * alpha + sum;
        m_s[r] = mx;
        if (alpha != 1.0f)
          for (int c = 0; c < dp; ++c) Os[r * ldo + c] *= alpha;
      }
    }
    __syncthreads();
    // O += P V
    for (int col = ch * (dp / 2); col < (ch + 1) * (dp / 2); col += 16) {
      wm::fragment<wm::accumulator, 16, 16, 16, float> acc;
      wm::load_matrix_sync(acc, Os + rb * 16 * ldo + col, ldo, wm::mem_row_major);
      for (int kk = 0; kk < BN; kk += 16) {
        wm::fragment<wm::matrix_a, 16, 16, 16, T, wm::row_major> fa;
        wm::fragment<wm::matrix_b, 16, 16, 16, T, wm::row_major> fb;
        wm::load_matrix_sync(fa, Ps + rb * 16 * LDP + kk, LDP);
        wm::load_matrix_sync(fb, Vs + kk * ldt + col, ldt);
        wm::mma_sync(acc, fa, fb, acc);
      }
      wm::store_matrix_sync(Os + rb * 16 * ldo + col, acc, ldo, wm::mem_row_major);
    }
    __syncthreads();
  }

  T* ob = o + (long long)bh * s.nq * d;
  for (int idx = tid; idx < BM * d; idx += NT) {
    const int r = idx / d, c = idx % d, gi = row0 + r;
    if (gi >= s.nq) continue;
    const float l = l_s[r];
    ob[(long long)gi * d + c] = from_f<T>(l > 0.0f ? Os[r * ldo + c] / l : 0.0f);
  }
  if (tid < BM && row0 + tid < s.nq) {
    const float l = l_s[tid];
    lse[(long long)bh * s.nq + row0 + tid] = l > 0.0f ? m_s[tid] + logf(l) : -INFINITY;
  }
}

__host__ __device__ inline int dq_tc_smem_bytes(int d) {
  const int dp = tc_dp(d);
  return 2 * ((2 * BM + 2 * BN) * (dp + 8) + BM * LDP) + 4 * (2 * BM * LDSF + 3 * BM);
}

template <typename T>
__device__ void flash_bwd_dq_tc(const T* q, const T* k, const T* v, const T* dout, const float* lse,
                                const float* delta, T* dq, const int* kv_len, const float* mask, Shape s) {
  const int d = s.d, dp = tc_dp(d), ldt = dp + 8, ldo = dp + 4;
  T* Qs = reinterpret_cast<T*>(zoo_dynamic_smem());
  T* dOs = Qs + BM * ldt;
  T* Ks = dOs + BM * ldt;
  T* Vs = Ks + BN * ldt;
  T* dSt = Vs + BN * ldt;
  float* Ss = reinterpret_cast<float*>(dSt + BM * LDP);
  float* dPs = Ss + BM * LDSF;
  float* lse_s = dPs + BM * LDSF;
  float* dl_s = lse_s + BM;
  int* hi_s = reinterpret_cast<int*>(dl_s + BM);
  float* stage = Ss;  // dQ staging at the end: BM x (dp + 4) floats fit in Ss + dPs

  const int tid = threadIdx.x, warp = tid / 32, rb = warp / 2, ch = warp % 2;
  const int row0 = blockIdx.x * BM;
  const int bh = blockIdx.y, bi = bh / s.h, hh = bh % s.h, kvh = hh / (s.h / s.hkv);
  const long long qoff = (long long)bh * s.nq * d;
  const T* kb = k + (long long)(bi * s.hkv + kvh) * s.nk * d;
  const T* vb = v + (long long)(bi * s.hkv + kvh) * s.nk * d;

  load_tile_tc(Qs, q + qoff, row0, BM, s.nq, d);
  load_tile_tc(dOs, dout + qoff, row0, BM, s.nq, d);
  for (int r = tid; r < BM; r += NT) {
    const int gi = row0 + r;
    const float ls = gi < s.nq ? lse[(long long)bh * s.nq + gi] : -INFINITY;
    lse_s[r] = ls;
    dl_s[r] = gi < s.nq ? delta[(long long)bh * s.nq + gi] : 0.0f;
    hi_s[r] = (gi < s.nq && ls != -INFINITY) ? visible_keys(s, kv_len, bi, gi) : 0;
  }
  __syncthreads();
  int max_hi = 0;
  for (int r = 0; r < BM; ++r) max_hi = hi_s[r] > max_hi ? hi_s[r] : max_hi;

  wm::fragment<wm::accumulator, 16, 16, 16, float> acc[MAX_D / 32];
  for (int t = 0; t < MAX_D / 32; ++t) wm::fill_fragment(acc[t], 0.0f);

  for (int j0 = 0; j0 < max_hi; j0 += BN) {
    load_tile_tc(Ks, kb, j0, BN, s.nk, d);
    load_tile_tc(Vs, vb, j0, BN, s.nk, d);
    __syncthreads();
    warp_abt_16x32(Ss + rb * 16 * LDSF + ch * 32, LDSF, Qs + rb * 16 * ldt, ldt, Ks + ch * 32 * ldt, ldt, dp);
    warp_abt_16x32(dPs + rb * 16 * LDSF + ch * 32, LDSF, dOs + rb * 16 * ldt, ldt, Vs + ch * 32 * ldt, ldt, dp);
    __syncthreads();
    for (int idx = tid; idx < BM * BN; idx += NT) {
      const int r = idx / BN, c = idx % BN, kj = j0 + c;
      float ds = 0.0f;
      if (kj < hi_s[r]) {
        const float p =
            expf(Ss[r * LDSF + c] * s.scale + mask_at(s, mask, bi, hh, row0 + r, kj) - lse_s[r]);
        ds = p * (dPs[r * LDSF + c] - dl_s[r]);
      }
      dSt[r * LDP + c] = from_f<T>(ds);
    }
    __syncthreads();
    // dQ (unscaled) += dS K
#pragma unroll
    for (int t = 0; t < MAX_D / 32; ++t) {
      if (t >= dp / 32) break;
      const int col = ch * (dp / 2) + t * 16;
      for (int kk = 0; kk < BN; kk += 16) {
        wm::fragment<wm::matrix_a, 16, 16, 16, T, wm::row_major> fa;
        wm::fragment<wm::matrix_b, 16, 16, 16, T, wm::row_major> fb;
        wm::load_matrix_sync(fa, dSt + rb * 16 * LDP + kk, LDP);
        wm::load_matrix_sync(fb, Ks + kk * ldt + col, ldt);
        wm::mma_sync(acc[t], fa, fb, acc[t]);
      }
    }
    __syncthreads();
  }

#pragma unroll
  for (int t = 0; t < MAX_D / 32; ++t)
    if (t < dp / 32)
      wm::store_matrix_sync(stage + rb * 16 * ldo + ch * (dp / 2) + t * 16, acc[t], ldo, wm::mem_row_major);
  __syncthreads();
  for (int idx = tid; idx < BM * d; idx += NT) {
    const int r = idx / d, c = idx % d, gi = row0 + r;
    if (gi < s.nq) dq[qoff + (long long)gi * d + c] = from_f<T>(stage[r * ldo + c] * s.scale);
  }
}

__host__ __device__ inline int dkdv_tc_smem_bytes(int d) {
  const int dp = tc_dp(d);
  return 2 * ((2 * BN + 2 * BM) * (dp + 8) + 2 * BM * LDP) + 4 * (2 * BM * LDSF + 3 * BM);
}

template <typename T>
__device__ void flash_bwd_dkdv_tc(const T* q, const T* k, const T* v, const T* dout, const float* lse,
                                  const float* delta, T* dk, T* dv, const int* kv_len, const float* mask,
                                  Shape s) {
  const int d = s.d, dp = tc_dp(d), ldt = dp + 8, ldo = dp + 4;
  T* Ks = reinterpret_cast<T*>(zoo_dynamic_smem());
  T* Vs = Ks + BN * ldt;
  T* Qs = Vs + BN * ldt;
  T* dOs = Qs + BM * ldt;
  T* Pt = dOs + BM * ldt;
  T* dSt = Pt + BM * LDP;
  float* Ss = reinterpret_cast<float*>(dSt + BM * LDP);
  float* dPs = Ss + BM * LDSF;
  float* lse_s = dPs + BM * LDSF;
  float* dl_s = lse_s + BM;
  int* hi_s = reinterpret_cast<int*>(dl_s + BM);
  float* stage = Ss;  // dK / dV staging at the end

  const int tid = threadIdx.x, warp = tid / 32, rb = warp / 2, ch = warp % 2;
  const int j0 = blockIdx.x * BN;
  const int bk = blockIdx.y, bi = bk / s.hkv, kvh = bk % s.hkv, g = s.h / s.hkv;
  const long long kvoff = (long long)bk * s.nk * d;

  load_tile_tc(Ks, k + kvoff, j0, BN, s.nk, d);
  load_tile_tc(Vs, v + kvoff, j0, BN, s.nk, d);

  // Accumulators: key rows 16 rb, head-dim columns dp/2 ch + 16 t.
  wm::fragment<wm::accumulator, 16, 16, 16, float> ak[MAX_D / 32], av[MAX_D / 32];
  for (int t = 0; t < MAX_D / 32; ++t) {
    wm::fill_fragment(ak[t], 0.0f);
    wm::fill_fragment(av[t], 0.0f);
  }

  int first = s.causal ? j0 + s.nq - s.nk : 0;
  if (first < 0) first = 0;
  first = (first / BM) * BM;

  for (int qh = 0; qh < g; ++qh) {
    const int hh = kvh * g + qh, bh = bi * s.h + hh;
    const long long qoff = (long long)bh * s.nq * d;
    for (int i0 = first; i0 < s.nq; i0 += BM) {
      __syncthreads();  // the previous step is done with Qs, dOs, Pt, dSt
      load_tile_tc(Qs, q + qoff, i0, BM, s.nq, d);
      load_tile_tc(dOs, dout + qoff, i0, BM, s.nq, d);
      for (int r = tid; r < BM; r += NT) {
        const int gi = i0 + r;
        const float ls = gi < s.nq ? lse[(long long)bh * s.nq + gi] : -INFINITY;
        lse_s[r] = ls;
        dl_s[r] = gi < s.nq ? delta[(long long)bh * s.nq + gi] : 0.0f;
        hi_s[r] = (gi < s.nq && ls != -INFINITY) ? visible_keys(s, kv_len, bi, gi) : 0;
      }
      __syncthreads();
      // S and dP for query rows 16 rb, keys 32 ch .. +32
      warp_abt_16x32(Ss + rb * 16 * LDSF + ch * 32, LDSF, Qs + rb * 16 * ldt, ldt, Ks + ch * 32 * ldt, ldt, dp);
      warp_abt_16x32(dPs + rb * 16 * LDSF + ch * 32, LDSF, dOs + rb * 16 * ldt, ldt, Vs + ch * 32 * ldt, ldt, dp);
      __syncthreads();
      for (int idx = tid; idx < BM * BN; idx += NT) {
        const int r = idx / BN, c = idx % BN, kj = j0 + c;
        float p = 0.0f, ds = 0.0f;
        if (kj < hi_s[r]) {
          p = expf(Ss[r * LDSF + c] * s.scale + mask_at(s, mask, bi, hh, i0 + r, kj) - lse_s[r]);
          ds = p * (dPs[r * LDSF + c] - dl_s[r]);
        }
        Pt[r * LDP + c] = from_f<T>(p);
        dSt[r * LDP + c] = from_f<T>(ds);
      }
      __syncthreads();
      // dV += P^T dO and dK (unscaled) += dS^T Q: the transposes are col-major loads.
#pragma unroll
      for (int t = 0; t < MAX_D / 32; ++t) {
        if (t >= dp / 32) break;
        const int col = ch * (dp / 2) + t * 16;
        for (int kk = 0; kk < BM; kk += 16) {
          wm::fragment<wm::matrix_a, 16, 16, 16, T, wm::col_major> fp, fs;
          wm::fragment<wm::matrix_b, 16, 16, 16, T, wm::row_major> fo, fq;
          wm::load_matrix_sync(fp, Pt + kk * LDP + rb * 16, LDP);
          wm::load_matrix_sync(fs, dSt + kk * LDP + rb * 16, LDP);
          wm::load_matrix_sync(fo, dOs + kk * ldt + col, ldt);
          wm::load_matrix_sync(fq, Qs + kk * ldt + col, ldt);
          wm::mma_sync(av[t], fp, fo, av[t]);
          wm::mma_sync(ak[t], fs, fq, ak[t]);
        }
      }
    }
  }

  for (int pass = 0; pass < 2; ++pass) {
    __syncthreads();  // staging (Ss, dPs) is free
#pragma unroll
    for (int t = 0; t < MAX_D / 32; ++t) {
      if (t >= dp / 32) break;
      float* tile = stage + rb * 16 * ldo + ch * (dp / 2) + t * 16;
      if (pass == 0)
        wm::store_matrix_sync(tile, ak[t], ldo, wm::mem_row_major);
      else
        wm::store_matrix_sync(tile, av[t], ldo, wm::mem_row_major);
    }
    __syncthreads();
    T* dst = pass == 0 ? dk : dv;
    const float mul = pass == 0 ? s.scale : 1.0f;
    for (int idx = tid; idx < BN * d; idx += NT) {
      const int r = idx / d, c = idx % d, kj = j0 + r;
      if (kj < s.nk) dst[kvoff + (long long)kj * d + c] = from_f<T>(stage[r * ldo + c] * mul);
    }
  }
}

}  // namespace zoo

// ---------------------------------------------------------------------------------------------
// Entry points: one per dtype, plain C names for the host (cudarc loads them by name).
// ---------------------------------------------------------------------------------------------

#define ZOO_SHAPE_PARAMS                                                                          \
  int h, int hkv, int nq, int nk, int d, float scale, int causal, int has_mask, long long ms0, \
      long long ms1, long long ms2, long long ms3
#define ZOO_SHAPE zoo::Shape{h, hkv, nq, nk, d, scale, causal, has_mask, ms0, ms1, ms2, ms3}

#define ZOO_ENTRIES(T, SUF)                                                                        \
  extern "C" __global__ void __launch_bounds__(256)                                               \
      zoo_flash_fwd_##SUF(const T* q, const T* k, const T* v, T* o, float* lse, const int* kv_len, \
                          const float* mask, ZOO_SHAPE_PARAMS) {                                  \
    zoo::flash_fwd<T>(q, k, v, o, lse, kv_len, mask, ZOO_SHAPE);                                  \
  }                                                                                                \
  extern "C" __global__ void zoo_flash_bwd_delta_##SUF(const T* o, const T* dout, float* delta,    \
                                                       long long rows, int d) {                   \
    zoo::flash_bwd_delta<T>(o, dout, delta, rows, d);                                              \
  }                                                                                                \
  extern "C" __global__ void __launch_bounds__(256)                                               \
      zoo_flash_bwd_dq_##SUF(const T* q, const T* k, const T* v, const T* dout, const float* lse,  \
                             const float* delta, T* dq, const int* kv_len, const float* mask,      \
                             ZOO_SHAPE_PARAMS) {                                                   \
    zoo::flash_bwd_dq<T>(q, k, v, dout, lse, delta, dq, kv_len, mask, ZOO_SHAPE);                  \
  }                                                                                                \
  extern "C" __global__ void __launch_bounds__(256) zoo_flash_bwd_dkdv_##SUF(                      \
      const T* q, const T* k, const T* v, const T* dout, const float* lse, const float* delta,     \
      T* dk, T* dv, const int* kv_len, const float* mask, ZOO_SHAPE_PARAMS) {                      \
    zoo::flash_bwd_dkdv<T>(q, k, v, dout, lse, delta, dk, dv, kv_len, mask, ZOO_SHAPE);            \
  }

#define ZOO_TC_ENTRIES(T, SUF)                                                                     \
  extern "C" __global__ void __launch_bounds__(256)                                               \
      zoo_flash_fwd_tc_##SUF(const T* q, const T* k, const T* v, T* o, float* lse, const int* kv_len, \
                             const float* mask, ZOO_SHAPE_PARAMS) {                               \
    zoo::flash_fwd_tc<T>(q, k, v, o, lse, kv_len, mask, ZOO_SHAPE);                               \
  }                                                                                                \
  extern "C" __global__ void __launch_bounds__(256) zoo_flash_bwd_dq_tc_##SUF(                     \
      const T* q, const T* k, const T* v, const T* dout, const float* lse, const float* delta,     \
      T* dq, const int* kv_len, const float* mask, ZOO_SHAPE_PARAMS) {                             \
    zoo::flash_bwd_dq_tc<T>(q, k, v, dout, lse, delta, dq, kv_len, mask, ZOO_SHAPE);               \
  }                                                                                                \
  extern "C" __global__ void __launch_bounds__(256) zoo_flash_bwd_dkdv_tc_##SUF(                   \
      const T* q, const T* k, const T* v, const T* dout, const float* lse, const float* delta,     \
      T* dk, T* dv, const int* kv_len, const float* mask, ZOO_SHAPE_PARAMS) {                      \
    zoo::flash_bwd_dkdv_tc<T>(q, k, v, dout, lse, delta, dk, dv, kv_len, mask, ZOO_SHAPE);         \
  }

ZOO_ENTRIES(float, f32)
ZOO_ENTRIES(__half, f16)
ZOO_ENTRIES(__nv_bfloat16, bf16)
ZOO_TC_ENTRIES(__half, f16)
ZOO_TC_ENTRIES(__nv_bfloat16, bf16)
