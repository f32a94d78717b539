// ember::rms_norm, add_rms_norm, rotary and silu_mul on CUDA: the same ops as csrc/cpu/layer_ops_impl.h, with the
// same roundings (arithmetic in float32, an intermediate rounded to the storage type exactly where the CPU kernel
// and torch's reference round it), so that a GPU step and a CPU step of the same model agree to the last rounding
// of their sums' order. Each op is one launch where torch takes 7 (RMSNorm) or 8 per tensor (rotary).

#include "common.cuh"
#include "kv_store.h"

namespace ember::cuda {

// out[r] = x[r] / sqrt(mean(x[r]^2) + eps) * weight: one block a row.
template <typename T>
__global__ void rms_norm_kernel(T* __restrict__ out, const T* __restrict__ x, long long ld,
                                const T* __restrict__ weight, int dim, float eps) {
  __shared__ float scratch[32];
  const T* xr = x + blockIdx.x * ld;
  T* o = out + static_cast<long long>(blockIdx.x) * dim;
  float ss = 0.0f;
  for (int i = threadIdx.x; i < dim; i += blockDim.x) {
    const float v = to_float(xr[i]);
    ss += v * v;
  }
  const float inv = rsqrtf(block_sum(ss, scratch) / static_cast<float>(dim) + eps);
  // As the reference: the normalized value is rounded to T before the weight multiplies it.
  for (int i = threadIdx.x; i < dim; i += blockDim.x) {
    o[i] = from_float<T>(round_to<T>(to_float(xr[i]) * inv) * to_float(weight[i]));
  }
}

// residual[r] += x[r], then x[r] = rms_norm(residual[r]): one block a row, the sum rounded to T as it is stored.
template <typename T>
__global__ void add_rms_norm_kernel(T* __restrict__ x, T* __restrict__ residual, const T* __restrict__ weight,
                                    int dim, float eps) {
  __shared__ float scratch[32];
  const long long row = static_cast<long long>(blockIdx.x) * dim;
  T* xr = x + row;
  T* res = residual + row;
  float ss = 0.0f;
  for (int i = threadIdx.x; i < dim; i += blockDim.x) {
    const T sum = from_float<T>(to_float(xr[i]) + to_float(res[i]));
    res[i] = sum;
    const float v = to_float(sum);
    ss += v * v;
  }
  const float inv = rsqrtf(block_sum(ss, scratch) / static_cast<float>(dim) + eps);
  // Each thread reads back only the elements it wrote above: no barrier needed between the passes.
  for (int i = threadIdx.x; i < dim; i += blockDim.x) {
    xr[i] = from_float<T>(round_to<T>(to_float(res[i]) * inv) * to_float(weight[i]));
  }
}

// One token's q and k heads rotated at its position (Hugging Face's rotate_half layout): (x1, x2) -> (x1 cos - x2
// sin, x2 cos + x1 sin) on the two halves of each head; and where `store` has caches, the token's rotated k and its
// v stored at its slot too (rotary_cache: the cache write of the attention layer, in the same pass). One block a
// token, a thread a pair of values. A slot outside the cache is not written (the CPU op raises instead).
template <typename T>
__global__ void rotary_kernel(T* __restrict__ q, long long q_ld, int q_heads, T* __restrict__ k, long long k_ld,
                              int k_heads, int hd, const T* __restrict__ cos, const T* __restrict__ sin,
                              long long table_rows, const long long* __restrict__ positions, const KVStore store) {
  const int t = blockIdx.x, half = hd / 2;
  const long long pos = positions[t];
  const bool inside = pos >= 0 && pos < table_rows;
  const T* c = cos + (inside ? pos : 0) * hd;
  const T* s = sin + (inside ? pos : 0) * hd;
  long long slot = -1;
  if (store.k_cache != nullptr && t < store.n && store.slots[t] >= 0 && store.slots[t] < store.capacity) {
    slot = store.slots[t];
  }
  const long long row = static_cast<long long>(k_heads) * hd;  // a token's k (and v) values
  T* k_out = slot >= 0 ? static_cast<T*>(store.k_cache) + slot * row : nullptr;
  for (int pair = threadIdx.x; pair < (q_heads + k_heads) * half; pair += blockDim.x) {
    const int head = pair / half, i = pair % half;
    T* v = head < q_heads ? q + t * q_ld + head * hd : k + t * k_ld + (head - q_heads) * hd;
    if (inside) {
      const float a = to_float(v[i]), b = to_float(v[i + half]);
      v[i] = from_float<T>(a * to_float(c[i]) - b * to_float(s[i]));
      v[i + half] = from_float<T>(b * to_float(c[i + half]) + a * to_float(s[i + half]));
    } else {
      v[i] = v[i + half] = from_float<T>(quiet_nan());
    }
    if (head >= q_heads && k_out != nullptr) {
      T* o = k_out + (head - q_heads) * hd;
      o[i] = v[i];
      o[i + half] = v[i + half];
    }
  }
  if (slot >= 0) {
    const T* v_in = static_cast<const T*>(store.v) + t * store.v_ld;
    T* v_out = static_cast<T*>(store.v_cache) + slot * row;
    for (long long i = threadIdx.x; i < row; i += blockDim.x) v_out[i] = v_in[i];
  }
}

// x sigmoid(x) with the sigmoid from e^-|x| <= 1 (never overflows), as the CPU kernel computes it.
__device__ __forceinline__ float silu(float x) {
  const float e = expf(-fabsf(x));
  return x > 0.0f ? x / (1.0f + e) : x * e / (1.0f + e);
}

// out[r, i] = silu(gate_up[r, i]) * gate_up[r, inner + i], over rows * inner values (a grid-stride loop).
template <typename T>
__global__ void silu_mul_kernel(T* __restrict__ out, const T* __restrict__ gate_up, long long rows, long long inner) {
  const long long n = rows * inner;
  for (long long at = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; at < n;
       at += static_cast<long long>(gridDim.x) * blockDim.x) {
    const long long r = at / inner, i = at % inner;
    const T* g = gate_up + r * 2 * inner;
    // The reference rounds silu(gate) to T before the product.
    out[at] = from_float<T>(round_to<T>(silu(to_float(g[i]))) * to_float(g[inner + i]));
  }
}

}  // namespace ember::cuda

