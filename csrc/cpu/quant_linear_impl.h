// Weight-only quantized linear layers for one instruction set: out[M, N] = x[M, K] W^T (+ bias), W dequantized in
// registers as it streams by, never written out. Included once per ISA by quant_linear.cpp, inside a namespace and
// a `#pragma GCC target` region, like paged_attention_impl.h.
//
// Batch-1 decode on a CPU is bound by the bytes of weights it reads, so the kernel reads each quantized weight once
// per call whatever M is: a tile of NB output rows times MB input rows keeps MB x NB accumulators in registers, and
// each 16 dequantized weights (one integer load, a convert, one FMA for the affine map) feed MB FMAs. Accumulation
// is in float32; x and out are float32 or bfloat16.

#include "vec_impl.h"

typedef uint8_t vec_u8 __attribute__((vector_size(kLanes)));
typedef int8_t vec_i8 __attribute__((vector_size(kLanes)));
typedef int32_t vec_i32 __attribute__((vector_size(kLanes * sizeof(int32_t))));

// Output rows per tile for MB input rows: MB x NB accumulators plus, per output row, its group's scale and min
// (which GCC keeps broadcast in registers) must fit the 32 AVX-512 registers, or the 16 half-width AVX2 ones where
// a 16-float vector takes two; past that the accumulators spill to the stack.
template <int MB>
constexpr int tile_outputs() {
#if defined(EMBER_AVX512)
  return MB == 1 ? 8 : MB == 2 ? 4 : MB == 4 ? 3 : 2;
#else
  return MB == 1 ? 2 : 1;
#endif
}

// Groups whose affine maps are read at once.
constexpr int kGroupBlock = 16;

inline float half_to_float(uint16_t h) { return c10::detail::fp16_ieee_to_fp32_value(h); }

// s[i], m[i] for the groups g0 .. g0 + count - 1 of row n, as the scale tensors store them.
__attribute__((always_inline)) inline void stored_maps(const QuantView& w, int64_t n, int64_t g0, int count, float* s,
                                                       float* m) {
  const int64_t at = n * w.groups + g0;
  if (w.super_scales != nullptr) {
    const int64_t supers = w.groups >> w.super_shift;
    for (int i = 0; i < count; ++i) {
      const int64_t sup = n * supers + ((g0 + i) >> w.super_shift);
      s[i] = w.super_scales[sup] * static_cast<float>(w.scales8[at + i]);
      m[i] = w.mins8 != nullptr ? w.super_mins[sup] * static_cast<float>(w.mins8[at + i]) : 0.0f;
    }
    return;
  }
#if defined(EMBER_AVX512)
  if (count == kGroupBlock) {
    _mm512_storeu_ps(s, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w.scales16 + at))));
    if (w.mins16 != nullptr) {
      _mm512_storeu_ps(m, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w.mins16 + at))));
    } else {
      std::fill(m, m + count, 0.0f);
    }
    return;
  }
#endif
  for (int i = 0; i < count; ++i) {
    s[i] = half_to_float(w.scales16[at + i]);
    m[i] = w.mins16 != nullptr ? half_to_float(w.mins16[at + i]) : 0.0f;
  }
}

// s[i], m[i] for the groups g0 .. g0 + count - 1 of row n, a zero point z folded into the min as m - z s: exact,
// since s (q - z) is a float32 (formats.group_maps).
__attribute__((always_inline)) inline void group_maps(const QuantView& w, int64_t n, int64_t g0, int count, float* s,
                                                      float* m) {
  stored_maps(w, n, g0, count, s, m);
  if (w.zero_point != 0) {
    for (int i = 0; i < count; ++i) m[i] -= static_cast<float>(w.zero_point) * s[i];
  }
}

// 16 bytes as 16 floats, zero- or sign-extended. Written with intrinsics where there are some: GCC turns
// __builtin_convertvector of a byte vector into one scalar convert per lane.
#if defined(EMBER_AVX512) || defined(EMBER_AVX2)
// 16 bytes (signed or unsigned) widened to 16 floats.
inline vec widen_bytes(__m128i b, bool is_signed) {
#if defined(EMBER_AVX512)
  const __m512i i = is_signed ? _mm512_cvtepi8_epi32(b) : _mm512_cvtepu8_epi32(b);
  return reinterpret_cast<vec>(_mm512_cvtepi32_ps(i));
#else
  const __m128i hi = _mm_unpackhi_epi64(b, b);
  const __m256i i0 = is_signed ? _mm256_cvtepi8_epi32(b) : _mm256_cvtepu8_epi32(b);
  const __m256i i1 = is_signed ? _mm256_cvtepi8_epi32(hi) : _mm256_cvtepu8_epi32(hi);
  const __m256 f[2] = {_mm256_cvtepi32_ps(i0), _mm256_cvtepi32_ps(i1)};
  vec v;
  std::memcpy(&v, f, sizeof v);
  return v;
#endif
}
#endif

