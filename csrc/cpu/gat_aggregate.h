// gat_aggregate: graph attention fused (fastalign/ops/gat_aggregate.py has the formulas).
// Forward: one fold per destination row, an online softmax per head over the row's
// edges accumulating the attention-weighted features; only the log-sum-exp per (row,
// head) is kept. Backward by recomputation: a fold over destination rows for D_i =
// g_i . out_i and grad_alpha_dst, a fold over the transpose (source rows) for grad_x and
// grad_alpha_src.
// No per-edge tensor is written. Self loops (add_self_loops) are attended in the row's
// finish, the stored ones skipped; dropout is the counter hash of
// fastalign.backends.reference.attention_keep, regenerated wherever an edge is visited.
//
// This header holds what the forward (gat_aggregate.cpp) and the backward
// (gat_aggregate_backward.cpp) share: the logits, the attention dropout and the input
// checks. Two files so that they build in parallel.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#include "attention_dropout.h"
#include "cpu/common.h"
#include "cpu/segment.h"

namespace fastalign {
namespace cpu {
namespace gat {

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

inline void check_heads(const at::Tensor& x, const at::Tensor& alpha_src, const c10::optional<at::Tensor>& alpha_dst,
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

}  // namespace gat
}  // namespace cpu
}  // namespace fastalign
