// The quantized linear on 8-bit x: x rounded to signed bytes per group of 32 values, multiplied with 4-, 6- and
// 8-bit weights by AVX512-VNNI's vpdpbusd (64 byte products summed into 16 int32 lanes per instruction). Included
// by quant_linear.cpp in the VNNI region, after quant_linear_vnni_impl.h, whose helpers it shares.
//
// Why: with few rows of x (a decode batch, a speculative verification of k + 1 tokens) the bfloat16-dot kernel is
// bound by its arithmetic, not by memory: every 128 weights cost each row 4 vdpbf16ps (32 products each) and an
// FMA, ~17 products a cycle a core measured against 25.6 at best. Two vpdpbusd take the same 128 products from
// 8-bit x; and where the integer kernel converts its lanes to float once per 64-byte block (a lane there sums 8
// weights of one group, and the next block's lane another group with another scale), here 4 consecutive blocks
// are transposed in registers so that each lane holds one group across all 4: the 16 lanes' int32 sums then cover
// 16 whole groups, and one conversion, one multiply and one FMA serve 512 weights of a row instead of 128. Per
// row: 8 vpdpbusd and 2 float multiplies per 512 weights, against 16 vdpbf16ps and 4 FMAs. The transposition
// (8 unpacks, 16 for 6 bits) is paid per output row and shared by every row of x in the tile. Measured on
// Qwen2.5-Coder-1.5B (benchmarks/quant_kernel.py --kernels int8,bf16, 2 threads): a decode step's matmuls 1.16x
// at 1 row (memory-bound), 1.41x at 2, 1.68x at 3, 1.36-1.40x at 4-8, 1.30x at 16.
//
// The numbers: x group g (32 values) is d_g q with d_g = max|x| / 127 and q = round(x / d_g), as llama.cpp rounds x
// for its quantized dot products (Q8_0; here per group of 32 for K-quants too, rather than Q8_K's 256). The kernel
// then computes, exactly up to float32 sums, the product of the file's weights with that rounded x: per weight
// group with affine map w = s (e - z) + m (e the stored integer, z the zero point: Q6_K's 32, else 0),
//     sum_i w_i x_i = s d sum_i e_i q_i + (m - z s) d sum_i q_i
// the second sum prepared once per call (sums). Weights enter vpdpbusd as its unsigned operand (0-15, 0-63; 8-bit
// ones, signed, as e + 128 with z = 128: their sign bit flipped), x as its signed one. With 8-bit weights (Q8_0)
// this is llama.cpp's Q8_0 x Q8_0 product; a span is then 4 blocks of 64 values, 8 groups, 2 lanes each.

// Lambdas in the tile's loops inlined: GCC left the per-output one out of line, its accumulators in memory.
#ifndef EMBER_INLINE
#define EMBER_INLINE __attribute__((always_inline))
#endif

// The lane of a span's int32 vectors that sums group g of the span's 16 (after transpose4: group g = 4 k + c of
// block k, local group c, lands in lane 4 c + k).
inline int span_lane(int g) { return 4 * (g % 4) + g / 4; }

// Where value v (0-31) of the span's group g lands in a row's span of 512 x bytes: vector v % 16 / 4 of 4 (128
// bytes each: 64 low-nibble partners, then 64 high-nibble ones), at the group's lane, byte v % 4 of it.
inline int64_t span_offset(int g, int v) {
  return (v % 16) / 4 * 128 + (v < 16 ? 0 : 64) + 4 * span_lane(g) + v % 4;
}

