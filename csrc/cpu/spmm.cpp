// spmm (sum | mean | max, optional edge weights), its max backward, and sddmm.
#include <torch/library.h>

#include <atomic>
#include <limits>

#include "cpu/common.h"
#include "cpu/segment.h"

namespace fastalign {
namespace cpu {
namespace {

// scalar_t is the features' storage type, acc the arithmetic (float for the half types);
// kF the width fixed at compile time (0: size, read at run time).
template <typename scalar_t, typename index_t, int kF = 0>
struct SumFold {
  using acc = acc_t<scalar_t>;
  using elem_t = acc;
  const index_t* rowptr;
  const index_t* col;
  const acc* weight;  // may be null
  const scalar_t* x;
  scalar_t* out;
  int64_t size;  // F
  bool mean;
  IndexCheck cols;           // col against the rows of x
  int64_t prefetch_end = 0;  // the number of edges (see kPrefetchDistance)
  bool far = false;          // x far larger than the caches (see kFarPrefetchBytes)

  bool indices_ok(int64_t e0, int64_t e1) const { return cols.all_ok(col + e0, e1 - e0); }
  void init(acc* s) const { fill(s, acc(0), size); }
  void accumulate(int64_t, int64_t e0, int64_t e1, acc* __restrict__ s) const {
    const int64_t F = size, end = std::max(e1, prefetch_end);
    for (int64_t e = e0; e < e1; ++e) {
      if (far && e + kFarPrefetchDistance < end) prefetch_row_l2(x + int64_t(col[e + kFarPrefetchDistance]) * F, F);
      if (e + kPrefetchDistance < end) prefetch_row(x + int64_t(col[e + kPrefetchDistance]) * F, F);
      const scalar_t* __restrict__ xj = x + int64_t(col[e]) * F;
      const acc w = weight ? weight[e] : acc(1);
#pragma omp simd
      for (int64_t f = 0; f < F; ++f) s[f] += w * widen(xj[f]);
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
    // no prefetch below kFarPrefetchBytes of features: a kF-wide row is a line or a few,
    // and the loads of a row's edges are independent, so the core keeps them in flight
    const int64_t end = std::max(e1, prefetch_end);
    for (int64_t e = e0; e < e1; ++e) {
      if (far && e + kFarPrefetchDistance < end) prefetch_row_l2(x + int64_t(col[e + kFarPrefetchDistance]) * kF, kF);
      const scalar_t* __restrict__ xj = x + int64_t(col[e]) * kF;
      if (weight) {
        const acc w = weight[e];
        for (int f = 0; f < kF; ++f) sum[f] += w * widen(xj[f]);
      } else {
        for (int f = 0; f < kF; ++f) sum[f] += widen(xj[f]);
      }
    }
    finish(r, sum);
  }
  // A narrow row (see kTwoSumsUpTo) in two sums over alternate edges.
  void row_two_sums(int64_t r, int64_t e0, int64_t e1) const {
    acc even[kF] = {}, odd[kF] = {};
    const index_t* __restrict__ c = col;
    const acc* __restrict__ w = weight;
    const scalar_t* __restrict__ xs = x;
    int64_t e = e0;
    for (; e + 1 < e1; e += 2) {
      const scalar_t* __restrict__ x0 = xs + int64_t(c[e]) * kF;
      const scalar_t* __restrict__ x1 = xs + int64_t(c[e + 1]) * kF;
      const acc w0 = w ? w[e] : acc(1), w1 = w ? w[e + 1] : acc(1);
      for (int f = 0; f < kF; ++f) even[f] += widen(x0[f]) * w0;
      for (int f = 0; f < kF; ++f) odd[f] += widen(x1[f]) * w1;
    }
    if (e < e1) {
      const scalar_t* __restrict__ xj = xs + int64_t(c[e]) * kF;
      const acc wj = w ? w[e] : acc(1);
      for (int f = 0; f < kF; ++f) even[f] += widen(xj[f]) * wj;
    }
    for (int f = 0; f < kF; ++f) even[f] += odd[f];
    finish(r, even);
  }
  void merge(acc* s, const acc* piece) const { add_into(s, piece, size); }
  void finish(int64_t r, const acc* __restrict__ s) const {
    scalar_t* __restrict__ o = out + r * size;
    if (mean) {
      const acc deg = acc(std::max<int64_t>(1, int64_t(rowptr[r + 1]) - int64_t(rowptr[r])));
#pragma omp simd
      for (int64_t f = 0; f < size; ++f) o[f] = narrow<scalar_t>(s[f] / deg);
    } else {
#pragma omp simd
      for (int64_t f = 0; f < size; ++f) o[f] = narrow<scalar_t>(s[f]);
    }
  }
};

// The max reduction: per feature the greatest value and its edge (the backward's
// winner). The state is one byte buffer holding two arrays, [values: F acc | edges: F
// arg_t], so that the compare and the two selects of an edge vectorise (an array of
// (value, edge) pairs did not: 12x slower than the sum). Edges are -1 until the first.
// Without `winners` ("amax": no gradient will be asked for) only the values are kept
// after a row's first edge, which still marks the state as begun.
template <typename scalar_t, typename index_t, typename arg_t, int kF = 0>
struct MaxFold {
  using acc = acc_t<scalar_t>;
  using elem_t = unsigned char;
  const index_t* col;
  const acc* weight;
  const scalar_t* x;
  scalar_t* out;
  arg_t* arg;  // int32 unless the graph has 2^31 edges or more
  int64_t F;
  IndexCheck cols;
  int64_t prefetch_end = 0;  // the number of edges (see kPrefetchDistance)
  bool far = false;          // x far larger than the caches (see kFarPrefetchBytes)
  bool winners = true;       // track and write each maximum's edge
  int64_t size = state_bytes(F);

