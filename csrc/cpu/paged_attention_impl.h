// Paged-attention decode for one instruction set. Included once per ISA by paged_attention.cpp, inside a
// namespace and a `#pragma GCC target` region: the kernel is written with GCC's generic vectors (16 floats), which
// the compiler lowers to one AVX-512 register, two AVX2 registers or four SSE ones, and the dispatcher picks the
// widest variant the CPU runs at call time, never at build time.
//
// Layouts (row-major):
//   q, out        [B, H, hd] (q's rows may be q_stride apart)
//   k/v cache     [num_blocks, block_size, KV, hd]
//   block_table   [B, max_blocks] int32, context_lens [B] int32
// Query head h reads KV head h / (H / KV) (grouped-query attention). Each task is one (row, KV head) pair, so a
// K/V row is read once for all the query heads of its group: pass 1 takes every score, then the softmax, then
// pass 2 the weighted sum of V rows. Accumulation is in float32 whatever the storage type.

#include "vec_impl.h"

// q . k over hd values: whole vectors with two independent accumulators (the sum of two chains, not one long
// one), then the tail one value at a time.
template <typename T>
inline float dot(const float* q, const T* k, int64_t hd) {
  vec a = {}, b = {};
  int64_t i = 0;
  for (; i + 2 * kLanes <= hd; i += 2 * kLanes) {
    a += load_vec(q + i) * load_vec(k + i);
    b += load_vec(q + i + kLanes) * load_vec(k + i + kLanes);
  }
  for (; i + kLanes <= hd; i += kLanes) a += load_vec(q + i) * load_vec(k + i);
  float sum = hsum(a + b);
  for (; i < hd; ++i) sum += q[i] * load(k, i);
  return sum;
}

// acc += w * v over hd values.
template <typename T>
inline void axpy(float* acc, float w, const T* v, int64_t hd) {
  int64_t i = 0;
  for (; i + kLanes <= hd; i += kLanes) {
    vec a = load_vec(acc + i) + w * load_vec(v + i);
    std::memcpy(acc + i, &a, sizeof a);
  }
  for (; i < hd; ++i) acc[i] += w * load(v, i);
}

// Each head's scores [length] become softmax numerators e^(s - max), in place; inv_sum[h] = 1 / their sum (the
// normalization is applied to the output once).
inline void softmax_numerators(float* scores, float* inv_sum, int64_t length, int64_t group) {
  for (int64_t h = 0; h < group; ++h) {
    float* s = scores + h * length;
    float m = s[0];
#pragma omp simd reduction(max : m)
    for (int64_t t = 0; t < length; ++t) m = s[t] > m ? s[t] : m;
    vec sums = {};
    int64_t t = 0;
    for (; t + kLanes <= length; t += kLanes) {
      const vec e = exp_nonpositive(load_vec(s + t) - m);
      store_vec(s + t, e);
      sums += e;
    }
    float sum = hsum(sums);
    for (; t < length; ++t) {
      s[t] = exp_nonpositive(s[t] - m);
      sum += s[t];
    }
    inv_sum[h] = 1.0f / sum;
  }
}

// A block's rows of `width` values (one KV head's, or every head's) as float32: the cache itself for float32 (rows
// `stride` apart), else converted once into `buf` (rows `width` apart), so that each query head reading the rows
// does not convert the same bfloat16 values again.
struct FloatRows {
  const float* p;
  int64_t stride;
};

inline FloatRows as_float(const float* src, int64_t, int64_t, int64_t row_stride, float*) {
  return {src, row_stride};
}

inline FloatRows as_float(const uint16_t* src, int64_t rows, int64_t width, int64_t row_stride, float* buf) {
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < width; c += kLanes) {
      vec v = load_vec(src + r * row_stride + c);
      std::memcpy(buf + r * width + c, &v, sizeof v);
    }
  }
  return {buf, width};
}

// Ask for `count` rows of `width` values ahead of use: blocks lie anywhere in the cache, so the hardware
// prefetcher, which follows one stride, misses the jump to each next block.
template <typename T>
inline void prefetch_rows(const T* rows, int64_t count, int64_t width, int64_t row_stride) {
  constexpr int64_t kLine = 64 / sizeof(T);
  for (int64_t r = 0; r < count; ++r) {
    for (int64_t i = 0; i < width; i += kLine) __builtin_prefetch(rows + r * row_stride + i);
  }
}

