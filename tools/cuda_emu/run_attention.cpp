// Runs kernels/cuda/flash_attention.cu under the CPU emulator (cuda_emu.h): the forward and the
// three backward kernels, launched with the same grids, blocks and shared-memory sizes as the
// Rust host code (crates/zoo-kernels/src/attention/cuda.rs).
//
// Usage: run_attention f32|f16|bf16|f16-tc|bf16-tc INPUT OUTPUT (-tc: the tensor-core kernels)
//        run_attention smem   (shared-memory bytes per kernel and head dim, for the host check)
// INPUT (little endian): i32 b, h, hkv, nq, nk, d, causal, has_mask; f32 scale; i64 mask strides
// ms0..ms3; i64 mask_len; then f32 q, k, v, dout, i32 kv_len[b], f32 mask[mask_len].
// OUTPUT: f32 o, lse, dq, dk, dv. Inputs are rounded to the dtype first, outputs widened to f32.
// Build: c++ -std=c++20 -O2 -pthread -DZOO_CUDA_EMU -I tools/cuda_emu tools/cuda_emu/run_attention.cpp

#include <cstdio>
#include <cstdlib>
#include <string>

#include "../emu_common/io.h"

#include "../../kernels/cuda/flash_attention.cu"

namespace {

using zoo_emu_io::read1;
using zoo_emu_io::readn;

template <typename T>
std::vector<T> narrow(const std::vector<float>& x) {
  std::vector<T> out(x.size());
  for (size_t i = 0; i < x.size(); ++i) out[i] = zoo::from_f<T>(x[i]);
  return out;
}

template <typename T>
std::vector<float> widen(const std::vector<T>& x) {
  std::vector<float> out(x.size());
  for (size_t i = 0; i < x.size(); ++i) out[i] = zoo::to_f(x[i]);
  return out;
}

template <typename T, bool TC>
int run(FILE* in, FILE* out) {
  const int b = read1<int>(in), h = read1<int>(in), hkv = read1<int>(in), nq = read1<int>(in),
            nk = read1<int>(in), d = read1<int>(in), causal = read1<int>(in), has_mask = read1<int>(in);
  const float scale = read1<float>(in);
  long long ms[4];
  for (auto& m : ms) m = read1<long long>(in);
  const long long mask_len = read1<long long>(in);
  const size_t nqe = size_t(b) * h * nq * d, nke = size_t(b) * hkv * nk * d;
  auto q = narrow<T>(readn<float>(in, nqe));
  auto k = narrow<T>(readn<float>(in, nke));
  auto v = narrow<T>(readn<float>(in, nke));
  auto dout = narrow<T>(readn<float>(in, nqe));
  auto kv_len = readn<int>(in, b);
  auto mask = readn<float>(in, mask_len > 0 ? mask_len : 0);
  if (mask.empty()) mask.push_back(0.0f);

  std::vector<T> o(nqe), dq(nqe), dk(nke), dv(nke);
  const size_t rows = size_t(b) * h * nq;
  std::vector<float> lse(rows), delta(rows);
  const dim3 block{256, 1, 1};
  const unsigned bh = unsigned(b) * h, bk = unsigned(b) * hkv;

  const zoo::Shape shape{h, hkv, nq, nk, d, scale, causal, has_mask, ms[0], ms[1], ms[2], ms[3]};
  const dim3 qgrid{unsigned((nq + zoo::BM - 1) / zoo::BM), bh, 1}, kgrid{unsigned((nk + zoo::BN - 1) / zoo::BN), bk, 1};
  if constexpr (TC) {
    zoo_emu::launch(qgrid, block, zoo::fwd_tc_smem_bytes(d), [&] {
      zoo::flash_fwd_tc<T>(q.data(), k.data(), v.data(), o.data(), lse.data(), kv_len.data(), mask.data(), shape);
    });
  } else {
    zoo_emu::launch(qgrid, block, 4 * zoo::fwd_smem_floats(d), [&] {
      zoo::flash_fwd<T>(q.data(), k.data(), v.data(), o.data(), lse.data(), kv_len.data(), mask.data(), shape);
    });
  }
  zoo_emu::launch(dim3{unsigned((rows + 255) / 256), 1, 1}, block, 0,
                  [&] { zoo::flash_bwd_delta<T>(o.data(), dout.data(), delta.data(), (long long)rows, d); });
  if constexpr (TC) {
    zoo_emu::launch(qgrid, block, zoo::dq_tc_smem_bytes(d), [&] {
      zoo::flash_bwd_dq_tc<T>(q.data(), k.data(), v.data(), dout.data(), lse.data(), delta.data(), dq.data(),
                              kv_len.data(), mask.data(), shape);
    });
    zoo_emu::launch(kgrid, block, zoo::dkdv_tc_smem_bytes(d), [&] {
      zoo::flash_bwd_dkdv_tc<T>(q.data(), k.data(), v.data(), dout.data(), lse.data(), delta.data(), dk.data(),
                                dv.data(), kv_len.data(), mask.data(), shape);
    });
  } else {
    zoo_emu::launch(qgrid, block, 4 * zoo::dq_smem_floats(d), [&] {
      zoo::flash_bwd_dq<T>(q.data(), k.data(), v.data(), dout.data(), lse.data(), delta.data(), dq.data(),
                           kv_len.data(), mask.data(), shape);
    });
    zoo_emu::launch(kgrid, block, 4 * zoo::dkdv_smem_floats(d), [&] {
      zoo::flash_bwd_dkdv<T>(q.data(), k.data(), v.data(), dout.data(), lse.data(), delta.data(), dk.data(),
                             dv.data(), kv_len.data(), mask.data(), shape);
    });
  }

  for (const auto& part : {widen(o), lse, widen(dq), widen(dk), widen(dv)})
    if (fwrite(part.data(), sizeof(float), part.size(), out) != part.size()) return 3;
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 2 && std::string(argv[1]) == "smem") {
    // Shared-memory bytes per kernel as the kernel source computes them, for d = 1..MAX_D:
    // d fwd dq dkdv fwd_tc dq_tc dkdv_tc
    for (int d = 1; d <= zoo::MAX_D; ++d)
      printf("%d %d %d %d %d %d %d\n", d, 4 * zoo::fwd_smem_floats(d), 4 * zoo::dq_smem_floats(d),
             4 * zoo::dkdv_smem_floats(d), zoo::fwd_tc_smem_bytes(d), zoo::dq_tc_smem_bytes(d),
             zoo::dkdv_tc_smem_bytes(d));
    return 0;
  }
  if (argc != 4) {
    fprintf(stderr, "usage: run_attention f32|f16|bf16|f16-tc|bf16-tc INPUT OUTPUT\n");
    return 2;
  }
  FILE* in = fopen(argv[2], "rb");
  FILE* out = fopen(argv[3], "wb");
  if (!in || !out) {
    fprintf(stderr, "run_attention: cannot open %s or %s\n", argv[2], argv[3]);
    return 2;
  }
  const std::string dt = argv[1];
  int rc = 2;
  if (dt == "f32") rc = run<float, false>(in, out);
  else if (dt == "f16") rc = run<__half, false>(in, out);
  else if (dt == "bf16") rc = run<__nv_bfloat16, false>(in, out);
  else if (dt == "f16-tc") rc = run<__half, true>(in, out);
  else if (dt == "bf16-tc") rc = run<__nv_bfloat16, true>(in, out);
  else fprintf(stderr, "run_attention: unknown variant %s (f32, f16, bf16, f16-tc, bf16-tc)\n", dt.c_str());
  fclose(in);
  fclose(out);
  return rc;
}
