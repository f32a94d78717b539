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

// A block's rows of one KV head as float32: the cache itself for float32 (rows `stride` apart), else converted
// once into `buf` (rows HD apart), so the group's heads do not each convert the same bfloat16 rows again.
struct FloatRows {
  const float* p;
  int64_t stride;
};

template <int HD>
inline FloatRows as_float(const float* src, int64_t, int64_t row_stride, float*) {
  return {src, row_stride};
}

template <int HD>
inline FloatRows as_float(const uint16_t* src, int64_t rows, int64_t row_stride, float* buf) {
  constexpr int kVecs = HD / kLanes;
  for (int64_t r = 0; r < rows; ++r) {
    for (int c = 0; c < kVecs; ++c) {
      vec v = load_vec(src + r * row_stride + c * kLanes);
      std::memcpy(buf + r * HD + c * kLanes, &v, sizeof v);
    }
  }
  return {buf, HD};
}

// Ask for a block's rows of one KV head ahead of use: blocks lie anywhere in the cache, so the hardware prefetcher,
// which follows one stride, misses the jump to each next block.
template <typename T, int HD>
inline void prefetch_block(const T* rows, int64_t count, int64_t row_stride) {
  constexpr int64_t kLine = 64 / sizeof(T);
  for (int64_t r = 0; r < count; ++r) {
    for (int64_t i = 0; i < HD; i += kLine) __builtin_prefetch(rows + r * row_stride + i);
  }
}

// One (row, KV head) task with head_dim HD known at compile time: a query head's vectors and its running sum stay
// in registers while it walks a block of K or V rows (the block stays in L1 for the group's other heads).
template <typename T, int HD>
void attend_fixed(const float* query, float* acc, float* inv_sum, float* scores, float* rows_buf, const T* k_cache,
                  const T* v_cache, const int32_t* table, int64_t length, int64_t group, int64_t block_size,
                  int64_t row_stride, int64_t block_stride, int64_t g) {
  constexpr int kVecs = HD / kLanes;
  const int64_t num_blocks = (length + block_size - 1) / block_size;
  for (int64_t j = 0; j < num_blocks; ++j) {
    const int64_t t0 = j * block_size;
    const int64_t rows = length - t0 < block_size ? length - t0 : block_size;
    if (j + 1 < num_blocks) prefetch_block<T, HD>(k_cache + table[j + 1] * block_stride + g * HD, block_size, row_stride);
    const FloatRows k = as_float<HD>(k_cache + table[j] * block_stride + g * HD, rows, row_stride, rows_buf);
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
  softmax_numerators(scores, inv_sum, length, group);
  std::fill(acc, acc + group * HD, 0.0f);
  for (int64_t j = 0; j < num_blocks; ++j) {
    const int64_t t0 = j * block_size;
    const int64_t rows = length - t0 < block_size ? length - t0 : block_size;
    if (j + 1 < num_blocks) prefetch_block<T, HD>(v_cache + table[j + 1] * block_stride + g * HD, block_size, row_stride);
    const FloatRows v = as_float<HD>(v_cache + table[j] * block_stride + g * HD, rows, row_stride, rows_buf);
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

// Tasks [task_begin, task_end) of paged_decode: task = row * kv_heads + KV head.
template <typename T>
void paged_decode_part(T* out, const T* q, int64_t q_stride, const T* k_cache, const T* v_cache,
                       const int32_t* block_table, const int32_t* context_lens, int64_t heads, int64_t kv_heads,
                       int64_t head_dim, int64_t block_size, int64_t max_blocks, float scale, int64_t task_begin,
                       int64_t task_end) {
  const int64_t group = heads / kv_heads;
  const int64_t row_stride = kv_heads * head_dim;  // between consecutive tokens in the cache
  const int64_t block_stride = block_size * row_stride;
  std::vector<float> query(group * head_dim), acc(group * head_dim), inv_sum(group), scores;
  std::vector<float> rows_buf(block_size * head_dim);
  for (int64_t task = task_begin; task < task_end; ++task) {
    const int64_t b = task / kv_heads, g = task % kv_heads;
    const int64_t length = context_lens[b];
    const int32_t* table = block_table + b * max_blocks;
    for (int64_t h = 0; h < group; ++h) {
      const T* src = q + b * q_stride + (g * group + h) * head_dim;
      for (int64_t i = 0; i < head_dim; ++i) query[h * head_dim + i] = load(src, i) * scale;
    }
    scores.resize(group * length);
    if (head_dim == 64) {
      attend_fixed<T, 64>(query.data(), acc.data(), inv_sum.data(), scores.data(), rows_buf.data(), k_cache,
                          v_cache, table, length, group, block_size, row_stride, block_stride, g);
    } else if (head_dim == 128) {
      attend_fixed<T, 128>(query.data(), acc.data(), inv_sum.data(), scores.data(), rows_buf.data(), k_cache,
                           v_cache, table, length, group, block_size, row_stride, block_stride, g);
    } else {
      attend_any(query.data(), acc.data(), inv_sum.data(), scores.data(), k_cache, v_cache, table, length, group,
                 head_dim, block_size, row_stride, block_stride, g);
    }
    for (int64_t h = 0; h < group; ++h) {
      T* dst = out + (b * heads + g * group + h) * head_dim;
      for (int64_t i = 0; i < head_dim; ++i) store(dst, i, acc[h * head_dim + i] * inv_sum[h]);
    }
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
