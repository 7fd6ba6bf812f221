#pragma once
// Load-balanced, deterministic traversal of CSR rows.
//
// Rows are grouped into blocks of about `block_edges` edges, run in parallel. A row
// longer than kPieceEdges (a power-law hub) is cut into pieces of kPieceEdges edges
// that run in parallel too; each piece folds into its own partial state and the pieces
// of a row are merged afterwards in edge order. Piece boundaries depend only on the row
// lengths, never on the thread count, so the result is the same bits on any number of
// threads, and no atomics are needed.
#include <ATen/Parallel.h>
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <exception>
#include <new>
#include <type_traits>
#include <vector>

namespace fastalign {
namespace cpu {

constexpr int64_t kPieceEdges = 4096;

// Threads for a traversal of `work` rows plus edges: one per kGrainWork of it, at most
// torch's thread count. Below kGrainWork the traversal runs on the calling thread, with
// no parallel region at all: a second thread gains nothing there (the call is tens of
// microseconds, mostly the op's fixed cost), and on a busy machine a region waits for a
// thread the scheduler has not given us. Measured on the 2-core VM: 2 threads start to
// pay from about a thousand edges (structure_kl at 1,024 edges: 234 -> 187 us).
constexpr int64_t kGrainWork = 1024;

// A gather-sum (spmm, gcn_aggregate) does little per edge at a narrow width, so its
// work is counted per column: rows plus edges, times the width, over this. At 16
// columns a graph of Cora's size (13k rows plus edges) then stays on one thread, where
// a second one cost more than it gained inside a layer (measured after a linear:
// 35 us on one thread, 43 on two); PubMed's graph (108k) at 16 columns and Cora's at 64
// take two.
constexpr int64_t kColumnsPerWork = 256;

inline int threads_for(int64_t work) {
  const int64_t max_threads = std::max(1, at::get_num_threads());
  return int(std::min(max_threads, std::max<int64_t>(1, (work + kGrainWork - 1) / kGrainWork)));
}

struct WorkItem {
  int64_t row_begin, row_end;    // whole rows [row_begin, row_end), or the one long row
  int64_t edge_begin, edge_end;  // for a piece: its edge range
  int64_t piece;                 // -1 for a block of whole rows, else the piece index
};

struct Partition {
  std::vector<WorkItem> items;
  std::vector<int64_t> long_rows;    // rows cut into pieces
  std::vector<int64_t> first_piece;  // pieces of long_rows[k]: [first_piece[k], first_piece[k+1])
  int64_t num_pieces = 0;
  int threads = 1;  // for the traversals over it (threads_for the rows plus edges)
};

// `columns`: the width of a gather-sum's rows (see kColumnsPerWork); 0 for any other
// traversal, whose work is its rows plus edges.
template <typename index_t>
Partition partition_rows(const index_t* rowptr, int64_t num_rows, int64_t columns = 0) {
  Partition p;
  const int64_t num_edges = num_rows > 0 ? int64_t(rowptr[num_rows]) - int64_t(rowptr[0]) : 0;
  const int64_t work = columns > 0 ? (num_rows + num_edges) * columns / kColumnsPerWork : num_rows + num_edges;
  const int64_t threads = p.threads = threads_for(work);
  // ~16 blocks per thread for dynamic balancing; at least a few hundred edges each.
  const int64_t block_edges = std::max<int64_t>(512, num_edges / (16 * threads));
  const int64_t block_rows = std::max<int64_t>(64, num_rows / (16 * threads));
  p.first_piece.push_back(0);
  int64_t start = 0;
  auto close_block = [&](int64_t end) {
    if (end > start) p.items.push_back({start, end, 0, 0, -1});
  };
  for (int64_t r = 0; r < num_rows; ++r) {
    const int64_t e0 = rowptr[r], e1 = rowptr[r + 1];
    if (e1 - e0 > kPieceEdges) {
      close_block(r);
      for (int64_t e = e0; e < e1; e += kPieceEdges)
        p.items.push_back({r, r + 1, e, std::min(e + kPieceEdges, e1), p.num_pieces++});
      p.long_rows.push_back(r);
      p.first_piece.push_back(p.num_pieces);
      start = r + 1;
    } else if (int64_t(rowptr[r + 1]) - int64_t(rowptr[start]) >= block_edges ||
               r + 1 - start >= block_rows) {
      close_block(r + 1);
      start = r + 1;
    }
  }
  close_block(num_rows);
  return p;
}

// The same partition restricted to its long rows (their pieces only): for a second pass
// that only the hub rows need.
inline Partition long_rows_only(const Partition& p) {
  Partition q;
  for (const WorkItem& it : p.items)
    if (it.piece >= 0) q.items.push_back(it);
  q.long_rows = p.long_rows;
  q.first_piece = p.first_piece;
  q.num_pieces = p.num_pieces;
  q.threads = p.threads;
  return q;
}

// Kernels are built for the baseline ISA (x86-64: SSE2). The per-item work of a
// traversal is also compiled for x86-64-v3 (AVX2, FMA) and the CPU picks the version once
// at load time (GCC target_clones, an ifunc): the feature loops then run 8 floats wide
// where the CPU has it, and the library still loads on any x86-64. `flatten` inlines the
// op's accumulate into each clone (else the clones would call one baseline copy). The
// OpenMP regions stay outside the cloned functions (GCC outlines them before it clones).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__)
#define FASTALIGN_MULTIVERSION \
  __attribute__((target_clones("arch=x86-64-v3", "default"), noinline, flatten))
#else
#define FASTALIGN_MULTIVERSION
#endif

// Index checks run over runs of whole rows of about kCheckEdges edges, just before the
// rows are processed: the checked indices are then still in L1 when the kernel gathers
// through them (a whole work item, ~60k edges on one thread, would be read twice from
// memory; a check per row costs a call and a branch per row of a few edges).
constexpr int64_t kCheckEdges = 1024;

// fn(run_begin, run_end) over [row_begin, row_end) cut into runs of whole rows of at
// least kCheckEdges edges (the last may be shorter); a run whose edges fail check(e0, e1)
// is skipped (the op raises afterwards).
template <typename index_t, typename Check, typename Fn>
inline void checked_runs(const index_t* rowptr, int64_t row_begin, int64_t row_end, const Check& check,
                         const Fn& fn) {
  int64_t r = row_begin;
  while (r < row_end) {
    const int64_t e0 = rowptr[r];
    int64_t stop = r + 1;
    while (stop < row_end && int64_t(rowptr[stop]) - e0 < kCheckEdges) ++stop;
    if (check(e0, int64_t(rowptr[stop]))) fn(r, stop);
    r = stop;
  }
}

// Checks nothing (ops that gather through no index).
struct NoIndexCheck {
  bool operator()(int64_t, int64_t) const { return true; }
};

// fn(row, edge_begin, edge_end) over every row (pieces of long rows included), in
// parallel; for per-edge outputs, where no combination is needed. check(e0, e1) sees
// the edges of each run of rows (see checked_runs) or piece before fn does; a run that
// fails it is skipped (the op raises afterwards).
template <typename index_t, typename Fn, typename Check>
FASTALIGN_MULTIVERSION void edge_range_item(const index_t* rowptr, const WorkItem& it, const Fn& fn,
                                            const Check& check) {
  if (it.piece >= 0) {
    if (check(it.edge_begin, it.edge_end)) fn(it.row_begin, it.edge_begin, it.edge_end);
    return;
  }
  checked_runs(rowptr, it.row_begin, it.row_end, check, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) fn(r, int64_t(rowptr[r]), int64_t(rowptr[r + 1]));
  });
}

