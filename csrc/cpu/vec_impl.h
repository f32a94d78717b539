// Vector primitives of the CPU kernels, for one instruction set. Included (with no include guard, on purpose) at the
// top of each kernel's *_impl.h, inside that file's per-ISA namespace and `#pragma GCC target` region: GCC's generic
// vectors of 16 floats lower to one AVX-512 register, two AVX2 registers or four SSE ones.

constexpr int kLanes = 16;
typedef float vec __attribute__((vector_size(kLanes * sizeof(float))));
typedef float half_vec __attribute__((vector_size(kLanes / 2 * sizeof(float))));
typedef uint16_t vec_u16 __attribute__((vector_size(kLanes * sizeof(uint16_t))));
typedef uint32_t vec_u32 __attribute__((vector_size(kLanes * sizeof(uint32_t))));
typedef int32_t vec_i32 __attribute__((vector_size(kLanes * sizeof(int32_t))));

inline float load(const float* p, int64_t i) { return p[i]; }

inline float load(const uint16_t* p, int64_t i) {
  // bfloat16 is the top half of a float32.
  uint32_t bits = static_cast<uint32_t>(p[i]) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

inline vec load_vec(const float* p) {
  vec v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

inline vec load_vec(const uint16_t* p) {
#if defined(EMBER_AVX512)
  // GCC splits the generic conversion below in two halves; one widening load does it here.
  __m512i w = _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))), 16);
  return reinterpret_cast<vec>(w);
#else
  vec_u16 h;
  std::memcpy(&h, p, sizeof h);
  vec_u32 w = __builtin_convertvector(h, vec_u32) << 16;
  vec v;
  std::memcpy(&v, &w, sizeof v);
  return v;
#endif
}

inline float hsum(vec v) {
  half_vec a = __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7);
  half_vec b = __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
  a += b;
  return ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7]));
}

// The lane sums of 16 vectors as one vector: lane i = the sum of a[i]'s lanes. A tree of pairwise even/odd
// shuffles (15 shuffle pairs for 16 sums) instead of a horizontal sum per vector, which costs about as much alone.
inline vec combine(vec a, vec b) {
  return __builtin_shufflevector(a, b, 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30) +
         __builtin_shufflevector(a, b, 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
}

inline vec hsum16(vec* a) {
  for (int n = kLanes; n > 1; n /= 2) {
    for (int i = 0; i < n / 2; ++i) a[i] = combine(a[2 * i], a[2 * i + 1]);
  }
  return a[0];
}

inline void store(float* p, int64_t i, float x) { p[i] = x; }

inline void store(uint16_t* p, int64_t i, float x) {
  uint32_t bits;
  std::memcpy(&bits, &x, sizeof bits);
  // Round to nearest even, as torch does (inputs here are finite).
  bits += 0x7FFF + ((bits >> 16) & 1);
  p[i] = static_cast<uint16_t>(bits >> 16);
}

inline void store_vec(float* p, vec v) { std::memcpy(p, &v, sizeof v); }

inline void store_vec(uint16_t* p, vec v) {
  vec_u32 bits;
  std::memcpy(&bits, &v, sizeof bits);
  bits += 0x7FFF + ((bits >> 16) & 1);  // round to nearest even, as store() does
  const vec_u16 h = __builtin_convertvector(bits >> 16, vec_u16);
  std::memcpy(p, &h, sizeof h);
}

// e^r for |r| <= ln2 / 2 by its Taylor polynomial to r^7, for one float or a vector of them.
template <typename V>
inline V exp_taylor(V r) {
  V p = V{} + 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  return p;
}

// e^x for x <= 0 (scores minus their maximum), to about 2e-7 relative: x = n ln2 + r with |r| <= ln2 / 2,
// e^r by its Taylor polynomial, 2^n from the exponent bits. Branch-free, so a loop over it vectorizes.
inline float exp_nonpositive(float x) {
  x = x < -87.0f ? -87.0f : x;
  const float t = x * 1.4426950408889634f;
  const int n = static_cast<int>(t - 0.5f);  // truncation toward zero of t - 0.5: nearest integer for t <= 0
  const float p = exp_taylor(x - static_cast<float>(n) * 0.6931471805599453f);
  const uint32_t bits = static_cast<uint32_t>(n + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

// exp_nonpositive on 16 lanes, step for step the same arithmetic (so the same results). Written on vectors rather
// than left to `#pragma omp simd` over the scalar function: GCC kept that loop scalar, and SiLU over a prefill
// step's [512, 1536] took 4.7 ms against torch's 0.5.
inline vec exp_nonpositive(vec x) {
  x = x < -87.0f ? vec{} - 87.0f : x;
  const vec t = x * 1.4426950408889634f;
  const vec_i32 n = __builtin_convertvector(t - 0.5f, vec_i32);
  const vec p = exp_taylor(x - __builtin_convertvector(n, vec) * 0.6931471805599453f);
  const vec_u32 bits = reinterpret_cast<vec_u32>((n + 127) << 23);
  return p * reinterpret_cast<vec>(bits);
}
