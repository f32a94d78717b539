// Device helpers shared by Ember's CUDA kernels: conversions between the storage types and float32, and warp and
// block reductions. Device code only, and CUDA's own headers only, so that NVRTC compiles every kernel file as it
// is (scripts/cuda_check.py: the compile check that runs where there is no nvcc and no GPU).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

// M(T) for each storage type the kernels take: where a file instantiates its kernels for NVRTC.
#define EMBER_FOR_STORAGE_TYPES(M) M(float) M(__nv_bfloat16) M(__half)

namespace ember::cuda {

// Arithmetic is in float32; each result is rounded to the storage type once, where the CPU kernels round too.
template <typename T>
__device__ __forceinline__ float to_float(T v);
template <>
__device__ __forceinline__ float to_float<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 v) {
  return __bfloat162float(v);
}
template <>
__device__ __forceinline__ float to_float<__half>(__half v) {
  return __half2float(v);
}

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16(v);  // round to nearest even, as the CPU kernels and torch round
}
template <>
__device__ __forceinline__ __half from_float<__half>(float v) {
  return __float2half(v);
}

// v rounded to T and back: where the CPU kernel (and torch's reference) stores an intermediate in T.
template <typename T>
__device__ __forceinline__ float round_to(float v) {
  return to_float(from_float<T>(v));
}

// Not NVRTC's <cmath>: the two special values the kernels need.
__device__ __forceinline__ float quiet_nan() { return __int_as_float(0x7fc00000); }
__device__ __forceinline__ float minus_infinity() { return __int_as_float(0xff800000); }

__device__ __forceinline__ float warp_sum(float v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
  for (int offset = 16; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

// The sum (or max) of v over the block, in every thread. blockDim.x a multiple of 32; scratch 32 floats of shared
// memory, which the first barrier frees from any earlier call.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
  v = warp_sum(v);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  return warp_sum(lane < (blockDim.x >> 5) ? scratch[lane] : 0.0f);
}

__device__ __forceinline__ float block_max(float v, float* scratch) {
  v = warp_max(v);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  return warp_max(lane < (blockDim.x >> 5) ? scratch[lane] : minus_infinity());
}

}  // namespace ember::cuda
