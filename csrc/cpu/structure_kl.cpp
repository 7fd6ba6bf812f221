// structure_kl's forward, plain and with the student's gradient state (the op, its
// state and the backwards: structure_kl.h).
#include <torch/library.h>

#include <atomic>
#include <cmath>
#include <limits>
#include <vector>

#include "cpu/structure_kl.h"

namespace fastalign {
namespace cpu {
namespace kl {
namespace {

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

}  // namespace

TORCH_LIBRARY_IMPL(fastalign_cpu, CPU, m) {
  m.impl("structure_kl_forward", &structure_kl_forward);
  m.impl("structure_kl_forward_with_grad_state", &structure_kl_forward_with_grad_state);
}

}  // namespace kl
}  // namespace cpu
}  // namespace fastalign
