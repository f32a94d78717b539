// ember::paged_decode on the CPU: attention of one query token per row over its context in the paged KV cache,
// reading the blocks where they are (the pure-torch reference gathers them into a padded copy first).

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "../op_checks.h"
#include "isa.h"
#include "kernels.h"
#include "ops.h"

// One copy of the kernel per instruction set; see paged_attention_impl.h.
// One copy per instruction set (isa_variants.h).
#define EMBER_KERNEL_IMPL "paged_attention_impl.h"
#include "isa_variants.h"

// A fourth copy for CPUs with AVX512-BF16, whose decode and prefill on a bfloat16 cache take their scores as
// bfloat16 dot products; in its own region, so that no instruction of AVX512-BF16 reaches the copy that runs where
// the CPU lacks it.
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx512bf16,fma,f16c")
#define EMBER_AVX512 1
#define EMBER_BF16 1
namespace ember::cpu::bf16dot {
#include "paged_attention_impl.h"
}
#undef EMBER_BF16
#undef EMBER_AVX512
#pragma GCC pop_options

namespace ember::cpu {

// Returns CALL from the AVX512-BF16 copy for bfloat16 data (T = uint16_t) where the CPU has it, else from the
// widest instruction set's copy (EMBER_ISA_CALL).
#define EMBER_BF16_OR_ISA_CALL(T, CALL)             \
  if constexpr (std::is_same_v<T, uint16_t>) {      \
    if (cpu_has_bf16()) return bf16dot::CALL;        \
  }                                                 \
  EMBER_ISA_CALL(CALL)

template <typename T>
void paged_decode_rows(T* out, const T* q, int64_t q_stride, const T* k, const T* v, const int32_t* table,
                       const int32_t* lens, int64_t batch, int64_t heads, int64_t kv_heads, int64_t head_dim,
                       int64_t block_size, int64_t max_blocks, float scale) {
  EMBER_BF16_OR_ISA_CALL(T, paged_decode(out, q, q_stride, k, v, table, lens, batch, heads, kv_heads, head_dim,
                                         block_size, max_blocks, scale));
}

template <typename T>
void paged_decode_part_rows(T* out, const T* q, int64_t q_stride, const T* k, const T* v, const int32_t* table,
                            const int32_t* lens, int64_t heads, int64_t kv_heads, int64_t head_dim,
                            int64_t block_size, int64_t max_blocks, float scale, int64_t task_begin,
                            int64_t task_end) {
  EMBER_BF16_OR_ISA_CALL(T, paged_decode_part(out, q, q_stride, k, v, table, lens, heads, kv_heads, head_dim,
                                              block_size, max_blocks, scale, task_begin, task_end));
}

template <typename T>
void paged_prefill_rows(T* out, const T* q, int64_t q_stride, const T* k, const T* v, const int64_t* blocks,
                        int64_t start, int64_t rows, int64_t heads, int64_t kv_heads, int64_t head_dim,
                        int64_t block_size, float scale) {
  EMBER_BF16_OR_ISA_CALL(T, paged_prefill(out, q, q_stride, k, v, blocks, start, rows, heads, kv_heads, head_dim,
                                          block_size, scale));
}

template void paged_decode_part_rows<float>(float*, const float*, int64_t, const float*, const float*,
                                            const int32_t*, const int32_t*, int64_t, int64_t, int64_t, int64_t,
                                            int64_t, float, int64_t, int64_t);
template void paged_decode_part_rows<uint16_t>(uint16_t*, const uint16_t*, int64_t, const uint16_t*,
                                               const uint16_t*, const int32_t*, const int32_t*, int64_t, int64_t,
                                               int64_t, int64_t, int64_t, float, int64_t, int64_t);
template void paged_decode_rows<float>(float*, const float*, int64_t, const float*, const float*, const int32_t*,
                                       const int32_t*, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, float);
template void paged_decode_rows<uint16_t>(uint16_t*, const uint16_t*, int64_t, const uint16_t*, const uint16_t*,
                                          const int32_t*, const int32_t*, int64_t, int64_t, int64_t, int64_t, int64_t,
                                          int64_t, float);

void check_paged_context(const int32_t* table, const int32_t* lens, int64_t rows, int64_t max_blocks,
                         int64_t block_size, int64_t num_blocks) {
  for (int64_t b = 0; b < rows; ++b) {
    TORCH_CHECK(lens[b] >= 1 && lens[b] <= max_blocks * block_size, "context_lens[", b, "]=", lens[b],
                " is outside 1..", max_blocks * block_size);
    for (int64_t i = 0; i < (lens[b] + block_size - 1) / block_size; ++i) {
      const int32_t blk = table[b * max_blocks + i];
      TORCH_CHECK(blk >= 0 && blk < num_blocks, "block_table[", b, "][", i, "]=", blk, " is outside the cache");
    }
  }
}

void paged_decode(at::Tensor& out, const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                  const at::Tensor& block_table, const at::Tensor& context_lens, double scale) {
  const PagedDecodeShape shape = check_paged_decode(out, q, k_cache, v_cache, block_table, context_lens);
  const int64_t batch = shape.batch, heads = shape.heads, head_dim = shape.head_dim;
  const int64_t block_size = shape.block_size, kv_heads = shape.kv_heads, max_blocks = shape.max_blocks;
  const int32_t* lens = context_lens.data_ptr<int32_t>();
  const int32_t* table = block_table.data_ptr<int32_t>();
  check_paged_context(table, lens, batch, max_blocks, block_size, shape.num_blocks);
  const float s = static_cast<float>(scale);
  if (q.scalar_type() == at::kFloat) {
    paged_decode_rows(out.data_ptr<float>(), q.data_ptr<float>(), heads * head_dim, k_cache.data_ptr<float>(),
                      v_cache.data_ptr<float>(), table, lens, batch, heads, kv_heads, head_dim, block_size,
                      max_blocks, s);
  } else {
    TORCH_CHECK(q.scalar_type() == at::kBFloat16, "paged_decode supports float32 and bfloat16, not ",
                q.scalar_type());
    auto raw = [](const at::Tensor& t) { return reinterpret_cast<uint16_t*>(t.data_ptr()); };
    paged_decode_rows(raw(out), static_cast<const uint16_t*>(raw(q)), heads * head_dim,
                      static_cast<const uint16_t*>(raw(k_cache)), static_cast<const uint16_t*>(raw(v_cache)), table,
                      lens, batch, heads, kv_heads, head_dim, block_size, max_blocks, s);
  }
}

void paged_prefill(at::Tensor& out, const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                   const at::Tensor& blocks, int64_t start, double scale) {
  TORCH_CHECK(q.dim() == 3 && q.stride(2) == 1 && q.stride(1) == q.size(2),
              "q must be [S, H, hd] with each row's heads contiguous, got ", q.sizes(), " strides ", q.strides());
  TORCH_CHECK(k_cache.dim() == 4 && k_cache.sizes() == v_cache.sizes() && k_cache.is_contiguous() &&
                  v_cache.is_contiguous(),
              "k_cache and v_cache must both be contiguous [num_blocks, block_size, KV, hd]");
  TORCH_CHECK(out.is_contiguous() && out.sizes() == q.sizes(), "out must be contiguous with q's shape");
  TORCH_CHECK(q.scalar_type() == k_cache.scalar_type() && q.scalar_type() == v_cache.scalar_type() &&
                  q.scalar_type() == out.scalar_type(),
              "q, out and the caches must share one dtype");
  TORCH_CHECK(blocks.scalar_type() == at::kLong && blocks.dim() == 1 && blocks.is_contiguous(),
              "blocks must be a contiguous int64 [nb]");
  const int64_t rows = q.size(0), heads = q.size(1), head_dim = q.size(2);
  const int64_t block_size = k_cache.size(1), kv_heads = k_cache.size(2);
  TORCH_CHECK(k_cache.size(3) == head_dim, "the caches' head_dim differs from q's");
  TORCH_CHECK(heads % kv_heads == 0, "heads=", heads, " is not a multiple of kv_heads=", kv_heads);
  TORCH_CHECK(start >= 0 && (start + rows) <= blocks.size(0) * block_size, "positions 0..", start + rows - 1,
              " do not fit the ", blocks.size(0), " blocks given");
  if (rows == 0) return;
  const int64_t* table = blocks.data_ptr<int64_t>();
  for (int64_t i = 0; i < (start + rows + block_size - 1) / block_size; ++i) {
    TORCH_CHECK(table[i] >= 0 && table[i] < k_cache.size(0), "blocks[", i, "]=", table[i], " is outside the cache");
  }
  const float s = static_cast<float>(scale);
  if (q.scalar_type() == at::kFloat) {
    paged_prefill_rows(out.data_ptr<float>(), q.data_ptr<float>(), q.stride(0), k_cache.data_ptr<float>(),
                       v_cache.data_ptr<float>(), table, start, rows, heads, kv_heads, head_dim, block_size, s);
  } else {
    TORCH_CHECK(q.scalar_type() == at::kBFloat16, "paged_prefill supports float32 and bfloat16, not ",
                q.scalar_type());
    auto raw = [](const at::Tensor& t) { return reinterpret_cast<uint16_t*>(t.data_ptr()); };
    paged_prefill_rows(raw(out), static_cast<const uint16_t*>(raw(q)), q.stride(0),
                       static_cast<const uint16_t*>(raw(k_cache)), static_cast<const uint16_t*>(raw(v_cache)), table,
                       start, rows, heads, kv_heads, head_dim, block_size, s);
  }
}

}  // namespace ember::cpu
