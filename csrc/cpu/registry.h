#pragma once
// Names of the backend functions (fastalign.backends.BACKEND_FUNCTIONS and the optional
// fast paths of OPTIONAL_FUNCTIONS) that the CPU kernels implement, each registered as
// torch.ops.fastalign_cpu.<name> for the CPU dispatch key in its own file;
// fastalign.backends.cpu forwards exactly these.
#include <string>
#include <vector>

namespace fastalign {
namespace cpu {

inline std::vector<std::string> registered_functions() {
  return {
      "spmm_forward",          "spmm_max_backward",   "sddmm",
      "gcn_aggregate",         "edge_similarity",     "edge_similarity_backward",
      "edge_softmax",          "edge_softmax_backward", "structure_kl_forward",
      "structure_kl_backward", "structure_kl_forward_with_grad_state",
      "structure_kl_student_backward", "gat_aggregate_forward", "gat_aggregate_backward",
  };
}

}  // namespace cpu
}  // namespace fastalign
