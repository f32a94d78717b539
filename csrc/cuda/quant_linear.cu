// ember::quant_linear and ember::dequantize on CUDA, for weights kept quantized as the GGUF file holds them
// (quant_args.h; the layout is csrc/cpu/quant_view.h's, the math runtimes/text/quant/formats.py's).
//
// quant_linear is the decode GEMV: a few rows of x (a decode batch, a speculative verification) against every
// weight once, so its time is the weights' bytes over the memory bandwidth. A warp takes one output row and its
// lanes 32-value spans of it side by side: each lane loads its span's 16 bytes of nibbles (4 bits; 6 bits also the
// span's 16 bytes of top bits; 8 bits 32 bytes) with one vector load, the warp 512 contiguous bytes at a time, and
// sums, per row of x, s * sum(q x) + m * sum(x) over the span's group(s), the affine map applied once per group
// rather than per weight. Integers become floats through the bits of 2^23 (an OR and a subtraction), not the
// conversion instruction, which issues at a quarter of the float rate and would bound the kernel. Rows of x come
// in compile-time counts of 1 to 8 (the launcher cuts larger batches in such chunks; prefill-sized ones take
// dequantize + cuBLAS instead, runtimes/text/quant/layers.py).
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

// The 32 stored integers of span `span` of a row (values 32 span .. 32 span + 31) as floats: 0-15, 0-63, or signed
// bytes for 8 bits.
template <int BITS>
__device__ __forceinline__ void span_values(const unsigned char* row, long long k, long long span, float (&v)[32]) {
  if constexpr (BITS == 8) {
    const uint4* p = reinterpret_cast<const uint4*>(row + span * 32);
    const uint4 a = p[0], b = p[1];
    const unsigned words[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
#pragma unroll
    for (int i = 0; i < 32; ++i) {
      // The sign bit flipped gives value + 128, 0-255.
      v[i] = small_to_float(byte_of(words[i / 4], i % 4) ^ 0x80u) - 128.0f;
    }
  } else {
    const uint4 nibbles = *reinterpret_cast<const uint4*>(row + span * 16);
    const unsigned words[4] = {nibbles.x, nibbles.y, nibbles.z, nibbles.w};
    unsigned tops[4] = {0, 0, 0, 0};
    int shift = 0;
    if constexpr (BITS == 6) {
      // The span's 16 nibble bytes are bytes p0 .. p0 + 15 of its 128-value block, whose top bits are bytes
      // p0 % 32 .. of the block's 32: fields 0 and 2 (low and high nibble) below 32, fields 1 and 3 above.
      const int p0 = 16 * static_cast<int>(span % 4);
      const uint4 t = *reinterpret_cast<const uint4*>(row + k / 2 + (span / 4) * 32 + (p0 & 31));
      tops[0] = t.x;
      tops[1] = t.y;
      tops[2] = t.z;
      tops[3] = t.w;
      shift = p0 >= 32 ? 2 : 0;
    }
#pragma unroll
    for (int j = 0; j < 16; ++j) {
      const unsigned b = byte_of(words[j / 4], j % 4);
      unsigned lo = b & 15u, hi = b >> 4;
      if constexpr (BITS == 6) {
        const unsigned top = byte_of(tops[j / 4], j % 4);
        lo |= ((top >> shift) & 3u) << 4;
        hi |= ((top >> (shift + 4)) & 3u) << 4;
      }
      v[j] = small_to_float(lo);
      v[j + 16] = small_to_float(hi);
    }
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

// out[r, n] = x[r] . W[n] + bias[n] for the M rows of x: warp `warp` of the block takes output row n.
template <typename T, int BITS, int M>
__global__ void __launch_bounds__(kGemvWarps * 32)
    quant_gemv_kernel(T* __restrict__ out, const T* __restrict__ x, const QuantArgs w) {
  const int lane = threadIdx.x & 31;
  const long long n = static_cast<long long>(blockIdx.x) * kGemvWarps + (threadIdx.x >> 5);
  if (n >= w.n) return;
  const unsigned char* row = w.q + n * w.row_bytes;
  float acc[M];
#pragma unroll
  for (int r = 0; r < M; ++r) acc[r] = 0.0f;
  const long long spans = w.k / 32;
  for (long long span = lane; span < spans; span += 32) {
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
  }
  const float b = w.bias != nullptr ? w.bias[n] : 0.0f;
#pragma unroll
  for (int r = 0; r < M; ++r) {
    const float total = warp_sum(acc[r]);
    if (lane == 0) out[r * w.n + n] = from_float<T>(total + b);
  }
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
#define EMBER_GEMV(T, BITS, M) \
  template __global__ void ember::cuda::quant_gemv_kernel<T, BITS, M>(T*, const T*, const ember::cuda::QuantArgs);
#define EMBER_GEMV_ROWS(T, BITS)                                                                            \
  EMBER_GEMV(T, BITS, 1)                                                                                  \
  EMBER_GEMV(T, BITS, 2) EMBER_GEMV(T, BITS, 3) EMBER_GEMV(T, BITS, 4) EMBER_GEMV(T, BITS, 5)            \
      EMBER_GEMV(T, BITS, 6) EMBER_GEMV(T, BITS, 7) EMBER_GEMV(T, BITS, 8)                                \
          template __global__ void ember::cuda::dequantize_kernel<T, BITS>(T*, const ember::cuda::QuantArgs);
#define EMBER_INSTANTIATE(T) EMBER_GEMV_ROWS(T, 4) EMBER_GEMV_ROWS(T, 6) EMBER_GEMV_ROWS(T, 8)
EMBER_FOR_STORAGE_TYPES(EMBER_INSTANTIATE)
#undef EMBER_INSTANTIATE
#undef EMBER_GEMV_ROWS
#undef EMBER_GEMV
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

template <typename T, int BITS, int M>
void gemv(T* out, const T* x, const QuantArgs& w, cudaStream_t stream) {
  const unsigned blocks = static_cast<unsigned>((w.n + kGemvWarps - 1) / kGemvWarps);
  EMBER_LAUNCH(blocks, kGemvWarps * 32, stream, quant_gemv_kernel<T, BITS, M>)(out, x, w);
}

template <typename T, int BITS>
void gemv_rows(T* out, const T* x, const QuantArgs& w, int rows, cudaStream_t stream) {
  switch (rows) {
    case 1: return gemv<T, BITS, 1>(out, x, w, stream);
    case 2: return gemv<T, BITS, 2>(out, x, w, stream);
    case 3: return gemv<T, BITS, 3>(out, x, w, stream);
    case 4: return gemv<T, BITS, 4>(out, x, w, stream);
    case 5: return gemv<T, BITS, 5>(out, x, w, stream);
    case 6: return gemv<T, BITS, 6>(out, x, w, stream);
    case 7: return gemv<T, BITS, 7>(out, x, w, stream);
    default: return gemv<T, BITS, 8>(out, x, w, stream);
  }
}

}  // namespace

cudaError_t launch_quant_linear(DType dtype, void* out, const void* x, int64_t rows, const QuantArgs& w,
                                cudaStream_t stream) {
  return with_type(dtype, [&](auto* tag) {
    using T = storage_t<decltype(tag)>;
    with_bits(w.bits, [&](auto bits) {
      for (int64_t r = 0; r < rows; r += kMaxRows) {
        const int chunk = static_cast<int>(rows - r < kMaxRows ? rows - r : kMaxRows);
        gemv_rows<T, decltype(bits)::value>(static_cast<T*>(out) + r * w.n, static_cast<const T*>(x) + r * w.k, w,
                                            chunk, stream);
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
