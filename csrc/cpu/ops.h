// The CPU ops of ember._C; torch_bindings.cpp registers them.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <string>

#include "quant_view.h"

namespace ember::cpu {

// out[b, h] = softmax(q[b, h] . K[b]^T * scale) V[b] over row b's context_lens[b] tokens, whose K/V live in the
// blocks block_table[b, :] of the paged caches [num_blocks, block_size, KV, hd].
void paged_decode(at::Tensor& out, const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                  const at::Tensor& block_table, const at::Tensor& context_lens, double scale);

// out[r, h] = softmax(q[r, h] . K^T * scale) V over positions 0 .. start + r, for the S rows of a prefill chunk at
// positions start .. start + S - 1: causal attention over the context, whose K/V (the chunk's own included) live in
// the paged caches' blocks `blocks` [nb] int64, position t in blocks[t / block_size].
void paged_prefill(at::Tensor& out, const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                   const at::Tensor& blocks, int64_t start, double scale);

// Checks that each of `rows` rows' context length is 1..max_blocks * block_size and that the blocks it covers in
// its row of block_table [rows, max_blocks] lie in a cache of num_blocks; raises otherwise.
void check_paged_context(const int32_t* table, const int32_t* lens, int64_t rows, int64_t max_blocks,
                         int64_t block_size, int64_t num_blocks);

// out[M, N] = x[M, K] W^T + bias for a weight-only quantized W (layout: quant_view.h); x, out float32 or bfloat16.
void quant_linear(at::Tensor& out, const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& scales,
                  const std::optional<at::Tensor>& mins, const std::optional<at::Tensor>& super_scales,
                  const std::optional<at::Tensor>& super_mins, const std::optional<at::Tensor>& bias, int64_t bits,
                  int64_t group_size);

// quant_linear for many rows of x: where bfloat16 x takes the 8-bit x kernel, the same numbers as its matrix
// product (quant_linear_gemm_impl.h: each strip of W unpacked once and swept by every row); else quant_linear.
void quant_matmul(at::Tensor& out, const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& scales,
                  const std::optional<at::Tensor>& mins, const std::optional<at::Tensor>& super_scales,
                  const std::optional<at::Tensor>& super_mins, const std::optional<at::Tensor>& bias, int64_t bits,
                  int64_t group_size);

// Which kernel bfloat16 x on quantized weights takes: "int8" (x rounded to 8 bits per group of 32, AVX512-VNNI;
// the default where the CPU has it), "bf16" (AVX512-BF16 dot products on x as it is) or "int" (x rounded to 16-bit
// integers: AVX512-VNNI, else the float kernel). `choice` "auto", "int8", "bf16" or "int" sets it for the process,
// "" leaves it; returns the one in effect.
std::string quant_kernel(const std::string& choice);

// The view the kernels read of a quantized weight's tensors for x with k columns, after checking them.
QuantView quant_view(const at::Tensor& q, const at::Tensor& scales, const std::optional<at::Tensor>& mins,
                     const std::optional<at::Tensor>& super_scales, const std::optional<at::Tensor>& super_mins,
                     const std::optional<at::Tensor>& bias, int64_t bits, int64_t group_size, int64_t k);

// out[N, K] = W, float32 or bfloat16.
void dequantize(at::Tensor& out, const at::Tensor& qweight, const at::Tensor& scales,
                const std::optional<at::Tensor>& mins, const std::optional<at::Tensor>& super_scales,
                const std::optional<at::Tensor>& super_mins, int64_t bits, int64_t group_size);

// out = x / sqrt(mean(x^2) + eps) * weight, row by row (x's rows may be strided).
void rms_norm(at::Tensor& out, const at::Tensor& x, const at::Tensor& weight, double eps);

// residual += x; x = rms_norm(residual) (in place: the decoder's residual stream and the next sublayer's input).
void add_rms_norm(at::Tensor& x, at::Tensor& residual, const at::Tensor& weight, double eps);

// q and k [tokens, heads, head_dim] rotated in place by cos/sin [P, head_dim] at positions [tokens].
void rotary(at::Tensor& q, at::Tensor& k, const at::Tensor& cos, const at::Tensor& sin, const at::Tensor& positions);

// rotary, then the first slots.size(0) tokens' k (rotated) and v stored in the paged caches at their flat slots
// (block * block_size + offset): the attention layer's rotation and cache write in one call.
void rotary_cache(at::Tensor& q, at::Tensor& k, const at::Tensor& v, const at::Tensor& cos, const at::Tensor& sin,
                  const at::Tensor& positions, at::Tensor& k_cache, at::Tensor& v_cache, const at::Tensor& slots);

// out [rows, inner] = silu(gate_up[:, :inner]) * gate_up[:, inner:].
void silu_mul(at::Tensor& out, const at::Tensor& gate_up);

}  // namespace ember::cpu