#ifdef __CUDACC_RTC__
// NVRTC (the compile check) sees the kernels only: one instance per storage type, as the launchers below make.
#define EMBER_INSTANTIATE(T)                                                                                     \
  template __global__ void ember::cuda::rms_norm_kernel<T>(T*, const T*, long long, const T*, int, float);      \
  template __global__ void ember::cuda::add_rms_norm_kernel<T>(T*, T*, const T*, int, float);                   \
  template __global__ void ember::cuda::rotary_kernel<T>(T*, long long, int, T*, long long, int, int, const T*, \
                                                         const T*, long long, const long long*,               \
                                                         const ember::cuda::KVStore);                         \
  template __global__ void ember::cuda::silu_mul_kernel<T>(T*, const T*, long long, long long);
EMBER_FOR_STORAGE_TYPES(EMBER_INSTANTIATE)
#undef EMBER_INSTANTIATE
#else
#include "dtype_dispatch.cuh"

namespace ember::cuda {
namespace {

// Threads for a row of `dim` values: about 4 values each, whole warps, at most 1024.
int row_threads(int64_t dim) {
  const int64_t warps = ((dim + 3) / 4 + 31) / 32;
  return static_cast<int>(warps < 1 ? 32 : warps > 32 ? 1024 : warps * 32);
}

}  // namespace

cudaError_t launch_rms_norm(DType dtype, void* out, const void* x, int64_t ld, const void* weight, int64_t rows,
                            int64_t dim, float eps, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  return with_type(dtype, [&](auto* tag) {
    using T = storage_t<decltype(tag)>;
    EMBER_LAUNCH(static_cast<unsigned>(rows), row_threads(dim), stream, rms_norm_kernel<T>)(
        static_cast<T*>(out), static_cast<const T*>(x), ld, static_cast<const T*>(weight), static_cast<int>(dim),
        eps);
  });
}

cudaError_t launch_add_rms_norm(DType dtype, void* x, void* residual, const void* weight, int64_t rows, int64_t dim,
                                float eps, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  return with_type(dtype, [&](auto* tag) {
    using T = storage_t<decltype(tag)>;
    EMBER_LAUNCH(static_cast<unsigned>(rows), row_threads(dim), stream, add_rms_norm_kernel<T>)(
        static_cast<T*>(x), static_cast<T*>(residual), static_cast<const T*>(weight), static_cast<int>(dim), eps);
  });
}

cudaError_t launch_rotary(DType dtype, void* q, int64_t q_ld, int64_t q_heads, void* k, int64_t k_ld, int64_t k_heads,
                          int64_t tokens, int64_t hd, const void* cos, const void* sin, int64_t table_rows,
                          const int64_t* positions, const KVStore& store, cudaStream_t stream) {
  if (tokens == 0) return cudaSuccess;
  const int64_t pairs = (q_heads + k_heads) * hd / 2;
  const int threads = pairs >= 256 ? 256 : static_cast<int>((pairs + 31) / 32 * 32);
  return with_type(dtype, [&](auto* tag) {
    using T = storage_t<decltype(tag)>;
    EMBER_LAUNCH(static_cast<unsigned>(tokens), threads, stream, rotary_kernel<T>)(
        static_cast<T*>(q), q_ld, static_cast<int>(q_heads), static_cast<T*>(k), k_ld, static_cast<int>(k_heads),
        static_cast<int>(hd), static_cast<const T*>(cos), static_cast<const T*>(sin), table_rows,
        reinterpret_cast<const long long*>(positions), store);
  });
}

cudaError_t launch_silu_mul(DType dtype, void* out, const void* gate_up, int64_t rows, int64_t inner,
                            cudaStream_t stream) {
  const int64_t n = rows * inner;
  if (n == 0) return cudaSuccess;
  const int64_t blocks = (n + 255) / 256;
  return with_type(dtype, [&](auto* tag) {
    using T = storage_t<decltype(tag)>;
    const unsigned grid = static_cast<unsigned>(blocks < 65536 ? blocks : 65536);
    EMBER_LAUNCH(grid, 256, stream, silu_mul_kernel<T>)(
        static_cast<T*>(out), static_cast<const T*>(gate_up), rows, inner);
  });
}

}  // namespace ember::cuda
#endif
