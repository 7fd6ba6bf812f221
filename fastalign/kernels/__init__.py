"""Triton GPU kernels of fastalign (installed as ``fastalign.kernels``).

One module per op, each holding its kernels and the launchers that the "triton"
backend (fastalign/backends/triton.py) calls with the reference's signatures:

    spmm.py             spmm forward (sum/mean/max, weights), the GCN-normalised
                        aggregation, sddmm, max backward
    gcn_aggregate.py    GCN aggregation (spmm's row kernel with the fused normalisation)
    edge_similarity.py  per-edge similarity and its backward (both sides by rows)
    edge_softmax.py     softmax over each node's in-edges and its backward
    structure_kl.py     the fused structure-KL loss: one-pass forward, recompute backward
    gat_aggregate.py    fused graph attention: online-softmax forward, recompute backward
    similarity.py       the similarity kernels' math as @triton.jit helpers
    segments.py         row/segment plans (hub rows split, deterministic combine),
                        cached per rowptr
    heuristics.py       block sizes: a rule of the degree statistics and the width
                        (opt-in on-device autotune), cached per graph
    launch.py           the launcher wrapper: contiguous tensors, run on their device

Importable without triton; ``AVAILABLE`` says whether triton is there.
"""

try:
    import triton  # noqa: F401

    AVAILABLE = True
except ImportError:  # pragma: no cover - triton is optional
    AVAILABLE = False