// scores[h * length + t0 + r] = query_h . k row r, for the `group` query heads of one KV head (query [group][HD],
// the K rows `k` of one block): a query head's vectors stay in registers while it walks the block.
template <int HD>
inline void score_block(const float* query, FloatRows k, int64_t rows, int64_t group, float* scores, int64_t length,
                        int64_t t0) {
  constexpr int kVecs = HD / kLanes;
  for (int64_t h = 0; h < group; ++h) {
    vec qv[kVecs];
    for (int c = 0; c < kVecs; ++c) qv[c] = load_vec(query + h * HD + c * kLanes);
    float* s = scores + h * length + t0;
    for (int64_t r0 = 0; r0 < rows; r0 += kLanes) {
      const int64_t n = rows - r0 < kLanes ? rows - r0 : kLanes;
      vec a[kLanes];
      for (int64_t r = 0; r < kLanes; ++r) {
        if (r >= n) {
          a[r] = vec{};  // past the context: never read (the slot may hold anything)
          continue;
        }
        const float* kr = k.p + (r0 + r) * k.stride;
        a[r] = qv[0] * load_vec(kr);
        for (int c = 1; c < kVecs; ++c) a[r] += qv[c] * load_vec(kr + c * kLanes);
      }
      const vec sums = hsum16(a);
      std::memcpy(s + r0, &sums, n * sizeof(float));
    }
  }
}

// acc [group][HD] += the block's V rows `v` weighted by the group's softmax numerators scores[h * length + t0 + r].
template <int HD>
inline void accumulate_block(float* acc, FloatRows v, int64_t rows, int64_t group, const float* scores,
                             int64_t length, int64_t t0) {
  constexpr int kVecs = HD / kLanes;
  for (int64_t h = 0; h < group; ++h) {
    vec av[kVecs];
    for (int c = 0; c < kVecs; ++c) av[c] = load_vec(acc + h * HD + c * kLanes);
    const float* s = scores + h * length + t0;
    for (int64_t r = 0; r < rows; ++r) {
      const float* vr = v.p + r * v.stride;
      for (int c = 0; c < kVecs; ++c) av[c] += s[r] * load_vec(vr + c * kLanes);
    }
    std::memcpy(acc + h * HD, av, sizeof av);
  }
}

#if defined(EMBER_BF16)
// ---- Decode on a bfloat16 cache where the CPU has AVX512-BF16: no float32 copy of any block. Scores are bfloat16
// dot products of q as stored (exact in float32, summed in float32; the scale multiplies the sums) with K as stored;
// V is widened in registers, each converted vector meeting every query head of its group, the weighted sums in the
// float path's order. Measured on a 2-core Zen 4, 16 rows x
// 600 tokens x 30 layers, SmolLM2's shapes: the conversion into a buffer was half of attend_row's samples even with
// the blocks in cache (perf), its stores and reloads more work than the sums themselves.

// scores[(h - first) * length + t0 + r] = scale * (q_h . k_r) for the query heads h of KV heads [g0, g1), first =
// g0 * group, over one block's `rows` keys (`block`: the block's first key of KV head 0, `width` values a key).
// q16 [heads][HD] the row's query as stored. The keys are read front to back: per key, each KV head's HD values
// (HD / 32 registers) meet each query head of the group; the 16 partial sums of (head, key) wait in part
// [head][16][16] until a head's 16 keys reduce together (hsum16).
template <int HD>
inline void score_block_bf16(const uint16_t* q16, const uint16_t* block, int64_t rows, int64_t width, int64_t g0,
                             int64_t g1, int64_t group, float scale, float* part, float* scores, int64_t length,
                             int64_t t0, const uint16_t* next) {
  constexpr int kRegs = HD / 32;
  const int64_t first = g0 * group;
  for (int64_t r = 0; r < rows; ++r) {
    if (next) prefetch_rows(next + r * width + g0 * HD, 1, (g1 - g0) * HD, width);
    for (int64_t g = g0; g < g1; ++g) {
      const uint16_t* kr = block + r * width + g * HD;
      __m512bh k[kRegs];
      for (int c = 0; c < kRegs; ++c) k[c] = reinterpret_cast<__m512bh>(_mm512_loadu_si512(kr + 32 * c));
      for (int64_t h = g * group; h < (g + 1) * group; ++h) {
        const uint16_t* qh = q16 + h * HD;
        __m512 a = _mm512_setzero_ps();
        for (int c = 0; c < kRegs; ++c) {
          a = _mm512_dpbf16_ps(a, reinterpret_cast<__m512bh>(_mm512_loadu_si512(qh + 32 * c)), k[c]);
        }
        _mm512_storeu_ps(part + ((h - first) * kLanes + r) * kLanes, a);
      }
    }
  }
  for (int64_t h = 0; h < (g1 - g0) * group; ++h) {
    vec a[kLanes];
    for (int64_t r = 0; r < kLanes; ++r) a[r] = r < rows ? load_vec(part + (h * kLanes + r) * kLanes) : vec{};
    const vec sums = hsum16(a) * scale;
    std::memcpy(scores + h * length + t0, &sums, rows * sizeof(float));
  }
}

