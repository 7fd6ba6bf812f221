// fastalign._C_cuda: torch glue for the CUDA kernels of csrc/cuda/kernels.
//
// Registers kernels for the backend functions (schemas: fastalign/backends/schemas.py,
// declared by Python before this library loads) in namespace fastalign_cuda for the CUDA
// dispatch key. This file only checks inputs, allocates outputs and workspaces on the
// caching allocator, picks the current stream, and maps dtypes to the C launcher API; all
// numerics live in the kernels. float64 inputs and rows too wide for the pair kernels are routed to the
// reference by fastalign/backends/cuda.py before reaching here.
// The tensor type and the operators it calls, not torch/extension.h (the whole C++
// frontend: most of this file's compile time).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <pybind11/pybind11.h>
#include <torch/library.h>

#include <atomic>
#include <limits>
#include <optional>
#include <string>
#include <tuple>

#include "attention_dropout.h"
#include "cuda/kernels/fastalign_cuda.h"

namespace {

using at::Tensor;
using OptTensor = std::optional<Tensor>;

#define FA_CHECK_CUDA(err) \
  TORCH_CHECK((err) == cudaSuccess, "fastalign cuda kernel failed: ", cudaGetErrorString(err))

fa_dtype value_type(const Tensor& t, const char* name) {
  switch (t.scalar_type()) {
    case at::kFloat: return FA_F32;
    case at::kHalf: return FA_F16;
    case at::kBFloat16: return FA_BF16;
    default:
      TORCH_CHECK(false, "fastalign cuda: ", name, " must be float32, float16 or bfloat16, got ",
                  t.scalar_type());
  }
}

void check_cuda(const Tensor& t, const Tensor& like, const char* name) {
  TORCH_CHECK(t.is_cuda(), "fastalign cuda: ", name, " must be a CUDA tensor");
  TORCH_CHECK(t.device() == like.device(), "fastalign cuda: ", name, " is on ", t.device(),
              ", expected ", like.device());
}

// Contiguous and 16-byte aligned (a view with an odd storage offset is copied), so that
// the kernels can use vector loads.
Tensor dense(const Tensor& t) {
  Tensor c = t.contiguous();
  if (reinterpret_cast<uintptr_t>(c.data_ptr()) % 16 != 0) c = c.clone();
  return c;
}

Tensor features(const Tensor& t, const Tensor& like, const char* name) {
  check_cuda(t, like, name);
  TORCH_CHECK(t.dim() == 2, "fastalign cuda: ", name, " must be 2-D, got ", t.dim(), "-D");
  value_type(t, name);
  return dense(t);
}

fa_itype index_type(const Tensor& t, const char* name) {
  TORCH_CHECK_TYPE(t.scalar_type() == at::kInt || t.scalar_type() == at::kLong, "fastalign cuda: ",
                   name, " must be int32 or int64, got ", t.scalar_type());
  return t.scalar_type() == at::kInt ? FA_I32 : FA_I64;
}

// The rows of a [rows, F] feature tensor against what the graph indexes with.
void check_rows(const Tensor& t, int64_t rows, const char* name, const char* what) {
  TORCH_CHECK_VALUE(t.size(0) == rows, "fastalign cuda: ", name, " has ", t.size(0), " rows but the ",
                    what, " has ", rows);
}

// The CSR view of (rowptr, col); the tensors must outlive the returned struct.
struct Csr {
  Tensor rowptr, col;
  fa_csr g;
};

Csr csr(const Tensor& rowptr, const Tensor& col, const Tensor& like, const char* what) {
  check_cuda(rowptr, like, what);
  check_cuda(col, like, what);
  index_type(rowptr, "rowptr");
  TORCH_CHECK_TYPE(col.scalar_type() == rowptr.scalar_type(), "fastalign cuda: ", what,
                   " rowptr and col must share a dtype");
  TORCH_CHECK(rowptr.dim() == 1 && rowptr.numel() >= 1 && col.dim() == 1,
              "fastalign cuda: malformed ", what, " CSR");
  Csr c{rowptr.contiguous(), col.contiguous(), {}};
  c.g.rowptr = c.rowptr.data_ptr();
  c.g.col = c.col.data_ptr();
  c.g.num_rows = rowptr.numel() - 1;
  c.g.num_edges = col.numel();
  c.g.itype = rowptr.scalar_type() == at::kInt ? FA_I32 : FA_I64;
  return c;
}

OptTensor edge_values(const OptTensor& w, const Tensor& x, int64_t num_edges, const char* name) {
  if (!w.has_value() || !w->defined()) return std::nullopt;
  check_cuda(*w, x, name);
  TORCH_CHECK(w->dim() == 1 && w->numel() == num_edges, "fastalign cuda: ", name,
              " must have shape [", num_edges, "]");
  return w->to(x.scalar_type()).contiguous();
}

fa_sim similarity(c10::string_view kernel_sv, double sigma, int64_t degree, double coef) {
  const std::string kernel(kernel_sv.data(), kernel_sv.size());
  fa_sim s{FA_L1, static_cast<float>(sigma), static_cast<int>(degree), static_cast<float>(coef)};
  if (kernel == "l1") s.kind = FA_L1;
  else if (kernel == "rbf") s.kind = FA_RBF;
  else if (kernel == "linear") s.kind = FA_LINEAR;
  else if (kernel == "poly") s.kind = FA_POLY;
  else if (kernel == "cosine") s.kind = FA_COSINE;
  else TORCH_CHECK(false, "fastalign cuda: unknown similarity kernel ", kernel);
  return s;
}

Tensor workspace(size_t bytes, const Tensor& like) {
  return at::empty({static_cast<int64_t>(bytes > 0 ? bytes : 1)}, like.options().dtype(at::kByte));
}

const void* ptr_or_null(const OptTensor& t) { return t.has_value() ? t->data_ptr() : nullptr; }

cudaStream_t stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

// Hub-row split size: the kernels' default, or a forced one (> 0) for tuning, set from
// FASTALIGN_CUDA_SPLIT by fastalign/backends/cuda.py (fastalign.settings reads it).
std::atomic<int64_t> forced_split{0};

int64_t split_for(int64_t num_edges) {
  const int64_t forced = forced_split.load(std::memory_order_relaxed);
  return forced > 0 ? forced : fa_default_split(num_edges);
}

// ------------------------------------------------------------------------ spmm
std::tuple<Tensor, Tensor> spmm_forward(const Tensor& rowptr, const Tensor& col,
                                        const OptTensor& weight, const Tensor& x_in,
                                        c10::string_view reduce_sv) {
  const c10::cuda::CUDAGuard guard(x_in.device());
  Tensor x = features(x_in, x_in, "x");
  Csr c = csr(rowptr, col, x, "graph");
  OptTensor w = edge_values(weight, x, c.g.num_edges, "weight");
  const std::string reduce(reduce_sv.data(), reduce_sv.size());
  fa_reduce r;
  if (reduce == "sum") r = FA_SUM;
  else if (reduce == "mean") r = FA_MEAN;
  else if (reduce == "max") r = FA_MAX;
  else TORCH_CHECK(false, "fastalign cuda: unknown reduce ", reduce);
  const int64_t F = x.size(1);
  Tensor out = at::empty({c.g.num_rows, F}, x.options());
  // int32 winners whenever every edge position fits (the max backward reads them per
  // edge and feature)
  const bool arg32 = c.g.num_edges <= std::numeric_limits<int32_t>::max();
  Tensor arg = r == FA_MAX
                   ? at::empty({c.g.num_rows, F}, x.options().dtype(arg32 ? at::kInt : at::kLong))
                   : at::empty({0}, x.options().dtype(at::kLong));
  const int64_t split = split_for(c.g.num_edges);
  const size_t bytes = fa_spmm_workspace_bytes(&c.g, F, r, split);
  Tensor ws = workspace(bytes, x);
  FA_CHECK_CUDA(fa_spmm_forward(&c.g, ptr_or_null(w), x.data_ptr(), F, value_type(x, "x"), r,
                                out.data_ptr(), r == FA_MAX ? arg.data_ptr() : nullptr,
                                arg32 ? FA_I32 : FA_I64, split, ws.data_ptr(), bytes, stream()));
  return {out, arg};
}

std::tuple<Tensor, Tensor> spmm_max_backward(const Tensor& col, const Tensor& rowptr_t,
                                             const Tensor& col_t, const Tensor& perm_t,
                                             const OptTensor& weight, const Tensor& x_in,
                                             const Tensor& arg_in, const Tensor& grad_out_in,
                                             bool need_weight_grad) {
  const c10::cuda::CUDAGuard guard(x_in.device());
  Tensor x = features(x_in, x_in, "x");
  Tensor grad_out = features(grad_out_in, x, "grad_out");
  check_cuda(col, x, "col");
  check_cuda(arg_in, x, "arg");
  TORCH_CHECK((arg_in.scalar_type() == at::kInt || arg_in.scalar_type() == at::kLong) &&
                  arg_in.sizes() == grad_out.sizes(),
              "fastalign cuda: arg must be int32 or int64 shaped like grad_out");
  TORCH_CHECK(grad_out.scalar_type() == x.scalar_type() && grad_out.size(1) == x.size(1),
              "fastalign cuda: grad_out must match x in dtype and width");
  TORCH_CHECK(col.scalar_type() == at::kInt || col.scalar_type() == at::kLong,
              "fastalign cuda: col must be int32 or int64");
  Tensor arg = dense(arg_in);  // 16-byte aligned: read as vectors
  Tensor colc = col.contiguous();
  Csr ct = csr(rowptr_t, col_t, x, "transpose");
  TORCH_CHECK(ct.g.itype == (colc.scalar_type() == at::kInt ? FA_I32 : FA_I64),
              "fastalign cuda: graph and transpose index dtypes differ");
  TORCH_CHECK(ct.g.num_rows == x.size(0) && ct.g.num_edges == colc.numel(),
              "fastalign cuda: the transpose must have num_src rows and num_edges edges");
  check_cuda(perm_t, x, "perm_t");
  TORCH_CHECK(perm_t.scalar_type() == at::kLong && perm_t.numel() == colc.numel(),
              "fastalign cuda: perm_t must be int64 [num_edges]");
  Tensor perm = perm_t.contiguous();
  OptTensor w = edge_values(weight, x, colc.numel(), "weight");
  fa_csr g{nullptr, colc.data_ptr(), grad_out.size(0), colc.numel(), ct.g.itype};
  const int64_t F = x.size(1);
  Tensor gx = at::empty_like(x);  // every row is written (rows without edges get 0)
  Tensor gw = need_weight_grad ? at::zeros({colc.numel()}, x.options().dtype(at::kFloat))
                               : Tensor();
  const int64_t split = split_for(colc.numel());
  const size_t bytes = fa_spmm_max_backward_workspace_bytes(&ct.g, F, split);
  Tensor ws = workspace(bytes, x);
  FA_CHECK_CUDA(fa_spmm_max_backward(&g, &ct.g, perm.data_ptr<int64_t>(), ptr_or_null(w),
                                     x.data_ptr(), arg.data_ptr(),
                                     index_type(arg, "arg"),
                                     grad_out.data_ptr(),
                                     F, value_type(x, "x"), gx.data_ptr(),
                                     need_weight_grad ? gw.data_ptr<float>() : nullptr, split,
                                     ws.data_ptr(), bytes, stream()));
  Tensor grad_w = need_weight_grad
                      ? gw.to(weight.has_value() ? weight->scalar_type() : x.scalar_type())
                      : at::empty({0}, x.options());
  return {gx, grad_w};
}

// ------------------------------------------------------------------------ edges
Tensor edge_similarity(const Tensor& rowptr, const Tensor& col, const Tensor& x_dst_in,
                       const Tensor& x_src_in, c10::string_view kernel, double sigma,
                       int64_t degree, double coef) {
  const c10::cuda::CUDAGuard guard(x_dst_in.device());
  Tensor x_dst = features(x_dst_in, x_dst_in, "x_dst");
  Tensor x_src = features(x_src_in, x_dst, "x_src");
  TORCH_CHECK(x_dst.scalar_type() == x_src.scalar_type() && x_dst.size(1) == x_src.size(1),
              "fastalign cuda: x_dst and x_src must share dtype and width");
  Csr c = csr(rowptr, col, x_dst, "graph");
  TORCH_CHECK(x_dst.size(0) == c.g.num_rows, "fastalign cuda: x_dst rows != destinations");
  Tensor out = at::empty({c.g.num_edges}, x_dst.options());
  const int64_t split = split_for(c.g.num_edges);
  const size_t bytes = fa_edge_similarity_workspace_bytes(&c.g, split);
  Tensor ws = workspace(bytes, x_dst);
  FA_CHECK_CUDA(fa_edge_similarity(&c.g, x_dst.data_ptr(), x_src.data_ptr(), x_dst.size(1),
                                   value_type(x_dst, "x_dst"),
                                   similarity(kernel, sigma, degree, coef), out.data_ptr(), split,
                                   ws.data_ptr(), bytes, stream()));
  return out;
}

Tensor sddmm(const Tensor& rowptr, const Tensor& col, const Tensor& a, const Tensor& b) {
  return edge_similarity(rowptr, col, a, b, "linear", 1.0, 1, 0.0);
}

std::tuple<Tensor, Tensor> edge_similarity_backward(
    const Tensor& rowptr, const Tensor& col, const Tensor& rowptr_t, const Tensor& col_t,
    const Tensor& perm_t, const Tensor& x_dst_in, const Tensor& x_src_in,
    const Tensor& grad_s_in, c10::string_view kernel, double sigma, int64_t degree,
    double coef) {
  const c10::cuda::CUDAGuard guard(x_dst_in.device());
  Tensor x_dst = features(x_dst_in, x_dst_in, "x_dst");
  Tensor x_src = features(x_src_in, x_dst, "x_src");
  TORCH_CHECK(x_dst.scalar_type() == x_src.scalar_type() && x_dst.size(1) == x_src.size(1),
              "fastalign cuda: x_dst and x_src must share dtype and width");
  Csr c = csr(rowptr, col, x_dst, "graph");
  Csr ct = csr(rowptr_t, col_t, x_dst, "transpose");
  TORCH_CHECK(c.g.itype == ct.g.itype, "fastalign cuda: graph and transpose index dtypes differ");
  check_rows(x_dst, c.g.num_rows, "x_dst", "graph (destinations)");
  check_rows(x_src, ct.g.num_rows, "x_src", "transpose (sources)");
  TORCH_CHECK_VALUE(ct.g.num_edges == c.g.num_edges, "fastalign cuda: the transpose has ",
                    ct.g.num_edges, " edges, the graph ", c.g.num_edges);
  check_cuda(perm_t, x_dst, "perm_t");
  TORCH_CHECK(perm_t.scalar_type() == at::kLong && perm_t.numel() == c.g.num_edges,
              "fastalign cuda: perm_t must be int64 [num_edges]");
  check_cuda(grad_s_in, x_dst, "grad_s");
  TORCH_CHECK(grad_s_in.numel() == c.g.num_edges, "fastalign cuda: grad_s must be [num_edges]");
  Tensor perm = perm_t.contiguous();
  Tensor grad_s = grad_s_in.to(x_dst.scalar_type()).contiguous();
  Tensor gd = at::empty_like(x_dst), gs = at::empty_like(x_src);
  const int64_t F = x_dst.size(1);
  const int64_t split = split_for(c.g.num_edges);
  const size_t bytes = fa_edge_similarity_backward_workspace_bytes(&c.g, &ct.g, F, split);
  Tensor ws = workspace(bytes, x_dst);
  FA_CHECK_CUDA(fa_edge_similarity_backward(
      &c.g, &ct.g, perm.data_ptr<int64_t>(), x_dst.data_ptr(), x_src.data_ptr(),
      grad_s.data_ptr(), F, value_type(x_dst, "x_dst"), similarity(kernel, sigma, degree, coef),
      gd.data_ptr(), gs.data_ptr(), split, ws.data_ptr(), bytes, stream()));
  return {gd, gs};
}

Tensor edge_softmax(const Tensor& rowptr, const Tensor& logits_in) {
  const c10::cuda::CUDAGuard guard(logits_in.device());
  check_cuda(logits_in, logits_in, "logits");
  Tensor logits = logits_in.contiguous();
  TORCH_CHECK_VALUE(logits.dim() == 1, "fastalign cuda: logits must be 1-D [num_edges]");
  check_cuda(rowptr, logits, "rowptr");
  TORCH_CHECK_VALUE(rowptr.dim() == 1 && rowptr.numel() >= 1, "fastalign cuda: rowptr must be 1-D and non-empty");
  Tensor rp = rowptr.contiguous();
  fa_csr g{rp.data_ptr(), nullptr, rp.numel() - 1, logits.numel(), index_type(rp, "rowptr")};
  Tensor p = at::empty_like(logits);
  FA_CHECK_CUDA(fa_edge_softmax(&g, logits.data_ptr(), value_type(logits, "logits"),
                                p.data_ptr(), stream()));
  return p;
}

Tensor edge_softmax_backward(const Tensor& rowptr, const Tensor& p_in, const Tensor& grad_in) {
  const c10::cuda::CUDAGuard guard(p_in.device());
  check_cuda(p_in, p_in, "p");
  check_cuda(grad_in, p_in, "grad_p");
  Tensor p = p_in.contiguous();
  Tensor grad = grad_in.to(p.scalar_type()).contiguous();
  TORCH_CHECK(grad.numel() == p.numel(), "fastalign cuda: grad_p must match p");
  TORCH_CHECK_VALUE(p.dim() == 1, "fastalign cuda: p must be 1-D [num_edges]");
  check_cuda(rowptr, p, "rowptr");
  TORCH_CHECK_VALUE(rowptr.dim() == 1 && rowptr.numel() >= 1, "fastalign cuda: rowptr must be 1-D and non-empty");
  Tensor rp = rowptr.contiguous();
  fa_csr g{rp.data_ptr(), nullptr, rp.numel() - 1, p.numel(), index_type(rp, "rowptr")};
  Tensor out = at::empty_like(p);
  FA_CHECK_CUDA(fa_edge_softmax_backward(&g, p.data_ptr(), grad.data_ptr(),
                                         value_type(p, "p"), out.data_ptr(), stream()));
  return out;
}

// ------------------------------------------------------------------------ gcn
Tensor gcn_aggregate(const Tensor& rowptr, const Tensor& col, const OptTensor& weight,
                     const Tensor& dis, const OptTensor& loop_weight, const Tensor& x_in,
                     const OptTensor& bias) {
  const c10::cuda::CUDAGuard guard(x_in.device());
  Tensor x = features(x_in, x_in, "x");
  Csr c = csr(rowptr, col, x, "graph");
  TORCH_CHECK(x.size(0) == c.g.num_rows, "fastalign cuda: gcn_aggregate needs a square graph");
  OptTensor w = edge_values(weight, x, c.g.num_edges, "weight");
  check_cuda(dis, x, "dis");
  TORCH_CHECK(dis.numel() == c.g.num_rows, "fastalign cuda: dis must be [num_nodes]");
  Tensor d = dis.to(at::kFloat).contiguous();
  OptTensor lw;
  if (loop_weight.has_value() && loop_weight->defined()) {
    check_cuda(*loop_weight, x, "loop_weight");
    TORCH_CHECK(loop_weight->numel() == c.g.num_rows,
                "fastalign cuda: loop_weight must be [num_nodes]");
    lw = loop_weight->to(at::kFloat).contiguous();
  }
  const int64_t F = x.size(1);
  Tensor out = at::empty({c.g.num_rows, F}, x.options());
  const int64_t split = split_for(c.g.num_edges);
  const size_t bytes = fa_gcn_aggregate_workspace_bytes(&c.g, F, split);
  Tensor ws = workspace(bytes, x);
  FA_CHECK_CUDA(fa_gcn_aggregate(&c.g, ptr_or_null(w), x.data_ptr(), F, value_type(x, "x"),
                                 d.data_ptr<float>(), lw.has_value() ? lw->data_ptr<float>() : nullptr,
                                 out.data_ptr(), split, ws.data_ptr(), bytes, stream()));
  if (bias.has_value() && bias->defined()) {
    // a second pass for now: the sum kernel's epilogue does not take a bias yet
    check_cuda(*bias, x, "bias");
    TORCH_CHECK(bias->dim() == 1 && bias->numel() == F, "fastalign cuda: bias must be [", F, "]");
    out.add_(*bias);
  }
  return out;
}

// ------------------------------------------------------------------------ structure KL
// Both students' destination and source embeddings: contiguous, one dtype, and each
// student's two sides of one width.
std::tuple<Tensor, Tensor, Tensor, Tensor> embeddings(const Tensor& s_dst_in, const Tensor& s_src_in,
                                                      const Tensor& p_dst_in, const Tensor& p_src_in) {
  Tensor s_dst = features(s_dst_in, s_dst_in, "s_dst");
  Tensor s_src = features(s_src_in, s_dst, "s_src");
  Tensor p_dst = features(p_dst_in, s_dst, "p_dst");
  Tensor p_src = features(p_src_in, s_dst, "p_src");
  for (const Tensor* t : {&s_src, &p_dst, &p_src})
    TORCH_CHECK(t->scalar_type() == s_dst.scalar_type(), "fastalign cuda: embeddings must share a dtype");
  TORCH_CHECK(s_src.size(1) == s_dst.size(1) && p_src.size(1) == p_dst.size(1),
              "fastalign cuda: destination and source widths differ");
  return {s_dst, s_src, p_dst, p_src};
}

std::tuple<Tensor, Tensor, Tensor> structure_kl_forward(
    const Tensor& rowptr, const Tensor& col, const Tensor& s_dst_in, const Tensor& s_src_in,
    const Tensor& p_dst_in, const Tensor& p_src_in, c10::string_view kernel, double sigma,
    int64_t degree, double coef, double tau) {
  const c10::cuda::CUDAGuard guard(s_dst_in.device());
  Tensor s_dst, s_src, p_dst, p_src;
  std::tie(s_dst, s_src, p_dst, p_src) = embeddings(s_dst_in, s_src_in, p_dst_in, p_src_in);
  Csr c = csr(rowptr, col, s_dst, "graph");
  check_rows(s_dst, c.g.num_rows, "s_dst", "graph (destinations)");
  check_rows(p_dst, c.g.num_rows, "p_dst", "graph (destinations)");
  check_rows(p_src, s_src.size(0), "p_src", "student's s_src");
  Tensor kl = at::empty({c.g.num_rows}, s_dst.options());
  Tensor lse_s = at::empty({c.g.num_rows}, s_dst.options().dtype(at::kFloat));
  Tensor lse_p = at::empty({c.g.num_rows}, s_dst.options().dtype(at::kFloat));
  const int64_t split = split_for(c.g.num_edges);
  const size_t bytes = fa_structure_kl_workspace_bytes(&c.g, split);
  Tensor ws = workspace(bytes, s_dst);
  FA_CHECK_CUDA(fa_structure_kl_forward(
      &c.g, s_dst.data_ptr(), s_src.data_ptr(), s_dst.size(1), p_dst.data_ptr(),
      p_src.data_ptr(), p_dst.size(1), value_type(s_dst, "s_dst"),
      similarity(kernel, sigma, degree, coef), static_cast<float>(tau), kl.data_ptr(),
      lse_s.data_ptr<float>(), lse_p.data_ptr<float>(), split, ws.data_ptr(), bytes, stream()));
  return {kl, lse_s, lse_p};
}

std::tuple<Tensor, Tensor, Tensor, Tensor> structure_kl_backward(
    const Tensor& rowptr, const Tensor& col, const Tensor& rowptr_t, const Tensor& col_t,
    const Tensor& perm_t, const Tensor& s_dst_in, const Tensor& s_src_in,
    const Tensor& p_dst_in, const Tensor& p_src_in, const Tensor& lse_s, const Tensor& lse_p,
    const Tensor& kl, const Tensor& grad_kl, c10::string_view kernel, double sigma,
    int64_t degree, double coef, double tau, bool peer_grad) {
  (void)perm_t;  // the structure KL has no per-edge inputs: the transpose rows suffice
  const c10::cuda::CUDAGuard guard(s_dst_in.device());
  Tensor s_dst, s_src, p_dst, p_src;
  std::tie(s_dst, s_src, p_dst, p_src) = embeddings(s_dst_in, s_src_in, p_dst_in, p_src_in);
  Csr c = csr(rowptr, col, s_dst, "graph");
  Csr ct = csr(rowptr_t, col_t, s_dst, "transpose");
  TORCH_CHECK(c.g.itype == ct.g.itype, "fastalign cuda: graph and transpose index dtypes differ");
  check_rows(s_dst, c.g.num_rows, "s_dst", "graph (destinations)");
  check_rows(p_dst, c.g.num_rows, "p_dst", "graph (destinations)");
  check_rows(s_src, ct.g.num_rows, "s_src", "transpose (sources)");
  check_rows(p_src, ct.g.num_rows, "p_src", "transpose (sources)");
  TORCH_CHECK_VALUE(ct.g.num_edges == c.g.num_edges, "fastalign cuda: the transpose has ",
                    ct.g.num_edges, " edges, the graph ", c.g.num_edges);
  auto state = [&](const Tensor& t, const char* name) {
    check_cuda(t, s_dst, name);
    TORCH_CHECK(t.numel() == c.g.num_rows, "fastalign cuda: ", name, " must be [num_dst]");
    return t.to(at::kFloat).contiguous();
  };
  Tensor ls = state(lse_s, "lse_s"), lp = state(lse_p, "lse_p"), k = state(kl, "kl"),
         g = state(grad_kl, "grad_kl");
  Tensor gsd = at::empty_like(s_dst), gss = at::empty_like(s_src);
  Tensor gpd = peer_grad ? at::empty_like(p_dst) : at::empty({0}, p_dst.options());
  Tensor gps = peer_grad ? at::empty_like(p_src) : at::empty({0}, p_src.options());
  const int64_t Fs = s_dst.size(1), Fp = p_dst.size(1);
  const int64_t split = split_for(c.g.num_edges);
  const size_t bytes = fa_structure_kl_backward_workspace_bytes(&c.g, &ct.g, Fs, Fp, split);
  Tensor ws = workspace(bytes, s_dst);
  FA_CHECK_CUDA(fa_structure_kl_backward(
      &c.g, &ct.g, s_dst.data_ptr(), s_src.data_ptr(), Fs, p_dst.data_ptr(), p_src.data_ptr(),
      Fp, value_type(s_dst, "s_dst"), similarity(kernel, sigma, degree, coef),
      static_cast<float>(tau), ls.data_ptr<float>(), lp.data_ptr<float>(), k.data_ptr<float>(),
      g.data_ptr<float>(), gsd.data_ptr(), gss.data_ptr(), peer_grad ? gpd.data_ptr() : nullptr,
      peer_grad ? gps.data_ptr() : nullptr, split, ws.data_ptr(), bytes, stream()));
  return {gsd, gss, gpd, gps};
}

// The backend functions implemented here (fastalign.backends.cuda lists exactly these).
// ------------------------------------------------------------------------ graph attention
// x [num_src, H, C]; alpha_src [num_src, H]; alpha_dst [num_dst, H] or none. lse float32.
fa_attention attention(double negative_slope, double dropout, int64_t seed, bool add_self_loops) {
  return fa_attention{static_cast<float>(negative_slope), static_cast<float>(fastalign::attention_dropout::scale(dropout)),
                      fastalign::attention_dropout::threshold(dropout), static_cast<uint32_t>(static_cast<uint64_t>(seed)),
                      add_self_loops ? 1 : 0};
}

void check_heads(const Tensor& x, const Tensor& alpha_src, const OptTensor& alpha_dst, int64_t num_dst) {
  TORCH_CHECK_VALUE(x.dim() == 3, "fastalign cuda: x must be [num_src, H, C]");
  TORCH_CHECK_VALUE(alpha_src.dim() == 2 && alpha_src.size(0) == x.size(0) && alpha_src.size(1) == x.size(1),
                    "fastalign cuda: alpha_src must be [num_src, H]");
  if (alpha_dst.has_value() && alpha_dst->defined())
    TORCH_CHECK_VALUE(alpha_dst->dim() == 2 && alpha_dst->size(0) == num_dst && alpha_dst->size(1) == x.size(1),
                      "fastalign cuda: alpha_dst must be [num_dst, H]");
}

Tensor heads_like(const Tensor& t, const Tensor& x, const char* name) {
  check_cuda(t, x, name);
  return t.to(x.scalar_type()).contiguous();
}

std::tuple<Tensor, Tensor> gat_aggregate_forward(const Tensor& rowptr, const Tensor& col, const Tensor& x_in,
                                                 const Tensor& alpha_src, const OptTensor& alpha_dst,
                                                 double negative_slope, double dropout, int64_t seed,
                                                 bool add_self_loops) {
  const c10::cuda::CUDAGuard guard(x_in.device());
  check_cuda(x_in, x_in, "x");
  value_type(x_in, "x");
  Tensor x = dense(x_in);
  Csr c = csr(rowptr, col, x, "graph");
  check_heads(x, alpha_src, alpha_dst, c.g.num_rows);
  Tensor as = heads_like(alpha_src, x, "alpha_src");
  OptTensor ad;
  if (alpha_dst.has_value() && alpha_dst->defined()) ad = heads_like(*alpha_dst, x, "alpha_dst");
  const int64_t H = x.size(1), C = x.size(2);
  Tensor out = at::empty({c.g.num_rows, H, C}, x.options());
  Tensor lse = at::empty({c.g.num_rows, H}, x.options().dtype(at::kFloat));
  const fa_attention att = attention(negative_slope, dropout, seed, add_self_loops);
  FA_CHECK_CUDA(fa_gat_forward(&c.g, x.size(0), x.data_ptr(), as.data_ptr(), ptr_or_null(ad), value_type(x, "x"),
                               static_cast<int>(H), static_cast<int>(C), &att, out.data_ptr(),
                               lse.data_ptr<float>(), stream()));
  return {out, lse};
}

std::tuple<Tensor, Tensor, Tensor> gat_aggregate_backward(
    const Tensor& rowptr, const Tensor& col, const Tensor& rowptr_t, const Tensor& col_t, const Tensor& perm_t,
    const Tensor& x_in, const Tensor& alpha_src, const OptTensor& alpha_dst, const Tensor& lse,
    const Tensor& grad_out, double negative_slope, double dropout, int64_t seed, bool add_self_loops) {
  const c10::cuda::CUDAGuard guard(x_in.device());
  check_cuda(x_in, x_in, "x");
  value_type(x_in, "x");
  Tensor x = dense(x_in);
  Csr c = csr(rowptr, col, x, "graph");
  Csr ct = csr(rowptr_t, col_t, x, "graph transpose");
  check_heads(x, alpha_src, alpha_dst, c.g.num_rows);
  TORCH_CHECK_VALUE(ct.g.num_rows == x.size(0) && ct.g.num_edges == c.g.num_edges,
                    "fastalign cuda: the transpose must have num_src rows and the graph's edges");
  check_cuda(perm_t, x, "perm_t");
  TORCH_CHECK_TYPE(perm_t.scalar_type() == at::kLong && perm_t.numel() == c.g.num_edges,
                   "fastalign cuda: perm_t must be int64 [num_edges]");
  const int64_t H = x.size(1), C = x.size(2);
  TORCH_CHECK_VALUE(grad_out.dim() == 3 && grad_out.size(0) == c.g.num_rows && grad_out.size(1) == H &&
                        grad_out.size(2) == C,
                    "fastalign cuda: grad_out must be [num_dst, H, C]");
  TORCH_CHECK_VALUE(lse.dim() == 2 && lse.size(0) == c.g.num_rows && lse.size(1) == H,
                    "fastalign cuda: lse must be [num_dst, H]");
  check_cuda(grad_out, x, "grad_out");
  check_cuda(lse, x, "lse");
  Tensor as = heads_like(alpha_src, x, "alpha_src");
  OptTensor ad;
  if (alpha_dst.has_value() && alpha_dst->defined()) ad = heads_like(*alpha_dst, x, "alpha_dst");
  Tensor g = grad_out.to(x.scalar_type()).contiguous();
  Tensor d_row = at::empty({c.g.num_rows, H}, x.options().dtype(at::kFloat));  // written by the first pass
  Tensor l = lse.to(at::kFloat).contiguous();
  Tensor pt = perm_t.contiguous();
  Tensor grad_x = at::empty_like(x), grad_src = at::empty_like(as);
  Tensor grad_dst = ad.has_value() ? at::empty_like(*ad) : at::empty({0}, x.options());
  const fa_attention att = attention(negative_slope, dropout, seed, add_self_loops);
  FA_CHECK_CUDA(fa_gat_backward(&c.g, &ct.g, pt.data_ptr<int64_t>(), x.size(0), x.data_ptr(), as.data_ptr(),
                                ptr_or_null(ad), value_type(x, "x"), static_cast<int>(H), static_cast<int>(C), &att,
                                l.data_ptr<float>(), d_row.data_ptr<float>(), g.data_ptr(), grad_x.data_ptr(),
                                grad_src.data_ptr(), ad.has_value() ? grad_dst.data_ptr() : nullptr, stream()));
  return {grad_x, grad_src, grad_dst};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastalign_cuda, CUDA, m) {
  m.impl("spmm_forward", &spmm_forward);
  m.impl("spmm_max_backward", &spmm_max_backward);
  m.impl("sddmm", &sddmm);
  m.impl("gcn_aggregate", &gcn_aggregate);
  m.impl("edge_similarity", &edge_similarity);
  m.impl("edge_similarity_backward", &edge_similarity_backward);
  m.impl("edge_softmax", &edge_softmax);
  m.impl("edge_softmax_backward", &edge_softmax_backward);
  m.impl("structure_kl_forward", &structure_kl_forward);
  m.impl("structure_kl_backward", &structure_kl_backward);
  m.impl("gat_aggregate_forward", &gat_aggregate_forward);
  m.impl("gat_aggregate_backward", &gat_aggregate_backward);
}

PYBIND11_MODULE(_C_cuda, m) {
  m.doc() = "fastalign CUDA kernels (ops in torch.ops.fastalign_cuda)";
  m.def("set_split", [](int64_t split) { forced_split.store(split, std::memory_order_relaxed); },
        "force the hub-row split size (0: the kernels' default)");
}
