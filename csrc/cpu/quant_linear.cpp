// ember::quant_linear and ember::dequantize on the CPU: weight-only quantized matrices (quant_view.h) multiplied
// as they are stored, or expanded for a dense matmul.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <cstdlib>
#include <optional>
#include <type_traits>

#include "isa.h"
#include "kernels.h"
#include "ops.h"
#include "quant_input.h"
#include "quant_view.h"

// GCC warns of an "uninitialized" operand in every AVX-512 intrinsic that takes _mm512_undefined_*() for its
// masked-off lanes (a full mask: none is read) once the tiles inline thousands of them: silenced, not a fault.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"

// One copy per instruction set (isa_variants.h).
#define EMBER_KERNEL_IMPL "quant_linear_impl.h"
#include "isa_variants.h"

// The integer kernel, with the float kernel's helpers built for the same target.
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,fma,f16c")
#define EMBER_AVX512 1
namespace ember::cpu::vnni {
#include "quant_linear_impl.h"
#include "quant_linear_vnni_impl.h"
#include "quant_linear_int8x_impl.h"
#include "quant_linear_gemm_impl.h"
}
#undef EMBER_AVX512
#pragma GCC pop_options

// The bfloat16-dot kernel, with the integer kernel's helpers built for its own target: kept out of the region above
// so that no instruction of AVX512-BF16 reaches code that runs on CPUs with VNNI alone.
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx512bf16,fma,f16c")
#define EMBER_AVX512 1
namespace ember::cpu::bf16dot {
#include "quant_linear_impl.h"
#include "quant_linear_vnni_impl.h"
#include "quant_linear_bf16_impl.h"
}
#undef EMBER_AVX512
#pragma GCC pop_options

