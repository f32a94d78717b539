// ember::quant_linear and ember::dequantize on CUDA, for weights kept quantized as the GGUF file holds them
// (quant_args.h; the layout is csrc/cpu/quant_view.h's, the math runtimes/text/quant/formats.py's).
//
// quant_linear is the decode GEMV: a few rows of x (a decode batch, a speculative verification) against every
// weight once, so its time is the weights' bytes over the memory bandwidth, as long as the arithmetic per weight
// stays under what the GPU issues in that time. A warp takes one output row and its lanes 32-value spans of it
// side by side: each lane loads its span's 16 bytes of nibbles (4 bits; 6 bits also the span's 16 bytes of top
// bits; 8 bits 32 bytes) with one vector load, the warp 512 contiguous bytes at a time, and the affine map of the
// span's group(s) is applied once per group: s * sum(q x) + m * sum(x).
//
// Two kernels for the sums, by the activations' dtype, each computing what the CPU computes for that dtype:
// - 16-bit x (bfloat16, float16: what a GPU runs in) is first rounded to 8 bits per group of 32 (quantize_x_kernel,
//   exactly as the CPU's default 8-bit x kernel and llama.cpp's Q8_0 round it), and the sums are dp4a's: 4
//   byte products and their sum in one instruction, the weights' bytes unpacked a word (4 or 8 values) at a time.
//   About 0.3 instructions a weight a row of x, where float arithmetic needs 3 or more: at an H100's 3 TB/s, 4-bit
//   weights arrive at ~5 T a second, and 3 float instructions each would be half the GPU's issue rate.
// - float32 x keeps its values: each integer becomes a float through the bits of 2^23 (an OR and a subtraction,
//   not the conversion instruction, which issues at a quarter of the float rate), then a float dot product.
// Rows of x come in compile-time counts (the launcher cuts a batch in such chunks, each a pass over the weights);
// prefill-sized batches take dequantize + cuBLAS instead (runtimes/text/quant/layers.py, GPU_GEMV_ROWS).
//
// dequantize writes W in the activation dtype, exactly as formats.dequantize computes it (q s + m, both products
// exact in float32): the dense path of long prompt chunks.

#include "common.cuh"
#include "quant_args.h"

namespace ember::cuda {

constexpr int kGemvWarps = 8;  // output rows a block of threads takes, a warp each
constexpr int kMaxRows = 8;    // rows of x a launch takes

// v (0 <= v < 2^23) as a float, exactly.
__device__ __forceinline__ float small_to_float(unsigned v) { return __uint_as_float(0x4B000000u | v) - 8388608.0f; }

// Byte i (0-3) of a word.
__device__ __forceinline__ unsigned byte_of(unsigned word, int i) { return (word >> (8 * i)) & 0xFFu; }

// A 4- or 6-bit span's 16 nibble bytes as 4 words, and for 6 bits its 16 bytes of top bits and which of their
// fields hold the low nibbles' (shift; the high nibbles' are 4 above): the span's nibble bytes are bytes p0 .. p0 +
// 15 of its 128-value block, whose top bits are bytes p0 % 32 .. of the block's 32, fields 0 and 2 below 32 and
// fields 1 and 3 above.
template <int BITS>
__device__ __forceinline__ void span_nibbles(const unsigned char* row, long long k, long long span,
                                             unsigned (&words)[4], unsigned (&tops)[4], int& shift) {
  const uint4 nibbles = *reinterpret_cast<const uint4*>(row + span * 16);
  words[0] = nibbles.x, words[1] = nibbles.y, words[2] = nibbles.z, words[3] = nibbles.w;
  tops[0] = tops[1] = tops[2] = tops[3] = 0;
  shift = 0;
  if constexpr (BITS == 6) {
    const int p0 = 16 * static_cast<int>(span % 4);
    const uint4 t = *reinterpret_cast<const uint4*>(row + k / 2 + (span / 4) * 32 + (p0 & 31));
    tops[0] = t.x, tops[1] = t.y, tops[2] = t.z, tops[3] = t.w;
    shift = p0 >= 32 ? 2 : 0;
  }
}

// The span's weights as 8 words of 4 signed bytes each, values 4 i .. 4 i + 3 of the span in word i: lo the first
// 16 values, hi the last 16 (for 4 and 6 bits, the low and the high nibbles of the same 16 bytes).
template <int BITS>
__device__ __forceinline__ void span_words(const unsigned char* row, long long k, long long span, int (&lo)[4],
                                           int (&hi)[4]) {
  if constexpr (BITS == 8) {
    const uint4* p = reinterpret_cast<const uint4*>(row + span * 32);
    const uint4 a = p[0], b = p[1];
    lo[0] = static_cast<int>(a.x), lo[1] = static_cast<int>(a.y), lo[2] = static_cast<int>(a.z);
    lo[3] = static_cast<int>(a.w);
    hi[0] = static_cast<int>(b.x), hi[1] = static_cast<int>(b.y), hi[2] = static_cast<int>(b.z);
    hi[3] = static_cast<int>(b.w);
  } else {
    unsigned words[4], tops[4];
    int shift;
    span_nibbles<BITS>(row, k, span, words, tops, shift);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      // Shifting the whole word moves bits across bytes, but the masks keep only each byte's own.
      unsigned l = words[i] & 0x0F0F0F0Fu, h = (words[i] >> 4) & 0x0F0F0F0Fu;
      if constexpr (BITS == 6) {
        l |= ((tops[i] >> shift) & 0x03030303u) << 4;
        h |= ((tops[i] >> (shift + 4)) & 0x03030303u) << 4;
      }
      lo[i] = static_cast<int>(l);
      hi[i] = static_cast<int>(h);
    }
  }
}

