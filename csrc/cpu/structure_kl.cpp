// structure_kl: per destination i, KL(q_i || p_i) between the neighbour distributions
// p = softmax(k(student)/tau) and q = softmax(k(peer)/tau) over i's in-edges, fused.
//
// Forward: one pass over each row; the scaled similarities of a row (or of a piece of
// a hub row, at most kPieceEdges) sit in a small thread-local buffer, so the only
// state left behind is per node: kl, lse_student, lse_peer, all three in double whatever
// the features' dtype (at logits of 1e7 a float32 log-sum-exp is off by ~1, and so would
// be the backward's log p = z - lse; the peer gradient's log q - log p - kl cancels to
// far below a float32 kl's rounding). With m = max, S = sum
// exp(z - m) and T = sum exp(zp - m_p) (zp - zs), kl = T / S_p + lse_s - lse_p
// (sum q = 1); pieces of a hub row merge (m, S, T) by rescaling.
// Backward: recomputes each edge's terms from the per-node state; destination-side
// gradients by CSR rows, which also leave two scalars per edge and student (the
// source-side gradient coefficients: cheaper than recomputing both similarities), then
// source-side gradients by the rows of the transpose. No E x F tensor anywhere.
//
// The usual case, the peer detached (Alignahead++), has a cheaper path:
// structure_kl_forward_with_grad_state also leaves the student's gradient state for a
// unit upstream gradient, computed while the row's neighbours are still in cache (a
// second sweep over the row once its log-sum-exps are known): d kl_i / d s_dst[i], one
// row per destination node, and per edge the two source-side coefficients. The backward
// (structure_kl_student_backward) is then a scaling and one pass over the transpose:
// it gathers one embedding per edge instead of three and recomputes no similarity.
#include <torch/library.h>

#include <atomic>

#include <cmath>
#include <limits>
#include <vector>

#include "cpu/common.h"
#include "cpu/segment.h"
#include "cpu/similarity.h"

namespace fastalign {
namespace cpu {
namespace {

// S is the embeddings' storage type, T the arithmetic (float for the half types). The
// gradient state (dst_grad, src_coef) and every sum are in T.
template <typename S>
struct Embeddings {
  using T = acc_t<S>;
  KernelParams<T> p;
  T tau;
  const S *s_dst, *s_src, *p_dst, *p_src;
  int64_t fs, fp;  // student and peer widths
};

// State: m_s, S_s, m_p, S_p, T.
template <typename T>
inline void merge_kl_state(T* s, const T* piece) {
  if (piece[3] == T(0)) return;
  if (s[3] == T(0)) {
    std::copy(piece, piece + 5, s);
    return;
  }
  const T ms = std::max(s[0], piece[0]);
  s[1] = s[1] * std::exp(s[0] - ms) + piece[1] * std::exp(piece[0] - ms);
  s[0] = ms;
  const T mp = std::max(s[2], piece[2]);
  const T a = std::exp(s[2] - mp), b = std::exp(piece[2] - mp);
  s[3] = s[3] * a + piece[3] * b;
  s[4] = s[4] * a + piece[4] * b;
  s[2] = mp;
}

// Per-node state of a run of logits: (m_s, S_s, m_p, S_p, T), see merge_kl_state. Exp in
// T (the logits are T), sums in double. With `es`, `ep` set, also leaves the
// exponentials exp(z - m) there (the forward's second sweep reuses them).
template <typename T>
void logit_state(const T* zs, const T* zp, int64_t n, double* piece, T* es = nullptr, T* ep = nullptr) {
  const T ms = *std::max_element(zs, zs + n), mp = *std::max_element(zp, zp + n);
  double ss = 0, sp = 0, t = 0;
  for (int64_t k = 0; k < n; ++k) {
    const T p = std::exp(zs[k] - ms), q = std::exp(zp[k] - mp);
    if (es) es[k] = p, ep[k] = q;
    ss += p;
    sp += q;
    t += double(q) * (double(zp[k]) - double(zs[k]));
  }
  piece[0] = ms, piece[1] = ss, piece[2] = mp, piece[3] = sp, piece[4] = t;
}

// The forward fold. With `dst_grad` set it also leaves the student's gradient state for
// a unit upstream gradient on whole rows (hub rows cut into pieces get theirs from a
// KlDstGradFold afterwards, once their log-sum-exps are known).
template <typename S, typename index_t>
struct KlForwardFold {
  using T = acc_t<S>;
  // The row state is kept in double whatever T: kl is a small difference of O(lse)
  // terms, and a hub row sums thousands of them. It is scalar work next to the
  // F-wide similarities.
  using elem_t = double;
  Embeddings<S> x;
  const index_t *rowptr, *col;
  double *kl, *lse_s, *lse_p;
  IndexCheck cols;                   // col against the source rows
  T* dst_grad = nullptr;             // [num_dst, fs], or null: no gradient state
  GradCoef<T>* src_coef = nullptr;   // [num_edges]
  int64_t prefetch_end = 0;          // the number of edges (see kPrefetchDistance)
  int64_t size = 5;

