// The quantized linear on 8-bit x for many rows (a prompt chunk): the 8-bit x kernel's numbers, computed as a
// matrix product. Included by quant_linear.cpp in the VNNI region, after quant_linear_int8x_impl.h.
//
// Why: the 8-bit x kernel (quant_linear_int8x_impl.h) transposes each output row's weights in registers and
// shares them only with the 8 rows of x of its tile, so that from a few dozen rows on its work per weight is the
// transposition and the horizontal sums, not the products; and dequantizing to bfloat16 for oneDNN's dense matmul
// costs a pass over the weights and leaves vdpbf16ps's 32 products an instruction, where vpdpbusd takes 64. Here
// a strip of 32 output rows is unpacked once per call into a panel laid out for vpdpbusd (4 consecutive weights of
// each of the 32 outputs in turn) and swept by every row of x: each vpdpbusd multiplies 4 weights of 16 outputs by
// the same 4 values of x (one broadcast), and a group's int32 sums become float once per group of 32 values (a
// convert, a multiply by the two scales, an FMA, and an FMA for the group's offset term). Measured on a 2-core Zen 4
// (2 threads, a model's first layers called in turn): 1.4x dequantize + dense matmul at 512 rows on SmolLM2-135M's
// Q4_1 (247 against 175 GMAC/s), 1.6x on Qwen2.5-Coder-1.5B's Q4_K/Q6_K; faster than the streaming tiles from 24
// rows.
//
// The numbers are the 8-bit x kernel's: x rounded per group of 32 as prepare_x_int8 rounds it (d = max|x| / 127,
// round to nearest even), each weight group's int32 sum exact, and per weight group with map w = s (e - z) + m
//     sum_i w_i x_i = s d sum_i e_i q_i + (m - z s) d sum_i q_i.
// Only the float32 sums run in another order (over groups here, over lanes there): outputs agree to rounding.

// x [rows, K] for the matrix product: row-major signed bytes (xq), each x group's scale (lane_d: [rows][K / 32])
// and each weight group's d sum q (sums), rounded exactly as prepare_x_int8 rounds them.
template <typename T>
void prepare_x_gemm(const QuantView& w, const T* x, int64_t rows, PreparedX& p) {
  const int64_t k = w.k, xgroups = k / 32;
  p.layout = XLayout::kGemm;
  p.rows = rows;
  p.plane = k;
  p.groups_pad = (w.groups + 15) / 16 * 16;
  p.xq.resize(rows * k);
  p.lane_d.resize(rows * xgroups);
  p.sums.assign(rows * p.groups_pad, 0.0f);
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const T* xr = x + r * k;
      int8_t* xq = p.xq.data() + r * k;
      float* sums = p.sums.data() + r * p.groups_pad;
      for (int64_t xg = 0; xg < xgroups; ++xg) {
        const RoundedGroup rg = round_group(xr + xg * 32);
        _mm_storeu_si128(reinterpret_cast<__m128i*>(xq + xg * 32), rg.b0);
        _mm_storeu_si128(reinterpret_cast<__m128i*>(xq + xg * 32 + 16), rg.b1);
        p.lane_d[r * xgroups + xg] = rg.d;
        put_group_sums(sums, xg, w.group_size, rg);
      }
    }
  });
}

// Output rows a strip holds: two vectors of 16.
constexpr int kStrip = 32;

