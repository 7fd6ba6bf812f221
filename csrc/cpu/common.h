#pragma once
// Input preparation and dtype dispatch shared by the CPU kernels.
// The tensor type and the few operators the kernels call (per-operator headers:
// ATen/ATen.h declares every operator, most of each file's compile time).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

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

// A stored value in its arithmetic type. Every kernel reads features through this.
template <typename scalar_t>
inline acc_t<scalar_t> widen(scalar_t v) {
  return acc_t<scalar_t>(v);
}

// float16 -> float, the same bits as c10::Half's conversion, with the denormal case
// chosen by a mask instead of a branch. c10's branches (unless F16C is on at compile
// time, and the kernels are built for the baseline ISA), and a branch in a feature loop
// keeps GCC from vectorising it: float16 spmm ran 3.2x slower than float32. This one
// vectorises in the baseline build and in the AVX2 clone.
inline float widen(c10::Half h) {
  const auto as_float = [](uint32_t bits) { float f; std::memcpy(&f, &bits, 4); return f; };
  const auto as_bits = [](float f) { uint32_t b; std::memcpy(&b, &f, 4); return b; };
  const uint32_t w = uint32_t(h.x) << 16;
  const uint32_t sign = w & 0x80000000u;
  const uint32_t two_w = w + w;
  // normal numbers, inf and NaN: rebias the exponent (by 0xE0, then scale by 2^-112)
  const uint32_t normal = as_bits(as_float((two_w >> 4) + (0xE0u << 23)) * 0x1.0p-112f);
  // denormals: the mantissa as a float in [0.5, 1) minus 0.5
  const uint32_t denormal = as_bits(as_float((two_w >> 17) | (126u << 23)) - 0.5f);
  const uint32_t is_denormal = 0u - uint32_t(two_w < (1u << 27));
  return as_float(sign | (denormal & is_denormal) | (normal & ~is_denormal));
}

// An arithmetic value in the storage type. Every kernel writes features through this.
template <typename S, typename T>
inline S narrow(T v) {
  return S(v);
}

// float -> float16, the same rounding and bits as c10::Half's, with its branches replaced
// by a max and a mask, for the same reason as widen: the output loops then vectorise.
template <>
inline c10::Half narrow<c10::Half, float>(float f) {
  const auto as_float = [](uint32_t bits) { float x; std::memcpy(&x, &bits, 4); return x; };
  const auto as_bits = [](float x) { uint32_t b; std::memcpy(&b, &x, 4); return b; };
  // round to 11 significant bits in float arithmetic, overflowing to inf
  const float scale_to_inf = as_float(239u << 23), scale_to_zero = as_float(17u << 23);
  float base = (std::fabs(f) * scale_to_inf) * scale_to_zero;
  const uint32_t w = as_bits(f);
  const uint32_t shl1_w = w + w;
  const uint32_t sign = w & 0x80000000u;
  const uint32_t bias = std::max(shl1_w & 0xFF000000u, 0x71000000u);
  base = as_float((bias >> 1) + 0x07800000u) + base;
  const uint32_t bits = as_bits(base);
  const uint32_t nonsign = ((bits >> 13) & 0x00007C00u) + (bits & 0x00000FFFu);
  const uint32_t is_nan = 0u - uint32_t(shl1_w > 0xFF000000u);
  return c10::Half(uint16_t((sign >> 16) | (0x7E00u & is_nan) | (nonsign & ~is_nan)), c10::Half::from_bits());
}

template <typename S, typename T>
inline void narrow_row(const T* __restrict__ in, int64_t n, S* __restrict__ out) {
#pragma omp simd
  for (int64_t f = 0; f < n; ++f) out[f] = narrow<S>(in[f]);
}

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

// f(std::integral_constant<int, W>) for the W of Widths equal to `width` when the storage
// type S is float (the feature loops then unroll and a row's sum stays in registers),
// else f(std::integral_constant<int, 0>) (width read at run time). Only float gets the
// fixed widths: each is a few more folds to compile, which would buy little for double
// (accuracy, not speed) and the half types.
template <typename S, int... Widths, typename F>
void with_fixed_width(int64_t width, const F& f) {
  if constexpr (std::is_same_v<S, float>) {
    if (((width == Widths ? (f(std::integral_constant<int, Widths>{}), true) : false) || ...)) return;
  }
  f(std::integral_constant<int, 0>{});
}

// Gathers of x[col[e]] are random reads: prefetching the row a few edges ahead keeps
// several cache misses in flight. The distance runs across row boundaries (a fold's
// `prefetch_end`, the number of edges): most rows of a power-law graph are shorter
// than the distance, and prefetching only within the row would leave them unprefetched.
constexpr int64_t kPrefetchDistance = 8;

// Whole rows of up to this many columns are summed in two sums over alternate edges:
// with one, each edge's multiply-add waits on the previous one (a few vector lanes
// cannot hide the add's latency); wider rows have enough independent lanes in one sum,
// and two would not fit in the vector registers (measured on Cora's graph at 16 columns,
// one thread: gcn_aggregate 39 -> 27 us; at 64 columns two sums were 40% slower).
constexpr int kTwoSumsUpTo = 32;

template <typename T>
inline void prefetch_row(const T* p, int64_t width) {
  const char* c = reinterpret_cast<const char*>(p);
  for (int64_t b = 0; b < width * int64_t(sizeof(T)); b += 64) __builtin_prefetch(c + b);
}

// A whole-row gather over features far larger than the caches waits on memory for
// every edge (random reads, no reuse): prefetching the rows of the edges further ahead
// into L2 (whose miss queue holds more lines in flight than L1's) overlaps those waits.
// Measured on a 10^6-node, 10^7-edge power-law graph at 64 columns (256 MiB of
// features), two threads: 28.3 -> 22.1 ns per edge; below ~64 MiB of features it cost
// up to 20% (the rows come from the last-level cache), so it is off there.
constexpr int64_t kFarPrefetchBytes = int64_t(64) << 20;
constexpr int64_t kFarPrefetchDistance = 16;

template <typename T>
inline void prefetch_row_l2(const T* p, int64_t width) {
  const char* c = reinterpret_cast<const char*>(p);
  for (int64_t b = 0; b < width * int64_t(sizeof(T)); b += 64) __builtin_prefetch(c + b, 0, 1);
}

}  // namespace cpu
}  // namespace fastalign
