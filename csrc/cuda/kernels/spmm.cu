// SpMM over a CSR by destination: sum / mean / max, optional edge weights, and the sum
// with PyG's GCN normalisation applied on the fly (gcn_aggregate.cu's entry point runs
// it); plus the max-reduction backward.
//
// Design (GE-SpMM, adapted):
//  * one tile of L lanes per row segment (schedule.cuh splits hub rows); L follows the
//    feature width, so rows of 16 float32 features are served 8 to a warp;
//  * coalesced row caching: a tile loads L edge indices / weights with one coalesced
//    load and broadcasts them with register shuffles (the shared-memory cache of
//    GE-SpMM, without the barriers);
//  * coarse warp merging: each lane owns NT vectors of the feature row, so one cached
//    edge serves up to 128 16-byte vectors; wider rows add feature chunks (grid.y);
//  * 16-byte vector loads of x when the width and the pointers allow;
//  * float32 accumulation, in edge order: deterministic; split rows are reduced from
//    their partial slots in segment order.
// The max backward gathers the same way over the transpose: a tile per segment of a
// source node's transposed edges adds the output gradients its edges won (no atomics).
#include "schedule.cuh"
#include "spmm.cuh"

namespace fastalign {
namespace cuda {
namespace {

template <typename T, typename I>
struct SpmmArgs {
  const I* rowptr;
  const I* col;
  const T* weight;     // may be null
  const T* x;          // [num_src, F]
  const float* dis;    // GCN mode when non-null
  const float* loop_w; // GCN self-loop weights; skips self-loop edges when non-null
  T* out;              // [num_rows, F]
  void* arg;           // max only: int32 (arg32) or int64 [num_rows, F]
  bool arg32;
  float* part;         // [max_slots, F]
  int64_t* part_arg;   // max only
  int64_t F;
  int mean;
};

// Stores the winning edge of one output element in arg's type (a uniform branch; each
// element is written once).
template <typename T, typename I>
__device__ __forceinline__ void store_arg(const SpmmArgs<T, I>& a, int64_t i, int64_t e) {
  if (a.arg32)
    static_cast<int32_t*>(a.arg)[i] = static_cast<int32_t>(e);
  else
    static_cast<int64_t*>(a.arg)[i] = e;
}

// Final value of one output element of row r from its accumulated sum.
template <typename T, typename I>
__device__ __forceinline__ float finish_sum(const SpmmArgs<T, I>& a, int64_t r, int64_t f,
                                            int64_t deg, float acc) {
  if (a.mean) return acc / static_cast<float>(deg > 1 ? deg : 1);
  if (a.dis != nullptr) {
    const float d = a.dis[r];
    if (a.loop_w != nullptr) acc += a.loop_w[r] * d * to_float(a.x[r * a.F + f]);
    return d * acc;
  }
  return acc;
}

template <typename T, typename I, int V, int L, int NT, bool MAX>
__global__ void __launch_bounds__(kBlock)
    spmm_kernel(SpmmArgs<T, I> a, Schedule s) {
  constexpr int TPB = kBlock / L;
  auto tile = cg::tiled_partition<L>(cg::this_thread_block());
  const Segment seg = find_segment<I, TPB>(s, a.rowptr, threadIdx.x / L);
  if (!seg.valid) return;
  const int lane = tile.thread_rank();
  const int64_t cols = a.F / V;  // V divides F when V > 1
  const int64_t c0 = static_cast<int64_t>(blockIdx.y) * L * NT;

  float acc[NT][V];
  int64_t best[NT][V];
#pragma unroll
  for (int t = 0; t < NT; ++t)
#pragma unroll
    for (int q = 0; q < V; ++q) {
      acc[t][q] = MAX ? -INFINITY : 0.f;
      if (MAX) best[t][q] = -1;
    }

  const bool gcn = a.dis != nullptr;
  for (int64_t base = seg.begin; base < seg.end; base += L) {
    // Coalesced: lane k fetches edge base + k, then the tile shares it.
    const int64_t e = base + lane;
    int64_t j = 0;
    float w = 1.f;
    if (e < seg.end) {
      j = ld_index(a.col + e);
      if (a.weight != nullptr) w = to_float(a.weight[e]);
      if (gcn) w = (a.loop_w != nullptr && j == seg.row) ? 0.f : w * a.dis[j];
    }
    const int n = seg.end - base < L ? static_cast<int>(seg.end - base) : L;
#pragma unroll 4
    for (int k = 0; k < n; ++k) {
      const int64_t jj = tile.shfl(j, k);
      const float ww = tile.shfl(w, k);
      const T* xr = a.x + jj * a.F;
#pragma unroll
      for (int t = 0; t < NT; ++t) {
        const int64_t c = c0 + t * L + lane;
        if (c < cols) {
          float v[V];
          load_vec<T, V>(xr + c * V, v);
#pragma unroll
          for (int q = 0; q < V; ++q) {
            if (MAX) {
              const float m = ww * v[q];
              // First edge reaching the maximum (strict >; the first edge always wins
              // over the empty state, even at -inf). NaN propagates as in torch.amax:
              // the first NaN edge wins and is never replaced.
              if (m > acc[t][q] || best[t][q] < 0 || (m != m && acc[t][q] == acc[t][q])) {
                acc[t][q] = m;
                best[t][q] = base + k;
              }
            } else {
              acc[t][q] = fmaf(ww, v[q], acc[t][q]);
            }
          }
        }
      }
    }
  }

  const int64_t deg = ld_index(a.rowptr + seg.row + 1) - ld_index(a.rowptr + seg.row);
#pragma unroll
  for (int t = 0; t < NT; ++t) {
    const int64_t c = c0 + t * L + lane;
    if (c >= cols) continue;
    if (seg.slot >= 0) {  // a piece of a split row: keep float32 partials
      float* p = a.part + seg.slot * a.F + c * V;
#pragma unroll
      for (int q = 0; q < V; ++q) {
        p[q] = acc[t][q];
        if (MAX) a.part_arg[seg.slot * a.F + c * V + q] = best[t][q];
      }
      continue;
    }
    float o[V];
#pragma unroll
    for (int q = 0; q < V; ++q) {
      if (MAX) {
        o[q] = best[t][q] < 0 ? 0.f : acc[t][q];
        store_arg(a, seg.row * a.F + c * V + q, best[t][q]);
      } else {
        o[q] = finish_sum(a, seg.row, c * V + q, deg, acc[t][q]);
      }
    }
    store_vec<T, V>(a.out + seg.row * a.F + c * V, o);
  }
}

// Reduces the partial slots of each split row, in segment order.
template <typename T, typename I, bool MAX>
__global__ void __launch_bounds__(kBlock) spmm_combine_kernel(SpmmArgs<T, I> a, Schedule s) {
  const unsigned long long n = *s.num_split;
  for (unsigned long long k = blockIdx.x; k < n; k += gridDim.x) {
    const int64_t r = s.split_rows[k];
    int64_t first, count;
    split_slots(s, r, first, count);
    const int64_t deg = ld_index(a.rowptr + r + 1) - ld_index(a.rowptr + r);
    for (int64_t f = threadIdx.x; f < a.F; f += blockDim.x) {
      float acc = a.part[first * a.F + f];
      int64_t best = MAX ? a.part_arg[first * a.F + f] : 0;
      for (int64_t m = 1; m < count; ++m) {
        const float v = a.part[(first + m) * a.F + f];
        if (MAX) {
          // earlier segments hold earlier edges: ties keep them; a NaN beats a number
          if (v > acc || (v != v && acc == acc)) {
            acc = v;
            best = a.part_arg[(first + m) * a.F + f];
          }
        } else {
          acc += v;
        }
      }
      if (MAX) {
        a.out[r * a.F + f] = from_float<T>(acc);
        store_arg(a, r * a.F + f, best);
      } else {
        a.out[r * a.F + f] = from_float<T>(finish_sum(a, r, f, deg, acc));
      }
    }
  }
}

template <typename T, typename I, int V, bool MAX>
cudaError_t launch_spmm(const SpmmArgs<T, I>& a, const Schedule& s, const TileShape& shape,
                        cudaStream_t stream) {
  return dispatch_shape(shape, [&](auto sh) -> cudaError_t {
    constexpr int L = decltype(sh)::lanes, NT = decltype(sh)::nt;
    dim3 grid(grid_for_segments(s, kBlock / L), shape.chunks);
    spmm_kernel<T, I, V, L, NT, MAX><<<grid, kBlock, 0, stream>>>(a, s);
    cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
    spmm_combine_kernel<T, I, MAX><<<grid_for_split_rows(s), kBlock, 0, stream>>>(a, s);
    return cudaGetLastError();
  });
}

// Workspace: the schedule, then the partial slots.
template <typename I>
cudaError_t spmm_layout(const fa_csr* g, int64_t F, fa_reduce reduce, int64_t split,
                        Carve& c, Schedule& s, float** part, int64_t** part_arg,
                        cudaStream_t stream) {
  cudaError_t err = build_schedule<I>(g, split, c, s, stream);
  if (err != cudaSuccess) return err;
  *part = c.take<float>(s.max_slots * F);
  *part_arg = c.take<int64_t>(reduce == FA_MAX ? s.max_slots * F : 0);
  return cudaSuccess;
}

// Max backward for x, by source node over the transpose (rowptr = rowptr_t, col = col_t,
// perm = perm_t): for the transposed edges k of source j (destination i = col_t[k],
// internal edge e = perm_t[k]), grad_x[j, f] = sum_k [arg[i, f] == e] w_e grad_out[i, f].
// Same tiling as spmm_kernel: a tile per segment, edges (i, e, w_e) loaded coalesced and
// shared by shuffles, each lane owning NT vectors of V features; arg is read as 16-byte
// vectors, grad_out only where the edge won (each output element is read once overall).
// float32 accumulation in transposed-edge order; split rows go through the partial slots
// and spmm_combine_kernel (segment order): deterministic, no atomics.
template <typename T, typename I, typename A>
struct MaxBackwardArgs {
  const I* rowptr;         // rowptr_t
  const I* col;            // col_t: the destination of each transposed edge
  const int64_t* perm;     // perm_t: the internal edge of each transposed edge
  const T* weight;         // internal order, may be null
  const A* arg;            // [num_dst, F], int32 or int64
  const T* grad_out;       // [num_dst, F]
  T* grad_x;               // [num_src, F]
  float* part;             // [max_slots, F]
  int64_t F;
};

// V args widened to int64, with 16-byte loads when V args fill whole 16-byte vectors
// (the row and vector offsets are then multiples of 16 bytes for an aligned base).
template <int V, typename A>
__device__ __forceinline__ void load_args(const A* __restrict__ p, int64_t (&out)[V]) {
  constexpr int kPer = 16 / static_cast<int>(sizeof(A));  // args per 16-byte load
  if constexpr (V % kPer == 0) {
#pragma unroll
    for (int q = 0; q < V; q += kPer) {
      alignas(16) A buf[kPer];
      *reinterpret_cast<int4*>(buf) = __ldg(reinterpret_cast<const int4*>(p + q));
#pragma unroll
      for (int j = 0; j < kPer; ++j) out[q + j] = buf[j];
    }
  } else {
#pragma unroll
    for (int q = 0; q < V; ++q) out[q] = __ldg(p + q);
  }
}

template <typename T, typename I, typename A, int V, int L, int NT>
__global__ void __launch_bounds__(kBlock)
    spmm_max_backward_kernel(MaxBackwardArgs<T, I, A> a, Schedule s) {
  constexpr int TPB = kBlock / L;
  auto tile = cg::tiled_partition<L>(cg::this_thread_block());
  const Segment seg = find_segment<I, TPB>(s, a.rowptr, threadIdx.x / L);
  if (!seg.valid) return;
  const int lane = tile.thread_rank();
  const int64_t cols = a.F / V;  // V divides F when V > 1
  const int64_t c0 = static_cast<int64_t>(blockIdx.y) * L * NT;

  float acc[NT][V];
#pragma unroll
  for (int t = 0; t < NT; ++t)
#pragma unroll
    for (int q = 0; q < V; ++q) acc[t][q] = 0.f;

  for (int64_t base = seg.begin; base < seg.end; base += L) {
    const int64_t k = base + lane;
    int64_t i = 0, e = -1;
    float w = 1.f;
    if (k < seg.end) {
      i = ld_index(a.col + k);
      e = __ldg(a.perm + k);
      if (a.weight != nullptr) w = to_float(a.weight[e]);
    }
    const int n = seg.end - base < L ? static_cast<int>(seg.end - base) : L;
#pragma unroll 2
    for (int m = 0; m < n; ++m) {
      const int64_t ii = tile.shfl(i, m);
      const int64_t ee = tile.shfl(e, m);
      const float ww = tile.shfl(w, m);
      const A* ar = a.arg + ii * a.F;
      const T* gr = a.grad_out + ii * a.F;
#pragma unroll
      for (int t = 0; t < NT; ++t) {
        const int64_t c = c0 + t * L + lane;
        if (c < cols) {
          int64_t won[V];
          load_args<V>(ar + c * V, won);
#pragma unroll
          for (int q = 0; q < V; ++q)
            if (won[q] == ee) acc[t][q] = fmaf(ww, to_float(__ldg(gr + c * V + q)), acc[t][q]);
        }
      }
    }
  }

#pragma unroll
  for (int t = 0; t < NT; ++t) {
    const int64_t c = c0 + t * L + lane;
    if (c >= cols) continue;
    if (seg.slot >= 0) {  // a piece of a split row: float32 partials, combined in order
      float* p = a.part + seg.slot * a.F + c * V;
#pragma unroll
      for (int q = 0; q < V; ++q) p[q] = acc[t][q];
      continue;
    }
    store_vec<T, V>(a.grad_x + seg.row * a.F + c * V, acc[t]);
  }
}

template <typename T, typename I, typename A, int V>
cudaError_t launch_max_backward(const MaxBackwardArgs<T, I, A>& a, const Schedule& s,
                                const TileShape& shape, cudaStream_t stream) {
  return dispatch_shape(shape, [&](auto sh) -> cudaError_t {
    constexpr int L = decltype(sh)::lanes, NT = decltype(sh)::nt;
    dim3 grid(grid_for_segments(s, kBlock / L), shape.chunks);
    spmm_max_backward_kernel<T, I, A, V, L, NT><<<grid, kBlock, 0, stream>>>(a, s);
    cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
    // The split rows' partial slots, summed in segment order (the sum forward's combine).
    SpmmArgs<T, I> c{};
    c.rowptr = a.rowptr;
    c.out = a.grad_x;
    c.part = a.part;
    c.F = a.F;
    spmm_combine_kernel<T, I, false><<<grid_for_split_rows(s), kBlock, 0, stream>>>(c, s);
    return cudaGetLastError();
  });
}

// Weight gradient of max: one thread per destination row owns that row's edges.
template <typename T, typename I, typename A>
__global__ void spmm_max_weight_grad_kernel(const I* __restrict__ col, const T* __restrict__ x,
                                            const A* __restrict__ arg,
                                            const T* __restrict__ grad_out, int64_t num_rows,
                                            int64_t F, float* __restrict__ grad_w) {
  const int64_t r = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (r >= num_rows) return;
  for (int64_t f = 0; f < F; ++f) {  // feature order: deterministic
    const int64_t e = arg[r * F + f];
    if (e < 0) continue;
    const int64_t j = ld_index(col + e);
    grad_w[e] += to_float(grad_out[r * F + f]) * to_float(x[j * F + f]);
  }
}

}  // namespace

}  // namespace cuda
}  // namespace fastalign

