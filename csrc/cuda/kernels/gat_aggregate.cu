// Graph attention, fused (fastalign/ops/gat_aggregate.py has the formulas). One thread
// per (row, head): a pass for the row's max logit, one for its sum of exponentials, then
// the weighted features in register chunks of kChunk channels (the weights recomputed
// per chunk: no per-edge buffer). The backward recomputes the attention from the saved
// per-(row, head) log-sum-exp: destination rows first (D = g . out and grad_alpha_dst),
// then the transpose. Deterministic: every output element has one owner thread
// and sums in edge order; no atomics. Hub rows are not split yet (one thread walks a
// whole row).
#include "attention_dropout.h"
#include "common.cuh"

using namespace fastalign::cuda;

namespace {

constexpr int kChunk = 8;

__device__ __forceinline__ float drop_factor(const fa_attention& att, int64_t edge, int heads, int h) {
  if (att.threshold == 0) return 1.f;
  return fastalign::attention_dropout::kept(static_cast<uint64_t>(edge), static_cast<uint64_t>(heads),
                                            static_cast<uint64_t>(h), att.seed, att.threshold)
             ? att.scale
             : 0.f;
}

__device__ __forceinline__ float leaky(float z, float slope) { return z > 0.f ? z : z * slope; }

// The attended edges of row r of a CSR, as (neighbour, edge id): the stored ones (a
// stored self loop skipped when self loops are added), then the added loop.
template <typename I, typename Fn>
__device__ __forceinline__ void for_each_attended(const I* __restrict__ rowptr, const I* __restrict__ col,
                                                  const int64_t* __restrict__ perm, int64_t r, bool loops,
                                                  bool has_loop, int64_t num_edges, Fn&& fn) {
  const int64_t b = ld_index(rowptr + r), e = ld_index(rowptr + r + 1);
  for (int64_t k = b; k < e; ++k) {
    const int64_t n = ld_index(col + k);
    if (loops && n == r) continue;
    fn(n, perm ? __ldg(perm + k) : k);
  }
  if (has_loop) fn(r, num_edges + r);
}

// o[q] = scale * sum of w v[q] over what ``each`` adds (add(w, v)), for the kChunk
// channels c0.. of a row (registers: the weights are recomputed per chunk, never stored).
template <typename T, typename Each>
__device__ __forceinline__ void weighted_chunk(Each&& each, int C, int c0, float scale, T* __restrict__ o) {
  float acc[kChunk];
#pragma unroll
  for (int q = 0; q < kChunk; ++q) acc[q] = 0.f;
  each([&](float w, const T* __restrict__ v) {
#pragma unroll
    for (int q = 0; q < kChunk; ++q)
      if (c0 + q < C) acc[q] = fmaf(w, to_float(v[q]), acc[q]);
  });
#pragma unroll
  for (int q = 0; q < kChunk; ++q)
    if (c0 + q < C) o[q] = from_float<T>(acc[q] * scale);
}

template <typename T, typename I>
__global__ void __launch_bounds__(kBlock)
    gat_forward_kernel(const I* __restrict__ rowptr, const I* __restrict__ col, int64_t num_rows,
                       int64_t num_edges, int64_t num_loops, const T* __restrict__ x, const T* __restrict__ as,
                       const T* __restrict__ ad, int H, int C, fa_attention att, T* __restrict__ out,
                       float* __restrict__ lse) {
  const int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (t >= num_rows * H) return;
  const int64_t i = t / H;
  const int h = static_cast<int>(t % H);
  const bool loops = att.self_loops != 0, has_loop = loops && i < num_loops;
  const float adv = ad ? to_float(ad[i * H + h]) : 0.f;
  auto logit = [&](int64_t j) { return leaky(to_float(as[j * H + h]) + adv, att.slope); };
  float m = -INFINITY;
  for_each_attended(rowptr, col, static_cast<const int64_t*>(nullptr), i, loops, has_loop, num_edges,
                    [&](int64_t j, int64_t) { m = fmaxf(m, logit(j)); });
  const float ms = m == -INFINITY ? 0.f : m;
  float s = 0.f;
  for_each_attended(rowptr, col, static_cast<const int64_t*>(nullptr), i, loops, has_loop, num_edges,
                    [&](int64_t j, int64_t) { s += expf(logit(j) - ms); });
  lse[i * H + h] = s > 0.f ? ms + logf(s) : -INFINITY;
  const float inv = s > 0.f ? 1.f / s : 0.f;
  for (int c0 = 0; c0 < C; c0 += kChunk) {
    weighted_chunk<T>(
        [&](auto&& add) {
          for_each_attended(rowptr, col, static_cast<const int64_t*>(nullptr), i, loops, has_loop, num_edges,
                            [&](int64_t j, int64_t edge) {
                              add(expf(logit(j) - ms) * drop_factor(att, edge, H, h), x + (j * H + h) * C + c0);
                            });
        },
        C, c0, inv, out + (i * H + h) * C + c0);
  }
}

template <typename T>
__device__ __forceinline__ float dot_c(const T* __restrict__ a, const T* __restrict__ b, int C) {
  float d = 0.f;
  for (int c = 0; c < C; ++c) d = fmaf(to_float(a[c]), to_float(b[c]), d);
  return d;
}

// Per destination (row i, head h): D = g_i . out_i = sum_j a k (g_i . x_j) into d_row (the
// source pass needs it), and grad_alpha_dst = sum_j a (k g_i . x_j - D) l' = S1 - D S2
// (l' the leaky ReLU's slope at z; D is known only at the row's end).
template <typename T, typename I>
__global__ void __launch_bounds__(kBlock)
    gat_dst_grad_kernel(const I* __restrict__ rowptr, const I* __restrict__ col, int64_t num_rows,
                        int64_t num_edges, int64_t num_loops, const T* __restrict__ x, const T* __restrict__ as,
                        const T* __restrict__ ad, int H, int C, fa_attention att, const float* __restrict__ lse,
                        float* __restrict__ d_row, const T* __restrict__ g, T* __restrict__ grad_dst) {
  const int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (t >= num_rows * H) return;
  const int64_t i = t / H;
  const int h = static_cast<int>(t % H);
  const bool loops = att.self_loops != 0, has_loop = loops && i < num_loops;
  const float adv = ad ? to_float(ad[i * H + h]) : 0.f, l = lse[i * H + h];
  const T* gi = g + (i * H + h) * C;
  float s1 = 0.f, s2 = 0.f, d = 0.f;
  for_each_attended(rowptr, col, static_cast<const int64_t*>(nullptr), i, loops, has_loop, num_edges,
                    [&](int64_t j, int64_t edge) {
                      const float z = to_float(as[j * H + h]) + adv;
                      const float a = expf(leaky(z, att.slope) - l);
                      const float akd = a * drop_factor(att, edge, H, h) * dot_c(gi, x + (j * H + h) * C, C);
                      const float lg = z > 0.f ? 1.f : att.slope;
                      s1 = fmaf(akd, lg, s1);
                      s2 = fmaf(a, lg, s2);
                      d += akd;
                    });
  d_row[i * H + h] = d;
  if (grad_dst) grad_dst[i * H + h] = from_float<T>(s1 - d * s2);
}

// grad_alpha_src and grad_x over the transpose's rows (sources j).
template <typename T, typename I>
__global__ void __launch_bounds__(kBlock)
    gat_src_grad_kernel(const I* __restrict__ rowptr_t, const I* __restrict__ col_t,
                        const int64_t* __restrict__ perm_t, int64_t num_src, int64_t num_edges, int64_t num_loops,
                        const T* __restrict__ x, const T* __restrict__ as, const T* __restrict__ ad, int H, int C,
                        fa_attention att, const float* __restrict__ lse, const float* __restrict__ d_row,
                        const T* __restrict__ g, T* __restrict__ grad_x, T* __restrict__ grad_src) {
  const int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (t >= num_src * H) return;
  const int64_t j = t / H;
  const int h = static_cast<int>(t % H);
  const bool loops = att.self_loops != 0, has_loop = loops && j < num_loops;
  const float asv = to_float(as[j * H + h]);
  const T* xj = x + (j * H + h) * C;
  // (a k, dz) of edge j -> i
  auto grads = [&](int64_t i, int64_t edge, float* ak, float* dz) {
    const float z = asv + (ad ? to_float(ad[i * H + h]) : 0.f);
    const float a = expf(leaky(z, att.slope) - lse[i * H + h]);
    const float k = drop_factor(att, edge, H, h);
    const float dot = dot_c(g + (i * H + h) * C, xj, C);
    *ak = a * k;
    *dz = a * (k * dot - d_row[i * H + h]) * (z > 0.f ? 1.f : att.slope);
  };
  float gsrc = 0.f;
  for_each_attended(rowptr_t, col_t, perm_t, j, loops, has_loop, num_edges, [&](int64_t i, int64_t edge) {
    float ak, dz;
    grads(i, edge, &ak, &dz);
    gsrc += dz;
  });
  grad_src[j * H + h] = from_float<T>(gsrc);
  for (int c0 = 0; c0 < C; c0 += kChunk) {
    weighted_chunk<T>(
        [&](auto&& add) {
          for_each_attended(rowptr_t, col_t, perm_t, j, loops, has_loop, num_edges, [&](int64_t i, int64_t edge) {
            const float z = asv + (ad ? to_float(ad[i * H + h]) : 0.f);
            add(expf(leaky(z, att.slope) - lse[i * H + h]) * drop_factor(att, edge, H, h), g + (i * H + h) * C + c0);
          });
        },
        C, c0, 1.f, grad_x + (j * H + h) * C + c0);
  }
}

unsigned thread_grid(int64_t threads) { return static_cast<unsigned>(ceil_div(threads, kBlock)); }

}  // namespace

