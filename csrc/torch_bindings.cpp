// ember._C: registers Ember's native ops with torch (torch.ops.ember.*). Importing the module loads this library,
// whose static registrations below run at load; the module itself defines no Python functions.

#include <Python.h>
#include <torch/library.h>

#include <string>

#include "cpu/ops.h"

namespace {

std::string cpu_isa() { return ember::cpu::isa_name(); }

}  // namespace

TORCH_LIBRARY(ember, m) {
  m.def(
      "paged_decode(Tensor(a!) out, Tensor q, Tensor k_cache, Tensor v_cache, Tensor block_table, "
      "Tensor context_lens, float scale) -> ()");
  m.def("cpu_isa() -> str", &cpu_isa);
}

TORCH_LIBRARY_IMPL(ember, CPU, m) { m.impl("paged_decode", &ember::cpu::paged_decode); }

extern "C" PyObject* PyInit__C() {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "Ember's native ops (torch.ops.ember)", -1, nullptr};
  return PyModule_Create(&module);
}
