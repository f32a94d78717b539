// The CPU kernels on raw pointers, for native code that chains them (decode_stack.cpp) without a torch op per
// call. Each picks the CPU's widest instruction set at run time, like the ops of ops.h, which check their tensors
// and call these. T is float (float32) or uint16_t (bfloat16's bits).
#pragma once

#include <cstdint>

#include "quant_input.h"
#include "quant_view.h"

namespace ember::cpu {

// out = x / sqrt(mean(x^2) + eps) * weight for rows of x `ld` apart (out contiguous).
template <typename T>
void rms_norm_rows(T* out, const T* x, int64_t ld, const T* weight, int64_t rows, int64_t dim, float eps);

// residual += x; x = rms_norm(residual) ([rows, dim], contiguous).
template <typename T>
void add_rms_norm_rows(T* x, T* residual, const T* weight, int64_t rows, int64_t dim, float eps);

// x [tokens, heads, hd] (token rows `ld` apart) rotated in place at positions by the tables cos/sin [P, hd].
template <typename T>
void rotary_rows(T* x, int64_t ld, int64_t tokens, int64_t heads, int64_t hd, const T* cos, const T* sin,
                 const int64_t* positions);

// out [rows, inner] = silu(gate_up[:, :inner]) * gate_up[:, inner:].
template <typename T>
void silu_mul_rows(T* out, const T* gate_up, int64_t rows, int64_t inner);

// Paged-attention decode (paged_attention_impl.h) with query rows `q_stride` apart; out is contiguous [B, H, hd].
template <typename T>
void paged_decode_rows(T* out, const T* q, int64_t q_stride, const T* k_cache, const T* v_cache,
                       const int32_t* block_table, const int32_t* context_lens, int64_t batch, int64_t heads,
                       int64_t kv_heads, int64_t head_dim, int64_t block_size, int64_t max_blocks, float scale);

// paged_decode_rows' tasks [task_begin, task_end) alone (task = row * kv_heads + KV head), on the calling thread.
template <typename T>
void paged_decode_part_rows(T* out, const T* q, int64_t q_stride, const T* k_cache, const T* v_cache,
                            const int32_t* block_table, const int32_t* context_lens, int64_t heads, int64_t kv_heads,
                            int64_t head_dim, int64_t block_size, int64_t max_blocks, float scale, int64_t task_begin,
                            int64_t task_end);

// A quantized linear split over threads that the caller runs: one prepares x (quant_linear_prepare), then each
// computes its own output rows [n_begin, n_end) (quant_linear_part) on the calling thread. `product`: bfloat16 x
// on the 8-bit x kernel runs as its matrix product (quant_matmul) rather than its streaming tiles.
template <typename T>
void quant_linear_prepare(const QuantView& w, const T* x, int64_t rows, PreparedX& p, bool product = false);

template <typename T>
void quant_linear_part(const QuantView& w, const PreparedX& p, const T* x, T* out, int64_t rows, int64_t n_begin,
                       int64_t n_end);

// out [rows, w.n] = x [rows, w.k] W^T + bias, W read as stored (quant_linear_impl.h).
template <typename T>
void quant_linear_rows(const QuantView& w, const T* x, T* out, int64_t rows);

}  // namespace ember::cpu
