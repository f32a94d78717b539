// The quantized linear on integer dot products (AVX512-VNNI's vpdpbusd: 64 byte products summed into 16 int32
// lanes per instruction), for calls with few rows of x. Included once by quant_linear.cpp in a region compiled for
// AVX512-VNNI; the float kernel of quant_linear_impl.h runs where the CPU lacks it and for many rows.
//
// Why: at batch 1 the float kernel spends ~6 vector instructions on every 16 weights (widen, convert, the affine
// map, the multiply-add), which is slower than the memory delivers them. Here 64 weight bytes take one load and
// the integer dot products take them as they are, so the kernel keeps up with memory.
//
// x is quantized per call to 16 bits per group of 32 values (d = max|x| / 32639, q = round(x / d)), split into a
// high and a low signed byte (q = 256 hi + lo): the products are exact integers, so the only rounding is x's to 16
// bits (relative 1.5e-5 of the group's largest value), far below bfloat16's. Per weight group g, with s/m its
// affine map and e_i the integers the weights store:
//     sum_i w_i x_i = s d sum_i e_i q_i + m sum_i x_i
// 8-bit weights are signed and vpdpbusd takes one unsigned operand, so they enter as e_i + 128 (a flipped sign
// bit), and 128 d sum_i q_i comes off per group. 6-bit weights enter as stored, 0-63, and a zero point z (Q6_K's
// 32) comes off the same way, z d sum_i q_i: exact integers until the final float products, unlike folding -z s
// into the min, whose m sum_i x_i is in unrounded x while the dot products are in rounded x.

#include <type_traits>
#include <utility>
#include <vector>

// PreparedX (quant_input.h): x as this kernel reads it.

// Where value v of a row of x goes in its planes: 4-bit weights pair byte b of a group's 16 with values b (low
// nibble) and b + 16 (high), and a 64-byte block holds 4 groups; so the plane holds, per block, the low-nibble
// partners of the 4 groups, then their high-nibble partners. 6-bit weights: the same (their nibbles are laid out
// as 4-bit ones). 8-bit weights: values in order.
inline int64_t plane_position(int bits, int64_t v) {
  if (bits == 8) return v;
  const int64_t block = v / 128, group = (v % 128) / 32, j = v % 32;
  return block * 128 + (j < 16 ? 0 : 64) + group * 16 + (j % 16);
}

// The x group (of 32 values) that int32 lane l of block B sums.
inline int64_t lane_x_group(int bits, int group_size, int64_t block, int lane) {
  if (bits != 8) return block * 4 + lane / 4;
  if (group_size == 32) return block * 2 + lane / 8;
  return (block * 4 + lane / 4) / 2;
}

inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }

inline __m512 load16(const uint16_t* p) {  // bfloat16: the top half of a float32
  const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
}

