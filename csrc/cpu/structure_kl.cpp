// structure_kl: per destination i, KL(q_i || p_i) between the neighbour distributions
// p = softmax(k(student)/tau) and q = softmax(k(peer)/tau) over i's in-edges, fused.
//
// Forward: one pass over each row; the scaled similarities of a row (or of a piece of
// a hub row, at most kPieceEdges) sit in a small thread-local buffer, so the only
// state left behind is per node: kl, lse_student, lse_peer. With m = max, S = sum
// exp(z - m) and T = sum exp(zp - m_p) (zp - zs), kl = T / S_p + lse_s - lse_p
// (sum q = 1); pieces of a hub row merge (m, S, T) by rescaling.
// Backward: recomputes each edge's terms from the per-node state; destination-side
// gradients by CSR rows, which also leave two scalars per edge and student (the
// source-side gradient coefficients: cheaper than recomputing both similarities), then
// source-side gradients by the rows of the transpose. No E x F tensor anywhere.
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <vector>

#include "cpu/common.h"
#include "cpu/segment.h"
#include "cpu/similarity.h"

namespace fastalign {
namespace cpu {
namespace {

template <typename T>
struct Embeddings {
  KernelParams<T> p;
  T tau;
  const T *s_dst, *s_src, *p_dst, *p_src;
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

template <typename T, typename index_t>
struct KlForwardFold {
  // The row state is kept in double whatever T: kl is a small difference of O(lse)
  // terms, and a hub row sums thousands of them. It is scalar work next to the
  // F-wide similarities.
  using elem_t = double;
  Embeddings<T> x;
  const index_t* col;
  T *kl, *lse_s, *lse_p;
  int64_t size = 5;

  void init(double* s) const {
    s[0] = s[2] = -std::numeric_limits<double>::infinity();
    s[1] = s[3] = s[4] = 0;
  }
  void accumulate(int64_t r, int64_t e0, int64_t e1, double* s) const {
    const int64_t n = e1 - e0;
    if (n == 0) return;
    thread_local std::vector<T> buf;
    buf.resize(2 * n);
    T* zs = buf.data();
    T* zp = zs + n;
    const T* as = x.s_dst + r * x.fs;
    const T* ap = x.p_dst + r * x.fp;
    for (int64_t k = 0; k < n; ++k) {
      if (k + kPrefetchDistance < n) {
        const int64_t jn = col[e0 + k + kPrefetchDistance];
        prefetch_row(x.s_src + jn * x.fs, x.fs);
        prefetch_row(x.p_src + jn * x.fp, x.fp);
      }
      const int64_t j = col[e0 + k];
      zs[k] = similarity(x.p, as, x.s_src + j * x.fs, x.fs).s / x.tau;
      zp[k] = similarity(x.p, ap, x.p_src + j * x.fp, x.fp).s / x.tau;
    }
    const T ms = *std::max_element(zs, zs + n), mp = *std::max_element(zp, zp + n);
    // exp in T (the logits are T), sums in double.
    double ss = 0, sp = 0, t = 0;
    for (int64_t k = 0; k < n; ++k) {
      ss += std::exp(zs[k] - ms);
      const double q = std::exp(zp[k] - mp);
      sp += q;
      t += q * (double(zp[k]) - double(zs[k]));
    }
    const double piece[5] = {double(ms), ss, double(mp), sp, t};
    merge_kl_state(s, piece);
  }
  void merge(double* s, const double* piece) const { merge_kl_state(s, piece); }
  void finish(int64_t r, const double* s) const {
    if (s[3] == 0) {  // no in-edge
      kl[r] = 0;
      lse_s[r] = lse_p[r] = -std::numeric_limits<T>::infinity();
      return;
    }
    const double ls = s[0] + std::log(s[1]), lp = s[2] + std::log(s[3]);
    lse_s[r] = T(ls);
    lse_p[r] = T(lp);
    kl[r] = T(s[4] / s[3] + ls - lp);
  }
};

// Destination-side gradients, by CSR rows: recompute both similarities of each edge
// from the per-node state, accumulate d/d(destination) and store the two source-side
// coefficients of each edge (GradCoef: 2 scalars per edge and student), so that the
// source pass only applies them instead of recomputing k. State: [student | peer].
template <typename T, typename index_t>
struct KlDstGradFold {
  using elem_t = T;
  Embeddings<T> x;
  const T *lse_s, *lse_p, *kl, *grad_kl;
  const index_t* col;
  bool peer_grad;
  T *out_s, *out_p;
  GradCoef<T> *coef_s, *coef_p;  // per edge, for the source side
  int64_t size;

