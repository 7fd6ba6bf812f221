// structure_kl's backwards: both students' gradients, and the student's alone from the
// forward's gradient state (the op, its state and the forward: structure_kl.h).
#include <torch/library.h>

#include <atomic>
#include <cmath>
#include <tuple>
#include <vector>

#include "cpu/structure_kl.h"

namespace fastalign {
namespace cpu {
namespace kl {
namespace {

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
  m.impl("structure_kl_backward", &structure_kl_backward);
  m.impl("structure_kl_student_backward", &structure_kl_student_backward);
}

}  // namespace kl

// The destination-side fold's traversal, for both files (structure_kl.h).
#define FASTALIGN_INSTANTIATE_KL_DST_GRAD_FOLD(S, I) template FASTALIGN_KL_DST_GRAD_FOLD(S, I)
FASTALIGN_KL_DST_GRAD_FOLDS(FASTALIGN_INSTANTIATE_KL_DST_GRAD_FOLD)

}  // namespace cpu
}  // namespace fastalign
