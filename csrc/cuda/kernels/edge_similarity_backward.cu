// Backward of the edge similarity: destination gradients by CSR rows, source gradients
// by transpose rows (no atomics; split rows combined in order).
#include "pair.cuh"

using namespace fastalign::cuda;

extern "C" size_t fa_edge_similarity_backward_workspace_bytes(const fa_csr* g, const fa_csr* gt,
                                                              int64_t F, int64_t split) {
  if (split <= 0) split = fa_default_split(g->num_edges);
  const size_t a = pair_workspace_bytes(g, F, split);
  const size_t b = pair_workspace_bytes(gt, F, split);
  return a > b ? a : b;  // the two passes reuse one workspace, in stream order
}

extern "C" cudaError_t fa_edge_similarity_backward(
    const fa_csr* g, const fa_csr* gt, const int64_t* perm_t, const void* x_dst,
    const void* x_src, const void* grad_s, int64_t F, fa_dtype dtype, fa_sim sim,
    void* grad_dst, void* grad_src, int64_t split, void* workspace, size_t workspace_bytes,
    cudaStream_t stream) {
  if (split <= 0) split = fa_default_split(g->num_edges);
  if (g->itype != gt->itype) return cudaErrorInvalidValue;
  if (workspace_bytes < fa_edge_similarity_backward_workspace_bytes(g, gt, F, split))
    return cudaErrorInvalidValue;
  return dispatch_types(dtype, g->itype, [&](auto tv, auto iv) -> cudaError_t {
    using T = decltype(tv);
    using I = decltype(iv);
    const int64_t widths[1] = {F};
    const void* ptrs[4] = {x_dst, x_src, grad_dst, grad_src};
    int vec;
    TileShape shape;
    cudaError_t err = pair_shape<T>(widths, 1, ptrs, 4, vec, shape);
    if (err != cudaSuccess) return err;
    // pass 0: destinations over the CSR; pass 1: sources over the transpose.
    for (int pass = 0; pass < 2; ++pass) {
      const fa_csr* walk = pass == 0 ? g : gt;
      if (walk->num_rows == 0 || F == 0) continue;
      Carve c{static_cast<char*>(workspace)};
      Schedule s;
      if ((err = build_schedule<I>(walk, split, c, s, stream)) != cudaSuccess) return err;
      PairArgs<T, I> a;
      a.rowptr = static_cast<const I*>(walk->rowptr);
      a.col = static_cast<const I*>(walk->col);
      a.perm = pass == 0 ? nullptr : perm_t;
      a.own[0] = static_cast<const T*>(pass == 0 ? x_dst : x_src);
      a.other[0] = static_cast<const T*>(pass == 0 ? x_src : x_dst);
      a.grad[0] = static_cast<T*>(pass == 0 ? grad_dst : grad_src);
      a.F[0] = F;
      a.sim = sim;
      a.grad_s = static_cast<const T*>(grad_s);
      a.part = c.take<float>(s.max_slots * F);
      a.part_width = F;
      err = launch_pair<T>(vec, shape, [&](auto sh, auto vc) -> cudaError_t {
        constexpr int L = decltype(sh)::lanes, NT = decltype(sh)::nt, V = decltype(vc)::value;
        pair_grad_kernel<T, I, V, L, NT, kEdgeGrad>
            <<<grid_for_segments(s, kBlock / L), kBlock, 0, stream>>>(a, s);
        return cudaGetLastError();
      });
      if (err != cudaSuccess) return err;
      pair_grad_combine_kernel<T, I><<<grid_for_split_rows(s), kBlock, 0, stream>>>(a, s);
      if ((err = cudaGetLastError()) != cudaSuccess) return err;
    }
    return cudaSuccess;
  });
}
