// Graph attention, fused (fastalign/ops/gat_aggregate.py has the formulas). A (row, head)
// is owned by a "team": one thread for rows of at most kLongRow edges, a block of
// kLongBlock threads for a longer row (a hub: Reddit-sized graphs have rows of ~50k
// in-edges, ~150k dependent loads for one thread). A team makes a pass for the row's max
// logit, one for its sum of exponentials, then the weighted features in register chunks
// of kChunk channels (the weights recomputed per chunk: no per-edge buffer). The
// backward recomputes the attention from the saved per-(row, head) log-sum-exp:
// destination rows first (D = g . out and grad_alpha_dst), then the transpose.
// Deterministic: every output element has one owner team, a thread sums in edge order
// and a block in a fixed order (strided lanes, then warps); no atomics.
#include "attention_dropout.h"
#include "common.cuh"

using namespace fastalign::cuda;

namespace {

constexpr int kChunk = 8;
constexpr int64_t kLongRow = 1024;  // longest row one thread walks
constexpr int kLongBlock = 256;     // threads on one longer row

__device__ __forceinline__ float drop_factor(const fa_attention& att, int64_t edge, int heads, int h) {
  if (att.threshold == 0) return 1.f;
  return fastalign::attention_dropout::kept(static_cast<uint64_t>(edge), static_cast<uint64_t>(heads),
                                            static_cast<uint64_t>(h), att.seed, att.threshold)
             ? att.scale
             : 0.f;
}

__device__ __forceinline__ float leaky(float z, float slope) { return z > 0.f ? z : z * slope; }

// One thread owns the (row, head): its edges in order, no reduction.
struct ThreadTeam {
  __device__ int64_t first() const { return 0; }
  __device__ int64_t step() const { return 1; }
  __device__ bool leader() const { return true; }
  __device__ float max(float v) const { return v; }
  __device__ float sum(float v) const { return v; }
};

// A block shares the (row, head): thread t takes edges t, t + kLongBlock, ...; the
// reductions have a fixed order. Every thread of the block must call max / sum.
struct BlockTeam {
  float* scratch;  // kLongBlock / 32 floats
  __device__ int64_t first() const { return threadIdx.x; }
  __device__ int64_t step() const { return kLongBlock; }
  __device__ bool leader() const { return threadIdx.x == 0; }
  __device__ float max(float v) const { return block_reduce<kLongBlock, true>(v, scratch); }
  __device__ float sum(float v) const { return block_reduce<kLongBlock, false>(v, scratch); }
};

// The team member's share of the attended edges of row r of a CSR, as (neighbour, edge
// id): the stored ones (a stored self loop skipped when self loops are added), then the
// added loop (the leader's).
template <typename Team, typename I, typename Fn>
__device__ __forceinline__ void for_each_attended(const Team& team, const I* __restrict__ rowptr,
                                                  const I* __restrict__ col, const int64_t* __restrict__ perm,
                                                  int64_t r, bool loops, bool has_loop, int64_t num_edges, Fn&& fn) {
  const int64_t b = ld_index(rowptr + r), e = ld_index(rowptr + r + 1);
  for (int64_t k = b + team.first(); k < e; k += team.step()) {
    const int64_t n = ld_index(col + k);
    if (loops && n == r) continue;
    fn(n, perm ? __ldg(perm + k) : k);
  }
  if (has_loop && team.leader()) fn(r, num_edges + r);
}

// o[q] = scale * sum of w v[q] over what ``each`` adds (add(w, v)), for the kChunk
// channels c0.. of a row (registers: the weights are recomputed per chunk, never stored);
// the team's partial sums are reduced, and its leader writes.
template <typename T, typename Team, typename Each>
__device__ __forceinline__ void weighted_chunk(const Team& team, Each&& each, int C, int c0, float scale,
                                               T* __restrict__ o) {
  float acc[kChunk];
#pragma unroll
  for (int q = 0; q < kChunk; ++q) acc[q] = 0.f;
  each([&](float w, const T* __restrict__ v) {
#pragma unroll
    for (int q = 0; q < kChunk; ++q)
      if (c0 + q < C) acc[q] = fmaf(w, to_float(v[q]), acc[q]);
  });
#pragma unroll
  for (int q = 0; q < kChunk; ++q) acc[q] = team.sum(acc[q]);
  if (!team.leader()) return;
#pragma unroll
  for (int q = 0; q < kChunk; ++q)
    if (c0 + q < C) o[q] = from_float<T>(acc[q] * scale);
}

template <typename T>
__device__ __forceinline__ float dot_c(const T* __restrict__ a, const T* __restrict__ b, int C) {
  float d = 0.f;
  for (int c = 0; c < C; ++c) d = fmaf(to_float(a[c]), to_float(b[c]), d);
  return d;
}

// The forward of destination row i, head h, by a team.
template <typename T, typename I, typename Team>
__device__ __forceinline__ void gat_forward_row(const Team& team, const I* __restrict__ rowptr,
                                                const I* __restrict__ col, int64_t i, int h, int64_t num_edges,
                                                int64_t num_loops, const T* __restrict__ x, const T* __restrict__ as,
                                                const T* __restrict__ ad, int H, int C, const fa_attention& att,
                                                T* __restrict__ out, float* __restrict__ lse) {
  const bool loops = att.self_loops != 0, has_loop = loops && i < num_loops;
  const float adv = ad ? to_float(ad[i * H + h]) : 0.f;
  const int64_t* no_perm = nullptr;
  auto logit = [&](int64_t j) { return leaky(to_float(as[j * H + h]) + adv, att.slope); };
  float m = -INFINITY;
  for_each_attended(team, rowptr, col, no_perm, i, loops, has_loop, num_edges,
                    [&](int64_t j, int64_t) { m = fmaxf(m, logit(j)); });
  m = team.max(m);
  const float ms = m == -INFINITY ? 0.f : m;
  float s = 0.f;
  for_each_attended(team, rowptr, col, no_perm, i, loops, has_loop, num_edges,
                    [&](int64_t j, int64_t) { s += expf(logit(j) - ms); });
  s = team.sum(s);
  if (team.leader()) lse[i * H + h] = s > 0.f ? ms + logf(s) : -INFINITY;
  const float inv = s > 0.f ? 1.f / s : 0.f;
  for (int c0 = 0; c0 < C; c0 += kChunk) {
    weighted_chunk<T>(
        team,
        [&](auto&& add) {
          for_each_attended(team, rowptr, col, no_perm, i, loops, has_loop, num_edges, [&](int64_t j, int64_t edge) {
            add(expf(logit(j) - ms) * drop_factor(att, edge, H, h), x + (j * H + h) * C + c0);
          });
        },
        C, c0, inv, out + (i * H + h) * C + c0);
  }
}

// Per destination (row i, head h): D = g_i . out_i = sum_j a k (g_i . x_j) into d_row (the
// source pass needs it), and grad_alpha_dst = sum_j a (k g_i . x_j - D) l' = S1 - D S2
// (l' the leaky ReLU's slope at z; D is known only at the row's end).
template <typename T, typename I, typename Team>
__device__ __forceinline__ void gat_dst_grad_row(const Team& team, const I* __restrict__ rowptr,
                                                 const I* __restrict__ col, int64_t i, int h, int64_t num_edges,
                                                 int64_t num_loops, const T* __restrict__ x,
                                                 const T* __restrict__ as, const T* __restrict__ ad, int H, int C,
                                                 const fa_attention& att, const float* __restrict__ lse,
                                                 float* __restrict__ d_row, const T* __restrict__ g,
                                                 T* __restrict__ grad_dst) {
  const bool loops = att.self_loops != 0, has_loop = loops && i < num_loops;
  const float adv = ad ? to_float(ad[i * H + h]) : 0.f, l = lse[i * H + h];
  const T* gi = g + (i * H + h) * C;
  float s1 = 0.f, s2 = 0.f, d = 0.f;
  for_each_attended(team, rowptr, col, static_cast<const int64_t*>(nullptr), i, loops, has_loop, num_edges,
                    [&](int64_t j, int64_t edge) {
                      const float z = to_float(as[j * H + h]) + adv;
                      const float a = expf(leaky(z, att.slope) - l);
                      const float akd = a * drop_factor(att, edge, H, h) * dot_c(gi, x + (j * H + h) * C, C);
                      const float lg = z > 0.f ? 1.f : att.slope;
                      s1 = fmaf(akd, lg, s1);
                      s2 = fmaf(a, lg, s2);
                      d += akd;
                    });
  s1 = team.sum(s1);
  s2 = team.sum(s2);
  d = team.sum(d);
  if (!team.leader()) return;
  d_row[i * H + h] = d;
  if (grad_dst) grad_dst[i * H + h] = from_float<T>(s1 - d * s2);
}

// grad_alpha_src and grad_x of source j, head h, over the transpose's row j.
template <typename T, typename I, typename Team>
__device__ __forceinline__ void gat_src_grad_row(const Team& team, const I* __restrict__ rowptr_t,
                                                 const I* __restrict__ col_t, const int64_t* __restrict__ perm_t,
                                                 int64_t j, int h, int64_t num_edges, int64_t num_loops,
                                                 const T* __restrict__ x, const T* __restrict__ as,
                                                 const T* __restrict__ ad, int H, int C, const fa_attention& att,
                                                 const float* __restrict__ lse, const float* __restrict__ d_row,
                                                 const T* __restrict__ g, T* __restrict__ grad_x,
                                                 T* __restrict__ grad_src) {
  const bool loops = att.self_loops != 0, has_loop = loops && j < num_loops;
  const float asv = to_float(as[j * H + h]);
  const T* xj = x + (j * H + h) * C;
  float gsrc = 0.f;
  for_each_attended(team, rowptr_t, col_t, perm_t, j, loops, has_loop, num_edges, [&](int64_t i, int64_t edge) {
    const float z = asv + (ad ? to_float(ad[i * H + h]) : 0.f);
    const float a = expf(leaky(z, att.slope) - lse[i * H + h]);
    const float k = drop_factor(att, edge, H, h);
    const float dot = dot_c(g + (i * H + h) * C, xj, C);
    gsrc += a * (k * dot - d_row[i * H + h]) * (z > 0.f ? 1.f : att.slope);
  });
  gsrc = team.sum(gsrc);
  if (team.leader()) grad_src[j * H + h] = from_float<T>(gsrc);
  for (int c0 = 0; c0 < C; c0 += kChunk) {
    weighted_chunk<T>(
        team,
        [&](auto&& add) {
          for_each_attended(team, rowptr_t, col_t, perm_t, j, loops, has_loop, num_edges,
                            [&](int64_t i, int64_t edge) {
                              const float z = asv + (ad ? to_float(ad[i * H + h]) : 0.f);
                              add(expf(leaky(z, att.slope) - lse[i * H + h]) * drop_factor(att, edge, H, h),
                                  g + (i * H + h) * C + c0);
                            });
        },
        C, c0, 1.f, grad_x + (j * H + h) * C + c0);
  }
}

// Every (row, head) of rows of at most kLongRow edges, one thread each; BODY(team, row, h)
// runs the row's work.
template <typename I, typename Body>
__device__ __forceinline__ void short_rows(const I* __restrict__ rowptr, int64_t num_rows, int H, Body&& body) {
  const int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (t >= num_rows * H) return;
  const int64_t r = t / H;
  if (row_longer_than(rowptr, r, kLongRow)) return;  // a block's, in long_rows
  body(ThreadTeam{}, r, static_cast<int>(t % H));
}

// The long rows among rows [blockIdx.x * kLongBlock, +kLongBlock), each (row, head)
// taken by the whole block.
template <typename I, typename Body>
__device__ __forceinline__ void long_rows(const I* __restrict__ rowptr, int64_t num_rows, int H, Body&& body) {
  __shared__ int64_t rows[kLongBlock];
  __shared__ int count;
  __shared__ float scratch[kLongBlock / 32];
  const int found = find_long_rows<kLongBlock>(rowptr, num_rows, kLongRow, rows, &count);
  const BlockTeam team{scratch};
  for (int k = 0; k < found; ++k)
    for (int h = 0; h < H; ++h) body(team, rows[k], h);
}

// A kernel's rows: the short ones a thread per (row, head), or (LONG) the long ones a
// block per (row, head).
template <bool LONG, typename I, typename Body>
__device__ __forceinline__ void team_rows(const I* __restrict__ rowptr, int64_t num_rows, int H, Body&& body) {
  if (LONG)
    long_rows(rowptr, num_rows, H, body);
  else
    short_rows(rowptr, num_rows, H, body);
}

template <typename T, typename I, bool LONG>
__global__ void __launch_bounds__(LONG ? kLongBlock : kBlock)
    gat_forward_kernel(const I* __restrict__ rowptr, const I* __restrict__ col, int64_t num_rows,
                       int64_t num_edges, int64_t num_loops, const T* __restrict__ x, const T* __restrict__ as,
                       const T* __restrict__ ad, int H, int C, fa_attention att, T* __restrict__ out,
                       float* __restrict__ lse) {
  auto body = [&](const auto& team, int64_t i, int h) {
    gat_forward_row<T, I>(team, rowptr, col, i, h, num_edges, num_loops, x, as, ad, H, C, att, out, lse);
  };
  team_rows<LONG>(rowptr, num_rows, H, body);
}

template <typename T, typename I, bool LONG>
__global__ void __launch_bounds__(LONG ? kLongBlock : kBlock)
    gat_dst_grad_kernel(const I* __restrict__ rowptr, const I* __restrict__ col, int64_t num_rows,
                        int64_t num_edges, int64_t num_loops, const T* __restrict__ x, const T* __restrict__ as,
                        const T* __restrict__ ad, int H, int C, fa_attention att, const float* __restrict__ lse,
                        float* __restrict__ d_row, const T* __restrict__ g, T* __restrict__ grad_dst) {
  auto body = [&](const auto& team, int64_t i, int h) {
    gat_dst_grad_row<T, I>(team, rowptr, col, i, h, num_edges, num_loops, x, as, ad, H, C, att, lse, d_row, g,
                           grad_dst);
  };
  team_rows<LONG>(rowptr, num_rows, H, body);
}

template <typename T, typename I, bool LONG>
__global__ void __launch_bounds__(LONG ? kLongBlock : kBlock)
    gat_src_grad_kernel(const I* __restrict__ rowptr_t, const I* __restrict__ col_t,
                        const int64_t* __restrict__ perm_t, int64_t num_src, int64_t num_edges, int64_t num_loops,
                        const T* __restrict__ x, const T* __restrict__ as, const T* __restrict__ ad, int H, int C,
                        fa_attention att, const float* __restrict__ lse, const float* __restrict__ d_row,
                        const T* __restrict__ g, T* __restrict__ grad_x, T* __restrict__ grad_src) {
  auto body = [&](const auto& team, int64_t j, int h) {
    gat_src_grad_row<T, I>(team, rowptr_t, col_t, perm_t, j, h, num_edges, num_loops, x, as, ad, H, C, att, lse,
                           d_row, g, grad_x, grad_src);
  };
  team_rows<LONG>(rowptr_t, num_src, H, body);
}

unsigned thread_grid(int64_t threads) { return static_cast<unsigned>(ceil_div(threads, kBlock)); }

unsigned long_rows_grid(int64_t rows) { return static_cast<unsigned>(ceil_div(rows, kLongBlock)); }

// Launch KERNEL<T, I, false> over every (row, head) and KERNEL<T, I, true> over the
// long rows' blocks.
#define FA_GAT_LAUNCH(KERNEL, ROWS, HEADS, ...)                                                       \
  do {                                                                                             \
    KERNEL<T, I, false><<<thread_grid((ROWS) * (HEADS)), kBlock, 0, stream>>>(__VA_ARGS__);        \
    cudaError_t err_ = cudaGetLastError();                                                         \
    if (err_ != cudaSuccess) return err_;                                                          \
    KERNEL<T, I, true><<<long_rows_grid(ROWS), kLongBlock, 0, stream>>>(__VA_ARGS__);              \
    err_ = cudaGetLastError();                                                                     \
    if (err_ != cudaSuccess) return err_;                                                          \
  } while (0)

}  // namespace

