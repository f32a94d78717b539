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
// Tiled (q: [N/8, B, 8, U], for N a multiple of 8): the same bytes regrouped so that a tile of 8 consecutive rows
// is one contiguous run, read front to back. A row's bytes are cut in B blocks of U: 64 bytes (4 or 8 bits, the
// row a whole number of them), or for 6 bits 96, a 64-byte block of nibbles followed by its 32 bytes of top bits.
// The tile holds block 0 of its 8 rows, then block 1 of them, ... So a kernel working on 8 rows at once streams
// through memory in order: measured on Qwen2.5-Coder-1.5B's gate/up matrix (K = 1536, 768 bytes a row, 1 thread),
// 22 GB/s against 8.5 when it reads 8 rows 768 bytes apart, whose 8 streams the hardware prefetcher follows late.
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
  // Where row n's bytes are, in either layout: block b of its nibbles (8 bits: its values) at row_start(n) +
  // b * block_stride, and (6 bits) that block's 32 bytes of top bits at row_start(n) + top_offset + b * top_stride.
  bool tiled = false;
  int64_t row_bytes = 0, block_stride = 64, top_offset = 0, top_stride = 32;
};

constexpr int kTileRows = 8;

// The bytes a row takes in one block of the tiled layout.
inline int64_t tiled_block_bytes(int bits) { return bits == 6 ? 96 : 64; }

inline const uint8_t* row_start(const QuantView& w, int64_t n) {
  if (!w.tiled) return w.q + n * w.row_bytes;
  return w.q + (n / kTileRows) * kTileRows * w.row_bytes + (n % kTileRows) * tiled_block_bytes(w.bits);
}

}  // namespace ember::cpu