// The 4 blocks r[0..3] (64 bytes each: 4 groups of 16 bytes, lane 4 c + b holding bytes 4 b .. 4 b + 3 of group c)
// as 4 vectors t[b]: lane 4 c + k of t[b] is lane 4 c + b of r[k]. A 4 x 4 transpose of 32-bit lanes in each
// 128-bit quarter.
__attribute__((always_inline)) inline void transpose4(const __m512i* r, __m512i* t) {
  const __m512i a0 = _mm512_unpacklo_epi32(r[0], r[1]), a1 = _mm512_unpackhi_epi32(r[0], r[1]);
  const __m512i a2 = _mm512_unpacklo_epi32(r[2], r[3]), a3 = _mm512_unpackhi_epi32(r[2], r[3]);
  t[0] = _mm512_unpacklo_epi64(a0, a2);
  t[1] = _mm512_unpackhi_epi64(a0, a2);
  t[2] = _mm512_unpacklo_epi64(a1, a3);
  t[3] = _mm512_unpackhi_epi64(a1, a3);
}

// One group of 32 values of x rounded to signed bytes: d = max|x| / 127, q = x / d rounded to nearest even (the
// default rounding mode; |q| <= 127), as llama.cpp's Q8_0; b0, b1 its halves' bytes, s0, s1 their d sum q.
struct RoundedGroup {
  float d, s0, s1;
  __m128i b0, b1;
};

template <typename T>
__attribute__((always_inline)) inline RoundedGroup round_group(const T* x) {
  const __m512 v0 = load16(x), v1 = load16(x + 16);
  const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
  const float d = amax / 127.0f;
  const __m512 inv = _mm512_set1_ps(amax > 0.0f ? 127.0f / amax : 0.0f);
  const __m512i q0 = _mm512_cvtps_epi32(_mm512_mul_ps(v0, inv)), q1 = _mm512_cvtps_epi32(_mm512_mul_ps(v1, inv));
  return {d, d * static_cast<float>(_mm512_reduce_add_epi32(q0)), d * static_cast<float>(_mm512_reduce_add_epi32(q1)),
          _mm512_cvtepi32_epi8(q0), _mm512_cvtepi32_epi8(q1)};
}

// x group xg's d sum q into the per weight group sums: one sum for weight groups of 32, each half's for groups of 16.
inline void put_group_sums(float* sums, int64_t xg, int group_size, const RoundedGroup& rg) {
  if (group_size == 32) {
    sums[xg] = rg.s0 + rg.s1;
  } else {
    sums[2 * xg] = rg.s0;
    sums[2 * xg + 1] = rg.s1;
  }
}

