// The quantized linear on bfloat16 dot products (AVX512-BF16's vdpbf16ps: 32 products summed pairwise into 16
// float32 lanes per instruction), for bfloat16 x and 4- or 6-bit weights. Included by quant_linear.cpp in a region
// compiled for AVX512-BF16, after quant_linear_vnni_impl.h, whose helpers (maps16, expand6, prefetch_rows) it shares.
//
// Why: the integer kernel rounds x to 16 bits and feeds it as two signed bytes, so every 128 weights cost each row
// of x 4 vpdpbusd, a shift, an int-to-float conversion, a multiply by x's scale and an FMA, plus x's 5 vector loads
// (high and low bytes, the lane scales): from 2 rows of x on, that work, not memory, bounds it (Qwen2.5-Coder-1.5B's
// gate/up: 9.6x a single row's time at 16 rows). Here x is bfloat16 already (the model's activations), so it enters
// as it is: each row costs 4 vdpbf16ps and one FMA per 128 weights, and 4 loads. On a Zen 4 both vdpbf16ps and
// vpdpbusd issue once a cycle on 512-bit vectors (measured in a loop of independent ones at 3.64 GHz; vpdpbusd on
// 256-bit vectors twice), so the 4 dot products cost the same in both kernels and the gain is the rest: 1.2-1.7x
// per matrix at 4-16 rows (Qwen2.5-Coder-1.5B), parity at 1 row, where memory bounds both. The same count says why
// no integer matrix product for prefill chunks beats the dense bfloat16 one (oneDNN, 26-30 of the 32 products a
// cycle): with x in 16 bits, two vpdpbusd take 64 products, as two vdpbf16ps do; a prototype ran at 20-23.
//
// The weights enter as exact bfloat16 integers with no conversion: a bfloat16 whose high byte is 0x43 is 2^7 (1 +
// f / 128) = 128 + f for its 7 fraction bits f, so OR-ing 0x4300 onto a 16-bit lane that holds a value q of 0-127
// makes the bfloat16 128 + q. A 64-byte block of nibbles, read as 32 16-bit words, gives four such vectors: the low
// nibbles of the even bytes (word & 0xF), of the odd bytes ((word >> 8) & 0xF), then the high nibbles of the even
// and odd bytes ((word >> 4) & 0xF, word >> 12); 6-bit weights the same from expand6's two vectors of bytes. The
// products of two bfloat16 are exact in float32, so the only roundings are the float32 sums. Per weight group g
// with affine map w = s (q - z) + m, z the zero point (Q6_K's 32, else 0):
//     sum_i w_i x_i = s sum_i (128 + q_i) x_i + (m - (128 + z) s) sum_i x_i
// Lane l of every vector holds bytes 4l .. 4l + 3 of the block, as the integer kernel's lanes do, so lane l sums
// one group, and one scale per lane (the same permutation of the 16 groups' scales) serves the block's 4 vectors.

// Where the bfloat16 plane of a row puts value v of its block of 128 (v = 0 .. 127): vector r (0-3) of the block,
// word u (0-31). Nibble byte c of the block holds, in its low and high nibble, values 32 (c / 16) + c % 16 and that
// + 16 (the 4-bit layout, quant_view.h); vector r takes the low nibbles (r < 2) or high ones of the even (r even)
// or odd bytes, word u the bytes 2u and 2u + 1.
inline int bf16_plane_slot(int v) {
  const int group = v / 32, j = v % 32, nibble_byte = group * 16 + j % 16;
  const int r = (j < 16 ? 0 : 2) + nibble_byte % 2;
  return r * 32 + nibble_byte / 2;
}