// No exception may leave an OpenMP region (the runtime would terminate the process):
// a worker's exception is kept (the first one) and rethrown after the region.
class ErrorSlot {
 public:
  template <typename F>
  void run(const F& f) noexcept {
    try {
      f();
    } catch (...) {
#pragma omp critical(fastalign_error_slot)
      if (!error_) error_ = std::current_exception();
    }
  }
  void rethrow() const {
    if (error_) std::rethrow_exception(error_);
  }

 private:
  std::exception_ptr error_;
};

template <typename index_t, typename Fn, typename Check = NoIndexCheck>
void for_each_edge_range(const index_t* rowptr, const Partition& p, const Fn& fn, const Check& check = Check{}) {
  const int64_t n = p.items.size();
  ErrorSlot errors;
#pragma omp parallel for schedule(dynamic, 1) num_threads(p.threads) if (p.threads > 1)
  for (int64_t k = 0; k < n; ++k) errors.run([&] { edge_range_item(rowptr, p.items[k], fn, check); });
  errors.rethrow();
}

// fn(i) for i in [0, n), in parallel chunks of `grain`, exceptions kept as above;
// `work` (what all n calls do together, in threads_for's units: an edge or a row of
// features) sizes the team.
template <typename Fn>
void parallel_range(int64_t n, int64_t grain, int64_t work, const Fn& fn) {
  const int64_t chunks = (n + grain - 1) / grain;
  const int threads = threads_for(work);
  ErrorSlot errors;
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
  for (int64_t c = 0; c < chunks; ++c)
    errors.run([&] {
      const int64_t end = std::min(n, (c + 1) * grain);
      for (int64_t i = c * grain; i < end; ++i) fn(i);
    });
  errors.rethrow();
}

