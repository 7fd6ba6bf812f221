"""Adapter to the Triton kernels in ``fastalign.kernels`` (CUDA tensors; CPU tensors
only under the Triton interpreter, TRITON_INTERPRET=1, for tests).

Every backend function has the reference's signature (fastalign.backends.reference) and
launches the kernels of one fastalign.kernels module. Deterministic by default, with no
atomics: hub rows are split into segments combined in a fixed order, and the backward
passes for source nodes (spmm sum/mean/max, edge similarity, structure KL) walk the
cached transpose; ``spmm_max_backward`` gathers each source's won output gradients over
(rowptr_t, col_t, perm_t). The only atomics are opt-in
(FASTALIGN_TRITON_SKL_BACKWARD=atomic for the structure-KL backward).
"""

from __future__ import annotations

import torch

from .. import settings

try:
    from .. import kernels as _kernels
    AVAILABLE = bool(_kernels.AVAILABLE)
except ImportError:  # pragma: no cover
    _kernels = None
    AVAILABLE = False

if AVAILABLE:
    from ..kernels.edge_similarity import edge_similarity, edge_similarity_backward
    from ..kernels.edge_softmax import edge_softmax, edge_softmax_backward
    from ..kernels.gat_aggregate import gat_aggregate_backward, gat_aggregate_forward
    from ..kernels.gcn_aggregate import gcn_aggregate
    from ..kernels.spmm import sddmm, spmm_forward, spmm_max_backward
    from ..kernels.structure_kl import structure_kl_backward, structure_kl_forward

    from . import BACKEND_FUNCTIONS

    FUNCTIONS = frozenset(BACKEND_FUNCTIONS)  # every backend function has a Triton kernel
else:  # pragma: no cover
    FUNCTIONS = frozenset()


# cosine's sums of squares are float32 for 16/32-bit features: the ops refuse entries
# large enough to overflow them (fastalign.ops._common.check_cosine_range)
COSINE_OVERFLOW_SAFE = False


def supports(device: torch.device) -> bool:
    if device.type == "cuda":
        return True
    return device.type == "cpu" and settings.triton_interpret()
