// gat_aggregate's backward, by recomputation (the op and its forward: gat_aggregate.h).
#include <torch/library.h>

#include <atomic>
#include <cmath>
#include <limits>
#include <tuple>
#include <vector>

#include "cpu/gat_aggregate.h"
#include "cpu/segment.h"

namespace fastalign {
namespace cpu {
namespace gat {
namespace {

// The recomputed per-edge quantities of the backward for edge j -> i, every head:
// ak[h] = a k (softmax times dropout) and dz[h], the logit gradient, given
// dot[h] = g_i . x_j (in dz on entry). Scratch: 2H.
template <typename T>
struct EdgeGrad {
  const Attention<T>* at;
  const T* lse;    // [num_dst, H]
  const T* d_row;  // [num_dst, H]: g_i . out_i (from the destination-side pass)

  void operator()(int64_t i, int64_t j, int64_t edge, T* __restrict__ ak, T* __restrict__ dz,
                  T* __restrict__ z) const {
    const int64_t H = at->H;
    const T* __restrict__ li = lse + i * H;
    const T* __restrict__ di = d_row + i * H;
    at->pre(j, i, z);
    at->drop.factors(edge, H, ak);
#pragma omp simd
    for (int64_t h = 0; h < H; ++h) {
      const T a = softmax_exp(at->leaky(z[h]) - li[h]);
      dz[h] = a * (ak[h] * dz[h] - di[h]) * at->leaky_grad(z[h]);
      ak[h] *= a;
    }
  }
};

// dot[h] = a_h . b_h for H rows of C
template <int kC, typename T, typename S>
inline void head_dots(const S* __restrict__ a, const S* __restrict__ b, int64_t H, int64_t width,
                      T* __restrict__ dot) {
  const int64_t C = kC > 0 ? kC : width;
  for (int64_t h = 0; h < H; ++h) {
    T d = 0;
#pragma omp simd reduction(+ : d)
    for (int64_t f = 0; f < C; ++f) d += T(widen(a[h * C + f])) * T(widen(b[h * C + f]));
    dot[h] = d;
  }
}

// The destination-side pass: per (row i, head) D_i = g_i . out_i = sum_j a k (g_i . x_j)
// (so the backward needs no saved output) and grad_alpha_dst[i] = sum_j dz_ij, as
// S1 - D_i S2 with S1 = sum_j a k (g_i . x_j) l', S2 = sum_j a l' (l' the leaky ReLU's
// slope at z_ij): dz_ij = a (k g_i . x_j - D_i) l' needs D_i, known only at the row's end.
// State [S1 | S2 | D | scratch 3H].
template <typename S, typename index_t, int kC>
struct DstGradFold {
  using T = acc_t<S>;
  using elem_t = T;
  const Attention<T>* at;
  const T* lse;
  const index_t* col;
  const S* x;
  const S* g;  // [num_dst, H, C]
  T* d_row;    // [num_dst, H] (written)
  T* grad_dst; // [num_dst, H] or null
  int64_t size;       // 6H
  IndexCheck cols;
  int64_t prefetch_end = 0;

