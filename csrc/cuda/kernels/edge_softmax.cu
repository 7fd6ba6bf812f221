// Softmax of per-edge scalars over each CSR row, and its backward. One warp per row:
// the data is E scalars (no feature dimension), so even a hub row of 50k edges is a
// few microseconds for one warp; rows are read coalesced, reductions are fixed-order.
#include "common.cuh"

using namespace fastalign::cuda;

namespace {

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

template <typename T, typename I>
__global__ void __launch_bounds__(kBlock)
    edge_softmax_kernel(const I* __restrict__ rowptr, int64_t num_rows,
                        const T* __restrict__ z, T* __restrict__ p) {
  const int64_t r = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) / 32;
  if (r >= num_rows) return;  // whole warps leave together
  const int lane = threadIdx.x % 32;
  const int64_t b = ld_index(rowptr + r), e = ld_index(rowptr + r + 1);
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
  float dot = 0.f;
  for (int64_t k = b + lane; k < e; k += 32) dot = fmaf(to_float(p[k]), to_float(g[k]), dot);
  dot = warp_sum(dot);
  for (int64_t k = b + lane; k < e; k += 32)
    out[k] = from_float<T>(to_float(p[k]) * (to_float(g[k]) - dot));
}

unsigned warp_grid(int64_t rows) { return static_cast<unsigned>(ceil_div(rows * 32, kBlock)); }

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
    return cudaGetLastError();
  });
}