// Byte i of a span_words word as the integer it stores, as a float: 0-63 for 4 and 6 bits; a signed byte for 8, its
// sign bit flipped giving value + 128 (0-255).
template <int BITS>
__device__ __forceinline__ float byte_value(int word, int i) {
  const unsigned b = byte_of(static_cast<unsigned>(word), i);
  return BITS == 8 ? small_to_float(b ^ 0x80u) - 128.0f : small_to_float(b);
}

// The 32 stored integers of span `span` of a row (values 32 span .. 32 span + 31) as floats.
template <int BITS>
__device__ __forceinline__ void span_values(const unsigned char* row, long long k, long long span, float (&v)[32]) {
  int lo[4], hi[4];
  span_words<BITS>(row, k, span, lo, hi);
#pragma unroll
  for (int i = 0; i < 16; ++i) {
    v[i] = byte_value<BITS>(lo[i / 4], i % 4);
    v[i + 16] = byte_value<BITS>(hi[i / 4], i % 4);
  }
}

// Group g of the row's map w = s q + m, the zero point folded into m (m - z s: exact, z a power of two).
__device__ __forceinline__ void group_map(const QuantArgs& w, long long row, long long g, float& s, float& m) {
  const long long at = row * w.groups + g;
  if (w.two_level) {
    const long long super = row * w.supers + g / (w.groups / w.supers);
    const signed char* sub_scales = static_cast<const signed char*>(w.scales);
    const signed char* sub_mins = static_cast<const signed char*>(w.mins);
    s = w.super_scales[super] * static_cast<float>(sub_scales[at]);
    m = sub_mins != nullptr ? w.super_mins[super] * static_cast<float>(sub_mins[at]) : 0.0f;
  } else {
    s = __half2float(static_cast<const __half*>(w.scales)[at]);
    m = w.mins != nullptr ? __half2float(static_cast<const __half*>(w.mins)[at]) : 0.0f;
  }
  if (w.zero_point != 0) m += s * static_cast<float>(-w.zero_point);
}

// The maps of a span's two halves (values 0-15, 16-31): one group of 32 or more, or two of 16.
__device__ __forceinline__ void span_maps(const QuantArgs& w, long long row, long long span, float& s_lo, float& m_lo,
                                          float& s_hi, float& m_hi) {
  if (w.group_size == 16) {
    group_map(w, row, 2 * span, s_lo, m_lo);
    group_map(w, row, 2 * span + 1, s_hi, m_hi);
  } else {
    group_map(w, row, 32 * span / w.group_size, s_lo, m_lo);
    s_hi = s_lo;
    m_hi = m_lo;
  }
}

