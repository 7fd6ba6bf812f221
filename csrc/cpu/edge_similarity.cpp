// edge_similarity: s_e = k(x_dst[i], x_src[j]) per edge, and its backward (destination
// gradients by CSR rows, source gradients by the rows of the transpose, recomputing k).
#include <torch/library.h>

#include <atomic>

#include "cpu/common.h"
#include "cpu/segment.h"
#include "cpu/similarity.h"

namespace fastalign {
namespace cpu {
namespace {

template <typename scalar_t>
KernelParams<scalar_t> make_params(c10::string_view kernel, double sigma, int64_t degree, double coef) {
  return {parse_kernel(kernel), scalar_t(sigma), degree, scalar_t(coef)};
}

// Gradient of sum_e g_e k(.) w.r.t. one side. Rows of `rowptr` are nodes of that side
// ("self"); edge k of a row reaches node other_index[k], its upstream gradient is
// grad[edge_id[k]] (edge_id null: k itself).
// scalar_t is the rows' storage type; the kernel and the sums are in acc.
template <typename scalar_t, typename index_t>
struct SimGradFold {
  using acc = acc_t<scalar_t>;
  using elem_t = acc;
  KernelParams<acc> p;
  const index_t* other_index;
  const int64_t* edge_id;
  const scalar_t* self_x;
  const scalar_t* other_x;
  const scalar_t* grad;
  bool self_is_dst;
  scalar_t* out;
  int64_t size;
  IndexCheck others;  // other_index against the other side's rows
  IndexCheck edges;   // edge_id against the edges
  int64_t prefetch_end = 0;  // the number of edges (see kPrefetchDistance)