// acc[h][0, 64) += sum over the block's rows r of s[h * length + r] * v_r[0, 64), for NH heads whose accumulators
// are hd_stride apart; v is row 0's first value, rows `width` apart. NH x 4 accumulators stay in registers.
template <int NH>
inline void accumulate_heads_bf16(float* acc, int64_t hd_stride, const uint16_t* v, int64_t width, int64_t rows,
                                  const float* s, int64_t length) {
  vec a[NH][4];
  for (int h = 0; h < NH; ++h) {
    for (int c = 0; c < 4; ++c) a[h][c] = load_vec(acc + h * hd_stride + c * kLanes);
  }
  for (int64_t r = 0; r < rows; ++r) {
    vec x[4];
    for (int c = 0; c < 4; ++c) x[c] = load_vec(v + r * width + c * kLanes);
    for (int h = 0; h < NH; ++h) {
      const float w = s[h * length + r];
      for (int c = 0; c < 4; ++c) a[h][c] += w * x[c];
    }
  }
  for (int h = 0; h < NH; ++h) {
    for (int c = 0; c < 4; ++c) std::memcpy(acc + h * hd_stride + c * kLanes, &a[h][c], sizeof(vec));
  }
}

// acc[(h - first)][HD] += the block's V rows weighted by scores[(h - first) * length + t0 + r], for the query heads
// of KV heads [g0, g1): per KV head, 64 dimensions and up to 6 heads at a time (24 accumulators).
template <int HD>
inline void accumulate_block_bf16(float* acc, const uint16_t* block, int64_t rows, int64_t width, int64_t g0,
                                  int64_t g1, int64_t group, const float* scores, int64_t length, int64_t t0,
                                  const uint16_t* next) {
  static_assert(HD % 64 == 0, "64 dimensions a pass");
  if (next) prefetch_rows(next + g0 * HD, rows, (g1 - g0) * HD, width);
  for (int64_t g = g0; g < g1; ++g) {
    for (int64_t h0 = 0; h0 < group; h0 += 6) {
      const int64_t nh = std::min<int64_t>(6, group - h0), h = (g - g0) * group + h0;
      for (int64_t d0 = 0; d0 < HD; d0 += 64) {
        float* a = acc + h * HD + d0;
        const uint16_t* v = block + g * HD + d0;
        const float* s = scores + h * length + t0;
        switch (nh) {
          case 1: accumulate_heads_bf16<1>(a, HD, v, width, rows, s, length); break;
          case 2: accumulate_heads_bf16<2>(a, HD, v, width, rows, s, length); break;
          case 3: accumulate_heads_bf16<3>(a, HD, v, width, rows, s, length); break;
          case 4: accumulate_heads_bf16<4>(a, HD, v, width, rows, s, length); break;
          case 5: accumulate_heads_bf16<5>(a, HD, v, width, rows, s, length); break;
          default: accumulate_heads_bf16<6>(a, HD, v, width, rows, s, length); break;
        }
      }
    }
  }
}

// The query heads of KV heads [g0, g1) of one row (acc, inv_sum, scores for those heads only; part [heads][16][16]):
// both passes block by block, each block's keys (values) of those KV heads read front to back.
template <int HD>
void attend_bf16(const uint16_t* q16, float* acc, float* inv_sum, float* scores, float* part, const uint16_t* k_cache,
                 const uint16_t* v_cache, const int32_t* table, int64_t length, int64_t kv_heads, int64_t g0,
                 int64_t g1, int64_t group, int64_t block_size, int64_t block_stride, float scale) {
  const int64_t width = kv_heads * HD, heads = (g1 - g0) * group;
  const int64_t num_blocks = (length + block_size - 1) / block_size;
  // The block after j where it does not follow j in memory (blocks lie anywhere in the cache, and the hardware
  // prefetcher follows one stride): its rows are asked for while block j is computed. Measured, 16 rows x 600
  // tokens x 30 layers, SmolLM2's shapes: blocks scattered 23.5 -> 20.7 ms; asking for adjacent blocks too made
  // the contiguous case slower (13-15 -> 15.5 ms), and asking 2 blocks ahead or a whole block at once no better.
  auto ahead = [&](const uint16_t* cache, int64_t j) -> const uint16_t* {
    if (j + 1 >= num_blocks || table[j + 1] == table[j] + 1) return nullptr;
    return cache + table[j + 1] * block_stride;
  };
  for (int64_t j = 0; j < num_blocks; ++j) {
    const int64_t t0 = j * block_size, rows = std::min<int64_t>(length - t0, block_size);
    for (int64_t r0 = 0; r0 < rows; r0 += kLanes) {
      const uint16_t* next = ahead(k_cache, j);
      score_block_bf16<HD>(q16, k_cache + table[j] * block_stride + r0 * width, std::min<int64_t>(kLanes, rows - r0),
                           width, g0, g1, group, scale, part, scores, length, t0 + r0,
                           next ? next + r0 * width : nullptr);
    }
  }
  softmax_numerators(scores, inv_sum, length, heads);
  std::fill(acc, acc + heads * HD, 0.0f);
  for (int64_t j = 0; j < num_blocks; ++j) {
    const int64_t t0 = j * block_size, rows = std::min<int64_t>(length - t0, block_size);
    accumulate_block_bf16<HD>(acc, v_cache + table[j] * block_stride, rows, width, g0, g1, group, scores, length,
                              t0, ahead(v_cache, j));
  }
}
#endif