// 8 consecutive values of x (16-byte aligned for 16-bit types, 32 for float32) as floats.
template <typename T>
__device__ __forceinline__ void load8(const T* p, float (&v)[8]);
template <>
__device__ __forceinline__ void load8<float>(const float* p, float (&v)[8]) {
  const float4 a = reinterpret_cast<const float4*>(p)[0], b = reinterpret_cast<const float4*>(p)[1];
  v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
}
template <>
__device__ __forceinline__ void load8<__nv_bfloat16>(const __nv_bfloat16* p, float (&v)[8]) {
  const uint4 a = *reinterpret_cast<const uint4*>(p);
  const unsigned words[4] = {a.x, a.y, a.z, a.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    v[2 * i] = __uint_as_float(words[i] << 16);
    v[2 * i + 1] = __uint_as_float(words[i] & 0xFFFF0000u);
  }
}
template <>
__device__ __forceinline__ void load8<__half>(const __half* p, float (&v)[8]) {
  const uint4 a = *reinterpret_cast<const uint4*>(p);
  const unsigned words[4] = {a.x, a.y, a.z, a.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 f = __half22float2(*reinterpret_cast<const __half2*>(&words[i]));
    v[2 * i] = f.x;
    v[2 * i + 1] = f.y;
  }
}

// The decode GEMVs' frame: warp w of the block takes output row n, its lanes the row's spans side by side
// (span_sums(row, n, span, acc) adds a span's products to each row of x's sum), then the warp's sums plus the bias
// go to out [M, N].
template <typename T, int M, typename Span>
__device__ __forceinline__ void gemv_rows(T* out, const QuantArgs& w, Span&& span_sums) {
  const int lane = threadIdx.x & 31;
  const long long n = static_cast<long long>(blockIdx.x) * kGemvWarps + (threadIdx.x >> 5);
  if (n >= w.n) return;
  const unsigned char* row = w.q + n * w.row_bytes;
  float acc[M];
#pragma unroll
  for (int r = 0; r < M; ++r) acc[r] = 0.0f;
  for (long long span = lane; span < w.k / 32; span += 32) span_sums(row, n, span, acc);
  const float b = w.bias != nullptr ? w.bias[n] : 0.0f;
#pragma unroll
  for (int r = 0; r < M; ++r) {
    const float total = warp_sum(acc[r]);
    if (lane == 0) out[r * w.n + n] = from_float<T>(total + b);
  }
}

// out[r, n] = x[r] . W[n] + bias[n] for M rows of float32 x, in gemv_rows's frame.
template <typename T, int BITS, int M>
__global__ void __launch_bounds__(kGemvWarps * 32)
    quant_gemv_kernel(T* __restrict__ out, const T* __restrict__ x, const QuantArgs w) {
  gemv_rows<T, M>(out, w, [&](const unsigned char* row, long long n, long long span, float (&acc)[M]) {
    float q[32];
    span_values<BITS>(row, w.k, span, q);
    float s_lo, m_lo, s_hi, m_hi;
    span_maps(w, n, span, s_lo, m_lo, s_hi, m_hi);
#pragma unroll
    for (int r = 0; r < M; ++r) {
      const T* xs = x + r * w.k + span * 32;
      float dot_lo = 0.0f, sum_lo = 0.0f, dot_hi = 0.0f, sum_hi = 0.0f;
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        float xv[8];
        load8(xs + 8 * c, xv);
#pragma unroll
        for (int i = 0; i < 8; ++i) {
          if (c < 2) {
            dot_lo += q[8 * c + i] * xv[i];
            sum_lo += xv[i];
          } else {
            dot_hi += q[8 * c + i] * xv[i];
            sum_hi += xv[i];
          }
        }
      }
      acc[r] += s_lo * dot_lo + m_lo * sum_lo + s_hi * dot_hi + m_hi * sum_hi;
    }
  });
}

