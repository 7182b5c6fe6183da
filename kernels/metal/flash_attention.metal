// candle-zoo fused attention for Metal: forward (output + row log-sum-exp) and backward
// (dQ, dK, dV recomputed from the log-sum-exp, FlashAttention-2 work split), f32 / f16 / bf16
// inputs with f32 arithmetic, head_dim <= 128.
//
// This is a port of the f32-FMA ("SIMT") kernels of kernels/cuda/flash_attention.cu: the same
// semantics, the same block loops, the same index arithmetic, the same barriers. Each function
// below names its CUDA counterpart. What differs, and why:
//   * Metal gives a threadgroup at most 32 KiB of threadgroup memory (CUDA: up to 227 KiB), so
//     the tiles are smaller: 128 threads as a 16 x 8 grid (ty, tx) instead of 256 as 16 x 16,
//     and 16-row / 16- or 8-key tiles instead of 64 / 64 (see the ZOO_* sizes). The loops that
//     CUDA writes with fixed trip counts (`i < 4`) run over the per-thread counts these sizes
//     give (`i < RI`).
//   * In the dK/dV kernel, the score tile is computed with keys along ty and query rows along tx
//     (CUDA: query rows along ty), so that 16 keys x 8 query rows map onto the 16 x 8 grid.
//   * Thread and threadgroup positions are kernel arguments, not built-in variables.
//
// Semantics (as the CPU kernel, crates/zoo-kernels/src/attention/cpu.rs):
//   q (b, h, nq, d), k/v (b, hkv, nk, d), all contiguous; query head hh reads kv head
//   hh / (h / hkv); query i of batch bi sees keys j < hi(bi, i) where
//   hi = min(nk, kv_len[bi]) and, when causal, also j <= i + nk - nq (bottom-right aligned);
//   an optional additive f32 mask (-inf forbids) is read through 4 broadcast strides;
//   a row that sees no key gets output 0, lse -inf and zero gradient.
//
// The host (crates/zoo-kernels/src/attention/metal.rs) compiles this source at run time with
// fast math OFF: the kernels rely on IEEE infinities (-inf scores and log-sum-exps).
// The same file compiles as plain C++ against tools/metal_emu/metal_emu.h, which runs each
// threadgroup's threads as host threads: that is how CI tests this code without a Mac
// (crates/zoo-kernels/tests/metal_emulated.rs).

#if defined(ZOO_METAL_EMU)
#include "metal_emu.h"
#else
#include <metal_stdlib>
using namespace metal;
#endif

// Argument attributes exist only for Apple's compiler (the emulator and the Linux lint see plain
// parameters).
#if defined(__METAL_VERSION__)
#define ZOO_BUF(i) [[buffer(i)]]
#define ZOO_TGMEM [[threadgroup(0)]]
#define ZOO_TID [[thread_index_in_threadgroup]]
#define ZOO_GID [[threadgroup_position_in_grid]]
#else
#define ZOO_BUF(i)
#define ZOO_TGMEM
#define ZOO_TID
#define ZOO_GID
#endif

// Launch geometry; the host mirrors these in crates/zoo-kernels/src/attention/metal_layout.rs,
// and tests/metal_emulated.rs checks that both compute the same threadgroup-memory sizes.
#define ZOO_NT 128      // threads per threadgroup
#define ZOO_TY 16       // thread grid rows (ty = tid / ZOO_TX)
#define ZOO_TX 8        // thread grid columns (tx = tid % ZOO_TX)
#define ZOO_FWD_BM 16   // query rows per threadgroup, forward      (CUDA: BM = 64)
#define ZOO_FWD_BN 16   // keys per tile, forward                   (CUDA: BN = 64)
#define ZOO_DQ_BM 16    // query rows per threadgroup, dQ           (CUDA: BM = 64)
#define ZOO_DQ_BN 8     // keys per tile, dQ                        (CUDA: BN = 64)
#define ZOO_KV_BN 16    // keys per threadgroup, dK/dV              (CUDA: BN = 64)
#define ZOO_KV_BM 8     // query rows per step, dK/dV               (CUDA: BMK = 32)
#define ZOO_MAX_D 128
#define ZOO_DJ (ZOO_MAX_D / ZOO_TX)  // head-dim columns per thread