template <typename T>
void prepare_x(const QuantView& w, const T* x, int64_t rows, PreparedX& p) {
  const int64_t k = w.k;
  const int64_t block_bytes = w.bits == 8 ? k : k / 2;  // 6 bits: the nibbles (the top bits ride along)
  p.rows = rows;
  p.blocks = (block_bytes + 63) / 64;
  p.plane = p.blocks * (w.bits == 8 ? 64 : 128);
  p.groups_pad = (w.groups + 15) / 16 * 16;
  p.hi.assign(rows * p.plane, 0);
  p.lo.assign(rows * p.plane, 0);
  p.lane_d.assign(rows * p.blocks * 16, 0.0f);
  p.sums.assign(rows * p.groups_pad, 0.0f);
  p.offset.assign(rows * p.groups_pad, 0.0f);
  const int64_t xgroups = k / 32;
  std::vector<float> d(xgroups);
  // The integer the weights are offset by: 128 for 8-bit (the flipped sign bit), else the zero point.
  const float z = w.bits == 8 ? 128.0f : static_cast<float>(w.zero_point);
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = x + r * k;
    int8_t* hi = p.hi.data() + r * p.plane;
    int8_t* lo = p.lo.data() + r * p.plane;
    float* sums = p.sums.data() + r * p.groups_pad;
    float* offset = p.offset.data() + r * p.groups_pad;
    // One x group of 32 values at a time, as two vectors of 16: at batch 1 this runs once per matrix, over a few
    // hundred to a few thousand values, and a scalar loop here cost a tenth of the step.
    for (int64_t xg = 0; xg < xgroups; ++xg) {
      const __m512 v0 = load16(xr + xg * 32), v1 = load16(xr + xg * 32 + 16);
      const __m512 abs_max = _mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1));
      const float amax = _mm512_reduce_max_ps(abs_max);
      d[xg] = amax / 32639.0f;
      const __m512 inv = _mm512_set1_ps(amax > 0.0f ? 32639.0f / amax : 0.0f);
      // Rounded to nearest even, as std::nearbyint in the default rounding mode.
      const __m512i q0 = _mm512_cvtps_epi32(_mm512_mul_ps(v0, inv)), q1 = _mm512_cvtps_epi32(_mm512_mul_ps(v1, inv));
      // |q| <= 32639: h = (q + 128) >> 8 and q - 256 h both fit a signed byte.
      const __m512i bias = _mm512_set1_epi32(128);
      const __m512i h0 = _mm512_srai_epi32(_mm512_add_epi32(q0, bias), 8);
      const __m512i h1 = _mm512_srai_epi32(_mm512_add_epi32(q1, bias), 8);
      const __m512i l0 = _mm512_sub_epi32(q0, _mm512_slli_epi32(h0, 8));
      const __m512i l1 = _mm512_sub_epi32(q1, _mm512_slli_epi32(h1, 8));
      // Each half of the group lands on 16 consecutive bytes of the planes (plane_position).
      const int64_t at0 = plane_position(w.bits, xg * 32), at1 = plane_position(w.bits, xg * 32 + 16);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(hi + at0), _mm512_cvtepi32_epi8(h0));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(hi + at1), _mm512_cvtepi32_epi8(h1));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(lo + at0), _mm512_cvtepi32_epi8(l0));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(lo + at1), _mm512_cvtepi32_epi8(l1));
      const float s0 = _mm512_reduce_add_ps(v0), s1 = _mm512_reduce_add_ps(v1);
      const float o0 = z * d[xg] * static_cast<float>(_mm512_reduce_add_epi32(q0));
      const float o1 = z * d[xg] * static_cast<float>(_mm512_reduce_add_epi32(q1));
      if (w.group_size == 32) {
        sums[xg] += s0 + s1;
        offset[xg] += o0 + o1;
      } else {  // groups of 16: each half is a group
        sums[2 * xg] += s0;
        sums[2 * xg + 1] += s1;
        offset[2 * xg] += o0;
        offset[2 * xg + 1] += o1;
      }
    }
    float* lane_d = p.lane_d.data() + r * p.blocks * 16;
    for (int64_t b = 0; b < p.blocks; ++b) {
      for (int l = 0; l < 16; ++l) {
        const int64_t xg = lane_x_group(w.bits, w.group_size, b, l);
        lane_d[b * 16 + l] = xg < xgroups ? d[xg] : 0.0f;
      }
    }
  }
}