// x [rows, K] bfloat16 into p: its plane [rows][blocks * 128] (zero past K) and its sums per weight group.
inline void prepare_x_bf16(const QuantView& w, const uint16_t* x, int64_t rows, PreparedX& p) {
  const int64_t k = w.k;
  p.layout = XLayout::kBf16;
  p.rows = rows;
  p.blocks = (k / 2 + 63) / 64;
  p.plane = p.blocks * 128;
  p.groups_pad = (w.groups + 15) / 16 * 16;
  p.xb.assign(rows * p.plane, 0);
  p.sums.assign(rows * p.groups_pad, 0.0f);
  // permutex2var's word indices: word u of vector r is value index[r][u] of a pair of groups (0-63): groups 0-1 for
  // u < 16, groups 2-3 for the rest (a blend joins the two), as bf16_plane_slot places each value.
  alignas(64) uint16_t index[4][32];
  for (int v = 0; v < 128; ++v) {
    const int slot = bf16_plane_slot(v), r = slot / 32, u = slot % 32;
    index[r][u] = static_cast<uint16_t>(v % 64);
  }
  __m512i idx[4];
  for (int r = 0; r < 4; ++r) idx[r] = _mm512_load_si512(index[r]);
  for (int64_t row = 0; row < rows; ++row) {
    const uint16_t* xr = x + row * k;
    uint16_t* plane = p.xb.data() + row * p.plane;
    for (int64_t b = 0; b < p.blocks; ++b) {
      const int64_t valid = std::min<int64_t>(128, k - b * 128);
      __m512i v[4];
      for (int part = 0; part < 4; ++part) {
        const int64_t left = std::max<int64_t>(0, std::min<int64_t>(32, valid - part * 32));
        const __mmask32 mask = left >= 32 ? ~0u : (1u << left) - 1;
        v[part] = _mm512_maskz_loadu_epi16(mask, xr + b * 128 + part * 32);
      }
      for (int r = 0; r < 4; ++r) {
        const __m512i groups01 = _mm512_permutex2var_epi16(v[0], idx[r], v[1]);
        const __m512i groups23 = _mm512_permutex2var_epi16(v[2], idx[r], v[3]);
        _mm512_storeu_si512(plane + b * 128 + r * 32,
                            _mm512_mask_blend_epi16(static_cast<__mmask32>(0xFFFF0000u), groups01, groups23));
      }
    }
    // Sums per group of x as the kernel's bfloat16 sees it (groups of 16 or 32; K is a multiple of the group).
    float* sums = p.sums.data() + row * p.groups_pad;
    for (int64_t g = 0; g < w.groups; ++g) {
      const __m512 lo = load16(xr + g * w.group_size);
      const __m512 v = w.group_size == 32 ? _mm512_add_ps(lo, load16(xr + g * 32 + 16)) : lo;
      sums[g] = _mm512_reduce_add_ps(v);
    }
  }
}

// The 64-byte nibble block at `raw` (and, for 6 bits, its top bits) as four vectors of bfloat16 128 + q.
template <int BITS>
__attribute__((always_inline)) inline void weights_bf16(__m512i raw, const uint8_t* top_bytes, __m512i* wv) {
  const __m512i exponent = _mm512_set1_epi16(0x4300);
  if constexpr (BITS == 4) {
    const __m512i nibble = _mm512_set1_epi16(0x000F);
    // (a & b) | c: ternary-logic table 0xEA.
    wv[0] = _mm512_ternarylogic_epi32(raw, nibble, exponent, 0xEA);
    wv[1] = _mm512_ternarylogic_epi32(_mm512_srli_epi16(raw, 8), nibble, exponent, 0xEA);
    wv[2] = _mm512_ternarylogic_epi32(_mm512_srli_epi16(raw, 4), nibble, exponent, 0xEA);
    wv[3] = _mm512_or_si512(_mm512_srli_epi16(raw, 12), exponent);
  } else {
    __m512i wl, wh;
    expand6(raw, top_bytes, wl, wh);
    const __m512i low_byte = _mm512_set1_epi16(0x00FF);
    wv[0] = _mm512_ternarylogic_epi32(wl, low_byte, exponent, 0xEA);
    wv[1] = _mm512_or_si512(_mm512_srli_epi16(wl, 8), exponent);
    wv[2] = _mm512_ternarylogic_epi32(wh, low_byte, exponent, 0xEA);
    wv[3] = _mm512_or_si512(_mm512_srli_epi16(wh, 8), exponent);
  }
}

