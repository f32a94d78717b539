// The CPU ops of ember._C; torch_bindings.cpp registers them.
#pragma once

#include <ATen/core/Tensor.h>

namespace ember::cpu {

// out[b, h] = softmax(q[b, h] . K[b]^T * scale) V[b] over row b's context_lens[b] tokens, whose K/V live in the
// blocks block_table[b, :] of the paged caches [num_blocks, block_size, KV, hd].
void paged_decode(at::Tensor& out, const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                  const at::Tensor& block_table, const at::Tensor& context_lens, double scale);

// The instruction set the kernels dispatched to on this CPU: "avx512", "avx2" or "baseline".
const char* isa_name();

}  // namespace ember::cpu
