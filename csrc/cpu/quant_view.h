// A weight-only quantized matrix as the quantized-linear kernels read it (see quant_linear_impl.h for the math).
#pragma once

#include <cstdint>

namespace ember::cpu {

// W [N, K] is stored as integers q in groups of `group_size` consecutive values of a row, each group with its own
// affine map w = s * q + m:
//   bits 4  q: uint8 [N, K/2], a group of 32 in 16 bytes, byte j = value j (low nibble) | value j + 16 (high)
//   bits 6  q: uint8 [N, 3K/4], values 0-63, K a multiple of 128. Row n's K/2 bytes of low nibbles come first, in
//           the 4-bit layout, then its K/4 bytes of top 2 bits: per 128 values (64 nibble bytes, `lo` and `hi` their
//           low and high nibbles), 32 bytes whose byte c holds the top bits of lo[c], lo[c + 32], hi[c], hi[c + 32]
//           in bits 0-1, 2-3, 4-5, 6-7. So row n's nibbles are at q + n * 3K/4 and its top bits K/2 further.
//           Groups of 16 (Q6_K) are centred at zero_point = 32: w = s * (q - 32) + m.
//   bits 8  q: int8 [N, K]
// One level of scales (GGUF Q4_0, Q4_1, Q5_0, Q5_1, Q8_0): s and m are float16 [N, G] (`scales16`, `mins16`).
// Two levels (Q4_K, Q5_K, Q6_K): s = super_scales[n, g / R] * scales8[n, g] and m = super_mins[n, g / R] *
// mins8[n, g], with int8 sub-scales and float32 super-scales for R = 2^super_shift consecutive groups. Either way
// the products are exact in float32, so the kernel computes with the very weights the GGUF file holds.
struct QuantView {
  const uint8_t* q = nullptr;
  const uint16_t* scales16 = nullptr;
  const uint16_t* mins16 = nullptr;  // null: m = 0
  const int8_t* scales8 = nullptr;
  const int8_t* mins8 = nullptr;  // null: m = 0
  const float* super_scales = nullptr;
  const float* super_mins = nullptr;
  const float* bias = nullptr;  // [N] float32, or null
  int64_t n = 0, k = 0, groups = 0;
  int bits = 4, group_size = 32, super_shift = 0;
  int zero_point = 0;  // set by the layout (bits 6, groups of 16: 32), never passed in
};

}  // namespace ember::cpu
