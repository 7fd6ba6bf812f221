// fastalign CUDA kernels: the C-style launcher API.
//
// Plain CUDA C++ (raw pointers, a cudaStream_t, CUB): nothing here depends on torch,
// so CI compiles every kernel file with `nvcc -arch=sm_90` on machines without torch
// CUDA. The torch glue (csrc/cuda/binding.cpp) allocates outputs and workspaces and
// calls these functions.
//
// Conventions (the semantics are those of fastalign/backends/torch.py):
//  * CSR by destination: rowptr [num_rows + 1], col [num_edges] (the source of each
//    edge), both int32 or both int64 (FA_I32 / FA_I64), rows sorted as built by Graph.
//  * Features are row-major [num_nodes, F], contiguous, float32 / float16 / bfloat16
//    (FA_F32 / FA_F16 / FA_BF16); per-edge weights have the features' dtype.
//    All arithmetic accumulates in float32.
//  * Every function launches on `stream`, never synchronises, and returns the first
//    launch error (cudaSuccess otherwise).
//  * Functions that need scratch memory take (workspace, workspace_bytes); ask for the
//    size with the matching *_workspace_bytes function (an upper bound computed on the
//    host from sizes only; it may query CUB's scan size, never synchronises).
//  * Deterministic: no floating-point atomics; results are bitwise reproducible run to
//    run (split rows are combined in a fixed order; source-side gradients walk the
//    transpose).
#pragma once

#include <cuda_runtime.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { FA_F32 = 0, FA_F16 = 1, FA_BF16 = 2 } fa_dtype;
typedef enum { FA_I32 = 0, FA_I64 = 1 } fa_itype;
typedef enum { FA_SUM = 0, FA_MEAN = 1, FA_MAX = 2 } fa_reduce;
// Similarity kernels, as in fastalign/backends/torch.py.
typedef enum { FA_L1 = 0, FA_RBF = 1, FA_LINEAR = 2, FA_POLY = 3, FA_COSINE = 4 } fa_kernel;

typedef struct {
  const void* rowptr;  // [num_rows + 1]
  const void* col;     // [num_edges]
  int64_t num_rows;
  int64_t num_edges;
  fa_itype itype;
} fa_csr;

typedef struct {
  fa_kernel kind;
  float sigma;
  int degree;
  float coef;
} fa_sim;

// Rows longer than `split` edges are cut into segments of `split` edges, processed by
// separate warps and combined in a fixed order (deterministic). 0 picks a default from
// the edge count and the device.
int64_t fa_default_split(int64_t num_edges);

// ---------------------------------------------------------------------------- spmm
// out[i] = reduce_{e=(j->i)} w_e x[j] (w_e = 1 without weight); empty rows give 0.
// FA_MAX also writes arg [num_rows, F] (arg_type: FA_I32 when every edge position fits,
// else FA_I64): the first edge reaching the maximum, -1 for empty rows (pass arg = NULL
// otherwise).
size_t fa_spmm_workspace_bytes(const fa_csr* g, int64_t F, fa_reduce reduce, int64_t split);
cudaError_t fa_spmm_forward(const fa_csr* g, const void* weight, const void* x, int64_t F,
                            fa_dtype dtype, fa_reduce reduce, void* out, void* arg,
                            fa_itype arg_type, int64_t split, void* workspace,
                            size_t workspace_bytes, cudaStream_t stream);

// Gradients of the max reduction, for arg [num_rows, F] (int32 or int64, arg_type) from
// fa_spmm_forward.
// grad_x (dtype, [num_src, F], fully written; may be NULL): gathered by source node over
// the transpose gt (rowptr_t, col_t; perm_t [num_edges] int64 maps transposed edge k to
// internal edge perm_t[k]): grad_x[j, f] = sum over j's transposed edges k (destination
// i = col_t[k], e = perm_t[k]) of [arg[i, f] == e] w_e grad_out[i, f], float32 in
// transposed-edge order, split rows combined in segment order. No atomics.
// grad_w_acc (float32 [num_edges], zeroed by the caller, may be NULL): accumulated
// without atomics (one thread per destination row owns that row's edges); uses g->col
// and g->num_rows only (g->rowptr may be NULL).
// The workspace (for grad_x) holds gt's schedule and partial slots.
size_t fa_spmm_max_backward_workspace_bytes(const fa_csr* gt, int64_t F, int64_t split);
cudaError_t fa_spmm_max_backward(const fa_csr* g, const fa_csr* gt, const int64_t* perm_t,
                                 const void* weight, const void* x, const void* arg,
                                 fa_itype arg_type, const void* grad_out, int64_t F, fa_dtype dtype,
                                 void* grad_x, float* grad_w_acc, int64_t split,
                                 void* workspace, size_t workspace_bytes, cudaStream_t stream);

// ---------------------------------------------------------------------------- gcn_aggregate
// The spmm sum with PyG's GCN normalisation (dis: float32 [num_rows], deg^-1/2):
//   out[i] = dis[i] * (sum_e w_e dis[j] x[j] + loop_w[i] dis[i] x[i]);
// with loop_w != NULL (float32 [num_rows]) self-loop edges (j == i) are skipped (their
// weight is loop_w). Needs a square graph (x has num_rows rows).
size_t fa_gcn_aggregate_workspace_bytes(const fa_csr* g, int64_t F, int64_t split);
cudaError_t fa_gcn_aggregate(const fa_csr* g, const void* weight, const void* x, int64_t F,
                             fa_dtype dtype, const float* dis, const float* loop_w, void* out,
                             int64_t split, void* workspace, size_t workspace_bytes,
                             cudaStream_t stream);

