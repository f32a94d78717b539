// The CUDA implementations of Ember's ops (schemas: csrc/torch_bindings.cpp): tensor checks, the device guard and
// the current stream here, the kernels' launches in the .cu files (launch.h). Built only into a CUDA build of
// ember._C (setup.py); a CPU build registers csrc/cpu's alone.
//
// Where the CPU op checks values on the host (positions inside the rotary tables, block tables inside the cache),
// the CUDA op would have to copy them back and wait for the GPU; the kernels check them instead and write NaN
// where one is outside, never reading out of bounds. Shapes, dtypes and devices are checked here, as on the CPU.

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <cstdint>
#include <initializer_list>
#include <optional>

#include "../cpu/ops.h"
#include "../op_checks.h"
#include "launch.h"

namespace ember::cuda {
namespace {

DType dtype_of(const at::Tensor& t, const char* op) {
  switch (t.scalar_type()) {
    case at::kFloat:
      return DType::kFloat;
    case at::kBFloat16:
      return DType::kBFloat16;
    case at::kHalf:
      return DType::kHalf;
    default:
      TORCH_CHECK(false, op, " supports float32, bfloat16 and float16 on CUDA, not ", t.scalar_type());
  }
}

// Every tensor on x's CUDA device.
void check_device(const at::Tensor& x, std::initializer_list<const at::Tensor*> others, const char* op) {
  TORCH_CHECK(x.is_cuda(), op, ": expected CUDA tensors");
  for (const at::Tensor* t : others) {
    TORCH_CHECK(t->device() == x.device(), op, ": every tensor must be on ", x.device(), ", one is on ", t->device());
  }
}

void check_launch(cudaError_t err, const char* op) {
  TORCH_CHECK(err == cudaSuccess, op, ": CUDA launch failed: ", cudaGetErrorString(err));
}

cudaStream_t stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

void rms_norm(at::Tensor& out, const at::Tensor& x, const at::Tensor& weight, double eps) {
  check_device(x, {&out, &weight}, "rms_norm");
  check_rms_norm(out, x, weight);
  const c10::cuda::CUDAGuard guard(x.device());
  check_launch(launch_rms_norm(dtype_of(x, "rms_norm"), out.data_ptr(), x.data_ptr(), x.stride(0), weight.data_ptr(),
                               x.size(0), x.size(1), static_cast<float>(eps), stream()),
               "rms_norm");
}

void add_rms_norm(at::Tensor& x, at::Tensor& residual, const at::Tensor& weight, double eps) {
  check_device(x, {&residual, &weight}, "add_rms_norm");
  check_add_rms_norm(x, residual, weight);
  const c10::cuda::CUDAGuard guard(x.device());
  check_launch(launch_add_rms_norm(dtype_of(x, "add_rms_norm"), x.data_ptr(), residual.data_ptr(), weight.data_ptr(),
                                   x.size(0), x.size(1), static_cast<float>(eps), stream()),
               "add_rms_norm");
}

// q and k rotated in place, and the tokens' k and v stored where `store` says (shapes checked).
void rotate(at::Tensor& q, at::Tensor& k, const at::Tensor& cos, const at::Tensor& sin, const at::Tensor& positions,
            int64_t hd, const KVStore& store, const char* op) {
  const c10::cuda::CUDAGuard guard(q.device());
  check_launch(launch_rotary(dtype_of(q, op), q.data_ptr(), q.stride(0), q.size(1), k.data_ptr(), k.stride(0),
                             k.size(1), positions.size(0), hd, cos.data_ptr(), sin.data_ptr(), cos.size(0),
                             positions.data_ptr<int64_t>(), store, stream()),
               op);
}

void rotary(at::Tensor& q, at::Tensor& k, const at::Tensor& cos, const at::Tensor& sin, const at::Tensor& positions) {
  check_device(q, {&k, &cos, &sin, &positions}, "rotary");
  rotate(q, k, cos, sin, positions, check_rotary(q, k, cos, sin, positions), KVStore{}, "rotary");
}

void rotary_cache(at::Tensor& q, at::Tensor& k, const at::Tensor& v, const at::Tensor& cos, const at::Tensor& sin,
                  const at::Tensor& positions, at::Tensor& k_cache, at::Tensor& v_cache, const at::Tensor& slots) {
  check_device(q, {&k, &v, &cos, &sin, &positions, &k_cache, &v_cache, &slots}, "rotary_cache");
  const int64_t hd = check_rotary_cache(q, k, v, cos, sin, positions, k_cache, v_cache, slots);
  KVStore store{};
  store.v = v.data_ptr();
  store.v_ld = v.stride(0);
  store.k_cache = k_cache.data_ptr();
  store.v_cache = v_cache.data_ptr();
  store.slots = reinterpret_cast<const long long*>(slots.data_ptr<int64_t>());
  store.n = slots.size(0);
  store.capacity = k_cache.size(0) * k_cache.size(1);
  rotate(q, k, cos, sin, positions, hd, store, "rotary_cache");
}

void silu_mul(at::Tensor& out, const at::Tensor& gate_up) {
  check_device(gate_up, {&out}, "silu_mul");
  const int64_t inner = check_silu_mul(out, gate_up);
  const c10::cuda::CUDAGuard guard(gate_up.device());
  check_launch(launch_silu_mul(dtype_of(gate_up, "silu_mul"), out.data_ptr(), gate_up.data_ptr(), gate_up.size(0),
                               inner, stream()),
               "silu_mul");
}

void paged_decode(at::Tensor& out, const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                  const at::Tensor& block_table, const at::Tensor& context_lens, double scale) {
  check_device(q, {&out, &k_cache, &v_cache, &block_table, &context_lens}, "paged_decode");
  const PagedDecodeShape s = check_paged_decode(out, q, k_cache, v_cache, block_table, context_lens);
  TORCH_CHECK(s.head_dim <= 256, "paged_decode on CUDA takes head_dim up to 256, not ", s.head_dim);
  const c10::cuda::CUDAGuard guard(q.device());
  // The partitions' partial sums, from torch's caching allocator on this stream (freed back to it on return: the
  // allocator keeps the block for the stream's later work, and the kernels are ordered on that stream).
  const int64_t floats = paged_decode_workspace(s.batch, s.heads, s.head_dim, s.max_blocks * s.block_size);
  const at::Tensor workspace = at::empty({floats}, q.options().dtype(at::kFloat));
  check_launch(launch_paged_decode(dtype_of(q, "paged_decode"), out.data_ptr(), q.data_ptr(), k_cache.data_ptr(),
                                   v_cache.data_ptr(), block_table.data_ptr<int32_t>(),
                                   context_lens.data_ptr<int32_t>(), s.batch, s.heads, s.kv_heads, s.head_dim,
                                   s.num_blocks, s.block_size, s.max_blocks, static_cast<float>(scale),
                                   floats > 0 ? workspace.data_ptr<float>() : nullptr, stream()),
               "paged_decode");
}

// The quantized weight's tensors, checked as the CPU op checks them (cpu::quant_view), as the kernels' QuantArgs;
// and on x's device, in the rows-one-after-another layout, 16-byte aligned.
QuantArgs quant_args(const at::Tensor& x, const at::Tensor& q, const at::Tensor& scales,
                     const std::optional<at::Tensor>& mins, const std::optional<at::Tensor>& super_scales,
                     const std::optional<at::Tensor>& super_mins, const std::optional<at::Tensor>& bias, int64_t bits,
                     int64_t group_size, int64_t k, const char* op) {
  check_device(x, {&q, &scales}, op);
  for (const auto* t : {&mins, &super_scales, &super_mins, &bias}) {
    if (t->has_value()) check_device(x, {&**t}, op);
  }
  const cpu::QuantView v = cpu::quant_view(q, scales, mins, super_scales, super_mins, bias, bits, group_size, k);
  TORCH_CHECK(!v.tiled, op, ": the tiled layout is the CPU kernels'; CUDA takes qweight as [N, K*bits/8]");
  TORCH_CHECK(reinterpret_cast<uintptr_t>(v.q) % 16 == 0, op, ": qweight must be 16-byte aligned");
  QuantArgs w{};
  w.q = v.q;
  w.two_level = v.scales8 != nullptr;
  w.scales = w.two_level ? static_cast<const void*>(v.scales8) : static_cast<const void*>(v.scales16);
  w.mins = w.two_level ? static_cast<const void*>(v.mins8) : static_cast<const void*>(v.mins16);
  w.super_scales = v.super_scales;
  w.super_mins = v.super_mins;
  w.bias = v.bias;
  w.n = v.n;
  w.k = v.k;
  w.row_bytes = v.row_bytes;
  w.bits = v.bits;
  w.groups = static_cast<int>(v.groups);
  w.group_size = v.group_size;
  w.supers = w.two_level ? static_cast<int>(v.groups >> v.super_shift) : 0;
  w.zero_point = v.zero_point;
  return w;
}

void quant_linear(at::Tensor& out, const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& scales,
                  const std::optional<at::Tensor>& mins, const std::optional<at::Tensor>& super_scales,
                  const std::optional<at::Tensor>& super_mins, const std::optional<at::Tensor>& bias, int64_t bits,
                  int64_t group_size) {
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous() && out.dim() == 2 && out.is_contiguous(),
              "x and out must be contiguous [M, K] and [M, N]");
  check_device(x, {&out}, "quant_linear");
  TORCH_CHECK(out.scalar_type() == x.scalar_type(), "x and out must share one dtype");
  const QuantArgs w =
      quant_args(x, qweight, scales, mins, super_scales, super_mins, bias, bits, group_size, x.size(1), "quant_linear");
  TORCH_CHECK(out.size(0) == x.size(0) && out.size(1) == w.n, "out must be [", x.size(0), ", ", w.n, "]");
  if (x.size(0) == 0) return;
  const c10::cuda::CUDAGuard guard(x.device());
  // The kernel reads x 16 bytes at a time: a view at an odd offset is copied first.
  const at::Tensor xs = reinterpret_cast<uintptr_t>(x.data_ptr()) % 16 == 0 ? x : x.clone();
  const DType dtype = dtype_of(x, "quant_linear");
  // 16-bit x rounded to 8 bits, from torch's caching allocator on this stream (as paged_decode's workspace).
  const at::Tensor workspace =
      at::empty({quant_linear_workspace(dtype, x.size(0), x.size(1))}, x.options().dtype(at::kByte));
  check_launch(launch_quant_linear(dtype, out.data_ptr(), xs.data_ptr(), x.size(0), w, workspace.data_ptr(), stream()),
               "quant_linear");
}

void dequantize(at::Tensor& out, const at::Tensor& qweight, const at::Tensor& scales,
                const std::optional<at::Tensor>& mins, const std::optional<at::Tensor>& super_scales,
                const std::optional<at::Tensor>& super_mins, int64_t bits, int64_t group_size) {
  TORCH_CHECK(out.dim() == 2 && out.is_contiguous(), "out must be a contiguous [N, K]");
  const QuantArgs w = quant_args(out, qweight, scales, mins, super_scales, super_mins, std::nullopt, bits, group_size,
                                 out.size(1), "dequantize");
  TORCH_CHECK(out.size(0) == w.n, "out must have ", w.n, " rows");
  const c10::cuda::CUDAGuard guard(out.device());
  check_launch(launch_dequantize(dtype_of(out, "dequantize"), out.data_ptr(), w, stream()), "dequantize");
}

}  // namespace
}  // namespace ember::cuda

TORCH_LIBRARY_IMPL(ember, CUDA, m) {
  m.impl("paged_decode", &ember::cuda::paged_decode);
  m.impl("rms_norm", &ember::cuda::rms_norm);
  m.impl("add_rms_norm", &ember::cuda::add_rms_norm);
  m.impl("rotary", &ember::cuda::rotary);
  m.impl("rotary_cache", &ember::cuda::rotary_cache);
  m.impl("silu_mul", &ember::cuda::silu_mul);
  m.impl("quant_linear", &ember::cuda::quant_linear);
  m.impl("dequantize", &ember::cuda::dequantize);
}