// x [rows, K] (contiguous) rounded per group of 32 values as the CPU's 8-bit x kernel rounds it (round_group in
// csrc/cpu/quant_linear_int8x_impl.h): d = max|x| / 127, q = x * (127 / max|x|) to the nearest integer, ties to
// even; xq the bytes, xd each group's d, xs each 16-value half's d * sum(q) (the affine maps' min terms). A warp a
// group, a lane a value.
template <typename T>
__global__ void quantize_x_kernel(const T* __restrict__ x, signed char* __restrict__ xq, float* __restrict__ xd,
                                  float* __restrict__ xs, long long groups) {
  const long long g = (blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x) / 32;
  if (g >= groups) return;  // whole warps: a group's 32 lanes leave together
  const int lane = threadIdx.x & 31;
  const float v = to_float(x[g * 32 + lane]);
  const float amax = warp_max(fabsf(v));
  const int q = __float2int_rn(v * (amax > 0.0f ? 127.0f / amax : 0.0f));
  xq[g * 32 + lane] = static_cast<signed char>(q);
  float half = static_cast<float>(q);  // summed within each half of the warp: exact, |sum| <= 16 * 127
  for (int offset = 8; offset > 0; offset >>= 1) half += __shfl_xor_sync(0xffffffffu, half, offset);
  const float d = amax / 127.0f;
  if (lane == 0) {
    xd[g] = d;
    xs[2 * g] = d * half;
  } else if (lane == 16) {
    xs[2 * g + 1] = d * half;
  }
}


// out[r, n] = x[r] . W[n] + bias[n] for M rows of x rounded to 8 bits (quantize_x_kernel), in gemv_rows's frame.
// The span's integer dot products are exact; each is scaled once. At least 2 blocks an SM (up to 128 registers a
// thread): left to itself ptxas held some row counts to 64 registers and spilled.
template <typename T, int BITS, int M>
__global__ void __launch_bounds__(kGemvWarps * 32, 2)
    quant_gemv_q8_kernel(T* __restrict__ out, const signed char* __restrict__ xq, const float* __restrict__ xd,
                         const float* __restrict__ xs, const QuantArgs w) {
  const long long spans = w.k / 32;
  gemv_rows<T, M>(out, w, [&](const unsigned char* row, long long n, long long span, float (&acc)[M]) {
    int lo[4], hi[4];
    span_words<BITS>(row, w.k, span, lo, hi);
    float s_lo, m_lo, s_hi, m_hi;
    span_maps(w, n, span, s_lo, m_lo, s_hi, m_hi);
#pragma unroll
    for (int r = 0; r < M; ++r) {
      const long long g = r * spans + span;
      const int4* xv = reinterpret_cast<const int4*>(xq + g * 32);
      const int4 a = xv[0], b = xv[1];
      int dot_lo = __dp4a(lo[0], a.x, 0), dot_hi = __dp4a(hi[0], b.x, 0);
      dot_lo = __dp4a(lo[1], a.y, dot_lo);
      dot_hi = __dp4a(hi[1], b.y, dot_hi);
      dot_lo = __dp4a(lo[2], a.z, dot_lo);
      dot_hi = __dp4a(hi[2], b.z, dot_hi);
      dot_lo = __dp4a(lo[3], a.w, dot_lo);
      dot_hi = __dp4a(hi[3], b.w, dot_hi);
      const float d = xd[g];
      acc[r] += s_lo * d * static_cast<float>(dot_lo) + m_lo * xs[2 * g] + s_hi * d * static_cast<float>(dot_hi) +
                m_hi * xs[2 * g + 1];
    }
  });
}

