// Host side of the .cu files (nvcc, or the host emulation of the tests; NVRTC never sees it): kernel launches, and a
// launcher's DType as the kernels' storage type.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <type_traits>

#include "launch.h"

// A kernel launch, `EMBER_LAUNCH(grid, block, stream, kernel)(args...)`: nvcc's kernel<<<grid, block, 0,
// stream>>>(args...); where the host emulation (tests/helpers/simt_host.h) defined it first, a call that runs the
// kernel's threads on the CPU, so that the launchers below are the ones its tests run.
#ifndef EMBER_LAUNCH
#define EMBER_LAUNCH(grid, block, stream, ...) __VA_ARGS__<<<(grid), (block), 0, (stream)>>>
#endif

namespace ember::cuda {

// Calls fn with a null T* of dtype's storage type (float, __nv_bfloat16, __half) and returns the launches' error.
template <typename Fn>
cudaError_t with_type(DType dtype, Fn&& fn) {
  switch (dtype) {
    case DType::kFloat:
      fn(static_cast<float*>(nullptr));
      break;
    case DType::kBFloat16:
      fn(static_cast<__nv_bfloat16*>(nullptr));
      break;
    case DType::kHalf:
      fn(static_cast<__half*>(nullptr));
      break;
  }
  return cudaGetLastError();
}

// The storage type of a tag that with_type passed.
template <typename Tag>
using storage_t = std::remove_pointer_t<Tag>;

}  // namespace ember::cuda