// 16 x 16 32-bit values in place: lane j of r[i] becomes lane i of r[j]. Pairs of rows interleaved by 32 then 64
// bits (each 128-bit quarter then holds one column of 4 rows), then the quarters moved across registers.
__attribute__((always_inline)) inline void transpose16x16(__m512i* r) {
  __m512i t[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
  }
  // u[4 G + c], quarter L: column 4 L + c of rows 4 G .. 4 G + 3.
  __m512i u[16];
  for (int g = 0; g < 16; g += 4) {
    u[g] = _mm512_unpacklo_epi64(t[g], t[g + 2]);
    u[g + 1] = _mm512_unpackhi_epi64(t[g], t[g + 2]);
    u[g + 2] = _mm512_unpacklo_epi64(t[g + 1], t[g + 3]);
    u[g + 3] = _mm512_unpackhi_epi64(t[g + 1], t[g + 3]);
  }
  for (int c = 0; c < 4; ++c) {
    const __m512i v0 = _mm512_shuffle_i32x4(u[c], u[4 + c], 0x44), v1 = _mm512_shuffle_i32x4(u[c], u[4 + c], 0xEE);
    const __m512i v2 = _mm512_shuffle_i32x4(u[8 + c], u[12 + c], 0x44);
    const __m512i v3 = _mm512_shuffle_i32x4(u[8 + c], u[12 + c], 0xEE);
    r[c] = _mm512_shuffle_i32x4(v0, v2, 0x88);
    r[4 + c] = _mm512_shuffle_i32x4(v0, v2, 0xDD);
    r[8 + c] = _mm512_shuffle_i32x4(v1, v3, 0x88);
    r[12 + c] = _mm512_shuffle_i32x4(v1, v3, 0xDD);
  }
}

// Bytes of scratch pack_strip takes: each of the strip's rows unpacked, K + 128 bytes apart.
inline int64_t strip_scratch_bytes(int64_t k) { return kStrip * (k + 128); }

// A strip of W's rows n0 .. n0 + count - 1 (count <= kStrip; the rest zero) as the matrix product reads it:
// panel [K / 4][kStrip][4] unsigned bytes (vpdpbusd's unsigned operand: e + 128 for 8 bits), and per weight group
// g the outputs' scales scale[g][kStrip] and offsets offset[g][kStrip] = m - z s. `rows` is scratch of
// strip_scratch_bytes(K): each row is unpacked there in order, then 16 rows x 16 words at a time are transposed in
// registers into the panel. Why: a call packs every weight once whatever its row count, and speculative
// verification steps (16 streams x 5 tokens) are calls of ~80 rows, where pack_strip took 8 % of a served
// workload's samples with a scalar store per word; transposed in registers, a step's matmuls on SmolLM2-135M
// (benchmarks/quant_kernel.py --kernels product) took 26.5 against 30.1 ms at 32 rows, 48.2 against 51.5 at 80.
template <int BITS>
void pack_strip(const QuantView& w, int64_t n0, int count, uint8_t* panel, float* scale, float* offset,
                uint8_t* rows) {
  const int64_t k = w.k, row_bytes = k + 128;
  const int64_t nibble_bytes = BITS == 8 ? k : k / 2;  // 8 bits: the values
  const int64_t blocks = (nibble_bytes + 63) / 64;
  const float z = BITS == 8 ? 128.0f : static_cast<float>(w.zero_point);
  if (count < kStrip) {
    std::memset(rows + count * row_bytes, 0, (kStrip - count) * row_bytes);
    std::memset(scale, 0, w.groups * kStrip * sizeof(float));
    std::memset(offset, 0, w.groups * kStrip * sizeof(float));
  }
  alignas(64) float s[16], m[16];
  for (int c = 0; c < count; ++c) {
    const uint8_t* src = row_start(w, n0 + c);
    uint8_t* row = rows + c * row_bytes;
    // The row's values in order, as unsigned bytes.
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t left = nibble_bytes - b * 64;
      const __mmask64 mask = left >= 64 ? ~__mmask64{0} : (__mmask64{1} << left) - 1;
      const __m512i raw = _mm512_maskz_loadu_epi8(mask, src + b * w.block_stride);
      __m512i wl, wh;
      unsigned_weights<BITS>(raw, src + w.top_offset + b * w.top_stride, wl, wh);
      if constexpr (BITS == 8) {
        _mm512_storeu_si512(row + b * 64, wl);
      } else {
        // Group j of the block (16 bytes of each): its values 0-15 in wl, 16-31 in wh.
        uint8_t* dst = row + b * 128;
        _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + 0), _mm512_extracti32x4_epi32(wl, 0));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + 16), _mm512_extracti32x4_epi32(wh, 0));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + 32), _mm512_extracti32x4_epi32(wl, 1));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + 48), _mm512_extracti32x4_epi32(wh, 1));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + 64), _mm512_extracti32x4_epi32(wl, 2));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + 80), _mm512_extracti32x4_epi32(wh, 2));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + 96), _mm512_extracti32x4_epi32(wl, 3));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + 112), _mm512_extracti32x4_epi32(wh, 3));
      }
    }
    for (int64_t g0 = 0; g0 < w.groups; g0 += 16) {
      const int n = w.groups - g0 < 16 ? static_cast<int>(w.groups - g0) : 16;
      maps16(w, n0 + c, g0, n, s, m);
      for (int g = 0; g < n; ++g) {
        scale[(g0 + g) * kStrip + c] = s[g];
        offset[(g0 + g) * kStrip + c] = m[g] - z * s[g];
      }
    }
  }
  // panel word t * kStrip + c = word t of row c (4 consecutive values).
  const int64_t quads = k / 4;
  uint32_t* out = reinterpret_cast<uint32_t*>(panel);
  int64_t t0 = 0;
  for (; t0 + 16 <= quads; t0 += 16) {
    for (int c0 = 0; c0 < kStrip; c0 += 16) {
      __m512i r[16];
      for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_si512(rows + (c0 + i) * row_bytes + 4 * t0);
      transpose16x16(r);
      for (int i = 0; i < 16; ++i) _mm512_storeu_si512(out + (t0 + i) * kStrip + c0, r[i]);
    }
  }
  for (; t0 < quads; ++t0) {
    for (int c = 0; c < kStrip; ++c) std::memcpy(out + t0 * kStrip + c, rows + c * row_bytes + 4 * t0, 4);
  }
}

