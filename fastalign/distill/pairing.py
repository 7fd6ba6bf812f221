"""Layer pairing: which layer of a peer each student layer is aligned with.

Layers are the L outputs of a student (L-1 hidden embeddings, then the logits), indexed
0..L-1. A pairing is a list of ``(student_layer, peer_layer)``:

* ``ahead``      (the paper's figure): layer l -> peer layer l+1; the last wraps to the
                 peer's first, so every student layer looks one step ahead.
* ``behind``     (the public Alignahead code): layer l -> peer layer l-1; the first
                 wraps to the peer's last.
* ``one-to-one``: layer l -> peer layer l.
* ``none``:      no alignment (independent students).

A peer of another depth (``peer_layers``) is read at the same relative depth: student
layer l stands at peer layer ``round(l (Lp - 1) / (L - 1))`` (its first and last layers
at the peer's first and last), and ``ahead`` / ``behind`` step from there.
"""

from __future__ import annotations

import math
from typing import List, Optional, Tuple

from .options import ALIGNS


def layer_pairs(num_layers: int, align: str, peer_layers: Optional[int] = None) -> List[Tuple[int, int]]:
    for name, value in (("num_layers", num_layers), ("peer_layers", peer_layers)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if align not in ALIGNS:
        raise ValueError(f"align must be one of {ALIGNS}, got {align!r}")
    L = num_layers
    P = L if peer_layers is None else peer_layers
    if align == "none":
        return []

    def at(l: int) -> int:  # the peer layer at student layer l's relative depth
        return l if P == L else (0 if L == 1 else int(math.floor(l * (P - 1) / (L - 1) + 0.5)))

    if align == "one-to-one":
        return [(l, at(l)) for l in range(L)]
    step = 1 if align == "ahead" else -1
    return [(l, (at(l) + step) % P) for l in range(L)]
