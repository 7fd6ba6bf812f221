// What spmm.cu shares with gcn_aggregate.cu: the forward's launch, whose sum kernel
// applies PyG's GCN normalisation on the fly when given `dis` (its kernels stay in
// spmm.cu, compiled once).
#pragma once

#include "fastalign_cuda.h"

namespace fastalign {
namespace cuda {

// The forward's workspace: the schedule of g's row segments, then the partial slots of
// split rows (and their winners for FA_MAX). split <= 0 picks fa_default_split.
size_t spmm_workspace(const fa_csr* g, int64_t F, fa_reduce reduce, int64_t split);

// fa_spmm_forward, and with dis != NULL (FA_SUM only, a square graph) the GCN
// normalisation of fa_gcn_aggregate: w_e dis[j] as each edge is loaded, then
// dis[i] * (acc + loop_w[i] dis[i] x[i]) as row i is written, self-loop edges skipped
// when loop_w != NULL.
cudaError_t spmm_launch(const fa_csr* g, const void* weight, const void* x, int64_t F,
                        fa_dtype dtype, fa_reduce reduce, const float* dis, const float* loop_w,
                        void* out, void* arg, fa_itype arg_type, int64_t split, void* workspace,
                        size_t workspace_bytes, cudaStream_t stream);

}  // namespace cuda
}  // namespace fastalign
