// See op_checks.h.

#include "op_checks.h"

#include <c10/util/Exception.h>

namespace ember {

void check_rms_norm(const at::Tensor& out, const at::Tensor& x, const at::Tensor& weight) {
  TORCH_CHECK(x.dim() == 2 && x.stride(1) == 1, "x must be [rows, dim] with contiguous rows");
  TORCH_CHECK(out.is_contiguous() && out.sizes() == x.sizes(), "out must be contiguous with x's shape");
  TORCH_CHECK(weight.is_contiguous() && weight.dim() == 1 && weight.size(0) == x.size(1), "weight must be [dim]");
  TORCH_CHECK(out.scalar_type() == x.scalar_type() && weight.scalar_type() == x.scalar_type(),
              "out, x and weight must share one dtype");
}

void check_add_rms_norm(const at::Tensor& x, const at::Tensor& residual, const at::Tensor& weight) {
  TORCH_CHECK(x.is_contiguous() && residual.is_contiguous() && x.dim() == 2 && residual.sizes() == x.sizes(),
              "x and residual must be contiguous [rows, dim] of one shape");
  TORCH_CHECK(weight.is_contiguous() && weight.dim() == 1 && weight.size(0) == x.size(1), "weight must be [dim]");
  TORCH_CHECK(residual.scalar_type() == x.scalar_type() && weight.scalar_type() == x.scalar_type(),
              "x, residual and weight must share one dtype");
}

int64_t check_rotary(const at::Tensor& q, const at::Tensor& k, const at::Tensor& cos, const at::Tensor& sin,
                     const at::Tensor& positions) {
  TORCH_CHECK(cos.is_contiguous() && sin.is_contiguous() && cos.dim() == 2 && sin.sizes() == cos.sizes(),
              "cos and sin must be contiguous [positions, head_dim]");
  TORCH_CHECK(positions.scalar_type() == at::kLong && positions.is_contiguous() && positions.dim() == 1,
              "positions must be a contiguous int64 [tokens]");
  const int64_t hd = cos.size(1);
  TORCH_CHECK(hd % 2 == 0, "head_dim must be even");
  for (const at::Tensor* t : {&q, &k}) {
    TORCH_CHECK(t->dim() == 3 && t->size(0) == positions.size(0) && t->size(2) == hd && t->stride(2) == 1 &&
                    t->stride(1) == hd,
                "q and k must be [tokens, heads, head_dim] with each token's heads contiguous");
    TORCH_CHECK(t->scalar_type() == cos.scalar_type(), "q, k, cos and sin must share one dtype");
  }
  TORCH_CHECK(sin.scalar_type() == cos.scalar_type(), "q, k, cos and sin must share one dtype");
  return hd;
}

int64_t check_rotary_cache(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& cos,
                           const at::Tensor& sin, const at::Tensor& positions, const at::Tensor& k_cache,
                           const at::Tensor& v_cache, const at::Tensor& slots) {
  const int64_t hd = check_rotary(q, k, cos, sin, positions);
  TORCH_CHECK(v.sizes() == k.sizes() && v.stride(2) == 1 && v.stride(1) == hd && v.scalar_type() == k.scalar_type(),
              "v must be like k: [tokens, kv_heads, head_dim] with each token's heads contiguous, in k's dtype");
  TORCH_CHECK(k_cache.dim() == 4 && k_cache.sizes() == v_cache.sizes() && k_cache.is_contiguous() &&
                  v_cache.is_contiguous() && k_cache.size(2) == k.size(1) && k_cache.size(3) == hd,
              "k_cache and v_cache must both be contiguous [num_blocks, block_size, kv_heads, head_dim] of k's heads");
  TORCH_CHECK(k_cache.scalar_type() == k.scalar_type() && v_cache.scalar_type() == k.scalar_type(),
              "the caches must have k's dtype");
  TORCH_CHECK(slots.scalar_type() == at::kLong && slots.dim() == 1 && slots.is_contiguous() &&
                  slots.size(0) <= positions.size(0),
              "slots must be a contiguous int64 [n], n at most the tokens");
  return hd;
}

int64_t check_silu_mul(const at::Tensor& out, const at::Tensor& gate_up) {
  TORCH_CHECK(gate_up.is_contiguous() && gate_up.dim() == 2 && gate_up.size(1) % 2 == 0,
              "gate_up must be contiguous [rows, 2 * inner]");
  const int64_t inner = gate_up.size(1) / 2;
  TORCH_CHECK(out.is_contiguous() && out.dim() == 2 && out.size(0) == gate_up.size(0) && out.size(1) == inner,
              "out must be contiguous [rows, inner]");
  TORCH_CHECK(out.scalar_type() == gate_up.scalar_type(), "out and gate_up must share one dtype");
  return inner;
}

PagedDecodeShape check_paged_decode(const at::Tensor& out, const at::Tensor& q, const at::Tensor& k_cache,
                                    const at::Tensor& v_cache, const at::Tensor& block_table,
                                    const at::Tensor& context_lens) {
  TORCH_CHECK(q.dim() == 3, "q must be [B, H, hd], got ", q.sizes());
  TORCH_CHECK(k_cache.dim() == 4 && k_cache.sizes() == v_cache.sizes(),
              "k_cache and v_cache must both be [num_blocks, block_size, KV, hd]");
  TORCH_CHECK(out.sizes() == q.sizes(), "out must have q's shape");
  TORCH_CHECK(q.scalar_type() == k_cache.scalar_type() && q.scalar_type() == v_cache.scalar_type() &&
                  q.scalar_type() == out.scalar_type(),
              "q, out and the caches must share one dtype");
  TORCH_CHECK(block_table.scalar_type() == at::kInt && context_lens.scalar_type() == at::kInt,
              "block_table and context_lens must be int32");
  TORCH_CHECK(q.is_contiguous() && out.is_contiguous() && k_cache.is_contiguous() && v_cache.is_contiguous() &&
                  block_table.is_contiguous() && context_lens.is_contiguous(),
              "every tensor must be contiguous");
  PagedDecodeShape s{q.size(0), q.size(1), q.size(2), k_cache.size(2), k_cache.size(1), k_cache.size(0), 0};
  TORCH_CHECK(k_cache.size(3) == s.head_dim, "the caches' head_dim differs from q's");
  TORCH_CHECK(s.heads % s.kv_heads == 0, "heads=", s.heads, " is not a multiple of kv_heads=", s.kv_heads);
  TORCH_CHECK(block_table.dim() == 2 && block_table.size(0) == s.batch && context_lens.dim() == 1 &&
                  context_lens.size(0) == s.batch,
              "block_table must be [B, max_blocks] and context_lens [B]");
  s.max_blocks = block_table.size(1);
  return s;
}

}  // namespace ember
