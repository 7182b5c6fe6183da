// Runs kernels/metal/flash_attention.metal under the CPU emulator (metal_emu.h): the forward and
// the three backward kernels, dispatched with the same threadgroup counts, threadgroup sizes and
// threadgroup-memory lengths as the Rust host code (crates/zoo-kernels/src/attention/metal.rs).
//
// Usage: run_attention f32|f16|bf16 INPUT OUTPUT
//        run_attention tgmem   (threadgroup-memory bytes per kernel and head dim, for the host check)
// INPUT / OUTPUT: the format of tools/cuda_emu/run_attention.cpp (the Rust test shares the code).
// Build: c++ -std=c++20 -O2 -pthread -DZOO_METAL_EMU -I tools/metal_emu tools/metal_emu/run_attention.cpp

#include <cstdio>
#include <cstdlib>
#include <string>

#include "../emu_common/io.h"

#include "../../kernels/metal/flash_attention.metal"

namespace {

using zoo_emu_io::read1;
using zoo_emu_io::readn;

template <typename T>
std::vector<T> narrow(const std::vector<float>& x) {
  std::vector<T> out(x.size());
  for (size_t i = 0; i < x.size(); ++i) out[i] = T(x[i]);
  return out;
}

template <typename T>
std::vector<float> widen(const std::vector<T>& x) {
  std::vector<float> out(x.size());
  for (size_t i = 0; i < x.size(); ++i) out[i] = float(x[i]);
  return out;
}

template <typename T>
int run(FILE* in, FILE* out) {
  const int b = read1<int>(in), h = read1<int>(in), hkv = read1<int>(in), nq = read1<int>(in),
            nk = read1<int>(in), d = read1<int>(in), causal = read1<int>(in), has_mask = read1<int>(in);
  const float scale = read1<float>(in);
  long ms[4];
  for (auto& m : ms) m = read1<long>(in);
  const long mask_len = read1<long>(in);
  const size_t nqe = size_t(b) * h * nq * d, nke = size_t(b) * hkv * nk * d;
  auto q = narrow<T>(readn<float>(in, nqe));
  auto k = narrow<T>(readn<float>(in, nke));
  auto v = narrow<T>(readn<float>(in, nke));
  auto dout = narrow<T>(readn<float>(in, nqe));
  auto kv_len = readn<int>(in, b);
  auto mask = readn<float>(in, mask_len > 0 ? mask_len : 0);
  if (mask.empty()) mask.push_back(0.0f);

  std::vector<T> o(nqe), dq(nqe), dk(nke), dv(nke);
  long rows = long(b) * h * nq;
  std::vector<float> lse(rows), delta(rows);
  const uint bh = uint(b) * h, bk = uint(b) * hkv;
  zoo::Params s{h, hkv, nq, nk, d, scale, causal, has_mask, ms[0], ms[1], ms[2], ms[3]};
  int dd = d;

  zoo_metal_emu::dispatch(uint3{uint((nq + ZOO_FWD_BM - 1) / ZOO_FWD_BM), bh, 1}, ZOO_NT,
                          4 * zoo::fwd_tg_floats(d), [&](uint tid, uint3 gid, float* tg) {
                            zoo::flash_fwd<T>(q.data(), k.data(), v.data(), o.data(), lse.data(), kv_len.data(),
                                              mask.data(), s, tg, tid, gid);
                          });
  zoo_metal_emu::dispatch(uint3{uint((rows + ZOO_NT - 1) / ZOO_NT), 1, 1}, ZOO_NT, 0,
                          [&](uint tid, uint3 gid, float*) {
                            zoo::flash_bwd_delta<T>(o.data(), dout.data(), delta.data(), rows, dd, tid, gid);
                          });
  zoo_metal_emu::dispatch(uint3{uint((nq + ZOO_DQ_BM - 1) / ZOO_DQ_BM), bh, 1}, ZOO_NT,
                          4 * zoo::dq_tg_floats(d), [&](uint tid, uint3 gid, float* tg) {
                            zoo::flash_bwd_dq<T>(q.data(), k.data(), v.data(), dout.data(), lse.data(), delta.data(),
                                                 dq.data(), kv_len.data(), mask.data(), s, tg, tid, gid);
                          });
  zoo_metal_emu::dispatch(uint3{uint((nk + ZOO_KV_BN - 1) / ZOO_KV_BN), bk, 1}, ZOO_NT,
                          4 * zoo::dkdv_tg_floats(d), [&](uint tid, uint3 gid, float* tg) {
                            zoo::flash_bwd_dkdv<T>(q.data(), k.data(), v.data(), dout.data(), lse.data(),
                                                   delta.data(), dk.data(), dv.data(), kv_len.data(), mask.data(),
                                                   s, tg, tid, gid);
                          });

  for (const auto& part : {widen(o), lse, widen(dq), widen(dk), widen(dv)})
    if (fwrite(part.data(), sizeof(float), part.size(), out) != part.size()) return 3;
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 2 && std::string(argv[1]) == "tgmem") {
    // Threadgroup-memory bytes per kernel as the kernel source computes them, d = 1..MAX_D:
    // d fwd dq dkdv
    for (int d = 1; d <= ZOO_MAX_D; ++d)
      printf("%d %d %d %d\n", d, 4 * zoo::fwd_tg_floats(d), 4 * zoo::dq_tg_floats(d), 4 * zoo::dkdv_tg_floats(d));
    return 0;
  }
  if (argc != 4) {
    fprintf(stderr, "usage: run_attention f32|f16|bf16 INPUT OUTPUT\n");
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
  if (dt == "f32") rc = run<float>(in, out);
  else if (dt == "f16") rc = run<half>(in, out);
  else if (dt == "bf16") rc = run<bfloat>(in, out);
  else fprintf(stderr, "run_attention: unknown variant %s (f32, f16, bf16)\n", dt.c_str());
  fclose(in);
  fclose(out);
  return rc;
}