// Whether a fold has a whole-row path: Op::kWholeRows true, and op.row(row, e0, e1).
template <typename Op, typename = void>
struct has_whole_rows : std::false_type {};
template <typename Op>
struct has_whole_rows<Op, std::void_t<decltype(Op::kWholeRows)>> : std::bool_constant<Op::kWholeRows> {};

// One work item of a fold: a block of whole rows (init, accumulate, finish each), or
// one piece of a long row folded into its partial state. op.indices_ok(e0, e1) sees the
// edges of each run of rows (see checked_runs) or piece first; a run that fails it is
// skipped.
template <typename index_t, typename Op>
FASTALIGN_MULTIVERSION void fold_item(const index_t* rowptr, const WorkItem& it, const Op& op,
                                      typename Op::elem_t* state, typename Op::elem_t* partial) {
  if (it.piece >= 0) {
    typename Op::elem_t* s = partial + it.piece * op.size;
    op.init(s);
    if (op.indices_ok(it.edge_begin, it.edge_end)) op.accumulate(it.row_begin, it.edge_begin, it.edge_end, s);
    return;
  }
  const auto check = [&](int64_t e0, int64_t e1) { return op.indices_ok(e0, e1); };
  checked_runs(rowptr, it.row_begin, it.row_end, check, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      if constexpr (has_whole_rows<Op>::value) {
        op.row(r, int64_t(rowptr[r]), int64_t(rowptr[r + 1]));
      } else {
        op.init(state);
        op.accumulate(r, int64_t(rowptr[r]), int64_t(rowptr[r + 1]), state);
        op.finish(r, state);
      }
    }
  });
}

// The pieces of long row k merged in edge order, then finished.
template <typename Op>
FASTALIGN_MULTIVERSION void merge_long_row(const Partition& p, int64_t k, const Op& op,
                                           typename Op::elem_t* partial) {
  typename Op::elem_t* s = partial + p.first_piece[k] * op.size;
  for (int64_t q = p.first_piece[k] + 1; q < p.first_piece[k + 1]; ++q) op.merge(s, partial + q * op.size);
  op.finish(p.long_rows[k], s);
}

// A fold over each row's edges into a state of `op.size` elements of Op::elem_t:
//   op.init(state), op.accumulate(row, edge_begin, edge_end, state),
//   op.merge(state, piece_state) (pieces in edge order), op.finish(row, state),
//   op.indices_ok(edge_begin, edge_end) (the indices a work item reads are valid);
// optionally, with Op::kWholeRows, op.row(row, edge_begin, edge_end): a whole row (init,
// accumulate and finish in one, its state in registers), for every row not cut into pieces.
template <typename index_t, typename Op>
void segment_fold(const index_t* rowptr, const Partition& p, const Op& op) {
  using elem_t = typename Op::elem_t;
  std::vector<elem_t> partial(p.num_pieces * op.size);
  const int64_t n = p.items.size();
  ErrorSlot errors;
#pragma omp parallel num_threads(p.threads) if (p.threads > 1)
  {
    std::vector<elem_t> state;
    errors.run([&] { state.resize(op.size); });
#pragma omp for schedule(dynamic, 1)
    for (int64_t k = 0; k < n; ++k)
      errors.run([&] {
        if (int64_t(state.size()) != op.size) throw std::bad_alloc();
        fold_item(rowptr, p.items[k], op, state.data(), partial.data());
      });
    const int64_t num_long = p.long_rows.size();
#pragma omp for schedule(dynamic, 1)
    for (int64_t k = 0; k < num_long; ++k) errors.run([&] { merge_long_row(p, k, op, partial.data()); });
  }
  errors.rethrow();
}

// Adds `size` values to a running sum (the merge of the sum folds).
template <typename T>
inline void add_into(T* __restrict__ into, const T* __restrict__ from, int64_t size) {
#pragma omp simd
  for (int64_t f = 0; f < size; ++f) into[f] += from[f];
}

template <typename T>
inline void fill(T* __restrict__ out, T value, int64_t size) {
#pragma omp simd
  for (int64_t f = 0; f < size; ++f) out[f] = value;
}

}  // namespace cpu
}  // namespace fastalign