using namespace fastalign::cuda;

extern "C" int64_t fa_default_split(int64_t num_edges) {
  // About 16k segments' worth of edges per split, within [256, 4096]: hubs spread over
  // many warps, while ordinary rows (degree < 256) are never cut. A piece stays within
  // one tile's share of a launch at F = 64: an H200 holds ~17k float32 tiles of 16 lanes
  // (132 SMs x 64 warps x 2), ~7k edges each on the large benchmark graphs, so the 4096
  // cap that both reach is no tail (bfloat16's 8-lane tiles: ~3.5k). Narrower rows have
  // smaller tiles and more of them; FASTALIGN_CUDA_SPLIT (binding.cpp) tunes it there.
  int64_t s = num_edges / 16384;
  return s < 256 ? 256 : (s > 4096 ? 4096 : s);
}

size_t fastalign::cuda::spmm_workspace(const fa_csr* g, int64_t F, fa_reduce reduce,
                                       int64_t split) {
  if (split <= 0) split = fa_default_split(g->num_edges);
  Carve c{nullptr};
  Schedule s;
  float* part;
  int64_t* part_arg;
  cudaError_t err = g->itype == FA_I32
                        ? spmm_layout<int32_t>(g, F, reduce, split, c, s, &part, &part_arg, 0)
                        : spmm_layout<int64_t>(g, F, reduce, split, c, s, &part, &part_arg, 0);
  return err == cudaSuccess ? align_up(c.off) : 0;
}