// ---------------------------------------------------------------------------- edges
// s_e = k(x_dst[i], x_src[j]) for e = (j -> i); sddmm is FA_LINEAR. Output [num_edges]
// in dtype.
cudaError_t fa_edge_similarity(const fa_csr* g, const void* x_dst, const void* x_src,
                               int64_t F, fa_dtype dtype, fa_sim sim, void* out,
                               int64_t split, void* workspace, size_t workspace_bytes,
                               cudaStream_t stream);
size_t fa_edge_similarity_workspace_bytes(const fa_csr* g, int64_t split);

// Backward of fa_edge_similarity given grad_s [num_edges]. grad_dst by CSR rows,
// grad_src by the rows of the transpose gt (rowptr_t, col_t; perm_t [num_edges] int64
// maps transposed edge k to internal edge perm_t[k]). No atomics.
size_t fa_edge_similarity_backward_workspace_bytes(const fa_csr* g, const fa_csr* gt,
                                                   int64_t F, int64_t split);
cudaError_t fa_edge_similarity_backward(const fa_csr* g, const fa_csr* gt,
                                        const int64_t* perm_t, const void* x_dst,
                                        const void* x_src, const void* grad_s, int64_t F,
                                        fa_dtype dtype, fa_sim sim, void* grad_dst,
                                        void* grad_src, int64_t split, void* workspace,
                                        size_t workspace_bytes, cudaStream_t stream);

// Softmax of per-edge logits over each row, and its backward
// grad_logits = p * (grad_p - sum_row(p * grad_p)). One warp per row.
cudaError_t fa_edge_softmax(const fa_csr* g, const void* logits, fa_dtype dtype, void* p,
                            cudaStream_t stream);
cudaError_t fa_edge_softmax_backward(const fa_csr* g, const void* p, const void* grad_p,
                                     fa_dtype dtype, void* grad_logits,
                                     cudaStream_t stream);

// ---------------------------------------------------------------------------- graph attention
// out[i, h] = sum_{j -> i} drop(softmax_j(leaky_relu(alpha_src[j, h] + alpha_dst[i, h]))) x[j, h]
// for x [num_src, heads, channels] (alpha_dst may be null), as fastalign/ops/gat_aggregate.py.
// With self_loops the stored loops are skipped and loop i -> i is attended for every
// i < min(num_src, num_rows) (edge id num_edges + i). Dropout: an entry (edge id e, head
// h) is kept when fmix32(lo32(e H + h) ^ fmix32(hi32(e H + h) ^ seed)) >> 8 >= threshold,
// then scaled by `scale` (threshold 0: no dropout). lse: float32 [num_rows, heads]
// (-inf for a row with nothing attended). One thread per (row, head); the backward walks
// destination rows for d_row = grad_out . out per (row, head) (float32 [num_rows, heads],
// written: scratch the caller allocates) and grad_alpha_dst (alpha_dst given), then the
// transpose (gt, perm_t) for grad_x and grad_alpha_src.
typedef struct {
  float slope;
  float scale;
  uint32_t threshold;
  uint32_t seed;
  int self_loops;
} fa_attention;

cudaError_t fa_gat_forward(const fa_csr* g, int64_t num_src, const void* x, const void* alpha_src,
                           const void* alpha_dst, fa_dtype dtype, int heads, int channels,
                           const fa_attention* att, void* out, float* lse, cudaStream_t stream);
cudaError_t fa_gat_backward(const fa_csr* g, const fa_csr* gt, const int64_t* perm_t, int64_t num_src,
                            const void* x, const void* alpha_src, const void* alpha_dst, fa_dtype dtype,
                            int heads, int channels, const fa_attention* att, const float* lse,
                            float* d_row, const void* grad_out, void* grad_x, void* grad_src,
                            void* grad_dst, cudaStream_t stream);

// ---------------------------------------------------------------------------- structure KL
// Per destination i: kl_i = KL(q_i || p_i), p = softmax(k(student)/tau),
// q = softmax(k(peer)/tau) over i's in-edges. Student features s_dst/s_src have width
// Fs, peer features p_dst/p_src width Fp (same dtype). Writes kl (dtype, [num_rows]),
// lse_s and lse_p (float32 [num_rows], -inf for empty rows; kl 0 there). One pass,
// online softmax for both students; only per-node state is written.
size_t fa_structure_kl_workspace_bytes(const fa_csr* g, int64_t split);
cudaError_t fa_structure_kl_forward(const fa_csr* g, const void* s_dst, const void* s_src,
                                    int64_t Fs, const void* p_dst, const void* p_src,
                                    int64_t Fp, fa_dtype dtype, fa_sim sim, float tau,
                                    void* kl, float* lse_s, float* lse_p, int64_t split,
                                    void* workspace, size_t workspace_bytes,
                                    cudaStream_t stream);

// Backward by recomputation from (lse_s, lse_p, kl: float32 [num_rows]) and grad_kl
// (float32 [num_rows]). Destination gradients by CSR rows, source gradients by the rows
// of the transpose gt. g_p_dst / g_p_src may be NULL (peer detached).
size_t fa_structure_kl_backward_workspace_bytes(const fa_csr* g, const fa_csr* gt,
                                                int64_t Fs, int64_t Fp, int64_t split);
cudaError_t fa_structure_kl_backward(const fa_csr* g, const fa_csr* gt, const void* s_dst,
                                     const void* s_src, int64_t Fs, const void* p_dst,
                                     const void* p_src, int64_t Fp, fa_dtype dtype,
                                     fa_sim sim, float tau, const float* lse_s,
                                     const float* lse_p, const float* kl,
                                     const float* grad_kl, void* g_s_dst, void* g_s_src,
                                     void* g_p_dst, void* g_p_src, int64_t split,
                                     void* workspace, size_t workspace_bytes,
                                     cudaStream_t stream);

#ifdef __cplusplus
}
#endif
