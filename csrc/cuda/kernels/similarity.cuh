// The similarity kernels k(x, y) of fastalign/backends/torch.py, split into per-lane
// partial statistics (reduced over a tile) and scalar finishing / gradient formulas.
// All five kernels are symmetric, k(x, y) = k(y, x), and so are their gradient forms:
// the gradient for the "own" vector x (the row node of a tile) given the "other"
// vector y is alpha * y + beta * x, or for l1 c * sign(x - y). The destination pass
// (CSR rows) and the source pass (transpose rows) therefore share one code path.
#pragma once

#include "common.cuh"

namespace fastalign {
namespace cuda {

constexpr float kCosineEps = 1e-8f;

__device__ __forceinline__ float ipow(float x, int d) {
  float r = 1.f;
  for (int k = 0; k < d; ++k) r *= x;
  return r;
}

// One row of features held by a tile: lane `lane` holds vectors lane + t L, zero-filled
// past the end (zeros add nothing to any statistic).
template <typename T, int V, int L, int NT>
__device__ __forceinline__ void load_row(const T* __restrict__ row, int64_t cols, int lane,
                                         float (&v)[NT][V]) {
#pragma unroll
  for (int t = 0; t < NT; ++t) {
    const int64_t c = t * L + lane;
    if (c < cols) {
      load_vec<T, V>(row + c * V, v[t]);
    } else {
#pragma unroll
      for (int q = 0; q < V; ++q) v[t][q] = 0.f;
    }
  }
}

template <int V, int NT>
__device__ __forceinline__ float lane_sq(const float (&x)[NT][V]) {
  float s = 0.f;
#pragma unroll
  for (int t = 0; t < NT; ++t)
#pragma unroll
    for (int q = 0; q < V; ++q) s = fmaf(x[t][q], x[t][q], s);
  return s;
}

// The main statistic of k(x, y) for this lane: sum |x-y| (l1), sum (x-y)^2 (rbf), or
// x . y (linear, poly, cosine).
template <int V, int NT>
__device__ __forceinline__ float lane_stat(fa_kernel kind, const float (&x)[NT][V],
                                           const float (&y)[NT][V]) {
  float s = 0.f;
#pragma unroll
  for (int t = 0; t < NT; ++t)
#pragma unroll
    for (int q = 0; q < V; ++q) {
      const float d = x[t][q] - y[t][q];
      if (kind == FA_L1) s += fabsf(d);
      else if (kind == FA_RBF) s = fmaf(d, d, s);
      else s = fmaf(x[t][q], y[t][q], s);
    }
  return s;
}

// Tile-reduced statistics of one edge: stat, and |y|^2 for cosine (|x|^2 is per row).
template <int V, int L, int NT>
__device__ __forceinline__ void edge_stats(const cg::thread_block_tile<L>& tile,
                                           fa_kernel kind, const float (&x)[NT][V],
                                           const float (&y)[NT][V], float& stat, float& y2) {
  stat = tile_sum<L>(tile, lane_stat<V, NT>(kind, x, y));
  y2 = kind == FA_COSINE ? tile_sum<L>(tile, lane_sq<V, NT>(y)) : 0.f;
}

__device__ __forceinline__ float finish_sim(const fa_sim& sim, float stat, float x2, float y2) {
  switch (sim.kind) {
    case FA_L1: return expf(-stat / sim.sigma);
    case FA_RBF: return expf(-stat / (2.f * sim.sigma * sim.sigma));
    case FA_LINEAR: return stat;
    case FA_POLY: return ipow(stat + sim.coef, sim.degree);
    default: {
      const float nx = fmaxf(sqrtf(x2), kCosineEps), ny = fmaxf(sqrtf(y2), kCosineEps);
      return stat / (nx * ny);
    }
  }
}

// Coefficients of d k(x, y) / dx scaled by the upstream gradient g:
// grad_x = alpha * y + beta * x, except l1: grad_x = alpha * sign(x - y).
__device__ __forceinline__ void sim_grad_coefs(const fa_sim& sim, float s, float stat, float x2,
                                               float y2, float g, float& alpha, float& beta) {
  beta = 0.f;
  switch (sim.kind) {
    case FA_L1: alpha = -(s / sim.sigma) * g; break;
    case FA_RBF: {
      const float c = (s / (sim.sigma * sim.sigma)) * g;
      alpha = c;   // (x - y) * (-c)
      beta = -c;
      break;
    }
    case FA_LINEAR: alpha = g; break;
    case FA_POLY:
      alpha = sim.degree == 0 ? 0.f
                              : static_cast<float>(sim.degree) *
                                    ipow(stat + sim.coef, sim.degree - 1) * g;
      break;
    default: {
      const float rx = sqrtf(x2), ry = sqrtf(y2);
      const float nx = fmaxf(rx, kCosineEps), ny = fmaxf(ry, kCosineEps);
      alpha = g / (nx * ny);
      // Below eps the clamped norm is constant: no derivative term.
      beta = rx > kCosineEps ? -g * s / (nx * nx) : 0.f;
      break;
    }
  }
}

template <int V, int NT>
__device__ __forceinline__ void add_sim_grad(fa_kernel kind, float alpha, float beta,
                                             const float (&x)[NT][V], const float (&y)[NT][V],
                                             float (&acc)[NT][V]) {
#pragma unroll
  for (int t = 0; t < NT; ++t)
#pragma unroll
    for (int q = 0; q < V; ++q) {
      if (kind == FA_L1) {
        const float d = x[t][q] - y[t][q];
        const float sg = d > 0.f ? 1.f : (d < 0.f ? -1.f : 0.f);
        acc[t][q] = fmaf(alpha, sg, acc[t][q]);
      } else {
        acc[t][q] = fmaf(alpha, y[t][q], fmaf(beta, x[t][q], acc[t][q]));
      }
    }
}

}  // namespace cuda
}  // namespace fastalign
