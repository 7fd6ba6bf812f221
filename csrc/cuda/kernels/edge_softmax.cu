// Softmax of per-edge scalars over each CSR row, and its backward. One warp per row of
// at most kLongRow edges; a longer row (a hub: ~50k in-edges on Reddit-sized graphs,
// 1,500 serial steps for one warp) is taken by a block of kLongBlock threads, so its
// three passes run 32 times wider. Rows are read coalesced; every reduction has a fixed
// order (lane, then warp), so results are bitwise reproducible.
#include "common.cuh"

using namespace fastalign::cuda;

namespace {

constexpr int64_t kLongRow = 1024;  // longest row a warp takes (32 steps per pass)
constexpr int kLongBlock = 1024;    // threads on one long row

template <bool MAX>
__device__ __forceinline__ float long_row_reduce(float v, float* scratch) {
  return block_reduce<kLongBlock, MAX>(v, scratch);
}

// The long rows among rows [blockIdx.x * kLongBlock, +kLongBlock): found by one degree
// read per thread, then each taken by the whole block. BACKWARD: out = p * (g - sum p g)
// with (a, b) = (p, g); else out = softmax(a). The list's order varies; each row's
// result does not depend on it.
template <typename T, typename I, bool BACKWARD>
__global__ void __launch_bounds__(kLongBlock)
    edge_softmax_long_rows_kernel(const I* __restrict__ rowptr, int64_t num_rows,
                                  const T* __restrict__ a, const T* __restrict__ b,
                                  T* __restrict__ out) {
  __shared__ int64_t rows[kLongBlock];
  __shared__ int count;
  __shared__ float scratch[kLongBlock / 32];
  const int found = find_long_rows<kLongBlock>(rowptr, num_rows, kLongRow, rows, &count);
  for (int k = 0; k < found; ++k) {
    const int64_t r = rows[k];
    const int64_t lo = ld_index(rowptr + r), hi = ld_index(rowptr + r + 1);
    if (BACKWARD) {
      float dot = 0.f;
      for (int64_t e = lo + threadIdx.x; e < hi; e += kLongBlock)
        dot = fmaf(to_float(a[e]), to_float(b[e]), dot);
      dot = long_row_reduce<false>(dot, scratch);
      for (int64_t e = lo + threadIdx.x; e < hi; e += kLongBlock)
        out[e] = from_float<T>(to_float(a[e]) * (to_float(b[e]) - dot));
    } else {
      float m = -INFINITY;
      for (int64_t e = lo + threadIdx.x; e < hi; e += kLongBlock) m = fmaxf(m, to_float(a[e]));
      m = long_row_reduce<true>(m, scratch);
      float sum = 0.f;
      for (int64_t e = lo + threadIdx.x; e < hi; e += kLongBlock) sum += expf(to_float(a[e]) - m);
      const float inv = 1.f / long_row_reduce<false>(sum, scratch);
      for (int64_t e = lo + threadIdx.x; e < hi; e += kLongBlock)
        out[e] = from_float<T>(expf(to_float(a[e]) - m) * inv);
    }
  }
}

template <typename T, typename I>
__global__ void __launch_bounds__(kBlock)
    edge_softmax_kernel(const I* __restrict__ rowptr, int64_t num_rows,
                        const T* __restrict__ z, T* __restrict__ p) {
  const int64_t r = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) / 32;
  if (r >= num_rows) return;  // whole warps leave together
  const int lane = threadIdx.x % 32;
  const int64_t b = ld_index(rowptr + r), e = ld_index(rowptr + r + 1);
  if (e - b > kLongRow) return;  // edge_softmax_long_rows_kernel's
  float m = -INFINITY;
  for (int64_t k = b + lane; k < e; k += 32) m = fmaxf(m, to_float(z[k]));
  m = warp_max(m);
  float s = 0.f;
  for (int64_t k = b + lane; k < e; k += 32) s += expf(to_float(z[k]) - m);
  const float inv = 1.f / warp_sum(s);
  for (int64_t k = b + lane; k < e; k += 32) p[k] = from_float<T>(expf(to_float(z[k]) - m) * inv);
}

template <typename T, typename I>
__global__ void __launch_bounds__(kBlock)
    edge_softmax_backward_kernel(const I* __restrict__ rowptr, int64_t num_rows,
                                 const T* __restrict__ p, const T* __restrict__ g,
                                 T* __restrict__ out) {
  const int64_t r = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) / 32;
  if (r >= num_rows) return;
  const int lane = threadIdx.x % 32;
  const int64_t b = ld_index(rowptr + r), e = ld_index(rowptr + r + 1);
  if (e - b > kLongRow) return;  // edge_softmax_long_rows_kernel's
  float dot = 0.f;
  for (int64_t k = b + lane; k < e; k += 32) dot = fmaf(to_float(p[k]), to_float(g[k]), dot);
  dot = warp_sum(dot);
  for (int64_t k = b + lane; k < e; k += 32)
    out[k] = from_float<T>(to_float(p[k]) * (to_float(g[k]) - dot));
}

unsigned warp_grid(int64_t rows) { return static_cast<unsigned>(ceil_div(rows * 32, kBlock)); }

unsigned long_rows_grid(int64_t rows) { return static_cast<unsigned>(ceil_div(rows, kLongBlock)); }

}  // namespace

extern "C" cudaError_t fa_edge_softmax(const fa_csr* g, const void* logits, fa_dtype dtype,
                                       void* p, cudaStream_t stream) {
  if (g->num_rows == 0 || g->num_edges == 0) return cudaSuccess;
  return dispatch_types(dtype, g->itype, [&](auto tv, auto iv) -> cudaError_t {
    using T = decltype(tv);
    using I = decltype(iv);
    edge_softmax_kernel<T, I><<<warp_grid(g->num_rows), kBlock, 0, stream>>>(
        static_cast<const I*>(g->rowptr), g->num_rows, static_cast<const T*>(logits),
        static_cast<T*>(p));
    cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
    edge_softmax_long_rows_kernel<T, I, false><<<long_rows_grid(g->num_rows), kLongBlock, 0, stream>>>(
        static_cast<const I*>(g->rowptr), g->num_rows, static_cast<const T*>(logits), nullptr,
        static_cast<T*>(p));
    return cudaGetLastError();
  });
}

extern "C" cudaError_t fa_edge_softmax_backward(const fa_csr* g, const void* p,
                                                const void* grad_p, fa_dtype dtype,
                                                void* grad_logits, cudaStream_t stream) {
  if (g->num_rows == 0 || g->num_edges == 0) return cudaSuccess;
  return dispatch_types(dtype, g->itype, [&](auto tv, auto iv) -> cudaError_t {
    using T = decltype(tv);
    using I = decltype(iv);
    edge_softmax_backward_kernel<T, I><<<warp_grid(g->num_rows), kBlock, 0, stream>>>(
        static_cast<const I*>(g->rowptr), g->num_rows, static_cast<const T*>(p),
        static_cast<const T*>(grad_p), static_cast<T*>(grad_logits));
    cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
    edge_softmax_long_rows_kernel<T, I, true><<<long_rows_grid(g->num_rows), kLongBlock, 0, stream>>>(
        static_cast<const I*>(g->rowptr), g->num_rows, static_cast<const T*>(p),
        static_cast<const T*>(grad_p), static_cast<T*>(grad_logits));
    return cudaGetLastError();
  });
}
