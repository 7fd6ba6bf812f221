// Row-segment schedule: load balance for hub rows without atomics on the outputs.
//
// Each CSR row is one segment, except rows longer than `split` edges ("split rows"),
// which are cut into ceil(deg / split) pieces of `split` edges. A tile of lanes
// processes one segment; a piece writes its partial result to a float32 slot, and a
// combine kernel reduces the slots of each split row in piece order (deterministic).
//
// Layout: segment g < P (the number of pieces) is piece g, whose slot is g; segment
// P + r is row r (nothing to do when r is split). Finding a tile's work is O(1): one
// read of P and of the piece's row, or none beyond rowptr for a row; no search. Pieces
// come first so that the hubs' work starts at the launch rather than in its tail.
//
// Bounds, with S = split and E edges: split rows have deg > S, so there are fewer than
// E / S of them; they have sum ceil(deg / S) < 2E / S pieces; and there are at most
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
  const int64_t* piece_ptr = nullptr;           // [num_rows + 1] first piece of each row
  const int64_t* piece_row = nullptr;           // [max_slots] the row of each piece
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
__global__ void count_pieces_kernel(const I* __restrict__ rowptr, int64_t num_rows,
                                    int64_t split, int64_t* __restrict__ counts,
                                    int64_t* __restrict__ split_rows,
                                    unsigned long long* __restrict__ num_split) {
  const int64_t r = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (r >= num_rows) return;
  const int64_t deg = ld_index(rowptr + r + 1) - ld_index(rowptr + r);
  int64_t n = 0;
  if (deg > split) {
    n = (deg + split - 1) / split;
    // The list order is not deterministic, but each row is combined on its own, so
    // the results are.
    split_rows[atomicAdd(num_split, 1ull)] = r;
  }
  counts[r] = n;
}

// piece_row[piece_ptr[r] + k] = r for each piece k of each split row r.
__global__ void fill_pieces_kernel(const int64_t* __restrict__ piece_ptr,
                                   const int64_t* __restrict__ split_rows,
                                   const unsigned long long* __restrict__ num_split,
                                   int64_t* __restrict__ piece_row) {
  const unsigned long long n = *num_split;
  for (unsigned long long k = blockIdx.x; k < n; k += gridDim.x) {
    const int64_t r = split_rows[k];
    for (int64_t p = piece_ptr[r] + threadIdx.x; p < piece_ptr[r + 1]; p += blockDim.x)
      piece_row[p] = r;
  }
}

inline unsigned grid_for_split_rows(const Schedule& s) {
  // The combine kernels stride over the split-row list; a bounded grid suffices.
  const int64_t n = s.max_split_rows < 65535 ? s.max_split_rows : 65535;
  return static_cast<unsigned>(n > 0 ? n : 1);
}

// Measures (ws == nullptr) or builds the schedule of g in the workspace carve `c`.
template <typename I>
cudaError_t build_schedule(const fa_csr* g, int64_t split, Carve& c, Schedule& s,
                           cudaStream_t stream) {
  schedule_bounds(g->num_rows, g->num_edges, split, s);
  const int64_t n = g->num_rows;
  int64_t* piece_ptr = c.take<int64_t>(n + 1);
  int64_t* counts = c.take<int64_t>(n);
  int64_t* piece_row = c.take<int64_t>(s.max_slots);
  int64_t* split_rows = c.take<int64_t>(s.max_split_rows);
  unsigned long long* num_split = c.take<unsigned long long>(1);
  size_t temp_bytes = 0;
  cudaError_t err = cub::DeviceScan::InclusiveSum(nullptr, temp_bytes, counts, piece_ptr + 1,
                                                  n > 0 ? n : 1, stream);
  if (err != cudaSuccess) return err;
  void* temp = c.take<char>(static_cast<int64_t>(temp_bytes));
  s.piece_ptr = piece_ptr;
  s.piece_row = piece_row;
  s.split_rows = split_rows;
  s.num_split = num_split;
  if (c.base == nullptr) return cudaSuccess;  // measuring only
  if ((err = cudaMemsetAsync(piece_ptr, 0, sizeof(int64_t), stream)) != cudaSuccess) return err;
  if ((err = cudaMemsetAsync(num_split, 0, sizeof(unsigned long long), stream)) != cudaSuccess)
    return err;
  if (n == 0) return cudaSuccess;
  const auto* rowptr = static_cast<const I*>(g->rowptr);
  count_pieces_kernel<I><<<ceil_div(n, kBlock), kBlock, 0, stream>>>(
      rowptr, n, split, counts, split_rows, num_split);
  if ((err = cudaGetLastError()) != cudaSuccess) return err;
  err = cub::DeviceScan::InclusiveSum(temp, temp_bytes, counts, piece_ptr + 1, n, stream);
  if (err != cudaSuccess) return err;
  fill_pieces_kernel<<<grid_for_split_rows(s), kBlock, 0, stream>>>(piece_ptr, split_rows,
                                                                     num_split, piece_row);
  return cudaGetLastError();
}

// The segment a tile works on.
struct Segment {
  int64_t row;
  int64_t begin, end;  // edge range
  int64_t slot;        // partial slot, -1 when the row is not split
  bool valid;
};

// Maps (block, tile) to its segment: segment g = blockIdx.x * TPB + tile_id (see the
// layout above). No barriers: a thread may leave as soon as its segment is invalid.
template <typename I, int TPB>
__device__ __forceinline__ Segment find_segment(const Schedule& s, const I* __restrict__ rowptr,
                                                int tile_id) {
  Segment seg{0, 0, 0, -1, false};
  const int64_t g = static_cast<int64_t>(blockIdx.x) * TPB + tile_id;
  const int64_t pieces = s.piece_ptr[s.num_rows];
  if (g < pieces) {
    const int64_t r = s.piece_row[g];
    const int64_t b = ld_index(rowptr + r) + (g - s.piece_ptr[r]) * s.split;
    const int64_t e = ld_index(rowptr + r + 1);
    seg.row = r;
    seg.begin = b;
    seg.end = b + s.split < e ? b + s.split : e;
    seg.slot = g;
    seg.valid = true;
    return seg;
  }
  const int64_t r = g - pieces;
  if (r >= s.num_rows) return seg;
  const int64_t b = ld_index(rowptr + r), e = ld_index(rowptr + r + 1);
  if (e - b > s.split) return seg;  // its pieces do it
  seg.row = r;
  seg.begin = b;
  seg.end = e;
  seg.valid = true;
  return seg;
}

// Slots of split row r: first slot and how many (its pieces, in edge order).
__device__ __forceinline__ void split_slots(const Schedule& s, int64_t r, int64_t& first,
                                            int64_t& count) {
  first = s.piece_ptr[r];
  count = s.piece_ptr[r + 1] - first;
}

inline unsigned grid_for_segments(const Schedule& s, int tiles_per_block) {
  return static_cast<unsigned>(ceil_div(s.max_segments, tiles_per_block));
}

}  // namespace
}  // namespace cuda
}  // namespace fastalign