// One row's attention over every KV head at once, head_dim HD known at compile time (query, acc [heads][HD],
// scores [heads][length], rows_buf [block_size][kv_heads * HD]). A block's K (then V) rows of all heads are one
// contiguous run of the cache, read front to back and converted once, where one KV head's rows are 2-4 cache lines
// every kv_heads * HD values. Measured on a 2-core Zen 4, SmolLM2's shapes (9 heads, 3 KV heads, head_dim 64),
// 16 rows x 600 tokens, 30 layers, bfloat16: 24-30 ms a step with a task per (row, KV head), 20-22 ms by rows. Still
// far under the memory's bandwidth (10-11 GB/s of 33): the loads of each block stall (perf). Asking for the next
// blocks ahead (into L1 or L2, 1 to 8 blocks ahead) and 2 MB pages for the cache changed it by under 10 %: not
// kept.
// A bfloat16 cache on a CPU with AVX512-BF16 takes attend_bf16 instead (no converted copy: 1.2-1.4x faster there,
// benchmarks/paged_attention.py).
template <typename T, int HD>
void attend_row(const float* query, float* acc, float* inv_sum, float* scores, float* rows_buf, const T* k_cache,
                const T* v_cache, const int32_t* table, int64_t length, int64_t kv_heads, int64_t group,
                int64_t block_size, int64_t block_stride) {
  const int64_t width = kv_heads * HD, heads = kv_heads * group;
  const int64_t num_blocks = (length + block_size - 1) / block_size;
  for (int pass = 0; pass < 2; ++pass) {
    const T* cache = pass == 0 ? k_cache : v_cache;
    if (pass == 1) {
      softmax_numerators(scores, inv_sum, length, heads);
      std::fill(acc, acc + heads * HD, 0.0f);
    }
    for (int64_t j = 0; j < num_blocks; ++j) {
      const int64_t t0 = j * block_size;
      const int64_t rows = length - t0 < block_size ? length - t0 : block_size;
      const FloatRows all = as_float(cache + table[j] * block_stride, rows, width, width, rows_buf);
      for (int64_t g = 0; g < kv_heads; ++g) {
        const FloatRows head{all.p + g * HD, all.stride};
        if (pass == 0) {
          score_block<HD>(query + g * group * HD, head, rows, group, scores + g * group * length, length, t0);
        } else {
          accumulate_block<HD>(acc + g * group * HD, head, rows, group, scores + g * group * length, length, t0);
        }
      }
    }
  }
}

// One (row, KV head) task with head_dim HD known at compile time (the rows of a range that holds only part of a
// row's heads).
template <typename T, int HD>
void attend_fixed(const float* query, float* acc, float* inv_sum, float* scores, float* rows_buf, const T* k_cache,
                  const T* v_cache, const int32_t* table, int64_t length, int64_t group, int64_t block_size,
                  int64_t row_stride, int64_t block_stride, int64_t g) {
  const int64_t num_blocks = (length + block_size - 1) / block_size;
  for (int64_t j = 0; j < num_blocks; ++j) {
    const int64_t t0 = j * block_size;
    const int64_t rows = length - t0 < block_size ? length - t0 : block_size;
    if (j + 1 < num_blocks) prefetch_rows(k_cache + table[j + 1] * block_stride + g * HD, block_size, HD, row_stride);
    const FloatRows k = as_float(k_cache + table[j] * block_stride + g * HD, rows, HD, row_stride, rows_buf);
    score_block<HD>(query, k, rows, group, scores, length, t0);
  }
  softmax_numerators(scores, inv_sum, length, group);
  std::fill(acc, acc + group * HD, 0.0f);
  for (int64_t j = 0; j < num_blocks; ++j) {
    const int64_t t0 = j * block_size;
    const int64_t rows = length - t0 < block_size ? length - t0 : block_size;
    if (j + 1 < num_blocks) prefetch_rows(v_cache + table[j + 1] * block_stride + g * HD, block_size, HD, row_stride);
    const FloatRows v = as_float(v_cache + table[j] * block_stride + g * HD, rows, HD, row_stride, rows_buf);
    accumulate_block<HD>(acc, v, rows, group, scores, length, t0);
  }
}

