// x as the integer (AVX512-VNNI) quantized-linear kernel reads it, prepared once per call and shared by the threads
// that split the call's output rows (quant_linear_vnni_impl.h: prepare_x says what each part holds).
#pragma once

#include <cstdint>
#include <vector>

namespace ember::cpu {

// Which kernel x was prepared for: one value, so that a preparation for one kernel can never be read by another.
enum class XLayout {
  kPlain,  // the integer kernel's (quant_linear_vnni_impl.h: hi, lo, offset, sums), or x as it is
  kBf16,   // the bfloat16-dot kernel's (quant_linear_bf16_impl.h): xb, sums
  kInt8,   // the 8-bit x kernel's (quant_linear_int8x_impl.h): xq, lane_d, sums
  kGemm,   // its matrix product's (quant_linear_gemm_impl.h): xq [rows][K], lane_d [rows][K/32], sums
};

struct PreparedX {
  XLayout layout = XLayout::kPlain;
  int64_t rows = 0;
  int64_t blocks = 0;      // 64-byte weight blocks per row of W (6 bits: its nibbles')
  int64_t plane = 0;       // values per row of hi / lo / xb: blocks * (128 for 4 and 6 bits, 64 for 8)
  int64_t groups_pad = 0;  // weight groups per row, padded to a multiple of 16
  int64_t spans = 0;       // the 8-bit x kernel's runs of 4 whole blocks per row
  std::vector<int8_t> hi, lo;
  std::vector<uint16_t> xb;  // [rows][plane]: bfloat16 x in the order the bfloat16-dot kernel reads it
  std::vector<int8_t> xq;    // [rows][plane]: x rounded to 8 bits, in the order the 8-bit x kernel reads it
  std::vector<float> lane_d;  // [rows][blocks][16]: the scale of the x group each int32 lane sums
  std::vector<float> sums;    // [rows][groups_pad]: sum of x over each weight group (the mins' term)
  std::vector<float> offset;  // [rows][groups_pad]: z d sum q over each weight group, z = 128 (8 bits) or zero_point
};

}  // namespace ember::cpu
