// Edge similarity s_e = k(x_dst[i], x_src[j]) (and sddmm, the FA_LINEAR case); the
// backward is in edge_similarity_backward.cu (separate files build in parallel).
#include "pair.cuh"

using namespace fastalign::cuda;


extern "C" size_t fa_edge_similarity_workspace_bytes(const fa_csr* g, int64_t split) {
  if (split <= 0) split = fa_default_split(g->num_edges);
  Carve c{nullptr};
  Schedule s;
  cudaError_t err = g->itype == FA_I32 ? build_schedule<int32_t>(g, split, c, s, 0)
                                       : build_schedule<int64_t>(g, split, c, s, 0);
  return err == cudaSuccess ? align_up(c.off) : 0;
}

extern "C" cudaError_t fa_edge_similarity(const fa_csr* g, const void* x_dst, const void* x_src,
                                          int64_t F, fa_dtype dtype, fa_sim sim, void* out,
                                          int64_t split, void* workspace, size_t workspace_bytes,
                                          cudaStream_t stream) {
  if (split <= 0) split = fa_default_split(g->num_edges);
  if (g->num_edges == 0) return cudaSuccess;
  if (workspace_bytes < fa_edge_similarity_workspace_bytes(g, split)) return cudaErrorInvalidValue;
  return dispatch_types(dtype, g->itype, [&](auto tv, auto iv) -> cudaError_t {
    using T = decltype(tv);
    using I = decltype(iv);
    const int64_t widths[1] = {F};
    const void* ptrs[2] = {x_dst, x_src};
    int vec;
    TileShape shape;
    cudaError_t err = pair_shape<T>(widths, 1, ptrs, 2, vec, shape);
    if (err != cudaSuccess) return err;
    Carve c{static_cast<char*>(workspace)};
    Schedule s;
    if ((err = build_schedule<I>(g, split, c, s, stream)) != cudaSuccess) return err;
    PairArgs<T, I> a;
    a.rowptr = static_cast<const I*>(g->rowptr);
    a.col = static_cast<const I*>(g->col);
    a.own[0] = static_cast<const T*>(x_dst);
    a.other[0] = static_cast<const T*>(x_src);
    a.F[0] = F;
    a.sim = sim;
    a.out_edge = static_cast<T*>(out);
    return launch_pair<T>(vec, shape, [&](auto sh, auto vc) -> cudaError_t {
      constexpr int L = decltype(sh)::lanes, NT = decltype(sh)::nt, V = decltype(vc)::value;
      edge_sim_kernel<T, I, V, L, NT><<<grid_for_segments(s, kBlock / L), kBlock, 0, stream>>>(a, s);
      return cudaGetLastError();
    });
  });
}