namespace ember::cpu {
namespace {

template <typename T>
const T* ptr(const std::optional<at::Tensor>& t) {
  return t.has_value() ? reinterpret_cast<const T*>(t->data_ptr()) : nullptr;
}

bool is_power_of_two(int64_t v) { return v > 0 && (v & (v - 1)) == 0; }

// Checks the tensors against each other and views them as a QuantView over W [N, K].
QuantView view(const at::Tensor& q, const at::Tensor& scales, const std::optional<at::Tensor>& mins,
               const std::optional<at::Tensor>& super_scales, const std::optional<at::Tensor>& super_mins,
               const std::optional<at::Tensor>& bias, int64_t bits, int64_t group_size, int64_t k) {
  TORCH_CHECK(bits == 4 || bits == 6 || bits == 8, "bits must be 4, 6 or 8, got ", bits);
  TORCH_CHECK((bits == 4 && group_size == 32) || (bits != 4 && (group_size == 16 || group_size == 32)),
              "unsupported group_size=", group_size, " for bits=", bits);
  TORCH_CHECK(q.is_contiguous() && (q.dim() == 2 || q.dim() == 4),
              "qweight must be a contiguous [N, K*bits/8] tensor, or [N/8, B, 8, U] tiled");
  TORCH_CHECK(q.scalar_type() == (bits == 8 ? at::kChar : at::kByte), "qweight must be ",
              bits == 8 ? "int8" : "uint8", " for bits=", bits);
  const bool tiled = q.dim() == 4;
  const int64_t row_bytes = tiled ? q.size(1) * q.size(3) : q.size(1);
  const int64_t n = tiled ? q.size(0) * kTileRows : q.size(0);
  TORCH_CHECK(k % group_size == 0 && row_bytes * 8 == k * bits, "qweight ", q.sizes(), " does not hold K=", k,
              " values per row at ", bits, " bits");
  TORCH_CHECK(!tiled || (q.size(2) == kTileRows && q.size(3) == tiled_block_bytes(static_cast<int>(bits))),
              "tiled qweight must be [N/8, B, 8, ", tiled_block_bytes(static_cast<int>(bits)), "], got ", q.sizes());
  // 6 bits: each 128 values' nibbles and top bits are read as one 64-byte block and its 32-byte partner.
  TORCH_CHECK(bits != 6 || k % 128 == 0, "6-bit weights need K a multiple of 128, got K=", k);
  const int64_t groups = k / group_size;
  auto check_groups = [&](const at::Tensor& t, const char* name) {
    TORCH_CHECK(t.dim() == 2 && t.size(0) == n && t.size(1) == groups && t.is_contiguous(), name,
                " must be a contiguous [", n, ", ", groups, "] tensor, got ", t.sizes());
  };
  QuantView w;
  w.q = reinterpret_cast<const uint8_t*>(q.data_ptr());
  w.n = n;
  w.k = k;
  w.groups = groups;
  w.bits = static_cast<int>(bits);
  w.group_size = static_cast<int>(group_size);
  w.zero_point = bits == 6 && group_size == 16 ? 32 : 0;
  w.tiled = tiled;
  w.row_bytes = row_bytes;
  w.block_stride = tiled ? kTileRows * tiled_block_bytes(w.bits) : 64;
  w.top_offset = tiled ? 64 : k / 2;
  w.top_stride = tiled ? kTileRows * tiled_block_bytes(w.bits) : 32;
  check_groups(scales, "scales");
  if (mins.has_value()) {
    check_groups(*mins, "mins");
    TORCH_CHECK(mins->scalar_type() == scales.scalar_type(), "mins must have the scales' dtype");
  }
  if (scales.scalar_type() == at::kHalf) {
    TORCH_CHECK(!super_scales.has_value() && !super_mins.has_value(), "float16 scales take no super-scales");
    w.scales16 = reinterpret_cast<const uint16_t*>(scales.data_ptr());
    w.mins16 = ptr<uint16_t>(mins);
  } else {
    TORCH_CHECK(scales.scalar_type() == at::kChar, "scales must be float16 (one level) or int8 (two levels)");
    TORCH_CHECK(super_scales.has_value(), "int8 scales need super_scales");
    TORCH_CHECK(mins.has_value() == super_mins.has_value(), "int8 mins and super_mins come together");
    const int64_t supers = super_scales->size(-1);
    TORCH_CHECK(supers > 0 && groups % supers == 0 && is_power_of_two(groups / supers),
                "super_scales must cover a power-of-two number of groups each");
    for (const auto* t : {&*super_scales, super_mins.has_value() ? &*super_mins : nullptr}) {
      if (t == nullptr) continue;
      TORCH_CHECK(t->scalar_type() == at::kFloat && t->dim() == 2 && t->size(0) == n && t->size(1) == supers &&
                      t->is_contiguous(),
                  "super_scales and super_mins must be contiguous float32 [", n, ", ", supers, "]");
    }
    w.scales8 = reinterpret_cast<const int8_t*>(scales.data_ptr());
    w.mins8 = ptr<int8_t>(mins);
    w.super_scales = super_scales->data_ptr<float>();
    w.super_mins = super_mins.has_value() ? super_mins->data_ptr<float>() : nullptr;
    w.super_shift = __builtin_ctzll(static_cast<unsigned long long>(groups / supers));
  }
  if (bias.has_value()) {
    TORCH_CHECK(bias->scalar_type() == at::kFloat && bias->dim() == 1 && bias->size(0) == n && bias->is_contiguous(),
                "bias must be a contiguous float32 [", n, "]");
    w.bias = bias->data_ptr<float>();
  }
  return w;
}

// The kernel bfloat16 x on quantized weights takes (quant_kernel): the bfloat16-dot one (x as it is), the
// integer one (x rounded to 16 bits) or the 8-bit x one (x rounded to 8 bits per group of 32). By default the 8-bit
// x one wherever the CPU has AVX512-VNNI, or as EMBER_QUANT_KERNEL ("bf16", "int" or "int8") says at load.
enum class XKernel : int { kAuto, kBf16, kInt, kInt8 };

XKernel parse_kernel(const char* name) {
  if (name == nullptr || std::strcmp(name, "auto") == 0 || name[0] == 0) return XKernel::kAuto;
  if (std::strcmp(name, "bf16") == 0) return XKernel::kBf16;
  if (std::strcmp(name, "int") == 0) return XKernel::kInt;
  if (std::strcmp(name, "int8") == 0) return XKernel::kInt8;
  return XKernel::kAuto;
}

std::atomic<XKernel> chosen_kernel{parse_kernel(std::getenv("EMBER_QUANT_KERNEL"))};

// The choice made concrete for this CPU: the bfloat16-dot kernel needs AVX512-BF16, the 8-bit x one VNNI.
XKernel bf16_x_kernel() {
  const XKernel k = chosen_kernel.load(std::memory_order_relaxed);
  if (!cpu_has_vnni()) return XKernel::kInt;  // the float kernel
  if (k == XKernel::kBf16 && cpu_has_bf16()) return XKernel::kBf16;
  if (k == XKernel::kInt) return XKernel::kInt;
  return XKernel::kInt8;
}

// Which kernel x of type T against w runs on: bfloat16 x as chosen above (8-bit weights: the 8-bit x kernel for
// groups of 32 where chosen, else the integer one), float32 x on the integer kernel (it keeps its 16 bits). One
// kernel for every row count, so that a row's output does not depend on how many rows share its call (speculative
// decoding's verification step against a plain decode step).
template <typename T>
XKernel kernel_for(const QuantView& w) {
  if constexpr (!std::is_same_v<T, uint16_t>) {
    return XKernel::kInt;
  } else {
    const XKernel k = bf16_x_kernel();
    if (w.bits != 8) return k;
    return k == XKernel::kInt8 && w.group_size == 32 ? XKernel::kInt8 : XKernel::kInt;
  }
}

// Output rows [n_begin, n_end) of x prepared in p (quant_linear_prepare), on the kernel p was prepared for.
template <int BITS, int GS, typename T>
void part_isa(const QuantView& w, const PreparedX& p, const T* x, T* out, int64_t rows, int64_t n_begin,
              int64_t n_end) {
  if constexpr (BITS != 8 && std::is_same_v<T, uint16_t>) {
    if (p.layout == XLayout::kBf16) return bf16dot::bf16_part<BITS, GS, T>(w, p, out, rows, n_begin, n_end);
  }
  if constexpr ((BITS != 8 || GS == 32) && std::is_same_v<T, uint16_t>) {
    if (p.layout == XLayout::kGemm) return vnni::gemm_part<BITS, GS, T>(w, p, out, rows, n_begin, n_end);
    if (p.layout == XLayout::kInt8) return vnni::int8x_part<BITS, GS, T>(w, p, out, rows, n_begin, n_end);
  }
  if (cpu_has_vnni()) return vnni::vnni_part<BITS, GS, T>(w, p, out, rows, n_begin, n_end);
  switch (current_isa()) {
    case Isa::kAvx512:
      return avx512::linear_part<BITS, GS, T>(w, x, out, rows, n_begin, n_end);
    case Isa::kAvx2:
      return avx2::linear_part<BITS, GS, T>(w, x, out, rows, n_begin, n_end);
    default:
      return baseline::linear_part<BITS, GS, T>(w, x, out, rows, n_begin, n_end);
  }
}

template <int BITS, int GS, typename T>
void linear_isa(const QuantView& w, const T* x, T* out, int64_t rows, bool product) {
  if (cpu_has_vnni()) {
    // x prepared once for the kernel kernel_for names (or its matrix product); part_isa takes the one it was
    // prepared for.
    PreparedX p;
    quant_linear_prepare(w, x, rows, p, product);
    at::parallel_for(0, w.n, 64, [&](int64_t begin, int64_t end) {
      part_isa<BITS, GS, T>(w, p, x, out, rows, begin, end);
    });
    return;
  }
  switch (current_isa()) {
    case Isa::kAvx512:
      return avx512::linear<BITS, GS, T>(w, x, out, rows);
    case Isa::kAvx2:
      return avx2::linear<BITS, GS, T>(w, x, out, rows);
    default:
      return baseline::linear<BITS, GS, T>(w, x, out, rows);
  }
}

template <typename T>
void linear_any(const QuantView& w, const T* x, T* out, int64_t rows, bool product = false) {
  if (w.bits == 4) return linear_isa<4, 32, T>(w, x, out, rows, product);
  if (w.bits == 6 && w.group_size == 32) return linear_isa<6, 32, T>(w, x, out, rows, product);
  if (w.bits == 6) return linear_isa<6, 16, T>(w, x, out, rows, product);
  if (w.group_size == 32) return linear_isa<8, 32, T>(w, x, out, rows, product);
  return linear_isa<8, 16, T>(w, x, out, rows, product);
}

template <int BITS, int GS, typename T>
void dequantize_isa(const QuantView& w, T* out) {
  switch (current_isa()) {
    case Isa::kAvx512:
      return avx512::dequantize<BITS, GS, T>(w, out);
    case Isa::kAvx2:
      return avx2::dequantize<BITS, GS, T>(w, out);
    default:
      return baseline::dequantize<BITS, GS, T>(w, out);
  }
}

template <typename T>
void dequantize_any(const QuantView& w, T* out) {
  if (w.bits == 4) return dequantize_isa<4, 32, T>(w, out);
  if (w.bits == 6 && w.group_size == 32) return dequantize_isa<6, 32, T>(w, out);
  if (w.bits == 6) return dequantize_isa<6, 16, T>(w, out);
  if (w.group_size == 32) return dequantize_isa<8, 32, T>(w, out);
  return dequantize_isa<8, 16, T>(w, out);
}

}  // namespace

template <typename T>
void quant_linear_rows(const QuantView& w, const T* x, T* out, int64_t rows) {
  linear_any(w, x, out, rows);
}

template <typename T>
void quant_linear_prepare(const QuantView& w, const T* x, int64_t rows, PreparedX& p, bool product) {
  const XKernel kernel = kernel_for<T>(w);
  if constexpr (std::is_same_v<T, uint16_t>) {
    if (kernel == XKernel::kBf16) return bf16dot::prepare_x_bf16(w, x, rows, p);
    if (kernel == XKernel::kInt8 && product) return vnni::prepare_x_gemm(w, x, rows, p);
    if (kernel == XKernel::kInt8) return vnni::prepare_x_int8(w, x, rows, p);
  }
  p.layout = XLayout::kPlain;
  if (cpu_has_vnni()) vnni::prepare_x(w, x, rows, p);  // the float kernels read x as it is
}

template <typename T>
void quant_linear_part(const QuantView& w, const PreparedX& p, const T* x, T* out, int64_t rows, int64_t n_begin,
                       int64_t n_end) {
  if (w.bits == 4) return part_isa<4, 32, T>(w, p, x, out, rows, n_begin, n_end);
  if (w.bits == 6 && w.group_size == 32) return part_isa<6, 32, T>(w, p, x, out, rows, n_begin, n_end);
  if (w.bits == 6) return part_isa<6, 16, T>(w, p, x, out, rows, n_begin, n_end);
  if (w.group_size == 32) return part_isa<8, 32, T>(w, p, x, out, rows, n_begin, n_end);
  return part_isa<8, 16, T>(w, p, x, out, rows, n_begin, n_end);
}

#define EMBER_INSTANTIATE(T)                                                                                    \
  template void quant_linear_prepare<T>(const QuantView&, const T*, int64_t, PreparedX&, bool);                 \
  template void quant_linear_part<T>(const QuantView&, const PreparedX&, const T*, T*, int64_t, int64_t, int64_t);
EMBER_INSTANTIATE(float)
EMBER_INSTANTIATE(uint16_t)
#undef EMBER_INSTANTIATE

template void quant_linear_rows<float>(const QuantView&, const float*, float*, int64_t);
template void quant_linear_rows<uint16_t>(const QuantView&, const uint16_t*, uint16_t*, int64_t);

std::string quant_kernel(const std::string& choice) {
  TORCH_CHECK(choice.empty() || choice == "auto" || choice == "bf16" || choice == "int" || choice == "int8",
              "quant_kernel takes '', 'auto', 'bf16', 'int' or 'int8', got '", choice, "'");
  TORCH_CHECK(choice != "bf16" || cpu_has_bf16(), "this CPU has no AVX512-BF16 for the bfloat16-dot kernel");
  TORCH_CHECK(choice != "int8" || cpu_has_vnni(), "this CPU has no AVX512-VNNI for the 8-bit x kernel");
  if (!choice.empty()) chosen_kernel.store(parse_kernel(choice.c_str()), std::memory_order_relaxed);
  switch (bf16_x_kernel()) {
    case XKernel::kBf16:
      return "bf16";
    case XKernel::kInt8:
      return "int8";
    default:
      return "int";
  }
}

QuantView quant_view(const at::Tensor& q, const at::Tensor& scales, const std::optional<at::Tensor>& mins,
                     const std::optional<at::Tensor>& super_scales, const std::optional<at::Tensor>& super_mins,
                     const std::optional<at::Tensor>& bias, int64_t bits, int64_t group_size, int64_t k) {
  return view(q, scales, mins, super_scales, super_mins, bias, bits, group_size, k);
}

namespace {

void linear_op(at::Tensor& out, const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& scales,
               const std::optional<at::Tensor>& mins, const std::optional<at::Tensor>& super_scales,
               const std::optional<at::Tensor>& super_mins, const std::optional<at::Tensor>& bias, int64_t bits,
               int64_t group_size, bool product) {
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous() && out.dim() == 2 && out.is_contiguous(),
              "x and out must be contiguous [M, K] and [M, N]");
  TORCH_CHECK(x.scalar_type() == out.scalar_type() &&
                  (x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16),
              "x and out must both be float32 or both bfloat16");
  const QuantView w = view(qweight, scales, mins, super_scales, super_mins, bias, bits, group_size, x.size(1));
  TORCH_CHECK(out.size(0) == x.size(0) && out.size(1) == w.n, "out must be [", x.size(0), ", ", w.n, "]");
  const int64_t rows = x.size(0);
  if (rows == 0) return;
  if (x.scalar_type() == at::kFloat) {
    linear_any(w, x.data_ptr<float>(), out.data_ptr<float>(), rows);
  } else {
    linear_any(w, reinterpret_cast<const uint16_t*>(x.data_ptr()), reinterpret_cast<uint16_t*>(out.data_ptr()),
               rows, product);
  }
}

}  // namespace