// The scales and mins of groups g0 .. g0 + count - 1 (count <= 16) of row n into s[0:16], m[0:16], zero past
// count: group_maps with vector loads and conversions, since with short rows (K = 576: 18 groups) this runs about
// once per 600 weights and its scalar float16 conversions cost as much as the dot products.
inline void maps16(const QuantView& w, int64_t n, int64_t g0, int count, float* s, float* m) {
  const __mmask16 mask = count >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << count) - 1);
  const int64_t at = n * w.groups + g0;
  if (w.super_scales == nullptr) {
    _mm512_store_ps(s, _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, w.scales16 + at)));
    _mm512_store_ps(m, w.mins16 == nullptr ? _mm512_setzero_ps()
                                          : _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, w.mins16 + at)));
    return;
  }
  // Super-blocks span 2^super_shift >= 2 groups: these 16 groups lie in at most 9 consecutive ones.
  const int64_t supers = w.groups >> w.super_shift;
  const int64_t first = g0 >> w.super_shift;
  const int64_t last = (g0 + count - 1) >> w.super_shift;
  const __mmask16 smask = static_cast<__mmask16>((1u << (last - first + 1)) - 1);
  const __m512i lane = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
  const __m512i idx = _mm512_sub_epi32(
      _mm512_srl_epi32(_mm512_add_epi32(lane, _mm512_set1_epi32(static_cast<int>(g0))),
                       _mm_cvtsi32_si128(w.super_shift)),
      _mm512_set1_epi32(static_cast<int>(first)));
  const __m512 super_s = _mm512_permutexvar_ps(idx, _mm512_maskz_loadu_ps(smask, w.super_scales + n * supers + first));
  const __m512 sub_s = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(mask, w.scales8 + at)));
  _mm512_store_ps(s, _mm512_maskz_mul_ps(mask, super_s, sub_s));
  if (w.mins8 == nullptr) {
    _mm512_store_ps(m, _mm512_setzero_ps());
    return;
  }
  const __m512 super_m = _mm512_permutexvar_ps(idx, _mm512_maskz_loadu_ps(smask, w.super_mins + n * supers + first));
  const __m512 sub_m = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(mask, w.mins8 + at)));
  _mm512_store_ps(m, _mm512_maskz_mul_ps(mask, super_m, sub_m));
}

// Tiles ahead whose weights a tile asks for: with short rows (K = 576: 288 bytes of 4-bit values) a tile's
// weights are a few cache lines per row and the hardware prefetcher, which learns a stream within a page, starts
// late on each; asking ahead keeps memory busy while the dot products run.
constexpr int kPrefetchTiles = 12;

// Row-major rows n .. n + count - 1 and, in either layout, their scales and mins. Tiled weights are one sequential
// stream the hardware prefetcher follows: asking for them too cost time (Qwen2.5-Coder-1.5B's matrices, 1 row of
// x, interleaved in process: 3-35% slower with than without, lm_head 9.3 against 14.5 ms; SmolLM2's tiled lm_head
// 0.67 against 0.94 ms), where the row-major short rows above still gain from it (SmolLM2's gate/up 56 against 64
// us).
inline void prefetch_rows(const QuantView& w, int64_t n, int64_t count) {
  if (n + count > w.n) return;
  const int64_t row_bytes = w.row_bytes;
  const char* q = reinterpret_cast<const char*>(w.q) + n * row_bytes;
  if (!w.tiled) {
    for (int64_t b = 0; b < count * row_bytes; b += 64) _mm_prefetch(q + b, _MM_HINT_T0);
  }
  const int64_t scale_bytes = w.groups * (w.scales16 != nullptr ? 2 : 1);
  const char* tables[] = {reinterpret_cast<const char*>(w.scales16 != nullptr ? static_cast<const void*>(w.scales16)
                                                                              : static_cast<const void*>(w.scales8)),
                          reinterpret_cast<const char*>(w.mins16 != nullptr ? static_cast<const void*>(w.mins16)
                                                                            : static_cast<const void*>(w.mins8))};
  for (const char* t : tables) {
    if (t == nullptr) continue;
    for (int64_t b = 0; b < count * scale_bytes; b += 64) _mm_prefetch(t + n * scale_bytes + b, _MM_HINT_T0);
  }
}

// The 6-bit weights of a 64-byte nibble block `raw` and its 32 bytes of top bits as the 4-bit path's two vectors
// (low nibbles, high nibbles), each byte now 0-63. Byte c of the top bits holds the top bits of lo[c], lo[c + 32],
// hi[c], hi[c + 32] (quant_view.h): broadcast to both 256-bit halves, the upper half shifted right by 2 puts each
// lo byte's bits at 0-1 and each hi byte's at 4-5. The 16-bit shifts carry bits across bytes only into the bits
// the masks drop.
inline void expand6(__m512i raw, const uint8_t* top_bytes, __m512i& wl, __m512i& wh) {
  const __m512i low4 = _mm512_set1_epi8(0x0F);
  const __m512i bits45 = _mm512_set1_epi8(0x30);
  const __m512i upper_by_2 = _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi16(2), 1);
  const __m512i top = _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(top_bytes)));
  const __m512i t = _mm512_srlv_epi16(top, upper_by_2);
  wl = _mm512_or_si512(_mm512_and_si512(raw, low4), _mm512_and_si512(_mm512_slli_epi16(t, 4), bits45));
  wh = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(raw, 4), low4), _mm512_and_si512(t, bits45));
}