// x [rows, K] into p: per row, its whole spans (4 blocks of 64 nibble bytes: 512 values, 16 groups of 32; 8-bit
// weights: 4 blocks of 64 values, 8 groups) in the transposed order of span_offset, then the blocks past the last
// whole span in the integer kernel's order (plane_position), each x group's scale at the lanes that sum it (lane_d:
// a span's 16 at its first block), and the per weight group d sum q (sums).
template <typename T>
void prepare_x_int8(const QuantView& w, const T* x, int64_t rows, PreparedX& p) {
  const int64_t k = w.k;
  p.layout = XLayout::kInt8;
  p.rows = rows;
  const int64_t block_bytes = w.bits == 8 ? k : k / 2;  // the weights' bytes a row (6 bits: its nibbles')
  const int64_t block_values = w.bits == 8 ? 64 : 128;
  p.blocks = (block_bytes + 63) / 64;
  p.spans = (block_bytes / 64) / 4;
  p.plane = p.blocks * block_values;
  p.groups_pad = (w.groups + 15) / 16 * 16;
  p.xq.assign(rows * p.plane, 0);
  p.lane_d.assign(rows * p.blocks * 16, 0.0f);
  // 16 zeros past the last row: a tile loads a row's sums 16 at a time from the span's first group, and an 8-bit
  // span is 8 groups, so the last row's last load reaches 8 past its end (there was garbage there, NaN now and then,
  // multiplied by the zero maps of the lanes past the span: NaN outputs, seen once in ~10 runs of the tests).
  p.sums.assign(rows * p.groups_pad + 16, 0.0f);
  const int64_t xgroups = k / 32;
  const int64_t groups_per_block = block_values / 32;
  const int64_t span_groups = p.spans * 4 * groups_per_block;
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = x + r * k;
    int8_t* plane = p.xq.data() + r * p.plane;
    float* lane_d = p.lane_d.data() + r * p.blocks * 16;
    float* sums = p.sums.data() + r * p.groups_pad;
    for (int64_t xg = 0; xg < xgroups; ++xg) {
      const RoundedGroup rg = round_group(xr + xg * 32);
      const float d = rg.d;
      const __m128i b0 = rg.b0, b1 = rg.b1;
      put_group_sums(sums, xg, w.group_size, rg);
      const int64_t block = xg / groups_per_block;
      const int c = static_cast<int>(xg % groups_per_block);
      alignas(16) int32_t words[8];
      _mm_store_si128(reinterpret_cast<__m128i*>(words), b0);
      _mm_store_si128(reinterpret_cast<__m128i*>(words + 4), b1);
      if (w.bits == 8 && xg < span_groups) {
        // 8-bit weights: a block is 2 groups in order, its lane 4 c + b holding bytes 16 c + 4 b .. of it
        // (c = 0, 1 the first group's, 2, 3 the second's); after transpose4, vector b's lane 4 c + k.
        int8_t* span = plane + (xg / 8) * 256;
        const int k_ = static_cast<int>(xg % 8) / 2;
        for (int word = 0; word < 8; ++word) {
          const int lane = 4 * (2 * c + word / 4) + k_;
          std::memcpy(span + (word % 4) * 64 + 4 * lane, &words[word], 4);
        }
        lane_d[(xg / 8) * 64 + 4 * (2 * c) + k_] = d;
        lane_d[(xg / 8) * 64 + 4 * (2 * c + 1) + k_] = d;
      } else if (w.bits == 8) {
        _mm_storeu_si128(reinterpret_cast<__m128i*>(plane + xg * 32), b0);
        _mm_storeu_si128(reinterpret_cast<__m128i*>(plane + xg * 32 + 16), b1);
        for (int l = 0; l < 8; ++l) lane_d[block * 16 + 8 * c + l] = d;
      } else if (xg < span_groups) {
        const int g = static_cast<int>(xg % 16);
        int8_t* span = plane + (xg / 16) * 512;
        // 4 values at a time: bytes 4 b .. 4 b + 3 of each half go to vector b, at the group's lane.
        for (int b = 0; b < 4; ++b) {
          std::memcpy(span + span_offset(g, 4 * b), &words[b], 4);
          std::memcpy(span + span_offset(g, 16 + 4 * b), &words[4 + b], 4);
        }
        lane_d[(xg / 16) * 64 + span_lane(g)] = d;
      } else {
        _mm_storeu_si128(reinterpret_cast<__m128i*>(plane + plane_position(4, xg * 32)), b0);
        _mm_storeu_si128(reinterpret_cast<__m128i*>(plane + plane_position(4, xg * 32 + 16)), b1);
        for (int l = 0; l < 4; ++l) lane_d[block * 16 + 4 * c + l] = d;
      }
    }
  }
}

// The weights of output row `row` over a span's 4 blocks from `block`, transposed (transpose4): for 4 bits the
// nibble bytes t[0..3], each lane's low nibbles one group's values 4 b .. 4 b + 3 (vector b) and its high nibbles
// the same group's 16 + 4 b ..; for 6 bits the expanded low (tl) and high (th) vectors likewise; for 8 bits the
// signed bytes, each lane 4 of one group's (a group is 2 lanes of a vector: 16 values of it in the 4 vectors).
template <int BITS>
__attribute__((always_inline)) inline void span_weights(const QuantView& w, const uint8_t* row, int64_t block,
                                                        __m512i* tl, __m512i* th) {
  __m512i r[4];
  if constexpr (BITS != 6) {
    for (int b = 0; b < 4; ++b) r[b] = _mm512_loadu_si512(row + (block + b) * w.block_stride);
    transpose4(r, tl);
  } else {
    __m512i h[4], u[4];
    for (int b = 0; b < 4; ++b) {
      const int64_t at = block + b;
      expand6(_mm512_loadu_si512(row + at * w.block_stride), row + w.top_offset + at * w.top_stride, u[b], h[b]);
    }
    transpose4(u, tl);
    transpose4(h, th);
  }
}