  bool indices_ok(int64_t e0, int64_t e1) const { return cols.all_ok(col + e0, e1 - e0); }
  void init(double* s) const {
    s[0] = s[2] = -std::numeric_limits<double>::infinity();
    s[1] = s[3] = s[4] = 0;
  }
  void accumulate(int64_t r, int64_t e0, int64_t e1, double* s) const {
    const int64_t n = e1 - e0;
    const bool whole_row = e0 == int64_t(rowptr[r]) && e1 == int64_t(rowptr[r + 1]);
    const bool with_grad = dst_grad != nullptr && whole_row;
    if (with_grad) fill(dst_grad + r * x.fs, T(0), x.fs);
    if (n == 0) return;
    thread_local std::vector<T> buf;
    thread_local std::vector<Sim<T>> sims;
    buf.resize((with_grad ? 4 : 2) * n);
    if (with_grad) sims.resize(n);
    T* zs = buf.data();
    T* zp = zs + n;
    T* es = with_grad ? zp + n : nullptr;  // exp(z - max) of both, for the second sweep
    T* ep = with_grad ? es + n : nullptr;
    Sim<T>* sim_s = sims.data();  // not through the thread_local in the loop
    const S* as = x.s_dst + r * x.fs;
    const S* ap = x.p_dst + r * x.fp;
    const int64_t end = std::max(e1, prefetch_end);
    for (int64_t k = 0; k < n; ++k) {
      if (e0 + k + kPrefetchDistance < end) {
        const int64_t jn = col[e0 + k + kPrefetchDistance];
        prefetch_row(x.s_src + jn * x.fs, x.fs);
        prefetch_row(x.p_src + jn * x.fp, x.fp);
      }
      const int64_t j = col[e0 + k];
      const Sim<T> sim = similarity(x.p, as, x.s_src + j * x.fs, x.fs);
      if (with_grad) sim_s[k] = sim;
      zs[k] = sim.s / x.tau;
      zp[k] = similarity(x.p, ap, x.p_src + j * x.fp, x.fp).s / x.tau;
    }
    double piece[5];
    logit_state(zs, zp, n, piece, es, ep);
    merge_kl_state(s, piece);
    if (!with_grad) return;
    // Second sweep, the neighbours still in cache: d kl / d z_s = p - q per edge.
    const T inv_ss = T(1 / piece[1]), inv_sp = T(1 / piece[3]), inv_tau = T(1) / x.tau;
    T* u = dst_grad + r * x.fs;
    for (int64_t k = 0; k < n; ++k) {
      const T d = (es[k] * inv_ss - ep[k] * inv_sp) * inv_tau;
      const S* b = x.s_src + int64_t(col[e0 + k]) * x.fs;
      apply_grad(x.p.kernel, grad_coef(x.p, sim_s[k], true, d), as, b, x.fs, u);
      src_coef[e0 + k] = grad_coef(x.p, sim_s[k], false, d);
    }
  }
  void merge(double* s, const double* piece) const { merge_kl_state(s, piece); }
  void finish(int64_t r, const double* s) const {
    if (s[3] == 0) {  // no in-edge
      kl[r] = 0;
      lse_s[r] = lse_p[r] = -std::numeric_limits<double>::infinity();
      return;
    }
    const double ls = s[0] + std::log(s[1]), lp = s[2] + std::log(s[3]);
    lse_s[r] = ls;
    lse_p[r] = lp;
    kl[r] = s[4] / s[3] + ls - lp;
  }
};

// Destination-side gradients, by CSR rows: recompute both similarities of each edge
// from the per-node state, accumulate d/d(destination) and store the two source-side
// coefficients of each edge (GradCoef: 2 scalars per edge and student), so that the
// source pass only applies them instead of recomputing k. State: [student | peer].
template <typename S, typename index_t>
struct KlDstGradFold {
  using T = acc_t<S>;
  using elem_t = T;
  Embeddings<S> x;
  const double *lse_s, *lse_p, *kl;
  const T* grad_kl;  // null: a unit upstream gradient (the forward's gradient state)
  const index_t* col;
  bool peer_grad;
  T *out_s, *out_p;  // gradient rows (the forward's dst_grad state, or the backward's in T)
  GradCoef<T> *coef_s, *coef_p;  // per edge, for the source side
  int64_t size;
  IndexCheck cols;
  int64_t prefetch_end = 0;  // the number of edges (see kPrefetchDistance)

