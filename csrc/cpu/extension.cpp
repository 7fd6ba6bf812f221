// fastalign._C: the Python module that carries the CPU kernels. The kernels register
// themselves as torch ops (namespace fastalign_cpu, CPU dispatch key) in their own
// files; this module only makes the shared library importable and lists them (plain
// pybind11: torch/extension.h would add the whole C++ frontend to the build).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "cpu/registry.h"
#include "cpu/segment.h"

PYBIND11_MODULE(_C, m) {
  m.doc() = "fastalign C++/OpenMP CPU kernels";
  m.attr("FUNCTIONS") = fastalign::cpu::registered_functions();
  m.def("num_threads", []() { return at::get_num_threads(); });
  // how many threads a traversal of `work` rows plus edges runs on (1: no parallel region)
  m.def("threads_for", [](int64_t work) { return fastalign::cpu::threads_for(work); });
}
