#pragma once
// Names of the backend functions (fastalign.backends.BACKEND_FUNCTIONS) that the CPU
// kernels implement; fastalign.backends.cpu forwards exactly these.
#include <string>
#include <vector>

namespace fastalign {
namespace cpu {

inline std::vector<std::string> registered_functions() {
  return {};
}

}  // namespace cpu
}  // namespace fastalign
