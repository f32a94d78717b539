#include "isa.h"

namespace ember::cpu {
namespace {

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
  static const Isa isa = detect();
  return isa;
}

bool cpu_has_vnni() {
  static const bool vnni = current_isa() == Isa::kAvx512 && __builtin_cpu_supports("avx512vnni");
  return vnni;
}

bool cpu_has_bf16() {
  static const bool bf16 = cpu_has_vnni() && __builtin_cpu_supports("avx512bf16");
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