inline void store16(float* p, __mmask16 mask, __m512 v) { _mm512_mask_storeu_ps(p, mask, v); }

inline void store16(uint16_t* p, __mmask16 mask, __m512 v) {  // bfloat16, rounded to nearest even as store() does
  __m512i bits = _mm512_castps_si512(v);
  const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  bits = _mm512_add_epi32(bits, _mm512_add_epi32(_mm512_set1_epi32(0x7FFF), odd));
  _mm256_mask_storeu_epi16(p, mask, _mm512_cvtepi32_epi16(_mm512_srli_epi32(bits, 16)));
}

// out[m0 : m0 + MR, n0 : n0 + count] from a packed strip: MR rows of x against its 32 outputs, group by group.
template <int GS, int MR, typename T>
__attribute__((always_inline)) inline void gemm_tile(const QuantView& w, const PreparedX& p, const uint8_t* panel,
                                                     const float* scale, const float* offset, T* out, int64_t m0,
                                                     int64_t n0, int count) {
  constexpr int kQuads = GS / 4;  // vpdpbusd steps a group takes
  const int64_t k = w.k, xgroups = k / 32;
  __m512 acc[MR][2];
  static_for<MR>([&](auto i) EMBER_INLINE {
    acc[i][0] = _mm512_setzero_ps();
    acc[i][1] = _mm512_setzero_ps();
  });
  const int8_t* xq = p.xq.data() + m0 * k;
  const float* xd = p.lane_d.data() + m0 * xgroups;
  const float* xs = p.sums.data() + m0 * p.groups_pad;
  for (int64_t g = 0; g < w.groups; ++g) {
    __m512i sum[MR][2];
    static_for<MR>([&](auto i) EMBER_INLINE {
      sum[i][0] = _mm512_setzero_si512();
      sum[i][1] = _mm512_setzero_si512();
    });
    const uint8_t* wg = panel + g * GS * kStrip;
    const int8_t* xg = xq + g * GS;
    static_for<kQuads>([&](auto t) EMBER_INLINE {
      const __m512i w0 = _mm512_loadu_si512(wg + t * 4 * kStrip);
      const __m512i w1 = _mm512_loadu_si512(wg + t * 4 * kStrip + 64);
      static_for<MR>([&](auto i) EMBER_INLINE {
        int32_t four;
        std::memcpy(&four, xg + i * k + 4 * t, 4);
        const __m512i xb = _mm512_set1_epi32(four);
        sum[i][0] = _mm512_dpbusd_epi32(sum[i][0], w0, xb);
        sum[i][1] = _mm512_dpbusd_epi32(sum[i][1], w1, xb);
      });
    });
    const __m512 s0 = _mm512_loadu_ps(scale + g * kStrip), s1 = _mm512_loadu_ps(scale + g * kStrip + 16);
    const __m512 o0 = _mm512_loadu_ps(offset + g * kStrip), o1 = _mm512_loadu_ps(offset + g * kStrip + 16);
    const int64_t xgi = GS == 32 ? g : g / 2;
    static_for<MR>([&](auto i) EMBER_INLINE {
      const __m512 d = _mm512_set1_ps(xd[i * xgroups + xgi]);
      const __m512 q = _mm512_set1_ps(xs[i * p.groups_pad + g]);
      acc[i][0] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum[i][0]), _mm512_mul_ps(s0, d), acc[i][0]);
      acc[i][1] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum[i][1]), _mm512_mul_ps(s1, d), acc[i][1]);
      acc[i][0] = _mm512_fmadd_ps(o0, q, acc[i][0]);
      acc[i][1] = _mm512_fmadd_ps(o1, q, acc[i][1]);
    });
  }
  const __mmask16 mask0 = count >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << count) - 1);
  const __mmask16 mask1 = count >= 32   ? __mmask16(0xFFFF)
                          : count <= 16 ? __mmask16(0)
                                        : __mmask16((1u << (count - 16)) - 1);
  const __m512 bias0 = w.bias != nullptr ? _mm512_maskz_loadu_ps(mask0, w.bias + n0) : _mm512_setzero_ps();
  const __m512 bias1 = w.bias != nullptr ? _mm512_maskz_loadu_ps(mask1, w.bias + n0 + 16) : _mm512_setzero_ps();
  static_for<MR>([&](auto i) EMBER_INLINE {
    T* dst = out + (m0 + i) * w.n + n0;
    store16(dst, mask0, _mm512_add_ps(acc[i][0], bias0));
    store16(dst + 16, mask1, _mm512_add_ps(acc[i][1], bias1));
  });
}