// out[m0 : m0 + MB, n0 : n0 + NB].
template <int BITS, int GS, int MB, int NB, typename T>
void int8x_tile(const QuantView& w, const PreparedX& p, T* out, int64_t m0, int64_t n0) {
  const int64_t nibble_bytes = BITS == 8 ? w.k : w.k / 2;  // 8 bits: the values
  // 6-bit groups of 16: the low nibbles' lanes sum the even groups and the high nibbles' the odd ones.
  constexpr bool kSplit = BITS == 6 && GS == 16;
  constexpr int kGroupsPerBlock = kSplit ? 8 : BITS == 8 ? 2 : 4;
  constexpr int kSpanGroups = 4 * kGroupsPerBlock;
  constexpr int kMapGroups = kSpanGroups < 16 ? 16 : kSpanGroups;  // maps16 writes 16
  constexpr int kBlockValues = BITS == 8 ? 64 : 128, kSpanValues = 4 * kBlockValues, kVectorValues = kBlockValues;
  // Lane 4 c + k of a span sums its group 4 k + c (span_lane); for split groups, pair 4 k + c: groups 2 (4 k + c)
  // and the next, which permutex2var picks from the span's 32 scales; for 8 bits group 2 k + c / 2.
  alignas(64) int32_t order[16], even[16];
  for (int l = 0; l < 16; ++l) {
    order[l] = BITS == 8 ? 2 * (l % 4) + l / 8 : 4 * (l % 4) + l / 4;
    even[l] = 2 * order[l];
  }
  const __m512i by_lane = _mm512_load_si512(order);
  const __m512i by_lane_even = _mm512_load_si512(even);
  const __m512i by_lane_odd = _mm512_add_epi32(by_lane_even, _mm512_set1_epi32(1));
  // The integer the weights are offset by: 128 for 8 bits (signed, they enter with the sign bit flipped).
  const __m512 zero_point = _mm512_set1_ps(BITS == 8 ? 128.0f : static_cast<float>(w.zero_point));
  __m512 acc[MB][NB];
  static_for<MB>([&](auto i) EMBER_INLINE {
    static_for<NB>([&](auto j) EMBER_INLINE { acc[i][j] = _mm512_setzero_ps(); });
  });
  alignas(64) float s[NB][kMapGroups], m[NB][kMapGroups];
  const uint8_t* rows[NB];
  for (int j = 0; j < NB; ++j) rows[j] = row_start(w, n0 + j);
  prefetch_rows(w, n0 + kPrefetchTiles * NB, NB);
  // The groups' maps and the per-group term (m - z s) d sum q, for groups g0 .. g0 + count - 1 (count <= 16) into
  // s[j] + at, m[j] + at.
  auto maps_and_mins = [&](int64_t g0, int count, int at) EMBER_INLINE {
    for (int j = 0; j < NB; ++j) {
      maps16(w, n0 + j, g0, count, s[j] + at, m[j] + at);
      _mm512_store_ps(m[j] + at, _mm512_fnmadd_ps(zero_point, _mm512_load_ps(s[j] + at), _mm512_load_ps(m[j] + at)));
    }
    static_for<MB>([&](auto i) EMBER_INLINE {
      const __m512 sums = _mm512_loadu_ps(p.sums.data() + (m0 + i) * p.groups_pad + g0);
      static_for<NB>([&](auto j) EMBER_INLINE {
        acc[i][j] = _mm512_fmadd_ps(_mm512_load_ps(m[j] + at), sums, acc[i][j]);
      });
    });
  };
  // Software prefetch of the tiled layout, whose order the hardware prefetcher follows late here (a tile reads a
  // row's 4 blocks of a span, 512 or 768 bytes apart, then the next row's: without it, 1 row of x read Qwen2.5-
  // Coder-1.5B's gate/up at 20 GB/s against 29 for the bfloat16-dot kernel, which reads a block of all 8 rows at
  // a time). Each output row asks for an eighth of the span's bytes, at a distance: a tile of all 8 rows of a tile
  // of the layout for those 4 KB on in address order, a tile of fewer rows (the tiles after it do the rest) for
  // those of the next tile of the layout.
  // Long rows (a tile of the layout over 16 KB: Qwen2.5-Coder-1.5B's down projection, K = 8960, 35-54 KB) ask into
  // L2 only, and 16 KB on. Asked into L1 4 KB on like short rows, that projection read DRAM at 0.78 (Q4_K) and 0.80
  // (Q6_K) of gate/up's speed, against the same speed from the caches: its 14.5 KB of prepared x, re-read every
  // tile, and the prefetched lines evicted each other from L1's 32 KB. Into L2 16 KB on: 0.88 and 0.84 (medians of 5
  // interleaved rounds, quant_kernel.py --kernels int8 --rows 1; 8 KB on: 0.92 and 0.78), a decode step's matmuls
  // about 4 % faster. Short rows stay as they were: into L2 they read slower (gate/up 26-29 GB/s against 30-33).
  constexpr bool kWholeTile = NB == kTileRows;
  const int64_t group_bytes = kTileRows * w.row_bytes;
  const bool long_rows = group_bytes > 16 * 1024;
  const int64_t whole_ahead = long_rows ? 16 * 1024 : 4096;
  const int64_t ahead = !w.tiled || n0 + 2 * kTileRows > w.n ? 0 : kWholeTile ? whole_ahead : group_bytes;
  const bool to_l1 = !long_rows;
  const uint8_t* group = w.q + (n0 / kTileRows) * kTileRows * w.row_bytes;
  const uint8_t* const end = w.q + w.n * w.row_bytes;
  for (int64_t span = 0; span < p.spans; ++span) {
    const int64_t g0 = span * kSpanGroups, block = span * 4;
    for (int at = 0; at < kSpanGroups; at += 16) maps_and_mins(g0 + at, kSpanGroups < 16 ? kSpanGroups : 16, at);
    __m512 sv[NB], sv_odd[NB];
    static_for<NB>([&](auto j) EMBER_INLINE {
      if constexpr (kSplit) {
        sv[j] = _mm512_permutex2var_ps(_mm512_load_ps(s[j]), by_lane_even, _mm512_load_ps(s[j] + 16));
        sv_odd[j] = _mm512_permutex2var_ps(_mm512_load_ps(s[j]), by_lane_odd, _mm512_load_ps(s[j] + 16));
      } else {
        sv[j] = _mm512_permutexvar_ps(by_lane, _mm512_load_ps(s[j]));
      }
    });
    // One output row at a time, its int32 sums converted before the next: with 8 outputs' transposed weights and
    // sums live at once the tile needs more than the 32 vector registers, and spilling them cost 2x at 1 row.
    __m512 xd[MB];
    static_for<MB>([&](auto i) EMBER_INLINE {
      xd[i] = _mm512_loadu_ps(p.lane_d.data() + ((m0 + i) * p.blocks + block) * 16);
    });
    static_for<NB>([&](auto j) EMBER_INLINE {
      if (ahead != 0) {
        // The span's bytes of the tile `ahead` further on, in address order: its 8 rows' share, this row's part.
        const int64_t share = 4 * w.block_stride / kTileRows;
        const uint8_t* at = group + block * w.block_stride + ((n0 + j) % kTileRows) * share + ahead;
        for (int64_t b = 0; b < share && at + b < end; b += 64) {
          if (to_l1) {
            _mm_prefetch(at + b, _MM_HINT_T0);
          } else {
            _mm_prefetch(at + b, _MM_HINT_T1);
          }
        }
      }
      __m512i tl[4], th[4];
      span_weights<BITS>(w, rows[j], block, tl, th);
      // A row's 8 dot products of the span in kChains independent chains (the even and odd groups' apart for
      // split groups): vpdpbusd's latency is ~5 of its ~2 cycles a vector, and with 1 row one chain of 8 bounded
      // the tile (Qwen2.5-Coder-1.5B's gate/up, 1 row, 2 threads: 20 GB/s against 29 for the bfloat16-dot kernel).
      constexpr int kChains = MB >= 4 ? 1 : MB == 1 ? 4 : 2;
      __m512i sum[MB][kChains], sum_odd[MB][kChains];
      static_for<MB>([&](auto i) EMBER_INLINE {
        static_for<kChains>([&](auto c) EMBER_INLINE {
          sum[i][c] = _mm512_setzero_si512();
          if constexpr (kSplit) sum_odd[i][c] = _mm512_setzero_si512();
        });
      });
      static_for<4>([&](auto b) EMBER_INLINE {
        constexpr int c = decltype(b)::value % kChains;
        __m512i wl, wh;
        if constexpr (BITS == 6) {  // expanded before the transposition (span_weights)
          wl = tl[b];
          wh = th[b];
        } else {
          unsigned_weights<BITS>(tl[b], nullptr, wl, wh);
        }
        static_for<MB>([&](auto i) EMBER_INLINE {
          const int8_t* xs = p.xq.data() + (m0 + i) * p.plane + span * kSpanValues + b * kVectorValues;
          if constexpr (BITS == 8) {
            sum[i][c] = _mm512_dpbusd_epi32(sum[i][c], wl, _mm512_loadu_si512(xs));
          } else if constexpr (kSplit) {
            sum[i][c] = _mm512_dpbusd_epi32(sum[i][c], wl, _mm512_loadu_si512(xs));
            sum_odd[i][c] = _mm512_dpbusd_epi32(sum_odd[i][c], wh, _mm512_loadu_si512(xs + 64));
          } else {
            sum[i][c] = _mm512_dpbusd_epi32(sum[i][c], wl, _mm512_loadu_si512(xs));
            sum[i][c] = _mm512_dpbusd_epi32(sum[i][c], wh, _mm512_loadu_si512(xs + 64));
          }
        });
      });
      static_for<MB>([&](auto i) EMBER_INLINE {
        static_for<kChains - 1>([&](auto c) EMBER_INLINE {
          sum[i][0] = _mm512_add_epi32(sum[i][0], sum[i][c + 1]);
          if constexpr (kSplit) sum_odd[i][0] = _mm512_add_epi32(sum_odd[i][0], sum_odd[i][c + 1]);
        });
        acc[i][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum[i][0]), _mm512_mul_ps(sv[j], xd[i]), acc[i][j]);
        if constexpr (kSplit) {
          acc[i][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum_odd[i][0]), _mm512_mul_ps(sv_odd[j], xd[i]), acc[i][j]);
        }
      });
    });
  }
  // Past the last whole span (K = 576: 18 groups, one span and a half block): a block at a time, each lane summing
  // a group of the block as in the integer kernel (block_lanes), converted per block.
  for (int64_t g0 = p.spans * kSpanGroups; g0 < w.groups; g0 += 16) {
    const int count = w.groups - g0 < 16 ? static_cast<int>(w.groups - g0) : 16;
    maps_and_mins(g0, count, 0);
    const int blocks = (count + kGroupsPerBlock - 1) / kGroupsPerBlock;
    for (int bi = 0; bi < blocks; ++bi) {
      const auto [block, mask, idx, idx_odd] = block_lanes<kSplit, kGroupsPerBlock>(g0, bi, nibble_bytes);
      static_for<NB>([&](auto j) EMBER_INLINE {
        const __m512i raw = _mm512_maskz_loadu_epi8(mask, rows[j] + block * w.block_stride);
        __m512i wl, wh;
        unsigned_weights<BITS>(raw, rows[j] + w.top_offset + block * w.top_stride, wl, wh);
        const __m512 sv = _mm512_permutexvar_ps(idx, _mm512_load_ps(s[j]));
        const __m512 sv_odd = kSplit ? _mm512_permutexvar_ps(idx_odd, _mm512_load_ps(s[j])) : sv;
        static_for<MB>([&](auto i) EMBER_INLINE {
          const int8_t* xs = p.xq.data() + (m0 + i) * p.plane + block * kBlockValues;
          const __m512 xd = _mm512_loadu_ps(p.lane_d.data() + ((m0 + i) * p.blocks + block) * 16);
          if constexpr (kSplit) {
            const __m512i ve = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wl, _mm512_loadu_si512(xs));
            const __m512i vo = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wh, _mm512_loadu_si512(xs + 64));
            acc[i][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(ve), _mm512_mul_ps(sv, xd), acc[i][j]);
            acc[i][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(vo), _mm512_mul_ps(sv_odd, xd), acc[i][j]);
          } else {
            __m512i v = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wl, _mm512_loadu_si512(xs));
            if constexpr (BITS != 8) v = _mm512_dpbusd_epi32(v, wh, _mm512_loadu_si512(xs + 64));
            acc[i][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(v), _mm512_mul_ps(sv, xd), acc[i][j]);
          }
        });
      });
    }
  }
  static_for<MB>([&](auto i) EMBER_INLINE {
    static_for<NB>([&](auto j) EMBER_INLINE {
      const float b = w.bias != nullptr ? w.bias[n0 + j] : 0.0f;
      store(out + (m0 + i) * w.n, n0 + j, _mm512_reduce_add_ps(acc[i][j]) + b);
    });
  });
}

