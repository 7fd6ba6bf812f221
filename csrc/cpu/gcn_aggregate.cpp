// gcn_aggregate: out[i] = sum_{j->i} dis[i] w dis[j] x[j] + loop_weight[i] dis[i]^2 x[i]
// + bias, the GCN normalisation fused into the aggregation (no normalised edge weights
// built) and the layer's bias into its row writes (no second pass over the output).
#include <torch/library.h>

#include <atomic>

#include "cpu/common.h"
#include "cpu/segment.h"

namespace fastalign {
namespace cpu {
namespace {

// scalar_t is the features' storage type; the normalisation, the weights and the sums
// are in acc (float for the half types: a bfloat16 degree would stop at 256). kF: the
// width fixed at compile time (0: size, read at run time).
template <typename scalar_t, typename index_t, int kF = 0>
struct GcnFold {
  using acc = acc_t<scalar_t>;
  using elem_t = acc;
  const index_t* col;
  const acc* weight;       // may be null
  const acc* dis;
  const acc* loop_weight;  // null: no implicit self loops
  const acc* bias;         // [size] or null
  const scalar_t* x;
  scalar_t* out;
  int64_t size;
  IndexCheck cols;           // col against the nodes (rows of x and dis)
  int64_t prefetch_end = 0;  // the number of edges (see kPrefetchDistance)
  bool far = false;          // x far larger than the caches (see kFarPrefetchBytes)

