#include "isa.h"

#include <cstdlib>
#include <cstring>

namespace ember::cpu {
namespace {

// How far up isa_name()'s ladder EMBER_CPU_ISA lets the kernels go: baseline 0, avx2 1, avx512 2, avx512+vnni 3,
// avx512+vnni+bf16 4 (unset, empty or another value: no cap). Never above what the CPU has. Why: one machine can
// then run and test every copy of the kernels (tests/runtimes/text/test_isa_cap.py), including those that CPUs
// without AVX-512, VNNI or BF16 take.
int cap() {
  static const int level = [] {
    const char* v = std::getenv("EMBER_CPU_ISA");
    const char* names[] = {"baseline", "avx2", "avx512", "avx512+vnni", "avx512+vnni+bf16"};
    for (int i = 0; v != nullptr && i < 5; ++i) {
      if (std::strcmp(v, names[i]) == 0) return i;
    }
    return 4;
  }();
  return level;
}

Isa detect() {
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq")) {
    return Isa::kAvx512;
  }
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::kAvx2;
  return Isa::kBaseline;
}

}  // namespace

Isa current_isa() {
  static const Isa isa = [] {
    const Isa found = detect();
    if (cap() == 0) return Isa::kBaseline;
    if (cap() == 1 && found == Isa::kAvx512) return Isa::kAvx2;
    return found;
  }();
  return isa;
}

bool cpu_has_vnni() {
  static const bool vnni = current_isa() == Isa::kAvx512 && cap() >= 3 && __builtin_cpu_supports("avx512vnni");
  return vnni;
}

bool cpu_has_bf16() {
  static const bool bf16 = cpu_has_vnni() && cap() >= 4 && __builtin_cpu_supports("avx512bf16");
  return bf16;
}

const char* isa_name() {
  switch (current_isa()) {
    case Isa::kAvx512:
      return cpu_has_bf16() ? "avx512+vnni+bf16" : cpu_has_vnni() ? "avx512+vnni" : "avx512";
    case Isa::kAvx2:
      return "avx2";
    default:
      return "baseline";
  }
}

}  // namespace ember::cpu