// out[m0 : m0 + MB, n0 : n0 + NB].
template <int BITS, int GS, int MB, int NB, typename T>
void bf16_tile(const QuantView& w, const PreparedX& p, T* out, int64_t m0, int64_t n0) {
  const int64_t nibble_bytes = w.k / 2;
  // 6-bit groups of 16: the low nibbles' lanes (vectors 0, 1) sum the even groups, the high nibbles' the odd ones.
  constexpr bool kSplit = BITS == 6 && GS == 16;
  constexpr int kGroupsPerBlock = kSplit ? 8 : 4;
  const __m512 offset = _mm512_set1_ps(128.0f + static_cast<float>(w.zero_point));
  __m512 acc[MB][NB];
  static_for<MB>([&](auto i) { static_for<NB>([&](auto j) { acc[i][j] = _mm512_setzero_ps(); }); });
  alignas(64) float s[NB][16], m[NB][16];
  const uint8_t* rows[NB];
  for (int j = 0; j < NB; ++j) rows[j] = row_start(w, n0 + j);
  prefetch_rows(w, n0 + kPrefetchTiles * NB, NB);
  for (int64_t g0 = 0; g0 < w.groups; g0 += 16) {
    const int count = w.groups - g0 < 16 ? static_cast<int>(w.groups - g0) : 16;
    for (int j = 0; j < NB; ++j) {
      maps16(w, n0 + j, g0, count, s[j], m[j]);
      // m - (128 + z) s: the weights entered as 128 + q (zero past count: s and m are).
      _mm512_store_ps(m[j], _mm512_fnmadd_ps(offset, _mm512_load_ps(s[j]), _mm512_load_ps(m[j])));
    }
    static_for<MB>([&](auto i) {
      const __m512 sums = _mm512_loadu_ps(p.sums.data() + (m0 + i) * p.groups_pad + g0);
      static_for<NB>([&](auto j) { acc[i][j] = _mm512_fmadd_ps(_mm512_load_ps(m[j]), sums, acc[i][j]); });
    });
    const int blocks = (count + kGroupsPerBlock - 1) / kGroupsPerBlock;
    for (int bi = 0; bi < blocks; ++bi) {
      const auto [block, mask, idx, idx_odd] = block_lanes<kSplit, kGroupsPerBlock>(g0, bi, nibble_bytes);
      static_for<NB>([&](auto j) {
        const __m512i raw = _mm512_maskz_loadu_epi8(mask, rows[j] + block * w.block_stride);
        __m512i wv[4];
        weights_bf16<BITS>(raw, rows[j] + w.top_offset + block * w.top_stride, wv);
        const __m512 sv = _mm512_permutexvar_ps(idx, _mm512_load_ps(s[j]));
        const __m512 sv_odd = kSplit ? _mm512_permutexvar_ps(idx_odd, _mm512_load_ps(s[j])) : sv;
        static_for<MB>([&](auto i) {
          const uint16_t* xb = p.xb.data() + (m0 + i) * p.plane + block * 128;
          const __m512bh x0 = (__m512bh)_mm512_loadu_si512(xb), x1 = (__m512bh)_mm512_loadu_si512(xb + 32);
          const __m512bh x2 = (__m512bh)_mm512_loadu_si512(xb + 64), x3 = (__m512bh)_mm512_loadu_si512(xb + 96);
          __m512 lo = _mm512_dpbf16_ps(_mm512_setzero_ps(), (__m512bh)wv[0], x0);
          lo = _mm512_dpbf16_ps(lo, (__m512bh)wv[1], x1);
          if constexpr (kSplit) {
            __m512 hi = _mm512_dpbf16_ps(_mm512_setzero_ps(), (__m512bh)wv[2], x2);
            hi = _mm512_dpbf16_ps(hi, (__m512bh)wv[3], x3);
            acc[i][j] = _mm512_fmadd_ps(lo, sv, acc[i][j]);
            acc[i][j] = _mm512_fmadd_ps(hi, sv_odd, acc[i][j]);
          } else {
            lo = _mm512_dpbf16_ps(lo, (__m512bh)wv[2], x2);
            lo = _mm512_dpbf16_ps(lo, (__m512bh)wv[3], x3);
            acc[i][j] = _mm512_fmadd_ps(lo, sv, acc[i][j]);
          }
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

// Output rows [n_begin, n_end) for every row of x, prepared (prepare_x_bf16), in the integer kernel's tiles.
template <int BITS, int GS, typename T>
void bf16_part(const QuantView& w, const PreparedX& p, T* out, int64_t rows, int64_t n_begin, int64_t n_end) {
  tile_schedule(rows, n_begin, n_end, [&](auto mb, auto nb, int64_t r, int64_t n) {
    bf16_tile<BITS, GS, decltype(mb)::value, decltype(nb)::value, T>(w, p, out, r, n);
  });
}