  bool indices_ok(int64_t e0, int64_t e1) const { return cols.all_ok(col + e0, e1 - e0); }
  void init(T* s) const { fill(s, T(0), size); }
  void accumulate(int64_t i, int64_t e0, int64_t e1, T* s) const {
    const S *as = x.s_dst + i * x.fs, *ap = x.p_dst + i * x.fp;
    const double ls = lse_s[i], lp = lse_p[i], kli = kl[i];
    const T g = grad_kl ? grad_kl[i] : T(1);
    const int64_t end = std::max(e1, prefetch_end);
    for (int64_t e = e0; e < e1; ++e) {
      if (e + kPrefetchDistance < end) {
        const int64_t jn = col[e + kPrefetchDistance];
        prefetch_row(x.s_src + jn * x.fs, x.fs);
        prefetch_row(x.p_src + jn * x.fp, x.fp);
      }
      const int64_t j = col[e];
      const S *bs = x.s_src + j * x.fs, *bp = x.p_src + j * x.fp;
      const Sim<T> sim_s = similarity(x.p, as, bs, x.fs);
      const Sim<T> sim_p = similarity(x.p, ap, bp, x.fp);
      // the logits exactly as the forward rounded them, the rest in double
      const double logp = double(T(sim_s.s / x.tau)) - ls;
      const double logq = double(T(sim_p.s / x.tau)) - lp;
      const double q = std::exp(logq);
      const T d_s = T(double(g) * (std::exp(logp) - q) / double(x.tau));
      apply_grad(x.p.kernel, grad_coef(x.p, sim_s, true, d_s), as, bs, x.fs, s);
      coef_s[e] = grad_coef(x.p, sim_s, false, d_s);
      if (peer_grad) {
        const T d_p = T(double(g) * q * (logq - logp - kli) / double(x.tau));
        apply_grad(x.p.kernel, grad_coef(x.p, sim_p, true, d_p), ap, bp, x.fp, s + x.fs);
        coef_p[e] = grad_coef(x.p, sim_p, false, d_p);
      }
    }
  }
  void merge(T* s, const T* piece) const { add_into(s, piece, size); }
  void finish(int64_t r, const T* s) const {
    std::copy(s, s + x.fs, out_s + r * x.fs);
    if (peer_grad) std::copy(s + x.fs, s + x.fs + x.fp, out_p + r * x.fp);
  }
};

// Source-side gradients, by rows of the transpose: transposed edge k is internal edge
// perm_t[k] from this source to destination col_t[k].
template <typename S, typename index_t>
struct KlSrcGradFold {
  using T = acc_t<S>;
  using elem_t = T;
  Embeddings<S> x;
  const index_t* col_t;
  const int64_t* perm_t;
  bool peer_grad;
  S *out_s, *out_p;
  const GradCoef<T> *coef_s, *coef_p;
  const T* grad_kl;  // null: the coefficients already carry the upstream gradient
  int64_t size;
  IndexCheck dsts;   // col_t against the destination rows
  IndexCheck edges;  // perm_t against the edges
  // Square graph with one student tensor: also add grad_kl[j] * dst_grad[j], the
  // destination-side gradient, so that one tensor holds the student's whole gradient.
  const T* dst_grad = nullptr;
  int64_t prefetch_end = 0;  // the number of edges (see kPrefetchDistance)

