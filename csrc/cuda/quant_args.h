// A weight-only quantized matrix as the CUDA kernels read it: csrc/cpu/quant_view.h's layout (the rows one after
// another; the tiled layout is the CPU kernels' alone), as plain pointers and sizes. Built-in types only, so that
// the host glue, the launchers and NVRTC (the compile check) all read the same definition.
#pragma once

namespace ember::cuda {

struct QuantArgs {
  const unsigned char* q;  // [N, row_bytes]: 4 bits K/2 a row, 6 bits 3K/4 (nibbles, then top bits), 8 bits K
  const void* scales;      // [N, groups]: float16 (one level), or int8 times super_scales (two levels)
  const void* mins;        // like scales, or null (m = 0)
  const float* super_scales;  // [N, supers] (two levels), else null
  const float* super_mins;    // [N, supers] or null
  const float* bias;          // [N] float32 or null
  long long n, k, row_bytes;
  int bits, groups, group_size, supers, zero_point;
  bool two_level;
};

}  // namespace ember::cuda