// Any head_dim: one K or V row at a time, for every head of the group.
template <typename T>
void attend_any(const float* query, float* acc, float* inv_sum, float* scores, const T* k_cache, const T* v_cache,
                const int32_t* table, int64_t length, int64_t group, int64_t head_dim, int64_t block_size,
                int64_t row_stride, int64_t block_stride, int64_t g) {
  const int64_t num_blocks = (length + block_size - 1) / block_size;
  for (int64_t j = 0, t = 0; j < num_blocks; ++j) {
    const T* k = k_cache + table[j] * block_stride + g * head_dim;
    for (int64_t off = 0; off < block_size && t < length; ++off, ++t, k += row_stride) {
      for (int64_t h = 0; h < group; ++h) scores[h * length + t] = dot(query + h * head_dim, k, head_dim);
    }
  }
  softmax_numerators(scores, inv_sum, length, group);
  std::fill(acc, acc + group * head_dim, 0.0f);
  for (int64_t j = 0, t = 0; j < num_blocks; ++j) {
    const T* v = v_cache + table[j] * block_stride + g * head_dim;
    for (int64_t off = 0; off < block_size && t < length; ++off, ++t, v += row_stride) {
      for (int64_t h = 0; h < group; ++h) axpy(acc + h * head_dim, scores[h * length + t], v, head_dim);
    }
  }
}

// Tasks [task_begin, task_end) of paged_decode: task = row * kv_heads + KV head. Where the range holds all of a
// row's KV heads and head_dim is 64 or 128, they run as one (attend_row, or attend_bf16 over every KV head: the
// row's blocks read whole); the same sums in the same order as one task per head, so the output does not depend on
// how the range was cut.
template <typename T>
void paged_decode_part(T* out, const T* q, int64_t q_stride, const T* k_cache, const T* v_cache,
                       const int32_t* block_table, const int32_t* context_lens, int64_t heads, int64_t kv_heads,
                       int64_t head_dim, int64_t block_size, int64_t max_blocks, float scale, int64_t task_begin,
                       int64_t task_end) {
  const int64_t group = heads / kv_heads;
  const int64_t row_stride = kv_heads * head_dim;  // between consecutive tokens in the cache
  const int64_t block_stride = block_size * row_stride;
  const bool fixed = head_dim == 64 || head_dim == 128;
#if defined(EMBER_BF16)
  // bfloat16 dot products (attend_bf16) for a bfloat16 cache; part holds their partial sums.
  constexpr bool dots = std::is_same_v<T, uint16_t>;
#else
  constexpr bool dots = false;
#endif
  // The converting kernels' scaled float32 query and converted block, allocated only where they run.
  const bool converts = !(dots && fixed);
  std::vector<float> query(converts ? heads * head_dim : 0), acc(heads * head_dim), inv_sum(heads), scores;
  std::vector<float> rows_buf(converts ? block_size * row_stride : 0);
  std::vector<float> part(converts ? 0 : heads * kLanes * kLanes);
  for (int64_t task = task_begin; task < task_end;) {
    const int64_t b = task / kv_heads, g = task % kv_heads;
    const bool whole = fixed && g == 0 && task + kv_heads <= task_end;
    const int64_t first_head = whole ? 0 : g * group, count = whole ? heads : group;
    const int64_t length = context_lens[b];
    const int32_t* table = block_table + b * max_blocks;
    scores.resize(count * length);
    if (!converts) {
#if defined(EMBER_BF16)
      if constexpr (std::is_same_v<T, uint16_t>) {
        const T* q16 = q + b * q_stride;  // the row's every head: score_block_bf16 indexes it by absolute head
        const int64_t g0 = whole ? 0 : g, g1 = whole ? kv_heads : g + 1;
        if (head_dim == 64) {
          attend_bf16<64>(q16, acc.data(), inv_sum.data(), scores.data(), part.data(), k_cache, v_cache, table,
                          length, kv_heads, g0, g1, group, block_size, block_stride, scale);
        } else {
          attend_bf16<128>(q16, acc.data(), inv_sum.data(), scores.data(), part.data(), k_cache, v_cache, table,
                           length, kv_heads, g0, g1, group, block_size, block_stride, scale);
        }
      }
#endif
    } else {
      for (int64_t h = 0; h < count; ++h) {
        const T* src = q + b * q_stride + (first_head + h) * head_dim;
        for (int64_t i = 0; i < head_dim; ++i) query[h * head_dim + i] = load(src, i) * scale;
      }
      if (whole && head_dim == 64) {
        attend_row<T, 64>(query.data(), acc.data(), inv_sum.data(), scores.data(), rows_buf.data(), k_cache,
                          v_cache, table, length, kv_heads, group, block_size, block_stride);
      } else if (whole) {
        attend_row<T, 128>(query.data(), acc.data(), inv_sum.data(), scores.data(), rows_buf.data(), k_cache,
                           v_cache, table, length, kv_heads, group, block_size, block_stride);
      } else if (head_dim == 64) {
        attend_fixed<T, 64>(query.data(), acc.data(), inv_sum.data(), scores.data(), rows_buf.data(), k_cache,
                            v_cache, table, length, group, block_size, row_stride, block_stride, g);
      } else if (head_dim == 128) {
        attend_fixed<T, 128>(query.data(), acc.data(), inv_sum.data(), scores.data(), rows_buf.data(), k_cache,
                             v_cache, table, length, group, block_size, row_stride, block_stride, g);
      } else {
        attend_any(query.data(), acc.data(), inv_sum.data(), scores.data(), k_cache, v_cache, table, length, group,
                   head_dim, block_size, row_stride, block_stride, g);
      }
    }
    for (int64_t h = 0; h < count; ++h) {
      T* dst = out + (b * heads + first_head + h) * head_dim;
      for (int64_t i = 0; i < head_dim; ++i) store(dst, i, acc[h * head_dim + i] * inv_sum[h]);
    }
    task += whole ? kv_heads : 1;
  }
}

