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
//
// This header holds what the forward (structure_kl.cpp) and the backwards
// (structure_kl_backward.cpp) share: the embeddings' view, the input checks and the
// destination-side gradient fold, which the forward also runs on hub rows. That fold's
// traversal is compiled once, in structure_kl_backward.cpp (the extern templates at the
// end): the two files build in parallel, and neither builds it twice.
#pragma once

#include <atomic>
#include <cmath>
#include <cstdint>
#include <vector>

#include "cpu/common.h"
#include "cpu/segment.h"
#include "cpu/similarity.h"

namespace fastalign {
namespace cpu {
namespace kl {

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


inline void check_embeddings(const at::Tensor& s_dst, const at::Tensor& s_src, const at::Tensor& p_dst,
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

struct Inputs {
  at::Tensor s_dst, s_src, p_dst, p_src;
};

inline Inputs contiguous_inputs(const at::Tensor& s_dst, const at::Tensor& s_src, const at::Tensor& p_dst,
                                const at::Tensor& p_src) {
  const auto dtype = s_dst.scalar_type();
  return {s_dst.contiguous(), contiguous_as(s_src, dtype), p_dst.contiguous(), contiguous_as(p_src, dtype)};
}

}  // namespace kl

// Every (storage type, index type) the ops dispatch to (FASTALIGN_DISPATCH).
#define FASTALIGN_KL_DST_GRAD_FOLDS(X)                                                   \
  X(double, int32_t) X(double, int64_t) X(float, int32_t) X(float, int64_t)             \
  X(c10::Half, int32_t) X(c10::Half, int64_t) X(c10::BFloat16, int32_t) X(c10::BFloat16, int64_t)
#define FASTALIGN_KL_DST_GRAD_FOLD(S, I) \
  void segment_fold(const I*, const Partition&, const kl::KlDstGradFold<S, I>&);
#define FASTALIGN_EXTERN_KL_DST_GRAD_FOLD(S, I) extern template FASTALIGN_KL_DST_GRAD_FOLD(S, I)
FASTALIGN_KL_DST_GRAD_FOLDS(FASTALIGN_EXTERN_KL_DST_GRAD_FOLD)
#undef FASTALIGN_EXTERN_KL_DST_GRAD_FOLD

}  // namespace cpu
}  // namespace fastalign
