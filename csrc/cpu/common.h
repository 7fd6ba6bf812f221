#pragma once
// Input preparation and dtype dispatch shared by the CPU kernels.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>

#include <atomic>
#include <limits>
#include <type_traits>
#include <cstdint>

namespace fastalign {
namespace cpu {

// float32/float64/float16/bfloat16 features x int32/int64 indices. The kernels are
// written over a storage type scalar_t and an arithmetic type acc_t<scalar_t>: the half
// types are read and written as stored (half the bytes of float32) and every sum runs
// in float (at::toOpMathType gives the matching dtype for the glue's tensors). An
// OpenMP pragma cannot sit inside a dispatch lambda, so BODY calls a template function
// with scalar_t and index_t.
#define FASTALIGN_DISPATCH(SCALAR, INDEX, NAME, ...)                                    \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, SCALAR, NAME, [&] {         \
    AT_DISPATCH_INDEX_TYPES(INDEX, NAME, [&] { __VA_ARGS__(); });                       \
  })

// float for float16/bfloat16, the type itself otherwise.
template <typename scalar_t>
using acc_t = at::opmath_type<scalar_t>;

inline at::Tensor contiguous_as(const at::Tensor& t, at::ScalarType dtype) {
  return t.to(dtype).contiguous();
}

inline at::Tensor optional_as(const c10::optional<at::Tensor>& t, at::ScalarType dtype) {
  return t.has_value() && t->defined() ? contiguous_as(*t, dtype) : at::Tensor();
}

template <typename T>
inline const T* ptr_or_null(const at::Tensor& t) {
  return t.defined() ? t.data_ptr<T>() : nullptr;
}

}  // namespace cpu
}  // namespace fastalign

namespace fastalign {
namespace cpu {

// These ops are public torch ops (torch.ops.fastalign_cpu.*): whatever a caller passes,
// they must not read out of bounds, loop for ever or abort the process. Shapes and dtypes
// are checked on entry; the row pointer by check_rowptr (O(rows), before any row is
// cut into work); every gathered index inside the kernels by an IndexCheck (one
// predictable branch per edge), reported after the parallel region by report_indices.

inline void check_index_dtype(const at::Tensor& t, const char* name) {
  TORCH_CHECK_TYPE(t.scalar_type() == at::kInt || t.scalar_type() == at::kLong, name,
                   " must be int32 or int64, got ", t.scalar_type());
}

inline void check_csr(const at::Tensor& rowptr, const at::Tensor& col) {
  TORCH_CHECK_VALUE(rowptr.dim() == 1 && rowptr.numel() >= 1, "rowptr must be 1-D and non-empty");
  TORCH_CHECK_VALUE(col.dim() == 1, "col must be 1-D");
  check_index_dtype(rowptr, "rowptr");
  TORCH_CHECK_TYPE(rowptr.scalar_type() == col.scalar_type(), "rowptr and col must share an index dtype");
  TORCH_CHECK_VALUE(rowptr.device().is_cpu() && col.device().is_cpu(), "expected CPU tensors");
}

inline void check_edge_values(const at::Tensor& t, int64_t num_edges, const char* name) {
  TORCH_CHECK_VALUE(t.dim() == 1 && t.numel() == num_edges, name, " must have shape [", num_edges,
                    "] (one value per edge of col), got ", t.sizes());
}

inline void check_rows(const at::Tensor& x, int64_t rows, const char* name) {
  TORCH_CHECK_VALUE(x.dim() == 2 && x.size(0) == rows, name, " must be [", rows, ", F], got ", x.sizes());
}

// rowptr[0] == 0, non-decreasing, rowptr[num_rows] == num_edges.
template <typename index_t>
void check_rowptr(const index_t* rowptr, int64_t num_rows, int64_t num_edges, const char* what) {
  TORCH_CHECK_VALUE(int64_t(rowptr[0]) == 0, what, ": malformed CSR: rowptr[0] must be 0, got ",
                    int64_t(rowptr[0]));
  bool monotone = true;
  for (int64_t r = 0; r < num_rows; ++r) monotone &= rowptr[r + 1] >= rowptr[r];
  TORCH_CHECK_VALUE(monotone, what, ": malformed CSR: rowptr must be non-decreasing");
  TORCH_CHECK_VALUE(int64_t(rowptr[num_rows]) == num_edges, what, ": malformed CSR: rowptr[-1] = ",
                    int64_t(rowptr[num_rows]), " but there are ", num_edges, " edges");
}

// The indices a kernel is about to read through: valid when in [0, bound). A run of
// them is checked at once before it is used (a vectorised compare over the run, so the
// kernels' inner loops stay as they were); a run with a bad one is skipped and flagged
// (relaxed: every writer writes true), and the op raises after its parallel region.
struct IndexCheck {
  uint64_t bound = 0;
  std::atomic<bool>* bad = nullptr;

  // Branch-free and in the index's own width, so it vectorises on every ISA (SSE2
  // included): with U the unsigned type of I and top = min(bound, max(I) + 1) - 1,
  // v | (top - v) has its sign bit set exactly when v < 0 or v > top.
  template <typename I>
  bool all_ok(const I* idx, int64_t n) const {
    using U = std::make_unsigned_t<I>;
    const uint64_t limit = uint64_t(std::numeric_limits<I>::max()) + 1;
    const U top = U(std::min(bound, limit) - 1);  // bound 0: all ones, nothing passes
    U acc = 0;
#pragma omp simd reduction(| : acc)
    for (int64_t k = 0; k < n; ++k) acc |= U(idx[k]) | U(top - U(idx[k]));
    const bool good = (acc >> (8 * sizeof(U) - 1)) == 0;
    if (!good) bad->store(true, std::memory_order_relaxed);
    return good;
  }
  bool ok(int64_t j) const { return all_ok(&j, 1); }
};

inline void report_indices(const std::atomic<bool>& bad, const char* op, const char* name, int64_t bound) {
  TORCH_CHECK_VALUE(!bad.load(), op, ": ", name, " holds an index outside [0, ", bound, ")");
}

}  // namespace cpu
}  // namespace fastalign

namespace fastalign {
namespace cpu {

// Gathers of x[col[e]] are random reads: prefetching the row a few edges ahead keeps
// several cache misses in flight. The distance runs across row boundaries (a fold's
// `prefetch_end`, the number of edges): most rows of a power-law graph are shorter
// than the distance, and prefetching only within the row would leave them unprefetched.
constexpr int64_t kPrefetchDistance = 8;

template <typename T>
inline void prefetch_row(const T* p, int64_t width) {
  const char* c = reinterpret_cast<const char*>(p);
  for (int64_t b = 0; b < width * int64_t(sizeof(T)); b += 64) __builtin_prefetch(c + b);
}

}  // namespace cpu
}  // namespace fastalign
