// Paged-attention decode for one instruction set. Included once per ISA by paged_attention.cpp, inside a
// namespace and a `#pragma GCC target` region: the loops below are plain C++ that the compiler vectorizes for that
// target (`omp simd` lets it reorder the float reductions, which it may not do on its own; built with
// -fopenmp-simd, no OpenMP runtime involved), and the dispatcher picks the widest variant the CPU runs at call
// time, never at build time.
//
// Layouts (row-major):
//   q, out        [B, H, hd]
//   k/v cache     [num_blocks, block_size, KV, hd]
//   block_table   [B, max_blocks] int32, context_lens [B] int32
// Query head h reads KV head h / (H / KV) (grouped-query attention); each task is one (row, KV head) pair, so a
// K/V row is read once for all the query heads of its group.

inline float load(const float* p, int64_t i) { return p[i]; }

inline float load(const uint16_t* p, int64_t i) {
  // bfloat16 is the top half of a float32.
  uint32_t bits = static_cast<uint32_t>(p[i]) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

inline void store(float* p, int64_t i, float x) { p[i] = x; }

inline void store(uint16_t* p, int64_t i, float x) {
  uint32_t bits;
  std::memcpy(&bits, &x, sizeof bits);
  // Round to nearest even, as torch does (inputs here are finite).
  bits += 0x7FFF + ((bits >> 16) & 1);
  p[i] = static_cast<uint16_t>(bits >> 16);
}

// e^x for x <= 0 (scores minus their maximum), to about 2e-7 relative: x = n ln2 + r with |r| <= ln2 / 2,
// e^r by its Taylor polynomial, 2^n from the exponent bits. Branch-free, so a loop over it vectorizes.
inline float exp_nonpositive(float x) {
  x = x < -87.0f ? -87.0f : x;
  const float t = x * 1.4426950408889634f;
  const int n = static_cast<int>(t - 0.5f);  // truncation toward zero of t - 0.5: nearest integer for t <= 0
  const float r = x - static_cast<float>(n) * 0.6931471805599453f;
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const uint32_t bits = static_cast<uint32_t>(n + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

template <typename T>
inline float dot(const float* q, const T* k, int64_t hd) {
  float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < hd; ++i) sum += q[i] * load(k, i);
  return sum;
}

template <typename T>
inline void axpy(float* acc, float a, const T* v, int64_t hd) {
#pragma omp simd
  for (int64_t i = 0; i < hd; ++i) acc[i] += a * load(v, i);
}

template <typename T>
void paged_decode(T* out, const T* q, const T* k_cache, const T* v_cache, const int32_t* block_table,
                  const int32_t* context_lens, int64_t batch, int64_t heads, int64_t kv_heads, int64_t head_dim,
                  int64_t block_size, int64_t max_blocks, float scale) {
  const int64_t group = heads / kv_heads;
  const int64_t row_stride = kv_heads * head_dim;  // between consecutive tokens in the cache
  at::parallel_for(0, batch * kv_heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> query(group * head_dim), acc(group * head_dim), scores;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / kv_heads, g = task % kv_heads;
      const int64_t length = context_lens[b];
      const int32_t* table = block_table + b * max_blocks;
      for (int64_t h = 0; h < group; ++h) {
        const T* src = q + (b * heads + g * group + h) * head_dim;
        for (int64_t i = 0; i < head_dim; ++i) query[h * head_dim + i] = load(src, i) * scale;
      }
      scores.resize(group * length);
      // Pass 1: every score of the group's heads, one K row at a time.
      for (int64_t t = 0; t < length; ++t) {
        const int64_t slot = static_cast<int64_t>(table[t / block_size]) * block_size + t % block_size;
        const T* k = k_cache + slot * row_stride + g * head_dim;
        for (int64_t h = 0; h < group; ++h) scores[h * length + t] = dot(&query[h * head_dim], k, head_dim);
      }
      // Softmax numerators in place; the normalization is applied to the output once.
      std::vector<float> inv_sum(group);
      for (int64_t h = 0; h < group; ++h) {
        float* s = &scores[h * length];
        float m = s[0];
#pragma omp simd reduction(max : m)
        for (int64_t t = 0; t < length; ++t) m = s[t] > m ? s[t] : m;
        float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
        for (int64_t t = 0; t < length; ++t) {
          s[t] = exp_nonpositive(s[t] - m);
          sum += s[t];
        }
        inv_sum[h] = 1.0f / sum;
      }
      // Pass 2: the weighted sum of V rows.
      std::fill(acc.begin(), acc.end(), 0.0f);
      for (int64_t t = 0; t < length; ++t) {
        const int64_t slot = static_cast<int64_t>(table[t / block_size]) * block_size + t % block_size;
        const T* v = v_cache + slot * row_stride + g * head_dim;
        for (int64_t h = 0; h < group; ++h) axpy(&acc[h * head_dim], scores[h * length + t], v, head_dim);
      }
      for (int64_t h = 0; h < group; ++h) {
        T* dst = out + (b * heads + g * group + h) * head_dim;
        for (int64_t i = 0; i < head_dim; ++i) store(dst, i, acc[h * head_dim + i] * inv_sum[h]);
      }
    }
  });
}