extern "C" cudaError_t fa_gat_forward(const fa_csr* g, int64_t num_src, const void* x, const void* alpha_src,
                                      const void* alpha_dst, fa_dtype dtype, int heads, int channels,
                                      const fa_attention* att, void* out, float* lse, cudaStream_t stream) {
  if (g->num_rows == 0 || heads == 0) return cudaSuccess;
  const int64_t num_loops = att->self_loops ? (num_src < g->num_rows ? num_src : g->num_rows) : 0;
  return dispatch_types(dtype, g->itype, [&](auto tv, auto iv) -> cudaError_t {
    using T = decltype(tv);
    using I = decltype(iv);
    FA_GAT_LAUNCH(gat_forward_kernel, g->num_rows, heads, static_cast<const I*>(g->rowptr),
                  static_cast<const I*>(g->col), g->num_rows, g->num_edges, num_loops, static_cast<const T*>(x),
                  static_cast<const T*>(alpha_src), static_cast<const T*>(alpha_dst), heads, channels, *att,
                  static_cast<T*>(out), lse);
    return cudaSuccess;
  });
}

extern "C" cudaError_t fa_gat_backward(const fa_csr* g, const fa_csr* gt, const int64_t* perm_t, int64_t num_src,
                                       const void* x, const void* alpha_src, const void* alpha_dst, fa_dtype dtype,
                                       int heads, int channels, const fa_attention* att, const float* lse,
                                       float* d_row, const void* grad_out, void* grad_x, void* grad_src,
                                       void* grad_dst, cudaStream_t stream) {
  if (heads == 0) return cudaSuccess;
  const int64_t num_loops = att->self_loops ? (num_src < g->num_rows ? num_src : g->num_rows) : 0;
  return dispatch_types(dtype, g->itype, [&](auto tv, auto iv) -> cudaError_t {
    using T = decltype(tv);
    using I = decltype(iv);
    if (g->num_rows > 0)
      FA_GAT_LAUNCH(gat_dst_grad_kernel, g->num_rows, heads, static_cast<const I*>(g->rowptr),
                    static_cast<const I*>(g->col), g->num_rows, g->num_edges, num_loops, static_cast<const T*>(x),
                    static_cast<const T*>(alpha_src), static_cast<const T*>(alpha_dst), heads, channels, *att, lse,
                    d_row, static_cast<const T*>(grad_out), static_cast<T*>(grad_dst));
    if (num_src > 0)
      FA_GAT_LAUNCH(gat_src_grad_kernel, num_src, heads, static_cast<const I*>(gt->rowptr),
                    static_cast<const I*>(gt->col), perm_t, num_src, g->num_edges, num_loops,
                    static_cast<const T*>(x), static_cast<const T*>(alpha_src), static_cast<const T*>(alpha_dst),
                    heads, channels, *att, lse, d_row, static_cast<const T*>(grad_out), static_cast<T*>(grad_x),
                    static_cast<T*>(grad_src));
    return cudaSuccess;
  });
}