inline vec bytes_to_floats(const uint8_t* p, bool is_signed, int shift) {
#if defined(EMBER_AVX512) || defined(EMBER_AVX2)
  __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  if (shift) b = _mm_and_si128(_mm_srli_epi16(b, shift), _mm_set1_epi8(0x0F));
  else if (!is_signed) b = _mm_and_si128(b, _mm_set1_epi8(0x0F));
  return widen_bytes(b, is_signed);
#else
  vec v;
  for (int i = 0; i < kLanes; ++i) {
    v[i] = is_signed ? static_cast<float>(static_cast<int8_t>(p[i])) : static_cast<float>((p[i] >> shift) & 15);
  }
  return v;
#endif
}

// 16 6-bit values as floats: the nibbles at nib (>> nshift) with the 2 bits at top (>> tshift) above them.
inline vec six_bits_to_floats(const uint8_t* nib, int nshift, const uint8_t* top, int tshift) {
#if defined(EMBER_AVX512) || defined(EMBER_AVX2)
  const __m128i b = _mm_and_si128(_mm_srli_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(nib)), nshift),
                                  _mm_set1_epi8(0x0F));
  const __m128i t = _mm_and_si128(_mm_srli_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(top)), tshift),
                                  _mm_set1_epi8(0x03));
  return widen_bytes(_mm_or_si128(b, _mm_slli_epi16(t, 4)), false);
#else
  vec v;
  for (int i = 0; i < kLanes; ++i) {
    v[i] = static_cast<float>(((nib[i] >> nshift) & 15) | (((top[i] >> tshift) & 3) << 4));
  }
  return v;
#endif
}

// The integers of chunk c (16 values) of group g of the row at `row` (row_start), as floats. 4 bits: the group's
// 16 bytes hold chunk 0 in their low nibbles and chunk 1 in their high ones; 6 bits: the same, with the top bits
// from the second plane.
template <int BITS, int GS>
inline vec load_q(const QuantView& w, const uint8_t* row, int64_t g, int c) {
  if constexpr (BITS == 4) {
    return bytes_to_floats(row + (g / 4) * w.block_stride + (g % 4) * 16, false, c == 0 ? 0 : 4);
  } else if constexpr (BITS == 6) {
    // The 16 values are the low (half 0) or high nibbles of group g32 of 32; a group of 16 is one such half.
    const int64_t g32 = GS == 32 ? g : g / 2;
    const int half = GS == 32 ? c : static_cast<int>(g % 2);
    // Group g32 is nibble bytes 16 (g32 % 4) .. + 15 of its 64-byte block: its top bits are bytes 16 (g32 % 2) ..
    // + 15 of the block's 32, in field (g32 % 4 / 2) + 2 half.
    const uint8_t* nib = row + (g32 / 4) * w.block_stride + (g32 % 4) * 16;
    const uint8_t* top = row + w.top_offset + (g32 / 4) * w.top_stride + (g32 % 2) * 16;
    return six_bits_to_floats(nib, 4 * half, top, 2 * static_cast<int>(g32 % 4 / 2) + 4 * half);
  } else {
    const int64_t at = g * GS + c * kLanes;
    return bytes_to_floats(row + (at / 64) * w.block_stride + at % 64, true, 0);
  }
}