// A 64-byte block of weights `raw` as vpdpbusd's unsigned operands: 4 bits, its low nibbles (wl) and high ones
// (wh); 6 bits, those with their top bits from top_bytes (expand6); 8 bits, the signed values with the sign bit
// flipped (e + 128), wl and wh alike.
template <int BITS>
__attribute__((always_inline)) inline void unsigned_weights(__m512i raw, const uint8_t* top_bytes, __m512i& wl,
                                                            __m512i& wh) {
  if constexpr (BITS == 4) {
    const __m512i low4 = _mm512_set1_epi8(0x0F);
    wl = _mm512_and_si512(raw, low4);
    wh = _mm512_and_si512(_mm512_srli_epi16(raw, 4), low4);
  } else if constexpr (BITS == 6) {
    expand6(raw, top_bytes, wl, wh);
  } else {
    wl = _mm512_xor_si512(raw, _mm512_set1_epi8(static_cast<char>(0x80)));
    wh = wl;
  }
}

// f(std::integral_constant<int, 0>{}) ... f(std::integral_constant<int, N - 1>{}): indices known at compile time,
// so that an array of accumulators indexed by them stays in registers (indexed by a loop variable, GCC kept it in
// memory too and stored every accumulator back on each block: a 64-byte store per row, output and block).
template <typename F, int... I>
__attribute__((always_inline)) inline void static_for_impl(F&& f, std::integer_sequence<int, I...>) {
  (f(std::integral_constant<int, I>{}), ...);
}

template <int N, typename F>
__attribute__((always_inline)) inline void static_for(F&& f) {
  static_for_impl(f, std::make_integer_sequence<int, N>{});
}

// Block bi of the 16 groups from g0, for a kernel whose int32 or float32 lane l sums bytes 4l .. 4l + 3 of a 64-byte
// block: the block's index in the row, the mask of its bytes inside the row (`nibble_bytes` of them), and where
// each lane's group scale sits among the 16 groups' (idx; idx_odd for split 6-bit groups of 16, whose lane l holds
// group 2 (l / 4) of the block's 8 in its low-nibble products and the next in its high-nibble ones).
struct BlockLanes {
  int64_t block;
  __mmask64 mask;
  __m512i idx, idx_odd;
};

template <bool kSplit, int kGroupsPerBlock>
__attribute__((always_inline)) inline BlockLanes block_lanes(int64_t g0, int bi, int64_t nibble_bytes) {
  const __m512i lane = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
  constexpr int kLaneShift = kGroupsPerBlock == 2 ? 3 : 2;  // lane >> kLaneShift: the lane's group in the block
  const int64_t block = g0 / kGroupsPerBlock + bi;
  const int64_t valid = nibble_bytes - block * 64;
  const __mmask64 mask = valid >= 64 ? ~0ULL : (1ULL << valid) - 1;
  const __m512i idx = _mm512_add_epi32(_mm512_set1_epi32(bi * kGroupsPerBlock),
                                       kSplit ? _mm512_slli_epi32(_mm512_srli_epi32(lane, 2), 1)
                                              : _mm512_srli_epi32(lane, kLaneShift));
  return {block, mask, idx, _mm512_add_epi32(idx, _mm512_set1_epi32(1))};
}

