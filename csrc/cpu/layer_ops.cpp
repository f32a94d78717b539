// ember::rms_norm, add_rms_norm, rotary and silu_mul on the CPU (see layer_ops_impl.h).

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <immintrin.h>

#include <cmath>
#include <cstdint>
#include <cstring>

#include "../op_checks.h"
#include "isa.h"
#include "kernels.h"
#include "ops.h"

// One copy per instruction set (isa_variants.h).
#define EMBER_KERNEL_IMPL "layer_ops_impl.h"
#include "isa_variants.h"

namespace ember::cpu {
namespace {

// Calls fn with the data pointer type of t's dtype (float32 or bfloat16's raw bits), for the CPU's widest ISA.
#define EMBER_DISPATCH(t, NAME, ...)                                                                 \
  do {                                                                                               \
    TORCH_CHECK((t).scalar_type() == at::kFloat || (t).scalar_type() == at::kBFloat16, #NAME         \
                " supports float32 and bfloat16, not ", (t).scalar_type());                          \
    const bool is_float = (t).scalar_type() == at::kFloat;                                           \
    switch (current_isa()) {                                                                         \
      case Isa::kAvx512:                                                                             \
        if (is_float) { using T = float; namespace impl = avx512; __VA_ARGS__; }                     \
        else { using T = uint16_t; namespace impl = avx512; __VA_ARGS__; }                           \
        break;                                                                                       \
      case Isa::kAvx2:                                                                               \
        if (is_float) { using T = float; namespace impl = avx2; __VA_ARGS__; }                       \
        else { using T = uint16_t; namespace impl = avx2; __VA_ARGS__; }                             \
        break;                                                                                       \
      default:                                                                                       \
        if (is_float) { using T = float; namespace impl = baseline; __VA_ARGS__; }                   \
        else { using T = uint16_t; namespace impl = baseline; __VA_ARGS__; }                         \
    }                                                                                                \
  } while (0)

template <typename T>
T* data(const at::Tensor& t) {
  return reinterpret_cast<T*>(t.data_ptr());
}

}  // namespace

// The raw entry points (kernels.h), for the CPU's widest instruction set.

template <typename T>
void rms_norm_rows(T* out, const T* x, int64_t ld, const T* weight, int64_t rows, int64_t dim, float eps) {
  EMBER_ISA_CALL(rms_norm_rows(out, x, ld, weight, rows, dim, eps));
}

template <typename T>
void add_rms_norm_rows(T* x, T* residual, const T* weight, int64_t rows, int64_t dim, float eps) {
  EMBER_ISA_CALL(add_rms_norm(x, residual, weight, rows, dim, eps));
}

template <typename T>
void rotary_rows(T* x, int64_t ld, int64_t tokens, int64_t heads, int64_t hd, const T* cos, const T* sin,
                 const int64_t* positions) {
  EMBER_ISA_CALL(rotary(x, ld, tokens, heads, hd, cos, sin, positions));
}

template <typename T>
void silu_mul_rows(T* out, const T* gate_up, int64_t rows, int64_t inner) {
  EMBER_ISA_CALL(silu_mul(out, gate_up, rows, inner));
}

#define EMBER_INSTANTIATE(T)                                                                                   \
  template void rms_norm_rows<T>(T*, const T*, int64_t, const T*, int64_t, int64_t, float);                    \
  template void add_rms_norm_rows<T>(T*, T*, const T*, int64_t, int64_t, float);                               \
  template void rotary_rows<T>(T*, int64_t, int64_t, int64_t, int64_t, const T*, const T*, const int64_t*);    \
  template void silu_mul_rows<T>(T*, const T*, int64_t, int64_t);
EMBER_INSTANTIATE(float)
EMBER_INSTANTIATE(uint16_t)
#undef EMBER_INSTANTIATE

void rms_norm(at::Tensor& out, const at::Tensor& x, const at::Tensor& weight, double eps) {
  check_rms_norm(out, x, weight);
  EMBER_DISPATCH(x, rms_norm,
                 impl::rms_norm_rows(data<T>(out), data<T>(x), x.stride(0), data<T>(weight), x.size(0), x.size(1),
                                     static_cast<float>(eps)));
}

void add_rms_norm(at::Tensor& x, at::Tensor& residual, const at::Tensor& weight, double eps) {
  check_add_rms_norm(x, residual, weight);
  EMBER_DISPATCH(x, add_rms_norm,
                 impl::add_rms_norm(data<T>(x), data<T>(residual), data<T>(weight), x.size(0), x.size(1),
                                    static_cast<float>(eps)));
}

namespace {

// q and k rotated in place (shapes checked).
void rotate(at::Tensor& q, at::Tensor& k, const at::Tensor& cos, const at::Tensor& sin, const at::Tensor& positions,
            int64_t hd) {
  const int64_t tokens = positions.size(0);
  const int64_t* pos = positions.data_ptr<int64_t>();
  for (int64_t t = 0; t < tokens; ++t) {
    TORCH_CHECK(pos[t] >= 0 && pos[t] < cos.size(0), "position ", pos[t], " is outside the rotary tables");
  }
  EMBER_DISPATCH(q, rotary, {
    impl::rotary(data<T>(q), q.stride(0), tokens, q.size(1), hd, data<T>(cos), data<T>(sin), pos);
    impl::rotary(data<T>(k), k.stride(0), tokens, k.size(1), hd, data<T>(cos), data<T>(sin), pos);
  });
}

}  // namespace

void rotary(at::Tensor& q, at::Tensor& k, const at::Tensor& cos, const at::Tensor& sin, const at::Tensor& positions) {
  rotate(q, k, cos, sin, positions, check_rotary(q, k, cos, sin, positions));
}

void rotary_cache(at::Tensor& q, at::Tensor& k, const at::Tensor& v, const at::Tensor& cos, const at::Tensor& sin,
                  const at::Tensor& positions, at::Tensor& k_cache, at::Tensor& v_cache, const at::Tensor& slots) {
  const int64_t hd = check_rotary_cache(q, k, v, cos, sin, positions, k_cache, v_cache, slots);
  const int64_t n = slots.size(0), capacity = k_cache.size(0) * k_cache.size(1);
  const int64_t* slot = slots.data_ptr<int64_t>();
  for (int64_t t = 0; t < n; ++t) {
    TORCH_CHECK(slot[t] >= 0 && slot[t] < capacity, "slot ", slot[t], " is outside the cache");
  }
  rotate(q, k, cos, sin, positions, hd);
  // Each token's heads are contiguous in k and v, and a slot's in the caches: one copy a token and tensor.
  const int64_t row_bytes = k.size(1) * hd * k.element_size();
  char* k_out = static_cast<char*>(k_cache.data_ptr());
  char* v_out = static_cast<char*>(v_cache.data_ptr());
  const char* k_in = static_cast<const char*>(k.data_ptr());
  const char* v_in = static_cast<const char*>(v.data_ptr());
  const int64_t k_ld = k.stride(0) * k.element_size(), v_ld = v.stride(0) * v.element_size();
  at::parallel_for(0, n, 64, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      std::memcpy(k_out + slot[t] * row_bytes, k_in + t * k_ld, row_bytes);
      std::memcpy(v_out + slot[t] * row_bytes, v_in + t * v_ld, row_bytes);
    }
  });
}

void silu_mul(at::Tensor& out, const at::Tensor& gate_up) {
  const int64_t inner = check_silu_mul(out, gate_up);
  EMBER_DISPATCH(gate_up, silu_mul, impl::silu_mul(data<T>(out), data<T>(gate_up), gate_up.size(0), inner));
}

}  // namespace ember::cpu