// out [N, K] = W, a thread a span of 32 values.
template <typename T, int BITS>
__global__ void dequantize_kernel(T* __restrict__ out, const QuantArgs w) {
  const long long spans = w.k / 32;
  const long long at = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x;
  if (at >= w.n * spans) return;
  const long long n = at / spans, span = at % spans;
  float q[32];
  span_values<BITS>(w.q + n * w.row_bytes, w.k, span, q);
  float s_lo, m_lo, s_hi, m_hi;
  span_maps(w, n, span, s_lo, m_lo, s_hi, m_hi);
  T* o = out + n * w.k + span * 32;
#pragma unroll
  for (int i = 0; i < 32; ++i) o[i] = from_float<T>(i < 16 ? q[i] * s_lo + m_lo : q[i] * s_hi + m_hi);
}

}  // namespace ember::cuda

#ifdef __CUDACC_RTC__
// The instances the launchers below make: the float GEMV for float32 x in chunks of 8, 4, 2, 1 rows; the 8-bit x
// GEMV for 16-bit x in chunks of 1 to 8 (a decode batch or a verification step is one pass over the weights).
#define EMBER_GEMV_F32(BITS, M)                                                                 \
  template __global__ void ember::cuda::quant_gemv_kernel<float, BITS, M>(float*, const float*, \
                                                                          const ember::cuda::QuantArgs);
#define EMBER_GEMV_Q8(T, BITS, M)                                                                                \
  template __global__ void ember::cuda::quant_gemv_q8_kernel<T, BITS, M>(T*, const signed char*, const float*, \
                                                                         const float*, const ember::cuda::QuantArgs);
#define EMBER_BITS(T, BITS)                                                                                  \
  EMBER_GEMV_Q8(T, BITS, 1) EMBER_GEMV_Q8(T, BITS, 2) EMBER_GEMV_Q8(T, BITS, 3) EMBER_GEMV_Q8(T, BITS, 4)  \
  EMBER_GEMV_Q8(T, BITS, 5) EMBER_GEMV_Q8(T, BITS, 6) EMBER_GEMV_Q8(T, BITS, 7) EMBER_GEMV_Q8(T, BITS, 8)  \
  template __global__ void ember::cuda::dequantize_kernel<T, BITS>(T*, const ember::cuda::QuantArgs);
#define EMBER_16BIT(T)                                                                                        \
  EMBER_BITS(T, 4) EMBER_BITS(T, 6) EMBER_BITS(T, 8)                                                         \
  template __global__ void ember::cuda::quantize_x_kernel<T>(const T*, signed char*, float*, float*, long long);
EMBER_16BIT(__nv_bfloat16)
EMBER_16BIT(__half)
#define EMBER_F32(BITS)                                                                                      \
  EMBER_GEMV_F32(BITS, 1) EMBER_GEMV_F32(BITS, 2) EMBER_GEMV_F32(BITS, 4) EMBER_GEMV_F32(BITS, 8)          \
  template __global__ void ember::cuda::dequantize_kernel<float, BITS>(float*, const ember::cuda::QuantArgs);
EMBER_F32(4)
EMBER_F32(6)
EMBER_F32(8)
#undef EMBER_F32
#undef EMBER_16BIT
#undef EMBER_BITS
#undef EMBER_GEMV_Q8
#undef EMBER_GEMV_F32
#else
#include "dtype_dispatch.cuh"

