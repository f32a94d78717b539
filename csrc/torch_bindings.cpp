// ember._C: registers Ember's native ops with torch (torch.ops.ember.*). Importing the module loads this library,
// whose static registrations below run at load; the module itself defines no Python functions.

#include <Python.h>
#include <torch/library.h>

#include <string>

#include "cpu/isa.h"
#include "cpu/ops.h"

namespace {

std::string cpu_isa() { return ember::cpu::isa_name(); }

}  // namespace

TORCH_LIBRARY(ember, m) {
  m.def(
      "paged_decode(Tensor(a!) out, Tensor q, Tensor k_cache, Tensor v_cache, Tensor block_table, "
      "Tensor context_lens, float scale) -> ()");
  m.def(
      "paged_prefill(Tensor(a!) out, Tensor q, Tensor k_cache, Tensor v_cache, Tensor blocks, int start, "
      "float scale) -> ()");
  m.def(
      "quant_linear(Tensor(a!) out, Tensor x, Tensor qweight, Tensor scales, Tensor? mins, Tensor? super_scales, "
      "Tensor? super_mins, Tensor? bias, int bits, int group_size) -> ()");
  m.def(
      "quant_matmul(Tensor(a!) out, Tensor x, Tensor qweight, Tensor scales, Tensor? mins, Tensor? super_scales, "
      "Tensor? super_mins, Tensor? bias, int bits, int group_size) -> ()");
  m.def(
      "dequantize(Tensor(a!) out, Tensor qweight, Tensor scales, Tensor? mins, Tensor? super_scales, "
      "Tensor? super_mins, int bits, int group_size) -> ()");
  m.def("rms_norm(Tensor(a!) out, Tensor x, Tensor weight, float eps) -> ()");
  m.def("add_rms_norm(Tensor(a!) x, Tensor(b!) residual, Tensor weight, float eps) -> ()");
  m.def("rotary(Tensor(a!) q, Tensor(b!) k, Tensor cos, Tensor sin, Tensor positions) -> ()");
  m.def(
      "rotary_cache(Tensor(a!) q, Tensor(b!) k, Tensor v, Tensor cos, Tensor sin, Tensor positions, "
      "Tensor(c!) k_cache, Tensor(d!) v_cache, Tensor slots) -> ()");
  m.def("silu_mul(Tensor(a!) out, Tensor gate_up) -> ()");
  m.def("cpu_isa() -> str", &cpu_isa);
  m.def("quant_kernel(str choice='') -> str", &ember::cpu::quant_kernel);
}

TORCH_LIBRARY_IMPL(ember, CPU, m) {
  m.impl("paged_decode", &ember::cpu::paged_decode);
  m.impl("paged_prefill", &ember::cpu::paged_prefill);
  m.impl("quant_linear", &ember::cpu::quant_linear);
  m.impl("quant_matmul", &ember::cpu::quant_matmul);
  m.impl("dequantize", &ember::cpu::dequantize);
  m.impl("rms_norm", &ember::cpu::rms_norm);
  m.impl("add_rms_norm", &ember::cpu::add_rms_norm);
  m.impl("rotary", &ember::cpu::rotary);
  m.impl("rotary_cache", &ember::cpu::rotary_cache);
  m.impl("silu_mul", &ember::cpu::silu_mul);
}

extern "C" PyObject* PyInit__C() {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "Ember's native ops (torch.ops.ember)", -1, nullptr};
  return PyModule_Create(&module);
}
