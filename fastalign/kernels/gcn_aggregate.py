"""gcn_aggregate: out[i] = dis[i] * (sum_{e=(j->i)} w_e dis[j] x[j] + lw_i dis[i] x[i]).

PyG's D^-1/2 (A + I) D^-1/2 with the normalisation kept as per-node state (``dis`` =
deg^-1/2 and the self-loop weights) and applied inside the aggregation: the kernel is
spmm's row kernel with the GCN edge coefficient w_e * dis[j] (existing self-loop edges
skipped when loop weights are given, their weight being in ``loop_weight``) and the
per-row epilogue; see spmm.py. Its backward is this op on the transpose (same state).
A layer's ``bias`` is added after the kernel, in a second pass: the epilogue does not
take one yet.
"""

from __future__ import annotations

from .spmm import aggregate
from .launch import launcher


@launcher
def gcn_aggregate(rowptr, col, weight, dis, loop_weight, x, bias=None):
    out, _ = aggregate(rowptr, col, weight, x, "sum", dis=dis, loop_weight=loop_weight)
    return out if bias is None else out.add_(bias)