  bool indices_ok(int64_t k0, int64_t k1) const {
    return dsts.all_ok(col_t + k0, k1 - k0) && edges.all_ok(perm_t + k0, k1 - k0);
  }
  void init(T* s) const { fill(s, T(0), size); }
  void accumulate(int64_t j, int64_t k0, int64_t k1, T* s) const {
    const S *bs = x.s_src + j * x.fs, *bp = x.p_src + j * x.fp;
    const int64_t end = std::max(k1, prefetch_end);
    for (int64_t k = k0; k < k1; ++k) {
      if (k + kPrefetchDistance < end) {
        const int64_t in = col_t[k + kPrefetchDistance];
        prefetch_row(x.s_dst + in * x.fs, x.fs);
        if (peer_grad) prefetch_row(x.p_dst + in * x.fp, x.fp);
        // the coefficients are read in transposed order: random too
        __builtin_prefetch(coef_s + perm_t[k + kPrefetchDistance]);
      }
      const int64_t i = col_t[k], e = perm_t[k];
      GradCoef<T> c = coef_s[e];
      if (grad_kl) c.c0 *= grad_kl[i], c.c1 *= grad_kl[i];
      apply_grad(x.p.kernel, c, bs, x.s_dst + i * x.fs, x.fs, s);
      if (peer_grad) apply_grad(x.p.kernel, coef_p[e], bp, x.p_dst + i * x.fp, x.fp, s + x.fs);
    }
  }
  void merge(T* s, const T* piece) const { add_into(s, piece, size); }
  void finish(int64_t r, const T* s) const {
    S* out = out_s + r * x.fs;
    if (dst_grad) {
      const T g = grad_kl[r];
      const T* u = dst_grad + r * x.fs;
#pragma omp simd
      for (int64_t f = 0; f < x.fs; ++f) out[f] = narrow<S>(s[f] + g * u[f]);
    } else {
      narrow_row(s, x.fs, out);
    }
    if (peer_grad) narrow_row(s + x.fs, x.fp, out_p + r * x.fp);
  }
};

void check_embeddings(const at::Tensor& s_dst, const at::Tensor& s_src, const at::Tensor& p_dst,
                      const at::Tensor& p_src, int64_t num_dst) {
  check_rows(s_dst, num_dst, "s_dst");
  check_rows(p_dst, num_dst, "p_dst");
  TORCH_CHECK_VALUE(s_src.dim() == 2 && s_src.size(1) == s_dst.size(1), "s_src must be [N_src, F_student]");
  TORCH_CHECK_VALUE(p_src.dim() == 2 && p_src.size(1) == p_dst.size(1) && p_src.size(0) == s_src.size(0),
              "p_src must be [N_src, F_peer]");
  TORCH_CHECK_VALUE(p_dst.scalar_type() == s_dst.scalar_type(), "student and peer must share a dtype");
}

template <typename S>
Embeddings<S> embeddings(const at::Tensor& s_dst, const at::Tensor& s_src, const at::Tensor& p_dst,
                         const at::Tensor& p_src, c10::string_view kernel, double sigma,
                         int64_t degree, double coef, double tau) {
  using T = acc_t<S>;
  return {{parse_kernel(kernel), T(sigma), degree, T(coef)}, T(tau),
          s_dst.data_ptr<S>(), s_src.data_ptr<S>(), p_dst.data_ptr<S>(), p_src.data_ptr<S>(),
          s_dst.size(1), p_dst.size(1)};
}

// out[r] = scale[r] * in[r] for [rows, F] tensors (in and scale in T, out stored as S);
// a row of F features is one unit of threads_for's work, like an edge.
template <typename T, typename S>
void scale_rows(const T* in, const T* scale, int64_t rows, int64_t F, S* out) {
  const int threads = threads_for(rows);
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
  for (int64_t r = 0; r < rows; ++r) {
    const T g = scale[r];
#pragma omp simd
    for (int64_t f = 0; f < F; ++f) out[r * F + f] = narrow<S>(g * in[r * F + f]);
  }
}

struct Inputs {
  at::Tensor s_dst, s_src, p_dst, p_src;
};

Inputs contiguous_inputs(const at::Tensor& s_dst, const at::Tensor& s_src, const at::Tensor& p_dst,
                         const at::Tensor& p_src) {
  const auto dtype = s_dst.scalar_type();
  return {s_dst.contiguous(), contiguous_as(s_src, dtype), p_dst.contiguous(), contiguous_as(p_src, dtype)};
}

// The forward; with `with_grad` also the student's gradient state for a unit upstream
// gradient: dst_grad [num_dst, F_student] and src_coef [num_edges, 2].
std::vector<at::Tensor> forward(const at::Tensor& rowptr, const at::Tensor& col, const at::Tensor& s_dst,
                                const at::Tensor& s_src, const at::Tensor& p_dst, const at::Tensor& p_src,
                                c10::string_view kernel, double sigma, int64_t degree, double coef,
                                double tau, bool with_grad) {
  check_csr(rowptr, col);
  check_embeddings(s_dst, s_src, p_dst, p_src, rowptr.numel() - 1);
  const Inputs in = contiguous_inputs(s_dst, s_src, p_dst, p_src);
  const int64_t n = rowptr.numel() - 1, num_edges = col.numel();
  const at::Tensor rp = rowptr.contiguous(), cl = col.contiguous();
  const auto opts = in.s_dst.options();
  at::Tensor kl = at::empty({n}, opts.dtype(at::kDouble));
  at::Tensor lse_s = at::empty({n}, opts.dtype(at::kDouble)), lse_p = at::empty({n}, opts.dtype(at::kDouble));
  const auto state = opts.dtype(at::toOpMathType(in.s_dst.scalar_type()));  // the gradient state's dtype
  at::Tensor dst_grad = with_grad ? at::empty({n, in.s_dst.size(1)}, state) : at::empty({0}, state);
  at::Tensor src_coef = with_grad ? at::empty({num_edges, 2}, state) : at::empty({0}, state);
  std::atomic<bool> bad{false};
  const IndexCheck cols{uint64_t(in.s_src.size(0)), &bad};
  FASTALIGN_DISPATCH(in.s_dst.scalar_type(), col.scalar_type(), "structure_kl_forward", [&] {
    using acc = acc_t<scalar_t>;
    const index_t* rpp = rp.data_ptr<index_t>();
    const index_t* clp = cl.data_ptr<index_t>();
    check_rowptr(rpp, n, num_edges, "structure_kl_forward");
    const auto x = embeddings<scalar_t>(in.s_dst, in.s_src, in.p_dst, in.p_src, kernel, sigma, degree,
                                        coef, tau);
    auto* coefs = with_grad ? reinterpret_cast<GradCoef<acc>*>(src_coef.data_ptr<acc>()) : nullptr;
    KlForwardFold<scalar_t, index_t> op{x, rpp, clp, kl.data_ptr<double>(), lse_s.data_ptr<double>(),
                                        lse_p.data_ptr<double>(), cols};
    op.prefetch_end = num_edges;
    if (with_grad) op.dst_grad = dst_grad.data_ptr<acc>(), op.src_coef = coefs;
    const Partition part = partition_rows(rpp, n);
    segment_fold(rpp, part, op);
    if (!with_grad || part.long_rows.empty()) return;
    // Hub rows: their log-sum-exps are known only now.
    KlDstGradFold<scalar_t, index_t> hubs{x, op.lse_s, op.lse_p, op.kl, nullptr, clp, false,
                                          op.dst_grad, nullptr, coefs, nullptr, x.fs, cols, num_edges};
    segment_fold(rpp, long_rows_only(part), hubs);
  });
  report_indices(bad, "structure_kl_forward", "col", in.s_src.size(0));
  return {kl, lse_s, lse_p, dst_grad, src_coef};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> structure_kl_forward(
    const at::Tensor& rowptr, const at::Tensor& col, const at::Tensor& s_dst, const at::Tensor& s_src,
    const at::Tensor& p_dst, const at::Tensor& p_src, c10::string_view kernel, double sigma,
    int64_t degree, double coef, double tau) {
  auto out = forward(rowptr, col, s_dst, s_src, p_dst, p_src, kernel, sigma, degree, coef, tau, false);
  return {out[0], out[1], out[2]};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> structure_kl_forward_with_grad_state(
    const at::Tensor& rowptr, const at::Tensor& col, const at::Tensor& s_dst, const at::Tensor& s_src,
    const at::Tensor& p_dst, const at::Tensor& p_src, c10::string_view kernel, double sigma,
    int64_t degree, double coef, double tau) {
  auto out = forward(rowptr, col, s_dst, s_src, p_dst, p_src, kernel, sigma, degree, coef, tau, true);
  return {out[0], out[1], out[2], out[3], out[4]};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> structure_kl_backward(
    const at::Tensor& rowptr, const at::Tensor& col, const at::Tensor& rowptr_t,
    const at::Tensor& col_t, const at::Tensor& perm_t, const at::Tensor& s_dst,
    const at::Tensor& s_src, const at::Tensor& p_dst, const at::Tensor& p_src,
    const at::Tensor& lse_s, const at::Tensor& lse_p, const at::Tensor& kl,
    const at::Tensor& grad_kl, c10::string_view kernel, double sigma, int64_t degree, double coef,
    double tau, bool peer_grad) {
  check_csr(rowptr, col);
  check_csr(rowptr_t, col_t);
  const int64_t n = rowptr.numel() - 1, n_src = rowptr_t.numel() - 1;
  check_embeddings(s_dst, s_src, p_dst, p_src, n);
  TORCH_CHECK_VALUE(s_src.size(0) == n_src, "s_src must have one row per source node");
  TORCH_CHECK_VALUE(lse_s.numel() == n && lse_p.numel() == n && kl.numel() == n && grad_kl.numel() == n,
              "per-node state must have one value per destination node");
  const auto dtype = s_dst.scalar_type();
  const Inputs in = contiguous_inputs(s_dst, s_src, p_dst, p_src);
  const at::Tensor ls = contiguous_as(lse_s, at::kDouble), lp = contiguous_as(lse_p, at::kDouble);
  const at::Tensor k = contiguous_as(kl, at::kDouble), g = contiguous_as(grad_kl, at::toOpMathType(dtype));
  const at::Tensor rp = rowptr.contiguous(), cl = col.contiguous();
  const at::Tensor rpt = rowptr_t.contiguous(), clt = col_t.contiguous();
  TORCH_CHECK_TYPE(perm_t.scalar_type() == at::kLong, "perm_t must be int64");
  const at::Tensor perm = perm_t.contiguous();
  TORCH_CHECK_VALUE(perm.dim() == 1 && perm.numel() == col.numel() && col_t.numel() == col.numel(),
                    "perm_t and the transpose must have one entry per edge");
  TORCH_CHECK_TYPE(rowptr.scalar_type() == rowptr_t.scalar_type(), "graph and transpose index dtypes differ");
  std::atomic<bool> bad_col{false}, bad_col_t{false}, bad_perm{false};
  // The destination-side gradients are folded in T and cast once (S may be a half type).
  const auto acc_opts = in.s_dst.options().dtype(at::toOpMathType(dtype));
  at::Tensor g_sd = at::empty(in.s_dst.sizes(), acc_opts), g_ss = at::empty_like(in.s_src);
  at::Tensor g_pd = peer_grad ? at::empty(in.p_dst.sizes(), acc_opts) : in.p_dst.new_empty({0});
  at::Tensor g_ps = peer_grad ? at::empty_like(in.p_src) : in.p_src.new_empty({0});
  FASTALIGN_DISPATCH(dtype, col.scalar_type(), "structure_kl_backward", [&] {
    using acc = acc_t<scalar_t>;
    const auto x = embeddings<scalar_t>(in.s_dst, in.s_src, in.p_dst, in.p_src, kernel, sigma, degree,
                                        coef, tau);
    const int64_t size = x.fs + (peer_grad ? x.fp : 0);
    const index_t* rpp = rp.data_ptr<index_t>();
    const index_t* rptp = rpt.data_ptr<index_t>();
    check_rowptr(rpp, n, cl.numel(), "structure_kl_backward (graph)");
    check_rowptr(rptp, n_src, cl.numel(), "structure_kl_backward (transpose)");
    std::vector<GradCoef<acc>> coef_s(cl.numel()), coef_p(peer_grad ? cl.numel() : 0);
    KlDstGradFold<scalar_t, index_t> dst{x, ls.data_ptr<double>(), lp.data_ptr<double>(),
                                         k.data_ptr<double>(), g.data_ptr<acc>(),
                                         cl.data_ptr<index_t>(), peer_grad, g_sd.data_ptr<acc>(),
                                         peer_grad ? g_pd.data_ptr<acc>() : nullptr,
                                         coef_s.data(), coef_p.data(), size,
                                         IndexCheck{uint64_t(n_src), &bad_col}, cl.numel()};
    segment_fold(rpp, partition_rows(rpp, n), dst);
    KlSrcGradFold<scalar_t, index_t> src{x, clt.data_ptr<index_t>(), perm.data_ptr<int64_t>(), peer_grad,
                                         g_ss.data_ptr<scalar_t>(),
                                         peer_grad ? g_ps.data_ptr<scalar_t>() : nullptr,
                                         coef_s.data(), coef_p.data(), nullptr, size,
                                         IndexCheck{uint64_t(n), &bad_col_t},
                                         IndexCheck{uint64_t(cl.numel()), &bad_perm}, nullptr, clt.numel()};
    segment_fold(rptp, partition_rows(rptp, n_src), src);
  });
  report_indices(bad_col, "structure_kl_backward", "col", n_src);
  report_indices(bad_col_t, "structure_kl_backward", "col_t", n);
  report_indices(bad_perm, "structure_kl_backward", "perm_t", col.numel());
  return {g_sd.to(dtype), g_ss, peer_grad ? g_pd.to(dtype) : g_pd, g_ps};
}

// The student's gradients from the forward's gradient state (peer detached):
// grad s_dst = grad_kl[:, None] * dst_grad, grad s_src by the rows of the transpose.
// `combined` (a square graph whose s_dst and s_src are one tensor): their sum, in the
// first output, the second empty; one pass, one [N, F] tensor.
std::tuple<at::Tensor, at::Tensor> structure_kl_student_backward(
    const at::Tensor& rowptr_t, const at::Tensor& col_t, const at::Tensor& perm_t,
    const at::Tensor& s_dst, const at::Tensor& s_src, const at::Tensor& dst_grad,
    const at::Tensor& src_coef, const at::Tensor& grad_kl, c10::string_view kernel, double sigma,
    int64_t degree, double coef, double tau, bool combined) {
  check_csr(rowptr_t, col_t);
  const int64_t n = s_dst.size(0), n_src = rowptr_t.numel() - 1, num_edges = col_t.numel();
  check_rows(s_src, n_src, "s_src");
  const auto dtype = s_dst.scalar_type();
  const auto state = at::toOpMathType(dtype);
  TORCH_CHECK_VALUE(dst_grad.scalar_type() == state && src_coef.scalar_type() == state,
              "the gradient state must be ", state, " (the forward's, for ", dtype, " embeddings)");
  TORCH_CHECK_VALUE(dst_grad.dim() == 2 && dst_grad.size(0) == n && dst_grad.size(1) == s_dst.size(1),
              "dst_grad must be [num_dst, F_student]");
  TORCH_CHECK_VALUE(src_coef.dim() == 2 && src_coef.size(0) == num_edges && src_coef.size(1) == 2,
              "src_coef must be [num_edges, 2]");
  TORCH_CHECK_VALUE(grad_kl.numel() == n, "grad_kl must have one value per destination node");
  const at::Tensor sd = s_dst.contiguous(), ss = contiguous_as(s_src, dtype);
  const at::Tensor u = dst_grad.contiguous(), c = src_coef.contiguous();
  const at::Tensor g = contiguous_as(grad_kl, state);
  const at::Tensor rpt = rowptr_t.contiguous(), clt = col_t.contiguous();
  TORCH_CHECK_TYPE(perm_t.scalar_type() == at::kLong, "perm_t must be int64");
  const at::Tensor perm = perm_t.contiguous();
  TORCH_CHECK_VALUE(perm.dim() == 1 && perm.numel() == num_edges, "perm_t must have one entry per edge");
  TORCH_CHECK_VALUE(!combined || n == n_src, "combined gradients need a square graph");
  TORCH_CHECK_VALUE(s_dst.dim() == 2 && s_src.size(1) == s_dst.size(1), "s_dst and s_src widths differ");
  std::atomic<bool> bad_col_t{false}, bad_perm{false};
  at::Tensor g_ss = at::empty_like(ss);
  at::Tensor g_sd = combined ? sd.new_empty({0}) : at::empty_like(sd);
  FASTALIGN_DISPATCH(dtype, col_t.scalar_type(), "structure_kl_student_backward", [&] {
    using acc = acc_t<scalar_t>;
    if (!combined)
      scale_rows(u.data_ptr<acc>(), g.data_ptr<acc>(), n, sd.size(1), g_sd.data_ptr<scalar_t>());
    // The peer is not read: its pointers are the student's, never dereferenced.
    const auto x = embeddings<scalar_t>(sd, ss, sd, ss, kernel, sigma, degree, coef, tau);
    const index_t* rptp = rpt.data_ptr<index_t>();
    check_rowptr(rptp, n_src, num_edges, "structure_kl_student_backward");
    KlSrcGradFold<scalar_t, index_t> src{
        x, clt.data_ptr<index_t>(), perm.data_ptr<int64_t>(), false, g_ss.data_ptr<scalar_t>(), nullptr,
        reinterpret_cast<const GradCoef<acc>*>(c.data_ptr<acc>()), nullptr,
        g.data_ptr<acc>(), x.fs, IndexCheck{uint64_t(n), &bad_col_t},
        IndexCheck{uint64_t(num_edges), &bad_perm}, nullptr, num_edges};
    if (combined) src.dst_grad = u.data_ptr<acc>();
    segment_fold(rptp, partition_rows(rptp, n_src), src);
  });
  report_indices(bad_col_t, "structure_kl_student_backward", "col_t", n);
  report_indices(bad_perm, "structure_kl_student_backward", "perm_t", num_edges);
  if (combined) return {g_ss, g_sd};
  return {g_sd, g_ss};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastalign_cpu, CPU, m) {
  m.impl("structure_kl_forward", &structure_kl_forward);
  m.impl("structure_kl_backward", &structure_kl_backward);
  m.impl("structure_kl_forward_with_grad_state", &structure_kl_forward_with_grad_state);
  m.impl("structure_kl_student_backward", &structure_kl_student_backward);
}

}  // namespace cpu
}  // namespace fastalign