  int64_t cw() const { return kC > 0 ? kC : at->C; }
  bool indices_ok(int64_t e0, int64_t e1) const { return cols.all_ok(col + e0, e1 - e0); }
  void init(T* s) const { fill(s, T(0), 3 * at->H); }
  void attend(int64_t i, int64_t j, int64_t edge, T* __restrict__ s) const {
    const int64_t H = at->H, C = cw();
    T* __restrict__ k = s + 3 * H;
    T* __restrict__ dot = k + H;
    T* __restrict__ z = dot + H;
    const T* __restrict__ li = lse + i * H;
    head_dots<kC>(g + i * H * C, x + j * H * C, H, C, dot);
    at->pre(j, i, z);
    at->drop.factors(edge, H, k);
#pragma omp simd
    for (int64_t h = 0; h < H; ++h) {
      const T a = softmax_exp(at->leaky(z[h]) - li[h]);
      const T akd = a * k[h] * dot[h], slope = at->leaky_grad(z[h]);
      s[h] += akd * slope;
      s[H + h] += a * slope;
      s[2 * H + h] += akd;
    }
  }
  void accumulate(int64_t r, int64_t e0, int64_t e1, T* s) const {
    const int64_t width = at->H * cw(), end = std::max(e1, prefetch_end);
    for (int64_t e = e0; e < e1; ++e) {
      if (e + kPrefetchDistance < end) {
        const int64_t ahead = col[e + kPrefetchDistance];
        prefetch_row(x + ahead * width, width);
        __builtin_prefetch(at->alpha_src + ahead * at->H);
      }
      const int64_t j = col[e];
      if (!at->skipped(j, r)) attend(r, j, e, s);
    }
  }
  void merge(T* s, const T* piece) const { add_into(s, piece, 3 * at->H); }
  void finish(int64_t r, T* s) const {
    if (at->has_loop(r)) attend(r, r, at->num_edges + r, s);
    const int64_t H = at->H;
    for (int64_t h = 0; h < H; ++h) {
      d_row[r * H + h] = s[2 * H + h];
      if (grad_dst) grad_dst[r * H + h] = s[h] - s[2 * H + h] * s[H + h];
    }
  }
};

// grad_x and grad_alpha_src: a fold over the transpose's rows (sources); state
// [grad_alpha_src (H) | grad_x (H x C) | scratch 3H].
template <typename S, typename index_t, int kC>
struct SrcGradFold {
  using T = acc_t<S>;
  using elem_t = T;
  EdgeGrad<T> eg;
  const index_t* col_t;
  const int64_t* perm_t;
  const S* x;
  const S* g;
  S* grad_x;
  T* grad_src;
  int64_t size;  // H (C + 4)
  IndexCheck dsts;  // col_t against the destinations
  int64_t prefetch_end = 0;