// Rows of x a tile takes: 6 rows x 32 outputs keep 12 int32 sums, 12 float32 sums and the 2 weight vectors in
// registers (the group's scales come from memory). Measured against 4 rows (SmolLM2-135M's Q4_1 layers, 512 rows,
// 2 threads): 1.46x dequantize + dense matmul against 1.36x.
constexpr int kGemmRowsPerTile = 6;

// Output rows [n_begin, n_end) for every row of x, prepared (prepare_x_gemm): strip by strip, each packed once and
// swept by all the rows.
template <int BITS, int GS, typename T>
void gemm_part(const QuantView& w, const PreparedX& p, T* out, int64_t rows, int64_t n_begin, int64_t n_end) {
  const int64_t k = w.k;
  thread_local std::vector<uint8_t> panel, row;
  thread_local std::vector<float> scale, offset;
  panel.resize(k * kStrip);
  row.resize(strip_scratch_bytes(k));
  scale.resize(w.groups * kStrip);
  offset.resize(w.groups * kStrip);
  for (int64_t n0 = n_begin; n0 < n_end; n0 += kStrip) {
    const int count = n_end - n0 < kStrip ? static_cast<int>(n_end - n0) : kStrip;
    pack_strip<BITS>(w, n0, count, panel.data(), scale.data(), offset.data(), row.data());
    int64_t m0 = 0;
    for (; m0 + kGemmRowsPerTile <= rows; m0 += kGemmRowsPerTile) {
      gemm_tile<GS, kGemmRowsPerTile, T>(w, p, panel.data(), scale.data(), offset.data(), out, m0, n0, count);
    }
    switch (rows - m0) {
      case 5:
        gemm_tile<GS, 5, T>(w, p, panel.data(), scale.data(), offset.data(), out, m0, n0, count);
        break;
      case 4:
        gemm_tile<GS, 4, T>(w, p, panel.data(), scale.data(), offset.data(), out, m0, n0, count);
        break;
      case 3:
        gemm_tile<GS, 3, T>(w, p, panel.data(), scale.data(), offset.data(), out, m0, n0, count);
        break;
      case 2:
        gemm_tile<GS, 2, T>(w, p, panel.data(), scale.data(), offset.data(), out, m0, n0, count);
        break;
      case 1:
        gemm_tile<GS, 1, T>(w, p, panel.data(), scale.data(), offset.data(), out, m0, n0, count);
        break;
      default:
        break;
    }
  }
}