// The tiles that cover output rows [n_begin, n_end) for every row of x, as tile(MB, NB, r, n) calls. A tile works
// one output row at a time (int8x_tile), so NB shares nothing but the walk through memory, and MB is what pays for
// a row's transposed weights: 8 rows of x at a time against each output, then 4 against pairs of outputs, 3
// against 4 (a speculative step verifying 2 drafts: 3 x 8 accumulators would spill), 2 or 1 against 8.
template <int kMostRows, typename Tile>
void int8x_schedule(int64_t rows, int64_t n_begin, int64_t n_end, Tile&& tile) {
  using std::integral_constant;
  auto outputs = [&](auto nb, int64_t n0) {
    constexpr int NB = decltype(nb)::value;
    int64_t r = 0;
    for (; r + kMostRows <= rows; r += kMostRows) {
      for (int j = 0; j < NB; ++j) tile(integral_constant<int, kMostRows>{}, integral_constant<int, 1>{}, r, n0 + j);
    }
    constexpr int kPair = NB % 2 == 0 ? 2 : 1, kFour = NB % 4 == 0 ? 4 : 1;
    if (rows - r >= 4) {
      for (int j = 0; j < NB; j += kPair) tile(integral_constant<int, 4>{}, integral_constant<int, kPair>{}, r, n0 + j);
      r += 4;
    }
    if (rows - r == 3) {
      for (int j = 0; j < NB; j += kFour) tile(integral_constant<int, 3>{}, integral_constant<int, kFour>{}, r, n0 + j);
    } else if (rows - r == 2) {
      tile(integral_constant<int, 2>{}, nb, r, n0);
    } else if (rows - r == 1) {
      tile(integral_constant<int, 1>{}, nb, r, n0);
    }
  };
  int64_t n = n_begin;
  for (; n + 8 <= n_end; n += 8) outputs(integral_constant<int, 8>{}, n);
  for (; n < n_end; ++n) outputs(integral_constant<int, 1>{}, n);
}

// Output rows [n_begin, n_end) for every row of x, prepared (prepare_x_int8).
template <int BITS, int GS, typename T>
void int8x_part(const QuantView& w, const PreparedX& p, T* out, int64_t rows, int64_t n_begin, int64_t n_end) {
  // Split 6-bit groups keep two sums a row: 8 rows of them, the weights and the accumulators would spill.
  constexpr int kMostRows = BITS == 6 && GS == 16 ? 4 : 8;
  int8x_schedule<kMostRows>(rows, n_begin, n_end, [&](auto mb, auto nb, int64_t r, int64_t n) {
    int8x_tile<BITS, GS, decltype(mb)::value, decltype(nb)::value, T>(w, p, out, r, n);
  });
}