  int64_t cw() const { return kC > 0 ? kC : eg.at->C; }
  bool indices_ok(int64_t e0, int64_t e1) const { return dsts.all_ok(col_t + e0, e1 - e0); }
  void init(T* s) const { fill(s, T(0), eg.at->H * (cw() + 1)); }
  void attend(int64_t j, int64_t i, int64_t edge, T* __restrict__ s) const {
    const int64_t H = eg.at->H, C = cw();
    T* __restrict__ ak = s + H * (C + 1);
    T* __restrict__ dz = ak + H;
    const S* __restrict__ gi = g + i * H * C;
    head_dots<kC>(gi, x + j * H * C, H, C, dz);
    eg(i, j, edge, ak, dz, dz + H);
#pragma omp simd
    for (int64_t h = 0; h < H; ++h) s[h] += dz[h];
    for (int64_t h = 0; h < H; ++h) {
      T* __restrict__ gx = s + H + h * C;
      const T w = ak[h];
#pragma omp simd
      for (int64_t f = 0; f < C; ++f) gx[f] += w * T(widen(gi[h * C + f]));
    }
  }
  void accumulate(int64_t j, int64_t t0, int64_t t1, T* s) const {
    const int64_t width = eg.at->H * cw(), end = std::max(t1, prefetch_end);
    for (int64_t t = t0; t < t1; ++t) {
      if (t + kPrefetchDistance < end) {  // every destination-side value the edge reads
        const int64_t ahead = col_t[t + kPrefetchDistance], H = eg.at->H;
        prefetch_row(g + ahead * width, width);
        __builtin_prefetch(eg.lse + ahead * H);
        __builtin_prefetch(eg.d_row + ahead * H);
        if (eg.at->alpha_dst) __builtin_prefetch(eg.at->alpha_dst + ahead * H);
      }
      const int64_t i = col_t[t];
      if (!eg.at->skipped(i, j)) attend(j, i, perm_t[t], s);
    }
  }
  void merge(T* s, const T* piece) const { add_into(s, piece, eg.at->H * (cw() + 1)); }
  void finish(int64_t j, T* s) const {
    if (eg.at->has_loop(j)) attend(j, j, eg.at->num_edges + j, s);
    const int64_t H = eg.at->H, width = H * cw();
    for (int64_t h = 0; h < H; ++h) grad_src[j * H + h] = s[h];
    S* __restrict__ o = grad_x + j * width;
#pragma omp simd
    for (int64_t f = 0; f < width; ++f) o[f] = narrow<S>(s[H + f]);
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> gat_aggregate_backward(
    const at::Tensor& rowptr, const at::Tensor& col, const at::Tensor& rowptr_t, const at::Tensor& col_t,
    const at::Tensor& perm_t, const at::Tensor& x, const at::Tensor& alpha_src,
    const c10::optional<at::Tensor>& alpha_dst, const at::Tensor& lse, const at::Tensor& grad_out,
    double negative_slope, double dropout, int64_t seed, bool add_self_loops) {
  check_csr(rowptr, col);
  check_csr(rowptr_t, col_t);
  const int64_t n = rowptr.numel() - 1, num_src = x.size(0), E = col.numel();
  check_heads(x, alpha_src, alpha_dst, n);
  TORCH_CHECK_VALUE(rowptr_t.numel() == num_src + 1 && col_t.numel() == E,
                    "the transpose must have ", num_src, " rows and ", E, " edges");
  TORCH_CHECK_TYPE(perm_t.scalar_type() == at::kLong, "perm_t must be int64");
  check_edge_values(perm_t, E, "perm_t");
  const std::vector<int64_t> shape{n, x.size(1), x.size(2)};
  TORCH_CHECK_VALUE(grad_out.sizes().equals(shape), "grad_out must be ", shape);
  TORCH_CHECK_VALUE(lse.dim() == 2 && lse.size(0) == n && lse.size(1) == x.size(1), "lse must be [", n, ", ",
                    x.size(1), "]");
  const auto dtype = x.scalar_type(), acc = at::toOpMathType(dtype);
  const at::Tensor xc = x.contiguous(), as = contiguous_as(alpha_src, acc), ad = optional_as(alpha_dst, acc);
  const at::Tensor g = contiguous_as(grad_out, dtype), lc = contiguous_as(lse, acc);
  const at::Tensor rp = rowptr.contiguous(), cl = col.contiguous();
  const at::Tensor rpt = rowptr_t.contiguous(), clt = col_t.contiguous(), pt = perm_t.contiguous();
  // the attention gradients in acc (cast at the end), grad_x as x is stored
  at::Tensor grad_x = at::empty_like(xc), grad_src = at::empty_like(as);
  at::Tensor grad_dst = ad.defined() ? at::empty_like(ad) : at::empty({0}, xc.options());
  at::Tensor d_row = at::empty({n, x.size(1)}, xc.options().dtype(acc));
  std::atomic<bool> bad_col{false}, bad_col_t{false};
  FASTALIGN_DISPATCH(dtype, col.scalar_type(), "gat_aggregate_backward", [&] {
    using T = acc_t<scalar_t>;
    const index_t* rpp = rp.data_ptr<index_t>();
    const index_t* rptp = rpt.data_ptr<index_t>();
    check_rowptr(rpp, n, E, "gat_aggregate_backward");
    check_rowptr(rptp, num_src, E, "gat_aggregate_backward (transpose)");
    const int64_t H = x.size(1), C = x.size(2);
    const scalar_t* gp = g.data_ptr<scalar_t>();
    T* dp = d_row.data_ptr<T>();
    const auto attn = attention<T>(as, ad, xc, negative_slope, dropout, seed, add_self_loops, n, E);
    const EdgeGrad<T> eg{&attn, lc.data_ptr<T>(), dp};
    with_fixed_width<scalar_t, 4, 8, 16, 32, 64>(C, [&](auto channels) {
      constexpr int kC = decltype(channels)::value;
      DstGradFold<scalar_t, index_t, kC> dst_op{&attn, lc.data_ptr<T>(), cl.data_ptr<index_t>(),
                                                xc.data_ptr<scalar_t>(), gp, dp,
                                                ad.defined() ? grad_dst.data_ptr<T>() : nullptr, 6 * H,
                                                IndexCheck{uint64_t(num_src), &bad_col}, E};
      segment_fold(rpp, partition_rows(rpp, n), dst_op);
      SrcGradFold<scalar_t, index_t, kC> src_op{eg, clt.data_ptr<index_t>(), pt.data_ptr<int64_t>(),
                                                xc.data_ptr<scalar_t>(), gp, grad_x.data_ptr<scalar_t>(),
                                                grad_src.data_ptr<T>(), H * (C + 4),
                                                IndexCheck{uint64_t(n), &bad_col_t}, E};
      segment_fold(rptp, partition_rows(rptp, num_src), src_op);
    });
  });
  report_indices(bad_col, "gat_aggregate_backward", "col", num_src);
  report_indices(bad_col_t, "gat_aggregate_backward", "col_t", n);
  return {grad_x, grad_src.to(dtype), ad.defined() ? grad_dst.to(dtype) : grad_dst};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastalign_cpu, CPU, m) {
  m.impl("gat_aggregate_backward", &gat_aggregate_backward);
}

}  // namespace gat
}  // namespace cpu
}  // namespace fastalign
