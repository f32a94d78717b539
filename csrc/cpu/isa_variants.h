// Compiles the kernel header named by EMBER_KERNEL_IMPL once per instruction set, each copy in its own namespace
// (ember::cpu::avx512, ::avx2, ::baseline) and `#pragma GCC target` region, so one build runs on any x86-64 CPU and
// the dispatcher (isa.h) picks the widest variant at run time, never at build time. Usage, in a .cpp file:
//     #define EMBER_KERNEL_IMPL "my_kernel_impl.h"
//     #include "isa_variants.h"
// GCC does not define __AVX512F__ / __AVX2__ inside a target region, so each copy is told which it is by
// EMBER_AVX512 / EMBER_AVX2 instead.

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,fma,f16c")
#define EMBER_AVX512 1
namespace ember::cpu::avx512 {
#include EMBER_KERNEL_IMPL
}
#undef EMBER_AVX512
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#define EMBER_AVX2 1
namespace ember::cpu::avx2 {
#include EMBER_KERNEL_IMPL
}
#undef EMBER_AVX2
#pragma GCC pop_options

namespace ember::cpu::baseline {
#include EMBER_KERNEL_IMPL
}

#undef EMBER_KERNEL_IMPL