template <typename T>
void paged_decode(T* out, const T* q, int64_t q_stride, const T* k_cache, const T* v_cache,
                  const int32_t* block_table, const int32_t* context_lens, int64_t batch, int64_t heads,
                  int64_t kv_heads, int64_t head_dim, int64_t block_size, int64_t max_blocks, float scale) {
  at::parallel_for(0, batch * kv_heads, 1, [&](int64_t begin, int64_t end) {
    paged_decode_part(out, q, q_stride, k_cache, v_cache, block_table, context_lens, heads, kv_heads, head_dim,
                      block_size, max_blocks, scale, begin, end);
  });
}

// ---- Prefill: a chunk of S query tokens at positions start .. start + S - 1 over the context 0 .. start + S - 1 (the
// chunk's own K/V already in the cache), causal. Lanes run over 16 query positions of one head, not over head_dim:
// a score is then one FMA per dimension with the key's value broadcast, a key's weight multiplies V the same way,
// and the online softmax's max and sum are lane-wise, with no horizontal sums anywhere. A task is the query heads of
// one KV head and 16 positions; it streams the keys in chunks of 16, converted to float32 once per chunk for all of
// those heads (where the CPU has AVX512-BF16 the scores are bfloat16 dot products on K as stored, and only V is
// converted: prefill_scores_bf16).
constexpr int kPrefillLanes = kLanes;

// Keys [t0, t0 + count) of KV head g from the paged cache into rows [count, head_dim] of float32; zero past count
// (a chunk's unwritten tail is never read: its slots may hold anything, NaN included).
template <typename T>
inline void gather_rows(float* dst, const T* cache, const int64_t* blocks, int64_t t0, int64_t count,
                        int64_t head_dim, int64_t block_size, int64_t row_stride, int64_t block_stride, int64_t g) {
  for (int64_t r = 0; r < kPrefillLanes; ++r) {
    float* d = dst + r * head_dim;
    if (r >= count) {
      std::fill(d, d + head_dim, 0.0f);
      continue;
    }
    const int64_t t = t0 + r;
    const T* src = cache + blocks[t / block_size] * block_stride + (t % block_size) * row_stride + g * head_dim;
    int64_t i = 0;
    for (; i + kLanes <= head_dim; i += kLanes) store_vec(d + i, load_vec(src + i));
    for (; i < head_dim; ++i) d[i] = load(src, i);
  }
}

#if defined(EMBER_BF16)
// s[j] = scale * (q . key t0 + j) for the 16 query lanes of qp ([head_dim / 2][16] pairs of bfloat16 q), keys read
// in place from the bfloat16 cache; keys past count get the last key's score (the caller masks them).
inline void prefill_scores_bf16(vec* s, const uint32_t* qp, const uint16_t* k_cache, const int64_t* blocks, int64_t t0,
                                int64_t count, int64_t head_dim, int64_t block_size, int64_t row_stride,
                                int64_t block_stride, int64_t g, float scale) {
  const uint16_t* key[kPrefillLanes];
  for (int j = 0; j < kPrefillLanes; ++j) {
    const int64_t t = t0 + std::min<int64_t>(j, count - 1);
    key[j] = k_cache + blocks[t / block_size] * block_stride + (t % block_size) * row_stride + g * head_dim;
  }
  __m512 a[kPrefillLanes];
  for (int j = 0; j < kPrefillLanes; ++j) a[j] = _mm512_setzero_ps();
  for (int64_t p = 0; p < head_dim / 2; ++p) {
    const __m512bh qv = reinterpret_cast<__m512bh>(_mm512_loadu_si512(qp + p * kPrefillLanes));
#pragma GCC unroll 16
    for (int j = 0; j < kPrefillLanes; ++j) {
      int32_t pair;
      std::memcpy(&pair, key[j] + 2 * p, 4);
      a[j] = _mm512_dpbf16_ps(a[j], qv, reinterpret_cast<__m512bh>(_mm512_set1_epi32(pair)));
    }
  }
  const __m512 sc = _mm512_set1_ps(scale);
  for (int j = 0; j < kPrefillLanes; ++j) {
    const __m512 v = _mm512_mul_ps(a[j], sc);
    std::memcpy(&s[j], &v, sizeof v);
  }
}
#endif

