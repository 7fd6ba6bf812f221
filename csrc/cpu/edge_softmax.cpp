// edge_softmax over each destination's in-edges, and its backward. A fold per row
// gives the row state (max and sum of exponentials; or sum p * g), then a per-edge pass
// writes the output.
#include <torch/library.h>

#include <cmath>
#include <limits>

#include "cpu/common.h"
#include "cpu/segment.h"

namespace fastalign {
namespace cpu {
namespace {

// Online softmax state: (max, sum of exp(z - max)).
template <typename scalar_t>
inline void merge_max_sum(scalar_t* s, scalar_t m, scalar_t sum) {
  if (sum == scalar_t(0)) return;
  if (s[1] == scalar_t(0)) {
    s[0] = m;
    s[1] = sum;
    return;
  }
  const scalar_t mx = std::max(s[0], m);
  s[1] = s[1] * std::exp(s[0] - mx) + sum * std::exp(m - mx);
  s[0] = mx;
}

// scalar_t is the logits' storage type; the state is in acc (float for the half types).
template <typename scalar_t>
struct SoftmaxFold {
  using acc = acc_t<scalar_t>;
  using elem_t = acc;
  const scalar_t* z;
  acc* row_max;
  acc* row_sum;
  int64_t size = 2;

  bool indices_ok(int64_t, int64_t) const { return true; }  // reads no index
  void init(acc* s) const {
    s[0] = -std::numeric_limits<acc>::infinity();
    s[1] = 0;
  }
  void accumulate(int64_t, int64_t e0, int64_t e1, acc* s) const {
    if (e0 == e1) return;
    acc m = widen(z[e0]);
    for (int64_t e = e0 + 1; e < e1; ++e) m = std::max(m, widen(z[e]));
    // A run of -inf logits adds nothing (exp(-inf - -inf) would be NaN): in a hub row
    // cut into pieces, such a piece must not poison the others.
    if (m == -std::numeric_limits<acc>::infinity()) return;
    acc sum = 0;
    for (int64_t e = e0; e < e1; ++e) sum += std::exp(widen(z[e]) - m);
    merge_max_sum(s, m, sum);
  }
  void merge(acc* s, const acc* piece) const { merge_max_sum(s, piece[0], piece[1]); }
  void finish(int64_t r, const acc* s) const {
    row_max[r] = s[0];
    row_sum[r] = s[1];
  }
};

template <typename scalar_t>
struct DotFold {
  using acc = acc_t<scalar_t>;
  using elem_t = acc;
  const scalar_t* p;
  const scalar_t* g;
  acc* row_dot;
  int64_t size = 1;

  bool indices_ok(int64_t, int64_t) const { return true; }  // reads no index
  void init(acc* s) const { s[0] = 0; }
  void accumulate(int64_t, int64_t e0, int64_t e1, acc* s) const {
    acc d = 0;
    for (int64_t e = e0; e < e1; ++e) d += widen(p[e]) * widen(g[e]);
    s[0] += d;
  }
  void merge(acc* s, const acc* piece) const { s[0] += piece[0]; }
  void finish(int64_t r, const acc* s) const { row_dot[r] = s[0]; }
};

at::Tensor edge_softmax(const at::Tensor& rowptr, const at::Tensor& logits) {
  TORCH_CHECK_VALUE(rowptr.dim() == 1 && rowptr.numel() >= 1, "rowptr must be 1-D and non-empty");
  check_index_dtype(rowptr, "rowptr");
  TORCH_CHECK_VALUE(logits.dim() == 1, "logits must be 1-D");
  const int64_t n = rowptr.numel() - 1;
  const at::Tensor rp = rowptr.contiguous(), z = logits.contiguous();
  at::Tensor out = at::empty_like(z);
  FASTALIGN_DISPATCH(z.scalar_type(), rowptr.scalar_type(), "edge_softmax", [&] {
    using acc = acc_t<scalar_t>;
    const index_t* rpp = rp.data_ptr<index_t>();
    const scalar_t* zp = z.data_ptr<scalar_t>();
    check_rowptr(rpp, n, z.numel(), "edge_softmax");
    std::vector<acc> row_max(n), row_sum(n);
    const Partition part = partition_rows(rpp, n);
    segment_fold(rpp, part, SoftmaxFold<scalar_t>{zp, row_max.data(), row_sum.data()});
    scalar_t* o = out.data_ptr<scalar_t>();
    for_each_edge_range(rpp, part, [&](int64_t r, int64_t e0, int64_t e1) {
      const acc m = row_max[r], inv = row_sum[r];
      for (int64_t e = e0; e < e1; ++e) o[e] = narrow<scalar_t>(std::exp(widen(zp[e]) - m) / inv);
    });
  });
  return out;
}

at::Tensor edge_softmax_backward(const at::Tensor& rowptr, const at::Tensor& p, const at::Tensor& grad_p) {
  TORCH_CHECK_VALUE(p.dim() == 1 && grad_p.dim() == 1 && grad_p.numel() == p.numel(), "p and grad_p must be [E]");
  TORCH_CHECK_VALUE(rowptr.dim() == 1 && rowptr.numel() >= 1, "rowptr must be 1-D and non-empty");
  check_index_dtype(rowptr, "rowptr");
  const int64_t n = rowptr.numel() - 1;
  const at::Tensor rp = rowptr.contiguous(), pc = p.contiguous();
  const at::Tensor g = contiguous_as(grad_p, p.scalar_type());
  at::Tensor out = at::empty_like(pc);
  FASTALIGN_DISPATCH(pc.scalar_type(), rowptr.scalar_type(), "edge_softmax_backward", [&] {
    using acc = acc_t<scalar_t>;
    const index_t* rpp = rp.data_ptr<index_t>();
    const scalar_t* pp = pc.data_ptr<scalar_t>();
    const scalar_t* gp = g.data_ptr<scalar_t>();
    check_rowptr(rpp, n, pc.numel(), "edge_softmax_backward");
    std::vector<acc> row_dot(n);
    const Partition part = partition_rows(rpp, n);
    segment_fold(rpp, part, DotFold<scalar_t>{pp, gp, row_dot.data()});
    scalar_t* o = out.data_ptr<scalar_t>();
    for_each_edge_range(rpp, part, [&](int64_t r, int64_t e0, int64_t e1) {
      for (int64_t e = e0; e < e1; ++e) o[e] = narrow<scalar_t>(widen(pp[e]) * (widen(gp[e]) - row_dot[r]));
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastalign_cpu, CPU, m) {
  m.impl("edge_softmax", &edge_softmax);
  m.impl("edge_softmax_backward", &edge_softmax_backward);
}

}  // namespace cpu
}  // namespace fastalign