// out[0:MB, n0:n0+NB] for MB rows of x (ldx apart) into out (ldo apart).
template <int BITS, int GS, int MB, int NB, typename T>
void tile(const QuantView& w, const T* x, int64_t ldx, T* out, int64_t ldo, int64_t n0) {
  constexpr int kChunks = GS / kLanes;
  vec acc[MB][NB];
  for (int i = 0; i < MB; ++i)
    for (int j = 0; j < NB; ++j) acc[i][j] = vec{};
  float s[NB][kGroupBlock], m[NB][kGroupBlock];
  const uint8_t* rows[NB];
  for (int j = 0; j < NB; ++j) rows[j] = row_start(w, n0 + j);
  for (int64_t g0 = 0; g0 < w.groups; g0 += kGroupBlock) {
    const int count = w.groups - g0 < kGroupBlock ? static_cast<int>(w.groups - g0) : kGroupBlock;
    for (int j = 0; j < NB; ++j) group_maps(w, n0 + j, g0, count, s[j], m[j]);
    for (int gi = 0; gi < count; ++gi) {
      const int64_t g = g0 + gi;
#pragma GCC unroll 2
      for (int c = 0; c < kChunks; ++c) {
        const int64_t k0 = g * GS + c * kLanes;
        vec xv[MB];
#pragma GCC unroll 8
        for (int i = 0; i < MB; ++i) xv[i] = load_vec(x + i * ldx + k0);
#pragma GCC unroll 16
        for (int j = 0; j < NB; ++j) {
          const vec wv = load_q<BITS, GS>(w, rows[j], g, c) * s[j][gi] + m[j][gi];
#pragma GCC unroll 8
          for (int i = 0; i < MB; ++i) acc[i][j] += wv * xv[i];
        }
      }
    }
  }
  for (int i = 0; i < MB; ++i) {
    if constexpr (NB == kLanes) {
      // Sixteen outputs reduced together (hsum16), not one horizontal sum each.
      vec sums = hsum16(acc[i]);
      if (w.bias != nullptr) sums += load_vec(w.bias + n0);
      for (int j = 0; j < NB; ++j) store(out + i * ldo, n0 + j, sums[j]);
    } else {
      for (int j = 0; j < NB; ++j) {
        const float b = w.bias != nullptr ? w.bias[n0 + j] : 0.0f;
        store(out + i * ldo, n0 + j, hsum(acc[i][j]) + b);
      }
    }
  }
}

// Every row of x for output rows [n_begin, n_end): tiles of NB outputs (then single outputs for the rest), and
// for each, x in blocks of MB rows (8, then 4, 2, 1) while the tile's weights stay in L1.
template <int BITS, int GS, int MB, typename T>
void rows_block(const QuantView& w, const T* x, int64_t ldx, T* out, int64_t ldo, int64_t n_begin, int64_t n_end) {
  constexpr int NB = tile_outputs<MB>();
  int64_t n = n_begin;
  for (; n + NB <= n_end; n += NB) tile<BITS, GS, MB, NB, T>(w, x, ldx, out, ldo, n);
  for (; n < n_end; ++n) tile<BITS, GS, MB, 1, T>(w, x, ldx, out, ldo, n);
}

// Output rows [n_begin, n_end) for every row of x.
template <int BITS, int GS, typename T>
void linear_part(const QuantView& w, const T* x, T* out, int64_t rows, int64_t n_begin, int64_t n_end) {
  int64_t r = 0;
  for (; r + 8 <= rows; r += 8) rows_block<BITS, GS, 8, T>(w, x + r * w.k, w.k, out + r * w.n, w.n, n_begin, n_end);
  if (rows - r >= 4) {
    rows_block<BITS, GS, 4, T>(w, x + r * w.k, w.k, out + r * w.n, w.n, n_begin, n_end);
    r += 4;
  }
  if (rows - r >= 2) {
    rows_block<BITS, GS, 2, T>(w, x + r * w.k, w.k, out + r * w.n, w.n, n_begin, n_end);
    r += 2;
  }
  if (rows - r >= 1) rows_block<BITS, GS, 1, T>(w, x + r * w.k, w.k, out + r * w.n, w.n, n_begin, n_end);
}

template <int BITS, int GS, typename T>
void linear(const QuantView& w, const T* x, T* out, int64_t rows) {
  // Split N (never M) over threads: every thread reads its own weights once.
  at::parallel_for(0, w.n, 64, [&](int64_t begin, int64_t end) { linear_part<BITS, GS, T>(w, x, out, rows, begin, end); });
}

// W itself, [N, K] in T: for steps with many rows, where a dense matmul on the dequantized weights beats the
// streaming kernel above.
template <int BITS, int GS, typename T>
void dequantize(const QuantView& w, T* out) {
  constexpr int kChunks = GS / kLanes;
  at::parallel_for(0, w.n, 16, [&](int64_t begin, int64_t end) {
    float s[kGroupBlock], m[kGroupBlock];
    for (int64_t n = begin; n < end; ++n) {
      const uint8_t* row = row_start(w, n);
      for (int64_t g0 = 0; g0 < w.groups; g0 += kGroupBlock) {
        const int count = w.groups - g0 < kGroupBlock ? static_cast<int>(w.groups - g0) : kGroupBlock;
        group_maps(w, n, g0, count, s, m);
        for (int gi = 0; gi < count; ++gi) {
          for (int c = 0; c < kChunks; ++c) {
            const int64_t g = g0 + gi;
            store_vec(out + n * w.k + g * GS + c * kLanes, load_q<BITS, GS>(w, row, g, c) * s[gi] + m[gi]);
          }
        }
      }
    }
  });
}
