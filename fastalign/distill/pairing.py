"""Layer pairing: which layer of a peer each student layer is aligned with.

Layers are the L outputs of a student (L-1 hidden embeddings, then the logits), indexed
0..L-1. A pairing is a list of ``(student_layer, peer_layer)``:

* ``ahead``      (the paper's figure): layer l -> peer layer l+1; the last wraps to the
                 peer's first, so every student layer looks one step ahead.
* ``behind``     (the public Alignahead code): layer l -> peer layer l-1; the first
                 wraps to the peer's last.
* ``one-to-one``: layer l -> peer layer l.
* ``none``:      no alignment (independent students).
"""

from __future__ import annotations

from typing import List, Tuple

from .options import ALIGNS


def layer_pairs(num_layers: int, align: str) -> List[Tuple[int, int]]:
    if not isinstance(num_layers, int) or num_layers < 1:
        raise ValueError(f"num_layers must be a positive int, got {num_layers!r}")
    if align not in ALIGNS:
        raise ValueError(f"align must be one of {ALIGNS}, got {align!r}")
    L = num_layers
    if align == "none":
        return []
    if align == "one-to-one":
        return [(l, l) for l in range(L)]
    step = 1 if align == "ahead" else -1
    return [(l, (l + step) % L) for l in range(L)]
