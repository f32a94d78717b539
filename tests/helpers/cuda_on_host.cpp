// Ember's CUDA launchers and kernels (csrc/cuda/*.cu) compiled for the host over the SIMT emulator (simt_host.h),
// with a C entry point per launcher for tests/helpers/cuda_on_host.py. Pointers are host memory.
#include "simt_host.h"

#include "layer_ops.cu"
#include "paged_attention.cu"
#include "quant_linear.cu"

// The launchers end with cudaGetLastError, which libcudart would define: here no launch can fail to start.
extern "C" cudaError_t cudaGetLastError() { return cudaSuccess; }

using ember::cuda::DType;

namespace {

// The workspace starts as NaN: a partition the combining kernel reads but the first kernel never wrote shows.
float quiet_nan_host() { return std::nanf(""); }

ember::cuda::QuantArgs quant_args(const unsigned char* q, const void* scales, const void* mins,
                                  const float* super_scales, const float* super_mins, const float* bias, long long n,
                                  long long k, long long row_bytes, int bits, int groups, int group_size, int supers,
                                  int zero_point) {
  ember::cuda::QuantArgs w{};
  w.q = q;
  w.scales = scales;
  w.mins = mins;
  w.super_scales = super_scales;
  w.super_mins = super_mins;
  w.bias = bias;
  w.n = n;
  w.k = k;
  w.row_bytes = row_bytes;
  w.bits = bits;
  w.groups = groups;
  w.group_size = group_size;
  w.supers = supers;
  w.zero_point = zero_point;
  w.two_level = super_scales != nullptr;
  return w;
}

}  // namespace

extern "C" {

void ember_host_reverse_threads(int reverse) { ember::host::reverse_order = reverse != 0; }

int ember_host_rms_norm(int dtype, void* out, const void* x, long long ld, const void* weight, long long rows,
                        long long dim, float eps) {
  return ember::cuda::launch_rms_norm(static_cast<DType>(dtype), out, x, ld, weight, rows, dim, eps, nullptr);
}

int ember_host_add_rms_norm(int dtype, void* x, void* residual, const void* weight, long long rows, long long dim,
                            float eps) {
  return ember::cuda::launch_add_rms_norm(static_cast<DType>(dtype), x, residual, weight, rows, dim, eps, nullptr);
}

int ember_host_rotary(int dtype, void* q, long long q_ld, long long q_heads, void* k, long long k_ld,
                      long long k_heads, long long tokens, long long hd, const void* cos, const void* sin,
                      long long table_rows, const long long* positions) {
  return ember::cuda::launch_rotary(static_cast<DType>(dtype), q, q_ld, q_heads, k, k_ld, k_heads, tokens, hd, cos,
                                    sin, table_rows, reinterpret_cast<const int64_t*>(positions),
                                    ember::cuda::KVStore{}, nullptr);
}

int ember_host_rotary_cache(int dtype, void* q, long long q_ld, long long q_heads, void* k, long long k_ld,
                            long long k_heads, long long tokens, long long hd, const void* cos, const void* sin,
                            long long table_rows, const long long* positions, const void* v, long long v_ld,
                            void* k_cache, void* v_cache, const long long* slots, long long n, long long capacity) {
  const ember::cuda::KVStore store{v, v_ld, k_cache, v_cache, slots, n, capacity};
  return ember::cuda::launch_rotary(static_cast<DType>(dtype), q, q_ld, q_heads, k, k_ld, k_heads, tokens, hd, cos,
                                    sin, table_rows, reinterpret_cast<const int64_t*>(positions), store, nullptr);
}

int ember_host_silu_mul(int dtype, void* out, const void* gate_up, long long rows, long long inner) {
  return ember::cuda::launch_silu_mul(static_cast<DType>(dtype), out, gate_up, rows, inner, nullptr);
}

int ember_host_paged_decode(int dtype, void* out, const void* q, const void* k_cache, const void* v_cache,
                            const int* block_table, const int* context_lens, long long batch, long long heads,
                            long long kv_heads, long long head_dim, long long num_blocks, long long block_size,
                            long long max_blocks, float scale) {
  std::vector<float> workspace(
      ember::cuda::paged_decode_workspace(batch, heads, head_dim, max_blocks * block_size), quiet_nan_host());
  return ember::cuda::launch_paged_decode(static_cast<DType>(dtype), out, q, k_cache, v_cache, block_table,
                                          context_lens, batch, heads, kv_heads, head_dim, num_blocks, block_size,
                                          max_blocks, scale, workspace.data(), nullptr);
}

int ember_host_quant_linear(int dtype, void* out, const void* x, long long rows, const unsigned char* q,
                            const void* scales, const void* mins, const float* super_scales, const float* super_mins,
                            const float* bias, long long n, long long k, long long row_bytes, int bits, int groups,
                            int group_size, int supers, int zero_point) {
  const auto w = quant_args(q, scales, mins, super_scales, super_mins, bias, n, k, row_bytes, bits, groups,
                            group_size, supers, zero_point);
  const int64_t bytes = ember::cuda::quant_linear_workspace(static_cast<DType>(dtype), rows, k);
  std::vector<float4> workspace((bytes + 15) / 16);  // 16-byte aligned, as the caching allocator's blocks are
  return ember::cuda::launch_quant_linear(static_cast<DType>(dtype), out, x, rows, w, workspace.data(), nullptr);
}

int ember_host_dequantize(int dtype, void* out, const unsigned char* q, const void* scales, const void* mins,
                          const float* super_scales, const float* super_mins, long long n, long long k,
                          long long row_bytes, int bits, int groups, int group_size, int supers, int zero_point) {
  const auto w = quant_args(q, scales, mins, super_scales, super_mins, nullptr, n, k, row_bytes, bits, groups,
                            group_size, supers, zero_point);
  return ember::cuda::launch_dequantize(static_cast<DType>(dtype), out, w, nullptr);
}

}  // extern "C"
