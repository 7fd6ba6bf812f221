// linear: out[i, n] = sum_k x[i, k] w[n, k] + bias[n], for float32 and the narrow
// outputs of small GNNs (16, 32, 48 or 64 columns) on CPUs with AVX-512; anything else
// is torch's own product (at::linear).
//
// Why not torch's: a first GNN layer multiplies wide features (Cora's 1,433 columns,
// CiteSeer's 3,703) by a narrow weight, and a general GEMM packs and blocks for shapes
// where both sides are large. Here a block of R rows keeps its whole output, R x N
// floats, in zmm registers while it streams its R rows of x once: each step k
// broadcasts x[i, k] into a fused multiply-add with row k of w^T (one to four zmm
// loads shared by the R rows). docs/benchmarks.md has the figures against torch's.
// Per-operator ATen headers, not ATen/ATen.h: this file needs three ops, and the whole
// operator set is most of a translation unit's compile time.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/linear.h>
#include <immintrin.h>
#include <torch/library.h>

#include "cpu/segment.h"

namespace fastalign {
namespace cpu {
namespace {

constexpr int kLanes = 16;  // floats in a zmm register

// out[r, :] for R rows, N = kLanes * V columns; wt is w^T, [K, N] contiguous.
template <int R, int V>
__attribute__((target("avx512f"), always_inline)) inline void rows_block(
    const float* __restrict__ x, int64_t K, const float* __restrict__ wt, const float* __restrict__ bias,
    float* __restrict__ out) {
  __m512 acc[R][V];
  for (int v = 0; v < V; ++v) {
    const __m512 b = bias ? _mm512_loadu_ps(bias + kLanes * v) : _mm512_setzero_ps();
    for (int r = 0; r < R; ++r) acc[r][v] = b;
  }
  for (int64_t k = 0; k < K; ++k) {
    __m512 w[V];
    for (int v = 0; v < V; ++v) w[v] = _mm512_loadu_ps(wt + k * (kLanes * V) + kLanes * v);
    for (int r = 0; r < R; ++r) {
      const __m512 xk = _mm512_set1_ps(x[r * K + k]);
      for (int v = 0; v < V; ++v) acc[r][v] = _mm512_fmadd_ps(xk, w[v], acc[r][v]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < V; ++v) _mm512_storeu_ps(out + r * (kLanes * V) + kLanes * v, acc[r][v]);
}

// R: the rows a block holds, as many as leave the accumulators (R x V of 32 zmm
// registers) room for the V row vectors of w^T and the broadcast: 12 x 1, 8 x 2, 6 x 3, 6 x 4.
template <int V>
constexpr int kBlockRows = V == 1 ? 12 : (V == 2 ? 8 : 6);

template <int V>
__attribute__((target("avx512f"), noinline)) void rows(const float* x, int64_t K, const float* wt,
                                                       const float* bias, float* out, int64_t b0, int64_t b1,
                                                       int64_t M) {
  constexpr int R = kBlockRows<V>;
  constexpr int64_t N = kLanes * V;
  for (int64_t b = b0; b < b1; ++b) {
    const int64_t i = b * R;
    if (i + R <= M) {
      rows_block<R, V>(x + i * K, K, wt, bias, out + i * N);
    } else {
      for (int64_t j = i; j < M; ++j) rows_block<1, V>(x + j * K, K, wt, bias, out + j * N);
    }
  }
}

template <int V>
void product(const float* x, int64_t M, int64_t K, const float* wt, const float* bias, float* out) {
  constexpr int R = kBlockRows<V>;
  const int64_t blocks = (M + R - 1) / R;
  // threads by the multiply-adds, in threads_for's units of about a thousand edges' work
  const int threads = threads_for(M * K * V / 64);
  const int64_t per = (blocks + threads - 1) / threads;
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
  for (int t = 0; t < threads; ++t)
    rows<V>(x, K, wt, bias, out, std::min(blocks, t * per), std::min(blocks, (t + 1) * per), M);
}

bool has_avx512() {
  static const bool yes = __builtin_cpu_supports("avx512f");
  return yes;
}

at::Tensor linear(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias) {
  TORCH_CHECK_VALUE(x.dim() >= 1 && weight.dim() == 2, "linear: x must be [..., K] and weight [N, K], got ",
                    x.sizes(), " and ", weight.sizes());
  TORCH_CHECK_VALUE(x.size(-1) == weight.size(1), "linear: x has ", x.size(-1), " features but weight takes ",
                    weight.size(1));
  const bool has_bias = bias.has_value() && bias->defined();
  if (has_bias)
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->numel() == weight.size(0), "linear: bias must be [",
                      weight.size(0), "], got ", bias->sizes());
  const int64_t N = weight.size(0), K = weight.size(1);
  const bool kernel = has_avx512() && x.scalar_type() == at::kFloat && weight.scalar_type() == at::kFloat &&
                      (!has_bias || bias->scalar_type() == at::kFloat) && N % kLanes == 0 && N >= kLanes &&
                      N <= 4 * kLanes && x.dim() >= 2 && K > 0;
  if (!kernel) return at::linear(x, weight, bias);
  const at::Tensor x2 = x.reshape({-1, K}).contiguous();
  const at::Tensor wt = weight.t().contiguous();
  const at::Tensor b = has_bias ? bias->contiguous() : at::Tensor();
  const int64_t M = x2.size(0);
  auto sizes = x.sizes().vec();
  sizes.back() = N;
  at::Tensor out = at::empty({M, N}, x.options());
  const float *xp = x2.data_ptr<float>(), *wp = wt.data_ptr<float>(), *bp = has_bias ? b.data_ptr<float>() : nullptr;
  float* op = out.data_ptr<float>();
  switch (N / kLanes) {
    case 1: product<1>(xp, M, K, wp, bp, op); break;
    case 2: product<2>(xp, M, K, wp, bp, op); break;
    case 3: product<3>(xp, M, K, wp, bp, op); break;
    default: product<4>(xp, M, K, wp, bp, op); break;
  }
  return out.view(sizes);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastalign_cpu, CPU, m) { m.impl("linear", &linear); }

}  // namespace cpu
}  // namespace fastalign
