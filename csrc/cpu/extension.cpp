// fastalign._C: the Python module that carries the CPU kernels. The kernels register
// themselves for the CPU dispatch key (namespace fastalign_cpu, TORCH_LIBRARY_IMPL) in
// their own files, against the schemas of fastalign/backends/schemas.py; this module
// only makes the shared library importable (plain pybind11: torch/extension.h would add
// the whole C++ frontend to the build).
#include <pybind11/pybind11.h>

#include "cpu/segment.h"

PYBIND11_MODULE(_C, m) {
  m.doc() = "fastalign C++/OpenMP CPU kernels (ops in torch.ops.fastalign_cpu)";
  m.def("num_threads", []() { return at::get_num_threads(); });
  // how many threads a traversal of `work` rows plus edges runs on (1: no parallel region)
  m.def("threads_for", [](int64_t work) { return fastalign::cpu::threads_for(work); });
}