void quant_linear(at::Tensor& out, const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& scales,
                  const std::optional<at::Tensor>& mins, const std::optional<at::Tensor>& super_scales,
                  const std::optional<at::Tensor>& super_mins, const std::optional<at::Tensor>& bias, int64_t bits,
                  int64_t group_size) {
  linear_op(out, x, qweight, scales, mins, super_scales, super_mins, bias, bits, group_size, false);
}

void quant_matmul(at::Tensor& out, const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& scales,
                  const std::optional<at::Tensor>& mins, const std::optional<at::Tensor>& super_scales,
                  const std::optional<at::Tensor>& super_mins, const std::optional<at::Tensor>& bias, int64_t bits,
                  int64_t group_size) {
  linear_op(out, x, qweight, scales, mins, super_scales, super_mins, bias, bits, group_size, true);
}

void dequantize(at::Tensor& out, const at::Tensor& qweight, const at::Tensor& scales,
                const std::optional<at::Tensor>& mins, const std::optional<at::Tensor>& super_scales,
                const std::optional<at::Tensor>& super_mins, int64_t bits, int64_t group_size) {
  TORCH_CHECK(out.dim() == 2 && out.is_contiguous() &&
                  (out.scalar_type() == at::kFloat || out.scalar_type() == at::kBFloat16),
              "out must be a contiguous float32 or bfloat16 [N, K]");
  const QuantView w = view(qweight, scales, mins, super_scales, super_mins, std::nullopt, bits, group_size,
                           out.size(1));
  TORCH_CHECK(out.size(0) == w.n, "out must have ", w.n, " rows");
  if (out.scalar_type() == at::kFloat) {
    dequantize_any(w, out.data_ptr<float>());
  } else {
    dequantize_any(w, reinterpret_cast<uint16_t*>(out.data_ptr()));
  }
}

}  // namespace ember::cpu
