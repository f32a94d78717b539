// Which instruction set the CPU kernels run with: detected once at load, never assumed at build time (a build
// with -march=native dies with "Illegal instruction" on a CPU that lacks what the build machine had).
#pragma once

namespace ember::cpu {

enum class Isa { kBaseline, kAvx2, kAvx512 };

// The widest variant this CPU runs: AVX-512 (F, BW, VL, DQ), else AVX2 with FMA, else the portable build; no wider
// than the environment variable EMBER_CPU_ISA allows where it names a level of isa_name() (isa.cpp).
Isa current_isa();

// "avx512", "avx2" or "baseline", with "+vnni" where the integer dot products of AVX512-VNNI run too and "+bf16"
// where AVX512-BF16's do as well.
const char* isa_name();

// Whether the CPU has AVX512-VNNI (with the AVX-512 above): the quantized linear's integer kernel.
bool cpu_has_vnni();

// Whether the CPU has AVX512-BF16 (with AVX512-VNNI): the quantized linear's bfloat16-dot kernel.
bool cpu_has_bf16();

}  // namespace ember::cpu

// Returns CALL from the kernel copy for the CPU's widest instruction set (isa_variants.h's namespaces avx512,
// avx2, baseline), e.g. EMBER_ISA_CALL(rms_norm_rows(out, x, ...)) in a function of ember::cpu.
#define EMBER_ISA_CALL(CALL)  \
  switch (current_isa()) {    \
    case Isa::kAvx512:        \
      return avx512::CALL;    \
    case Isa::kAvx2:          \
      return avx2::CALL;      \
    default:                  \
      return baseline::CALL;  \
  }