// One task: the query heads of KV head g (g * group .. g * group + group - 1), query rows [r0, r0 + n) (n <= 16) of
// the chunk. qt/acc [group][head_dim][16], k/v [16][head_dim]. Each chunk of 16 keys is gathered and converted
// once for the group's heads: per head and chunk the scores and the weighted values take 2 x 16 x head_dim FMAs,
// and the gather of K and V as many conversions and stores, so a task per head spent about as long gathering as
// computing (SmolLM2-135M's 9 heads over 3 KV heads: 2.5 -> 1.8 ms a layer for a 512-token chunk).
template <typename T>
void prefill_task(T* out, const T* q, int64_t q_stride, const T* k_cache, const T* v_cache, const int64_t* blocks,
                  int64_t start, int64_t heads, int64_t kv_heads, int64_t head_dim, int64_t block_size, float scale,
                  int64_t g, int64_t r0, int64_t n, float* qt, float* acc, float* k, float* v, float* m, float* sum) {
  const int64_t group = heads / kv_heads;
  const int64_t row_stride = kv_heads * head_dim, block_stride = block_size * row_stride;
  const int64_t tile = head_dim * kPrefillLanes;
#if defined(EMBER_BF16)
  // bfloat16 q and K with an even head_dim: the scores are bfloat16 dot products (vdpbf16ps: per 16 query lanes, a
  // pair of dimensions of each against the same pair of one key's, broadcast straight from the cache), 16 lanes x 2
  // products an instruction where the float32 FMA does 16, and no conversion of K at all. The products of two
  // bfloat16 are exact in float32; q enters unscaled (q * scale would round again) and the scale multiplies the sums.
  constexpr bool kPairs = std::is_same_v<T, uint16_t>;
  const bool pairs = kPairs && head_dim % 2 == 0;
#else
  constexpr bool pairs = false;
#endif
  // q per head, lanes over query rows: float32 q * scale in qt [group][head_dim][16], or for the pairs its bfloat16
  // pairs as stored, [group][head_dim / 2][16] dwords in the same buffer.
  uint32_t* qp = reinterpret_cast<uint32_t*>(qt);
  // Lane l: query row r0 + l at position start + r0 + l (lanes past n repeat the last row; never stored).
  alignas(64) float pos_f[kPrefillLanes];
  for (int l = 0; l < kPrefillLanes; ++l) {
    const int64_t r = r0 + std::min<int64_t>(l, n - 1);
    pos_f[l] = static_cast<float>(start + r);
    for (int64_t hg = 0; hg < group; ++hg) {
      const T* src = q + r * q_stride + (g * group + hg) * head_dim;
      if (pairs) {
        const int64_t half = head_dim / 2;
        for (int64_t p = 0; p < half; ++p) std::memcpy(qp + (hg * half + p) * kPrefillLanes + l, src + 2 * p, 4);
      } else {
        for (int64_t i = 0; i < head_dim; ++i) qt[hg * tile + i * kPrefillLanes + l] = load(src, i) * scale;
      }
    }
  }
  const vec pos = load_vec(pos_f);
  std::fill(acc, acc + group * tile, 0.0f);
  // The online softmax's running max and sum per head, [group][16] (lanes: queries).
  std::fill(m, m + group * kPrefillLanes, -INFINITY);
  std::fill(sum, sum + group * kPrefillLanes, 0.0f);
  const int64_t keys = start + r0 + n;  // the last lane's context
  for (int64_t t0 = 0; t0 < keys; t0 += kPrefillLanes) {
    const int64_t count = std::min<int64_t>(kPrefillLanes, keys - t0);
    if (!pairs) gather_rows(k, k_cache, blocks, t0, count, head_dim, block_size, row_stride, block_stride, g);
    gather_rows(v, v_cache, blocks, t0, count, head_dim, block_size, row_stride, block_stride, g);
    for (int64_t hg = 0; hg < group; ++hg) {
      float* ah = acc + hg * tile;
      // s[j] (lanes: queries) = q . key t0 + j.
      vec s[kPrefillLanes];
#if defined(EMBER_BF16)
      if constexpr (kPairs) {
        if (pairs) {
          prefill_scores_bf16(s, qp + hg * (head_dim / 2) * kPrefillLanes, k_cache, blocks, t0, count, head_dim,
                              block_size, row_stride, block_stride, g, scale);
        }
      }
#endif
      if (!pairs) {
        const float* qh = qt + hg * tile;
        for (int j = 0; j < kPrefillLanes; ++j) s[j] = vec{};
        for (int64_t i = 0; i < head_dim; ++i) {
          const vec qi = load_vec(qh + i * kPrefillLanes);
#pragma GCC unroll 16
          for (int j = 0; j < kPrefillLanes; ++j) s[j] += qi * k[j * head_dim + i];
        }
      }
      // Causal: key t0 + j is seen by the lanes at positions >= t0 + j (and never past count).
      vec chunk_max = load_vec(m + hg * kPrefillLanes);
      for (int j = 0; j < kPrefillLanes; ++j) {
        const float key = static_cast<float>(t0 + j);
        s[j] = j < count ? (pos >= key ? s[j] : vec{} - INFINITY) : vec{} - INFINITY;
        chunk_max = chunk_max > s[j] ? chunk_max : s[j];
      }
      // Every lane sees key 0, so after the first chunk its max is finite: the rescale below never meets inf - inf.
      const vec alpha = exp_nonpositive(load_vec(m + hg * kPrefillLanes) - chunk_max);
      store_vec(m + hg * kPrefillLanes, chunk_max);
      vec total = load_vec(sum + hg * kPrefillLanes) * alpha;
      for (int j = 0; j < kPrefillLanes; ++j) {
        const vec p = s[j] == vec{} - INFINITY ? vec{} : exp_nonpositive(s[j] - chunk_max);
        s[j] = p;
        total += p;
      }
      store_vec(sum + hg * kPrefillLanes, total);
      // acc[i] (lanes: queries) = alpha acc[i] + sum_j p_j v[j][i].
      for (int64_t i = 0; i < head_dim; ++i) {
        vec a = load_vec(ah + i * kPrefillLanes) * alpha;
#pragma GCC unroll 16
        for (int j = 0; j < kPrefillLanes; ++j) a += s[j] * v[j * head_dim + i];
        store_vec(ah + i * kPrefillLanes, a);
      }
    }
  }
  for (int64_t hg = 0; hg < group; ++hg) {
    alignas(64) float inv[kPrefillLanes];
    store_vec(inv, 1.0f / load_vec(sum + hg * kPrefillLanes));
    const int64_t h = g * group + hg;
    for (int64_t l = 0; l < n; ++l) {
      T* dst = out + ((r0 + l) * heads + h) * head_dim;
      for (int64_t i = 0; i < head_dim; ++i) store(dst, i, acc[hg * tile + i * kPrefillLanes + l] * inv[l]);
    }
  }
}

