// gat_aggregate's forward (the op and its backward: gat_aggregate.h).
#include <torch/library.h>

#include <atomic>
#include <cmath>
#include <limits>
#include <tuple>

#include "cpu/gat_aggregate.h"
#include "cpu/segment.h"

namespace fastalign {
namespace cpu {
namespace gat {
namespace {

// Forward fold. State: [max (H) | sum of exp (H) | weighted features (H x C) | scratch (3H)];
// the scratch is per-thread room for one edge's per-head values (not part of the fold).
template <typename S, typename index_t, int kC>
struct ForwardFold {
  using T = acc_t<S>;
  using elem_t = T;
  Attention<T> at;
  const index_t* col;
  const S* x;  // [num_src, H, C]
  S* out;      // [num_dst, H, C]
  T* lse;      // [num_dst, H]
  int64_t size;       // H (C + 5)
  IndexCheck cols;
  int64_t prefetch_end = 0;

  // C fixed at compile time for the common widths (0: read at run time)
  int64_t cw() const { return kC > 0 ? kC : at.C; }
  T* scratch(T* s) const { return s + at.H * (cw() + 2); }
  bool indices_ok(int64_t e0, int64_t e1) const { return cols.all_ok(col + e0, e1 - e0); }
  void init(T* s) const {
    fill(s, -std::numeric_limits<T>::infinity(), at.H);
    fill(s + at.H, T(0), at.H * (cw() + 1));
  }
  // Raise the state's max to m (per head), rescaling what was summed under the old one.
  void raise_max(const T* __restrict__ m, T* __restrict__ s) const {
    const int64_t H = at.H, C = cw();
    for (int64_t h = 0; h < H; ++h) {
      if (!(m[h] > s[h])) continue;
      const T c = softmax_exp(s[h] - m[h]);
      s[H + h] *= c;
      T* __restrict__ acc = s + 2 * H + h * C;
#pragma omp simd
      for (int64_t f = 0; f < C; ++f) acc[f] *= c;
      s[h] = m[h];
    }
  }
  // Attend edge j -> i under the state's max (which is at least the edge's logit).
  void attend(int64_t i, int64_t j, int64_t edge, T* __restrict__ s) const {
    const int64_t H = at.H, C = cw();
    T* __restrict__ p = scratch(s);
    T* __restrict__ k = p + H;
    at.pre(j, i, p);
#pragma omp simd
    for (int64_t h = 0; h < H; ++h) p[h] = softmax_exp(at.leaky(p[h]) - s[h]);
    at.drop.factors(edge, H, k);
    const S* __restrict__ xj = x + j * H * C;
    for (int64_t h = 0; h < H; ++h) {
      s[H + h] += p[h];
      const T w = p[h] * k[h];
      T* __restrict__ acc = s + 2 * H + h * C;
      const S* __restrict__ xh = xj + h * C;
#pragma omp simd
      for (int64_t f = 0; f < C; ++f) acc[f] += w * T(widen(xh[f]));
    }
  }
  // The per-head max of the logits of edges [e0, e1) of row r (and of its loop when
  // `loop`), into m.
  void row_max(int64_t r, int64_t e0, int64_t e1, bool loop, T* __restrict__ m,
               T* __restrict__ z) const {
    const int64_t H = at.H;
    fill(m, -std::numeric_limits<T>::infinity(), H);
    const int64_t width = H * cw(), end = std::max(e1, prefetch_end);
    for (int64_t e = e0; e < e1; ++e) {
      // this pass is the first to touch each source: start the attention terms of the
      // edges ahead (across rows) and the features of the row's first edges (the
      // feature pass prefetches its own edges from kPrefetchDistance on)
      if (e + 2 * kPrefetchDistance < end) __builtin_prefetch(at.alpha_src + int64_t(col[e + 2 * kPrefetchDistance]) * H);
      const int64_t j = col[e];
      if (e < e0 + kPrefetchDistance) prefetch_row(x + j * width, width);
      if (!at.skipped(j, r)) raise_to(j, r, m, z);
    }
    if (loop) raise_to(r, r, m, z);
  }
  void raise_to(int64_t j, int64_t r, T* __restrict__ m, T* __restrict__ z) const {
    at.pre(j, r, z);
    const int64_t H = at.H;
#pragma omp simd
    for (int64_t h = 0; h < H; ++h) m[h] = std::max(m[h], at.leaky(z[h]));
  }
  void run(int64_t r, int64_t e0, int64_t e1, bool loop, T* s) const {
    const int64_t width = at.H * cw(), end = std::max(e1, prefetch_end);
    T* m = scratch(s) + 2 * at.H;
    row_max(r, e0, e1, loop, m, scratch(s));
    raise_max(m, s);
    for (int64_t e = e0; e < e1; ++e) {
      if (e + kPrefetchDistance < end) prefetch_row(x + int64_t(col[e + kPrefetchDistance]) * width, width);
      const int64_t j = col[e];
      if (!at.skipped(j, r)) attend(r, j, e, s);
    }
    if (loop) attend(r, r, at.num_edges + r, s);
  }
  void accumulate(int64_t r, int64_t e0, int64_t e1, T* s) const { run(r, e0, e1, false, s); }
  void merge(T* __restrict__ s, const T* __restrict__ piece) const {
    const int64_t H = at.H, C = cw();
    for (int64_t h = 0; h < H; ++h) {
      if (piece[h] == -std::numeric_limits<T>::infinity()) continue;  // nothing attended
      const T m = std::max(s[h], piece[h]);
      const T c0 = softmax_exp(s[h] - m), c1 = softmax_exp(piece[h] - m);
      s[H + h] = s[H + h] * c0 + piece[H + h] * c1;
      T* __restrict__ acc = s + 2 * H + h * C;
      const T* __restrict__ pa = piece + 2 * H + h * C;
#pragma omp simd
      for (int64_t f = 0; f < C; ++f) acc[f] = acc[f] * c0 + pa[f] * c1;
      s[h] = m;
    }
  }
  void finish(int64_t r, T* s) const {
    if (at.has_loop(r)) run(r, 0, 0, true, s);
    const int64_t H = at.H, C = cw();
    for (int64_t h = 0; h < H; ++h) {
      const T sum = s[H + h];
      const T inv = sum > T(0) ? T(1) / sum : T(0);
      lse[r * H + h] = sum > T(0) ? s[h] + std::log(sum) : -std::numeric_limits<T>::infinity();
      const T* __restrict__ acc = s + 2 * H + h * C;
      S* __restrict__ o = out + (r * H + h) * C;
#pragma omp simd
      for (int64_t f = 0; f < C; ++f) o[f] = narrow<S>(acc[f] * inv);
    }
  }
};

std::tuple<at::Tensor, at::Tensor> gat_aggregate_forward(
    const at::Tensor& rowptr, const at::Tensor& col, const at::Tensor& x, const at::Tensor& alpha_src,
    const c10::optional<at::Tensor>& alpha_dst, double negative_slope, double dropout, int64_t seed,
    bool add_self_loops) {
  check_csr(rowptr, col);
  const int64_t n = rowptr.numel() - 1;
  check_heads(x, alpha_src, alpha_dst, n);
  // x is read as stored; the attention terms, the softmax and lse are in acc (float for
  // the half types).
  const auto dtype = x.scalar_type(), acc = at::toOpMathType(dtype);
  const at::Tensor xc = x.contiguous(), as = contiguous_as(alpha_src, acc), ad = optional_as(alpha_dst, acc);
  const at::Tensor rp = rowptr.contiguous(), cl = col.contiguous();
  at::Tensor out = at::empty({n, x.size(1), x.size(2)}, xc.options());
  at::Tensor lse = at::empty({n, x.size(1)}, xc.options().dtype(acc));
  std::atomic<bool> bad{false};
  FASTALIGN_DISPATCH(dtype, col.scalar_type(), "gat_aggregate_forward", [&] {
    using T = acc_t<scalar_t>;
    const index_t* rpp = rp.data_ptr<index_t>();
    check_rowptr(rpp, n, cl.numel(), "gat_aggregate");
    const auto attn = attention<T>(as, ad, xc, negative_slope, dropout, seed, add_self_loops, n, cl.numel());
    with_fixed_width<scalar_t, 4, 8, 16, 32, 64>(x.size(2), [&](auto channels) {
      ForwardFold<scalar_t, index_t, decltype(channels)::value> op{
          attn, cl.data_ptr<index_t>(), xc.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(),
          lse.data_ptr<T>(), x.size(1) * (x.size(2) + 5), IndexCheck{uint64_t(xc.size(0)), &bad},
          cl.numel()};
      segment_fold(rpp, partition_rows(rpp, n), op);
    });
  });
  report_indices(bad, "gat_aggregate", "col", xc.size(0));
  return {out, lse};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastalign_cpu, CPU, m) {
  m.impl("gat_aggregate_forward", &gat_aggregate_forward);
}

}  // namespace gat
}  // namespace cpu
}  // namespace fastalign