cudaError_t fastalign::cuda::spmm_launch(const fa_csr* g, const void* weight, const void* x,
                                         int64_t F, fa_dtype dtype, fa_reduce reduce,
                                         const float* dis, const float* loop_w, void* out,
                                         void* arg, fa_itype arg_type, int64_t split,
                                         void* workspace, size_t workspace_bytes,
                                         cudaStream_t stream) {
  if (split <= 0) split = fa_default_split(g->num_edges);
  if (g->num_rows == 0 || F == 0) return cudaSuccess;
  if (reduce == FA_MAX && (arg == nullptr || dis != nullptr)) return cudaErrorInvalidValue;
  if (dis != nullptr && reduce != FA_SUM) return cudaErrorInvalidValue;
  if (workspace_bytes < spmm_workspace(g, F, reduce, split)) return cudaErrorInvalidValue;
  return dispatch_types(dtype, g->itype, [&](auto tv, auto iv) -> cudaError_t {
    using T = decltype(tv);
    using I = decltype(iv);
    Carve c{static_cast<char*>(workspace)};
    Schedule s;
    SpmmArgs<T, I> a{};
    cudaError_t err = spmm_layout<I>(g, F, reduce, split, c, s, &a.part, &a.part_arg, stream);
    if (err != cudaSuccess) return err;
    a.rowptr = static_cast<const I*>(g->rowptr);
    a.col = static_cast<const I*>(g->col);
    a.weight = static_cast<const T*>(weight);
    a.x = static_cast<const T*>(x);
    a.dis = dis;
    a.loop_w = loop_w;
    a.out = static_cast<T*>(out);
    a.arg = arg;
    a.arg32 = arg_type == FA_I32;
    a.F = F;
    a.mean = reduce == FA_MEAN;
    const int64_t widths[1] = {F};
    const void* ptrs[2] = {x, out};
    const int vec = pick_vec(sizeof(T), widths, 1, ptrs, 2);
    const TileShape shape = pick_shape(F, vec);
    constexpr int V16 = vec16<T>();
    if (reduce == FA_MAX)
      return vec == 1 ? launch_spmm<T, I, 1, true>(a, s, shape, stream)
                      : launch_spmm<T, I, V16, true>(a, s, shape, stream);
    return vec == 1 ? launch_spmm<T, I, 1, false>(a, s, shape, stream)
                    : launch_spmm<T, I, V16, false>(a, s, shape, stream);
  });
}