// out[m0 : m0 + MB, n0 : n0 + NB].
template <int BITS, int GS, int MB, int NB, typename T>
void vnni_tile(const QuantView& w, const PreparedX& p, T* out, int64_t m0, int64_t n0) {
  const int64_t nibble_bytes = BITS == 8 ? w.k : w.k / 2;  // 6 bits: the top bits follow, a quarter as many
  // 6-bit groups of 16 split a block's 4 groups of 32 in halves: the low nibbles' lanes sum the even groups and
  // the high nibbles' the odd ones, so the two dot products take different scales.
  constexpr bool kSplit = BITS == 6 && GS == 16;
  // Groups per 64-byte block (block_lanes spreads 16 groups' scales over a block's lanes).
  constexpr int kGroupsPerBlock = kSplit ? 8 : BITS != 8 || GS == 16 ? 4 : 2;
  __m512 acc[MB][NB];
  static_for<MB>([&](auto i) { static_for<NB>([&](auto j) { acc[i][j] = _mm512_setzero_ps(); }); });
  alignas(64) float s[NB][16], m[NB][16];
  const bool has_mins = w.mins16 != nullptr || w.mins8 != nullptr;
  const bool has_offset = BITS == 8 || w.zero_point != 0;
  const uint8_t* rows[NB];
  for (int j = 0; j < NB; ++j) rows[j] = row_start(w, n0 + j);
  prefetch_rows(w, n0 + kPrefetchTiles * NB, NB);
  for (int64_t g0 = 0; g0 < w.groups; g0 += 16) {
    const int count = w.groups - g0 < 16 ? static_cast<int>(w.groups - g0) : 16;
    for (int j = 0; j < NB; ++j) maps16(w, n0 + j, g0, count, s[j], m[j]);
    // The per-group terms: + m sum(x), and for 8-bit weights or a zero point z, - s z d sum(q) (prepare_x).
    static_for<MB>([&](auto i) {
      const float* sums = p.sums.data() + (m0 + i) * p.groups_pad + g0;
      const float* offset = p.offset.data() + (m0 + i) * p.groups_pad + g0;
      static_for<NB>([&](auto j) {
        if (has_mins) acc[i][j] = _mm512_fmadd_ps(_mm512_load_ps(m[j]), _mm512_loadu_ps(sums), acc[i][j]);
        if (has_offset) acc[i][j] = _mm512_fnmadd_ps(_mm512_load_ps(s[j]), _mm512_loadu_ps(offset), acc[i][j]);
      });
    });
    const int blocks = (count + kGroupsPerBlock - 1) / kGroupsPerBlock;
    for (int bi = 0; bi < blocks; ++bi) {
      const auto [block, mask, idx, idx_odd] = block_lanes<kSplit, kGroupsPerBlock>(g0, bi, nibble_bytes);
      static_for<NB>([&](auto j) {
        const __m512i raw = _mm512_maskz_loadu_epi8(mask, rows[j] + block * w.block_stride);
        __m512i wl, wh;  // 6 bits: K % 128 == 0, whole blocks
        unsigned_weights<BITS>(raw, rows[j] + w.top_offset + block * w.top_stride, wl, wh);
        const __m512 sv = _mm512_permutexvar_ps(idx, _mm512_load_ps(s[j]));
        const __m512 sv_odd = kSplit ? _mm512_permutexvar_ps(idx_odd, _mm512_load_ps(s[j])) : sv;
        static_for<MB>([&](auto i) {
          const int8_t* xh = p.hi.data() + (m0 + i) * p.plane + block * (BITS == 8 ? 64 : 128);
          const int8_t* xl = p.lo.data() + (m0 + i) * p.plane + block * (BITS == 8 ? 64 : 128);
          const __m512 xd = _mm512_loadu_ps(p.lane_d.data() + ((m0 + i) * p.blocks + block) * 16);
          if constexpr (kSplit) {
            __m512i ve = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wl, _mm512_loadu_si512(xh));
            __m512i vo = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wh, _mm512_loadu_si512(xh + 64));
            ve = _mm512_dpbusd_epi32(_mm512_slli_epi32(ve, 8), wl, _mm512_loadu_si512(xl));
            vo = _mm512_dpbusd_epi32(_mm512_slli_epi32(vo, 8), wh, _mm512_loadu_si512(xl + 64));
            acc[i][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(ve), _mm512_mul_ps(sv, xd), acc[i][j]);
            acc[i][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(vo), _mm512_mul_ps(sv_odd, xd), acc[i][j]);
            return;
          }
          __m512i v;
          if constexpr (BITS != 8) {
            __m512i dh = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wl, _mm512_loadu_si512(xh));
            dh = _mm512_dpbusd_epi32(dh, wh, _mm512_loadu_si512(xh + 64));
            v = _mm512_dpbusd_epi32(_mm512_slli_epi32(dh, 8), wl, _mm512_loadu_si512(xl));
            v = _mm512_dpbusd_epi32(v, wh, _mm512_loadu_si512(xl + 64));
          } else {
            const __m512i dh = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wl, _mm512_loadu_si512(xh));
            v = _mm512_dpbusd_epi32(_mm512_slli_epi32(dh, 8), wl, _mm512_loadu_si512(xl));
          }
          acc[i][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(v), _mm512_mul_ps(sv, xd), acc[i][j]);
        });
      });
    }
  }
  static_for<MB>([&](auto i) {
    static_for<NB>([&](auto j) {
      const float b = w.bias != nullptr ? w.bias[n0 + j] : 0.0f;
      store(out + (m0 + i) * w.n, n0 + j, _mm512_reduce_add_ps(acc[i][j]) + b);
    });
  });
}