extern "C" cudaError_t fa_gat_forward(const fa_csr* g, int64_t num_src, const void* x, const void* alpha_src,
                                      const void* alpha_dst, fa_dtype dtype, int heads, int channels,
                                      const fa_attention* att, void* out, float* lse, cudaStream_t stream) {
  if (g->num_rows == 0 || heads == 0) return cudaSuccess;
  const int64_t num_loops = att->self_loops ? (num_src < g->num_rows ? num_src : g->num_rows) : 0;
  return dispatch_types(dtype, g->itype, [&](auto tv, auto iv) -> cudaError_t {
    using T = decltype(tv);
    using I = decltype(iv);
    gat_forward_kernel<T, I><<<thread_grid(g->num_rows * heads), kBlock, 0, stream>>>(
        static_cast<const I*>(g->rowptr), static_cast<const I*>(g->col), g->num_rows, g->num_edges, num_loops,
        static_cast<const T*>(x), static_cast<const T*>(alpha_src), static_cast<const T*>(alpha_dst), heads,
        channels, *att, static_cast<T*>(out), lse);
    return cudaGetLastError();
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
    if (g->num_rows > 0) {
      gat_dst_grad_kernel<T, I><<<thread_grid(g->num_rows * heads), kBlock, 0, stream>>>(
          static_cast<const I*>(g->rowptr), static_cast<const I*>(g->col), g->num_rows, g->num_edges, num_loops,
          static_cast<const T*>(x), static_cast<const T*>(alpha_src), static_cast<const T*>(alpha_dst), heads,
          channels, *att, lse, d_row, static_cast<const T*>(grad_out), static_cast<T*>(grad_dst));
      const cudaError_t err = cudaGetLastError();
      if (err != cudaSuccess) return err;
    }
    if (num_src > 0) {
      gat_src_grad_kernel<T, I><<<thread_grid(num_src * heads), kBlock, 0, stream>>>(
          static_cast<const I*>(gt->rowptr), static_cast<const I*>(gt->col), perm_t, num_src, g->num_edges,
          num_loops, static_cast<const T*>(x), static_cast<const T*>(alpha_src),
          static_cast<const T*>(alpha_dst), heads, channels, *att, lse, d_row,
          static_cast<const T*>(grad_out), static_cast<T*>(grad_x), static_cast<T*>(grad_src));
    }
    return cudaGetLastError();
  });
}