extern "C" size_t fa_spmm_workspace_bytes(const fa_csr* g, int64_t F, fa_reduce reduce,
                                          int64_t split) {
  return spmm_workspace(g, F, reduce, split);
}

extern "C" cudaError_t fa_spmm_forward(const fa_csr* g, const void* weight, const void* x,
                                       int64_t F, fa_dtype dtype, fa_reduce reduce, void* out,
                                       void* arg, fa_itype arg_type, int64_t split,
                                       void* workspace, size_t workspace_bytes,
                                       cudaStream_t stream) {
  return spmm_launch(g, weight, x, F, dtype, reduce, nullptr, nullptr, out, arg, arg_type, split,
                     workspace, workspace_bytes, stream);
}

extern "C" size_t fa_spmm_max_backward_workspace_bytes(const fa_csr* gt, int64_t F,
                                                       int64_t split) {
  if (split <= 0) split = fa_default_split(gt->num_edges);
  Carve c{nullptr};
  Schedule s;
  float* part;
  int64_t* part_arg;
  cudaError_t err = gt->itype == FA_I32
                        ? spmm_layout<int32_t>(gt, F, FA_SUM, split, c, s, &part, &part_arg, 0)
                        : spmm_layout<int64_t>(gt, F, FA_SUM, split, c, s, &part, &part_arg, 0);
  return err == cudaSuccess ? align_up(c.off) : 0;
}

