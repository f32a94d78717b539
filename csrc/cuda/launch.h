// The CUDA kernels' launchers: plain C++ on raw device pointers, so that the op glue (ops.cpp: checks, streams,
// registration) is compiled by the host compiler and the .cu files hold device code and these thin launchers only.
// Every launcher enqueues on `stream` and returns the launch's error (cudaGetLastError), which the glue raises.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "kv_store.h"
#include "quant_args.h"

namespace ember::cuda {

// The storage types the kernels take; the glue maps torch's dtypes onto them.
enum class DType { kFloat, kBFloat16, kHalf };

// out = x / sqrt(mean(x^2) + eps) * weight for `rows` rows of x `ld` apart (out contiguous).
cudaError_t launch_rms_norm(DType dtype, void* out, const void* x, int64_t ld, const void* weight, int64_t rows,
                            int64_t dim, float eps, cudaStream_t stream);

// residual += x; x = rms_norm(residual) ([rows, dim], contiguous).
cudaError_t launch_add_rms_norm(DType dtype, void* x, void* residual, const void* weight, int64_t rows, int64_t dim,
                                float eps, cudaStream_t stream);

// q [tokens, q_heads, hd] and k [tokens, k_heads, hd] (token rows q_ld / k_ld apart) rotated in place by the tables
// cos/sin [table_rows, hd] at positions [tokens] (int64, on the device); and where store.k_cache is set, the first
// store.n tokens' rotated k and their v stored at their slots (rotary_cache). A position outside the tables makes
// that token's rows NaN rather than a read out of bounds; a slot outside the cache is not written.
cudaError_t launch_rotary(DType dtype, void* q, int64_t q_ld, int64_t q_heads, void* k, int64_t k_ld, int64_t k_heads,
                          int64_t tokens, int64_t hd, const void* cos, const void* sin, int64_t table_rows,
                          const int64_t* positions, const KVStore& store, cudaStream_t stream);

// out [rows, inner] = silu(gate_up[:, :inner]) * gate_up[:, inner:].
cudaError_t launch_silu_mul(DType dtype, void* out, const void* gate_up, int64_t rows, int64_t inner,
                            cudaStream_t stream);

// How many float32 values paged decode's workspace needs (0 where one partition covers every context).
int64_t paged_decode_workspace(int64_t batch, int64_t heads, int64_t head_dim, int64_t max_context);

// out[b, h] = softmax(q[b, h] . K^T * scale) V over row b's context_lens[b] tokens in the blocks block_table[b, :]
// of the caches [num_blocks, block_size, kv_heads, head_dim] (all contiguous; head_dim <= 256). `workspace` holds
// paged_decode_workspace(...) floats. A row whose length or blocks lie outside the cache gets NaN, never a read out
// of bounds (the CPU op raises instead: it reads the table on the host, which here would cost a synchronization).
cudaError_t launch_paged_decode(DType dtype, void* out, const void* q, const void* k_cache, const void* v_cache,
                                const int32_t* block_table, const int32_t* context_lens, int64_t batch, int64_t heads,
                                int64_t kv_heads, int64_t head_dim, int64_t num_blocks, int64_t block_size,
                                int64_t max_blocks, float scale, float* workspace, cudaStream_t stream);

// Bytes of device memory quant_linear's workspace needs for `rows` rows of x [rows, k] of this dtype (16-bit x
// rounded to 8 bits first: the bytes and their scales and sums; 0 for float32 x).
int64_t quant_linear_workspace(DType dtype, int64_t rows, int64_t k);

// out [rows, N] = x [rows, K] W^T + bias for the quantized W (x and out contiguous, 16-byte aligned, like w.q and
// the workspace of quant_linear_workspace(...) bytes).
cudaError_t launch_quant_linear(DType dtype, void* out, const void* x, int64_t rows, const QuantArgs& w,
                                void* workspace, cudaStream_t stream);

// out [N, K] = W (contiguous).
cudaError_t launch_dequantize(DType dtype, void* out, const QuantArgs& w, cudaStream_t stream);

}  // namespace ember::cuda
