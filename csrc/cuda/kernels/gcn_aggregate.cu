// GCN aggregation: PyG's gcn_norm fused into the SpMM sum, so that no normalised
// edge-weight array is written or read:
//   out[i] = dis[i] * (sum_{e=(j->i), j != i} w_e dis[j] x[j] + loop_w[i] dis[i] x[i]).
// It runs spmm.cu's sum kernel (spmm_launch): the edge weight w_e dis[j] is formed as a
// tile loads its edges, the row factor and the self loop as the row is written.
#include "spmm.cuh"

using fastalign::cuda::spmm_launch;
using fastalign::cuda::spmm_workspace;

extern "C" size_t fa_gcn_aggregate_workspace_bytes(const fa_csr* g, int64_t F, int64_t split) {
  return spmm_workspace(g, F, FA_SUM, split);
}

extern "C" cudaError_t fa_gcn_aggregate(const fa_csr* g, const void* weight, const void* x,
                                        int64_t F, fa_dtype dtype, const float* dis,
                                        const float* loop_w, void* out, int64_t split,
                                        void* workspace, size_t workspace_bytes,
                                        cudaStream_t stream) {
  if (dis == nullptr) return cudaErrorInvalidValue;
  return spmm_launch(g, weight, x, F, dtype, FA_SUM, dis, loop_w, out, nullptr, FA_I64, split,
                     workspace, workspace_bytes, stream);
}
