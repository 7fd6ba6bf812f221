// Shared device helpers: value/index types, 16-byte vector loads, tile reductions, and
// the dispatch from runtime enums to template instantiations.
#pragma once

#include <cooperative_groups.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include <utility>

#include "fastalign_cuda.h"

namespace fastalign {
namespace cuda {

namespace cg = cooperative_groups;

constexpr int kBlock = 256;  // threads per block for the row kernels

// ------------------------------------------------------------------ value conversion
__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// Elements per 16-byte vector.
template <typename T>
constexpr int vec16() { return 16 / static_cast<int>(sizeof(T)); }

// Load V consecutive elements (V * sizeof(T) is 16 bytes or V == 1) as floats.
// Read-only path: features are never written by the kernel that reads them.
template <typename T, int V>
__device__ __forceinline__ void load_vec(const T* __restrict__ p, float (&out)[V]) {
  if constexpr (V == 1) {
    out[0] = to_float(__ldg(p));
  } else {
    static_assert(V * sizeof(T) == 16, "vector loads are 16 bytes");
    union {
      uint4 u;
      T t[V];
    } buf;
    buf.u = __ldg(reinterpret_cast<const uint4*>(p));
#pragma unroll
    for (int k = 0; k < V; ++k) out[k] = to_float(buf.t[k]);
  }
}

template <typename T, int V>
__device__ __forceinline__ void store_vec(T* __restrict__ p, const float (&in)[V]) {
  if constexpr (V == 1) {
    p[0] = from_float<T>(in[0]);
  } else {
    union {
      uint4 u;
      T t[V];
    } buf;
#pragma unroll
    for (int k = 0; k < V; ++k) buf.t[k] = from_float<T>(in[k]);
    *reinterpret_cast<uint4*>(p) = buf.u;
  }
}

template <typename I>
__device__ __forceinline__ int64_t ld_index(const I* __restrict__ p) {
  return static_cast<int64_t>(__ldg(p));
}

// Sum over the lanes of a tile (a power of two <= 32); every lane gets the result, in
// the same order on every lane and every run (deterministic butterfly).
template <int L>
__device__ __forceinline__ float tile_sum(const cg::thread_block_tile<L>& tile, float v) {
#pragma unroll
  for (int o = L / 2; o > 0; o /= 2) v += tile.shfl_xor(v, o);
  return v;
}

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

// Fixed-order reduction over a block of THREADS threads (a multiple of 32) of one value
// per thread (MAX: max, else sum): lanes, then warps. Every thread gets the result, and
// every thread of the block must call it. `scratch` holds THREADS / 32 floats.
template <int THREADS, bool MAX>
__device__ __forceinline__ float block_reduce(float v, float* scratch) {
  v = MAX ? warp_max(v) : warp_sum(v);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();  // scratch may still be read by the previous reduction
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < THREADS / 32 ? scratch[lane] : (MAX ? -INFINITY : 0.f);
  return MAX ? warp_max(v) : warp_sum(v);
}

// Whether row r of a CSR has more than `limit` edges.
template <typename I>
__device__ __forceinline__ bool row_longer_than(const I* __restrict__ rowptr, int64_t r, int64_t limit) {
  return ld_index(rowptr + r + 1) - ld_index(rowptr + r) > limit;
}

// The rows among [blockIdx.x * THREADS, +THREADS) with more than `limit` edges (hubs),
// found by one degree read per thread, into `rows` (THREADS entries of shared memory);
// every thread of the block must call it, and gets their count. The list's order varies
// from run to run; a kernel that takes each listed row with the whole block does not
// depend on it.
template <int THREADS, typename I>
__device__ __forceinline__ int find_long_rows(const I* __restrict__ rowptr, int64_t num_rows, int64_t limit,
                                              int64_t* rows, int* count) {
  if (threadIdx.x == 0) *count = 0;
  __syncthreads();
  const int64_t r = static_cast<int64_t>(blockIdx.x) * THREADS + threadIdx.x;
  if (r < num_rows && row_longer_than(rowptr, r, limit)) rows[atomicAdd(count, 1)] = r;
  __syncthreads();
  return *count;
}

// ------------------------------------------------------------------ tile configuration
// A "tile" of L lanes owns one row segment; lane c handles the 16-byte vectors
// c, c + L, ..., c + (NT-1) L of a chunk of L * NT vectors of the feature row (coarse
// warp merging: the edge indices a tile caches serve every feature it owns). Short
// feature rows use small tiles, so one warp serves several rows at once.
struct TileShape {
  int lanes;   // L
  int nt;      // NT (vectors per lane per chunk)
  int vec;     // V (elements per vector)
  int chunks;  // feature chunks (grid.y)
};

// The widest vector all of the given widths and pointers allow (16 bytes or scalar).
inline int pick_vec(int elem_bytes, const int64_t* widths, int nw, const void* const* ptrs,
                    int np) {
  const int v = 16 / elem_bytes;
  for (int k = 0; k < nw; ++k)
    if (widths[k] % v != 0) return 1;
  for (int k = 0; k < np; ++k)
    if (ptrs[k] != nullptr && reinterpret_cast<uintptr_t>(ptrs[k]) % 16 != 0) return 1;
  return v;
}

inline TileShape pick_shape(int64_t F, int vec) {
  const int64_t cols = (F + vec - 1) / vec;
  TileShape s{32, 1, vec, 1};
  if (cols <= 4) s.lanes = 4;
  else if (cols <= 8) s.lanes = 8;
  else if (cols <= 16) s.lanes = 16;
  else if (cols <= 32) s.lanes = 32;
  else if (cols <= 64) s.nt = 2;
  else {
    s.nt = 4;  // up to 128 vectors per chunk; wider rows use more chunks (grid.y)
    s.chunks = static_cast<int>((cols + 127) / 128);
  }
  return s;
}

// Call f(T{}, I{}) with the value and index types of the runtime enums.
template <typename Fn>
cudaError_t dispatch_types(fa_dtype dt, fa_itype it, Fn&& f) {
  auto with_index = [&](auto tv) -> cudaError_t {
    if (it == FA_I32) return f(tv, int32_t{});
    return f(tv, int64_t{});
  };
  switch (dt) {
    case FA_F32: return with_index(float{});
    case FA_F16: return with_index(__half{});
    case FA_BF16: return with_index(__nv_bfloat16{});
  }
  return cudaErrorInvalidValue;
}

template <int L, int NT>
struct Shape {
  static constexpr int lanes = L;
  static constexpr int nt = NT;
};

// The widest rows a tile holds in registers (the pair kernels need whole rows).
constexpr int kMaxVectorsPerRow = 128;

// Call f(Shape<L, NT>{}) for a tile shape chosen by pick_shape.
template <typename Fn>
cudaError_t dispatch_shape(const TileShape& s, Fn&& f) {
  if (s.nt == 4) return f(Shape<32, 4>{});
  if (s.nt == 2) return f(Shape<32, 2>{});
  switch (s.lanes) {
    case 4: return f(Shape<4, 1>{});
    case 8: return f(Shape<8, 1>{});
    case 16: return f(Shape<16, 1>{});
    default: return f(Shape<32, 1>{});
  }
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

inline size_t align_up(size_t n) { return (n + 255) & ~static_cast<size_t>(255); }

}  // namespace cuda
}  // namespace fastalign