  bool indices_ok(int64_t e0, int64_t e1) const {
    return others.all_ok(other_index + e0, e1 - e0) && (!edge_id || edges.all_ok(edge_id + e0, e1 - e0));
  }
  void init(acc* s) const { fill(s, acc(0), size); }
  void accumulate(int64_t r, int64_t e0, int64_t e1, acc* s) const {
    const scalar_t* self = self_x + r * size;
    const int64_t end = std::max(e1, prefetch_end);
    for (int64_t k = e0; k < e1; ++k) {
      if (k + kPrefetchDistance < end) prefetch_row(other_x + int64_t(other_index[k + kPrefetchDistance]) * size, size);
      const scalar_t* other = other_x + int64_t(other_index[k]) * size;
      const acc g = widen(grad[edge_id ? edge_id[k] : k]);
      // k(a, b) with a the destination row, as in the forward.
      const Sim<acc> sim = self_is_dst ? similarity(p, self, other, size)
                                            : similarity(p, other, self, size);
      accumulate_grad(p, sim, self_is_dst, self, other, g, size, s);
    }
  }
  void merge(acc* s, const acc* piece) const { add_into(s, piece, size); }
  void finish(int64_t r, const acc* s) const {
    scalar_t* o = out + r * size;
    for (int64_t f = 0; f < size; ++f) o[f] = narrow<scalar_t>(s[f]);
  }
};

at::Tensor edge_similarity(const at::Tensor& rowptr, const at::Tensor& col, const at::Tensor& x_dst,
                           const at::Tensor& x_src, c10::string_view kernel, double sigma,
                           int64_t degree, double coef) {
  check_csr(rowptr, col);
  check_rows(x_dst, rowptr.numel() - 1, "x_dst");
  TORCH_CHECK_VALUE(x_src.dim() == 2 && x_src.size(1) == x_dst.size(1), "x_src must be [N_src, F]");
  const at::Tensor a = x_dst.contiguous(), b = contiguous_as(x_src, x_dst.scalar_type());
  const at::Tensor rp = rowptr.contiguous(), cl = col.contiguous();
  at::Tensor out = at::empty({col.numel()}, x_dst.options());
  std::atomic<bool> bad{false};
  FASTALIGN_DISPATCH(x_dst.scalar_type(), col.scalar_type(), "edge_similarity", [&] {
    const auto p = make_params<acc_t<scalar_t>>(kernel, sigma, degree, coef);
    const index_t* rpp = rp.data_ptr<index_t>();
    const index_t* clp = cl.data_ptr<index_t>();
    const scalar_t* ap = a.data_ptr<scalar_t>();
    const scalar_t* bp = b.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    const int64_t F = a.size(1);
    check_rowptr(rpp, rowptr.numel() - 1, col.numel(), "edge_similarity");
    const IndexCheck cols{uint64_t(b.size(0)), &bad};
    const int64_t num_edges = col.numel();
    const bool far = b.numel() * int64_t(sizeof(scalar_t)) > kFarPrefetchBytes;
    for_each_edge_range(rpp, partition_rows(rpp, rowptr.numel() - 1),
                        [&](int64_t r, int64_t e0, int64_t e1) {
                          for (int64_t e = e0; e < e1; ++e) {
                            if (far && e + kFarPrefetchDistance < num_edges)
                              prefetch_row_l2(bp + int64_t(clp[e + kFarPrefetchDistance]) * F, F);
                            if (e + kPrefetchDistance < num_edges)
                              prefetch_row(bp + int64_t(clp[e + kPrefetchDistance]) * F, F);
                            o[e] = narrow<scalar_t>(similarity(p, ap + r * F, bp + int64_t(clp[e]) * F, F).s);
                          }
                        },
                        [&](int64_t e0, int64_t e1) { return cols.all_ok(clp + e0, e1 - e0); });
  });
  report_indices(bad, "edge_similarity", "col", b.size(0));
  return out;
}

std::tuple<at::Tensor, at::Tensor> edge_similarity_backward(
    const at::Tensor& rowptr, const at::Tensor& col, const at::Tensor& rowptr_t,
    const at::Tensor& col_t, const at::Tensor& perm_t, const at::Tensor& x_dst,
    const at::Tensor& x_src, const at::Tensor& grad_s, c10::string_view kernel, double sigma,
    int64_t degree, double coef) {
  check_csr(rowptr, col);
  check_csr(rowptr_t, col_t);
  check_rows(x_dst, rowptr.numel() - 1, "x_dst");
  check_rows(x_src, rowptr_t.numel() - 1, "x_src");
  check_edge_values(grad_s, col.numel(), "grad_s");
  check_edge_values(perm_t, col.numel(), "perm_t");
  check_edge_values(col_t, col.numel(), "col_t");
  TORCH_CHECK_VALUE(x_src.size(1) == x_dst.size(1), "x_dst and x_src widths differ");
  TORCH_CHECK_TYPE(rowptr.scalar_type() == rowptr_t.scalar_type(), "graph and transpose index dtypes differ");
  const auto dtype = x_dst.scalar_type();
  const at::Tensor a = x_dst.contiguous(), b = contiguous_as(x_src, dtype);
  TORCH_CHECK_TYPE(perm_t.scalar_type() == at::kLong, "perm_t must be int64");
  TORCH_CHECK_VALUE(perm_t.dim() == 1, "perm_t must be 1-D");
  const at::Tensor g = contiguous_as(grad_s, dtype), perm = perm_t.contiguous();
  const at::Tensor rp = rowptr.contiguous(), cl = col.contiguous();
  const at::Tensor rpt = rowptr_t.contiguous(), clt = col_t.contiguous();
  at::Tensor grad_dst = at::empty_like(a), grad_src = at::empty_like(b);
  std::atomic<bool> bad_col{false}, bad_col_t{false}, bad_perm{false};
  const int64_t num_edges = col.numel();
  FASTALIGN_DISPATCH(dtype, col.scalar_type(), "edge_similarity_backward", [&] {
    const auto p = make_params<acc_t<scalar_t>>(kernel, sigma, degree, coef);
    const int64_t F = a.size(1);
    const scalar_t* ap = a.data_ptr<scalar_t>();
    const scalar_t* bp = b.data_ptr<scalar_t>();
    const scalar_t* gp = g.data_ptr<scalar_t>();
    const index_t* rpp = rp.data_ptr<index_t>();
    const index_t* rptp = rpt.data_ptr<index_t>();
    check_rowptr(rpp, rowptr.numel() - 1, num_edges, "edge_similarity_backward (graph)");
    check_rowptr(rptp, rowptr_t.numel() - 1, num_edges, "edge_similarity_backward (transpose)");
    SimGradFold<scalar_t, index_t> dst{p, cl.data_ptr<index_t>(), nullptr, ap, bp, gp, true,
                                       grad_dst.data_ptr<scalar_t>(), F,
                                       IndexCheck{uint64_t(b.size(0)), &bad_col}, IndexCheck{}, num_edges};
    segment_fold(rpp, partition_rows(rpp, rowptr.numel() - 1), dst);
    SimGradFold<scalar_t, index_t> src{p, clt.data_ptr<index_t>(), perm.data_ptr<int64_t>(), bp, ap,
                                       gp, false, grad_src.data_ptr<scalar_t>(), F,
                                       IndexCheck{uint64_t(a.size(0)), &bad_col_t},
                                       IndexCheck{uint64_t(num_edges), &bad_perm}, num_edges};
    segment_fold(rptp, partition_rows(rptp, rowptr_t.numel() - 1), src);
  });
  report_indices(bad_col, "edge_similarity_backward", "col", b.size(0));
  report_indices(bad_col_t, "edge_similarity_backward", "col_t", a.size(0));
  report_indices(bad_perm, "edge_similarity_backward", "perm_t", num_edges);
  return {grad_dst, grad_src};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastalign_cpu, CPU, m) {
  m.impl("edge_similarity", &edge_similarity);
  m.impl("edge_similarity_backward", &edge_similarity_backward);
}

}  // namespace cpu
}  // namespace fastalign