// The tiles that cover output rows [n_begin, n_end) for every row of x, as tile(MB, NB, r, n) calls for rows
// [r, r + MB) and outputs [n, n + NB), MB and NB as std::integral_constant: runs of 8 outputs (a whole tile of the
// tiled layout), single outputs for the rest; within 8 outputs, 4 rows at a time against pairs of them (4 x 8
// accumulators would take every register), then 2 rows and 1 against all 8. The 8 outputs' weights (6 KB for
// K = 1536 at 4 bits) stay in L1 from the first rows of x to the last, so W streams from memory once per call
// whatever M is. With 2 rows of x, 8 outputs a tile beat 4 (Qwen2.5-Coder-1.5B's gate/up, 2 threads: 763 us
// against 1134). From 3 rows on the integer kernel is bound by its dot products, not by memory (gate/up: 1.4, 1.6,
// 2.6, 5.0 ms for 3, 4, 8, 16 rows), so reading W once per call rather than once per 4 rows changed little on 2
// cores; where more cores share the memory it should matter more (not measured). The bfloat16-dot kernel
// measured no faster with 2 rows x 4 outputs, 3 x 4 or 2 x 8 (Zen 4, 2 cores, 4 and 16 rows).
template <typename Tile>
void tile_schedule(int64_t rows, int64_t n_begin, int64_t n_end, Tile&& tile) {
  using std::integral_constant;
  auto outputs = [&](auto nb, int64_t n0) {
    constexpr int NB = decltype(nb)::value;
    int64_t r = 0;
    for (; r + 4 <= rows; r += 4) {
      if constexpr (NB % 2 == 0) {
        for (int j = 0; j < NB; j += 2) tile(integral_constant<int, 4>{}, integral_constant<int, 2>{}, r, n0 + j);
      } else {
        tile(integral_constant<int, 4>{}, nb, r, n0);
      }
    }
    if (rows - r >= 2) {
      tile(integral_constant<int, 2>{}, nb, r, n0);
      r += 2;
    }
    if (rows - r >= 1) tile(integral_constant<int, 1>{}, nb, r, n0);
  };
  int64_t n = n_begin;
  for (; n + 8 <= n_end; n += 8) outputs(integral_constant<int, 8>{}, n);
  for (; n < n_end; ++n) outputs(integral_constant<int, 1>{}, n);
}

// Output rows [n_begin, n_end) for every row of x, prepared (prepare_x).
template <int BITS, int GS, typename T>
void vnni_part(const QuantView& w, const PreparedX& p, T* out, int64_t rows, int64_t n_begin, int64_t n_end) {
  tile_schedule(rows, n_begin, n_end, [&](auto mb, auto nb, int64_t r, int64_t n) {
    vnni_tile<BITS, GS, decltype(mb)::value, decltype(nb)::value, T>(w, p, out, r, n);
  });
}