namespace zoo {

/// Scalars of one call, bound with setBytes (layout = the host's `#[repr(C)] Params`).
struct Params {
  int h, hkv, nq, nk, d;
  float scale;
  int causal;
  int has_mask;
  long ms0, ms1, ms2, ms3;  // mask strides over (batch, head, query, key); 0 = broadcast
};

/// Threadgroup-memory floats of each kernel (CUDA: fwd_smem_floats, dq_smem_floats,
/// dkdv_smem_floats).
inline int fwd_tg_floats(int d) {
  return (ZOO_FWD_BM + 2 * ZOO_FWD_BN) * (d + 1) + ZOO_FWD_BM * (ZOO_FWD_BN + 1) + 4 * ZOO_FWD_BM;
}
inline int dq_tg_floats(int d) {
  return (2 * ZOO_DQ_BM + 2 * ZOO_DQ_BN) * (d + 1) + ZOO_DQ_BM * (ZOO_DQ_BN + 1) + 3 * ZOO_DQ_BM;
}
inline int dkdv_tg_floats(int d) {
  return (2 * ZOO_KV_BN + 2 * ZOO_KV_BM) * (d + 1) + 2 * ZOO_KV_BM * (ZOO_KV_BN + 1) + 3 * ZOO_KV_BM;
}

/// Keys j < hi are visible to query i of batch bi (before the additive mask). CUDA: visible_keys.
inline int visible_keys(constant Params& s, device const int* kv_len, int bi, int i) {
  int hi = s.nk < kv_len[bi] ? s.nk : kv_len[bi];
  if (hi < 0) hi = 0;
  if (s.causal) {
    int c = i + s.nk + 1 - s.nq;
    if (c < 0) c = 0;
    if (c < hi) hi = c;
  }
  return hi;
}

/// CUDA: mask_at.
inline float mask_at(constant Params& s, device const float* mask, int bi, int hh, int i, int j) {
  return s.has_mask ? mask[bi * s.ms0 + hh * s.ms1 + i * s.ms2 + j * s.ms3] : 0.0f;
}

/// Copies `rows` rows of `src` (row stride d, starting at row `first` of `limit`) into the f32
/// tile `dst` (row stride d + 1), times `mul`; rows past `limit` become zeros. CUDA: load_tile.
template <typename T>
inline void load_tile(threadgroup float* dst, device const T* src, int first, int rows, int limit, int d,
                      float mul, int tid) {
  const int ld = d + 1;
  for (int idx = tid; idx < rows * d; idx += ZOO_NT) {
    const int r = idx / d, e = idx % d;
    const int g = first + r;
    dst[r * ld + e] = g < limit ? float(src[long(g) * d + e]) * mul : 0.0f;
  }
}

// ---------------------------------------------------------------------------------------------
// Forward. CUDA: flash_fwd. Threadgroup = ZOO_FWD_BM query rows of one (batch, head); loop over
// ZOO_FWD_BN-key tiles with the online softmax. Score element (r, c): r = ty + TY i, c = tx + TX j.
// ---------------------------------------------------------------------------------------------

template <typename T>
void flash_fwd(device const T* q, device const T* k, device const T* v, device T* o, device float* lse,
               device const int* kv_len, device const float* mask, constant Params& s,
               threadgroup float* smem, uint tid_u, uint3 gid) {
  const int BM = ZOO_FWD_BM, BN = ZOO_FWD_BN, LDS = BN + 1;
  const int RI = BM / ZOO_TY, CJ = BN / ZOO_TX;
  const int d = s.d, ld = d + 1;
  threadgroup float* Qs = smem;
  threadgroup float* Ks = Qs + BM * ld;
  threadgroup float* Vs = Ks + BN * ld;
  threadgroup float* Ss = Vs + BN * ld;
  threadgroup float* m_s = Ss + BM * LDS;
  threadgroup float* l_s = m_s + BM;
  threadgroup float* a_s = l_s + BM;
  threadgroup float* hi_s = a_s + BM;  // visible-key counts, exact in f32 (< 2^24)

  const int tid = int(tid_u), tx = tid % ZOO_TX, ty = tid / ZOO_TX;
  const int row0 = int(gid.x) * BM;
  const int bh = int(gid.y), bi = bh / s.h, hh = bh % s.h, kvh = hh / (s.h / s.hkv);
  device const T* qb = q + long(bh) * s.nq * d;
  device const T* kb = k + long(bi * s.hkv + kvh) * s.nk * d;
  device const T* vb = v + long(bi * s.hkv + kvh) * s.nk * d;

  load_tile(Qs, qb, row0, BM, s.nq, d, s.scale, tid);
  for (int r = tid; r < BM; r += ZOO_NT) {
    const int gi = row0 + r;
    hi_s[r] = gi < s.nq ? float(visible_keys(s, kv_len, bi, gi)) : 0.0f;
    m_s[r] = -INFINITY;
    l_s[r] = 0.0f;
  }
  threadgroup_barrier(mem_flags::mem_threadgroup);
  int max_hi = 0;
  for (int r = 0; r < BM; ++r) max_hi = max(max_hi, int(hi_s[r]));

  float acc[RI][ZOO_DJ];
  for (int i = 0; i < RI; ++i)
    for (int j = 0; j < ZOO_DJ; ++j) acc[i][j] = 0.0f;

  for (int j0 = 0; j0 < max_hi; j0 += BN) {
    load_tile(Ks, kb, j0, BN, s.nk, d, 1.0f, tid);
    load_tile(Vs, vb, j0, BN, s.nk, d, 1.0f, tid);
    threadgroup_barrier(mem_flags::mem_threadgroup);
    // S = (scale Q) K^T for this thread's RI x CJ elements, masked.
    float sc[RI][CJ];
    for (int i = 0; i < RI; ++i)
      for (int j = 0; j < CJ; ++j) sc[i][j] = 0.0f;
    for (int e = 0; e < d; ++e) {
      float qv[RI], kv[CJ];
      for (int i = 0; i < RI; ++i) qv[i] = Qs[(ty + ZOO_TY * i) * ld + e];
      for (int j = 0; j < CJ; ++j) kv[j] = Ks[(tx + ZOO_TX * j) * ld + e];
      for (int i = 0; i < RI; ++i)
        for (int j = 0; j < CJ; ++j) sc[i][j] = fma(qv[i], kv[j], sc[i][j]);
    }
    for (int i = 0; i < RI; ++i) {
      const int r = ty + ZOO_TY * i;
      for (int j = 0; j < CJ; ++j) {
        const int c = tx + ZOO_TX * j, kj = j0 + c;
        Ss[r * LDS + c] = kj < int(hi_s[r]) ? sc[i][j] + mask_at(s, mask, bi, hh, row0 + r, kj) : -INFINITY;
      }
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    // Online softmax, one thread per row.
    if (tid < BM) {
      const int r = tid;
      threadgroup float* srow = Ss + r * LDS;
      const float m_old = m_s[r];
      float mx = m_old;
      for (int c = 0; c < BN; ++c) mx = max(mx, srow[c]);
      float alpha = 1.0f;
      if (mx == -INFINITY) {
        for (int c = 0; c < BN; ++c) srow[c] = 0.0f;
      } else {
        float sum = 0.0f;
        for (int c = 0; c < BN; ++c) {
          const float p = exp(srow[c] - mx);
          srow[c] = p;
          sum += p;
        }
        alpha = exp(m_old - mx);  // 0 when m_old is -inf
        l_s[r] = l_s[r] * alpha + sum;
        m_s[r] = mx;
      }
      a_s[r] = alpha;
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    // O = alpha O + P V
    for (int i = 0; i < RI; ++i) {
      const float al = a_s[ty + ZOO_TY * i];
      for (int j = 0; j < ZOO_DJ; ++j) acc[i][j] *= al;
    }
    for (int c = 0; c < BN; ++c) {
      float p[RI];
      for (int i = 0; i < RI; ++i) p[i] = Ss[(ty + ZOO_TY * i) * LDS + c];
      for (int j = 0; j < ZOO_DJ; ++j) {
        const int col = tx + ZOO_TX * j;
        if (col < d) {
          const float vv = Vs[c * ld + col];
          for (int i = 0; i < RI; ++i) acc[i][j] = fma(p[i], vv, acc[i][j]);
        }
      }
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
  }

  device T* ob = o + long(bh) * s.nq * d;
  for (int i = 0; i < RI; ++i) {
    const int r = ty + ZOO_TY * i, gi = row0 + r;
    if (gi >= s.nq) continue;
    const float l = l_s[r];
    const float inv = l > 0.0f ? 1.0f / l : 0.0f;
    for (int j = 0; j < ZOO_DJ; ++j) {
      const int col = tx + ZOO_TX * j;
      if (col < d) ob[long(gi) * d + col] = T(acc[i][j] * inv);
    }
  }
  if (tid < BM && row0 + tid < s.nq) {
    const float l = l_s[tid];
    lse[long(bh) * s.nq + row0 + tid] = l > 0.0f ? m_s[tid] + log(l) : -INFINITY;
  }
}

// ---------------------------------------------------------------------------------------------
// Backward
// ---------------------------------------------------------------------------------------------

/// delta_i = sum_e dO_ie O_ie for every row of (b, h, nq). CUDA: flash_bwd_delta.
template <typename T>
void flash_bwd_delta(device const T* o, device const T* dout, device float* delta, long rows, int d,
                     uint tid_u, uint3 gid) {
  const long r = long(gid.x) * ZOO_NT + long(tid_u);
  if (r >= rows) return;
  float acc = 0.0f;
  for (int e = 0; e < d; ++e) acc = fma(float(o[r * d + e]), float(dout[r * d + e]), acc);
  delta[r] = acc;
}

/// dQ for ZOO_DQ_BM query rows: loop over key tiles, P = exp(S - lse), dS = P (dO V^T - delta),
/// dQ = scale dS K. CUDA: flash_bwd_dq.
template <typename T>
void flash_bwd_dq(device const T* q, device const T* k, device const T* v, device const T* dout,
                  device const float* lse, device const float* delta, device T* dq, device const int* kv_len,
                  device const float* mask, constant Params& s, threadgroup float* smem, uint tid_u, uint3 gid) {
  const int BM = ZOO_DQ_BM, BN = ZOO_DQ_BN, LDS = BN + 1;
  const int RI = BM / ZOO_TY, CJ = BN / ZOO_TX;
  const int d = s.d, ld = d + 1;
  threadgroup float* Qs = smem;
  threadgroup float* dOs = Qs + BM * ld;
  threadgroup float* Ks = dOs + BM * ld;
  threadgroup float* Vs = Ks + BN * ld;
  threadgroup float* Ss = Vs + BN * ld;
  threadgroup float* lse_s = Ss + BM * LDS;
  threadgroup float* dl_s = lse_s + BM;
  threadgroup float* hi_s = dl_s + BM;

  const int tid = int(tid_u), tx = tid % ZOO_TX, ty = tid / ZOO_TX;
  const int row0 = int(gid.x) * BM;
  const int bh = int(gid.y), bi = bh / s.h, hh = bh % s.h, kvh = hh / (s.h / s.hkv);
  const long qoff = long(bh) * s.nq * d;
  device const T* kb = k + long(bi * s.hkv + kvh) * s.nk * d;
  device const T* vb = v + long(bi * s.hkv + kvh) * s.nk * d;

  load_tile(Qs, q + qoff, row0, BM, s.nq, d, s.scale, tid);
  load_tile(dOs, dout + qoff, row0, BM, s.nq, d, 1.0f, tid);
  for (int r = tid; r < BM; r += ZOO_NT) {
    const int gi = row0 + r;
    const float ls = gi < s.nq ? lse[long(bh) * s.nq + gi] : -INFINITY;
    lse_s[r] = ls;
    dl_s[r] = gi < s.nq ? delta[long(bh) * s.nq + gi] : 0.0f;
    // A row that saw no key in the forward pass has zero gradient.
    hi_s[r] = (gi < s.nq && ls != -INFINITY) ? float(visible_keys(s, kv_len, bi, gi)) : 0.0f;
  }
  threadgroup_barrier(mem_flags::mem_threadgroup);
  int max_hi = 0;
  for (int r = 0; r < BM; ++r) max_hi = max(max_hi, int(hi_s[r]));

  float acc[RI][ZOO_DJ];
  for (int i = 0; i < RI; ++i)
    for (int j = 0; j < ZOO_DJ; ++j) acc[i][j] = 0.0f;

  for (int j0 = 0; j0 < max_hi; j0 += BN) {
    load_tile(Ks, kb, j0, BN, s.nk, d, 1.0f, tid);
    load_tile(Vs, vb, j0, BN, s.nk, d, 1.0f, tid);
    threadgroup_barrier(mem_flags::mem_threadgroup);
    float sc[RI][CJ], dp[RI][CJ];
    for (int i = 0; i < RI; ++i)
      for (int j = 0; j < CJ; ++j) sc[i][j] = dp[i][j] = 0.0f;
    for (int e = 0; e < d; ++e) {
      float qv[RI], gv[RI], kv[CJ], vv[CJ];
      for (int i = 0; i < RI; ++i) {
        qv[i] = Qs[(ty + ZOO_TY * i) * ld + e];
        gv[i] = dOs[(ty + ZOO_TY * i) * ld + e];
      }
      for (int j = 0; j < CJ; ++j) {
        kv[j] = Ks[(tx + ZOO_TX * j) * ld + e];
        vv[j] = Vs[(tx + ZOO_TX * j) * ld + e];
      }
      for (int i = 0; i < RI; ++i)
        for (int j = 0; j < CJ; ++j) {
          sc[i][j] = fma(qv[i], kv[j], sc[i][j]);
          dp[i][j] = fma(gv[i], vv[j], dp[i][j]);
        }
    }
    for (int i = 0; i < RI; ++i) {
      const int r = ty + ZOO_TY * i;
      for (int j = 0; j < CJ; ++j) {
        const int c = tx + ZOO_TX * j, kj = j0 + c;
        float ds = 0.0f;
        if (kj < int(hi_s[r])) {
          const float p = exp(sc[i][j] + mask_at(s, mask, bi, hh, row0 + r, kj) - lse_s[r]);
          ds = p * (dp[i][j] - dl_s[r]);
        }
        Ss[r * LDS + c] = ds;
      }
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    for (int c = 0; c < BN; ++c) {
      float g[RI];
      for (int i = 0; i < RI; ++i) g[i] = Ss[(ty + ZOO_TY * i) * LDS + c];
      for (int j = 0; j < ZOO_DJ; ++j) {
        const int col = tx + ZOO_TX * j;
        if (col < d) {
          const float kv = Ks[c * ld + col];
          for (int i = 0; i < RI; ++i) acc[i][j] = fma(g[i], kv, acc[i][j]);
        }
      }
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
  }

  for (int i = 0; i < RI; ++i) {
    const int gi = row0 + ty + ZOO_TY * i;
    if (gi >= s.nq) continue;
    for (int j = 0; j < ZOO_DJ; ++j) {
      const int col = tx + ZOO_TX * j;
      if (col < d) dq[qoff + long(gi) * d + col] = T(acc[i][j] * s.scale);
    }
  }
}

/// dK and dV for ZOO_KV_BN keys of one (batch, kv head): loop over the group's query heads and
/// ZOO_KV_BM-row query tiles; dV += P^T dO, dK += dS^T (scale Q). CUDA: flash_bwd_dkdv.
template <typename T>
void flash_bwd_dkdv(device const T* q, device const T* k, device const T* v, device const T* dout,
                    device const float* lse, device const float* delta, device T* dk, device T* dv,
                    device const int* kv_len, device const float* mask, constant Params& s,
                    threadgroup float* smem, uint tid_u, uint3 gid) {
  const int BN = ZOO_KV_BN, BMK = ZOO_KV_BM, LDS = BN + 1;
  const int KI = BN / ZOO_TY;   // key rows per thread (c = ty + TY i)
  const int QJ = BMK / ZOO_TX;  // query rows per thread in the score tile (r = tx + TX j)
  const int d = s.d, ld = d + 1;
  threadgroup float* Ks = smem;
  threadgroup float* Vs = Ks + BN * ld;
  threadgroup float* Qs = Vs + BN * ld;
  threadgroup float* dOs = Qs + BMK * ld;
  threadgroup float* Ps = dOs + BMK * ld;
  threadgroup float* dSs = Ps + BMK * LDS;
  threadgroup float* lse_s = dSs + BMK * LDS;
  threadgroup float* dl_s = lse_s + BMK;
  threadgroup float* hi_s = dl_s + BMK;

  const int tid = int(tid_u), tx = tid % ZOO_TX, ty = tid / ZOO_TX;
  const int j0 = int(gid.x) * BN;
  const int bk = int(gid.y), bi = bk / s.hkv, kvh = bk % s.hkv, g = s.h / s.hkv;
  const long kvoff = long(bk) * s.nk * d;

  load_tile(Ks, k + kvoff, j0, BN, s.nk, d, 1.0f, tid);
  load_tile(Vs, v + kvoff, j0, BN, s.nk, d, 1.0f, tid);

  // Accumulators: key rows c = ty + TY i, head-dim columns tx + TX j.
  float ak[KI][ZOO_DJ], av[KI][ZOO_DJ];
  for (int i = 0; i < KI; ++i)
    for (int j = 0; j < ZOO_DJ; ++j) ak[i][j] = av[i][j] = 0.0f;

  // With causal masking, query i sees key j0 only if i >= j0 + nq - nk: earlier rows are skipped.
  int first = s.causal ? j0 + s.nq - s.nk : 0;
  if (first < 0) first = 0;
  first = (first / BMK) * BMK;

  for (int qh = 0; qh < g; ++qh) {
    const int hh = kvh * g + qh, bh = bi * s.h + hh;
    const long qoff = long(bh) * s.nq * d;
    for (int i0 = first; i0 < s.nq; i0 += BMK) {
      threadgroup_barrier(mem_flags::mem_threadgroup);  // the previous step is done with the tiles
      load_tile(Qs, q + qoff, i0, BMK, s.nq, d, s.scale, tid);
      load_tile(dOs, dout + qoff, i0, BMK, s.nq, d, 1.0f, tid);
      for (int r = tid; r < BMK; r += ZOO_NT) {
        const int gi = i0 + r;
        const float ls = gi < s.nq ? lse[long(bh) * s.nq + gi] : -INFINITY;
        lse_s[r] = ls;
        dl_s[r] = gi < s.nq ? delta[long(bh) * s.nq + gi] : 0.0f;
        hi_s[r] = (gi < s.nq && ls != -INFINITY) ? float(visible_keys(s, kv_len, bi, gi)) : 0.0f;
      }
      threadgroup_barrier(mem_flags::mem_threadgroup);
      // S and dP for keys c = ty + TY i (i < KI) and query rows r = tx + TX j (j < QJ).
      float sc[KI][QJ], dp[KI][QJ];
      for (int i = 0; i < KI; ++i)
        for (int j = 0; j < QJ; ++j) sc[i][j] = dp[i][j] = 0.0f;
      for (int e = 0; e < d; ++e) {
        float kv[KI], vv[KI], qv[QJ], gv[QJ];
        for (int i = 0; i < KI; ++i) {
          kv[i] = Ks[(ty + ZOO_TY * i) * ld + e];
          vv[i] = Vs[(ty + ZOO_TY * i) * ld + e];
        }
        for (int j = 0; j < QJ; ++j) {
          qv[j] = Qs[(tx + ZOO_TX * j) * ld + e];
          gv[j] = dOs[(tx + ZOO_TX * j) * ld + e];
        }
        for (int i = 0; i < KI; ++i)
          for (int j = 0; j < QJ; ++j) {
            sc[i][j] = fma(qv[j], kv[i], sc[i][j]);
            dp[i][j] = fma(gv[j], vv[i], dp[i][j]);
          }
      }
      for (int i = 0; i < KI; ++i) {
        const int c = ty + ZOO_TY * i, kj = j0 + c;
        for (int j = 0; j < QJ; ++j) {
          const int r = tx + ZOO_TX * j;
          float p = 0.0f, ds = 0.0f;
          if (kj < int(hi_s[r])) {
            p = exp(sc[i][j] + mask_at(s, mask, bi, hh, i0 + r, kj) - lse_s[r]);
            ds = p * (dp[i][j] - dl_s[r]);
          }
          Ps[r * LDS + c] = p;
          dSs[r * LDS + c] = ds;
        }
      }
      threadgroup_barrier(mem_flags::mem_threadgroup);
      for (int r = 0; r < BMK; ++r) {
        float p[KI], ds[KI];
        for (int i = 0; i < KI; ++i) {
          p[i] = Ps[r * LDS + ty + ZOO_TY * i];
          ds[i] = dSs[r * LDS + ty + ZOO_TY * i];
        }
        for (int j = 0; j < ZOO_DJ; ++j) {
          const int col = tx + ZOO_TX * j;
          if (col < d) {
            const float gv = dOs[r * ld + col], qv = Qs[r * ld + col];
            for (int i = 0; i < KI; ++i) {
              av[i][j] = fma(p[i], gv, av[i][j]);
              ak[i][j] = fma(ds[i], qv, ak[i][j]);
            }
          }
        }
      }
    }
  }

  for (int i = 0; i < KI; ++i) {
    const int kj = j0 + ty + ZOO_TY * i;
    if (kj >= s.nk) continue;
    for (int j = 0; j < ZOO_DJ; ++j) {
      const int col = tx + ZOO_TX * j;
      if (col < d) {
        dk[kvoff + long(kj) * d + col] = T(ak[i][j]);
        dv[kvoff + long(kj) * d + col] = T(av[i][j]);
      }
    }
  }
}

}  // namespace zoo

// ---------------------------------------------------------------------------------------------
// Entry points, one set per dtype: zoo_flash_{fwd,bwd_delta,bwd_dq,bwd_dkdv}_{f32,f16,bf16}.
// Buffer indices are the host's (metal.rs binds them in this order).
// ---------------------------------------------------------------------------------------------

#define ZOO_METAL_ENTRIES(T, SUF)                                                                   \
  kernel void zoo_flash_fwd_##SUF(                                                                  \
      device const T* q ZOO_BUF(0), device const T* k ZOO_BUF(1), device const T* v ZOO_BUF(2),      \
      device T* o ZOO_BUF(3), device float* lse ZOO_BUF(4), device const int* kv_len ZOO_BUF(5),     \
      device const float* mask ZOO_BUF(6), constant zoo::Params& s ZOO_BUF(7),                       \
      threadgroup float* smem ZOO_TGMEM, uint tid ZOO_TID, uint3 gid ZOO_GID) {                      \
    zoo::flash_fwd<T>(q, k, v, o, lse, kv_len, mask, s, smem, tid, gid);                            \
  }                                                                                                 \
  kernel void zoo_flash_bwd_delta_##SUF(device const T* o ZOO_BUF(0), device const T* dout ZOO_BUF(1), \
                                        device float* delta ZOO_BUF(2), constant long& rows ZOO_BUF(3), \
                                        constant int& d ZOO_BUF(4), uint tid ZOO_TID, uint3 gid ZOO_GID) { \
    zoo::flash_bwd_delta<T>(o, dout, delta, rows, d, tid, gid);                                     \
  }                                                                                                 \
  kernel void zoo_flash_bwd_dq_##SUF(                                                               \
      device const T* q ZOO_BUF(0), device const T* k ZOO_BUF(1), device const T* v ZOO_BUF(2),      \
      device const T* dout ZOO_BUF(3), device const float* lse ZOO_BUF(4),                          \
      device const float* delta ZOO_BUF(5), device T* dq ZOO_BUF(6), device const int* kv_len ZOO_BUF(7), \
      device const float* mask ZOO_BUF(8), constant zoo::Params& s ZOO_BUF(9),                       \
      threadgroup float* smem ZOO_TGMEM, uint tid ZOO_TID, uint3 gid ZOO_GID) {                      \
    zoo::flash_bwd_dq<T>(q, k, v, dout, lse, delta, dq, kv_len, mask, s, smem, tid, gid);           \
  }                                                                                                 \
  kernel void zoo_flash_bwd_dkdv_##SUF(                                                             \
      device const T* q ZOO_BUF(0), device const T* k ZOO_BUF(1), device const T* v ZOO_BUF(2),      \
      device const T* dout ZOO_BUF(3), device const float* lse ZOO_BUF(4),                          \
      device const float* delta ZOO_BUF(5), device T* dk ZOO_BUF(6), device T* dv ZOO_BUF(7),        \
      device const int* kv_len ZOO_BUF(8), device const float* mask ZOO_BUF(9),                     \
      constant zoo::Params& s ZOO_BUF(10), threadgroup float* smem ZOO_TGMEM, uint tid ZOO_TID,      \
      uint3 gid ZOO_GID) {                                                                          \
    zoo::flash_bwd_dkdv<T>(q, k, v, dout, lse, delta, dk, dv, kv_len, mask, s, smem, tid, gid);     \
  }

ZOO_METAL_ENTRIES(float, f32)
ZOO_METAL_ENTRIES(half, f16)
#if defined(__HAVE_BFLOAT__)
ZOO_METAL_ENTRIES(bfloat, bf16)
#endif
