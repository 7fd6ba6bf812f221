#pragma once
// Input preparation and dtype dispatch shared by the CPU kernels.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

namespace fastalign {
namespace cpu {

// float32/float64 features x int32/int64 indices. An OpenMP pragma cannot sit inside a
// dispatch lambda, so BODY calls a template function with scalar_t and index_t.
#define FASTALIGN_DISPATCH(SCALAR, INDEX, NAME, ...)                    \
  AT_DISPATCH_FLOATING_TYPES(SCALAR, NAME, [&] {                        \
    AT_DISPATCH_INDEX_TYPES(INDEX, NAME, [&] { __VA_ARGS__(); });       \
  })

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

// Cheap structural checks; the Python layer has validated index ranges already.
inline void check_csr(const at::Tensor& rowptr, const at::Tensor& col) {
  TORCH_CHECK(rowptr.dim() == 1 && rowptr.numel() >= 1, "rowptr must be 1-D and non-empty");
  TORCH_CHECK(col.dim() == 1, "col must be 1-D");
  TORCH_CHECK(rowptr.scalar_type() == col.scalar_type(), "rowptr and col must share an index dtype");
  TORCH_CHECK(rowptr.device().is_cpu() && col.device().is_cpu(), "expected CPU tensors");
}

inline void check_rows(const at::Tensor& x, int64_t rows, const char* name) {
  TORCH_CHECK(x.dim() == 2 && x.size(0) == rows, name, " must be [", rows, ", F], got ", x.sizes());
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
