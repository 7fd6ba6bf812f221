// Backward of the fused structure KL, by recomputation from the per-node state
// (FlashAttention style): destination gradients by CSR rows, source gradients by
// transpose rows, where the state is read at the edge's destination. No atomics.
#include "pair.cuh"

using namespace fastalign::cuda;

extern "C" size_t fa_structure_kl_backward_workspace_bytes(const fa_csr* g, const fa_csr* gt,
                                                           int64_t Fs, int64_t Fp,
                                                           int64_t split) {
  if (split <= 0) split = fa_default_split(g->num_edges);
  const int64_t w = Fs + Fp;
  const size_t a = pair_workspace_bytes(g, w, split);
  const size_t b = pair_workspace_bytes(gt, w, split);
  return a > b ? a : b;  // the two passes reuse one workspace, in stream order
}

extern "C" cudaError_t fa_structure_kl_backward(
    const fa_csr* g, const fa_csr* gt, const void* s_dst, const void* s_src, int64_t Fs,
    const void* p_dst, const void* p_src, int64_t Fp, fa_dtype dtype, fa_sim sim, float tau,
    const float* lse_s, const float* lse_p, const float* kl, const float* grad_kl,
    void* g_s_dst, void* g_s_src, void* g_p_dst, void* g_p_src, int64_t split,
    void* workspace, size_t workspace_bytes, cudaStream_t stream) {
  if (split <= 0) split = fa_default_split(g->num_edges);
  if (g->itype != gt->itype) return cudaErrorInvalidValue;
  if (workspace_bytes < fa_structure_kl_backward_workspace_bytes(g, gt, Fs, Fp, split))
    return cudaErrorInvalidValue;
  return dispatch_types(dtype, g->itype, [&](auto tv, auto iv) -> cudaError_t {
    using T = decltype(tv);
    using I = decltype(iv);
    const int64_t widths[2] = {Fs, Fp};
    const void* ptrs[8] = {s_dst, s_src, p_dst, p_src, g_s_dst, g_s_src, g_p_dst, g_p_src};
    int vec;
    TileShape shape;
    cudaError_t err = pair_shape<T>(widths, 2, ptrs, 8, vec, shape);
    if (err != cudaSuccess) return err;
    // pass 0: destination gradients over the CSR (state on the row node);
    // pass 1: source gradients over the transpose (state on the neighbour).
    for (int pass = 0; pass < 2; ++pass) {
      const fa_csr* walk = pass == 0 ? g : gt;
      if (walk->num_rows == 0) continue;
      Carve c{static_cast<char*>(workspace)};
      Schedule s;
      if ((err = build_schedule<I>(walk, split, c, s, stream)) != cudaSuccess) return err;
      PairArgs<T, I> a;
      a.rowptr = static_cast<const I*>(walk->rowptr);
      a.col = static_cast<const I*>(walk->col);
      a.own[0] = static_cast<const T*>(pass == 0 ? s_dst : s_src);
      a.other[0] = static_cast<const T*>(pass == 0 ? s_src : s_dst);
      a.own[1] = static_cast<const T*>(pass == 0 ? p_dst : p_src);
      a.other[1] = static_cast<const T*>(pass == 0 ? p_src : p_dst);
      a.grad[0] = static_cast<T*>(pass == 0 ? g_s_dst : g_s_src);
      a.grad[1] = static_cast<T*>(pass == 0 ? g_p_dst : g_p_src);
      a.F[0] = Fs;
      a.F[1] = Fp;
      a.sim = sim;
      a.tau = tau;
      a.st_lse_s = lse_s;
      a.st_lse_p = lse_p;
      a.st_kl = kl;
      a.st_g = grad_kl;
      a.state_on_row = pass == 0;
      a.part_width = Fs + Fp;
      a.part = c.take<float>(s.max_slots * a.part_width);
      err = launch_pair<T>(vec, shape, [&](auto sh, auto vc) -> cudaError_t {
        constexpr int L = decltype(sh)::lanes, NT = decltype(sh)::nt, V = decltype(vc)::value;
        pair_grad_kernel<T, I, V, L, NT, kKLGrad>
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
