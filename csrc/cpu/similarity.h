#pragma once
// The similarity kernels k(a, b) of fastalign (see fastalign/backends/reference.py) and their
// derivatives, on one pair of feature rows. Shared by edge_similarity and structure_kl.
#include <c10/util/Exception.h>
#include <c10/util/string_view.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "cpu/common.h"

namespace fastalign {
namespace cpu {

enum class Kernel { L1, RBF, Linear, Poly, Cosine };

inline Kernel parse_kernel(c10::string_view name) {
  if (name == "l1") return Kernel::L1;
  if (name == "rbf") return Kernel::RBF;
  if (name == "linear") return Kernel::Linear;
  if (name == "poly") return Kernel::Poly;
  if (name == "cosine") return Kernel::Cosine;
  TORCH_CHECK_VALUE(false, "unknown similarity kernel '", std::string(name), "'");
}

constexpr double kCosineEps = 1e-8;

template <typename T>
struct KernelParams {
  Kernel kernel;
  T sigma;
  int64_t degree;
  T coef;
};

// sum_f term(f) with 16 independent partial sums: a single accumulator chains every
// addition on the previous one (bound by the add latency); 16 lanes vectorise into
// several registers. The order is fixed, so results stay the same bits run to run.
template <typename T, typename Term>
inline T lane_sum(int64_t F, const Term& term) {
  constexpr int64_t kLanes = 16;
  T acc[kLanes] = {};
  int64_t f = 0;
  for (; f + kLanes <= F; f += kLanes) {
#pragma omp simd
    for (int64_t l = 0; l < kLanes; ++l) acc[l] += term(f + l);
  }
  // Fold the lanes pairwise (vector adds) instead of one by one.
  for (int64_t w = kLanes / 2; w > 0; w /= 2) {
#pragma omp simd
    for (int64_t l = 0; l < w; ++l) acc[l] += acc[l + w];
  }
  T total = acc[0];
  for (; f < F; ++f) total += term(f);
  return total;
}

// k(a, b) plus what its derivative needs: the dot product (poly) and the raw norms
// (cosine).
template <typename T>
struct Sim {
  T s = 0, dot = 0, norm_a = 0, norm_b = 0;
};

// T is the arithmetic type, S the rows' storage type (float16/bfloat16 rows are
// computed in T = float).
template <typename T, typename S>
inline Sim<T> similarity(const KernelParams<T>& p, const S* __restrict__ a,
                         const S* __restrict__ b, int64_t F) {
  Sim<T> r;
  switch (p.kernel) {
    case Kernel::L1: {
      const T d = lane_sum<T>(F, [&](int64_t f) { return std::abs(T(widen(a[f])) - T(widen(b[f]))); });
      r.s = std::exp(-d / p.sigma);
      break;
    }
    case Kernel::RBF: {
      const T d = lane_sum<T>(F, [&](int64_t f) { return (T(widen(a[f])) - T(widen(b[f]))) * (T(widen(a[f])) - T(widen(b[f]))); });
      r.s = std::exp(-d / (T(2) * p.sigma * p.sigma));
      break;
    }
    case Kernel::Linear:
    case Kernel::Poly: {
      const T dot = lane_sum<T>(F, [&](int64_t f) { return T(widen(a[f])) * T(widen(b[f])); });
      r.dot = dot;
      r.s = p.kernel == Kernel::Linear ? dot : T(std::pow(dot + p.coef, double(p.degree)));
      break;
    }
    case Kernel::Cosine: {
      // Sums in double: a float32 row of norm 3e19 overflows float32 sums of squares
      // (every float32 square fits a double's range). A float64 row beyond ~1e154 still
      // overflows: then again with each row scaled by its largest entry (cosine does not
      // change under it), a rare second pass.
      double dot = 0, aa = 0, bb = 0;
#pragma omp simd reduction(+ : dot, aa, bb)
      for (int64_t f = 0; f < F; ++f) {
        const double u = double(widen(a[f])), v = double(widen(b[f]));
        dot += u * v;
        aa += u * u;
        bb += v * v;
      }
      double na = std::sqrt(aa), nb = std::sqrt(bb);
      if (std::isfinite(dot) && std::isfinite(aa) && std::isfinite(bb)) {
        const double eps = kCosineEps;
        r.s = T(dot / (std::max(na, eps) * std::max(nb, eps)));
      } else {  // huge rows (both norms far above eps): cos of the rows scaled to max 1
        double ma = 0, mb = 0;
        for (int64_t f = 0; f < F; ++f) {
          ma = std::max(ma, std::abs(double(widen(a[f]))));
          mb = std::max(mb, std::abs(double(widen(b[f]))));
        }
        double d = 0, sa = 0, sb = 0;
        for (int64_t f = 0; f < F; ++f) {
          const double u = double(widen(a[f])) / ma, v = double(widen(b[f])) / mb;
          d += u * v;
          sa += u * u;
          sb += v * v;
        }
        r.s = T(d / (std::sqrt(sa) * std::sqrt(sb)));
        na = ma * std::sqrt(sa);  // may still be inf in T: the gradient is then 0
        nb = mb * std::sqrt(sb);
      }
      r.dot = T(dot);  // unused by cosine's gradient (it needs s and the norms)
      r.norm_a = T(na);
      r.norm_b = T(nb);
      break;
    }
  }
  return r;
}

// g * dk/d(self) as coefficients of a fixed per-kernel form (apply_grad), for the pair
// (self, other) whose similarity is `sim`. Every kernel is symmetric, so the same
// routine serves either endpoint; `self_is_a` picks which raw norm is self's (cosine).
// Kept apart from apply_grad so a pass can store the two scalars per edge and another
// pass apply them without recomputing k.
template <typename T>
struct GradCoef {
  T c0 = 0, c1 = 0;
};

template <typename T>
inline GradCoef<T> grad_coef(const KernelParams<T>& p, const Sim<T>& sim, bool self_is_a, T g) {
  switch (p.kernel) {
    case Kernel::L1:
      return {-(sim.s / p.sigma) * g, 0};
    case Kernel::RBF:
      return {-(sim.s / (p.sigma * p.sigma)) * g, 0};
    case Kernel::Linear:
      return {g, 0};
    case Kernel::Poly:
      if (p.degree == 0) return {0, 0};
      return {g * T(p.degree) * T(std::pow(sim.dot + p.coef, double(p.degree - 1))), 0};
    case Kernel::Cosine: {
      // in double: the product of two float32 norms of 1e19 overflows float32
      const double eps = kCosineEps;
      const double n_self = self_is_a ? sim.norm_a : sim.norm_b;
      const double n_other = self_is_a ? sim.norm_b : sim.norm_a;
      const double ns = std::max(n_self, eps), no = std::max(n_other, eps);
      // Below eps the clamped norm is constant: its derivative term vanishes.
      return {T(double(g) / (ns * no)), n_self > eps ? T(-double(g) * double(sim.s) / (ns * ns)) : T(0)};
    }
  }
  return {0, 0};
}

// out += the gradient w.r.t. self with coefficients c:
//   l1  c0 sign(self - other)   rbf  c0 (self - other)   linear, poly  c0 other
//   cosine  c0 other + c1 self
// (rows stored as S, arithmetic and out in T)
template <typename T, typename S>
inline void apply_grad(Kernel kernel, GradCoef<T> c, const S* __restrict__ self,
                       const S* __restrict__ other, int64_t F, T* __restrict__ out) {
  const T c0 = c.c0, c1 = c.c1;
  switch (kernel) {
    case Kernel::L1:
#pragma omp simd
      for (int64_t f = 0; f < F; ++f) {
        const T d = T(widen(self[f])) - T(widen(other[f]));
        out[f] += c0 * (T(d > 0) - T(d < 0));
      }
      break;
    case Kernel::RBF:
#pragma omp simd
      for (int64_t f = 0; f < F; ++f) out[f] += c0 * (T(widen(self[f])) - T(widen(other[f])));
      break;
    case Kernel::Linear:
    case Kernel::Poly:
#pragma omp simd
      for (int64_t f = 0; f < F; ++f) out[f] += c0 * T(widen(other[f]));
      break;
    case Kernel::Cosine:
#pragma omp simd
      for (int64_t f = 0; f < F; ++f) out[f] += c0 * T(widen(other[f])) + c1 * T(widen(self[f]));
      break;
  }
}

template <typename T, typename S>
inline void accumulate_grad(const KernelParams<T>& p, const Sim<T>& sim, bool self_is_a,
                            const S* __restrict__ self, const S* __restrict__ other, T g,
                            int64_t F, T* __restrict__ out) {
  apply_grad(p.kernel, grad_coef(p, sim, self_is_a, g), self, other, F, out);
}

}  // namespace cpu
}  // namespace fastalign