namespace ember::cuda {
namespace {

// Calls fn with BITS as a compile-time constant.
template <typename Fn>
void with_bits(int bits, Fn&& fn) {
  switch (bits) {
    case 4:
      fn(std::integral_constant<int, 4>{});
      break;
    case 6:
      fn(std::integral_constant<int, 6>{});
      break;
    default:
      fn(std::integral_constant<int, 8>{});
  }
}

// Calls fn with M = rows (1 to 8) as a compile-time constant.
template <typename Fn>
void with_rows(int rows, Fn&& fn) {
  switch (rows) {
    case 1: return fn(std::integral_constant<int, 1>{});
    case 2: return fn(std::integral_constant<int, 2>{});
    case 3: return fn(std::integral_constant<int, 3>{});
    case 4: return fn(std::integral_constant<int, 4>{});
    case 5: return fn(std::integral_constant<int, 5>{});
    case 6: return fn(std::integral_constant<int, 6>{});
    case 7: return fn(std::integral_constant<int, 7>{});
    default: return fn(std::integral_constant<int, 8>{});
  }
}

unsigned gemv_blocks(const QuantArgs& w) { return static_cast<unsigned>((w.n + kGemvWarps - 1) / kGemvWarps); }

// Where the rounded x's bytes start in the workspace: after its floats (xd, then xs), 16-byte aligned.
int64_t x8_offset(int64_t rows, int64_t k) { return ((rows * k / 32 + rows * k / 16) * 4 + 15) / 16 * 16; }

template <typename T, int BITS>
void linear_16bit(T* out, const T* x, int64_t rows, const QuantArgs& w, void* workspace, cudaStream_t stream) {
  float* xd = static_cast<float*>(workspace);
  float* xs = xd + rows * w.k / 32;
  signed char* xq = static_cast<signed char*>(workspace) + x8_offset(rows, w.k);
  const long long groups = rows * w.k / 32;
  EMBER_LAUNCH(static_cast<unsigned>((groups * 32 + 255) / 256), 256, stream, quantize_x_kernel<T>)(
      x, xq, xd, xs, groups);
  for (int64_t r = 0; r < rows; r += kMaxRows) {
    const int chunk = static_cast<int>(rows - r < kMaxRows ? rows - r : kMaxRows);
    with_rows(chunk, [&](auto m) {
      EMBER_LAUNCH(gemv_blocks(w), kGemvWarps * 32, stream, quant_gemv_q8_kernel<T, BITS, decltype(m)::value>)(
          out + r * w.n, xq + r * w.k, xd + r * w.k / 32, xs + r * w.k / 16, w);
    });
  }
}

template <int BITS>
void linear_float(float* out, const float* x, int64_t rows, const QuantArgs& w, cudaStream_t stream) {
  // Chunks of 8, then 4, 2 and 1 rows: each a pass over the weights.
  int64_t r = 0;
  auto pass = [&](auto m) {
    constexpr int M = decltype(m)::value;
    EMBER_LAUNCH(gemv_blocks(w), kGemvWarps * 32, stream, quant_gemv_kernel<float, BITS, M>)(
        out + r * w.n, x + r * w.k, w);
    r += M;
  };
  while (rows - r >= 8) pass(std::integral_constant<int, 8>{});
  if (rows - r >= 4) pass(std::integral_constant<int, 4>{});
  if (rows - r >= 2) pass(std::integral_constant<int, 2>{});
  if (rows - r >= 1) pass(std::integral_constant<int, 1>{});
}

}  // namespace

int64_t quant_linear_workspace(DType dtype, int64_t rows, int64_t k) {
  return dtype == DType::kFloat ? 0 : x8_offset(rows, k) + rows * k;
}

cudaError_t launch_quant_linear(DType dtype, void* out, const void* x, int64_t rows, const QuantArgs& w,
                                void* workspace, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  return with_type(dtype, [&](auto* tag) {
    using T = storage_t<decltype(tag)>;
    with_bits(w.bits, [&](auto bits) {
      constexpr int BITS = decltype(bits)::value;
      if constexpr (std::is_same_v<T, float>) {
        linear_float<BITS>(static_cast<float*>(out), static_cast<const float*>(x), rows, w, stream);
      } else {
        linear_16bit<T, BITS>(static_cast<T*>(out), static_cast<const T*>(x), rows, w, workspace, stream);
      }
    });
  });
}

cudaError_t launch_dequantize(DType dtype, void* out, const QuantArgs& w, cudaStream_t stream) {
  const int64_t spans = w.n * (w.k / 32);
  if (spans == 0) return cudaSuccess;
  return with_type(dtype, [&](auto* tag) {
    using T = storage_t<decltype(tag)>;
    with_bits(w.bits, [&](auto bits) {
      const unsigned grid = static_cast<unsigned>((spans + 255) / 256);
      EMBER_LAUNCH(grid, 256, stream, dequantize_kernel<T, decltype(bits)::value>)(static_cast<T*>(out), w);
    });
  });
}

}  // namespace ember::cuda
#endif
