// gat_aggregate: graph attention fused (fastalign/ops/gat_aggregate.py has the formulas).
// Forward: one fold per destination row, an online softmax per head over the row's
// edges accumulating the attention-weighted features; only the log-sum-exp per (row,
// head) is kept. Backward by recomputation: a fold over destination rows for D_i =
// g_i . out_i and grad_alpha_dst, a fold over the transpose (source rows) for grad_x and
// grad_alpha_src.
// No per-edge tensor is written. Self loops (add_self_loops) are attended in the row's
// finish, the stored ones skipped; dropout is the counter hash of
// fastalign.backends.reference.attention_keep, regenerated wherever an edge is visited.
#include <torch/library.h>

#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>

#include "attention_dropout.h"
#include "cpu/common.h"
#include "cpu/segment.h"

namespace fastalign {
namespace cpu {
namespace {

// exp for the kernels' softmax arguments, which are never positive (a logit minus its
// row's max or log-sum-exp). float: Cody-Waite range reduction and Cephes' degree-6
// polynomial (within 2 ulp of expf), written so that a loop over heads vectorises (glibc's
// expf is a call per element); double: std::exp.
inline float softmax_exp(float x) {
  const float lo = -87.3365478515625f;  // below: 0 (2^-126 is the least normal)
  const float xc = x < lo ? lo : (x > 88.0f ? 88.0f : x);
  const float n = std::floor(xc * 1.44269504088896341f + 0.5f);
  const float r = xc - n * 0.693359375f + n * 2.12194440e-4f;
  float y = 1.9875691500e-4f;
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * r * r + r + 1.0f;
  const int32_t bits = (int32_t(x == x ? n : 0.0f) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  const float out = x < lo ? 0.0f : y * scale;
  return x == x ? out : x;  // NaN stays NaN
}
inline double softmax_exp(double x) { return std::exp(x); }

// The attention dropout factor of (edge id, head): 0, or 1 / (1 - p) when kept; 1 when
// dropout is off. A function of its arguments only, so any pass regenerates it.
struct Dropout {
  uint32_t seed = 0;
  uint32_t threshold = 0;  // entries whose 24 hash bits fall below it are dropped
  double scale = 1.0;

  Dropout(double p, int64_t seed_value)
      : seed(uint32_t(uint64_t(seed_value))),
        threshold(attention_dropout::threshold(p)),
        scale(attention_dropout::scale(p)) {}
  bool active() const { return threshold != 0; }
  template <typename scalar_t>
  scalar_t factor(int64_t edge, int64_t heads, int64_t h) const {
    // no branch on a coin toss
    return scalar_t(scale) * scalar_t(attention_dropout::kept(uint64_t(edge), uint64_t(heads), uint64_t(h), seed,
                                                              threshold));
  }
  // k[h] for every head of one edge
  template <typename scalar_t>
  void factors(int64_t edge, int64_t heads, scalar_t* __restrict__ k) const {
    if (!active()) {
      fill(k, scalar_t(1), heads);
      return;
    }
    for (int64_t h = 0; h < heads; ++h) k[h] = factor<scalar_t>(edge, heads, h);
  }
};

// What every pass shares: the logits of edge j -> i, and where self loops go.
template <typename scalar_t>
struct Attention {
  const scalar_t* alpha_src;  // [num_src, H]
  const scalar_t* alpha_dst;  // [num_dst, H] or null
  int64_t H, C;
  scalar_t slope;
  Dropout drop;
  bool self_loops;
  int64_t num_loops, num_edges;  // loop of node i: edge id num_edges + i

  // z[h] (pre-activation) of edge j -> i for every head
  void pre(int64_t j, int64_t i, scalar_t* __restrict__ z) const {
    const scalar_t* __restrict__ as = alpha_src + j * H;
    if (alpha_dst) {
      const scalar_t* __restrict__ ad = alpha_dst + i * H;
#pragma omp simd
      for (int64_t h = 0; h < H; ++h) z[h] = as[h] + ad[h];
    } else {
#pragma omp simd
      for (int64_t h = 0; h < H; ++h) z[h] = as[h];
    }
  }
  // branch-free: the sign of a logit is a coin toss, a branch on it mispredicts half the time
  scalar_t leaky(scalar_t z) const { return std::max(z, scalar_t(0)) + slope * std::min(z, scalar_t(0)); }
  scalar_t leaky_grad(scalar_t z) const {  // 1 or slope, exactly, without a branch
    const scalar_t up = scalar_t(z > scalar_t(0));
    return up + (scalar_t(1) - up) * slope;
  }
  bool skipped(int64_t a, int64_t b) const { return self_loops && a == b; }
  bool has_loop(int64_t r) const { return self_loops && r < num_loops; }
};

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

void check_heads(const at::Tensor& x, const at::Tensor& alpha_src, const c10::optional<at::Tensor>& alpha_dst,
                 int64_t num_dst) {
  TORCH_CHECK_VALUE(x.dim() == 3, "x must be [num_src, H, C], got ", x.sizes());
  TORCH_CHECK_VALUE(alpha_src.dim() == 2 && alpha_src.size(0) == x.size(0) && alpha_src.size(1) == x.size(1),
                    "alpha_src must be [", x.size(0), ", ", x.size(1), "], got ", alpha_src.sizes());
  if (alpha_dst.has_value() && alpha_dst->defined())
    TORCH_CHECK_VALUE(alpha_dst->dim() == 2 && alpha_dst->size(0) == num_dst && alpha_dst->size(1) == x.size(1),
                      "alpha_dst must be [", num_dst, ", ", x.size(1), "], got ", alpha_dst->sizes());
}

template <typename scalar_t>
Attention<scalar_t> attention(const at::Tensor& as, const at::Tensor& ad, const at::Tensor& x, double slope,
                              double p, int64_t seed, bool self_loops, int64_t num_dst, int64_t num_edges) {
  return Attention<scalar_t>{as.data_ptr<scalar_t>(), ptr_or_null<scalar_t>(ad), x.size(1), x.size(2),
                             scalar_t(slope), Dropout(p, seed), self_loops,
                             std::min<int64_t>(x.size(0), num_dst), num_edges};
}

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
  m.impl("gat_aggregate_forward", &gat_aggregate_forward);
  m.impl("gat_aggregate_backward", &gat_aggregate_backward);
}

}  // namespace cpu
}  // namespace fastalign
