// Row-segment schedule: load balance for hub rows without atomics on the outputs.
//
// Each CSR row is one segment, except rows longer than `split` edges ("split rows"),
// which are cut into ceil(deg / split) segments of `split` edges plus one empty
// placeholder segment. A tile of lanes processes one segment; a segment of a split row
// writes its partial result to a float32 slot, and a combine kernel reduces the slots of
// each split row in segment order (deterministic). The placeholder makes the slot index
// a closed form: slot(row, k) = seg_ptr[row] - row + k never collides between rows.
//
// Bounds, with S = split and E edges: split rows have deg > S, so there are fewer than
// E / S of them; they use sum ceil(deg / S) < 2E / S slots; and there are at most
// num_rows + 2E / S segments (the grid size, so nothing is read back to the host).
#pragma once

#include <cub/device/device_scan.cuh>

#include "common.cuh"

namespace fastalign {
namespace cuda {
// Internal linkage: each .cu file gets its own kernel instantiations (no cross-module
// merging of template kernel stubs without -rdc).
namespace {

// Carves aligned arrays out of one workspace; with base == nullptr it only measures.
struct Carve {
  char* base;
  size_t off = 0;
  template <typename U>
  U* take(int64_t n) {
    off = align_up(off);
    U* p = base ? reinterpret_cast<U*>(base + off) : nullptr;
    off += static_cast<size_t>(n < 0 ? 0 : n) * sizeof(U);
    return p;
  }
};

struct Schedule {
  const int64_t* seg_ptr = nullptr;             // [num_rows + 1] first segment of each row
  const int64_t* split_rows = nullptr;          // rows with deg > split (any order)
  const unsigned long long* num_split = nullptr;  // how many of them
  int64_t split = 0;
  int64_t num_rows = 0;
  int64_t max_segments = 0;
  int64_t max_split_rows = 0;
  int64_t max_slots = 0;
};

inline void schedule_bounds(int64_t num_rows, int64_t num_edges, int64_t split, Schedule& s) {
  s.split = split;
  s.num_rows = num_rows;
  s.max_split_rows = num_edges / (split + 1) + 1;
  s.max_slots = 2 * (num_edges / split) + 2;
  s.max_segments = num_rows + s.max_slots;
}

template <typename I>
__global__ void count_segments_kernel(const I* __restrict__ rowptr, int64_t num_rows,
                                      int64_t split, int64_t* __restrict__ counts,
                                      int64_t* __restrict__ split_rows,
                                      unsigned long long* __restrict__ num_split) {
  const int64_t r = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (r >= num_rows) return;
  const int64_t deg = ld_index(rowptr + r + 1) - ld_index(rowptr + r);
  int64_t n = 1;
  if (deg > split) {
    n = (deg + split - 1) / split + 1;
    // The list order is not deterministic, but each row is combined on its own, so
    // the results are.
    split_rows[atomicAdd(num_split, 1ull)] = r;
  }
  counts[r] = n;
}

// Measures (ws == nullptr) or builds the schedule of g in the workspace carve `c`.
template <typename I>
cudaError_t build_schedule(const fa_csr* g, int64_t split, Carve& c, Schedule& s,
                           cudaStream_t stream) {
  schedule_bounds(g->num_rows, g->num_edges, split, s);
  const int64_t n = g->num_rows;
  int64_t* seg_ptr = c.take<int64_t>(n + 1);
  int64_t* counts = c.take<int64_t>(n);
  int64_t* split_rows = c.take<int64_t>(s.max_split_rows);
  unsigned long long* num_split = c.take<unsigned long long>(1);
  size_t temp_bytes = 0;
  cudaError_t err = cub::DeviceScan::InclusiveSum(nullptr, temp_bytes, counts, seg_ptr + 1,
                                                  n > 0 ? n : 1, stream);
  if (err != cudaSuccess) return err;
  void* temp = c.take<char>(static_cast<int64_t>(temp_bytes));
  s.seg_ptr = seg_ptr;
  s.split_rows = split_rows;
  s.num_split = num_split;
  if (c.base == nullptr) return cudaSuccess;  // measuring only
  if ((err = cudaMemsetAsync(seg_ptr, 0, sizeof(int64_t), stream)) != cudaSuccess) return err;
  if ((err = cudaMemsetAsync(num_split, 0, sizeof(unsigned long long), stream)) != cudaSuccess)
    return err;
  if (n == 0) return cudaSuccess;
  const auto* rowptr = static_cast<const I*>(g->rowptr);
  count_segments_kernel<I><<<ceil_div(n, kBlock), kBlock, 0, stream>>>(
      rowptr, n, split, counts, split_rows, num_split);
  if ((err = cudaGetLastError()) != cudaSuccess) return err;
  return cub::DeviceScan::InclusiveSum(temp, temp_bytes, counts, seg_ptr + 1, n, stream);
}

// The segment a tile works on.
struct Segment {
  int64_t row;
  int64_t begin, end;  // edge range
  int64_t slot;        // partial slot, -1 when the row is not split
  bool valid;
};

// Maps (block, tile) to its segment. Every thread of the block must call it (it holds
// two barriers). Blocks cover TPB consecutive segments: one binary search per block
// finds the first row, then each tile searches the block's <= TPB + 1 offsets in shared
// memory (every row has at least one segment, so TPB segments span <= TPB rows).
template <typename I, int TPB>
__device__ __forceinline__ Segment find_segment(const Schedule& s, const I* __restrict__ rowptr,
                                                int tile_id) {
  __shared__ int64_t sp[TPB + 1];
  __shared__ int64_t first_row;
  const int64_t total = s.seg_ptr[s.num_rows];
  const int64_t g0 = static_cast<int64_t>(blockIdx.x) * TPB;
  if (threadIdx.x == 0) {
    int64_t lo = 0, hi = s.num_rows;  // seg_ptr[lo] <= g0 < seg_ptr[hi]
    if (g0 < total) {
      while (hi - lo > 1) {
        const int64_t mid = (lo + hi) / 2;
        if (s.seg_ptr[mid] <= g0) lo = mid;
        else hi = mid;
      }
    }
    first_row = lo;
  }
  __syncthreads();
  const int64_t r0 = first_row;
  for (int t = threadIdx.x; t <= TPB; t += blockDim.x) {
    const int64_t r = r0 + t < s.num_rows ? r0 + t : s.num_rows;
    sp[t] = s.seg_ptr[r];
  }
  __syncthreads();
  Segment seg{0, 0, 0, -1, false};
  const int64_t g = g0 + tile_id;
  if (g >= total) return seg;
  int lo = 0, hi = TPB;  // largest t with sp[t] <= g
  while (hi - lo > 1) {
    const int mid = (lo + hi) / 2;
    if (sp[mid] <= g) lo = mid;
    else hi = mid;
  }
  seg.row = r0 + lo;
  const int64_t k = g - sp[lo];
  const int64_t b = ld_index(rowptr + seg.row), e = ld_index(rowptr + seg.row + 1);
  if (e - b <= s.split) {
    seg.begin = b;
    seg.end = e;
    seg.valid = true;
    return seg;
  }
  const int64_t nreal = (e - b + s.split - 1) / s.split;
  if (k >= nreal) return seg;  // the placeholder segment
  seg.begin = b + k * s.split;
  seg.end = seg.begin + s.split < e ? seg.begin + s.split : e;
  seg.slot = sp[lo] - seg.row + k;
  seg.valid = true;
  return seg;
}

// Slots of split row r: first slot and how many.
template <typename I>
__device__ __forceinline__ void split_slots(const Schedule& s, const I* __restrict__ rowptr,
                                            int64_t r, int64_t& first, int64_t& count) {
  const int64_t deg = ld_index(rowptr + r + 1) - ld_index(rowptr + r);
  first = s.seg_ptr[r] - r;
  count = (deg + s.split - 1) / s.split;
}

inline unsigned grid_for_segments(const Schedule& s, int tiles_per_block) {
  return static_cast<unsigned>(ceil_div(s.max_segments, tiles_per_block));
}

inline unsigned grid_for_split_rows(const Schedule& s) {
  // The combine kernels stride over the split-row list; a bounded grid suffices.
  const int64_t n = s.max_split_rows < 65535 ? s.max_split_rows : 65535;
  return static_cast<unsigned>(n > 0 ? n : 1);
}

}  // namespace
}  // namespace cuda
}  // namespace fastalign
