// Reading the case file of the kernel emulators' run_attention (tools/cuda_emu, tools/metal_emu):
// little-endian values, exit status 2 when the file is too short.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <vector>

namespace zoo_emu_io {

template <typename X>
X read1(FILE* f) {
  X x;
  if (fread(&x, sizeof(X), 1, f) != 1) {
    fprintf(stderr, "run_attention: input file too short\n");
    exit(2);
  }
  return x;
}

template <typename X>
std::vector<X> readn(FILE* f, size_t n) {
  std::vector<X> v(n);
  if (n && fread(v.data(), sizeof(X), n, f) != n) {
    fprintf(stderr, "run_attention: input file too short\n");
    exit(2);
  }
  return v;
}

}  // namespace zoo_emu_io