// out [S, H, hd] (contiguous) for q [S, H, hd] (rows q_stride apart): query row r at position start + r attends
// positions 0 .. start + r, whose K/V are in the cache's blocks `blocks` (position t in blocks[t / block_size]).
template <typename T>
void paged_prefill(T* out, const T* q, int64_t q_stride, const T* k_cache, const T* v_cache, const int64_t* blocks,
                   int64_t start, int64_t rows, int64_t heads, int64_t kv_heads, int64_t head_dim, int64_t block_size,
                   float scale) {
  const int64_t tiles = (rows + kPrefillLanes - 1) / kPrefillLanes;
  // Later tiles see more keys: tasks in the order first tile, last tile, second, second to last, ... so that the
  // contiguous ranges parallel_for hands each thread cost about the same.
  const int64_t tasks = tiles * kv_heads, group = heads / kv_heads;
  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> qt(group * head_dim * kPrefillLanes), acc(group * head_dim * kPrefillLanes);
    std::vector<float> k(kPrefillLanes * head_dim), v(kPrefillLanes * head_dim);
    std::vector<float> m(group * kPrefillLanes), sum(group * kPrefillLanes);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t order = task / kv_heads, g = task % kv_heads;
      const int64_t tile = order % 2 == 0 ? order / 2 : tiles - 1 - order / 2;
      const int64_t r0 = tile * kPrefillLanes;
      prefill_task(out, q, q_stride, k_cache, v_cache, blocks, start, heads, kv_heads, head_dim, block_size, scale,
                   g, r0, std::min<int64_t>(kPrefillLanes, rows - r0), qt.data(), acc.data(), k.data(), v.data(),
                   m.data(), sum.data());
    }
  });
}
