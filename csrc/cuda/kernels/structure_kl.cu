// The fused structural-alignment loss: per destination i, KL(q_i || p_i) between the
// softmaxes (over i's in-edges) of the student's and the peer's scaled similarities.
//
// Forward: one pass per row segment with an online softmax for both students; writes
// only per-node state (kl, lse_s, lse_p), never an E-sized buffer.
// The backward is in structure_kl_backward.cu (separate files build in parallel).
#include "pair.cuh"

using namespace fastalign::cuda;

extern "C" size_t fa_structure_kl_workspace_bytes(const fa_csr* g, int64_t split) {
  if (split <= 0) split = fa_default_split(g->num_edges);
  return pair_workspace_bytes(g, kKLState, split);
}

extern "C" cudaError_t fa_structure_kl_forward(const fa_csr* g, const void* s_dst,
                                               const void* s_src, int64_t Fs, const void* p_dst,
                                               const void* p_src, int64_t Fp, fa_dtype dtype,
                                               fa_sim sim, float tau, void* kl, float* lse_s,
                                               float* lse_p, int64_t split, void* workspace,
                                               size_t workspace_bytes, cudaStream_t stream) {
  if (split <= 0) split = fa_default_split(g->num_edges);
  if (g->num_rows == 0) return cudaSuccess;
  if (workspace_bytes < fa_structure_kl_workspace_bytes(g, split)) return cudaErrorInvalidValue;
  return dispatch_types(dtype, g->itype, [&](auto tv, auto iv) -> cudaError_t {
    using T = decltype(tv);
    using I = decltype(iv);
    const int64_t widths[2] = {Fs, Fp};
    const void* ptrs[4] = {s_dst, s_src, p_dst, p_src};
    int vec;
    TileShape shape;
    cudaError_t err = pair_shape<T>(widths, 2, ptrs, 4, vec, shape);
    if (err != cudaSuccess) return err;
    Carve c{static_cast<char*>(workspace)};
    Schedule s;
    if ((err = build_schedule<I>(g, split, c, s, stream)) != cudaSuccess) return err;
    PairArgs<T, I> a;
    a.rowptr = static_cast<const I*>(g->rowptr);
    a.col = static_cast<const I*>(g->col);
    a.own[0] = static_cast<const T*>(s_dst);
    a.other[0] = static_cast<const T*>(s_src);
    a.own[1] = static_cast<const T*>(p_dst);
    a.other[1] = static_cast<const T*>(p_src);
    a.F[0] = Fs;
    a.F[1] = Fp;
    a.sim = sim;
    a.tau = tau;
    a.kl = static_cast<T*>(kl);
    a.lse_s = lse_s;
    a.lse_p = lse_p;
    a.part = c.take<float>(s.max_slots * kKLState);
    err = launch_pair<T>(vec, shape, [&](auto sh, auto vc) -> cudaError_t {
      constexpr int L = decltype(sh)::lanes, NT = decltype(sh)::nt, V = decltype(vc)::value;
      kl_forward_kernel<T, I, V, L, NT><<<grid_for_segments(s, kBlock / L), kBlock, 0, stream>>>(
          a, s);
      return cudaGetLastError();
    });
    if (err != cudaSuccess) return err;
    const unsigned blocks = (grid_for_split_rows(s) + kBlock - 1) / kBlock;
    kl_forward_combine_kernel<T, I><<<blocks, kBlock, 0, stream>>>(a, s);
    return cudaGetLastError();
  });
}