extern "C" cudaError_t fa_spmm_max_backward(const fa_csr* g, const fa_csr* gt,
                                            const int64_t* perm_t, const void* weight,
                                            const void* x, const void* arg, fa_itype arg_type,
                                            const void* grad_out, int64_t F, fa_dtype dtype,
                                            void* grad_x, float* grad_w_acc, int64_t split,
                                            void* workspace, size_t workspace_bytes,
                                            cudaStream_t stream) {
  if (split <= 0) split = fa_default_split(gt->num_edges);
  if (g->itype != gt->itype || g->num_edges != gt->num_edges) return cudaErrorInvalidValue;
  if (F == 0) return cudaSuccess;
  if (grad_x != nullptr && gt->num_rows > 0 &&
      workspace_bytes < fa_spmm_max_backward_workspace_bytes(gt, F, split))
    return cudaErrorInvalidValue;
  auto run = [&](auto tv, auto iv, auto av) -> cudaError_t {
    using T = decltype(tv);
    using I = decltype(iv);
    using A = decltype(av);
    const A* args = static_cast<const A*>(arg);
    if (grad_x != nullptr && gt->num_rows > 0) {
      Carve c{static_cast<char*>(workspace)};
      Schedule s;
      MaxBackwardArgs<T, I, A> a{};
      int64_t* part_arg;
      cudaError_t err = spmm_layout<I>(gt, F, FA_SUM, split, c, s, &a.part, &part_arg, stream);
      if (err != cudaSuccess) return err;
      a.rowptr = static_cast<const I*>(gt->rowptr);
      a.col = static_cast<const I*>(gt->col);
      a.perm = perm_t;
      a.weight = static_cast<const T*>(weight);
      a.arg = args;
      a.grad_out = static_cast<const T*>(grad_out);
      a.grad_x = static_cast<T*>(grad_x);
      a.F = F;
      const int64_t widths[1] = {F};
      const void* ptrs[3] = {arg, grad_out, grad_x};
      const int vec = pick_vec(sizeof(T), widths, 1, ptrs, 3);
      const TileShape shape = pick_shape(F, vec);
      constexpr int V16 = vec16<T>();
      err = vec == 1 ? launch_max_backward<T, I, A, 1>(a, s, shape, stream)
                     : launch_max_backward<T, I, A, V16>(a, s, shape, stream);
      if (err != cudaSuccess) return err;
    }
    if (grad_w_acc != nullptr && g->num_rows > 0) {
      const auto* col = static_cast<const I*>(g->col);
      spmm_max_weight_grad_kernel<T, I, A><<<ceil_div(g->num_rows, kBlock), kBlock, 0, stream>>>(
          col, static_cast<const T*>(x), args, static_cast<const T*>(grad_out), g->num_rows, F,
          grad_w_acc);
      return cudaGetLastError();
    }
    return cudaSuccess;
  };
  // int32 winners (any graph below 2^31 edges) halve the bytes read per edge and feature
  return dispatch_types(dtype, g->itype, [&](auto tv, auto iv) -> cudaError_t {
    return arg_type == FA_I32 ? run(tv, iv, int32_t{}) : run(tv, iv, int64_t{});
  });
}