  // the edges' array starts at an 8-byte boundary, and so does every piece's state
  static int64_t values_bytes(int64_t F) { return (F * int64_t(sizeof(acc)) + 7) / 8 * 8; }
  static int64_t state_bytes(int64_t F) { return values_bytes(F) + (F * int64_t(sizeof(arg_t)) + 7) / 8 * 8; }
  acc* values(unsigned char* s) const { return reinterpret_cast<acc*>(s); }
  arg_t* edges(unsigned char* s) const { return reinterpret_cast<arg_t*>(s + values_bytes(F)); }
  const acc* values(const unsigned char* s) const { return reinterpret_cast<const acc*>(s); }
  const arg_t* edges(const unsigned char* s) const { return reinterpret_cast<const arg_t*>(s + values_bytes(F)); }

  // Whether value v (of a later edge) replaces best: greater, or a NaN over a number.
  // NaN propagates as in torch.amax (the first NaN edge wins and stays), and strict '>'
  // keeps the first edge on ties, so the result does not depend on the edge order
  // beyond "first".
  static bool beats(acc v, acc best) { return (v > best) | ((v != v) & (best == best)); }

  bool indices_ok(int64_t e0, int64_t e1) const { return cols.all_ok(col + e0, e1 - e0); }
  void init(unsigned char* s) const {
    fill(values(s), acc(0), F);
    fill(edges(s), arg_t(-1), F);
  }
  void accumulate(int64_t, int64_t e0, int64_t e1, unsigned char* s) const {
    if (F == 0 || e0 >= e1) return;
    acc* __restrict__ best = values(s);
    arg_t* __restrict__ won = edges(s);
    const int64_t end = std::max(e1, prefetch_end);
    int64_t e = e0;
    if (won[0] < 0) {  // a fresh state: the first edge sets every feature
      const scalar_t* __restrict__ xj = x + int64_t(col[e]) * F;
      const acc w = weight ? weight[e] : acc(1);
#pragma omp simd
      for (int64_t f = 0; f < F; ++f) {
        best[f] = w * widen(xj[f]);
        won[f] = arg_t(e);
      }
      ++e;
    }
    for (; e < e1; ++e) {
      if (far && e + kFarPrefetchDistance < end) prefetch_row_l2(x + int64_t(col[e + kFarPrefetchDistance]) * F, F);
      if (e + kPrefetchDistance < end) prefetch_row(x + int64_t(col[e + kPrefetchDistance]) * F, F);
      const scalar_t* __restrict__ xj = x + int64_t(col[e]) * F;
      const acc w = weight ? weight[e] : acc(1);
      if (!winners) {
#pragma omp simd
        for (int64_t f = 0; f < F; ++f) best[f] = greater(w * widen(xj[f]), best[f]);
        continue;
      }
      const arg_t edge = arg_t(e);
#pragma omp simd
      for (int64_t f = 0; f < F; ++f) {
        const acc v = w * widen(xj[f]);
        const bool take = beats(v, best[f]);
        best[f] = take ? v : best[f];
        // the select as a mask: GCC 12 vectorised `take ? edge : won[f]` here into a
        // loop that never stored the new edge
        const arg_t keep = arg_t(take) - arg_t(1);
        won[f] = (won[f] & keep) | (edge & ~keep);
      }
    }
  }
  // The running maximum without winners: which NaN wins does not matter, a NaN
  // replaces anything.
  static acc greater(acc v, acc best) { return (v > best) | (v != v) ? v : best; }
  // A whole row without winners at a width fixed at compile time (instantiated only
  // for "amax"): its maxima in registers instead of the state in L1.
  static constexpr bool kWholeRows = kF > 0;
  void row(int64_t r, int64_t e0, int64_t e1) const {
    scalar_t* __restrict__ o = out + r * kF;
    acc best[kF > 0 ? kF : 1];
    if (e0 >= e1) {
      for (int f = 0; f < kF; ++f) o[f] = narrow<scalar_t>(acc(0));
      return;
    }
    const scalar_t* __restrict__ x0 = x + int64_t(col[e0]) * kF;
    const acc w0 = weight ? weight[e0] : acc(1);
    for (int f = 0; f < kF; ++f) best[f] = w0 * widen(x0[f]);
    const int64_t end = std::max(e1, prefetch_end);
    for (int64_t e = e0 + 1; e < e1; ++e) {
      if (far && e + kFarPrefetchDistance < end) prefetch_row_l2(x + int64_t(col[e + kFarPrefetchDistance]) * kF, kF);
      if (e + kPrefetchDistance < end) prefetch_row(x + int64_t(col[e + kPrefetchDistance]) * kF, kF);
      const scalar_t* __restrict__ xj = x + int64_t(col[e]) * kF;
      const acc w = weight ? weight[e] : acc(1);
#pragma omp simd
      for (int f = 0; f < kF; ++f) best[f] = greater(w * widen(xj[f]), best[f]);
    }
    for (int f = 0; f < kF; ++f) o[f] = narrow<scalar_t>(best[f]);
  }
  // Pieces merge in edge order: a later piece wins only by beating the earlier state.
  void merge(unsigned char* s, const unsigned char* piece) const {
    acc* best = values(s);
    arg_t* won = edges(s);
    const acc* pv = values(piece);
    const arg_t* pe = edges(piece);
    for (int64_t f = 0; f < F; ++f)
      if (pe[f] >= 0 && (won[f] < 0 || beats(pv[f], best[f]))) {
        best[f] = pv[f];
        won[f] = pe[f];
      }
  }
  void finish(int64_t r, const unsigned char* s) const {
    const acc* __restrict__ best = values(s);
    const arg_t* __restrict__ won = edges(s);
    scalar_t* __restrict__ o = out + r * F;
#pragma omp simd
    for (int64_t f = 0; f < F; ++f) o[f] = narrow<scalar_t>(won[f] >= 0 ? best[f] : acc(0));
    if (!winners) return;
    arg_t* __restrict__ a = arg + r * F;
#pragma omp simd
    for (int64_t f = 0; f < F; ++f) a[f] = won[f];
  }
};

// The max reduction's winners are stored as int32 whenever every edge position fits
// (half the bytes the backward reads per edge and feature), else int64.
static at::ScalarType arg_type(int64_t num_edges) {
  return num_edges <= std::numeric_limits<int32_t>::max() ? at::kInt : at::kLong;
}

// Calls f with a value of arg's element type (int32_t or int64_t).
template <typename F>
void dispatch_arg(const at::Tensor& arg, F&& f) {
  if (arg.scalar_type() == at::kInt)
    f(int32_t{});
  else
    f(int64_t{});
}

template <typename scalar_t, typename index_t, typename arg_t>
void spmm_kernel(const at::Tensor& rowptr, const at::Tensor& col, const at::Tensor& weight,
                 const at::Tensor& x, const std::string& reduce, at::Tensor& out, at::Tensor& arg) {
  const index_t* rp = rowptr.data_ptr<index_t>();
  check_rowptr(rp, rowptr.numel() - 1, col.numel(), "spmm_forward");
  const Partition part = partition_rows(rp, rowptr.numel() - 1, x.size(1));
  std::atomic<bool> bad{false};
  const IndexCheck cols{uint64_t(x.size(0)), &bad};
  const bool far = x.numel() * int64_t(sizeof(scalar_t)) > kFarPrefetchBytes;
  if (reduce == "amax") {  // no winners: int32 edges mark begun states, whatever arg_t is
    with_fixed_width<scalar_t, 16, 32, 64>(x.size(1), [&](auto width) {
      MaxFold<scalar_t, index_t, int32_t, decltype(width)::value> op{
          col.data_ptr<index_t>(), ptr_or_null<acc_t<scalar_t>>(weight), x.data_ptr<scalar_t>(),
          out.data_ptr<scalar_t>(), nullptr, x.size(1), cols, col.numel(), far, false};
      segment_fold(rp, part, op);
    });
  } else if (reduce == "max") {
    MaxFold<scalar_t, index_t, arg_t> op{col.data_ptr<index_t>(), ptr_or_null<acc_t<scalar_t>>(weight),
                                         x.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), arg.data_ptr<arg_t>(),
                                         x.size(1), cols, col.numel(), far, true};
    segment_fold(rp, part, op);
  } else {
    with_fixed_width<scalar_t, 16, 32, 64>(x.size(1), [&](auto width) {
      SumFold<scalar_t, index_t, decltype(width)::value> op{
          rp, col.data_ptr<index_t>(), ptr_or_null<acc_t<scalar_t>>(weight), x.data_ptr<scalar_t>(),
          out.data_ptr<scalar_t>(), x.size(1), reduce == "mean", cols, col.numel()};
      op.far = x.numel() * int64_t(sizeof(scalar_t)) > kFarPrefetchBytes;
      segment_fold(rp, part, op);
    });
  }
  report_indices(bad, "spmm_forward", "col", x.size(0));
}

std::tuple<at::Tensor, at::Tensor> spmm_forward(const at::Tensor& rowptr, const at::Tensor& col,
                                                const c10::optional<at::Tensor>& weight,
                                                const at::Tensor& x, c10::string_view reduce_) {
  const std::string reduce(reduce_);
  TORCH_CHECK_VALUE(reduce == "sum" || reduce == "mean" || reduce == "max" || reduce == "amax", "unknown reduce '",
                    reduce, "'");
  check_csr(rowptr, col);
  TORCH_CHECK_VALUE(x.dim() == 2, "x must be 2-D");
  if (weight.has_value() && weight->defined())
    check_edge_values(*weight, col.numel(), "weight");
  const at::Tensor xc = x.contiguous();
  const at::Tensor w = optional_as(weight, at::toOpMathType(x.scalar_type()));
  const int64_t num_dst = rowptr.numel() - 1;
  at::Tensor out = at::empty({num_dst, x.size(1)}, x.options());
  at::Tensor arg = reduce == "max"
                       ? at::empty({num_dst, x.size(1)}, x.options().dtype(arg_type(col.numel())))
                       : at::empty({0}, x.options().dtype(at::kLong));
  const at::Tensor rp = rowptr.contiguous(), cl = col.contiguous();
  FASTALIGN_DISPATCH(x.scalar_type(), col.scalar_type(), "spmm_forward", [&] {
    dispatch_arg(arg, [&](auto a) {
      spmm_kernel<scalar_t, index_t, decltype(a)>(rp, cl, w, xc, reduce, out, arg);
    });
  });
  return {out, arg};
}

// grad_x: feature columns are split between threads (each output column has one
// writer, rows visited in order: deterministic without atomics). grad_x and grad_w are
// accumulated in acc (float for the half types) and cast by the caller.
template <typename scalar_t, typename index_t, typename arg_t>
void spmm_max_backward_kernel(const at::Tensor& col, const at::Tensor& weight, const at::Tensor& x,
                              const at::Tensor& arg, const at::Tensor& grad_out,
                              at::Tensor& grad_x, at::Tensor& grad_w) {
  using acc = acc_t<scalar_t>;
  const index_t* cl = col.data_ptr<index_t>();
  const acc* w = ptr_or_null<acc>(weight);
  const scalar_t* xp = x.data_ptr<scalar_t>();
  const arg_t* a = arg.data_ptr<arg_t>();
  const scalar_t* g = grad_out.data_ptr<scalar_t>();
  const int64_t rows = arg.size(0), F = arg.size(1), num_edges = col.numel(), num_src = x.size(0);
  acc* gx = grad_x.data_ptr<acc>();
  constexpr int64_t kBlock = 8;
  const int64_t blocks = (F + kBlock - 1) / kBlock;
  // arg entries are edges (or -1: no edge), col entries rows of x: both checked as read
  std::atomic<bool> bad_arg{false}, bad_col{false};
  const IndexCheck edges{uint64_t(num_edges), &bad_arg}, cols{uint64_t(num_src), &bad_col};
  parallel_range(blocks, 1, rows, [&](int64_t b) {  // a row's F features: one unit
    const int64_t f1 = std::min(F, (b + 1) * kBlock);
    for (int64_t i = 0; i < rows; ++i)
      for (int64_t f = b * kBlock; f < f1; ++f) {
        const int64_t e = a[i * F + f];
        if (e == -1 || !edges.ok(e) || !cols.ok(cl[e])) continue;
        gx[int64_t(cl[e]) * F + f] += (w ? w[e] : acc(1)) * acc(g[i * F + f]);
      }
  });
  report_indices(bad_arg, "spmm_max_backward", "arg", num_edges);
  report_indices(bad_col, "spmm_max_backward", "col", num_src);
  if (!grad_w.defined() || grad_w.numel() == 0) return;
  acc* gw = grad_w.data_ptr<acc>();
  // One pass in row order: this op is not given the rows' edge ranges, so nothing says
  // that row i's winners are edges of row i (they are when arg is the forward's), and
  // rows in parallel could then add into one edge at once. O(rows x F) scalar work.
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t f = 0; f < F; ++f) {
      const int64_t e = a[i * F + f];  // checked above
      if (e >= 0) gw[e] += widen(g[i * F + f]) * widen(xp[int64_t(cl[e]) * F + f]);
    }
}

// The transpose (rowptr_t, col_t, perm_t) is in the schema for kernels that gather by
// source node; this one walks destination rows and does not read it.
std::tuple<at::Tensor, at::Tensor> spmm_max_backward(const at::Tensor& col, const at::Tensor& /*rowptr_t*/,
                                                     const at::Tensor& /*col_t*/, const at::Tensor& /*perm_t*/,
                                                     const c10::optional<at::Tensor>& weight,
                                                     const at::Tensor& x, const at::Tensor& arg,
                                                     const at::Tensor& grad_out, bool need_weight_grad) {
  TORCH_CHECK_VALUE(x.dim() == 2 && arg.dim() == 2 && arg.sizes() == grad_out.sizes() &&
                        arg.size(1) == x.size(1),
                    "spmm_max_backward: shape mismatch");
  TORCH_CHECK_TYPE(arg.scalar_type() == at::kInt || arg.scalar_type() == at::kLong,
                   "spmm_max_backward: arg must be int32 or int64");
  TORCH_CHECK_VALUE(col.dim() == 1, "spmm_max_backward: col must be 1-D");
  check_index_dtype(col, "col");
  if (weight.has_value() && weight->defined())
    check_edge_values(*weight, col.numel(), "weight");
  const at::Tensor xc = x.contiguous(), ac = arg.contiguous(), cl = col.contiguous();
  const auto acc = at::toOpMathType(x.scalar_type());
  const at::Tensor g = contiguous_as(grad_out, x.scalar_type());
  const at::Tensor w = optional_as(weight, acc);
  at::Tensor grad_x = at::zeros(xc.sizes(), xc.options().dtype(acc));
  at::Tensor grad_w = need_weight_grad ? at::zeros({col.numel()}, x.options().dtype(acc)) : x.new_empty({0});
  FASTALIGN_DISPATCH(x.scalar_type(), col.scalar_type(), "spmm_max_backward", [&] {
    dispatch_arg(ac, [&](auto a) {
      spmm_max_backward_kernel<scalar_t, index_t, decltype(a)>(cl, w, xc, ac, g, grad_x, grad_w);
    });
  });
  if (need_weight_grad)
    grad_w = grad_w.to(weight.has_value() && weight->defined() ? weight->scalar_type() : x.scalar_type());
  return {grad_x.to(x.scalar_type()), grad_w};
}

template <typename scalar_t, typename index_t>
void sddmm_kernel(const at::Tensor& rowptr, const at::Tensor& col, const at::Tensor& a,
                  const at::Tensor& b, at::Tensor& out) {
  const index_t* rp = rowptr.data_ptr<index_t>();
  const index_t* cl = col.data_ptr<index_t>();
  const scalar_t* ap = a.data_ptr<scalar_t>();
  const scalar_t* bp = b.data_ptr<scalar_t>();
  scalar_t* o = out.data_ptr<scalar_t>();
  const int64_t F = a.size(1);
  check_rowptr(rp, rowptr.numel() - 1, col.numel(), "sddmm");
  const Partition part = partition_rows(rp, rowptr.numel() - 1);
  std::atomic<bool> bad{false};
  const IndexCheck cols{uint64_t(b.size(0)), &bad};
  const int64_t num_edges = col.numel();
  for_each_edge_range(rp, part, [&](int64_t r, int64_t e0, int64_t e1) {
    const scalar_t* __restrict__ ai = ap + r * F;
    for (int64_t e = e0; e < e1; ++e) {
      if (e + kPrefetchDistance < num_edges) prefetch_row(bp + int64_t(cl[e + kPrefetchDistance]) * F, F);
      const scalar_t* __restrict__ bj = bp + int64_t(cl[e]) * F;
      acc_t<scalar_t> dot = 0;
#pragma omp simd reduction(+ : dot)
      for (int64_t f = 0; f < F; ++f) dot += widen(ai[f]) * widen(bj[f]);
      o[e] = narrow<scalar_t>(dot);
    }
  }, [&](int64_t e0, int64_t e1) { return cols.all_ok(cl + e0, e1 - e0); });
  report_indices(bad, "sddmm", "col", b.size(0));
}

at::Tensor sddmm(const at::Tensor& rowptr, const at::Tensor& col, const at::Tensor& a,
                 const at::Tensor& b) {
  check_csr(rowptr, col);
  check_rows(a, rowptr.numel() - 1, "a");
  TORCH_CHECK_VALUE(b.dim() == 2 && b.size(1) == a.size(1), "sddmm: a and b widths differ");
  const at::Tensor ac = a.contiguous(), bc = contiguous_as(b, a.scalar_type());
  const at::Tensor rp = rowptr.contiguous(), cl = col.contiguous();
  at::Tensor out = at::empty({col.numel()}, a.options());
  FASTALIGN_DISPATCH(a.scalar_type(), col.scalar_type(), "sddmm",
                     [&] { sddmm_kernel<scalar_t, index_t>(rp, cl, ac, bc, out); });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastalign_cpu, CPU, m) {
  m.impl("spmm_forward", &spmm_forward);
  m.impl("spmm_max_backward", &spmm_max_backward);
  m.impl("sddmm", &sddmm);
}

}  // namespace cpu
}  // namespace fastalign