  bool indices_ok(int64_t e0, int64_t e1) const { return cols.all_ok(col + e0, e1 - e0); }
  void init(acc* s) const { fill(s, acc(0), size); }
  void accumulate(int64_t r, int64_t e0, int64_t e1, acc* __restrict__ s) const {
    const int64_t F = size, end = std::max(e1, prefetch_end);
    const acc di = dis[r];
    for (int64_t e = e0; e < e1; ++e) {
      if (far && e + kFarPrefetchDistance < end) prefetch_row_l2(x + int64_t(col[e + kFarPrefetchDistance]) * F, F);
      if (e + kPrefetchDistance < end) prefetch_row(x + int64_t(col[e + kPrefetchDistance]) * F, F);
      const int64_t j = col[e];
      // With implicit loops, a stored self loop's weight is already in loop_weight.
      if (loop_weight && j == r) continue;
      acc c = di * dis[j];
      if (weight) c *= weight[e];
      const scalar_t* __restrict__ xj = x + j * F;
#pragma omp simd
      for (int64_t f = 0; f < F; ++f) s[f] += widen(xj[f]) * c;
    }
  }
  // A whole row, its sum in registers (called only when the width is fixed).
  static constexpr bool kWholeRows = kF > 0;
  void row(int64_t r, int64_t e0, int64_t e1) const {
    if constexpr (kF <= kTwoSumsUpTo) {
      row_two_sums(r, e0, e1);
      return;
    }
    acc sum[kF] = {};
    const acc di = dis[r];
    // no prefetch below kFarPrefetchBytes of features: a kF-wide row is a line or a few,
    // and the loads of a row's edges are independent, so the core keeps them in flight
    const int64_t end = std::max(e1, prefetch_end);
    for (int64_t e = e0; e < e1; ++e) {
      if (far && e + kFarPrefetchDistance < end) prefetch_row_l2(x + int64_t(col[e + kFarPrefetchDistance]) * kF, kF);
      const int64_t j = col[e];
      if (loop_weight && j == r) continue;
      acc c = di * dis[j];
      if (weight) c *= weight[e];
      const scalar_t* __restrict__ xj = x + j * kF;
      for (int f = 0; f < kF; ++f) sum[f] += widen(xj[f]) * c;
    }
    finish(r, sum);
  }
  // A narrow row (see kTwoSumsUpTo) in two sums over alternate edges. With implicit
  // loops, a stored self loop (its weight is already in loop_weight) reads a row of
  // zeros: a select, not a branch.
  void row_two_sums(int64_t r, int64_t e0, int64_t e1) const {
    alignas(64) static const scalar_t zeros[kF] = {};
    acc even[kF] = {}, odd[kF] = {};
    const acc di = dis[r];
    const index_t* __restrict__ c = col;
    const acc* __restrict__ d = dis;
    const acc* __restrict__ w = weight;
    const scalar_t* __restrict__ xs = x;
    const int64_t skip = loop_weight ? r : -1;
    auto scale = [&](int64_t e, int64_t j) { return w ? di * d[j] * w[e] : di * d[j]; };
    auto source = [&](int64_t j) { return j == skip ? zeros : xs + j * kF; };
    int64_t e = e0;
    for (; e + 1 < e1; e += 2) {
      const int64_t j0 = c[e], j1 = c[e + 1];
      const acc s0 = scale(e, j0), s1 = scale(e + 1, j1);
      const scalar_t* __restrict__ x0 = source(j0);
      const scalar_t* __restrict__ x1 = source(j1);
      for (int f = 0; f < kF; ++f) even[f] += widen(x0[f]) * s0;
      for (int f = 0; f < kF; ++f) odd[f] += widen(x1[f]) * s1;
    }
    if (e < e1) {
      const int64_t j = c[e];
      const acc s = scale(e, j);
      const scalar_t* __restrict__ xj = source(j);
      for (int f = 0; f < kF; ++f) even[f] += widen(xj[f]) * s;
    }
    for (int f = 0; f < kF; ++f) even[f] += odd[f];
    finish(r, even);
  }
  void merge(acc* s, const acc* piece) const { add_into(s, piece, size); }
  void finish(int64_t r, const acc* __restrict__ s) const {
    scalar_t* __restrict__ o = out + r * size;
    const acc* __restrict__ b = bias;
    if (loop_weight) {
      const acc c = loop_weight[r] * dis[r] * dis[r];
      const scalar_t* __restrict__ xr = x + r * size;
      if (b) {
#pragma omp simd
        for (int64_t f = 0; f < size; ++f) o[f] = narrow<scalar_t>(s[f] + c * widen(xr[f]) + b[f]);
      } else {
#pragma omp simd
        for (int64_t f = 0; f < size; ++f) o[f] = narrow<scalar_t>(s[f] + c * widen(xr[f]));
      }
    } else if (b) {
#pragma omp simd
      for (int64_t f = 0; f < size; ++f) o[f] = narrow<scalar_t>(s[f] + b[f]);
    } else {
#pragma omp simd
      for (int64_t f = 0; f < size; ++f) o[f] = narrow<scalar_t>(s[f]);
    }
  }
};

at::Tensor gcn_aggregate(const at::Tensor& rowptr, const at::Tensor& col,
                         const c10::optional<at::Tensor>& weight, const at::Tensor& dis,
                         const c10::optional<at::Tensor>& loop_weight, const at::Tensor& x,
                         const c10::optional<at::Tensor>& bias) {
  check_csr(rowptr, col);
  const int64_t n = rowptr.numel() - 1;
  check_rows(x, n, "x");
  TORCH_CHECK_VALUE(dis.dim() == 1 && dis.numel() == n, "dis must be [", n, "]");
  if (loop_weight.has_value() && loop_weight->defined())
    TORCH_CHECK_VALUE(loop_weight->dim() == 1 && loop_weight->numel() == n, "loop_weight must be [", n, "]");
  if (weight.has_value() && weight->defined())
    check_edge_values(*weight, col.numel(), "weight");
  if (bias.has_value() && bias->defined())
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->numel() == x.size(1), "bias must be [", x.size(1), "]");
  const auto dtype = x.scalar_type();
  const auto acc = at::toOpMathType(dtype);
  const at::Tensor xc = x.contiguous(), d = contiguous_as(dis, acc);
  const at::Tensor w = optional_as(weight, acc), lw = optional_as(loop_weight, acc);
  const at::Tensor b = optional_as(bias, acc);
  const at::Tensor rp = rowptr.contiguous(), cl = col.contiguous();
  at::Tensor out = at::empty_like(xc);
  std::atomic<bool> bad{false};
  FASTALIGN_DISPATCH(dtype, col.scalar_type(), "gcn_aggregate", [&] {
    const index_t* rpp = rp.data_ptr<index_t>();
    check_rowptr(rpp, n, cl.numel(), "gcn_aggregate");
    using acc_s = acc_t<scalar_t>;
    with_fixed_width<scalar_t, 16, 32, 64>(xc.size(1), [&](auto width) {
      GcnFold<scalar_t, index_t, decltype(width)::value> op{
          cl.data_ptr<index_t>(), ptr_or_null<acc_s>(w), d.data_ptr<acc_s>(), ptr_or_null<acc_s>(lw),
          ptr_or_null<acc_s>(b),
          xc.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), xc.size(1), IndexCheck{uint64_t(n), &bad},
          cl.numel()};
      op.far = xc.numel() * int64_t(sizeof(scalar_t)) > kFarPrefetchBytes;
      segment_fold(rpp, partition_rows(rpp, n, xc.size(1)), op);
    });
  });
  report_indices(bad, "gcn_aggregate", "col", n);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastalign_cpu, CPU, m) { m.impl("gcn_aggregate", &gcn_aggregate); }

}  // namespace cpu
}  // namespace fastalign
