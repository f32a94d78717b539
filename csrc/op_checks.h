// The shape, layout and device contracts of Ember's ops, checked once for every backend (csrc/cpu/, csrc/cuda/):
// each raises a torch error naming what is off. Dtypes are the backends' own to check (the CPU kernels take float32
// and bfloat16, the CUDA ones float16 too), and so are values (positions, block tables): the CPU reads them on the
// host, CUDA in the kernels.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace ember {

// out = rms_norm(x) * weight: x [rows, dim] with contiguous rows, out contiguous of its shape, one dtype.
void check_rms_norm(const at::Tensor& out, const at::Tensor& x, const at::Tensor& weight);

// residual += x; x = rms_norm(residual): both contiguous [rows, dim], one dtype.
void check_add_rms_norm(const at::Tensor& x, const at::Tensor& residual, const at::Tensor& weight);

// q [tokens, heads, hd] and k [tokens, kv_heads, hd] with each token's heads contiguous, cos/sin contiguous
// [positions, hd] (hd even), positions int64 [tokens], one dtype; returns hd.
int64_t check_rotary(const at::Tensor& q, const at::Tensor& k, const at::Tensor& cos, const at::Tensor& sin,
                     const at::Tensor& positions);

// rotary's q and k (check_rotary), and what its cache write takes: v [tokens, kv_heads, hd] like k, the caches
// contiguous [num_blocks, block_size, kv_heads, hd] in q's dtype, slots int64 [n] (n <= tokens: the first n tokens
// are written, the rest are padding); returns hd.
int64_t check_rotary_cache(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& cos,
                           const at::Tensor& sin, const at::Tensor& positions, const at::Tensor& k_cache,
                           const at::Tensor& v_cache, const at::Tensor& slots);

// out [rows, inner] = silu(gate_up[:, :inner]) * gate_up[:, inner:], both contiguous, one dtype; returns inner.
int64_t check_silu_mul(const at::Tensor& out, const at::Tensor& gate_up);

// The sizes paged decode runs over, as check_paged_decode read them.
struct PagedDecodeShape {
  int64_t batch, heads, head_dim, kv_heads, block_size, num_blocks, max_blocks;
};

// out and q [B, H, hd], the caches [num_blocks, block_size, KV, hd] (H a multiple of KV), block_table int32
// [B, max_blocks] and context_lens int32 [B], every one contiguous, q, out and the caches one dtype.
PagedDecodeShape check_paged_decode(const at::Tensor& out, const at::Tensor& q, const at::Tensor& k_cache,
                                    const at::Tensor& v_cache, const at::Tensor& block_table,
                                    const at::Tensor& context_lens);

}  // namespace ember