  void init(T* s) const { fill(s, T(0), size); }
  void accumulate(int64_t i, int64_t e0, int64_t e1, T* s) const {
    const T *as = x.s_dst + i * x.fs, *ap = x.p_dst + i * x.fp;
    const T ls = lse_s[i], lp = lse_p[i], g = grad_kl[i], kli = kl[i];
    for (int64_t e = e0; e < e1; ++e) {
      if (e + kPrefetchDistance < e1) {
        const int64_t jn = col[e + kPrefetchDistance];
        prefetch_row(x.s_src + jn * x.fs, x.fs);
        prefetch_row(x.p_src + jn * x.fp, x.fp);
      }
      const int64_t j = col[e];
      const T *bs = x.s_src + j * x.fs, *bp = x.p_src + j * x.fp;
      const Sim<T> sim_s = similarity(x.p, as, bs, x.fs);
      const Sim<T> sim_p = similarity(x.p, ap, bp, x.fp);
      const T logp = sim_s.s / x.tau - ls;
      const T logq = sim_p.s / x.tau - lp;
      const T q = std::exp(logq);
      const T d_s = g * (std::exp(logp) - q) / x.tau;
      apply_grad(x.p.kernel, grad_coef(x.p, sim_s, true, d_s), as, bs, x.fs, s);
      coef_s[e] = grad_coef(x.p, sim_s, false, d_s);
      if (peer_grad) {
        const T d_p = g * q * (logq - logp - kli) / x.tau;
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
template <typename T, typename index_t>
struct KlSrcGradFold {
  using elem_t = T;
  Embeddings<T> x;
  const index_t* col_t;
  const int64_t* perm_t;
  bool peer_grad;
  T *out_s, *out_p;
  const GradCoef<T> *coef_s, *coef_p;
  int64_t size;

  void init(T* s) const { fill(s, T(0), size); }
  void accumulate(int64_t j, int64_t k0, int64_t k1, T* s) const {
    const T *bs = x.s_src + j * x.fs, *bp = x.p_src + j * x.fp;
    for (int64_t k = k0; k < k1; ++k) {
      if (k + kPrefetchDistance < k1) {
        const int64_t in = col_t[k + kPrefetchDistance];
        prefetch_row(x.s_dst + in * x.fs, x.fs);
        if (peer_grad) prefetch_row(x.p_dst + in * x.fp, x.fp);
      }
      const int64_t i = col_t[k], e = perm_t[k];
      apply_grad(x.p.kernel, coef_s[e], bs, x.s_dst + i * x.fs, x.fs, s);
      if (peer_grad) apply_grad(x.p.kernel, coef_p[e], bp, x.p_dst + i * x.fp, x.fp, s + x.fs);
    }
  }
  void merge(T* s, const T* piece) const { add_into(s, piece, size); }
  void finish(int64_t r, const T* s) const {
    std::copy(s, s + x.fs, out_s + r * x.fs);
    if (peer_grad) std::copy(s + x.fs, s + x.fs + x.fp, out_p + r * x.fp);
  }
};

void check_embeddings(const at::Tensor& s_dst, const at::Tensor& s_src, const at::Tensor& p_dst,
                      const at::Tensor& p_src, int64_t num_dst) {
  check_rows(s_dst, num_dst, "s_dst");
  check_rows(p_dst, num_dst, "p_dst");
  TORCH_CHECK(s_src.dim() == 2 && s_src.size(1) == s_dst.size(1), "s_src must be [N_src, F_student]");
  TORCH_CHECK(p_src.dim() == 2 && p_src.size(1) == p_dst.size(1) && p_src.size(0) == s_src.size(0),
              "p_src must be [N_src, F_peer]");
  TORCH_CHECK(p_dst.scalar_type() == s_dst.scalar_type(), "student and peer must share a dtype");
}

template <typename T>
Embeddings<T> embeddings(const at::Tensor& s_dst, const at::Tensor& s_src, const at::Tensor& p_dst,
                         const at::Tensor& p_src, c10::string_view kernel, double sigma,
                         int64_t degree, double coef, double tau) {
  return {{parse_kernel(kernel), T(sigma), degree, T(coef)}, T(tau),
          s_dst.data_ptr<T>(), s_src.data_ptr<T>(), p_dst.data_ptr<T>(), p_src.data_ptr<T>(),
          s_dst.size(1), p_dst.size(1)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> structure_kl_forward(
    const at::Tensor& rowptr, const at::Tensor& col, const at::Tensor& s_dst, const at::Tensor& s_src,
    const at::Tensor& p_dst, const at::Tensor& p_src, c10::string_view kernel, double sigma,
    int64_t degree, double coef, double tau) {
  check_csr(rowptr, col);
  const int64_t n = rowptr.numel() - 1;
  check_embeddings(s_dst, s_src, p_dst, p_src, n);
  const auto dtype = s_dst.scalar_type();
  const at::Tensor sd = s_dst.contiguous(), ss = contiguous_as(s_src, dtype);
  const at::Tensor pd = p_dst.contiguous(), ps = contiguous_as(p_src, dtype);
  const at::Tensor rp = rowptr.contiguous(), cl = col.contiguous();
  at::Tensor kl = at::empty({n}, sd.options());
  at::Tensor lse_s = at::empty({n}, sd.options()), lse_p = at::empty({n}, sd.options());
  FASTALIGN_DISPATCH(dtype, col.scalar_type(), "structure_kl_forward", [&] {
    const index_t* rpp = rp.data_ptr<index_t>();
    KlForwardFold<scalar_t, index_t> op{
        embeddings<scalar_t>(sd, ss, pd, ps, kernel, sigma, degree, coef, tau),
        cl.data_ptr<index_t>(), kl.data_ptr<scalar_t>(), lse_s.data_ptr<scalar_t>(),
        lse_p.data_ptr<scalar_t>()};
    segment_fold(rpp, partition_rows(rpp, n), op);
  });
  return {kl, lse_s, lse_p};
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
  TORCH_CHECK(s_src.size(0) == n_src, "s_src must have one row per source node");
  TORCH_CHECK(lse_s.numel() == n && lse_p.numel() == n && kl.numel() == n && grad_kl.numel() == n,
              "per-node state must have one value per destination node");
  const auto dtype = s_dst.scalar_type();
  const at::Tensor sd = s_dst.contiguous(), ss = contiguous_as(s_src, dtype);
  const at::Tensor pd = p_dst.contiguous(), ps = contiguous_as(p_src, dtype);
  const at::Tensor ls = contiguous_as(lse_s, dtype), lp = contiguous_as(lse_p, dtype);
  const at::Tensor k = contiguous_as(kl, dtype), g = contiguous_as(grad_kl, dtype);
  const at::Tensor rp = rowptr.contiguous(), cl = col.contiguous();
  const at::Tensor rpt = rowptr_t.contiguous(), clt = col_t.contiguous();
  const at::Tensor perm = contiguous_as(perm_t, at::kLong);
  TORCH_CHECK(perm.numel() == col.numel(), "perm_t must have one entry per edge");
  at::Tensor g_sd = at::empty_like(sd), g_ss = at::empty_like(ss);
  at::Tensor g_pd = peer_grad ? at::empty_like(pd) : pd.new_empty({0});
  at::Tensor g_ps = peer_grad ? at::empty_like(ps) : ps.new_empty({0});
  FASTALIGN_DISPATCH(dtype, col.scalar_type(), "structure_kl_backward", [&] {
    const auto x = embeddings<scalar_t>(sd, ss, pd, ps, kernel, sigma, degree, coef, tau);
    const int64_t size = x.fs + (peer_grad ? x.fp : 0);
    const scalar_t *lsp = ls.data_ptr<scalar_t>(), *lpp = lp.data_ptr<scalar_t>();
    const scalar_t *kp = k.data_ptr<scalar_t>(), *gp = g.data_ptr<scalar_t>();
    const index_t* rpp = rp.data_ptr<index_t>();
    std::vector<GradCoef<scalar_t>> coef_s(cl.numel()), coef_p(peer_grad ? cl.numel() : 0);
    KlDstGradFold<scalar_t, index_t> dst{x, lsp, lpp, kp, gp, cl.data_ptr<index_t>(), peer_grad,
                                         g_sd.data_ptr<scalar_t>(),
                                         peer_grad ? g_pd.data_ptr<scalar_t>() : nullptr,
                                         coef_s.data(), coef_p.data(), size};
    segment_fold(rpp, partition_rows(rpp, n), dst);
    const index_t* rptp = rpt.data_ptr<index_t>();
    KlSrcGradFold<scalar_t, index_t> src{x, clt.data_ptr<index_t>(), perm.data_ptr<int64_t>(), peer_grad,
                                         g_ss.data_ptr<scalar_t>(),
                                         peer_grad ? g_ps.data_ptr<scalar_t>() : nullptr,
                                         coef_s.data(), coef_p.data(), size};
    segment_fold(rptp, partition_rows(rptp, n_src), src);
  });
  return {g_sd, g_ss, g_pd, g_ps};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fastalign_cpu, m) {
  m.def("structure_kl_forward(Tensor rowptr, Tensor col, Tensor s_dst, Tensor s_src, Tensor p_dst, Tensor p_src, str kernel, float sigma, int degree, float coef, float tau) -> (Tensor, Tensor, Tensor)");
  m.def("structure_kl_backward(Tensor rowptr, Tensor col, Tensor rowptr_t, Tensor col_t, Tensor perm_t, Tensor s_dst, Tensor s_src, Tensor p_dst, Tensor p_src, Tensor lse_s, Tensor lse_p, Tensor kl, Tensor grad_kl, str kernel, float sigma, int degree, float coef, float tau, bool peer_grad) -> (Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(fastalign_cpu, CPU, m) {
  m.impl("structure_kl_forward", &structure_kl_forward);
  m.impl("structure_kl_backward", &structure_kl_backward);
}

}  // namespace cpu
}  // namespace fastalign
