// Per-edge "pair" kernels: an edge's value depends on both endpoint feature rows
// (edge similarity, sddmm, the structure KL). One tile per row segment (schedule.cuh)
// keeps the row node's features ("own") in registers, loads the neighbours' ("other")
// rows with 16-byte loads, and reduces per-edge statistics over the tile. Up to two
// channels (student, peer) of different widths run in one pass.
//
// Backward passes accumulate the gradient of the row node only: destination gradients
// walk the CSR, source gradients walk the transpose (the kernels are symmetric, see
// similarity.cuh). No atomics; split rows are combined from float32 slots in order.
//
// Rows must fit a tile (kMaxVectorsPerRow 16-byte vectors, i.e. 512 float32 or 1024
// half features; 128 features when the width is not a multiple of the vector): the
// launchers return cudaErrorNotSupported beyond that.
#pragma once

#include <math.h>

#include <type_traits>

#include "schedule.cuh"
#include "similarity.cuh"

namespace fastalign {
namespace cuda {
// Internal linkage: each .cu file gets its own kernel instantiations (no cross-module
// merging of template kernel stubs without -rdc).
namespace {

template <typename T, typename I>
struct PairArgs {
  const I* rowptr = nullptr;  // the CSR the tiles walk (the graph or its transpose)
  const I* col = nullptr;
  const int64_t* perm = nullptr;  // edge-gradient pass on the transpose: k -> edge
  const T* own[2] = {nullptr, nullptr};    // row-node features per channel
  const T* other[2] = {nullptr, nullptr};  // neighbour features per channel
  int64_t F[2] = {0, 0};
  fa_sim sim{};
  float tau = 1.f;
  // edge-similarity forward
  T* out_edge = nullptr;
  // structure-KL forward
  T* kl = nullptr;
  float* lse_s = nullptr;
  float* lse_p = nullptr;
  // backward
  T* grad[2] = {nullptr, nullptr};  // gradients of the row nodes, null to skip
  const T* grad_s = nullptr;        // edge mode: upstream per-edge gradient
  const float* st_lse_s = nullptr;  // KL mode: per-destination state
  const float* st_lse_p = nullptr;
  const float* st_kl = nullptr;
  const float* st_g = nullptr;
  int state_on_row = 1;  // KL mode: the destination is the row node (else the neighbour)
  float* part = nullptr;  // split-row slots
  int64_t part_width = 0;
};

constexpr int kKLState = 5;  // m_s, sum_s, m_p, sum_p, t (see kl_finish)

// ------------------------------------------------------------------ edge similarity
template <typename T, typename I, int V, int L, int NT>
__global__ void __launch_bounds__(kBlock) edge_sim_kernel(PairArgs<T, I> a, Schedule s) {
  constexpr int TPB = kBlock / L;
  auto tile = cg::tiled_partition<L>(cg::this_thread_block());
  const Segment seg = find_segment<I, TPB>(s, a.rowptr, threadIdx.x / L);
  if (!seg.valid) return;
  const int lane = tile.thread_rank();
  const int64_t F = a.F[0], cols = F / V;
  float x[NT][V];
  load_row<T, V, L, NT>(a.own[0] + seg.row * F, cols, lane, x);
  const float x2 = a.sim.kind == FA_COSINE ? tile_sum<L>(tile, lane_sq<V, NT>(x)) : 0.f;
  for (int64_t base = seg.begin; base < seg.end; base += L) {
    const int64_t e = base + lane;
    const int64_t j = e < seg.end ? ld_index(a.col + e) : 0;
    const int n = seg.end - base < L ? static_cast<int>(seg.end - base) : L;
    float mine = 0.f;
#pragma unroll 2  // two edges' rows in flight per tile
    for (int k = 0; k < n; ++k) {
      const int64_t jj = tile.shfl(j, k);
      float y[NT][V];
      load_row<T, V, L, NT>(a.other[0] + jj * F, cols, lane, y);
      float stat, y2;
      edge_stats<V, L, NT>(tile, a.sim.kind, x, y, stat, y2);
      const float v = finish_sim(a.sim, stat, x2, y2);
      if (lane == k) mine = v;
    }
    if (e < seg.end) a.out_edge[e] = from_float<T>(mine);  // coalesced
  }
}

// ------------------------------------------------------------------ structure KL forward
// Online softmax for both students: per row the running maxima m and sums of
// exp(z - m), and t = sum_e exp(z_p,e - m_p) (z_p,e - z_s,e), so that
//   lse = m + log(sum),  kl = t / sum_p - lse_p + lse_s   (since sum_e q_e = 1).
struct KLState {
  float ms = -INFINITY, ss = 0.f, mp = -INFINITY, sp = 0.f, t = 0.f;

  __device__ __forceinline__ void add(float zs, float zp) {
    const float ms2 = fmaxf(ms, zs);
    ss = ss * expf(ms - ms2) + expf(zs - ms2);
    ms = ms2;
    const float mp2 = fmaxf(mp, zp);
    const float scale = expf(mp - mp2), w = expf(zp - mp2);
    sp = sp * scale + w;
    t = t * scale + w * (zp - zs);
    mp = mp2;
  }
  // Merge a later, non-empty segment.
  __device__ __forceinline__ void merge(const KLState& o) {
    const float ms2 = fmaxf(ms, o.ms);
    ss = ss * expf(ms - ms2) + o.ss * expf(o.ms - ms2);
    ms = ms2;
    const float mp2 = fmaxf(mp, o.mp);
    const float a = expf(mp - mp2), b = expf(o.mp - mp2);
    sp = sp * a + o.sp * b;
    t = t * a + o.t * b;
    mp = mp2;
  }
};

template <typename T, typename I>
__device__ __forceinline__ void kl_finish(const PairArgs<T, I>& a, int64_t r, const KLState& st,
                                          bool empty) {
  if (empty) {
    a.kl[r] = from_float<T>(0.f);
    a.lse_s[r] = -INFINITY;
    a.lse_p[r] = -INFINITY;
    return;
  }
  const float lse_s = st.ms + logf(st.ss), lse_p = st.mp + logf(st.sp);
  a.kl[r] = from_float<T>(st.t / st.sp - lse_p + lse_s);
  a.lse_s[r] = lse_s;
  a.lse_p[r] = lse_p;
}

template <typename T, typename I, int V, int L, int NT>
__global__ void __launch_bounds__(kBlock) kl_forward_kernel(PairArgs<T, I> a, Schedule s) {
  constexpr int TPB = kBlock / L;
  auto tile = cg::tiled_partition<L>(cg::this_thread_block());
  const Segment seg = find_segment<I, TPB>(s, a.rowptr, threadIdx.x / L);
  if (!seg.valid) return;
  const int lane = tile.thread_rank();
  const int64_t Fs = a.F[0], Fp = a.F[1], cs = Fs / V, cp = Fp / V;
  const bool cosine = a.sim.kind == FA_COSINE;
  float xs[NT][V], xp[NT][V];
  load_row<T, V, L, NT>(a.own[0] + seg.row * Fs, cs, lane, xs);
  load_row<T, V, L, NT>(a.own[1] + seg.row * Fp, cp, lane, xp);
  const float xs2 = cosine ? tile_sum<L>(tile, lane_sq<V, NT>(xs)) : 0.f;
  const float xp2 = cosine ? tile_sum<L>(tile, lane_sq<V, NT>(xp)) : 0.f;
  const float inv_tau = 1.f / a.tau;
  KLState st;
  for (int64_t base = seg.begin; base < seg.end; base += L) {
    const int64_t e = base + lane;
    const int64_t j = e < seg.end ? ld_index(a.col + e) : 0;
    const int n = seg.end - base < L ? static_cast<int>(seg.end - base) : L;
#pragma unroll 2  // two edges' rows in flight per tile
    for (int k = 0; k < n; ++k) {
      const int64_t jj = tile.shfl(j, k);
      float ys[NT][V], yp[NT][V];
      load_row<T, V, L, NT>(a.other[0] + jj * Fs, cs, lane, ys);
      load_row<T, V, L, NT>(a.other[1] + jj * Fp, cp, lane, yp);
      float stat, y2;
      edge_stats<V, L, NT>(tile, a.sim.kind, xs, ys, stat, y2);
      const float zs = finish_sim(a.sim, stat, xs2, y2) * inv_tau;
      edge_stats<V, L, NT>(tile, a.sim.kind, xp, yp, stat, y2);
      const float zp = finish_sim(a.sim, stat, xp2, y2) * inv_tau;
      st.add(zs, zp);  // every lane holds the same state
    }
  }
  if (lane != 0) return;
  if (seg.slot < 0) {
    kl_finish(a, seg.row, st, seg.begin == seg.end);
  } else {
    float* p = a.part + seg.slot * kKLState;
    p[0] = st.ms;
    p[1] = st.ss;
    p[2] = st.mp;
    p[3] = st.sp;
    p[4] = st.t;
  }
}

template <typename T, typename I>
__global__ void kl_forward_combine_kernel(PairArgs<T, I> a, Schedule s) {
  const unsigned long long n = *s.num_split;
  for (unsigned long long k = blockIdx.x * static_cast<unsigned long long>(blockDim.x) + threadIdx.x;
       k < n; k += static_cast<unsigned long long>(gridDim.x) * blockDim.x) {
    const int64_t r = s.split_rows[k];
    int64_t first, count;
    split_slots(s, r, first, count);
    KLState st;
    for (int64_t m = 0; m < count; ++m) {  // segment order: deterministic
      const float* p = a.part + (first + m) * kKLState;
      KLState o;
      o.ms = p[0];
      o.ss = p[1];
      o.mp = p[2];
      o.sp = p[3];
      o.t = p[4];
      if (m == 0) st = o;
      else st.merge(o);
    }
    kl_finish(a, r, st, false);
  }
}

// ------------------------------------------------------------------ backward
enum GradMode { kEdgeGrad = 0, kKLGrad = 1 };

// Gradient of the row node's features, per channel. kEdgeGrad: one channel, the
// upstream gradient is grad_s of the edge. kKLGrad: two channels; with the destination
// state (lse_s, lse_p, kl, g) of the edge's destination,
//   d sim_s = g (p - q) / tau,   d sim_p = g q (log q - log p - kl) / tau.
template <typename T, typename I, int V, int L, int NT, int MODE>
__global__ void __launch_bounds__(kBlock) pair_grad_kernel(PairArgs<T, I> a, Schedule s) {
  constexpr int TPB = kBlock / L;
  constexpr int NCH = MODE == kKLGrad ? 2 : 1;
  auto tile = cg::tiled_partition<L>(cg::this_thread_block());
  const Segment seg = find_segment<I, TPB>(s, a.rowptr, threadIdx.x / L);
  if (!seg.valid) return;
  const int lane = tile.thread_rank();
  const fa_kernel kind = a.sim.kind;
  const float inv_tau = 1.f / a.tau;

  float x[NCH][NT][V], acc[NCH][NT][V], x2[NCH];
  int64_t cols[NCH];
#pragma unroll
  for (int c = 0; c < NCH; ++c) {
    cols[c] = a.F[c] / V;
    load_row<T, V, L, NT>(a.own[c] + seg.row * a.F[c], cols[c], lane, x[c]);
    x2[c] = kind == FA_COSINE ? tile_sum<L>(tile, lane_sq<V, NT>(x[c])) : 0.f;
#pragma unroll
    for (int t = 0; t < NT; ++t)
#pragma unroll
      for (int q = 0; q < V; ++q) acc[c][t][q] = 0.f;
  }
  float row_state[4] = {0.f, 0.f, 0.f, 0.f};
  if (MODE == kKLGrad && a.state_on_row) {
    row_state[0] = a.st_lse_s[seg.row];
    row_state[1] = a.st_lse_p[seg.row];
    row_state[2] = a.st_kl[seg.row];
    row_state[3] = a.st_g[seg.row];
  }

  for (int64_t base = seg.begin; base < seg.end; base += L) {
    const int64_t e = base + lane;
    const bool live = e < seg.end;
    const int64_t j = live ? ld_index(a.col + e) : 0;
    // Per-edge upstream data, fetched coalesced by the lane that owns the edge.
    float up[4] = {0.f, 0.f, 0.f, 0.f};
    if (live) {
      if (MODE == kEdgeGrad) {
        up[0] = to_float(a.grad_s[a.perm != nullptr ? a.perm[e] : e]);
      } else if (!a.state_on_row) {
        up[0] = a.st_lse_s[j];
        up[1] = a.st_lse_p[j];
        up[2] = a.st_kl[j];
        up[3] = a.st_g[j];
      }
    }
    const int n = seg.end - base < L ? static_cast<int>(seg.end - base) : L;
#pragma unroll 2  // two edges' rows in flight per tile
    for (int k = 0; k < n; ++k) {
      const int64_t jj = tile.shfl(j, k);
      float y[NCH][NT][V], stat[NCH], y2[NCH], sim[NCH], dsim[NCH];
#pragma unroll
      for (int c = 0; c < NCH; ++c) {
        load_row<T, V, L, NT>(a.other[c] + jj * a.F[c], cols[c], lane, y[c]);
        edge_stats<V, L, NT>(tile, kind, x[c], y[c], stat[c], y2[c]);
        sim[c] = finish_sim(a.sim, stat[c], x2[c], y2[c]);
      }
      if constexpr (MODE == kEdgeGrad) {
        dsim[0] = tile.shfl(up[0], k);
      } else {
        float lse_s = row_state[0], lse_p = row_state[1], klv = row_state[2], g = row_state[3];
        if (!a.state_on_row) {
          lse_s = tile.shfl(up[0], k);
          lse_p = tile.shfl(up[1], k);
          klv = tile.shfl(up[2], k);
          g = tile.shfl(up[3], k);
        }
        const float logp = sim[0] * inv_tau - lse_s;
        const float logq = sim[1] * inv_tau - lse_p;
        const float q = expf(logq);
        dsim[0] = g * (expf(logp) - q) * inv_tau;
        dsim[1] = g * q * (logq - logp - klv) * inv_tau;
      }
#pragma unroll
      for (int c = 0; c < NCH; ++c) {
        if (a.grad[c] == nullptr) continue;
        float alpha, beta;
        sim_grad_coefs(a.sim, sim[c], stat[c], x2[c], y2[c], dsim[c], alpha, beta);
        add_sim_grad<V, NT>(kind, alpha, beta, x[c], y[c], acc[c]);
      }
    }
  }

  int64_t off = 0;
#pragma unroll
  for (int c = 0; c < NCH; ++c) {
    if (a.grad[c] != nullptr) {
#pragma unroll
      for (int t = 0; t < NT; ++t) {
        const int64_t cc = t * L + lane;
        if (cc >= cols[c]) continue;
        if (seg.slot < 0) {
          store_vec<T, V>(a.grad[c] + seg.row * a.F[c] + cc * V, acc[c][t]);
        } else {
          float* p = a.part + seg.slot * a.part_width + off + cc * V;
#pragma unroll
          for (int q = 0; q < V; ++q) p[q] = acc[c][t][q];
        }
      }
    }
    off += a.F[c];
  }
}

// Sums the slots of each split row in segment order; one block per split row.
template <typename T, typename I>
__global__ void __launch_bounds__(kBlock) pair_grad_combine_kernel(PairArgs<T, I> a, Schedule s) {
  const unsigned long long n = *s.num_split;
  for (unsigned long long k = blockIdx.x; k < n; k += gridDim.x) {
    const int64_t r = s.split_rows[k];
    int64_t first, count;
    split_slots(s, r, first, count);
    for (int64_t f = threadIdx.x; f < a.part_width; f += blockDim.x) {
      const int c = f < a.F[0] ? 0 : 1;
      if (a.grad[c] == nullptr) continue;
      float acc = 0.f;
      for (int64_t m = 0; m < count; ++m) acc += a.part[(first + m) * a.part_width + f];
      const int64_t fc = c == 0 ? f : f - a.F[0];
      a.grad[c][r * a.F[c] + fc] = from_float<T>(acc);
    }
  }
}

// Workspace of a pair kernel: the row schedule plus `floats_per_slot` float32 partials
// per split-row slot (what the combine pass reads). 0 when the schedule cannot be sized.
inline size_t pair_workspace_bytes(const fa_csr* g, int64_t floats_per_slot, int64_t split) {
  auto bytes = [&](auto iv) -> size_t {
    using I = decltype(iv);
    Carve c{nullptr};
    Schedule s;
    if (build_schedule<I>(g, split, c, s, 0) != cudaSuccess) return 0;
    c.take<float>(s.max_slots * floats_per_slot);
    return align_up(c.off);
  };
  return g->itype == FA_I32 ? bytes(int32_t{}) : bytes(int64_t{});
}

// ------------------------------------------------------------------ launch helpers
// Vector width and tile shape for rows of widths F[0..n): whole rows must fit a tile.
template <typename T>
inline cudaError_t pair_shape(const int64_t* widths, int n, const void* const* ptrs, int np,
                              int& vec, TileShape& shape) {
  vec = pick_vec(sizeof(T), widths, n, ptrs, np);
  int64_t wmax = 0;
  for (int k = 0; k < n; ++k) wmax = widths[k] > wmax ? widths[k] : wmax;
  shape = pick_shape(wmax > 0 ? wmax : 1, vec);
  return shape.chunks > 1 ? cudaErrorNotSupported : cudaSuccess;
}

// Calls launch(Shape<L, NT>{}, std::integral_constant<int, V>{}) for the chosen vector
// width (16 bytes or scalar) and tile shape.
template <typename T, typename Launch>
cudaError_t launch_pair(int vec, const TileShape& shape, Launch&& launch) {
  return dispatch_shape(shape, [&](auto sh) -> cudaError_t {
    if (vec == 1) return launch(sh, std::integral_constant<int, 1>{});
    return launch(sh, std::integral_constant<int, vec16<T>()>{});
  });
}

}  // namespace
}  // namespace cuda
}  // namespace fastalign
